"""Lesson 05, pub/sub (`notebooks/05_pubsub.ipynb`): numbered messages to count what a subscriber missed,
dropping connections by name, the slow-subscriber experiment, and the exercise checks."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis

from labkit import validate
from labkit.errors import ConfigError
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.pubsub import PresenceFeed, Subscriber, named_client


# -- counting losses ------------------------------------------------------------------------------------
def publish_numbered(r: redis.Redis, channel: str, count: int, *, start: int = 0, rate: float | None = None) -> int:
    """Publish messages "0", "1", ... on `channel` (`rate` per second, or as fast as possible).

    Returns the number of deliveries PUBLISH reported (receivers summed over messages).
    """
    if count < 0:
        raise ConfigError(f"count must be zero or more, got {count}.")
    delivered, began = 0, time.monotonic()
    for i in range(start, start + count):
        if rate:
            time.sleep(max(0.0, began + (i - start) / rate - time.monotonic()))
        delivered += r.publish(channel, str(i))
    return delivered


def missing(received: Iterable[str], expected: Iterable[int]) -> list[int]:
    """The numbers in `expected` that never arrived."""
    seen = {int(x) for x in received}
    return [i for i in expected if i not in seen]


def kill_clients(r: redis.Redis, name: str) -> int:
    """Make the server drop every connection named `name` (CLIENT KILL), as a network blip would; return
    how many. A `Subscriber`'s name is its own (a random suffix unless you choose one), so this reaches
    that subscriber and no one else's on a shared server."""
    validate.name(name, "name")
    ids = [c["id"] for c in r.client_list() if c.get("name") == name]
    for client_id in ids:
        r.client_kill_filter(_id=client_id)
    return len(ids)


# -- the slow subscriber --------------------------------------------------------------------------------
@dataclass
class SlowSubscriberResult:
    """What happened to a subscriber that never read."""

    hard_limit_bytes: int
    published: int
    last_backlog_bytes: int  # the server's output buffer for it (omem) at the last look before the kill
    disconnections: int  # INFO stats client_output_buffer_limit_disconnections, this experiment's share
    received: int  # what it read afterwards, from its socket, before the error
    error: str
    backlog: list[tuple[int, int]] = field(default_factory=list)  # (published, omem) samples


def _pubsub_hard_limit(r: redis.Redis) -> int:
    words = r.config_get("client-output-buffer-limit")["client-output-buffer-limit"].split()
    return int(words[words.index("pubsub") + 1])


def slow_subscriber(r: redis.Redis, channel: str, *, payload_bytes: int = 1000, step: int = 50,
                    max_messages: int = 100_000) -> SlowSubscriberResult:
    """Subscribe without reading, publish until the server disconnects the subscriber, then read.

    Run it on a server of its own with a small `client-output-buffer-limit pubsub` (see `spawn`).
    """
    limit = _pubsub_hard_limit(r)
    before = int(r.info("stats")["client_output_buffer_limit_disconnections"])
    name = f"labkit-slow-{secrets.token_hex(4)}"  # its own: other experiments' connections are never counted
    listener = named_client(r, name, retry=False).pubsub()
    listener.subscribe(channel)
    listener.get_message(timeout=1)
    published, samples, payload = 0, [], "x" * payload_bytes
    try:
        while published < max_messages:
            pipe = r.pipeline(transaction=False)
            for _ in range(step):
                pipe.publish(channel, payload)
            pipe.execute()
            published += step
            mine = [c for c in r.client_list() if c.get("name") == name]
            if not mine:
                break
            samples.append((published, int(mine[0]["omem"])))
        received, error = 0, "still connected"
        try:
            while listener.get_message(timeout=1):
                received += 1
        except (redis.ConnectionError, OSError) as err:
            error = f"{type(err).__name__}: {err}"
    finally:
        listener.close()
        listener.connection_pool.disconnect()
    after = int(r.info("stats")["client_output_buffer_limit_disconnections"])
    return SlowSubscriberResult(limit, published, samples[-1][1] if samples else 0, after - before, received,
                                error, samples)


# -- exercise checks ------------------------------------------------------------------------------------
@check
def check_presence(r: redis.Redis, ns: Namespace, resync: Callable[[PresenceFeed, set[str]], None]) -> Result:
    """`resync(feed, seen)`, called on every (re)connect, makes the set `seen` match who is online,
    so a tracker that missed announcements while disconnected ends up right."""
    feed = PresenceFeed(r, "check", prefix=ns.key("check"))
    seen: set[str] = set()
    r.delete(feed.members_key)

    def tracker() -> Subscriber:
        sub = Subscriber(r, feed.channel, on_connect=lambda _client: resync(feed, seen),
                         on_message=lambda message: PresenceFeed.apply(message[2], seen))
        return sub

    try:
        for user in ("alice", "bob", "carol"):
            feed.join(user)
        with tracker() as sub:  # connected from the start: it learns alice, bob and carol from resync
            feed.join("dave")
            sub.wait_for(1)
        feed.leave("bob")  # while the tracker is disconnected: no one hears these two
        feed.join("erin")
        with tracker() as sub:  # the reconnect
            feed.leave("alice")
            sub.wait_for(1)
        truth = feed.online()
    finally:
        r.delete(feed.members_key)
    if seen == truth:
        return Result(True, f"after the reconnect the tracker sees {sorted(seen)}, exactly who is online.")
    problems = [f"the tracker believes {sorted(seen)} are online; really {sorted(truth)} are."]
    if "erin" not in seen:
        problems.append("It missed erin, who joined while it was disconnected: on connect, read feed.online().")
    if "bob" in seen:
        problems.append("It still shows bob, who left while it was disconnected: replace `seen` with the snapshot "
                        "(clear it first), don't just add to it.")
    return Result(False, " ".join(problems))


@check
def check_expired_events(r: redis.Redis, flags: str) -> Result:
    """With notify-keyspace-events set to `flags`, a subscriber of `__keyevent@0__:expired` hears
    each key that expires, and the server publishes nothing else (no event for writes, none per key name).
    Restores the server's previous setting afterwards.

    No guessed wait: once the key is gone, the server has already sent the subscriber every event about
    it, so a marker published then arrives after all of them (one connection delivers in order); the
    events are those received before the marker."""
    previous = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    ns = Namespace("l05")  # lab:l05:, or lab:<learner>:l05: for a learner
    key, marker = ns.key("check", "expiring"), ns.key("check", "done")
    try:
        r.config_set("notify-keyspace-events", flags)
    except redis.ResponseError as err:
        return Result(False, f"the server refused {flags!r}: {err}. Use the letters from the table above.")
    try:
        with Subscriber(r, marker, patterns=["__key*@*__:*"]) as sub:
            r.set(key, "soon", px=50)
            deadline = time.monotonic() + 10
            while r.exists(key) and time.monotonic() < deadline:  # EXISTS also expires it, if it is due
                time.sleep(0.01)
            r.publish(marker, "after the expiry")
            deadline = time.monotonic() + 10
            while marker not in (heard := [channel for _, channel, _ in sub.messages]) and time.monotonic() < deadline:
                time.sleep(0.005)
            events = heard[:heard.index(marker)] if marker in heard else heard
    finally:
        r.config_set("notify-keyspace-events", previous)
        r.delete(key)
    expired = [c for c in events if c.startswith("__keyevent@") and c.endswith(":expired")]
    others = sorted(set(events) - set(expired))
    problems = []
    if not expired:
        problems.append(f"no expired event reached __keyevent@0__:expired with {flags!r}: you need E (keyevent "
                        "channels) and x (expired events).")
    if others:
        problems.append(f"the server also published on {others[:4]}: every extra event costs the server work "
                        "for each write; keep only E and x.")
    return verdict(problems, f"{flags!r} publishes exactly one event for the expired key, on {expired[:1]}.")
