"""The test suite: one folder per package (core, study, reports, followup); the house and the command line
at the top; shared builders in helpers.py."""
