import functools
import multiprocessing
import os
import re
import threading
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import labkit
from labkit import scripts

INDEX = r"{}\[(\d+)\]"


def header_and_body(name: str) -> tuple[str, str]:
    lines = scripts.text(name).splitlines()
    n = next(i for i, line in enumerate(lines) if not line.startswith("--"))
    return "\n".join(lines[:n]), "\n".join(lines[n:])


def used(table: str, body: str) -> set[int]:
    found = {int(i) for i in re.findall(INDEX.format(table), body)}
    found |= {int(i) for i in re.findall(rf"unpack\({table}, (\d+)\)", body)}
    return found | ({1} if re.search(rf"unpack\({table}\)", body) else set())


def stated(table: str, header: str) -> set[int]:
    return {int(i) for i in re.findall(INDEX.format(table), header)} | {
        int(i) for i in re.findall(rf"{table}\[(\d+)\.\.\]", header)}


@pytest.mark.parametrize("name", scripts.names())
def test_every_script_states_its_keys_argv_and_return(name):
    header, body = header_and_body(name)
    assert re.search(r"^-- Returns ", header, re.M), f"{name}: no '-- Returns' line"
    for table in ("KEYS", "ARGV"):
        needed = used(table, body)
        assert needed <= stated(table, header), f"{name}: {table} {sorted(needed)} used, header states {header!r}"
        if not needed:
            assert re.search(rf"^-- {table}\s+none", header, re.M), f"{name}: say '-- {table}  none'"


KEYLESS = {"TIME", "PUBLISH"}  # commands that take no key (PUBLISH takes a channel)
CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?")


def keys_not_from_keys(body: str) -> list[str]:
    """The first arguments of `redis.call`s on keys that are not `KEYS[n]` as given (a key built inside
    the script, or a literal: on a cluster it may live in another slot)."""
    return [f"{command} {first}" for command, first in CALL.findall(body)
            if command.upper() not in KEYLESS
            and not re.fullmatch(r"KEYS\[\d+\]|unpack\(KEYS\b.*", (first or "").strip())]


@pytest.mark.parametrize("name", scripts.names())
def test_every_key_a_script_touches_is_passed_in_keys(name):
    assert keys_not_from_keys(scripts.source(name)) == [], f"{name}: pass every key in KEYS, with a hash tag"


def test_the_keys_check_catches_a_key_built_in_the_script():
    body = "redis.call('INCR', KEYS[1] .. ':seq')\nredis.call('GET', 'counter')\nredis.call('TIME')"
    assert keys_not_from_keys(body) == ["INCR KEYS[1] .. ':seq'", "GET 'counter'"]
    assert keys_not_from_keys("redis.call('DEL', unpack(KEYS, 2))\nredis.call('DEL', unpack(ARGV))") == [
        "DEL unpack(ARGV"]


def test_the_header_check_catches_an_unstated_argument():
    header = "-- KEYS[1]  a key\n-- ARGV[1]  a number\n-- Returns  1"
    body = "return redis.call('SET', KEYS[1], ARGV[2])"
    assert not used("ARGV", body) <= stated("ARGV", header)


def test_the_prelude_comes_first_and_is_stated_once():
    assert scripts.source("ratelimit/gcra").startswith(scripts.text("prelude"))
    for name in scripts.names():
        assert "redis.call('TIME')" not in scripts.text(name), f"{name} copies the server clock: use now_ms()"


def test_now_ms_reads_the_server_clock_or_the_override(r):
    def time_ms():
        seconds, micros = r.time()
        return seconds * 1000 + micros // 1000

    script = r.register_script(scripts.text("prelude") + "return {now_ms(), now_ms(ARGV[1])}")
    before = time_ms()
    server, override = script(args=[123])
    assert before <= server <= time_ms() and override == 123  # bracketed by TIME: no tolerance to guess


def test_a_script_is_registered_once_per_client(r):
    assert scripts.register(r, "locks/release") is scripts.register(r, "locks/release")
    other = labkit.connect()
    try:
        assert scripts.register(other, "locks/release") is not scripts.register(r, "locks/release")
    finally:
        other.close()


def test_capped_incr_stops_at_the_cap(r, ns):
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    key = ns.key("counter")
    assert [capped(keys=[key], args=[3]) for _ in range(5)] == [1, 2, 3, -1, -1]
    assert r.get(key) == "3"


@pytest.mark.parametrize("name", ["nope", "capped_incr", "prelude"])
def test_unknown_script_names_the_known_ones(name):
    with pytest.raises(labkit.ConfigError, match="l01_data_structures/capped_incr"):
        scripts.source(name)


# --- function libraries: the same files, loaded once, called with FCALL ---------------------------------
@pytest.fixture(scope="module")
def lib_server():
    from labkit.server import spawn

    with spawn(modules=False) as srv:
        yield srv


@pytest.mark.parametrize("module", scripts.modules())
def test_every_module_loads_as_a_library_with_one_function_per_script(lib_server, module):
    r = lib_server.client()
    assert scripts.load_library(r, module) == f"labkit_{module}"
    [listed] = r.function_list(library=f"labkit_{module}")
    functions = {scripts._field(f, "name") for f in scripts._field(listed, "functions")}
    assert functions == {scripts.function_name(n) for n in scripts.names() if n.startswith(module + "/")}
    assert f"labkit_{module}" in scripts.loaded_libraries(r)
    r.close()


def test_a_function_answers_as_its_script_does(lib_server):
    r = lib_server.client()
    scripts.load_library(r, "l01_data_structures")
    as_script = scripts.register(r, "l01_data_structures/capped_incr")
    as_function = scripts.function(r, "l01_data_structures/capped_incr")
    assert [as_script(keys=["a"], args=[3]) for _ in range(5)] == [as_function(keys=["b"], args=[3]) for _ in range(5)]
    assert r.get("a") == r.get("b") == "3"
    with labkit.trace(r, show=False) as t:
        as_function(keys=["b"], args=[3])
    assert t.names() == ["FCALL"] and t.calls[0].args[:4] == ("FCALL", "labkit_l01_data_structures_capped_incr",
                                                              "1", "b")
    r.delete("a", "b")
    r.close()


def test_a_missing_library_is_a_clear_error(lib_server):
    r = lib_server.client()
    if "labkit_locks" in scripts.loaded_libraries(r):
        r.function_delete("labkit_locks")
    with pytest.raises(labkit.errors.MissingLibrary, match=r"load_library\(admin, 'locks'\)"):
        scripts.function(r, "locks/release")(keys=["k"], args=["t"])
    r.close()


def test_unknown_modules_and_scripts_name_the_known_ones():
    with pytest.raises(labkit.ConfigError, match="sessions"):
        scripts.library("nope")
    with pytest.raises(labkit.ConfigError, match="sessions/touch"):
        scripts.function_name("sessions/nope")


# --- Script.on_key: the hot path of one key --------------------------------------------------------------
def test_on_key_answers_as_a_call_does_and_sends_one_evalsha(r, ns):
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    assert [capped.on_key(ns.key("a"), 3) for _ in range(4)] == [capped(keys=[ns.key("b")], args=[3]) for _ in range(4)]
    with labkit.trace(r, show=False) as t:
        assert capped.on_key(ns.key("a"), 3) == -1
    assert t.names() == ["EVALSHA"] and t.calls[0].args[2:] == ("1", ns.key("a"), "3")


def test_on_key_loads_a_script_the_server_lost_and_sends_it_once(lib_server):
    r = lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    capped.on_key("k", 10)
    r.script_flush()
    r.config_resetstat()
    assert capped.on_key("k", 10) == 2
    calls = {name: stats["calls"] for name, stats in r.info("commandstats").items()}
    assert calls["cmdstat_evalsha"] == 2 and calls["cmdstat_script|load"] == 1  # NOSCRIPT, load, again
    assert capped.on_key("k", 10) == 3
    r.delete("k")
    r.close()


def test_on_key_after_a_timeout_reads_its_own_reply_not_the_late_one(lib_server):
    """A timed-out EVALSHA may still run (here: sent to a frozen server, which runs it when it thaws) and
    its reply arrive late: the connection it went on is closed, so the next call, on a fresh connection,
    reads its own reply (2, after the late 1), never the late one."""
    r, admin = lib_server.client(socket_timeout=0.3), lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    capped.on_key("late", 10)
    admin.delete("late")
    lib_server.pause()
    try:
        with pytest.raises(redis.TimeoutError):
            capped.on_key("late", 10)
    finally:
        lib_server.resume()
    deadline = time.monotonic() + 10
    while admin.get("late") != "1" and time.monotonic() < deadline:  # the late call ran once the server thawed
        time.sleep(0.01)
    assert admin.get("late") == "1"
    assert capped.on_key("late", 10) == 2 and admin.get("late") == "2"
    admin.delete("late")
    r.close(), admin.close()


def test_on_key_borrows_a_connection_and_gives_it_back_at_once(lib_server):
    r = lib_server.client()
    pool, both = r.connection_pool, [scripts.register(r, "l01_data_structures/capped_incr"),
                                     scripts.register(r, "locks/release")]
    for _ in range(3):
        both[0].on_key("borrowed", 100), both[1].on_key("borrowed", "no-token")
    assert not pool._in_use_connections and pool._created_connections == 1

    def calls() -> None:
        for _ in range(20):
            both[0].on_key("borrowed", 100)
    threads = [threading.Thread(target=calls) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.get("borrowed") == "63" and not pool._in_use_connections
    assert len(pool._available_connections) == pool._created_connections <= 3
    r.delete("borrowed")
    r.close()


def test_on_key_holds_no_connection_between_calls_so_a_full_pool_still_serves_every_thread(lib_server):
    """Three threads of a pool of three: each calls on_key, then all three block in BLPOP at once. A
    connection kept between calls (per thread, say) would leave one of them none: MaxConnectionsError."""
    r = lib_server.client(max_connections=3)
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    together, errors = threading.Barrier(3), []

    def call_then_block() -> None:
        try:
            capped.on_key("full", 100)
            together.wait(timeout=30)
            r.blpop(["full:nothing"], timeout=0.3)
            capped.on_key("full", 100)
        except Exception as err:
            errors.append(err)
    threads = [threading.Thread(target=call_then_block) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and r.get("full") == "6"
    r.delete("full")
    r.close()


def test_on_key_reconnects_when_the_server_closed_its_connection(lib_server):
    r, admin = lib_server.client(), lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    assert capped.on_key("closed", 10) == 1
    (kept,) = r.connection_pool._available_connections
    host, port = kept._sock.getsockname()
    assert admin.client_kill_filter(addr=f"{host}:{port}") == 1
    assert capped.on_key("closed", 10) == 2  # no error: the closed connection was seen and replaced
    admin.delete("closed")
    r.close(), admin.close()


def test_on_key_interrupted_between_send_and_reply_closes_its_connection(lib_server, monkeypatch):
    r = lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    assert capped.on_key("interrupted", 10) == 1
    (conn,) = r.connection_pool._available_connections

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(conn, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        capped.on_key("interrupted", 10)  # sent, and run by the server: its reply (2) stays unread
    monkeypatch.undo()
    assert conn._sock is None and not r.connection_pool._in_use_connections  # closed, and back in the pool
    assert capped.on_key("interrupted", 10) == 3  # this call's own reply, not the 2 left on the old socket
    r.delete("interrupted")
    r.close()


def test_on_key_on_a_pool_whose_connections_retry_uses_execute_command(lib_server):
    pool = redis.ConnectionPool(host=lib_server.host, port=lib_server.port, password=lib_server.password,
                                decode_responses=True, socket_timeout=5, retry=Retry(NoBackoff(), 2))
    client = redis.Redis(connection_pool=pool)
    capped = scripts.register(client, "l01_data_structures/capped_incr")
    assert [capped.on_key("retried", 2) for _ in range(3)] == [1, 2, -1]
    assert capped._pool is None and not pool._in_use_connections
    client.delete("retried")
    client.close()


def test_on_key_in_a_forked_child_uses_connections_of_its_own(lib_server):
    r = lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    assert capped.on_key("forked", 10) == 1

    def child() -> None:
        answer = capped.on_key("forked", 10)
        own = all(c.pid == os.getpid() for c in r.connection_pool._available_connections)
        os._exit(answer if own else 99)
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join(30)
    assert process.exitcode == 2 and capped.on_key("forked", 10) == 3  # the parent's connection still in step
    r.delete("forked")
    r.close()


@pytest.mark.parametrize("kind", ["retries", "single connection", "cluster"])
def test_on_key_leaves_other_clients_to_execute_command(lib_server, rc, kind):
    """A client of a blocking pool, a single-connection client and a cluster client go through
    `execute_command`."""
    if kind == "retries":
        pool = redis.BlockingConnectionPool(host=lib_server.host, port=lib_server.port, password=lib_server.password,
                                            decode_responses=True, max_connections=1, timeout=2, socket_timeout=5,
                                            retry=Retry(NoBackoff(), 2))
        client = redis.Redis(connection_pool=pool)
    elif kind == "single connection":
        client = lib_server.client(single_connection_client=True)
    else:
        client = rc
    capped = scripts.register(client, "l01_data_structures/capped_incr")
    assert capped._pool is None
    key = "{route}:" + kind.replace(" ", "-")
    assert [capped.on_key(key, 2) for _ in range(3)] == [1, 2, -1]
    client.delete(key)
    if client is not rc:
        client.close()


class Recording(redis.Redis):
    """A client that records each command it executes, as tracing and APM wrappers do."""

    def execute_command(self, *args, **options):
        self.__dict__.setdefault("recorded", []).append(args[0])
        return super().execute_command(*args, **options)


@pytest.mark.parametrize("kind", ["subclass", "class patched", "class wrapped by wrapt", "instance patched"])
def test_on_key_goes_through_an_execute_command_someone_replaced(r, ns, monkeypatch, kind):
    """A subclass overriding `execute_command`, or instrumentation wrapping it (on the class, as
    OpenTelemetry's does with wrapt, whose bound wrapper passes `__func__` on from the function it wraps,
    or on one client), sees every EVALSHA of `on_key`."""
    recorded = []
    if kind == "subclass":
        client = Recording(connection_pool=r.connection_pool)
    elif kind == "class wrapped by wrapt":
        wrapt = pytest.importorskip("wrapt")

        def record(wrapped, instance, args, kwargs):
            recorded.append(args[0])
            return wrapped(*args, **kwargs)
        monkeypatch.setattr(redis.Redis, "execute_command",
                            wrapt.FunctionWrapper(redis.Redis.__dict__["execute_command"], record))
        client = redis.Redis(connection_pool=r.connection_pool)
    else:
        original = redis.Redis.execute_command

        @functools.wraps(original)
        def wrapper(self, *args, **options):
            recorded.append(args[0])
            return original(self, *args, **options)

        client = redis.Redis(connection_pool=r.connection_pool)
        if kind == "class patched":
            monkeypatch.setattr(redis.Redis, "execute_command", wrapper)
        else:
            client.execute_command = functools.partial(wrapper, client)
    capped = scripts.register(client, "l01_data_structures/capped_incr")
    client.script_load(capped.script)  # no NOSCRIPT: three calls send three EVALSHA
    assert [capped.on_key(ns.key("k"), 2) for _ in range(3)] == [1, 2, -1]
    recorded = client.__dict__.get("recorded", recorded)
    assert recorded.count("EVALSHA") == 3, recorded


def test_on_key_after_a_pool_reset_is_traced_and_leaves_nothing_in_use(lib_server):
    r = lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    capped.on_key("reset", 10)
    r.connection_pool.reset()
    with labkit.trace(r, show=False) as t:
        assert capped.on_key("reset", 10) == 2
    assert t.names() == ["EVALSHA"] and not r.connection_pool._in_use_connections
    r.delete("reset")
    r.close()


def test_on_key_loads_a_lost_script_on_its_own_connection(lib_server):
    """NOSCRIPT, SCRIPT LOAD and the EVALSHA again go on one connection: never two of the pool at once."""
    r = lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    r.script_flush()
    r.connection_pool.disconnect()
    r.connection_pool.reset()
    with labkit.trace(r, show=False) as t:
        assert capped.on_key("noscript", 10) == 1
    assert t.names() == ["EVALSHA", "SCRIPT LOAD", "EVALSHA"] and len({c.connection for c in t.calls}) == 1
    assert r.connection_pool._created_connections == 1
    r.delete("noscript")
    r.close()




def test_a_script_answers_through_a_response_callback_set_for_evalsha(lib_server):
    """As redis-py's `evalsha` and `Script` do: a callback set on the client for EVALSHA parses the reply."""
    r = lib_server.client()
    capped = scripts.register(r, "l01_data_structures/capped_incr")
    r.set_response_callback("EVALSHA", lambda reply, **options: ("parsed", reply))
    r.script_flush()  # NOSCRIPT, SCRIPT LOAD and again: the callback parses the EVALSHA that answers
    assert capped(keys=["callback"], args=[10]) == ("parsed", 1)
    assert capped.on_key("callback", 10) == ("parsed", 2)
    assert r.evalsha(capped.sha, 1, "callback", 10) == ("parsed", 3)  # redis-py's own, for comparison
    r.delete("callback")
    r.close()
