"""Tests of the read-only report (reports)."""
