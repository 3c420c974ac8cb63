"""The lesson 05 module (`labkit.lessons.l05_pubsub`): numbered messages, dropping clients by name, the slow
subscriber, and each check accepting the reference answer and rejecting the known-wrong ones."""

import pytest

from labkit import ConfigError
from labkit.lessons import l05_pubsub as lesson
from labkit.pubsub import Subscriber, subscribed_clients
from labkit.server import capabilities, spawn

from ..waiting import eventually


# -- counting losses ------------------------------------------------------------------------------------
def test_missing_lists_the_numbers_that_never_arrived():
    assert lesson.missing(["0", "1", "4"], range(6)) == [2, 3, 5]


def test_publish_numbered_rejects_a_negative_count(r):
    with pytest.raises(ConfigError, match="zero or more"):
        lesson.publish_numbered(r, "x", -1)


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
])
def test_expired_events_rejects_the_wrong_flags(own_server, flags, says):
    result = lesson.check_expired_events(own_server, flags)
    assert not result and says in result.message
