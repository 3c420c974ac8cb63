"""Run by `make test` after the whole suite: nothing the suite started may still be running."""

import os
from pathlib import Path

import pytest

from labkit.server.process import temp_root

pytestmark = pytest.mark.leakcheck


def _processes_mentioning(text: str) -> list[tuple[int, str]]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append((int(entry.name), cmdline.strip()))
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
