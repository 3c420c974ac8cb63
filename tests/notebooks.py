"""Reading lessons for the hygiene and browser tests."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAME = re.compile(r"^(\d\d)_[a-z0-9]+(_[a-z0-9]+)*\.ipynb$")
FENCE = re.compile(r"```.*?```", re.S)


def lessons() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def number(path: Path) -> int:
    return int(path.name[:2])


def headings(nb: nbformat.NotebookNode, level: int) -> list[str]:
    """Markdown headings of `level`, outside fenced code blocks."""
    marker = "#" * level + " "
    found = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            text = FENCE.sub("", cell.source)
            found += [ln[len(marker):].strip() for ln in text.splitlines() if ln.startswith(marker)]
    return found


def code(nb: nbformat.NotebookNode) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


OWN_SERVER = re.compile(r"\bconnect\(own_server=True\)")


def shares_server(nb: nbformat.NotebookNode) -> bool:
    """Whether the lesson runs on a workshop's shared server (it does unless Setup connects with
    `own_server=True`)."""
    return not OWN_SERVER.search(code(nb))


def calls_checks(nb: nbformat.NotebookNode) -> list[str]:
    """The exercise checks the lesson's cells call (`lesson.check_...(`), in order, once each."""
    return list(dict.fromkeys(re.findall(r"\blesson\.(check_\w+)\(", code(nb))))
