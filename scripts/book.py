"""`make book`: every lesson executed on a server of its own, then rendered as a static site.

    python scripts/book.py              # every lesson: build/book-src/ (executed copies), build/book/ (HTML)
    python scripts/book.py 00 04        # only these lessons (a quick look; `make book` runs them all)

Nothing is written under notebooks/: the executed copies, with their outputs, go to build/book-src/lessons/.
A widget's view is replaced by its final state (its labels, its values, its output area), so a page shows
what the learner sees once the cell is done; live monitors end with a static figure of their own. Sphinx
(MyST-NB, sphinx-book-theme, configured in book/conf.py) renders the site with execution off: every output
in the book comes from this run. The landing page, the Benchmarks page (build/bench/results.json), the
engine matrix (build/matrix.md) and the known-wrong snippets (book/known-wrong.yml) are written here.
"""

from __future__ import annotations

import argparse
import html
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import yaml

from labkit.bench.core import Row, baseline_of, by_metric, ratio

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CONF = ROOT / "book"
SRC = ROOT / "build" / "book-src"
SITE = ROOT / "build" / "book"
BENCH = ROOT / "build" / "bench" / "results.json"
MATRIX = ROOT / "build" / "matrix.md"
CELL_TIMEOUT_S = 240
LESSON_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
MISTAKE = "Common mistake"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the colours of a traceback, dropped from the build's messages
ARROW = re.compile(r"^\s*-+>\s*(.*)$")  # "---> 18 assert ...": the line a cell stopped at


# ---------------------------------------------------------------- the lessons and what their pages say


@dataclass
class Lesson:
    """One notebook of notebooks/, as the book sees it."""

    path: Path
    title: str
    headings: list[str]  # the `## ` headings, as markdown
    duration: str | None  # "about 30 minutes", from "Before you start"
    seconds: float | None = None  # how long its cells ran in this build
    runs: int = 1  # the run that passed (a failed one is run again once)

    @property
    def number(self) -> int:
        return int(self.path.name[:2])

    @property
    def page(self) -> str:
        return f"lessons/{self.path.name}"

    def anchor(self, heading: str) -> str:
        return f"{self.page}#{slug(heading)}"

    def mistakes(self) -> list[str]:
        return [h for h in self.headings if h.startswith(MISTAKE)]

    def find(self, phrase: str) -> str | None:
        """The first `##` heading containing `phrase` (case-insensitive), a "Common mistake" one first."""
        wanted = phrase.lower()
        for heading in self.mistakes() + self.headings:
            if wanted in plain(heading).lower():
                return heading
        return None


def lesson_paths(only: list[str] | None = None) -> list[Path]:
    paths = sorted(p for p in NOTEBOOKS.glob("*.ipynb") if LESSON_NAME.match(p.name))
    return [p for p in paths if not only or p.name[:2] in only]


def read_lesson(path: Path) -> Lesson:
    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    lines = [ln for text in markdown for ln in re.sub(r"```.*?```", "", text, flags=re.S).splitlines()]
    title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), path.stem)
    headings = [ln[3:].strip() for ln in lines if ln.startswith("## ")]
    return Lesson(path, title, headings, duration_of("\n".join(markdown)))


DURATION = re.compile(r"\b(?:(about|around) )?(an?|one|\d+(?:\.\d+)?) (minutes?|hours?)\b", re.I)


def duration_of(markdown: str) -> str | None:
    """The time to complete a lesson states in "Before you start" ("about 2 hours"), or None."""
    section = re.search(r"## Before you start\n(.*?)(?=\n## |\Z)", markdown, re.S)
    found = DURATION.search(section.group(1)) if section else None
    if not found:
        return None
    about, amount, unit = found.groups()
    return " ".join(part for part in (about and about.lower(), amount, unit) if part)


def readme_summaries() -> dict[int, tuple[str, str]]:
    """The README's lesson list: number -> (notebook file name, what you will do)."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"\d\d", cells[0]) and cells[1].endswith(".ipynb`"):
            rows[int(cells[0])] = (cells[1].strip("`"), cells[2])
    return rows


def plain(heading: str) -> str:
    """A heading's text as the page shows it: inline code marks removed, and the stars of bold or italic
    outside inline code."""
    parts = heading.split("`")
    return "".join(part if i % 2 else part.replace("*", "") for i, part in enumerate(parts))


def slug(heading: str) -> str:
    """The HTML id MyST gives a heading with `myst_heading_anchors` (its GitHub-style slug): lower case,
    spaces as hyphens, every other character that is not a word character, a hyphen or CJK dropped."""
    return re.sub(r"[^\w\u4e00-\u9fff\- ]", "", plain(heading).lower().replace(" ", "-"))


# ---------------------------------------------------------------- execution


def execute(path: Path, out: Path) -> float:
    """Run `path` in a fresh kernel on a server of its own (as the tests do), write the executed copy with
    its widgets made static to `out`; return the seconds it took. Raises on a failing cell."""
    from nbclient import NotebookClient

    from labkit.server import spawn
    from labkit.server.lab import URL_ENV

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    with spawn() as server:
        os.environ[URL_ENV] = server.url
        started = time.monotonic()
        NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
        seconds = time.monotonic() - started
    freeze_widgets(nb)
    nb.metadata["labkit_book"] = {"seconds": round(seconds, 1)}
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return seconds


def _execute_one(path: str, out: str) -> tuple[str, float | None, str]:
    try:
        return path, execute(Path(path), Path(out)), ""
    except Exception as err:  # reported by execute_all
        return path, None, ANSI.sub("", f"{type(err).__name__}: {str(err)[-3000:]}")


def failed_line(error: str) -> str:
    """The line a failed cell stopped at (IPython marks it with an arrow) and the error's last line."""
    lines = error.strip().splitlines()
    arrows = [found.group(1) for ln in lines if (found := ARROW.match(ln))]
    return f"{arrows[-1] if arrows else '?'}: {lines[-1].strip() if lines else ''}"


def execute_all(paths: list[Path], jobs: int, retries: int = 1) -> dict[Path, tuple[float, int]]:
    """Execute every lesson, `jobs` at a time; return the seconds each took, and in which run it passed.

    A lesson that fails is run again, from scratch on a new server, up to `retries` times, and says so:
    on a machine busy with other work a timing check can fail once (the run shown is then the one that
    passed). One that fails every time stops the build, with each failure's message."""
    seconds: dict[Path, tuple[float, int]] = {}
    failures: dict[Path, list[str]] = {p: [] for p in paths}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        pending = {pool.submit(_execute_one, str(p), str(SRC / "lessons" / p.name)) for p in paths}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                path, took, error = future.result()
                lesson = Path(path)
                if not error:
                    seconds[lesson] = took, len(failures[lesson]) + 1
                    print(f"ran     {lesson.name} in {took:.0f} s", flush=True)
                    continue
                failures[lesson].append(error)
                if len(failures[lesson]) <= retries:
                    print(f"RETRY   {lesson.name}: it failed at {failed_line(error)}", flush=True)
                    pending.add(pool.submit(_execute_one, path, str(SRC / "lessons" / lesson.name)))
                else:
                    print(f"FAILED  {lesson.name} at {failed_line(error)}", flush=True)
    failed = [p for p in paths if p not in seconds]
    if failed:
        sys.exit("the book was not built: a lesson failed every time it ran\n\n" + "\n\n".join(
            f"{p.name}, run {i}: {error}" for p in failed for i, error in enumerate(failures[p], 1)))
    return seconds


def freeze_widgets(nb: nbformat.NotebookNode) -> None:
    """Replace every widget view by its final state as plain outputs, and drop the widget state (the page
    loads no widget JavaScript)."""
    state = nb.metadata.pop("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            view = output.get("data", {}).get(WIDGET_VIEW)
            outputs += static_outputs(view["model_id"], state) if view else [output]
        cell.outputs = outputs


def static_outputs(model_id: str, state: dict) -> list[nbformat.NotebookNode]:
    """What widget `model_id` shows in its final state: an output area's outputs, a label's HTML, a
    control's description and value; boxes in the order of their children."""
    model = state.get(model_id)
    if model is None:
        return []
    name, values = model["model_name"], model["state"]
    if name == "OutputModel":
        return [nbformat.from_dict(o) for o in values.get("outputs", [])]
    if "children" in values:
        return [o for child in values["children"] for o in static_outputs(child.removeprefix("IPY_MODEL_"), state)]
    if name in ("HTMLModel", "HTMLMathModel"):
        text = values.get("value", "")
    elif name == "LabelModel":
        text = html.escape(str(values.get("value", "")))
    elif "value" in values:
        described = f"{values.get('description', '')} " if values.get("description") else ""
        text = f"{html.escape(described)}<code>{html.escape(str(values['value']))}</code>"
    else:
        return []
    plain_text = re.sub(r"<[^>]+>", "", text)
    return [nbformat.v4.new_output("display_data", data={
        "text/html": f'<div class="widget-final">{text}</div>', "text/plain": html.unescape(plain_text)})]


# ---------------------------------------------------------------- pages


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def index_page(lessons: list[Lesson], summaries: dict[int, tuple[str, str]], built: dict) -> str:
    present = {lesson.number for lesson in lessons}
    rows = []
    for lesson in lessons:
        summary = summaries.get(lesson.number, ("", ""))[1]
        ran = f"ran in {lesson.seconds:.0f} s" if lesson.seconds is not None else ""
        if lesson.runs > 1:
            ran += f" (run {lesson.runs}: the first failed a check)"
        rows.append((lesson.number, [f"[{lesson.title}]({lesson.page})", summary,
                                     "; ".join(t for t in (lesson.duration, ran) if t)]))
    for number, (name, summary) in sorted(summaries.items()):
        if number not in present:
            rows.append((number, [f"{number:02d} `{name}`: being written, not in this build", summary, ""]))
    rows.sort(key=lambda row: row[0])
    toc = "\n".join(f"lessons/{lesson.path.stem}" for lesson in lessons)
    return f"""# The Redis/Valkey Production Patterns Lab

Every lesson of the lab, as a page you can read without Python. Each page is the lesson's notebook **run
by the build that made this site**, on a Valkey server the build started for that lesson alone: the
numbers, tables and figures are the ones that run measured and checked (a lesson that fails its checks twice
stops the build). Live widgets appear in their final state, as a static figure.

Built {built['when']} on {built['machine']}, Python {built['python']}, {built['engine']}. The cells of
all {len(lessons)} lessons ran in {built['total']:.0f} s, {built['jobs']} at a time.

To run a lesson yourself, and change it: `make lab` in a checkout (see the README).

## The lessons

"Time" is each lesson's own estimate for a learner, predictions and exercises included, then how long
its cells ran in this build, on a machine shared with other work.

{table(["lesson", "what you will do", "time"], [cells for _, cells in rows])}

## Also in this book

- [Benchmarks](benchmarks.md): `python -m labkit bench`, every suite side by side, with the machine it ran on.
- [Engine matrix](matrix.md): which engine does what, from `python -m labkit matrix`.
- [Known-wrong snippets](mistakes.md): the widely copied mistakes the lab runs, each linked to the section
  that runs it.

```{{toctree}}
:hidden:
:caption: Lessons

{toc}
```

```{{toctree}}
:hidden:
:caption: Reference

benchmarks
matrix
mistakes
```
"""


def number_text(value: float) -> str:
    """Whole and large numbers without decimals, small ones with two or three (as the bench prints them)."""
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def bench_figure(groups: dict[tuple[str, str], list[Row]], out: Path) -> bool:
    """One suite's metrics that have a baseline, as horizontal bars of each contender's ratio to it; False
    (and no file) if none has a baseline."""
    from matplotlib.figure import Figure

    compared = {metric: (rows, baseline_of(rows)) for (_, metric), rows in groups.items() if baseline_of(rows)}
    if not compared:
        return False
    height = 0.6 + sum(0.28 * len(rows) + 0.75 for rows, _ in compared.values())
    fig = Figure(figsize=(8, height), dpi=90)
    axes = fig.subplots(len(compared), 1, squeeze=False)[:, 0]
    for ax, (metric, (rows, base)) in zip(axes, compared.items(), strict=True):
        ax.barh([r.contender for r in rows], [ratio(r, base) or 0.0 for r in rows],
                color=["tab:gray" if r is base else "tab:blue" for r in rows])
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_title(f"{metric}: ratio to {base.contender}", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel("ratio to the metric's baseline (the gray bar)", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return True


def benchmarks_page(results: Path = BENCH, figures: Path | None = None) -> str:
    """The Benchmarks page from `python -m labkit bench`'s results file (a figure per suite written under
    `figures`, when given), or a page saying it was not run."""
    head = "# Benchmarks\n\n"
    if not results.exists():
        return head + ("**Not run.** This build found no `build/bench/results.json`. Run `python -m labkit bench` "
                       "(or `make bench`), then `make book` again: this page then shows every suite's table and "
                       "figure, and the machine they ran on.\n")
    document = json.loads(results.read_text())
    groups = by_metric(Row(**row) for row in document["rows"])
    machine = (f"{document.get('platform', '?')} with {document.get('cpu_count', '?')} CPUs, Python "
               f"{document.get('python', '?')}, default engine {document.get('engine') or 'none'} "
               f"{document.get('engine_version') or ''}").strip()
    parts = [head + f"Measured {document.get('created', '?')} by `python -m labkit bench` on {machine} "
             f"(the `server` suite compares the engines; every other suite runs on the default engine).\n",
             "Every suite times its contenders **side by side**, in turns, so that a busy machine slows them "
             "alike: read the ratios, not the absolute numbers, which belong to that machine. A ratio above 1 "
             "means more of the metric than the baseline, whatever the unit (more per second, or more "
             "microseconds).\n"]
    for suite in document["suites"]:
        suite_groups = {key: rows for key, rows in groups.items() if key[0] == suite}
        parts.append(f"## {suite}\n")
        figure = figures / f"bench-{suite}.png" if figures else None
        if figure is not None and bench_figure(suite_groups, figure):
            parts.append(f"![{suite}: every contender's ratio to its metric's baseline]({figure.name})\n")
        for (_, metric), rows in suite_groups.items():
            base = baseline_of(rows)
            cells = []
            for row in rows:
                factor = ratio(row, base)
                note = "baseline" if row is base else f"{factor:.2f}x" if factor is not None else ""
                cells.append([row.contender, f"{number_text(row.value)} {row.unit}", note])
            parts.append(f"### {metric}\n\n" + table(["contender", "value", "ratio"], cells) + "\n")
    return "\n".join(parts)


def matrix_page(matrix: Path = MATRIX) -> str:
    head = "# Engine matrix\n\n"
    if not matrix.exists():
        return head + ("**Not run yet.** This build found no `build/matrix.md`: `python -m labkit matrix` writes it "
                       "(which engine has which capability, measured on the servers installed here). Run it, then "
                       "`make book` again.\n")
    body = matrix.read_text()
    body = re.sub(r"^# .*\n", "", body, count=1)  # the page has its own title
    built = datetime.fromtimestamp(matrix.stat().st_mtime, UTC).isoformat(timespec="seconds")
    return head + f"From `build/matrix.md`, written by `python -m labkit matrix` ({built}).\n\n" + body


def mistakes_page(lessons: list[Lesson], entries: list[dict]) -> str:
    """The known-wrong snippets, each linked to the lesson section that runs it, then every "Common
    mistake" section of every lesson.

    Raises:
        ValueError: an entry of a lesson that is not `pending` names a section the lesson does not have.
    """
    by_number = {lesson.number: lesson for lesson in lessons}
    wrong, right = [], []
    for entry in entries:
        lesson = by_number.get(entry["lesson"])
        where = f"lesson {entry['lesson']:02d} (being written)"
        if lesson is not None:
            heading = lesson.find(entry["section"])
            if heading is None and not entry.get("pending"):
                raise ValueError(f"book/known-wrong.yml: no `##` heading of {lesson.path.name} contains "
                                 f"{entry['section']!r}; fix the entry's `section`")
            where = (f"[lesson {lesson.number:02d}, {heading}]({lesson.anchor(heading)})" if heading
                     else f"[lesson {lesson.number:02d}]({lesson.page})")
        if "claim" in entry:
            right.append(f"- **{entry['claim']}** {entry['right']}\\\n  Runs in {where}.")
        else:  # a backslash at the end of a line breaks it
            wrong.append(f"- **Wrong:** {entry['wrong']}\\\n  **What the lab shows:** {entry['right']}\\\n"
                         f"  **Runs in** {where}.")
    sections = []
    for lesson in lessons:
        links = [f"- [{h.removeprefix(MISTAKE + ': ')}]({lesson.anchor(h)})" for h in lesson.mistakes()]
        if links:
            sections.append(f"### [{lesson.title}]({lesson.page})\n\n" + "\n".join(links))
    return f"""# Known-wrong snippets

Tutorials, answers and generated code repeat a handful of Redis patterns that are wrong in ways a quick test
does not show: a protection that never fires, a reply read the wrong way, a limit that holds until two
requests arrive together, a default that was never the default. The lab runs each of them against a real
server, shows the damage in numbers, then runs the fix. This page lists them, each linked to the section
of the lesson that runs it.

## The list

{chr(10).join(wrong)}

## Repeated, and right

Not every widely repeated number is wrong; the lab checks these too.

{chr(10).join(right)}

## Every "Common mistake" section

Each lesson ends its teaching with the mistakes of its subject, run and then fixed:

{chr(10).join(sections)}
"""


# ---------------------------------------------------------------- the build


def machine() -> str:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        model = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
                      if ln.startswith("model name")), "")
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs" + (f" ({model})" if model else "")


def engine() -> str:
    from labkit.server import find_engine

    found = find_engine()
    return f"{found.name} {found.version}"


def write_pages(lessons: list[Lesson], total: float, jobs: int) -> None:
    built = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
             "python": platform.python_version(), "engine": engine(), "total": total, "jobs": jobs}
    entries = yaml.safe_load((CONF / "known-wrong.yml").read_text())
    (SRC / "index.md").write_text(index_page(lessons, readme_summaries(), built))
    (SRC / "benchmarks.md").write_text(benchmarks_page(BENCH, SRC))
    (SRC / "matrix.md").write_text(matrix_page(MATRIX))
    (SRC / "mistakes.md").write_text(mistakes_page(lessons, entries))


def sphinx() -> None:
    """Render build/book-src/ into build/book/; any warning (a broken link or anchor) fails the build."""
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-c", str(CONF), "-W", "--keep-going",
                           "-q", "-E", str(SRC), str(SITE)])
    if done.returncode:
        sys.exit(f"sphinx-build failed ({done.returncode}): see the warnings above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers (00 04 ...); default: every lesson")
    parser.add_argument("--jobs", type=int, default=2, help="lessons executed at once (default 2)")
    parser.add_argument("--retries", type=int, default=1, help="runs again of a lesson that failed (default 1)")
    args = parser.parse_args(argv)
    paths = lesson_paths(args.lessons)
    if not paths:
        sys.exit(f"no lesson notebook matches {args.lessons} in {NOTEBOOKS}")
    started = time.monotonic()
    for stale in (SRC, SITE):
        shutil.rmtree(stale, ignore_errors=True)
    (SRC / "lessons").mkdir(parents=True)
    seconds = execute_all(paths, args.jobs, args.retries)
    executed = time.monotonic() - started
    lessons = [read_lesson(p) for p in paths]
    for lesson in lessons:
        lesson.seconds, lesson.runs = seconds[lesson.path]
    write_pages(lessons, executed, args.jobs)
    sphinx()
    print(f"book: {SITE / 'index.html'} ({len(lessons)} lessons executed in {executed:.0f} s, "
          f"built in {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
