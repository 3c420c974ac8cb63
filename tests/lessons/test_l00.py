"""The lesson 00 module (`labkit.lessons.l00_setup`): each check accepts the reference answer and rejects the
known-wrong ones."""

from labkit.lessons import Result
from labkit.lessons import l00_setup as lesson


def test_greeting_accepts_the_reference_answer(r, ns):
    r.set(ns.key("greeting"), "hello", ex=60)
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert result and "expiring in" in str(result)


def test_greeting_rejects_missing_key(r, ns):
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert not result and "there is no key" in result.message


def test_greeting_rejects_no_ttl(r, ns):
    r.set(ns.key("greeting"), "hello")
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert not result and "never expires" in result.message


def test_greeting_rejects_milliseconds_given_as_seconds(r, ns):
    r.set(ns.key("greeting"), "hello", ex=60_000)
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert not result and "EX takes seconds" in result.message


def test_greeting_rejects_wrong_value_and_says_both_problems(r, ns):
    r.set(ns.key("greeting"), "Hello!")
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert not result and "expected 'hello'" in result.message and "never expires" in result.message


def test_result_renders_for_notebooks():
    assert Result(True, "fine")._repr_markdown_().startswith("**✅ Correct**")
    assert str(Result(False, "no")).startswith("❌ not yet")
