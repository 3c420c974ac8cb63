"""labkit.trace records what goes over the wire, on real servers."""

import enum
import threading

import pytest
import redis

import labkit
from labkit.server import spawn
from labkit.tracing import abridge, abridge_reply, masked


def test_one_command_is_one_round_trip_with_its_wire_reply(r, ns, capsys):
    r.ping()  # a warm connection: no handshake inside the block
    with labkit.trace(r) as t:
        r.set(ns.key("k"), "v", nx=True)
        r.get(ns.key("k"))
    assert t.names() == ["SET", "GET"]
    assert t.calls[0].args == ("SET", ns.key("k"), "v", "NX")
    assert [c.reply for c in t.calls] == [b"OK", b"v"] or [c.reply for c in t.calls] == ["OK", "v"]
    assert t.round_trips == 2
    printed = capsys.readouterr().out
    assert "SET " + ns.key("k") + " v NX" in printed and "2 commands in 2 round trips" in printed


def test_a_pipeline_is_one_round_trip_and_a_transaction_shows_queued(r, ns):
    r.ping()
    with labkit.trace(r, show=False) as t, r.pipeline(transaction=False) as p:
        for i in range(5):
            p.set(ns.key(i), i)
        p.execute()
    assert t.names() == ["SET"] * 5 and t.round_trips == 1
    with labkit.trace(r, show=False) as t, r.pipeline(transaction=True) as p:
        p.incr(ns.key("n"))
        p.expire(ns.key("n"), 60)
        p.execute()
    assert t.names() == ["MULTI", "INCRBY", "EXPIRE", "EXEC"] and t.round_trips == 1
    assert [c.reply for c in t.calls][1:3] in (["QUEUED", "QUEUED"], [b"QUEUED", b"QUEUED"])


def test_a_script_shows_evalsha_and_the_load_it_needed(r, ns):
    r.ping()
    script = r.register_script("return redis.call('GET', KEYS[1]) -- " + ns.name)
    with labkit.trace(r, show=False) as t:
        script(keys=[ns.key("k")])
        script(keys=[ns.key("k")])
    assert t.names() == ["EVALSHA", "SCRIPT LOAD", "EVALSHA", "EVALSHA"]
    assert "NOSCRIPT" in t.calls[0].error or "No matching script" in t.calls[0].error
    assert t.round_trips == 4


def test_error_replies_keep_the_code_the_server_sent(r, ns):
    """redis-py strips ERR, EXECABORT, NOSCRIPT... from the message of the exception it raises; the trace
    shows the error as valkey-cli would, code first, for a raised error and for one inside EXEC's reply."""
    r.set(ns.key("s"), "x")
    with labkit.trace(r, show=False) as t:
        with pytest.raises(redis.ResponseError, match="wrong number of arguments"), r.pipeline() as tx:
            tx.set(ns.key("a"), 1)
            tx.execute_command("SET", ns.key("b"))  # wrong arity: refused while queueing
            tx.execute()
        with r.pipeline() as tx:
            tx.incr(ns.key("s"))  # a runtime error inside EXEC
            tx.execute(raise_on_error=False)
    errors = [c.error for c in t.calls if c.error]
    assert errors[0].startswith("ERR wrong number of arguments") and errors[1].startswith("EXECABORT ")
    exec_reply = [c for c in t.calls if c.name == "EXEC"][-1]
    assert abridge_reply(exec_reply.reply).startswith("[(error) ERR value is not an integer")
    assert "(error) EXECABORT Transaction discarded" in t.table()
    assert not r.exists(ns.key("a"))


def test_error_replies_are_recorded_and_still_raised(r, ns):
    r.set(ns.key("s"), "x")
    with labkit.trace(r, show=False) as t, pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.hget(ns.key("s"), "f")
    assert t.calls[0].error.startswith("WRONGTYPE")
    assert "(error) WRONGTYPE" in t.table()


def test_a_new_connection_shows_its_handshake_with_the_password_masked():
    with spawn() as srv:
        password = srv.password
        client = srv.client()
        with labkit.trace(client, show=False) as t:
            client.ping()
        client.close()
    assert t.names() == ["PING"]
    handshake = t.names(handshake=True)
    assert handshake[0] in ("HELLO", "AUTH") and handshake[-1] == "PING"
    assert all(c.handshake for c in t.calls[:-1]) and not t.calls[-1].handshake
    assert password not in t.table() and "***" in t.table()
    assert t.trips(handshake=True) >= 2  # the handshake waits for its replies before PING goes out
    assert t.round_trips == 1  # like names(): the PING the block sent, not the connection's handshake
    every = t.trips(handshake=True)
    assert f"in {every} round trips ({every - 1} of them the connection's handshake)" in t.table()


def test_recording_stops_when_the_block_ends(r, ns):
    with labkit.trace(r, show=False) as t:
        r.set(ns.key("a"), 1)
    r.set(ns.key("b"), 2)
    r.pipeline().set(ns.key("c"), 3).execute()
    assert t.names() == ["SET"]
    assert all("_labkit_packer" not in c.__dict__ for c in r.connection_pool._available_connections)


def test_threads_on_one_client_are_all_recorded(r, ns):
    r.ping()
    with labkit.trace(r, show=False) as t:
        threads = [threading.Thread(target=lambda i=i: [r.incr(ns.key("n")) for _ in range(20)]) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert t.names().count("INCRBY") == 80
    assert all(c.reply is not None for c in t.calls if c.name == "INCRBY")
    assert sorted(int(c.reply) for c in t.calls if c.name == "INCRBY") == list(range(1, 81))


def test_a_cluster_client_is_traced_on_every_node(rc):
    rc.ping(target_nodes=rc.ALL_NODES)
    keys = [f"test-trace-{i}" for i in range(30)]
    try:
        with labkit.trace(rc, show=False) as t:
            for k in keys:
                rc.set(k, 1)
        assert t.names() == ["SET"] * 30
        assert len({c.connection for c in t.calls}) == 3  # each primary got its share
    finally:
        rc.delete(*keys)


def test_an_asyncio_client_is_refused_with_what_to_do():
    import redis.asyncio

    with pytest.raises(labkit.ConfigError, match=r"redis\.Redis or redis\.RedisCluster"), \
            labkit.trace(redis.asyncio.Redis()):
        pass


def test_abridging_and_masking():
    assert abridge("x" * 40, 10) == "x" * 9 + "…"
    assert abridge("a\nb", 10) == "a\\nb"
    assert abridge_reply([b"a", b"b", b"c", b"d", b"e"]) == "['a', 'b', 'c', …2 more]"
    assert abridge_reply(None) == "(nil)"
    assert masked(("AUTH", "secret")) == ("AUTH", "***")
    assert masked(("AUTH", "user", "secret")) == ("AUTH", "user", "***")
    assert masked(("HELLO", "3", "AUTH", "default", "secret")) == ("HELLO", "3", "AUTH", "default", "***")
    assert masked(("SET", "AUTH", "x")) == ("SET", "AUTH", "x")


def test_a_trace_inside_another_records_in_both_and_leaves_the_client_traceable(r, ns):
    r.ping()
    with labkit.trace(r, show=False) as outer:
        r.set(ns.key("a"), 1)
        with labkit.trace(r, show=False) as inner:
            r.get(ns.key("a"))
            with r.pipeline(transaction=False) as p:  # a connection opened inside both: both see it
                p.get(ns.key("a"))
                p.incr(ns.key("a"))
                with labkit.trace(r, show=False):
                    pass
                p.execute()
        r.get(ns.key("a"))
    assert inner.names() == ["GET", "GET", "INCRBY"] and inner.round_trips == 2
    assert outer.names() == ["SET", "GET", "GET", "INCRBY", "GET"] and outer.round_trips == 4
    with labkit.trace(r, show=False) as later:
        r.get(ns.key("a"))
    assert later.names() == ["GET"] and later.calls[0].reply in ("2", b"2")
    pool = r.connection_pool
    assert "make_connection" not in pool.__dict__
    assert all("read_response" not in c.__dict__ for c in pool._available_connections)


def test_a_trace_records_other_threads_on_the_same_client(r, ns):
    """It records what goes through the client's connections while the block runs, from any thread."""
    r.ping()
    with labkit.trace(r, show=False) as t:
        other = threading.Thread(target=r.set, args=(ns.key("other"), 1))
        other.start()
        other.join()
        r.get(ns.key("other"))
    assert t.names(handshake=False) == ["SET", "GET"]


def test_a_command_is_abridged_where_it_says_least():
    """Digests and script sources first, then the middle of the longest arguments: keys keep their start and end."""
    from labkit.tracing import abridge_command
    script = "return redis.call('SET', KEYS[1], ARGV[1]) -- a long comment " * 2
    assert abridge_command(("EVAL", script, "1", "lab:l01:lua:greeting", "hello")) == \
        "EVAL return redis.call('SET'… 1 lab:l01:lua:greeting hello"
    sha = "1e19168c4cfa2c7403ca9fbc71fabb92d7637215"
    assert abridge_command(("EVALSHA", sha, "1", "lab:l01:lua:greeting", "hi")) == \
        "EVALSHA 1e19168c… 1 lab:l01:lua:greeting hi"
    key = "lab:l02:cache:v1:__main__.product:" + "ab" * 32
    assert abridge_command(("HMGET", key, "v", "d")) == "HMGET lab:l02:cache:v1:__main__.product:abababab… v d"
    long_key = "lab:l02:" + "x" * 100 + ":end"
    line = abridge_command(("SET", long_key, "1", "PX", "500"))
    assert len(line) <= 100 and line.startswith("SET lab:l02:") and line.endswith(":end 1 PX 500")
    value = '{"id": 7, "name": "product 7", "category": "toys", "price": 84.8}'
    line = abridge_command(("EVALSHA", sha, "2", "lab:l02:leased:{7}", "lab:l02:leased:{7}:lease", value, "300000"))
    assert " 2 lab:l02:leased:{7} lab:l02:leased:{7}:lease " in line and line.endswith(" 300000")
    assert abridge_reply(sha) == "'1e19168c…'" and abridge_reply(b"OK") == "'OK'"


def test_a_str_enum_argument_is_shown_as_the_characters_redis_py_sends(r, ns, capsys):
    class Algorithm(str, enum.Enum):  # noqa: UP042 (as RedisVL's VectorIndexAlgorithm: a StrEnum prints its value already)
        FLAT = "FLAT"

    with labkit.trace(r):
        r.set(ns.key("algorithm"), Algorithm.FLAT)
    assert r.get(ns.key("algorithm")) in (b"FLAT", "FLAT")
    printed = capsys.readouterr().out
    assert f"SET {ns.key('algorithm')} FLAT" in printed and "Algorithm." not in printed
