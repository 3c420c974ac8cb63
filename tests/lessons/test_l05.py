"""The lesson 05 module (`labkit.lessons.l05_pubsub`): numbered messages, dropping clients by name, the slow
subscriber, and each check accepting the reference answer and rejecting the known-wrong ones."""

import pytest

from labkit import ConfigError
from labkit.lessons import l05_pubsub as lesson
from labkit.pubsub import InvalidatedCache, PresenceFeed, Subscriber, subscribed_clients
from labkit.server import capabilities, cluster, replicated, spawn

from ..waiting import eventually


# -- counting losses ------------------------------------------------------------------------------------
def test_missing_lists_the_numbers_that_never_arrived():
    assert lesson.missing(["0", "1", "4"], range(6)) == [2, 3, 5]


def test_publish_numbered_rejects_a_negative_count(r):
    with pytest.raises(ConfigError, match="zero or more"):
        lesson.publish_numbered(r, "x", -1)


@pytest.mark.parametrize("count, rate", [("3", None), (2.5, None), (None, None), (3, -5), (3, 0), (3, "fast")])
def test_publish_numbered_refuses_a_count_or_rate_it_cannot_use_and_publishes_nothing(r, ns, count, rate):
    with Subscriber(r, ns.key("n"), name=ns.key("n")) as sub:
        with pytest.raises(ConfigError, match=r"count|rate"):
            lesson.publish_numbered(r, ns.key("n"), count, rate=rate)
        assert lesson.publish_numbered(r, ns.key("n"), 1) == 1 and sub.wait_for(1) and sub.data() == ["0"]


@pytest.mark.parametrize("bad", [{"step": 0}, {"step": -1}, {"payload_bytes": 0}, {"max_messages": 0},
                                 {"step": "50"}])
def test_slow_subscriber_refuses_a_step_or_size_that_would_never_end(r, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):  # step=0 looped forever
        lesson.slow_subscriber(r, "never", **bad)


def test_kill_clients_only_kills_the_named_ones(r, ns):
    def connection_ids():
        return {c.get("name"): c["id"] for c in r.client_list()}

    with Subscriber(r, ns.key("a"), name=ns.key("victim")), Subscriber(r, ns.key("a"), name=ns.key("bystander")):
        before = connection_ids()
        assert lesson.kill_clients(r, ns.key("victim")) == 1
        # by connection id, not name: the victim reconnects under its name, and a killed bystander would too
        assert eventually(lambda: connection_ids().get(ns.key("victim")) != before[ns.key("victim")])
        assert connection_ids()[ns.key("bystander")] == before[ns.key("bystander")]


# -- the slow subscriber --------------------------------------------------------------------------------
def test_slow_subscriber_is_disconnected_at_the_output_buffer_limit():
    with spawn(client_output_buffer_limit="pubsub 128kb 64kb 10") as srv:
        result = lesson.slow_subscriber(srv.client(), "firehose", payload_bytes=500)
        assert subscribed_clients(srv.client()) == []
        counts = capabilities(srv.client()).has_info(lesson.DISCONNECTIONS)  # a 2023 counter (Redis 7.2+)
    assert result.hard_limit_bytes == 128 * 1024 and result.disconnections == (1 if counts else None)
    assert result.last_backlog_bytes <= result.hard_limit_bytes and result.received < result.published
    assert "closed" in result.error
    assert result.held_bytes < 4 * result.hard_limit_bytes  # 500-byte messages: counted at their size


def test_large_messages_are_counted_at_their_size_only_without_copy_avoidance():
    """Valkey 9 queues messages of `min-string-size-avoid-copy-reply` bytes and more by reference: omem counts
    ~100 bytes each, so a subscriber that never reads holds many times the limit in server memory before it is
    cut. Engines without the setting cut it within the limit (plus what the socket buffers hold)."""
    with spawn(client_output_buffer_limit="pubsub 256kb 128kb 10") as srv:
        threshold = lesson.copy_avoidance_threshold(srv.client())
        result = lesson.slow_subscriber(srv.client(), "firehose", payload_bytes=20_000, max_messages=10_000)
        assert subscribed_clients(srv.client()) == []
    assert "closed" in result.error and result.last_backlog_bytes <= result.hard_limit_bytes
    if threshold is not None and threshold <= 20_000:
        assert result.held_bytes > 20 * result.hard_limit_bytes and result.published > 600
        assert 0 < result.omem_per_message < 0.02 * 20_000  # omem counts about 1% of each message
    else:
        assert result.held_bytes < 4 * result.hard_limit_bytes and result.published < 600


@pytest.mark.parametrize("engine", ["valkey9", "redis8"])
def test_memory_held_by_reference_is_invisible_to_every_per_client_gauge(engine):
    """Valkey 9: 1,000 x 20 KB to a subscriber that never reads hold ~16 MB, and only used_memory shows it:
    omem, tot-mem (what maxmemory-clients counts) and mem_clients_normal stay near 0.2 MB. Copied (Redis 8.2),
    every gauge sees the messages."""
    with spawn(engine, modules=False) as srv:
        threshold = lesson.copy_avoidance_threshold(srv.client())
        gauges = lesson.memory_gauges(srv.client(), "lab:l05:firehose")
        assert subscribed_clients(srv.client()) == []
    assert gauges.used_memory_growth > 10 * 2**20
    per_client = max(gauges.omem, gauges.tot_mem, gauges.mem_clients_normal)
    if threshold is not None and threshold <= 20_000:
        assert gauges.used_memory_growth > 20 * per_client
    else:
        assert gauges.omem > gauges.used_memory_growth / 2 and gauges.mem_clients_normal >= gauges.tot_mem


def test_memory_gauges_refuses_what_it_cannot_publish(r):
    for bad in ({"messages": 0}, {"payload_bytes": "20kb"}, {"timeout": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            lesson.memory_gauges(r, "never", **bad)


def test_omem_per_message_counts_only_the_messages_queued_in_the_server():
    run = lesson.SlowSubscriberResult(256 * 1024, 500, 3000, 0, None, 0, "", backlog=[(100, 0), (200, 0), (300, 3000)])
    assert run.in_kernel == 200 and run.omem_per_message == 30.0
    assert lesson.SlowSubscriberResult(1, 0, 0, 0, None, 0, "").omem_per_message is None


def test_pubsub_limit_reads_hard_soft_and_seconds():
    with spawn(client_output_buffer_limit="pubsub 256kb 128kb 10") as srv:
        assert lesson.pubsub_limit(srv.client()) == (256 * 1024, 128 * 1024, 10)


def test_copy_avoidance_threshold_reads_the_hidden_setting(r):
    threshold = lesson.copy_avoidance_threshold(r)
    reported = r.config_get(lesson.COPY_AVOIDANCE)
    assert threshold == (int(reported[lesson.COPY_AVOIDANCE]) if reported else None)
    assert threshold is None or threshold > 1000


# -- RESP3, heartbeats, the slow subscriber's fixes, expired events ---------------------------------------
def test_only_a_resp3_connection_runs_commands_while_subscribed(r, ns):
    on_resp2 = lesson.command_while_subscribed(r, 2, ns.key("probe"), "GET", ns.key("x"))
    assert on_resp2.startswith("error: Can't execute 'get'")
    assert lesson.command_while_subscribed(r, 3, ns.key("probe"), "SET", ns.key("x"), "v") == "OK"
    assert r.get(ns.key("x")) == "v" and r.pubsub_numsub(ns.key("probe")) == [(ns.key("probe"), 0)]
    r.delete(ns.key("x"))


def test_heartbeat_run_sweeps_only_the_crashed_user(r, ns):
    feed = PresenceFeed(r, "hb", prefix=ns.key("p"))
    run = lesson.heartbeat_run(feed, ["ann", "bo"], crash={"bo": 0.2}, run_s=0.8, every=0.05, max_age=0.2)
    assert list(run.swept) == ["bo"] and run.announced == ["leave:bo"] and run.online == {"ann"}
    assert run.swept["bo"] - run.last_beat["bo"] >= 0.2 and run.last_beat["bo"] < 0.2 + 0.1
    assert feed.online() == set()


@pytest.mark.parametrize("users, crash, every, why", [
    ("ada", {}, 0.1, "list of names"),  # a forgotten pair of brackets: once ran users 'a', 'd', 'a'
    ([], {}, 0.1, "list of names"),
    (["ada", ""], {}, 0.1, "each user"),
    (["ada"], {"zed": 0.1}, 0.1, "crash"),
    (["ada"], {}, -1, "every"),
])
def test_heartbeat_run_refuses_bad_input_before_anyone_joins(r, ns, users, crash, every, why):
    feed = PresenceFeed(r, "hb-bad", prefix=ns.key("p"))
    with pytest.raises(ConfigError, match=why):
        lesson.heartbeat_run(feed, users, crash=crash, run_s=0.3, every=every, max_age=1)
    assert feed.online() == set()


def test_tick_race_inline_is_cut_conflated_and_stream_end_right():
    with spawn(client_output_buffer_limit="pubsub 256kb 128kb 10") as srv:
        race = lesson.tick_race(srv.client(), "ticks", "ticks-stream")
        assert srv.client().exists("ticks-stream") == 0
    inline, conflated, streamed = race.values()
    assert inline.disconnected and not inline.latest_right
    assert not conflated.disconnected and conflated.latest_right and conflated.handled < conflated.received == 1000
    assert not streamed.disconnected and streamed.latest_right and streamed.handled == 1000


def test_tick_race_with_room_to_spare_cuts_no_one():
    """The opposite setting: a handler that keeps up, and the limit never bites (the experiment can fail)."""
    with spawn(client_output_buffer_limit="pubsub 256kb 128kb 10") as srv:
        race = lesson.tick_race(srv.client(), "ticks", "ticks-stream", count=200, payload_bytes=100,
                                handler_s=0.0001)
    assert not any(c.disconnected for c in race.values()) and all(c.latest_right for c in race.values())


def test_expired_events_are_late_among_many_volatile_keys(ns):
    with spawn(notify_keyspace_events="Ex") as srv:
        client = srv.client()
        alone = lesson.expired_events_heard(client, ns, others=0, wait_s=1)
        among = lesson.expired_events_heard(client, ns, others=20_000, wait_s=1)
        assert client.dbsize() == 0
    assert alone == 100 and among < 50


def test_a_replica_publishes_del_not_expired(ns):
    with replicated(replicas=1) as pair:
        heard = lesson.expiry_events_on_replica(pair, ns.key("k"))
    assert heard["primary"] == ["set", "expire", "expired"]
    assert heard["replica"] == ["set", "expire", "del"]


def test_a_writable_replica_expires_its_own_keys(ns):
    with replicated(replicas=1) as pair:
        assert lesson.expired_on_writable_replica(pair, ns.key("own")) == [ns.key("own")]
        assert pair.replicas[0].client().config_get("replica-read-only")["replica-read-only"] == "yes"


def test_write_while_disconnected_reaches_no_one_of_them(r, ns):
    with Subscriber(r, ns.key("inv"), name=ns.key("gone")) as gone, \
            Subscriber(r, ns.key("inv"), name=ns.key("stays")) as stays:
        *kills, _, heard_by = lesson.write_while_disconnected(r, [ns.key("gone")], ns.key("inv"), ns.key("k"), "v")
        assert kills == [1] and heard_by == 1 and stays.wait_for(1) and r.get(ns.key("k")) == "v"
        assert lesson.wait_resubscribed([gone]) and gone.data() == [] and gone.connects == 2
        assert not lesson.wait_resubscribed([stays], timeout=0.2)  # never dropped: still its first connection
    r.delete(ns.key("k"))


def test_node_locality_on_a_cluster(ns):
    with cluster(primaries=3, replicas=0) as c:
        local = lesson.node_locality(c, ns.key("news"), ns)
        assert lesson.bus_messages(c.servers, "publish") >= 2  # the PUBLISH crossed the bus to the others
        assert all(node.client().keys(ns.key("*")) == [] for node in c.servers)
    assert local.count_on_other_node == 0 and local.heard_on_this_node == ["from another node", "marker"]
    assert 0 < local.events_heard == local.keys_on_this_node < local.keys_written == 60


# -- exercise checks ------------------------------------------------------------------------------------
def _resync_right(feed, seen):
    snapshot = feed.online()
    seen.clear()
    seen.update(snapshot)


def test_presence_accepts_a_replacing_resync(r, ns):
    assert lesson.check_presence(r, ns, _resync_right)


def test_presence_rejects_no_resync(r, ns):
    result = lesson.check_presence(r, ns, lambda feed, seen: None)
    assert not result and "missed erin" in result.message


def test_presence_rejects_an_add_only_resync(r, ns):
    result = lesson.check_presence(r, ns, lambda feed, seen: seen.update(feed.online()))
    assert not result and "still shows bob" in result.message and "missed erin" not in result.message


def test_near_cache_accepts_a_ttl_and_a_flush_on_reconnect(r, ns):
    assert lesson.check_near_cache(r, ns, lambda r, channel: InvalidatedCache(r, channel, ttl=30))
    assert r.exists(ns.key("check", "price")) == 0


def test_near_cache_rejects_no_flush_on_reconnect(r, ns):
    result = lesson.check_near_cache(r, ns, lambda r, channel: InvalidatedCache(r, channel, ttl=30,
                                                                                flush_on_reconnect=False))
    assert not result and "still served 100" in result.message and "TTL" not in result.message


def test_near_cache_rejects_entries_without_a_ttl(r, ns):
    result = lesson.check_near_cache(r, ns, lambda r, channel: InvalidatedCache(r, channel, ttl=None))
    assert not result and "give them a TTL" in result.message and "still served" not in result.message


def test_near_cache_rejects_neither_backstop(r, ns):
    result = lesson.check_near_cache(r, ns, lambda r, channel: InvalidatedCache(r, channel, ttl=None,
                                                                                flush_on_reconnect=False))
    assert not result and "still served 100" in result.message and "give them a TTL" in result.message


def test_near_cache_rejects_something_else(r, ns):
    result = lesson.check_near_cache(r, ns, lambda r, channel: {})
    assert not result and "return an InvalidatedCache" in result.message


@pytest.fixture(scope="module")
def own_server():
    from labkit.server import spawn

    with spawn() as srv:
        yield srv.client()


@pytest.mark.parametrize("flags", ["Ex", "xE"])
def test_expired_events_accepts_keyevent_expired_only(own_server, flags):
    assert lesson.check_expired_events(own_server, flags)
    assert own_server.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""


@pytest.mark.parametrize(("flags", "says"), [
    ("KEA", "also published"),  # everything: works, but floods
    ("Kx", "no expired event"),  # keyspace channels only
    ("x", "no expired event"),  # no channel class at all
    ("", "no expired event"),
    ("Eg", "no expired event"),
    ("Z", "refused"),
    ("Exe", "cost the server work on every write"),  # classes the check's one SET never triggers
    ("Ext", "cost the server work on every write"),
    ("Exl", "cost the server work on every write"),
])
def test_expired_events_rejects_the_wrong_flags(own_server, flags, says):
    result = lesson.check_expired_events(own_server, flags)
    assert not result and says in result.message


def test_silent_peer_only_the_subscriber_with_a_deadline_notices():
    with spawn() as srv:
        silent = lesson.silent_peer(srv, "ch", name="checked", health_check=0.2)
        assert subscribed_clients(srv.client()) == []
    assert silent.silence == [None, None] and silent.unanswered_pings >= 1
    assert "no reply to PING" in silent.disconnects[0] and silent.noticed_s < 5


def test_crash_race_stream_loses_nothing_pubsub_loses_a_run(r, ns):
    by_pubsub, by_stream, deliveries = lesson.crash_race(r, ns.key("o"), ns.key("os"), "g", name=ns.key("ops"),
                                                         n=600, crash_at=200)
    assert len(by_pubsub) < 600 and len(by_stream) == 600 and len(deliveries) > len(set(deliveries))
    assert r.xpending(ns.key("os"), "g")["pending"] == 0
    r.delete(ns.key("os"))
