"""Workshops (`labkit.workshop`): learner isolation, the ACL every learner gets (each refusal checked with
ACL DRYRUN and on a real connection as the learner, on Valkey 9, Valkey 8 and Redis where installed),
progress recorded by the checks, the instructor's table, reset and close, the sheet, and the command
line. Every server here is one the test starts: a workshop never opens on the shared session server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import redis

import labkit
from labkit import ConfigError, workshop
from labkit.keys import USER_ENV, WORKSHOP, current_learner, learner_context
from labkit.lessons import Result, check
from labkit.lessons import l00_setup as l00
from labkit.server import available_engines, capabilities, lab, spawn
from labkit.server.lab import URL_ENV
from tests.waiting import eventually
from tests.workshops import REFERENCE, not_written, run_checks

ENGINES = [e for e in ("valkey9", "valkey8", "redis") if e in available_engines()]


@pytest.fixture(autouse=True)
def no_learner_here(monkeypatch):
    """These tests choose their learner: the suite may run with LABKIT_USER set."""
    monkeypatch.delenv(USER_ENV, raising=False)


@pytest.fixture(scope="module", params=ENGINES)
def shared(request):
    """A workshop of ada and bob on a server of its own (per engine); bob has keys, a channel, progress."""
    with spawn(request.param, modules=False) as server:
        admin = server.client()
        seats = {s.learner: s for s in workshop.create(admin, ["ada", "bob"])}
        admin.set("lab:bob:l00:secret", "bob's")
        admin.set("lab:ada:l00:mine", "ada's")
        admin.xadd(workshop.progress_key("bob"), {"lesson": "l00", "check": "check_greeting", "passed": 1,
                                                  "message": "fine"})
        ada = redis.Redis.from_url(seats["ada"].url, decode_responses=True, **labkit.clients.options())
        yield server, admin, seats, ada
        ada.close()
        admin.close()


def dryrun(admin: redis.Redis, learner: str, *command: object) -> str:
    return str(admin.execute_command("ACL", "DRYRUN", learner, *command))


def run_as(client: redis.Redis, *command: object) -> object:
    """Send `command` on `client`; a (p/s)subscription is read back so that a refusal raises here."""
    if str(command[0]).upper() in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"):
        with client.pubsub() as pubsub:
            getattr(pubsub, str(command[0]).lower())(*command[1:])
            return pubsub.get_message(timeout=5)
    if command[0] == "COMMAND":  # sent as one name: redis-py's reply parser for COMMAND expects COMMAND INFO
        return client.execute_command(f"COMMAND {command[1]}", *command[2:])
    return client.execute_command(*command)


BOB = "lab:bob:l00:secret"
CROSS_LEARNER = {
    "read": [("GET", BOB), ("EXISTS", BOB), ("TYPE", BOB), ("PTTL", BOB), ("DUMP", BOB), ("STRLEN", BOB),
             ("OBJECT", "ENCODING", BOB), ("MEMORY", "USAGE", BOB), ("GETRANGE", BOB, 0, -1), ("HGETALL", BOB),
             ("SMEMBERS", BOB), ("ZRANGE", BOB, 0, -1), ("XRANGE", BOB, "-", "+"), ("LRANGE", BOB, 0, -1),
             ("EVAL", "return redis.call('GET', KEYS[1])", 1, BOB)],
    "write": [("SET", BOB, "x"), ("APPEND", BOB, "x"), ("INCR", "lab:bob:l00:n"), ("HSET", "lab:bob:l00:h", "f", 1),
              ("LPUSH", "lab:bob:l00:q", 1), ("SADD", "lab:bob:l00:s", 1), ("ZADD", "lab:bob:l00:z", 1, "m"),
              ("XADD", "lab:bob:l00:x", "*", "f", 1), ("EXPIRE", BOB, 1), ("PERSIST", BOB),
              ("MSET", "lab:ada:l00:a", 1, "lab:bob:l00:b", 1), ("COPY", "lab:ada:l00:mine", "lab:bob:l00:copy"),
              ("RENAME", "lab:ada:l00:mine", "lab:bob:l00:taken"), ("SET", "lab:bobby:l00:k", 1)],
    "delete": [("DEL", BOB), ("UNLINK", BOB), ("GETDEL", BOB), ("PEXPIRE", BOB, 0)],
    "subscribe": [("SUBSCRIBE", "lab:bob:news"), ("SSUBSCRIBE", "lab:bob:news"), ("PSUBSCRIBE", "lab:bob:*"),
                  ("PSUBSCRIBE", "lab:*"), ("PSUBSCRIBE", "*"), ("PUBLISH", "lab:bob:news", "hi"),
                  ("SPUBLISH", "lab:bob:news", "hi")],
    "the workshop's keys": [("XADD", workshop.progress_key("bob"), "*", "passed", 1),
                            ("XRANGE", workshop.progress_key("bob"), "-", "+"),
                            ("XRANGE", workshop.progress_key("ada"), "-", "+"), ("DEL", workshop.progress_key("bob")),
                            ("HSET", WORKSHOP, "learners", 99), ("SMEMBERS", workshop.LEARNERS)],
}
ADMIN = [("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "requirepass"), ("CONFIG", "SET", "maxmemory", "1mb"),
         ("CONFIG", "RESETSTAT"), ("KEYS", "*"), ("ACL", "WHOAMI"), ("ACL", "LIST"), ("ACL", "SETUSER", "ada", "+@all"),
         ("ACL", "DELUSER", "bob"), ("ACL", "DRYRUN", "bob", "GET", BOB), ("ACL", "LOG"), ("CLIENT", "LIST"),
         ("CLIENT", "KILL", "USER", "bob"), ("CLIENT", "PAUSE", 10), ("CLIENT", "TRACKING", "on", "BCAST", "PREFIX",
                                                                      "lab:bob:"),
         ("SCRIPT", "FLUSH"), ("SCRIPT", "KILL"), ("FUNCTION", "FLUSH"), ("FUNCTION", "DELETE", "lib"),
         ("FUNCTION", "LOAD", "#!lua name=mine\nserver.register_function('f', function() return 1 end)"),
         ("RANDOMKEY",), ("PUBSUB", "CHANNELS"), ("SWAPDB", 0, 1), ("SAVE",), ("BGSAVE",), ("BGREWRITEAOF",),
         ("SLOWLOG", "GET"), ("LATENCY", "LATEST"), ("MODULE", "LIST"), ("SORT", "lab:ada:l00:list", "BY", "lab:bob:*"),
         ("MIGRATE", "127.0.0.1", 1, "lab:ada:l00:mine", 0, 100)]
NEVER_SENT = [("SHUTDOWN", "NOSAVE"), ("REPLICAOF", "127.0.0.1", 1), ("MONITOR",), ("DEBUG", "SLEEP", 0),
              ("FAILOVER",)]  # refused by DRYRUN; on a real connection they would stop or hold the server
ALLOWED = [("SET", "lab:ada:l00:k", 1), ("GET", "lab:ada:l00:k"), ("DEL", "lab:ada:l00:k"),
           ("EVAL", "return redis.call('SET', KEYS[1], 1)", 1, "lab:ada:l00:k"), ("SUBSCRIBE", "lab:ada:news"),
           ("PSUBSCRIBE", "lab:ada:*"), ("PUBLISH", "lab:ada:news", "hi"), ("HGETALL", WORKSHOP), ("EXISTS", WORKSHOP),
           ("XADD", workshop.progress_key("ada"), "*", "passed", 1), ("INFO", "stats"), ("SCAN", 0),
           ("SCRIPT", "LOAD", "return 1"), ("CLIENT", "SETNAME", "ada-notebook"),
           ("OBJECT", "ENCODING", "lab:ada:l00:mine"),
           ("MEMORY", "USAGE", "lab:ada:l00:mine"), ("COMMAND", "DOCS", "GET"), ("MULTI",), ("DISCARD",)]
REFUSED = [pytest.param(cmd, id=f"{kind}: {' '.join(map(str, cmd))[:50]}") for kind, cmds in CROSS_LEARNER.items()
           for cmd in cmds] + [pytest.param(cmd, id=f"admin: {' '.join(map(str, cmd))[:40]}") for cmd in ADMIN]


@pytest.mark.parametrize("command", REFUSED)
def test_a_learner_is_refused_other_learners_keys_channels_and_administration(shared, command):
    """NOPERM for each, asked twice: ACL DRYRUN, then the command itself on a connection as ada."""
    _, admin, _, ada = shared
    assert "no permissions" in dryrun(admin, "ada", *command).lower()
    with pytest.raises(redis.exceptions.NoPermissionError):
        run_as(ada, *command)
    assert admin.get(BOB) == "bob's" and admin.xlen(workshop.progress_key("bob")) == 1
    assert admin.acl_users() and sorted(admin.acl_users()) == ["ada", "bob", "default"]


@pytest.mark.parametrize("command", NEVER_SENT, ids=lambda c: " ".join(map(str, c)))
def test_commands_that_would_stop_the_server_are_refused(shared, command):
    _, admin, _, _ = shared
    assert "no permissions" in dryrun(admin, "ada", *command).lower()


@pytest.mark.parametrize("command", ALLOWED, ids=lambda c: " ".join(map(str, c))[:40])
def test_a_learner_may_do_what_the_lessons_do_with_their_own_keys(shared, command):
    """The same two ways: the refusals above are the ACL's, not a broken connection or a typo."""
    _, admin, _, ada = shared
    assert dryrun(admin, "ada", *command) == "OK"
    run_as(ada, *command)


def test_a_script_cannot_reach_another_learners_key_it_did_not_declare(shared):
    ada = shared[3]
    with pytest.raises(redis.ResponseError, match=r"(?i)no permissions|can't access"):  # Valkey | Redis 7.0
        ada.eval(f"return redis.call('GET', '{BOB}')", 0)


def test_search_commands_are_refused_where_the_module_is_loaded():
    """An index's PREFIX is not checked against key permissions: FT.CREATE over lab:bob: would read bob's
    documents. So every search command is refused."""
    with spawn() as server:
        admin = server.client()
        if not capabilities(admin).search:
            pytest.skip("the search module is not available here")
        seat = workshop.create(admin, ["ada"])[0]
        with redis.Redis.from_url(seat.url) as ada:
            for command in (("FT.CREATE", "lab:ada:l07:idx", "PREFIX", 1, "lab:bob:", "SCHEMA", "t", "TEXT"),
                            ("FT._LIST",), ("FT.SEARCH", "lab:ada:l07:idx", "*")):
                with pytest.raises(redis.exceptions.NoPermissionError):
                    ada.execute_command(*command)
            assert ada.execute_command("JSON.SET", "lab:ada:l07:doc", "$", "{}") in (b"OK", "OK", True)


def test_a_learner_sees_the_servers_modules_without_module_list():
    """MODULE LIST is administration; `capabilities` reads the modules from HELLO instead (lesson 00 says
    whether search and JSON are there, lesson 03 uses JSON when it is)."""
    with spawn() as server:
        admin = server.client()
        seat = workshop.create(admin, ["ada"])[0]
        with redis.Redis.from_url(seat.url, decode_responses=True) as ada:
            with pytest.raises(redis.exceptions.NoPermissionError):
                ada.execute_command("MODULE", "LIST")
            assert capabilities(ada).modules == capabilities(admin).modules


def test_a_learner_is_kept_in_one_database_where_the_acl_can_say_so(shared):
    """Valkey 9 limits a user to databases; elsewhere a learner may SELECT another one, so `reset` and
    `close` look in every database (tested below)."""
    server, admin, _, ada = shared
    supported = admin.acl_getuser("ada").get("databases") not in (None, "alldbs")
    if supported:
        with pytest.raises(redis.exceptions.NoPermissionError):
            ada.execute_command("SELECT", 1)
    else:
        assert server.engine.name in ("valkey8", "redis")


@pytest.mark.skipif("valkey8" not in ENGINES, reason="valkey8 is not installed")
def test_reset_and_close_find_keys_a_learner_wrote_in_another_database():
    """Valkey 8 cannot keep a user in one database: a learner's keys in database 3 are found all the same."""
    with spawn("valkey8", modules=False) as server:
        admin = server.client()
        seat = workshop.create(admin, ["ada"])[0]
        with redis.Redis.from_url(seat.url.rsplit("/", 1)[0] + "/3") as elsewhere:
            elsewhere.set("lab:ada:l00:elsewhere", 1)
            assert workshop.reset(admin, "ada") == 1
            elsewhere.set("lab:ada:l00:again", 1)
        assert workshop.close(admin).keys == 1 + 2  # that key; the marker and the learners' set
        assert admin.info("keyspace") == {}


# -- isolation: the namespace follows the learner ----------------------------------------------------------
def test_the_namespace_follows_labkit_user_the_url_and_the_context(monkeypatch):
    monkeypatch.delenv(URL_ENV, raising=False)
    assert labkit.Namespace("l00").prefix == "lab:l00:" and current_learner() is None
    monkeypatch.setenv(URL_ENV, "redis://ada:pw@127.0.0.1:1/0")
    assert labkit.Namespace("l00").key("greeting") == "lab:ada:l00:greeting"
    monkeypatch.setenv(URL_ENV, "redis://default:pw@127.0.0.1:1/0")
    assert labkit.Namespace("l00").prefix == "lab:l00:"
    monkeypatch.setenv(URL_ENV, "redis://Ops.Team:pw@127.0.0.1:1/0")  # an account, not a learner
    assert labkit.Namespace("l00").prefix == "lab:l00:"
    monkeypatch.setenv(USER_ENV, "grace")
    assert labkit.Namespace("l03").pattern == "lab:grace:l03:*"
    with learner_context("linus"):
        assert labkit.Namespace("l03").prefix == "lab:linus:l03:"
    assert labkit.Namespace("l03", learner="ada").prefix == "lab:ada:l03:"
    assert repr(labkit.Namespace("l03")) == "Namespace('l03', learner='grace')"


@pytest.mark.parametrize("bad", ["a:b", "a*", "Ada", "l01", "9lives", "x" * 40, "ada bob"])
def test_a_bad_learner_name_says_what_a_name_is(monkeypatch, bad):
    monkeypatch.setenv(USER_ENV, bad)
    with pytest.raises(ConfigError, match="LABKIT_USER") as err:
        labkit.Namespace("l00")
    assert "lowercase" in str(err.value) or "lesson namespaces" in str(err.value)


def test_each_thread_works_as_its_own_learner():
    """Simulated learners share a process: the learner is per thread (a context variable), not global."""
    seen, start = {}, threading.Barrier(8)

    def learner(name):
        with learner_context(name):
            start.wait()
            seen[name] = [labkit.Namespace("l00").prefix for _ in range(200)]

    threads = [threading.Thread(target=learner, args=(f"learner{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(set(prefixes) == {f"lab:{name}:l00:"} for name, prefixes in seen.items()) and len(seen) == 8
    assert labkit.Namespace("l00").prefix == "lab:l00:"


def test_labkit_reset_run_by_a_learner_deletes_only_their_keys():
    with spawn(modules=False) as server:
        admin = server.client()
        seat = workshop.create(admin, ["ada", "bob"])[0]
        admin.mset({"lab:ada:l00:a": 1, "lab:ada:l03:b": 2, "lab:bob:l00:a": 3, "lab:l00:a": 4})
        env = {k: v for k, v in os.environ.items() if k != USER_ENV} | {URL_ENV: seat.url}
        out = subprocess.run([sys.executable, "-m", "labkit", "reset"], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0 and "deleted 2 key(s) of learner ada" in out.stdout, out.stderr
        assert sorted(admin.scan_iter("lab:*")) == ["lab:bob:l00:a", "lab:l00:a"]
        assert seat.password not in out.stdout + out.stderr


def test_own_server_lessons_leave_a_workshop_server_alone(capsys):
    """`connect(own_server=True)` on a workshop server: a server of its own, and it says so. Elsewhere (no
    workshop open) it is the usual server."""
    with spawn(modules=False) as server:
        admin = server.client()
        assert labkit.connect(server.url, own_server=True).connection_pool.connection_kwargs["port"] == server.port
        seat = workshop.create(admin, ["ada"])[0]
        with workshop.as_learner("ada", seat.url):
            shared = labkit.connect()
            own = labkit.connect(own_server=True)
        assert shared.connection_pool.connection_kwargs["port"] == server.port
        assert own.connection_pool.connection_kwargs["port"] != server.port and own.config_get("maxmemory")
        assert "a workshop is open on" in capsys.readouterr().out
        admin_own = labkit.connect(server.url, own_server=True)  # the instructor's lesson too
        assert admin_own.connection_pool.connection_kwargs["port"] != server.port
        for client in (shared, own, admin_own):
            client.close()
    lab.embedded().stop()


# -- progress: the checks record, and never fail for it ------------------------------------------------------
@pytest.fixture
def fresh():
    """A workshop of ada and bob on a server of its own, closed by the test or at the end."""
    with spawn(modules=False) as server:
        admin = server.client()
        seats = {s.learner: s for s in workshop.create(admin, ["ada", "bob"])}
        yield server, admin, seats
        admin.close()


def test_two_learners_passing_different_checks_show_on_the_table(fresh):
    _, admin, seats = fresh
    assert all(run_checks(seats["ada"], [("l00", "check_greeting"), ("l01", "check_tag_query")]).values())
    results = run_checks(seats["bob"], [("l02", "check_xfetch"), ("l00", "check_greeting")],
                         answers={("l00", "check_greeting"): not_written})
    assert [bool(r) for r in results.values()] == [True, False]
    board = workshop.Progress(admin).update()
    assert board.passed("ada") == {("l00", "check_greeting"), ("l01", "check_tag_query")}
    assert board.passed("bob") == {("l02", "check_xfetch")} and ("l00", "check_greeting") in board.tried("bob")
    rows = {row[0]: row for row in board.rows()}
    header, total = rows["learner"], sum(map(len, board.checks.values()))
    assert rows["ada"][header.index("l00")] == "✓" and rows["ada"][header.index("l01")] == "··✓"
    assert rows["bob"][header.index("l00")] == "✗" and rows["bob"][header.index("l02")] == "✓·"
    assert (rows["ada"][-1], rows["bob"][-1]) == (f"2/{total}", f"1/{total}")
    text = board.table()
    assert "l01: check_leaderboard, check_daily_visitors, check_tag_query" in text
    assert seats["ada"].password not in text and "redis://" not in text


def test_the_board_is_live(fresh):
    """`update(block_ms=...)` returns as soon as a learner passes a check, within its wait."""
    _, admin, seats = fresh
    board = workshop.Progress(admin).update()
    assert board.new == []
    later = threading.Timer(0.3, run_checks, args=(seats["bob"], [("l00", "check_greeting")]))
    later.start()
    deadline = time.monotonic() + 30
    while not board.new and time.monotonic() < deadline:
        board.update(block_ms=1000)
    later.join()
    assert [(a.learner, a.lesson, a.check, a.passed) for a in board.new] == [("bob", "l00", "check_greeting", True)]


def test_a_check_outside_a_workshop_records_nothing_and_connects_to_nothing(monkeypatch, r, ns):
    """No learner: not even a connection (the URL below answers nothing). A learner on a server without a
    workshop: nothing written."""
    monkeypatch.setenv(URL_ENV, "redis://:pw@127.0.0.1:1/0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert workshop.record("l00", "check_greeting", True, "fine") is False
    monkeypatch.undo()
    with spawn(modules=False) as server, workshop.as_learner("ada", server.url):
        client = labkit.connect()
        assert workshop.record("l00", "check_greeting", True, "fine") is False
        client.set(labkit.Namespace("l00").key("greeting"), "hello", ex=60)
        assert l00.check_greeting(client, labkit.Namespace("l00").key("greeting"))
        assert sorted(client.scan_iter()) == ["lab:ada:l00:greeting"]
        client.close()


@pytest.mark.parametrize("trouble", ["server stopped", "workshop closed", "another learner's stream"])
def test_a_verdict_that_cannot_be_recorded_stands_with_a_warning(trouble):
    """The server's refusals and the network's failures never change a verdict or raise; they are reported,
    without the password. (xfetch's check needs no server: the verdict shows even with the server gone.)"""
    with spawn(modules=False) as server:
        admin = server.client()
        seats = {s.learner: s for s in workshop.create(admin, ["ada", "bob"])}
        if trouble == "server stopped":
            server.stop()
        elif trouble == "workshop closed":
            workshop.close(admin)  # ada's user goes with it
        name = "bob" if trouble == "another learner's stream" else "ada"  # bob's stream, ada's account: NOPERM
        with workshop.as_learner(name, seats["ada"].url), pytest.warns(workshop.WorkshopWarning) as caught:
            result = REFERENCE["l02", "check_xfetch"](None, labkit.Namespace("l02"))
    message = str(caught[0].message)
    assert isinstance(result, Result) and result.passed and "its verdict stands" in message
    assert seats["ada"].password not in message and "learner ada" not in message.replace(f"for {name}", "")


def test_a_bug_in_a_check_raises_even_on_a_workshop(monkeypatch):
    """Not a server's trouble: a check that returns no Result, a verdict that is not a bool, a message that
    is not text, raise."""
    from labkit import lessons

    def check_forgets_to_return(r):
        r.ping()

    check_forgets_to_return.__module__ = "labkit.lessons.l00_setup"
    monkeypatch.setitem(lessons.CHECKS, "l00", list(lessons.CHECKS["l00"]))  # undone after the test
    broken = check(check_forgets_to_return)
    with spawn(modules=False) as server:
        seat = workshop.create(server.client(), ["ada"])[0]
        with workshop.as_learner("ada", seat.url):
            learner = labkit.connect()
            with pytest.raises(TypeError, match="returned None: a check returns a Result"):
                broken(learner)
            with pytest.raises(ConfigError, match="passed is True or False"):
                workshop.record("l00", "check_greeting", "yes", "fine")
            with pytest.raises(ConfigError, match="message"):
                workshop.record("l00", "check_greeting", True, None)
            learner.close()
        assert server.client().xlen(workshop.progress_key("ada")) == 0
    with pytest.raises(TypeError, match="check_"):
        check(lambda r: Result(True, "x"))


# -- reset, close, the sheet ---------------------------------------------------------------------------------
def test_reset_clears_one_learner_and_close_clears_every_learner_but_nothing_else(fresh):
    _, admin, seats = fresh
    run_checks(seats["ada"], [("l00", "check_greeting")])
    admin.mset({"lab:ada:l02:a": 1, "lab:ada:l03:b": 1, "lab:bob:l02:a": 1, "lab:l02:instructor": 1, "app:data": 1})
    assert workshop.reset(admin, "ada") == 2
    assert admin.acl_getuser("ada") and workshop.Progress(admin).update().passed("ada")
    closed = workshop.close(admin)
    assert closed.users == ["ada", "bob"] and closed.keys == 1 + 1 + 2  # bob's key; ada's progress; marker, learners
    assert sorted(admin.scan_iter()) == ["app:data", "lab:l02:instructor"] and admin.acl_users() == ["default"]
    with pytest.raises(ConfigError, match="no workshop is open"):
        workshop.close(admin)


def test_closing_drops_the_learners_connections(fresh):
    _, admin, seats = fresh
    with redis.Redis.from_url(seats["ada"].url, **labkit.clients.options()) as ada:
        assert ada.set("lab:ada:l00:x", 1)
        workshop.close(admin)
        with pytest.raises((redis.ConnectionError, redis.AuthenticationError)):
            ada.set("lab:ada:l00:x", 1)


def test_the_sheet_holds_the_passwords_readable_by_its_owner_only(tmp_path, fresh):
    _, admin, seats = fresh
    folder = tmp_path / "build" / "workshop"
    paths = workshop.write_sheet(list(seats.values()), folder, workshop.info(admin)["id"])
    for path in [*paths, folder / "workshop.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    rows = paths[0].read_text().splitlines()
    assert rows[0] == "learner,password,url,connection" and len(rows) == 3
    page = paths[1].read_text()
    for seat in seats.values():
        assert seat.url in rows[1] + rows[2] and seat.line in page.replace("&#x27;", "'")
        with redis.Redis.from_url(seat.url) as learner:  # the URL works as written
            assert learner.ping()
    assert seats["ada"].password not in json.dumps(json.loads((folder / "workshop.json").read_text()))
    assert workshop.remove_sheet(folder, "another-workshop") == []
    assert len(workshop.remove_sheet(folder, workshop.info(admin)["id"])) == 3 and not any(folder.iterdir())


def test_a_seat_never_shows_its_password():
    seat = workshop.Seat("ada", "s3cret-pw", "redis://ada:s3cret-pw@127.0.0.1:6379/0")
    assert "s3cret" not in repr(seat) + str(seat) and "s3cret" in seat.line


@pytest.mark.parametrize(("learners", "message"), [
    (0, "at least 1"), (501, "1 to 500"), (["ada", "b:c"], r"learners\[1\].*no ':' or '\*'"),
    (["a*"], r"no ':' or '\*'"), (["ada", "ada"], "unique"), ([], "1 to 500"), ("ada", "list of names"),
    (["l02"], "lesson namespaces")])
def test_create_refuses_bad_learners_before_writing_anything(fresh, learners, message):
    _, admin, _ = fresh
    workshop.close(admin)
    with pytest.raises(ConfigError, match=message):
        workshop.create(admin, learners)
    assert admin.dbsize() == 0 and admin.acl_users() == ["default"]


def test_create_refuses_a_second_workshop_a_taken_name_and_a_user_who_is_not_admin(fresh):
    _, admin, seats = fresh
    with pytest.raises(ConfigError, match="already open"):
        workshop.create(admin, 3)
    with redis.Redis.from_url(seats["ada"].url) as ada, pytest.raises(ConfigError, match="may not manage ACL"):
        workshop.create(ada, 3)
    with pytest.raises(ConfigError, match="already exist"):  # ada's password stays hers
        workshop.add_learners(admin, ["grace", "ada"])
    with pytest.raises(ConfigError, match="names is a list"):
        workshop.add_learners(admin, "grace")
    with redis.Redis.from_url(seats["ada"].url) as ada:
        assert ada.ping() and workshop.learners(admin) == ["ada", "bob"]
    workshop.close(admin)
    admin.execute_command("ACL", "SETUSER", "grace", "on", ">pw", "~*", "+@all")
    with pytest.raises(ConfigError, match="already exist"):
        workshop.create(admin, ["ada", "grace"])
    assert admin.acl_users() == ["default", "grace"] and not admin.exists(WORKSHOP)


# -- the command line -----------------------------------------------------------------------------------------
def labkit_workshop(*args, url=None, home=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, USER_ENV)}
    env |= ({URL_ENV: url} if url else {}) | ({"LABKIT_HOME": str(home)} if home else {})
    return subprocess.run([sys.executable, "-m", "labkit", "workshop", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_the_command_line_creates_shows_progress_resets_and_closes(tmp_path):
    with spawn(modules=False) as server:
        out = labkit_workshop("create", "--learners", "2", url=server.url, home=tmp_path)
        assert out.returncode == 0, out.stderr
        sheet = (tmp_path / "build" / "workshop" / "learners.csv").read_text().splitlines()[1:]
        seats = [workshop.Seat(row.split(",")[0], row.split(",")[1], row.split(",")[2]) for row in sheet]
        assert [s.learner for s in seats] == ["learner01", "learner02"]
        assert all(s.password not in out.stdout + out.stderr for s in seats)
        assert "learner02 (redis://learner02:****@" in out.stdout
        run_checks(seats[0], [("l00", "check_greeting")])
        shown = labkit_workshop("progress", url=server.url)
        assert shown.returncode == 0 and "learner01  ✓" in shown.stdout and "learner02  ·" in shown.stdout
        assert labkit_workshop("reset", "learner01", url=server.url).returncode == 0
        closed = labkit_workshop("close", url=server.url, home=tmp_path)
        assert closed.returncode == 0 and "removed 2 user(s)" in closed.stdout and "deleted the sheet" in closed.stdout
        assert not (tmp_path / "build" / "workshop" / "learners.csv").exists()
        assert server.client().acl_users() == ["default"] and server.client().dbsize() == 0


def test_progress_watch_prints_each_new_result_as_it_arrives():
    with spawn(modules=False) as server:
        seat = workshop.create(server.client(), ["ada"])[0]
        env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, USER_ENV)} | {URL_ENV: server.url}
        watch = subprocess.Popen([sys.executable, "-m", "labkit", "workshop", "progress", "--watch", "60"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            lines = []
            reader = threading.Thread(target=lambda: lines.extend(iter(watch.stdout.readline, "")), daemon=True)
            reader.start()
            assert eventually(lambda: any(line.startswith("ada ") for line in lines), timeout=60), lines
            run_checks(seat, [("l00", "check_greeting")])
            assert eventually(lambda: any("ada passed l00 check_greeting" in line for line in lines), timeout=30)
            assert eventually(lambda: any(line.startswith("ada      ✓") for line in lines), timeout=30), lines
        finally:
            watch.kill()
            watch.wait()
            watch.stdout.close()
            watch.stderr.close()


@pytest.mark.parametrize(("args", "expected"), [
    (("create", "--learners", "0"), "at least 1"),
    (("create", "--learners", "ada,b:c"), "no ':' or '*'"),
    (("create", "--learners", "ada,st*r"), "no ':' or '*'"),
    (("create", "--learners", "3", "--host", "a b"), "host is the name"),
    (("reset", "nobody"), "no workshop is open"),
    (("progress",), "no workshop is open"),
    (("close",), "no workshop is open"),
])
def test_the_command_line_says_what_to_do_with_bad_input(args, expected):
    with spawn(modules=False) as server:
        out = labkit_workshop(*args, url=server.url)
        assert out.returncode == 2 and expected in out.stderr and "Traceback" not in out.stderr, out.stderr
        assert server.client().dbsize() == 0 and server.client().acl_users() == ["default"]


def test_the_command_line_names_an_unreachable_server_and_a_user_who_is_not_admin(lab_home):
    out = labkit_workshop("create", "--learners", "2", "--server", "redis://:hunter2@127.0.0.1:1/0", home=lab_home)
    assert out.returncode == 2 and "Cannot reach" in out.stderr and "--server" in out.stderr
    assert "hunter2" not in out.stderr and "Traceback" not in out.stderr
    nothing = labkit_workshop("progress", home=lab_home)
    assert nothing.returncode == 2 and "no server to hold the workshop" in nothing.stderr
    with spawn(modules=False) as server:
        seat = workshop.create(server.client(), ["ada"])[0]
        out = labkit_workshop("create", "--learners", "2", "--server", seat.url, home=lab_home)
        assert out.returncode == 2 and "may not manage ACL users" in out.stderr and seat.password not in out.stderr


def test_the_learners_sheet_defaults_under_the_checkout(lab_home):
    with spawn(modules=False) as server:
        out = labkit_workshop("create", "--learners", "ada,grace", "--host", "lab.example.org", url=server.url,
                              home=lab_home)
        assert out.returncode == 0, out.stderr
        rows = (lab_home / "build" / "workshop" / "learners.csv").read_text()
        assert f"@lab.example.org:{server.port}/0" in rows and "grace" in rows
        assert Path(lab_home / "build" / "workshop" / "learners.html").exists()


def test_the_instructors_board_follows_the_learners_live(fresh, capsys):
    """The widget of the instructor notebook: it sees a check passed after it started, learners who join
    and leave, and stops cleanly; a server that goes away is reported by wait_for, not swallowed."""
    from labkit.widgets import ProgressBoard

    server, admin, seats = fresh
    board = ProgressBoard(admin, interval=0.05).start()
    try:
        assert board.wait_for(lambda p: p.learners == ["ada", "bob"], timeout=30)
        run_checks(seats["bob"], [("l02", "check_xfetch")])
        assert board.wait_for(lambda p: ("l02", "check_xfetch") in p.passed("bob"), timeout=30)
        late = workshop.add_learners(admin, ["grace"])[0]
        run_checks(late, [("l00", "check_greeting")])
        assert board.wait_for(lambda p: ("l00", "check_greeting") in p.passed("grace"), timeout=30)
        workshop.remove_learner(admin, "grace")
        assert board.wait_for(lambda p: "grace" not in p.learners, timeout=30)
        assert "bob" in board.label.value and "<table>" in board.board.value
    finally:
        final = board.stop()
    assert final.learners == ["ada", "bob"] and "bob      ·    ···  ✓·" in capsys.readouterr().out
    broken = ProgressBoard(admin, interval=0.05).start()
    server.stop()
    with pytest.raises(redis.ConnectionError):
        broken.wait_for(lambda p: False, timeout=30)
    with pytest.raises(redis.ConnectionError):
        broken.stop()
