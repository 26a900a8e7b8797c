"""Tests of the trainer library (adprune_core)."""
