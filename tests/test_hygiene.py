"""Every lesson follows the template, carries no stray outputs, and touches only its own keys."""

import re
import threading
import time

import nbformat
import pytest
from nbclient import NotebookClient

from labkit.server import spawn
from labkit.server.lab import URL_ENV

from .notebooks import NAME, NOTEBOOKS, code, headings, lessons, number, read

REQUIRED_BEFORE = ["What you will learn", "Before you start", "Setup"]
REQUIRED_AFTER = ["Exercises", "Summary", "Next", "Cleanup"]
LESSONS = lessons()
IDS = [p.stem for p in LESSONS]


def test_lessons_are_numbered_uniquely_starting_at_00():
    """Lessons land in any order while they are being written, so gaps are allowed; numbers never repeat."""
    assert LESSONS, "no notebooks found"
    for path in LESSONS:
        assert NAME.match(path.name), f"{path.name}: expected NN_snake_case.ipynb"
    numbers = [number(p) for p in LESSONS]
    assert len(set(numbers)) == len(numbers), numbers
    assert LESSONS[0].name == "00_setup.ipynb"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_template_headings(path):
    nb = read(path)
    assert len(headings(nb, 1)) == 1, "exactly one H1 title"
    h2 = headings(nb, 2)
    n = number(path)
    sections = [h for h in h2 if re.match(rf"^{n}\.\d+ ", h)]
    assert sections, f"no numbered sections '## {n}.1 ...'"
    assert [int(s.split()[0].split(".")[1]) for s in sections] == list(range(1, len(sections) + 1))
    rest = [h for h in h2 if h not in sections and not h.startswith("Common mistake: ")]
    assert rest == REQUIRED_BEFORE + REQUIRED_AFTER, rest
    assert h2.index(sections[0]) > h2.index("Setup") and h2.index(sections[-1]) < h2.index("Exercises")
    learn = next(c.source for c in nb.cells if c.cell_type == "markdown" and "## What you will learn" in c.source)
    items = re.findall(r"^\d+\. ", learn.split("## What you will learn")[1].split("##")[0], re.M)
    assert len(items) == len(sections), "'What you will learn' lists one item per numbered section"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_no_outputs_except_checked_ones(path):
    for i, cell in enumerate(read(path).cells):
        if cell.cell_type != "code":
            continue
        checked = "NBVAL_CHECK_OUTPUT" in cell.source
        if checked:
            assert cell.outputs and cell.metadata.get("keep_output"), f"cell {i}: checked output missing"
        else:
            assert not cell.outputs, f"cell {i} has stored outputs: run `make strip`"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_uses_its_namespace_and_cleans_up(path):
    nb = read(path)
    source = code(nb)
    assert re.search(rf'Namespace\("l{number(path):02d}', source), "the lesson's Namespace must be lNN..."
    assert not re.search(r"\br\.flush(all|db)\b", source, re.I), "never flush the lab server"
    last = [c for c in nb.cells if c.cell_type == "code"][-1].source
    assert ".cleanup(r)" in last, "the last code cell cleans the lesson's keys"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_writes_only_its_own_prefix(path, monkeypatch):
    """Run the lesson on its own server with keyspace events on, and record every key it writes."""
    with spawn(notify_keyspace_events="KEA") as srv:
        touched, errors, listener = set(), [], srv.client().pubsub()
        listener.psubscribe(**{"__keyevent@*__:*": lambda msg: touched.add(msg["data"])})
        thread = listener.run_in_thread(sleep_time=0.01, daemon=True,
                                        exception_handler=lambda err, *_: (errors.append(err), thread.stop()))
        monkeypatch.setenv(URL_ENV, srv.url)
        nb = read(path)
        where = {"metadata": {"path": str(NOTEBOOKS)}}
        NotebookClient(nb, timeout=120, kernel_name="python3", resources=where).execute()
        time.sleep(0.2)
        thread.stop()
        thread.join()
        remaining = srv.client().dbsize()
    assert not errors, f"the key audit lost its subscription, so it cannot vouch for the lesson: {errors}"
    prefix = f"lab:l{number(path):02d}"
    assert touched, "the audit saw no key at all"
    assert all(k.startswith(prefix) for k in touched), sorted(k for k in touched if not k.startswith(prefix))
    assert remaining == 0, "the Cleanup section left keys behind"


def test_audit_would_catch_a_stray_key():
    """The audit above can fail: a write outside the prefix shows up in the recorded keys."""
    with spawn(notify_keyspace_events="KEA", modules=False) as srv:
        seen, done = set(), threading.Event()
        p = srv.client().pubsub()
        p.psubscribe(**{"__keyevent@*__:*": lambda m: (seen.add(m["data"]), done.set())})
        thread = p.run_in_thread(sleep_time=0.01, daemon=True)
        time.sleep(0.05)
        srv.client().set("stray", 1)
        done.wait(2)
        thread.stop()
    assert "stray" in seen


def test_notebooks_are_valid_nbformat():
    for path in LESSONS:
        nbformat.validate(read(path))
    assert NOTEBOOKS.is_dir()
