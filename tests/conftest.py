"""Fixtures for the unit tests (the session server and the notebook audits live in the root conftest.py)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

import labkit
from labkit.matrix import unmet
from labkit.server import Capabilities, available_engines, capabilities, cluster, spawn
from labkit.server.process import temp_root

_session_caps: Capabilities | None = None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.needs("search", ...)`: skip, saying why, when the session server (of the engine the suite
    runs on: `make test ENGINE=...`) lacks those capabilities."""
    global _session_caps
    marker = item.get_closest_marker("needs")
    if marker is None:
        return
    if _session_caps is None:
        with labkit.connect() as client:
            _session_caps = capabilities(client)
    missing = unmet(marker.args, _session_caps)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: the session server, {_session_caps}, lacks it")


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


@pytest.fixture(params=sorted(available_engines()))
def fresh(request):
    """A client of a fresh server of each installed engine (one test per engine), and what that server can do: as
    `labkit.lessons.on_each_engine` gives an experiment."""
    with spawn(request.param, modules=False) as server:
        client = server.client()
        yield client, capabilities(client)
        client.close()


@pytest.fixture
def lab_home(monkeypatch):
    """A private checkout home (LABKIT_HOME) under labkit's temp root, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="labkit-home-", dir=temp_root()))
    monkeypatch.setenv("LABKIT_HOME", str(home))
    yield home
    from labkit.server import lab

    lab.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def label_only(monkeypatch):
    """Live monitors update their label at every sample but draw no live figure: on a busy machine one
    draw can take a second, and leave a one-second monitor with a single sample. The final figure is
    drawn and checked as ever; test_widgets checks the live figure on its own, untimed."""
    from labkit.widgets import LiveMonitor

    def _redraw(self, now):
        self.label.value = f"<b>{self.title}</b>: {self.describe()}"

    monkeypatch.setattr(LiveMonitor, "_redraw", _redraw)


@pytest.fixture(scope="module")
def rc():
    """A RedisCluster client of a throwaway 3-primary cluster (no replicas: the patterns, not failover),
    one per test module that asks for it."""
    with cluster(primaries=3, replicas=0) as topo:
        client = topo.client()
        yield client
        client.close()
