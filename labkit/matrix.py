"""`python -m labkit matrix`: every lesson on every installed engine, as a reader runs it; a table of what passed.

Each lesson runs top to bottom in a fresh kernel against a fresh server of the engine (modules loaded where they
load), with `LABKIT_ENGINE` set to that engine for the servers the lesson spawns itself. A lesson passes, passes
with parts skipped (each part a lesson cannot run on a server prints one line, `labkit.lessons.skip`), is
skipped whole when the server lacks what the notebook's metadata says it needs (`{"labkit": {"requires":
["search"]}}`: capability names), or fails at its first failing cell.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from labkit.errors import ConfigError
from labkit.lessons import SKIPPED
from labkit.server import Capabilities, Server, available_engines, capabilities
from labkit.server.binaries import ENGINES
from labkit.server.lab import URL_ENV
from labkit.server.process import first_complaint

CELL_TIMEOUT_S = 300
README_START, README_END = "<!-- matrix:start -->", "<!-- matrix:end -->"
REPORT_START = "Run of `python -m labkit matrix`"  # how every report this module writes begins


@dataclass
class Outcome:
    """One lesson on one engine."""

    lesson: str
    engine: str
    status: str  # "passed", "skipped" (the whole lesson) or "failed"
    seconds: float
    skipped_parts: list[tuple[str, str]] = field(default_factory=list)  # (part, reason)
    reason: str = ""  # why it failed, or why it was skipped whole

    def cell(self, note: int | None) -> str:
        """The table cell: the status, the number of parts skipped, and a reference to the note saying why."""
        ref = f" [{note}]" if note is not None else ""
        if self.status == "passed" and self.skipped_parts:
            return f"passed, {len(self.skipped_parts)} part(s) skipped{ref}"
        return f"{self.status}{ref}"


def lessons(root: Path | None = None) -> list[Path]:
    """Every lesson notebook (`notebooks/NN_name.ipynb`) of this checkout, in order."""
    folder = root or Path(__file__).resolve().parents[1] / "notebooks"
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def requirements(notebook: Path) -> list[str]:
    """The capabilities a whole lesson needs, from its metadata (`labkit.requires`); none by default."""
    meta = json.loads(notebook.read_text()).get("metadata", {})
    return list(meta.get("labkit", {}).get("requires", []))


def unmet(needs: Iterable[str], caps: Capabilities) -> list[str]:
    """Those of `needs` (names of `Capabilities` properties, like "search") this server lacks."""
    for name in needs:
        if not isinstance(getattr(type(caps), name, None), property):
            raise ConfigError(f"Unknown capability {name!r} in a notebook's labkit.requires: use a property of "
                              "labkit.server.Capabilities, like 'search' or 'vector_sets'.")
    return [name for name in needs if not getattr(caps, name)]


def skipped_parts(nb: dict) -> list[tuple[str, str]]:
    """Every (part, reason) a run of the notebook printed with `labkit.lessons.skip`, in order."""
    found = []
    for cell in nb.get("cells", []):
        for output in cell.get("outputs", []):
            text = output.get("text", "")
            found += [(m["part"], m["reason"]) for m in SKIPPED.finditer("".join(text) if isinstance(text, list)
                                                                         else text)]
    return found


def run_lesson(notebook: Path, engine: str) -> Outcome:
    """Run `notebook` on a fresh server of `engine`, in a kernel of its own, and say how it went."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    started = time.monotonic()
    with Server(engine) as server:
        missing = unmet(requirements(notebook), capabilities(server.client()))
        if missing:
            why = f"needs {', '.join(missing)}, which {engine} lacks here"
            why += f" (the modules did not load: {first_complaint(server.module_error)})" if server.module_error else ""
            return Outcome(notebook.stem, engine, "skipped", time.monotonic() - started, reason=why)
        nb = nbformat.read(notebook, as_version=4)
        client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                resources={"metadata": {"path": str(notebook.parent)}})
        env = dict(os.environ) | {URL_ENV: server.url, "LABKIT_ENGINE": engine}
        status, reason = "passed", ""
        try:
            client.execute(env=env)
        except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
            status, reason = "failed", _first_error(nb, err)
    return Outcome(notebook.stem, engine, status, time.monotonic() - started, skipped_parts(nb), reason)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_error(nb: dict, err: Exception) -> str:
    """The first failing code cell: its number, the error, and the line that raised it."""
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                lines = ANSI.sub("", "\n".join(output.get("traceback", []))).splitlines()
                where = [ln.split("---->", 1)[1].strip() for ln in lines if "---->" in ln]
                at = f" at `{_short(where[-1].lstrip('0123456789 '), 120)}`" if where else ""
                return f"code cell {i}: {output['ename']}: {_short(output['evalue'])}{at}"
    return _short(f"{type(err).__name__}: {err}")


def _short(text: str | None, limit: int = 200) -> str:
    line = " ".join((text or "").split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def engine_line(name: str) -> str:
    """`name`: engine, version and the modules that load into it, asked of a server started for the purpose."""
    with Server(name) as server:
        caps = capabilities(server.client())
    return f"`{name}`: {caps.engine} {caps.version}, modules: {', '.join(sorted(caps.modules)) or 'none'}"


def table(outcomes: list[Outcome], engines: list[str]) -> str:
    """The markdown table (lesson x engine) with numbered notes saying what was skipped and why, and what failed."""
    by_key = {(o.lesson, o.engine): o for o in outcomes}
    rows, notes = [], []
    for lesson in dict.fromkeys(o.lesson for o in outcomes):
        cells = []
        for engine in engines:
            outcome = by_key.get((lesson, engine))
            if outcome is None:
                cells.append("not run")
                continue
            by_reason: dict[str, list[str]] = {}
            for part, why in outcome.skipped_parts:
                by_reason.setdefault(why, []).append(part)
            detail = "; ".join(f"{', '.join(parts)}: {why}" for why, parts in by_reason.items()) or outcome.reason
            if detail:
                notes.append(f"{len(notes) + 1}. {lesson} on {engine}: {detail}")
            cells.append(f"{outcome.cell(len(notes) if detail else None)} ({outcome.seconds:.0f} s)")
        rows.append(f"| {lesson} | " + " | ".join(cells) + " |")
    head = "| lesson | " + " | ".join(engines) + " |\n|---|" + "---|" * len(engines)
    return "\n".join([head, *rows]) + ("\n\n" + "\n".join(notes) if notes else "") + "\n"


def report(outcomes: list[Outcome], engines: list[str]) -> str:
    """The whole `build/matrix.md`: when and where it ran, the engines with versions and modules, the table."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = f"{platform.system()} {platform.machine()}, Python {platform.python_version()}"
    engine_lines = "\n".join(f"- {engine_line(name)}" for name in engines)
    passed = sum(o.status == "passed" for o in outcomes)
    return (f"{REPORT_START} on {when} ({where}): {passed} of {len(outcomes)} runs passed.\n\n"
            f"{engine_lines}\n\n{table(outcomes, engines)}")


def put_in_readme(readme: Path, text: str) -> None:
    """Replace what stands between the matrix markers in `readme` with `text`."""
    content = _readme_markers(readme)
    before, rest = content.split(README_START, 1)
    after = rest.split(README_END, 1)[1]
    readme.write_text(f"{before}{README_START}\n{text}{README_END}{after}")


def _readme_markers(readme: Path) -> str:
    """The README's text, once it is known to hold both markers and to be writable."""
    try:
        content = readme.read_text()
    except OSError as err:
        raise ConfigError(f"--readme: cannot read {readme} ({err.strerror}).") from None
    if README_START not in content or README_END not in content:
        raise ConfigError(f"{readme} has no {README_START} ... {README_END} markers to put the table between.")
    if not os.access(readme, os.W_OK):
        raise ConfigError(f"--readme: {readme} is not writable.")
    return content


def readme_engines(readme: Path) -> list[str]:
    """The engines (columns) of the table between the README's markers; none if it holds no table yet."""
    inside = _readme_markers(readme).split(README_START, 1)[1].split(README_END, 1)[0]
    head = next((line for line in inside.splitlines() if line.startswith("| lesson |")), "")
    return [cell.strip() for cell in head.strip("| ").split("|")[1:]]


def _check_readme_run(readme: Path, notebooks: list[Path], engines: list[str]) -> None:
    """The README's table is the whole matrix: a run that would replace it must cover every lesson, and every
    engine the table has now (it may add engines, never drop one)."""
    if notebooks != lessons():
        raise ConfigError("--readme replaces the README's whole table, so the run must cover every lesson: drop "
                          "--lessons, or drop --readme and read the report in --output.")
    dropped = [name for name in readme_engines(readme) if name not in engines]
    if dropped:
        raise ConfigError(f"--readme replaces the README's whole table, which has {', '.join(readme_engines(readme))}"
                          f": the run must include {', '.join(dropped)} too (pass them in --engines, or drop "
                          "--engines), or drop --readme and read the report in --output.")


def check_output(target: Path) -> Path:
    """`target` if the report can be written there without losing anything: not a directory, in a directory
    this user may write (or may create), and not an existing file other than an earlier report."""
    if target.is_dir():
        raise ConfigError(f"--output {target} is a directory: pass a file name, like {target / 'matrix.md'}.")
    if target.exists():
        try:
            earlier = target.read_text(errors="replace").startswith(REPORT_START)
        except OSError as err:
            raise ConfigError(f"--output {target}: cannot read it ({err.strerror}).") from None
        if not earlier:
            raise ConfigError(f"--output {target} exists and is not an earlier matrix report: it would be "
                              "overwritten; pass a new file name (default build/matrix.md).")
        if not os.access(target, os.W_OK):
            raise ConfigError(f"--output {target} is not writable.")
        return target
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {target}: {parent} is not a directory this user may write in.")
    return target


def _chosen_lessons(only: list[str] | None) -> list[Path]:
    every = lessons()
    if not only:
        return every
    numbers = [p.name[:2] for p in every]
    unknown = [n for n in only if n not in numbers]
    if unknown:
        raise ConfigError(f"No lesson numbered {', '.join(unknown)}: pass two-digit numbers like 05; the lessons "
                          f"are {' '.join(numbers)}.")
    return [p for p in every if p.name[:2] in only]


def run(engines: list[str] | None = None, only: list[str] | None = None, output: Path | None = None,
        readme: Path | None = None) -> list[Outcome]:
    """Every lesson (or those whose number is in `only`) on every installed engine (or `engines`), one at a time;
    print each outcome as it comes, write the report to `output` (default `build/matrix.md`) and, with `readme`,
    into the README between its markers. The README's table is the whole matrix: `readme` is refused unless
    the run covers every lesson on every installed engine. Every argument is checked before the first lesson."""
    installed = available_engines()
    chosen = list(dict.fromkeys(engines)) if engines else [name for name in ENGINES if name in installed]
    absent = [name for name in chosen if name not in installed]
    if absent:
        raise ConfigError(f"Not installed here: {', '.join(absent)}; installed: {', '.join(installed)}.")
    notebooks = _chosen_lessons(only)
    target = check_output(output or Path(__file__).resolve().parents[1] / "build" / "matrix.md")
    if readme is not None:
        _check_readme_run(readme, notebooks, chosen)
    outcomes = []
    for notebook in notebooks:
        for engine in chosen:
            outcome = run_lesson(notebook, engine)
            outcomes.append(outcome)
            extra = f": {outcome.reason}" if outcome.reason else ""
            parts = f" ({len(outcome.skipped_parts)} part(s) skipped)" if outcome.skipped_parts else ""
            print(f"{notebook.stem:28} {engine:8} {outcome.status}{parts} in {outcome.seconds:.0f} s{extra}",
                  flush=True)
    text = report(outcomes, chosen)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    print(f"wrote {target}")
    if readme is not None:
        put_in_readme(readme, text)
        print(f"updated the table in {readme}")
    return outcomes
