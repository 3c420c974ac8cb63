"""Real servers for the tests.

- One lab server for the whole session, shared by the unit tests through LABKIT_REDIS_URL. It starts in
  `pytest_configure` (on the controller only, before xdist starts its workers, so they inherit the URL)
  and stops in `pytest_unconfigure`.
- Each notebook (nbval) runs on a server of its own with keyspace events on (a `KeyAudit`): the hooks
  below point the kernel at it before the notebook's first cell, and after its last cell fail the
  notebook if it wrote a key outside its `lab:lNN` prefix or left one behind, or left a connection
  subscribed or blocked. A notebook whose metadata says it needs a capability that server lacks
  (`{"labkit": {"requires": ["search"]}}`, as `python -m labkit matrix` reads it) is skipped, saying why.
- With `LABKIT_USER` set (say `LABKIT_USER=ada`), lessons run as that workshop learner: the prefix is
  `lab:ada:lNN`, and a lesson that shares a workshop's server runs on a real workshop (the audit's server,
  a workshop opened on it, the kernel connected as the learner's ACL user). It must then record a passed
  verdict for every check it calls, and no cell may print the learner's password.
- The instructor notebook (`notebooks/workshop/`) runs against a workshop of two learners
  (`tests.workshops.InstructorServer`), checked and closed afterwards.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from labkit import workshop
from labkit.keys import USER_ENV, WORKSHOP
from labkit.matrix import requirements, unmet
from labkit.server import capabilities
from labkit.server.lab import URL_ENV
from labkit.server.process import Server, first_complaint
from tests.audit import KeyAudit
from tests.notebooks import calls_checks, read, shares_server

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


@dataclass
class NotebookRun:
    """What a notebook runs against, and what is checked after its last cell."""

    url: str
    audit: KeyAudit | None = None
    seat: workshop.Seat | None = None  # the learner's account, on a workshop opened on the audit's server
    instructor: object | None = None  # tests.workshops.InstructorServer
    previous_url: str | None = None
    secrets: list[str] = field(default_factory=list)  # never in a cell's output


_runs: dict[Path, NotebookRun] = {}
_skipped: dict[Path, str] = {}  # notebook -> why it cannot run on this engine


def _notebook(item: pytest.Item) -> Path | None:
    return item.path if item.path.suffix == ".ipynb" else None


def _start(path: Path) -> NotebookRun:
    if path.parent.name == "workshop":
        from tests.workshops import InstructorServer

        instructor = InstructorServer()
        return NotebookRun(instructor.url, instructor=instructor, secrets=instructor.passwords())
    audit = KeyAudit()
    learner = os.environ.get(USER_ENV)
    if not learner or not shares_server(read(path)):
        return NotebookRun(audit.url, audit)
    seat = workshop.create(audit.server.client(), [learner])[0]
    return NotebookRun(seat.url, audit, seat, secrets=[seat.password])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before a notebook's first cell (and so before nbval starts its kernel): give it its own server."""
    path = _notebook(item)
    if path in _skipped:
        pytest.skip(_skipped[path])
    if path is not None and path not in _runs:
        run = _start(path)
        why = _unmet_requirements(path, run.audit) if run.audit is not None else None
        if why:
            run.audit.finish()
            _skipped[path] = why
            pytest.skip(why)
        _runs[path] = run
        run.previous_url = os.environ.get(URL_ENV)
        os.environ[URL_ENV] = run.url
        learner = os.environ.get(USER_ENV)
        if learner and hasattr(item.parent, "sanitize_patterns"):
            # an output nbval compares shows lab:lNN:...; the learner's reads lab:<learner>:lNN:...
            item.parent.sanitize_patterns[re.escape(f"lab:{learner}:")] = "lab:"


def _unmet_requirements(path: Path, audit: KeyAudit) -> str | None:
    """Why the notebook cannot run on the audit's server (a capability its metadata requires is missing), or None."""
    missing = unmet(requirements(path), capabilities(audit.server.client()))
    if not missing:
        return None
    why = f" (modules: {first_complaint(audit.server.module_error)})" if audit.server.module_error else ""
    return f"{path.name} needs {', '.join(missing)}: not on {audit.server.engine.name}{why}"


UNMASKED_URL = re.compile(r"rediss?://[^\s:/@\"']*:(?!\*{4}@)[^\s@\"']+@")  # a URL showing its password


def _printed_secrets(item: pytest.Item, run: NotebookRun) -> list[str]:
    outputs = json.dumps(getattr(item, "test_outputs", None) or [])
    found = [f"password {i + 1} of {len(run.secrets)}" for i, secret in enumerate(run.secrets) if secret in outputs]
    return found + (["a server URL with its password"] if UNMASKED_URL.search(outputs) else [])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """After each cell: no password in its output. After a notebook's last cell: check that no subscriber or
    blocked reader outlived it (while its kernel still runs), then, once the kernel is gone, what it wrote."""
    path = _notebook(item)
    run = _runs.get(path) if path is not None else None
    printed = _printed_secrets(item, run) if run else []
    last = run is not None and (nextitem is None or nextitem.path != path)
    lingering = run.audit.lingering_clients(settle_s=5) if last and run.audit else []
    yield
    assert not printed, f"{path.name}: a cell printed {', '.join(printed)}"
    if not last:
        return
    _runs.pop(path)
    if run.previous_url is None:
        os.environ.pop(URL_ENV, None)
    else:
        os.environ[URL_ENV] = run.previous_url
    if run.instructor is not None:
        problems = run.instructor.verify_and_close()
    else:
        problems = _unrecorded_checks(path, run)
        learner = os.environ.get(USER_ENV)
        prefix = f"lab:{learner}:l{path.name[:2]}" if learner else f"lab:l{path.name[:2]}"
        problems += run.audit.problems(prefix, ignore=(WORKSHOP,) if run.seat else ())
    if lingering:
        problems.append(f"connections still subscribed or blocked after the last cell: {lingering}; close them")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def _unrecorded_checks(path: Path, run: NotebookRun) -> list[str]:
    """On a workshop: the checks the lesson calls that did not record a passed verdict for the learner."""
    if run.seat is None:
        return []
    board = workshop.Progress(run.audit.server.client()).update()
    lesson = f"l{path.name[:2]}"
    missing = [c for c in calls_checks(read(path)) if (lesson, c) not in board.passed(run.seat.learner)]
    return [f"checks that recorded no passed verdict on the workshop: {missing}"] if missing else []
