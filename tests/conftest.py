"""One real lab server for the whole test session, shared with notebooks through LABKIT_REDIS_URL.

It starts in `pytest_configure` (on the controller only, before xdist starts its workers, so the
workers and every notebook kernel inherit the URL) and stops in `pytest_unconfigure`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

import labkit
from labkit.server.lab import URL_ENV
from labkit.server.process import Server, temp_root

ROOT = Path(__file__).resolve().parents[1]
_session_server: Server | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _session_server
    if hasattr(config, "workerinput") or os.environ.get(URL_ENV) or config.getoption("markexpr") == "leakcheck":
        return
    _session_server = Server().start()
    os.environ[URL_ENV] = _session_server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_server is not None:
        _session_server.stop()
        os.environ.pop(URL_ENV, None)


@pytest.fixture
def r():
    """A client of the shared session server."""
    client = labkit.connect()
    yield client
    client.close()


@pytest.fixture
def ns(r):
    """A namespace unique to this test, cleaned afterwards."""
    space = labkit.Namespace(f"test-{uuid.uuid4().hex[:10]}")
    yield space
    space.cleanup(r)


@pytest.fixture
def lab_home(monkeypatch):
    """A private checkout home (LABKIT_HOME) under labkit's temp root, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="labkit-home-", dir=temp_root()))
    monkeypatch.setenv("LABKIT_HOME", str(home))
    yield home
    from labkit.server import lab

    lab.stop()
    shutil.rmtree(home, ignore_errors=True)
