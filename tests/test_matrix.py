"""`python -m labkit matrix`: real notebooks run in real kernels against real servers of each engine."""

from __future__ import annotations

import subprocess
import sys

import nbformat
import pytest

from labkit import ConfigError, matrix
from labkit.server import available_engines, capabilities, find_engine, spawn

ENGINE = find_engine().name


def _notebook(tmp_path, *cells: str, requires: list[str] | None = None):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if requires is not None:
        nb.metadata["labkit"] = {"requires": requires}
    path = tmp_path / "99_probe.ipynb"
    nbformat.write(nb, path)
    return path


def test_a_lesson_runs_on_a_server_of_the_engine_and_its_skipped_parts_are_collected(tmp_path):
    engine = sorted(available_engines())[-1]  # not necessarily the default one
    path = _notebook(
        tmp_path,
        "import os, labkit\nfrom labkit.server import capabilities\nr = labkit.connect()\n"
        f"assert capabilities(r).version == {find_engine(engine).version!r}\n"
        f"assert os.environ['LABKIT_ENGINE'] == {engine!r}",
        "from labkit.lessons import skip\nskip('9.1 vector sets', 'no VADD here')",
        "skip('9.2 more', 'a reason. With a dot')",
    )
    outcome = matrix.run_lesson(path, engine)
    assert outcome.status == "passed" and outcome.reason == "", outcome
    assert outcome.skipped_parts == [("9.1 vector sets", "no VADD here"), ("9.2 more", "a reason. With a dot")]


def test_a_failing_cell_fails_the_lesson_naming_the_cell_and_the_error(tmp_path):
    path = _notebook(tmp_path, "x = 1", "assert x == 2, 'x is not two'", "print('never run')")
    outcome = matrix.run_lesson(path, ENGINE)
    assert outcome.status == "failed"
    assert outcome.reason == "code cell 1: AssertionError: x is not two at `assert x == 2, 'x is not two'`"


def test_a_lesson_needing_what_the_engine_lacks_is_skipped_whole_with_the_reason(tmp_path):
    for engine in available_engines():
        with spawn(engine) as server:
            has = capabilities(server.client()).vector_sets
        outcome = matrix.run_lesson(_notebook(tmp_path, "print('ran')", requires=["vector_sets"]), engine)
        if has:
            assert outcome.status == "passed", (engine, outcome)
        else:
            assert outcome.status == "skipped" and outcome.reason.startswith(f"needs vector_sets, which {engine}")


def test_an_unknown_capability_in_the_metadata_is_a_config_error(tmp_path):
    with spawn(modules=False) as server:
        caps = capabilities(server.client())
    assert matrix.unmet(["search", "waitaof"], caps) == [n for n in ("search", "waitaof") if not getattr(caps, n)]
    with pytest.raises(ConfigError, match="Unknown capability 'serach'"):
        matrix.unmet(["serach"], caps)


def test_the_table_has_a_row_per_lesson_a_column_per_engine_and_numbered_notes():
    outcomes = [
        matrix.Outcome("05_pubsub", "valkey9", "passed", 20.4),
        matrix.Outcome("05_pubsub", "redis", "passed", 21, [("5.4 the counter", "no such INFO field"),
                                                            ("5.5 more", "no such INFO field"), ("5.6", "other")]),
        matrix.Outcome("07_vector_search", "valkey9", "passed", 30),
        matrix.Outcome("07_vector_search", "redis", "skipped", 1, reason="needs search"),
    ]
    text = matrix.table(outcomes, ["valkey9", "redis"])
    lines = text.splitlines()
    assert lines[0] == "| lesson | valkey9 | redis |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| 05_pubsub | passed (20 s) | passed, 3 part(s) skipped [1] (21 s) |"
    assert lines[3] == "| 07_vector_search | passed (30 s) | skipped [2] (1 s) |"
    assert lines[5:] == ["1. 05_pubsub on redis: 5.4 the counter, 5.5 more: no such INFO field; 5.6: other",
                         "2. 07_vector_search on redis: needs search"]


def test_the_readme_table_is_replaced_between_its_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{matrix.README_START}\nold table\n{matrix.README_END}\nafter\n")
    matrix.put_in_readme(readme, "| new |\n")
    assert readme.read_text() == f"intro\n{matrix.README_START}\n| new |\n{matrix.README_END}\nafter\n"
    readme.write_text("no markers")
    with pytest.raises(ConfigError, match="markers"):
        matrix.put_in_readme(readme, "| new |\n")
    assert readme.read_text() == "no markers"


def test_every_lesson_notebook_is_found_and_its_requirements_are_capabilities():
    found = matrix.lessons()
    assert found and all(p.name[:2].isdigit() for p in found)
    with spawn(modules=False) as server:
        caps = capabilities(server.client())
    for path in found:
        matrix.unmet(matrix.requirements(path), caps)  # raises on a name that is no capability


def test_the_command_refuses_an_unknown_lesson_saying_what_to_pass():
    out = subprocess.run([sys.executable, "-m", "labkit", "matrix", "--lessons", "98", "--engines", ENGINE],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "No lesson numbered 98" in out.stderr and "Traceback" not in out.stderr


def test_bad_arguments_are_refused_before_any_lesson_runs_and_nothing_is_written(tmp_path, capsys):
    """--readme with a subset of lessons or engines would replace the README's whole table with a part of it;
    a bad --output would be found only after the whole run (about 25 minutes), its results lost."""
    readme = tmp_path / "README.md"
    other = next(name for name in matrix.ENGINES if name != ENGINE)  # a column the run below leaves out
    readme.write_text(f"intro\n{matrix.README_START}\nthe whole table\n\n| lesson | {ENGINE} | {other} |\n"
                      f"|---|---|---|\n{matrix.README_END}\n")
    assert matrix.readme_engines(readme) == [ENGINE, other]
    precious = tmp_path / "notes.md"
    precious.write_text("mine")
    earlier = tmp_path / "earlier.md"
    earlier.write_text(f"{matrix.REPORT_START} on a day: 1 of 1 runs passed.\n")
    cases = [
        ({"engines": [ENGINE], "only": ["00"], "readme": readme}, "must cover every lesson"),
        ({"only": ["00"], "readme": readme}, "must cover every lesson"),
        ({"engines": [ENGINE], "readme": readme}, f"which has .*: the run must include {other}"),
        ({"engines": [ENGINE], "only": ["00"], "output": tmp_path}, "is a directory"),
        ({"engines": [ENGINE], "only": ["00"], "output": precious}, "not an earlier matrix report"),
        ({"engines": [ENGINE], "only": ["00"], "output": precious / "m.md"}, "not a directory this user may write"),
        ({"engines": [ENGINE], "only": ["05", "99"]}, "No lesson numbered 99"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            matrix.run(**kwargs)
    assert capsys.readouterr().out == ""  # no lesson ran
    assert "the whole table" in readme.read_text() and precious.read_text() == "mine"
    assert matrix.check_output(earlier) == earlier  # an earlier report may be replaced
    assert matrix.check_output(tmp_path / "new" / "m.md") == tmp_path / "new" / "m.md"
