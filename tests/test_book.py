"""scripts/book.py's pages, without building the book: what the landing page reads from each lesson, the
known-wrong snippets finding their sections, widgets made static, the Benchmarks and matrix pages."""

from __future__ import annotations

import os
import platform

import nbformat
import pytest
import yaml

from labkit.bench.core import Row, write_results
from scripts import book

from .notebooks import lessons


@pytest.fixture(scope="module")
def all_lessons() -> list[book.Lesson]:
    return [book.read_lesson(path) for path in lessons()]


def test_every_lesson_states_its_time_to_complete(all_lessons):
    assert [lesson.path.name for lesson in all_lessons if lesson.duration is None] == []


@pytest.mark.parametrize(("markdown", "duration"), [
    ("## Before you start\n\n- Time to complete: about 10 minutes.\n\n## Setup\n", "about 10 minutes"),
    ("## Before you start\n\n- Lesson 01. About 35 minutes; the cells run in about a minute.\n", "about 35 minutes"),
    ("## Before you start\n\n- Time to complete: about 2 hours, with the exercises.\n", "about 2 hours"),
    ("## Before you start\n\n- Time to complete: 45 minutes.\n", "45 minutes"),
    ("## Before you start\n\n- Around an hour.\n", "around an hour"),
    ("## Before you start\n\n- Lesson 01.\n\n## Setup\n\nThis takes about 5 minutes.\n", None),
    ("# 00\n\nabout 10 minutes\n", None),
])
def test_duration_is_read_from_before_you_start_only(markdown, duration):
    assert book.duration_of(markdown) == duration


def test_the_readme_lists_every_lesson(all_lessons):
    summaries = book.readme_summaries()
    assert {lesson.number: lesson.path.name for lesson in all_lessons}.items() <= \
        {n: name for n, (name, _) in summaries.items()}.items()
    assert all(text for _, text in summaries.values())


def test_slugs_are_the_ones_myst_gives(all_lessons):
    slugs = pytest.importorskip("myst_parser.slugs")
    markdown_it = pytest.importorskip("markdown_it")
    parser = markdown_it.MarkdownIt("commonmark")
    for lesson in all_lessons:
        for heading in lesson.headings:
            inline = parser.parseInline(heading)[0].children
            text = "".join(t.content for t in inline if t.type in ("text", "code_inline"))
            assert book.slug(heading) == slugs.github_slugify(text), heading


def test_every_known_wrong_snippet_of_a_written_lesson_finds_its_section(all_lessons):
    entries = yaml.safe_load((book.CONF / "known-wrong.yml").read_text())
    numbers = {lesson.number for lesson in all_lessons}
    by_number = {lesson.number: lesson for lesson in all_lessons}
    for entry in entries:
        assert {"lesson", "section", "right"} <= entry.keys() and ("wrong" in entry) != ("claim" in entry), entry
        if entry["lesson"] in numbers and not entry.get("pending"):
            assert by_number[entry["lesson"]].find(entry["section"]), entry
    page = book.mistakes_page(all_lessons, entries)
    for lesson in all_lessons:
        for heading in lesson.mistakes():
            assert f"({lesson.page}#{book.slug(heading)})" in page  # every Common mistake section is listed


def test_a_known_wrong_entry_with_no_section_is_refused_unless_its_lesson_is_pending(all_lessons):
    entry = {"lesson": all_lessons[0].number, "section": "no such heading", "wrong": "w", "right": "r"}
    with pytest.raises(ValueError, match="no such heading"):
        book.mistakes_page(all_lessons, [entry])
    page = book.mistakes_page(all_lessons, [entry | {"pending": True}])
    assert f"[lesson {entry['lesson']:02d}]({all_lessons[0].page})" in page
    absent = {"lesson": 99, "section": "anything", "wrong": "w", "right": "r", "pending": True}
    assert "lesson 99 (being written)" in book.mistakes_page(all_lessons, [absent])


def widget_notebook() -> nbformat.NotebookNode:
    """A notebook as nbclient leaves it after a monitor and a slider ran: views, and the widgets' state."""
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "fig"}}
    state = {
        "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_label", "IPY_MODEL_plot"]}},
        "label": {"model_name": "HTMLModel", "state": {"value": "<b>ops/s</b> (done): 5 ops/s"}},
        "plot": {"model_name": "OutputModel", "state": {"outputs": [png]}},
        "slider": {"model_name": "FloatSliderModel", "state": {"value": 0.3, "description": "threshold"}},
    }
    view = {"output_type": "display_data", "metadata": {},
            "data": {book.WIDGET_VIEW: {"model_id": "box", "version_major": 2}, "text/plain": "VBox(...)"}}
    slider = {"output_type": "display_data", "metadata": {},
              "data": {book.WIDGET_VIEW: {"model_id": "slider", "version_major": 2}, "text/plain": "FloatSlider"}}
    printed = {"output_type": "stream", "name": "stdout", "text": "summary\n"}
    nb = nbformat.v4.new_notebook(metadata={"widgets": {book.WIDGET_STATE: {"state": state}}})
    nb.cells = [nbformat.v4.new_code_cell("monitor", outputs=[view, printed]),
                nbformat.v4.new_code_cell("slider", outputs=[slider])]
    return nbformat.from_dict(nb)


def test_widgets_are_replaced_by_their_final_state():
    nb = widget_notebook()
    book.freeze_widgets(nb)
    assert "widgets" not in nb.metadata
    monitor, slider = (cell.outputs for cell in nb.cells)
    assert [list(o.get("data", {})) for o in monitor] == [["text/html", "text/plain"], ["image/png", "text/plain"], []]
    assert "(done): 5 ops/s" in monitor[0].data["text/html"]
    assert monitor[0].data["text/plain"] == "ops/s (done): 5 ops/s"
    assert monitor[2].text == "summary\n"
    assert slider[0].data["text/plain"] == "threshold 0.3"
    nbformat.validate(nb)


def test_the_benchmarks_page_shows_each_metric_with_its_ratios_and_the_machine(tmp_path):
    rows = [Row("cache", "hits per second", "raw GET", 40_000, "hits/s", baseline=True),
            Row("cache", "hits per second", "labkit cache", 20_000, "hits/s"),
            Row("locks", "round trips", "labkit Lock", 1, "round trips")]
    results = write_results(rows, tmp_path / "results.json")
    page = book.benchmarks_page(results, tmp_path)
    assert "| raw GET | 40,000 hits/s | baseline |" in page and "| labkit cache | 20,000 hits/s | 0.50x |" in page
    assert "| labkit Lock | 1 round trips |  |" in page  # no baseline, no ratio
    assert f"with {os.cpu_count()} CPUs, Python {platform.python_version()}" in page
    assert (tmp_path / "bench-cache.png").stat().st_size > 1000 and not (tmp_path / "bench-locks.png").exists()
    assert "![cache" in page and "![locks" not in page


def test_pages_say_clearly_what_was_not_run(tmp_path):
    assert "**Not run.**" in book.benchmarks_page(tmp_path / "absent.json")
    assert "**Not run yet.**" in book.matrix_page(tmp_path / "absent.md")
    matrix = tmp_path / "matrix.md"
    matrix.write_text("# Engine matrix\n\n| capability | valkey9 |\n|---|---|\n| waitaof | yes |\n")
    page = book.matrix_page(matrix)
    assert page.count("# Engine matrix") == 1 and "| waitaof | yes |" in page


def test_a_failed_lesson_is_reported_by_the_line_it_stopped_at():
    error = ("CellExecutionError: An error occurred while executing the following cell:\n------\n"
             "     17 assert a\n---> 18 assert results['xfetch'].misses == 0\n     19 assert b\n\nAssertionError: ")
    assert book.failed_line(error) == "18 assert results['xfetch'].misses == 0: AssertionError:"
    assert book.failed_line("DeadKernelError: Kernel died") == "?: DeadKernelError: Kernel died"
