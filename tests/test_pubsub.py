"""labkit.pubsub against real servers: delivery, disconnects (dropped with lesson 05's helpers), resync, asyncio."""

import asyncio
import itertools
import math
import random
import threading
import time

import pytest
from redis.crc import key_slot

from labkit import ConfigError, ServerUnavailable
from labkit.lessons.l05_pubsub import kill_clients, missing, publish_numbered
from labkit.pubsub import InvalidatedCache, PresenceFeed, Subscriber, backoff_delays, listen, subscribed_clients
from labkit.server import Server, cluster, spawn
from labkit.tracing import trace

from .faults import hooked_client
from .waiting import eventually


@pytest.fixture(scope="module")
def three_primaries():
    """A 3-primary cluster, one for this module."""
    with cluster(primaries=3, replicas=0) as c:
        yield c


def test_channel_and_pattern_subscribers_both_receive(r, ns):
    with Subscriber(r, ns.key("a"), name=ns.key("s1")) as one, Subscriber(r, patterns=[ns.key("*")],
                                                                           name=ns.key("s2")) as many:
        assert r.publish(ns.key("a"), "x") == 2
        assert one.wait_for(1) and many.wait_for(1)
    assert one.data() == many.data() == ["x"] and many.messages[0][1] == ns.key("a")


def test_close_leaves_no_subscription_and_no_thread(r, ns):
    with Subscriber(r, ns.key("a"), name=ns.key("closing")):
        [thread] = [t for t in threading.enumerate() if t.name == ns.key("closing")]  # its own listener thread
        assert thread.is_alive() and any(c.get("name") == ns.key("closing") for c in subscribed_clients(r))
    assert eventually(lambda: not thread.is_alive())  # close() stopped it (other threads do not matter)
    # the server drops the connection once it reads the close: soon, not necessarily before our next command
    assert eventually(lambda: not any(c.get("name") == ns.key("closing") for c in r.client_list()))


def test_a_disconnect_is_counted_resynced_and_its_gap_is_contiguous(r, ns):
    resyncs = []
    with Subscriber(r, ns.key("a"), name=ns.key("blink"), on_connect=lambda client: resyncs.append(1)) as sub:
        killer = threading.Timer(0.05, kill_clients, args=(r, sub.name))
        killer.start()
        publish_numbered(r, ns.key("a"), 1000, rate=5000)
        killer.join()
        assert eventually(lambda: sub.disconnects) and sub.wait_connected()  # it noticed, then came back
        publish_numbered(r, ns.key("a"), 1, start=1000)  # sent after the reconnect: it must arrive, and last
        assert eventually(lambda: sub.data()[-1:] == ["1000"])
    lost = missing(sub.data(), range(1001))
    assert len(sub.disconnects) == 1 and "closed" in sub.disconnects[0] and sub.connects == 2 and len(resyncs) == 2
    assert lost == list(range(lost[0], lost[-1] + 1)) if lost else True


def test_without_reconnect_a_killed_subscriber_stays_down(r, ns):
    with Subscriber(r, ns.key("a"), name=ns.key("once"), reconnect=False) as sub:
        [thread] = [t for t in threading.enumerate() if t.name == ns.key("once")]
        assert kill_clients(r, sub.name) == 1
        assert eventually(lambda: not thread.is_alive())  # its listener gave up instead of reconnecting
        assert not sub.connected and sub.connects == 1 and r.publish(ns.key("a"), "x") == 0


def test_bad_input_gets_clear_errors(r):
    with pytest.raises(ConfigError, match="at least one channel"):
        Subscriber(r)
    with pytest.raises(ConfigError, match="base"):
        next(backoff_delays(base=0))


def test_a_subscriber_to_a_server_that_is_down_says_so_at_once():
    server = Server().start()
    client = server.client()
    server.stop()
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"could not subscribe.*doctor"):
        Subscriber(client, "x")
    assert time.monotonic() - started < 5  # at once: not after the 10 s it waits for a first subscription


def test_backoff_grows_and_stays_within_its_cap():
    delays = list(itertools.islice(backoff_delays(0.01, 0.5, random.Random(1)), 12))
    assert all(0 <= d <= min(0.5, 0.01 * 2**i) for i, d in enumerate(delays))
    assert max(delays[8:]) > max(delays[:3])


def test_sweep_removes_only_members_silent_past_max_age_and_announces_them(r, ns):
    feed = PresenceFeed(r, "beats", prefix=ns.key("p"))
    with Subscriber(r, feed.channel, name=ns.key("beats")) as sub:
        for user in ("ann", "ben", "cy"):
            feed.join(user)
        r.zadd(feed.members_key, {"ann": 100.0, "ben": 100.0, "cy": 100.0})  # their joins, on an injected clock
        assert feed.heartbeat("ann", now=130.0) and feed.heartbeat("cy", now=115.0)
        assert feed.sweep(20, now=135.0) == ["ben"]  # ann 5 s, cy exactly 20 s (not more), ben 35 s silent
        assert feed.sweep(20, now=135.0) == []
        assert sub.wait_for(4)
    assert feed.online() == {"ann", "cy"} and sub.data()[-1] == "leave:ben"
    assert feed.heartbeat("ben", now=136.0) is False and feed.online() == {"ann", "cy"}  # swept: must join again
    r.delete(feed.members_key)


def test_join_and_heartbeat_score_on_the_servers_time_in_one_script_each(r, ns):
    """No client clock: the score is the server's TIME, read inside the script that writes it (one EVALSHA;
    the join's announcement goes in the same script)."""
    feed = PresenceFeed(r, "skew", prefix=ns.key("p"))
    feed.join("warm")  # loads the scripts, so the traces below show only the calls themselves
    feed.heartbeat("warm")
    try:
        with Subscriber(r, feed.channel, name=ns.key("skew")) as sub:
            before = r.time()
            with trace(r, show=False) as joined:
                assert feed.join("ann") == 1
            with trace(r, show=False) as beat:
                assert feed.heartbeat("ann") is True
            after = r.time()
            assert sub.wait_for(1) and sub.data() == ["join:ann"]
        assert joined.names() == ["EVALSHA"] and joined.round_trips == 1
        assert beat.names() == ["EVALSHA"] and beat.round_trips == 1
        score_ms = round(r.zscore(feed.members_key, "ann") * 1000)  # seconds, to the ms
        assert before[0] * 1000 + before[1] // 1000 <= score_ms <= after[0] * 1000 + after[1] // 1000
    finally:
        r.delete(feed.members_key)


@pytest.mark.parametrize("now", [math.inf, -math.inf, math.nan, -1, "soon", [130.0], True])
def test_an_injected_time_that_is_not_one_is_refused_and_changes_nothing(r, ns, now):
    """now=inf once made a member immortal (never swept), and a sweep at inf removed everyone."""
    feed = PresenceFeed(r, "clock", prefix=ns.key("p"))
    feed.join("ann")
    r.zadd(feed.members_key, {"ann": 100.0})
    try:
        with pytest.raises(ConfigError, match="now"):
            feed.heartbeat("ann", now=now)
        with pytest.raises(ConfigError, match="now"):
            feed.sweep(20, now=now)
        assert r.zrange(feed.members_key, 0, -1, withscores=True) == [("ann", 100.0)]
    finally:
        r.delete(feed.members_key)


def test_presence_feed_needs_a_client():
    for bad in (None, "redis://127.0.0.1:6379", 5):
        with pytest.raises(ConfigError, match="client"):
            PresenceFeed(bad, "room")


def test_sweep_never_removes_a_member_whose_heartbeat_lands_during_it(r, ns):
    feed = PresenceFeed(r, "race", prefix=ns.key("p"))
    feed.join("ann")
    r.zadd(feed.members_key, {"ann": 100.0})
    real_transaction = feed.r.transaction

    def transaction_with_a_heartbeat_inside(func, *keys, **kwargs):
        def racing(pipe):
            stale = func(pipe)  # read under WATCH and queued; now a heartbeat lands before EXEC
            if not getattr(racing, "done", False):
                racing.done = True
                r.zadd(feed.members_key, {"ann": 134.0})
            return stale
        return real_transaction(racing, *keys, **kwargs)

    feed.r = type("Hooked", (), {"transaction": staticmethod(transaction_with_a_heartbeat_inside)})()
    assert feed.sweep(20, now=135.0) == []  # the retry read ann's fresh heartbeat
    feed.r = r
    assert feed.online() == {"ann"}
    r.delete(feed.members_key)


def test_health_check_notices_a_paused_server_that_a_plain_listener_never_does():
    with spawn() as srv:
        client = srv.client()
        quiet = client.pubsub()
        quiet.subscribe("ch")
        quiet.get_message(timeout=1)
        with Subscriber(client, "ch", health_check=0.2, reconnect=False) as sub:
            srv.pause()
            try:
                assert eventually(lambda: sub.disconnects, timeout=5)
                assert quiet.get_message(timeout=0.5) is None  # no error: deaf, and it cannot tell
            finally:
                srv.resume()
        assert "no reply to PING" in sub.disconnects[0] and not sub.connected
        quiet.close()


def test_health_check_keeps_a_quiet_but_live_connection():
    with spawn() as srv, Subscriber(srv.client(), "ch", health_check=0.3) as sub:
        time.sleep(1.5)  # five intervals of silence, each answered by a PONG
        assert eventually(lambda: sub._pinged_at is None)  # the latest PING answered
        assert sub.disconnects == [] and sub.connects == 1 and sub.connected


def test_presence_feed_keeps_set_and_announcements_in_step(r, ns):
    feed, view = PresenceFeed(r, "room", prefix=ns.key("p")), set()
    with Subscriber(r, feed.channel, name=ns.key("t"), on_message=lambda m: PresenceFeed.apply(m[2], view)) as sub:
        for user in ("ann", "ben", "cy"):
            feed.join(user)
        feed.leave("ben")
        assert sub.wait_for(4)
    assert view == feed.online() == {"ann", "cy"}
    assert sub.data() == ["join:ann", "join:ben", "join:cy", "leave:ben"]


async def until(condition, timeout=10.0):
    """The asyncio twin of `eventually`: poll `condition` (without blocking the loop) with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_async_listener_reconnects_after_a_restart_and_closes_when_stopped():
    async def scenario(srv):
        received, stop = [], asyncio.Event()
        task = asyncio.create_task(listen(srv.url, "c", received.append, stop, base=0.01))
        client = srv.client()
        while client.publish("c", "before") == 0:
            await asyncio.sleep(0.01)
        await until(lambda: received)
        srv.restart()
        while client.publish("c", "after") == 0:
            await asyncio.sleep(0.01)
        await until(lambda: received[-1] == "after")
        stop.set()
        reconnections = await task
        await until(lambda: not subscribed_clients(client))  # the server has read the close
        return received, reconnections, subscribed_clients(client)

    with spawn() as srv:
        received, reconnections, left = asyncio.run(scenario(srv))
    assert received[0] == "before" and received[-1] == "after" and reconnections == 1 and left == []


def test_async_listener_closes_its_connection_when_cancelled():
    async def scenario(srv):
        task = asyncio.create_task(listen(srv.url, "c", lambda data: None, asyncio.Event()))
        client = srv.client()
        await until(lambda: subscribed_clients(client) or task.done(), timeout=30)
        assert not task.done(), f"the listener stopped before subscribing: {task.exception()!r}"
        assert subscribed_clients(client), "the listener did not subscribe within 30 s"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: not subscribed_clients(client))  # the server has read the close
        return subscribed_clients(client)

    with spawn() as srv:
        assert asyncio.run(scenario(srv)) == []


def test_subscribers_get_unique_names_so_a_kill_reaches_only_one(r, ns):
    with Subscriber(r, ns.key("a")) as one, Subscriber(r, ns.key("a")) as two:
        assert one.name != two.name and one.name.startswith("labkit-subscriber-")
        assert kill_clients(r, one.name) == 1
        assert eventually(lambda: one.disconnects) and one.wait_connected()
        assert r.publish(ns.key("a"), "x") == 2 and one.wait_for(1) and two.wait_for(1)
    assert two.disconnects == [] and two.connects == 1


def test_a_raising_callback_is_recorded_and_the_subscriber_lives_on(r, ns):
    def on_message(message):
        if message[2] == "bad":
            raise ValueError("cannot parse")

    with Subscriber(r, ns.key("a"), name=ns.key("cb"), on_message=on_message) as sub:
        for data in ("ok", "bad", "after"):
            r.publish(ns.key("a"), data)
        assert sub.wait_for(3) and sub.connected
    assert sub.data() == ["ok", "bad", "after"] and "ValueError: cannot parse" in sub.errors[0]


def test_a_raising_on_connect_is_recorded_and_the_subscription_stands(r, ns):
    with Subscriber(r, ns.key("a"), name=ns.key("oc"), on_connect=lambda client: 1 / 0) as sub:
        assert sub.connected and "ZeroDivisionError" in sub.errors[0]
        r.publish(ns.key("a"), "x")
        assert sub.wait_for(1)


def test_a_message_between_two_confirmations_is_recorded_not_counted(r, ns):
    """SUBSCRIBE and PSUBSCRIBE are two commands: a message can arrive between their confirmations. The hook
    publishes one there, for certain: it runs after SUBSCRIBE is sent and before PSUBSCRIBE is."""
    channel = ns.key("busy")

    def publish_between(n):
        if n == 2:
            while r.publish(channel, "between") == 0:  # until the SUBSCRIBE has taken effect
                pass

    hooked = hooked_client(r, publish_between)
    with Subscriber(hooked, channel, patterns=[ns.key("other*")], name=ns.key("between")) as sub:
        r.publish(channel, "after")
        assert sub.wait_for(2, timeout=2)
    assert sub.data() == ["between", "after"]
    hooked.close()


def named_on_nodes(topology, name) -> int:
    """How many connections named `name` the cluster's primaries hold."""
    return sum(c.get("name") == name for node in topology.primaries for c in node.client().client_list())


def test_sharded_pub_sub_on_a_cluster(three_primaries):
    """Shard channels in three slots (on more than one node), each read from the node that owns it; a killed
    connection is counted, and the subscriber resubscribes on every node and resyncs."""
    rc = three_primaries.client()
    channels = [f"lab:test:{{orders-{i}}}" for i in range(3)]
    nodes = {rc.get_node_from_key(c).name for c in channels}
    assert len({key_slot(c.encode()) for c in channels}) == 3 and len(nodes) > 1
    resyncs = []
    with Subscriber(rc, shard_channels=channels, on_connect=lambda client: resyncs.append(1)) as sub:
        for c in channels:
            assert rc.spublish(c, f"to {c}") == 1
        assert sub.wait_for(3) and named_on_nodes(three_primaries, sub.name) == len(nodes)
        owner = next(n for n in three_primaries.primaries if n.port == rc.get_node_from_key(channels[0]).port)
        assert kill_clients(owner.client(), sub.name) == 1
        assert eventually(lambda: sub.disconnects) and sub.wait_connected()
        assert named_on_nodes(three_primaries, sub.name) == len(nodes)  # back on every node
        for c in channels:
            rc.spublish(c, "again")
        assert sub.wait_for(6)
    assert sorted(sub.data()[:3]) == sorted(f"to {c}" for c in channels) and sub.data()[3:] == ["again"] * 3
    assert sub.connects == 2 and len(resyncs) == 2
    assert eventually(lambda: named_on_nodes(three_primaries, sub.name) == 0)  # close() left nothing behind
    rc.close()


# -- the near cache invalidated over pub/sub ------------------------------------------------------------
class FakeClock:
    """An injected monotonic clock (seconds) for the cache's TTL; the server is real."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_invalidated_cache_drops_a_key_when_a_writer_announces_it(r, ns):
    key, channel = ns.key("price"), ns.key("inv")
    r.set(key, "1")
    with InvalidatedCache(r, channel, ttl=None, name=ns.key("near")) as near:
        assert near.get(key) == "1"
        r.set(key, "quietly")  # a write that announces nothing: the local copy stays
        assert near.get(key) == "1"
        assert InvalidatedCache.write(r, channel, key, "2") == 1
        assert eventually(lambda: key not in near.entries)
        assert near.get(key) == "2"
    r.delete(key)


def test_invalidated_cache_ttl_bounds_a_missed_invalidation(r, ns):
    key, clock = ns.key("price2"), FakeClock()
    r.set(key, "1")
    with InvalidatedCache(r, ns.key("inv2"), ttl=5, flush_on_reconnect=False, clock=clock) as near:
        assert near.get(key) == "1"
        r.set(key, "2")  # the invalidation that never arrived
        clock.now += 4.9
        assert near.get(key) == "1"
        clock.now += 0.2
        assert near.get(key) == "2"
    r.delete(key)


def test_invalidated_cache_flushes_on_reconnect_only_when_asked(r, ns):
    key = ns.key("price3")
    r.set(key, "1")
    with InvalidatedCache(r, ns.key("inv3"), ttl=None, name=ns.key("flush")) as flushing, \
            InvalidatedCache(r, ns.key("inv3"), ttl=None, flush_on_reconnect=False, name=ns.key("keep")) as keeping:
        assert flushing.get(key) == keeping.get(key) == "1"
        kill_clients(r, ns.key("flush"))
        kill_clients(r, ns.key("keep"))
        assert eventually(lambda: flushing.flushes == 2 and keeping.subscriber.connects == 2)
        assert flushing.entries == {} and flushing.flushes == 2 and key in keeping.entries and keeping.flushes == 0
    r.delete(key)
