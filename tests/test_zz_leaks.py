"""Run by `make test` after the whole suite: nothing the suite started may still be running."""

import os
from pathlib import Path

import pytest

from labkit.server.process import temp_root

pytestmark = pytest.mark.leakcheck


def _processes_mentioning(directory: str) -> list[tuple[int, str]]:
    """Processes with an argument inside `directory` (servers take their config file from there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if any(arg.startswith(directory + os.sep) for arg in args):
                found.append((int(entry.name), " ".join(args).strip()))
    return found


def test_no_server_or_directory_left_behind():
    assert os.environ.get("LABKIT_TMP"), "run through `make test`, which gives the suite its own LABKIT_TMP"
    root = temp_root()
    assert _processes_mentioning(str(root)) == []
    assert sorted(p.name for p in root.glob("labkit-*")) == []


def test_the_check_can_see_a_running_server():
    from labkit.server import spawn

    with spawn(modules=False) as srv:
        assert any(pid == srv.pid for pid, _ in _processes_mentioning(str(temp_root())))
