"""The lesson 05 module (`labkit.lessons.l05_pubsub`): each check accepts the reference answer and rejects the
known-wrong ones."""

import pytest

from labkit.lessons import l05_pubsub as lesson


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
