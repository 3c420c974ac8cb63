"""Lesson 05, pub/sub (`notebooks/05_pubsub.ipynb`): the exercise checks."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, verdict
from labkit.pubsub import PresenceFeed, Subscriber


def check_presence(r: redis.Redis, ns: Namespace, resync: Callable[[PresenceFeed, set[str]], None]) -> Result:
    """`resync(feed, seen)`, called on every (re)connect, makes the set `seen` match who is online,
    so a tracker that missed announcements while disconnected ends up right."""
    feed = PresenceFeed(r, "check", prefix=ns.key("check"))
    seen: set[str] = set()
    r.delete(feed.members_key)

    def tracker() -> Subscriber:
        sub = Subscriber(r, feed.channel, on_connect=lambda _client: resync(feed, seen),
                         on_message=lambda message: PresenceFeed.apply(message[2], seen), name="labkit-check")
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


def check_expired_events(r: redis.Redis, flags: str) -> Result:
    """With notify-keyspace-events set to `flags`, a subscriber of `__keyevent@0__:expired` hears
    each key that expires, and the server publishes nothing else (no event for writes, none per key name).
    Restores the server's previous setting afterwards."""
    previous = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    key = "lab:l05:check:expiring"
    try:
        r.config_set("notify-keyspace-events", flags)
    except redis.ResponseError as err:
        return Result(False, f"the server refused {flags!r}: {err}. Use the letters from the table above.")
    try:
        with Subscriber(r, patterns=["__key*@*__:*"], name="labkit-check") as sub:
            r.set(key, "soon", px=50)
            deadline = time.monotonic() + 2
            while r.exists(key) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.15)
            events = [channel for _, channel, _ in sub.messages]
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
