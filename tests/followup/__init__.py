"""Tests of pick and control (followup)."""
