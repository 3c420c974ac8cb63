"""Every lesson re-runs on one server: after a kernel that died half-way (its cells' keys, groups, indexes
left behind, no Cleanup), Restart and Run All works, and works again. `make test-rerun` runs these."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from labkit.server import spawn
from labkit.server.lab import URL_ENV

from .notebooks import NOTEBOOKS, lessons, read

pytestmark = pytest.mark.rerun
CELL_TIMEOUT_S = 180


def first_half(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The lesson up to the middle of its code cells, as a kernel that died there would have run it."""
    code = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code"]
    cut = code[len(code) // 2]
    half = nbformat.from_dict(nb)
    half.cells = half.cells[:cut]
    return half


def execute(nb: nbformat.NotebookNode, url: str) -> None:
    """Run every cell in a fresh kernel pointed at `url`, as Restart and Run All does; raise on a failing cell."""
    before = os.environ.get(URL_ENV)
    os.environ[URL_ENV] = url
    try:
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if before is None:
            os.environ.pop(URL_ENV, None)
        else:
            os.environ[URL_ENV] = before


@pytest.mark.parametrize("path", lessons(), ids=lambda p: p.stem)
def test_lesson_reruns_after_a_partial_run(path):
    nb = read(path)
    with spawn() as server:
        execute(first_half(nb), server.url)
        execute(nb, server.url)
        execute(read(path), server.url)
        left = sorted(server.client().scan_iter(match="lab:*", count=1000))
    assert not left, f"{path.name} left {len(left)} key(s) after a full run: {left[:5]}"


def test_first_half_stops_at_the_middle_code_cell():
    nb = read(lessons()[0])
    code = sum(c.cell_type == "code" for c in nb.cells)
    assert sum(c.cell_type == "code" for c in first_half(nb).cells) == code // 2
