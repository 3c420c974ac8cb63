"""The lesson 00 module (`labkit.lessons.l00_setup`): each check accepts the reference answer and rejects the
known-wrong ones."""

import json

import pytest
import redis

import labkit
from labkit.clients import options
from labkit.errors import ConfigError, LabkitError
from labkit.lessons import Result
from labkit.lessons import l00_setup as lesson
from labkit.server import spawn


def test_greeting_accepts_the_reference_answer(r, ns):
    r.set(ns.key("greeting"), "hello", ex=60)
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert result and "expiring in" in str(result)


def test_greeting_rejects_missing_key(r, ns):
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert not result and "there is no key" in result.message


def test_greeting_check_rejects_a_hash_with_a_message_not_an_error(r, ns):
    r.hset(ns.key("greeting"), "v", "hello")
    r.expire(ns.key("greeting"), 60)
    result = lesson.check_greeting(r, ns.key("greeting"))
    assert not result and "holds a hash, not a string" in result.message


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


# -- the tour's helpers ---------------------------------------------------------------------------------
def test_wire_bytes_are_what_redis_py_sends(r, ns):
    wire = lesson.wire_bytes(r, "SET", ns.key("k"), "v", "NX")
    key = ns.key("k").encode()
    assert wire == b"*4\r\n$3\r\nSET\r\n$" + str(len(key)).encode() + b"\r\n" + key + b"\r\n$1\r\nv\r\n$2\r\nNX\r\n"


def test_draw_path_draws_without_a_display(monkeypatch):
    import matplotlib.pyplot as plt

    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(plt.gcf()))
    lesson.draw_path("r.set('k', 'v', nx=True)", "SET k v NX", b"*4\r\n$3\r\nSET\r\n", "127.0.0.1:6379")
    texts = [t.get_text() for t in shown[0].axes[0].texts]
    assert "the server" in texts and any(r"\$3" in t for t in texts)  # the $ escaped, not math mode
    plt.close(shown[0])


def test_the_cli_reads_what_redis_py_wrote_and_keeps_the_password_off_the_command_line(r, ns):
    r.set(ns.key("from-py"), "hello")
    words, env = lesson.cli_words(r)
    password = r.connection_pool.connection_kwargs["password"]
    assert password not in words and env["REDISCLI_AUTH"] == password
    assert lesson.cli(r, "GET", ns.key("from-py")) == '"hello"'
    assert lesson.cli(r, "SET", ns.key("from-cli"), "x", "EX", "60") == "OK"
    assert r.get(ns.key("from-cli")) == "x" and lesson.cli(r, "GET", ns.key("nothing")) == "(nil)"


def test_the_cli_says_what_failed():
    with spawn(modules=False) as srv:
        wrong = redis.Redis(host=srv.host, port=srv.port, password="not-the-password", **options())
        with pytest.raises(LabkitError, match=r"(valkey|redis)-cli failed"):
            lesson.cli(wrong, "PING")


def test_the_cli_refuses_a_tls_connection_with_what_to_do():
    tls = redis.Redis(host="127.0.0.1", port=6390, ssl=True)  # never connected: the check is on its settings
    with pytest.raises(ConfigError, match="without TLS"):
        lesson.cli_words(tls)


def write_lesson(root, name, code, module=""):
    cells = [{"cell_type": "markdown", "source": ["# title"]}, {"cell_type": "code", "source": [code]}]
    (root / "notebooks").mkdir(exist_ok=True)
    (root / "modules").mkdir(exist_ok=True)
    (root / "notebooks" / f"{name}.ipynb").write_text(json.dumps({"cells": cells}))
    (root / "modules" / f"l{name}.py").write_text(module)


def test_lesson_needs_reads_each_lessons_code(tmp_path):
    write_lesson(tmp_path, "00_plain", "r.set('k', 1)\nprint(caps.search)")
    write_lesson(tmp_path, "01_admin", "r.config_get('*-max-*')\nr.acl_setuser('u')\nr.function_load(src)")
    write_lesson(tmp_path, "02_spawns", "lesson.run()", module="def run():\n    with spawn() as s:\n        pass\n")
    write_lesson(tmp_path, "03_search", "if not caps.search:\n    raise labkit.MissingModule('x')")
    write_lesson(tmp_path, "04_other_clients", "q.config_set('maxmemory', 1)\nother.acl_setuser('u')")
    needs = lesson.lesson_needs(tmp_path / "notebooks", tmp_path / "modules")
    assert needs["00_plain"] == [] and needs["04_other_clients"] == []
    assert needs["01_admin"] == ["CONFIG on the lab server", "ACL users on the lab server",
                                 "functions (FUNCTION LOAD) on the lab server"]
    assert needs["02_spawns"] == ["starts servers of its own on this machine"]
    assert needs["03_search"] == ["the search and JSON modules on the lab server"]
    table = lesson.needs_table(needs)
    assert table.splitlines()[0].startswith("| lesson | starts its own servers | CONFIG on your server")
    assert "| 02_spawns | ✔ |" in table
    with pytest.raises(ConfigError, match="no notebooks"):
        lesson.lesson_needs(tmp_path / "nowhere")


def test_lesson_needs_on_the_lab_itself():
    needs = lesson.lesson_needs()
    assert needs["00_setup"] == [] and "the search and JSON modules on the lab server" in needs["07_vector_search"]
    assert "starts servers of its own on this machine" in needs["01_data_structures"]


def test_ping_timers_measure_one_round_trip_each_and_one_for_a_pipeline(r):
    singles = lesson.time_single_pings(r, 50)
    assert len(singles) == 50 and all(us > 0 for us in singles)
    with labkit.trace(r, show=False) as sent:
        assert lesson.time_pipelined_pings(r, 50) > 0
    assert sent.names() == ["PING"] * 50 and sent.round_trips == 1
