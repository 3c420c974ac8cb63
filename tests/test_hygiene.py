"""Every lesson follows the template, carries no stray outputs, touches only its own keys and has its module;
pattern modules stay library only."""

import ast
import importlib
import re
import threading
from pathlib import Path

import nbformat
import pytest
import redis

from .audit import KeyAudit
from .notebooks import NAME, NOTEBOOKS, code, headings, lessons, number, read, shares_server
from .waiting import eventually

REQUIRED_BEFORE = ["What you will learn", "Before you start", "Setup"]
REQUIRED_AFTER = ["Exercises", "Summary", "Next", "Cleanup"]
PATTERNS = ["cache", "sessions", "ratelimit", "pubsub", "streams", "vectors", "locks", "ops", "replication"]
LABKIT = Path(__file__).resolve().parents[1] / "labkit"
TESTS = Path(__file__).resolve().parent
README = (LABKIT.parent / "README.md").read_text()
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
def test_lesson_has_its_module_and_imports_it(path):
    """`NN_name.ipynb` is served by `labkit/lessons/lNN_name.py`, which says so first, and imports it as `lesson`."""
    module = importlib.import_module(f"labkit.lessons.l{path.stem}")
    assert (module.__doc__ or "").startswith(f"Lesson {path.stem[:2]}, "), "the docstring names its lesson first"
    assert f"from labkit.lessons import l{path.stem} as lesson" in code(read(path))
    assert (TESTS / "lessons" / f"test_l{path.stem[:2]}.py").exists(), "each lesson module has its tests"
    assert f"`lessons/l{path.stem}.py`" in README, "the README's map has a row for the lesson"


@pytest.mark.parametrize("name", PATTERNS)
def test_pattern_module_is_library_only(name):
    """No processes and no lesson code in a pattern module: experiments live in labkit/lessons/."""
    tree = ast.parse((LABKIT / f"{name}.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not {m for m in imported if m.split(".")[0] in ("subprocess", "multiprocessing")}, imported
    assert not {m for m in imported if m.startswith(("labkit.lessons", "labkit.server"))}, imported


def test_the_key_audit_catches_a_stray_key_and_a_leftover():
    """The audit that runs around every notebook (tests/conftest.py) can fail: a key outside the prefix and
    a key left behind both show up."""
    audit = KeyAudit()
    client = redis.Redis.from_url(audit.url, decode_responses=True)
    client.set("lab:l07:mine", 1)
    client.set("stray", 1)
    problems = audit.problems("lab:l07")  # (it waits for the events of both writes: no sleep needed)
    assert any("'stray'" in p for p in problems) and any("left behind" in p for p in problems)


def test_the_audit_sees_a_subscriber_and_a_blocked_reader_left_open():
    audit = KeyAudit()
    client = redis.Redis.from_url(audit.url, decode_responses=True)
    pubsub = client.pubsub()
    pubsub.subscribe("lab:l07:news")
    blocked = threading.Thread(target=lambda: redis.Redis.from_url(audit.url).blpop("lab:l07:queue", timeout=60))
    blocked.start()
    both = {"(subscribe)", "(blpop)"}
    seen_both = eventually(lambda: {entry.split(" ")[-1] for entry in audit.lingering_clients()} == both)
    pubsub.close()
    client.lpush("lab:l07:queue", "wake")  # the blocked reader returns
    blocked.join(30)
    assert seen_both and not blocked.is_alive()
    assert audit.lingering_clients(settle_s=10) == []
    audit.finish()


def test_the_key_audit_passes_a_clean_lesson():
    audit = KeyAudit()
    client = redis.Redis.from_url(audit.url, decode_responses=True)
    client.set("lab:l07:mine", 1)
    client.delete("lab:l07:mine")
    assert audit.problems("lab:l07") == []


def test_notebooks_are_valid_nbformat():
    for path in LESSONS:
        nbformat.validate(read(path))
    assert NOTEBOOKS.is_dir()


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_setup_starts_from_a_clean_slate(path):
    """Restart and Run All after a kernel died half-way: Setup removes what the broken run left."""
    setup = next(c.source for c in read(path).cells if c.cell_type == "code" and "Namespace(" in c.source)
    assert "ns.cleanup(r)" in setup, "Setup must call ns.cleanup(r) right after creating the namespace"
    if "create_index(" in code(read(path)):
        assert "drop_indexes(r, ns.prefix)" in setup, "a lesson that creates indexes drops its own in Setup"


@pytest.mark.parametrize("path", LESSONS, ids=IDS)
def test_lesson_decides_by_capability_never_by_engine_name(path):
    """Where engines differ a lesson reads capabilities; `caps.engine` and engine names stay out of its code, and
    its module offers `lesson.skip` for the part that cannot run here."""
    module = importlib.import_module(f"labkit.lessons.l{path.stem}")
    source = code(read(path)) + "\n" + Path(module.__file__).read_text()
    # an engine's name, not a tool's: `method == "valkey-cli"` (lesson 13) names the client it runs
    engine_test = re.search(r"\.engine\s*==|==\s*[\"'](valkey|redis)\d*[\"']", source)
    assert not engine_test, "compare capabilities, not engine names"
    assert not re.search(r"[\"'](valkey9|valkey8|redis8)[\"']", source), "no engine names in a lesson"
    assert module.skip is importlib.import_module("labkit.lessons").skip


# -- workshops ------------------------------------------------------------------------------------------------
def test_every_exercise_check_records_its_verdict():
    """Each `check_...` of a lesson module carries `@check`: on a workshop it records the learner's verdict."""
    for module in sorted((LABKIT / "lessons").glob("l[0-9][0-9]_*.py")):
        for node in ast.parse(module.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("check_"):
                decorators = {d.id for d in node.decorator_list if isinstance(d, ast.Name)}
                assert "check" in decorators, f"{module.name}: {node.name} needs @check (from labkit.lessons)"


OWN_SERVER = re.compile(r"run on a server of their own on the learner's machine: (.*?)\.\s*\n\n", re.S)
SHARED = [p for p in LESSONS if shares_server(read(p))]
# What a workshop learner may not send (CONFIG, ACL, CLIENT LIST/KILL...): a lesson needing one says own_server
ADMIN = re.compile(r"\br\.(config_\w+|acl_\w+|client_(list|kill|pause|no_evict|tracking\w*)|flushall|flushdb|"
                   r"function_\w+|keys|monitor|swapdb|save|bgsave|bgrewriteaof|module_\w+|slowlog_\w+|"
                   r"script_(flush|kill)|randomkey|sort|pubsub_channels|ft)\(|"
                   r"\br\.execute_command\(\s*[\"'](CONFIG|ACL|FT\.|FUNCTION|CLIENT|MODULE|DEBUG|MONITOR|KEYS)", re.I)


def test_the_readme_names_the_lessons_that_need_a_server_of_their_own():
    listed = OWN_SERVER.search(README)
    assert listed, "the README's Lessons section lists the lessons that run on a server of their own in a workshop"
    own = {p.name[:2] for p in LESSONS if p not in SHARED}
    assert set(re.findall(r"\b(\d\d) \(", listed[1])) == own, f"own_server=True in their Setup: {sorted(own)}"


@pytest.mark.parametrize("path", SHARED, ids=[p.stem for p in SHARED])
def test_a_lesson_on_the_shared_server_sends_no_administrative_command(path):
    found = sorted({m[0] for m in ADMIN.finditer(code(read(path)))})
    assert not found, f"{found}: a workshop learner may not; connect with labkit.connect(own_server=True)"


def test_the_instructor_notebook_is_tested_and_stripped_though_not_a_lesson():
    """Not a lesson (the template does not apply: `lessons()` globs notebooks/*.ipynb only), but nbval runs
    it (tests/workshops.py gives it a workshop) and `make strip` strips it."""
    path = NOTEBOOKS / "workshop" / "instructor.ipynb"
    nb = read(path)
    nbformat.validate(nb)
    assert path not in LESSONS and all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    project = (LABKIT.parent / "pyproject.toml").read_text()
    assert '"notebooks"' in project and "notebooks/workshop" not in project
    strip = next(line for line in (LABKIT.parent / "Makefile").read_text().splitlines() if "nbstripout" in line)
    assert "notebooks/workshop/*.ipynb" in strip
