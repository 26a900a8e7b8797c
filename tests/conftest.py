"""Fixtures shared by the test files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real datasets beside the project (``../shared/data`` or $ADPRUNE_SHARED_DATA); skips when absent."""
    path = Path(os.environ.get("ADPRUNE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"no shared data at {path} (set ADPRUNE_SHARED_DATA to its folder)")
    return path


@pytest.fixture(autouse=True)
def _embedded_stores(monkeypatch):
    """Tests use the stores they create: a developer's $ADPRUNE_STORAGE / $ADPRUNE_TRACKING must not leak in."""
    from study.stores import STORAGE_ENV, TRACKING_ENV

    for name in (STORAGE_ENV, TRACKING_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for this test session (``tests/postgres.py``); skips, saying
    why, where none can be had."""
    from tests.postgres import start_server

    server = start_server()
    if isinstance(server, str):
        pytest.skip(server)
    yield server
    server.stop()
