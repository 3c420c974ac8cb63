"""Real servers for the tests.

- One lab server for the whole session, shared by the unit tests through LABKIT_REDIS_URL. It starts in
  `pytest_configure` (on the controller only, before xdist starts its workers, so they inherit the URL)
  and stops in `pytest_unconfigure`.
- Each notebook (nbval) runs on a server of its own with keyspace events on (a `KeyAudit`): the hooks
  below point the kernel at it before the notebook's first cell, and after its last cell fail the
  notebook if it wrote a key outside its `lab:lNN` prefix or left one behind, or left a connection
  subscribed or blocked. A notebook whose metadata says it needs a capability that server lacks
  (`{"labkit": {"requires": ["search"]}}`, as `python -m labkit matrix` reads it) is skipped, saying why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labkit.matrix import requirements, unmet
from labkit.server import capabilities
from labkit.server.lab import URL_ENV
from labkit.server.process import Server, first_complaint
from tests.audit import KeyAudit

_session_server: Server | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _session_server
    markexpr = config.getoption("markexpr")
    leak_run = "leakcheck" in markexpr and "not leakcheck" not in markexpr  # must not leave a server running
    if hasattr(config, "workerinput") or os.environ.get(URL_ENV) or leak_run:
        return
    _session_server = Server().start()
    os.environ[URL_ENV] = _session_server.url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_server is not None:
        _session_server.stop()
        os.environ.pop(URL_ENV, None)


_audits: dict[Path, tuple[KeyAudit, str | None]] = {}
_skipped: dict[Path, str] = {}


def _notebook(item: pytest.Item) -> Path | None:
    return item.path if item.path.suffix == ".ipynb" else None


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a notebook's first cell (and so before nbval starts its kernel): give it its own server."""
    path = _notebook(item)
    if path in _skipped:
        pytest.skip(_skipped[path])
    if path is not None and path not in _audits:
        audit = KeyAudit()
        missing = unmet(requirements(path), capabilities(audit.server.client()))
        if missing:
            audit.finish()
            why = f" (modules: {first_complaint(audit.server.module_error)})" if audit.server.module_error else ""
            _skipped[path] = f"{path.name} needs {', '.join(missing)}: not on {audit.server.engine.name}{why}"
            pytest.skip(_skipped[path])
        _audits[path] = (audit, os.environ.get(URL_ENV))
        os.environ[URL_ENV] = audit.url


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After a notebook's last cell: check that no subscriber or blocked reader outlived it (while its kernel
    still runs), then, once the kernel is gone, what it wrote."""
    path = _notebook(item)
    last = path is not None and path in _audits and (nextitem is None or nextitem.path != path)
    lingering = _audits[path][0].lingering_clients(settle_s=5) if last else []
    yield
    if not last:
        return
    audit, previous = _audits.pop(path)
    if previous is None:
        os.environ.pop(URL_ENV, None)
    else:
        os.environ[URL_ENV] = previous
    problems = audit.problems(f"lab:l{path.name[:2]}")
    if lingering:
        problems.append(f"connections still subscribed or blocked after the last cell: {lingering}; close them")
    assert not problems, f"{path.name}: " + "; ".join(problems)


