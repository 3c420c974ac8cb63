"""Pub/sub helpers: a subscriber that sees its own disconnects and resynchronises, a presence feed with
heartbeats, a near cache invalidated over pub/sub with its backstops, and an
asyncio listener with backoff.

Pub/sub delivers each message to the subscribers connected at that moment, and to no one else. redis-py
hides a disconnect by reconnecting and resubscribing in silence; `Subscriber` turns that retry off, so
every disconnect is counted, and it calls `on_connect` each time it (re)subscribes: the place to catch up
on what was missed meanwhile, from the source of truth (pub/sub cannot replay it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from labkit import scripts, validate
from labkit.clients import derive, text
from labkit.errors import ConfigError, ServerUnavailable

Message = tuple[float, str, str]  # (monotonic time received, channel, data)
SUBSCRIBED = ("subscribe", "psubscribe", "ssubscribe")  # the replies that confirm a subscription
DELIVERED = ("message", "pmessage", "smessage")  # the replies that carry a published message


def named_client(r: redis.Redis, name: str, *, retry: bool = True) -> redis.Redis:
    """A client of the same server as `r` whose connections are named `name` in CLIENT LIST.

    With `retry=False` a dropped connection raises instead of being silently re-established.
    """
    return derive(r, retries=None if retry else 0, decode_responses=True, client_name=name)


def backoff_delays(base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2**attempt)]. The
    arguments are checked at once, not at the first delay."""
    validate.number(base, "base (seconds)", low=0, low_open=True)
    validate.number(cap, f"cap (seconds, at least base={base})", low=base)
    return _delays(base, cap, rng or random.Random())


def _delays(base: float, cap: float, rng: random.Random) -> Iterator[float]:
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap, base * 2**attempt))
        attempt += 1


class Subscriber:
    """A subscriber in a background thread that records every message, and every disconnect.

    Listens to `channels`, `patterns` and `shard_channels` (SSUBSCRIBE; on a `RedisCluster` client each
    shard channel is read from the node that owns its slot). On a lost connection it reconnects with
    backoff (unless `reconnect=False`), subscribes again and calls `on_connect(client)`, the place to
    resynchronise state that pub/sub cannot replay. A callback that raises does not stop it: the error is
    kept in `errors` (the latest ten). With `health_check=` seconds it sends PING (allowed on a subscribed
    connection) after that long without hearing anything, and treats the connection as lost when the PING
    is unanswered that long again (a paused server, or a peer gone without closing). Its connections are
    named `name`, by default
    `labkit-subscriber-<random>`, so that killing one subscriber by name never reaches another. `close()`
    (or the end of a `with` block) unsubscribes, stops the thread and closes the connections.

    Example:
        >>> with Subscriber(r, "news") as sub:
        ...     r.publish("news", "hello")
        ...     sub.wait_for(1)
        >>> sub.data()
        ['hello']
    """

    def __init__(self, r: redis.Redis | RedisCluster, *channels: str, patterns: Iterable[str] = (),
                 shard_channels: Iterable[str] = (), on_connect: Callable[[redis.Redis], None] | None = None,
                 on_message: Callable[[Message], None] | None = None, reconnect: bool = True,
                 name: str | None = None, health_check: float | None = None) -> None:
        self.channels, self.patterns, self.shard_channels = list(channels), list(patterns), list(shard_channels)
        _check_subscriptions(self.channels, self.patterns, self.shard_channels)
        for what, callback in (("on_connect", on_connect), ("on_message", on_message)):
            if callback is not None and not callable(callback):
                raise ConfigError(f"{what} must be callable, got {callback!r}.")
        self.name = f"labkit-subscriber-{secrets.token_hex(4)}" if name is None else validate.name(name, "name")
        self.on_connect, self.on_message, self.reconnect = on_connect, on_message, reconnect
        self.health_check = None if health_check is None else validate.seconds(health_check, "health_check")
        self.r, self.cluster = r, isinstance(r, RedisCluster)
        self.client = r if self.cluster else named_client(r, self.name, retry=False)
        self.messages: list[Message] = []
        self.disconnects: list[str] = []  # the error of each lost connection
        self.errors: list[str] = []  # the latest errors raised by on_connect or on_message
        self.connects = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._pubsubs: list[redis.client.PubSub] = []
        self._node_clients: list[redis.Redis] = []  # on a cluster: one named client per node read from
        self._live = False  # subscribed and confirmed
        self._heard = time.monotonic()  # when a connection last said anything (a message, a reply, a PONG)
        self._pinged_at: float | None = None  # when an unanswered PING was sent
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if not self.connects:
            self.close()
            why = self.disconnects[-1:] or self.errors[-1:] or "no answer in 10 s"
            raise ServerUnavailable(f"Subscriber could not subscribe: {why}. "
                                    "Is the server running? `python -m labkit doctor` checks.")

    # -- subscribing ----------------------------------------------------------------------------------
    def _plan(self) -> list[tuple[redis.Redis, list[str], list[str], list[list[str]]]]:
        """Per connection: its client, channels, patterns, and shard channels grouped by slot."""
        if not self.cluster:
            shards = [self.shard_channels] if self.shard_channels else []
            return [(self.client, self.channels, self.patterns, shards)]
        by_node: dict[str, tuple[Any, dict[int, list[str]]]] = {}
        for channel in self.shard_channels:
            node = self.r.get_node_from_key(channel)
            by_node.setdefault(node.name, (node, {}))[1].setdefault(key_slot(channel.encode()), []).append(channel)
        plan = [(self._node_client(node), [], [], list(slots.values())) for node, slots in by_node.values()]
        if self.channels or self.patterns:  # classic pub/sub is broadcast over the cluster: any node will do
            plan.append((self._node_client(self.r.get_default_node()), self.channels, self.patterns, []))
        return plan

    def _node_client(self, node: Any) -> redis.Redis:
        client = derive(self.r.get_redis_connection(node), retries=0, decode_responses=True, client_name=self.name)
        self._node_clients.append(client)
        return client

    def _subscribe(self) -> None:
        expected = []
        for client, channels, patterns, shard_groups in self._plan():
            pubsub = client.pubsub()
            self._pubsubs.append(pubsub)
            if channels:
                pubsub.subscribe(*channels)
            if patterns:
                pubsub.psubscribe(*patterns)
            for group in shard_groups:  # one slot per SSUBSCRIBE
                pubsub.ssubscribe(*group)
            expected.append(len(channels) + len(patterns) + sum(map(len, shard_groups)))
        for pubsub, count in zip(self._pubsubs, expected, strict=True):
            self._confirm(pubsub, count)
        self.connects += 1
        self._heard, self._pinged_at = time.monotonic(), None
        self._call(self.on_connect, self.client)
        self._live = True

    def _confirm(self, pubsub: redis.client.PubSub, count: int) -> None:
        """Wait until the server has confirmed `count` subscriptions: only subscription replies count; a
        message that arrives between two of them is recorded."""
        deadline = time.monotonic() + 5
        while count:
            left = deadline - time.monotonic()
            reply = pubsub.parse_response(block=False, timeout=left) if left > 0 else None
            if reply is None:
                raise ConnectionError("no subscription confirmation within 5 s")
            message = pubsub.handle_message(reply, ignore_subscribe_messages=False)
            kind = message["type"] if message else None
            if kind in SUBSCRIBED:
                count -= 1
            elif kind in DELIVERED:
                self._record(message)

    # -- the listening thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        delays = backoff_delays()
        try:
            while not self._stop.is_set():
                try:
                    if not self._pubsubs:
                        self._subscribe()
                        delays = backoff_delays()
                        self._ready.set()
                    self._poll()
                except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
                    self.disconnects.append(f"{type(err).__name__}: {err}")
                    self._drop()
                    if not self.reconnect or not self.connects:  # the first connection must work at once
                        return
                    self._stop.wait(next(delays))
        except Exception as err:  # anything else (a refused SUBSCRIBE...) ends the subscriber, visibly
            self.errors = [*self.errors[-9:], f"{type(err).__name__}: {err}"]
        finally:
            self._drop()
            self._ready.set()

    def _poll(self) -> None:
        for pubsub in self._pubsubs:
            message = pubsub.get_message(timeout=0.05 / len(self._pubsubs))
            if message:
                self._heard, self._pinged_at = time.monotonic(), None
                if message["type"] in DELIVERED:
                    self._record(message)
        if self.health_check:
            self._check_health()

    def _check_health(self) -> None:
        """PING after `health_check` seconds of silence; lost if the PING has no answer `health_check`
        seconds after it was sent."""
        now = time.monotonic()
        if self._pinged_at is not None and now - self._pinged_at > self.health_check:
            raise redis.TimeoutError(f"no reply to PING within {self.health_check:g} s (the peer is silent)")
        if self._pinged_at is None and now - self._heard > self.health_check:
            for pubsub in self._pubsubs:
                pubsub.ping()
            self._pinged_at = now

    def _record(self, message: dict) -> None:
        entry = (time.monotonic(), text(message["channel"]), text(message["data"]))
        self.messages.append(entry)
        self._call(self.on_message, entry)

    def _call(self, callback: Callable | None, *args: Any) -> None:
        """Run a caller's callback; an error is recorded in `errors`, never allowed to stop the thread."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception as err:
            self.errors = [*self.errors[-9:], f"{type(err).__name__}: {err}"]

    def _drop(self) -> None:
        self._live = False
        pubsubs, clients, self._pubsubs, self._node_clients = self._pubsubs, self._node_clients, [], []
        for pubsub in pubsubs:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
        for client in clients:
            with contextlib.suppress(redis.RedisError, OSError):
                client.close()
                client.connection_pool.disconnect()

    @property
    def connected(self) -> bool:
        """Subscribed, with every subscription confirmed by the server, and listening."""
        return self._live and self._thread.is_alive()

    def data(self) -> list[str]:
        """The payloads received so far, in order."""
        return [data for _, _, data in self.messages]

    def wait_for(self, count: int, timeout: float = 5.0) -> bool:
        """Wait until `count` messages have arrived; False if they did not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return len(self.messages) >= count

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """Wait until the subscriber is subscribed again after a disconnect."""
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.connected

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._drop()
        if not self.cluster:
            self.client.close()
            self.client.connection_pool.disconnect()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_subscriptions(channels: list[str], patterns: list[str], shard_channels: list[str]) -> None:
    if not channels and not patterns and not shard_channels:
        raise ConfigError("Subscriber needs at least one channel, pattern or shard channel to listen to.")
    for what, names in (("channel", channels), ("pattern", patterns), ("shard channel", shard_channels)):
        for each in names:
            validate.name(each, what)


def subscribed_clients(r: redis.Redis, name_prefix: str = "") -> list[dict]:
    """Clients that hold a subscription (channel, pattern or shard channel), from CLIENT LIST; only those
    whose connection name starts with `name_prefix` if given."""
    return [c for c in r.client_list()
            if c.get("name", "").startswith(name_prefix)
            and any(int(c.get(kind, 0) or 0) for kind in ("sub", "psub", "ssub"))]


class PresenceFeed:
    """Who is online in a room: a sorted set is the truth, a channel announces every change.

    `join` adds the user and publishes "join:<user>" in one Lua script, `leave` removes and publishes in one
    MULTI: one round trip each, and the set and the announcements never disagree. A subscriber that missed
    announcements reads `online()` to catch up. A member's score is its last sign of life, in seconds on the
    SERVER's clock (`TIME`, read inside the script or the sweep's transaction), so machines whose clocks
    disagree, or get stepped, still agree on who is silent: `heartbeat` refreshes it, and `sweep` removes
    the members silent for longer than `max_age` (a client that crashed never says "leave") and announces
    each as a leave. No client clock is read anywhere; `now=` on `heartbeat` and `sweep` is for tests.
    """

    def __init__(self, r: redis.Redis, room: str, *, prefix: str = "lab:presence") -> None:
        if not isinstance(r, (redis.Redis, RedisCluster)):
            raise ConfigError(f"PresenceFeed needs a client (labkit.connect() or server.client()), got {r!r}.")
        self.r = r
        validate.name(room, "room")
        validate.prefix(prefix)
        self.members_key = f"{prefix}:{room}:online"
        self.channel = f"{prefix}:{room}:events"

    def join(self, user: str) -> int:
        """Add `user` with the server's time and announce it; returns how many subscribers heard it."""
        validate.name(user, "user")
        return scripts.register(self.r, "pubsub/join")(keys=[self.members_key], args=[user, self.channel])

    def leave(self, user: str) -> None:
        validate.name(user, "user")
        pipe = self.r.pipeline(transaction=True)
        pipe.zrem(self.members_key, user)
        pipe.publish(self.channel, f"leave:{user}")
        pipe.execute()

    def online(self) -> set[str]:
        return {text(m) for m in self.r.zrange(self.members_key, 0, -1)}

    def heartbeat(self, user: str, *, now: float | None = None) -> bool:
        """Refresh `user`'s last sign of life to the server's time, to the ms (one script: ZSCORE, then
        ZADD XX): True if `user` was online; False if not (swept, or never joined), and then nothing is
        added: call `join` again. `now` (seconds since the epoch) replaces the server's time, for tests."""
        validate.name(user, "user")
        args = [user] if now is None else [user, round(_test_time(now) * 1000)]
        return scripts.register(self.r, "pubsub/heartbeat")(keys=[self.members_key], args=args) == 1

    def sweep(self, max_age: float, *, now: float | None = None) -> list[str]:
        """Remove the members with no heartbeat for more than `max_age` seconds and announce each as a
        leave, in one MULTI under WATCH: a heartbeat that lands between the read and the removal makes
        the transaction retry, so a live member is never swept. Returns the members removed. `now`
        (seconds since the epoch) replaces the server's time, for tests."""
        validate.seconds(max_age, "max_age")
        if now is not None:
            _test_time(now)

        def remove_stale(pipe: redis.client.Pipeline) -> list[str]:
            if now is None:
                seconds, micros = pipe.time()  # the server's clock, read under WATCH
            cutoff = (seconds + micros / 1e6 if now is None else now) - max_age
            stale = [text(m) for m in pipe.zrangebyscore(self.members_key, "-inf", f"({cutoff}")]
            pipe.multi()
            if stale:
                pipe.zrem(self.members_key, *stale)
            for user in stale:
                pipe.publish(self.channel, f"leave:{user}")
            return stale

        return self.r.transaction(remove_stale, self.members_key, value_from_callable=True)

    @staticmethod
    def apply(event: str, seen: set[str]) -> None:
        """Apply one announcement ("join:alice" or "leave:alice") to a local view of who is online."""
        action, _, user = event.partition(":")
        (seen.add if action == "join" else seen.discard)(user)


def _test_time(now: Any) -> float:
    return validate.number(now, "now (a test's time in seconds since the epoch; omit it for the server's TIME)",
                           low=0)


async def listen(url: str, channel: str, handler: Callable[[str], Awaitable[None] | None], stop: asyncio.Event,
                 *, on_connect: Callable[[], Awaitable[None] | None] | None = None, base: float = 0.05,
                 cap: float = 2.0) -> int:
    """Listen on `channel` with redis.asyncio until `stop` is set; reconnect with backoff when dropped.

    Calls `on_connect()` after each (re)subscription and `handler(data)` for each message; closes its
    connection on the way out, also when cancelled. Returns the number of reconnections it made.
    """
    validate.name(url, "url (redis://host:port)")
    validate.name(channel, "channel")
    for what, callback in (("handler", handler), ("on_connect", on_connect)):
        if (callback is not None or what == "handler") and not callable(callback):
            raise ConfigError(f"{what} must be callable, got {callback!r}.")
    backoff_delays(base, cap)  # checks them now
    reconnections, delays = -1, backoff_delays(base, cap)
    while not stop.is_set():
        client = redis.asyncio.Redis.from_url(url, decode_responses=True, retry=Retry(NoBackoff(), 0))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(channel)
            reconnections, delays = reconnections + 1, backoff_delays(base, cap)
            if on_connect and (pending := on_connect()) is not None:
                await pending
            while not stop.is_set():
                message = await pubsub.get_message(timeout=0.05)
                if message and (pending := handler(message["data"])) is not None:
                    await pending
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            await _sleep_unless(stop, next(delays))
        finally:
            await pubsub.aclose()
            await client.aclose()
    return max(reconnections, 0)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


class InvalidatedCache:
    """A local copy of Redis values in this process (a near cache), dropped key by key when a writer
    announces a change on `channel`.

    Pub/sub loses an invalidation whenever the subscriber is not connected at that instant, so the
    pattern needs two backstops: each local entry lives at most `ttl` seconds (a missed invalidation is
    stale for that long at worst; None: forever), and the whole copy is flushed each time the subscriber
    (re)connects (`flush_on_reconnect`), because it cannot know what it missed. Writers go through
    `write`: SET and PUBLISH in one MULTI. `clock` (seconds, monotonic) is injectable for tests.
    """

    def __init__(self, r: redis.Redis, channel: str, *, ttl: float | None, flush_on_reconnect: bool = True,
                 name: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.r, self.channel, self.clock = r, validate.name(channel, "channel"), clock
        self.ttl = None if ttl is None else validate.seconds(ttl, "ttl")
        self.flush_on_reconnect, self.flushes = flush_on_reconnect, 0
        self.entries: dict[str, tuple[float, Any]] = {}  # key -> (expires at, value)
        self.subscriber = Subscriber(r, channel, on_message=self._invalidate, on_connect=self._connected, name=name)

    def get(self, key: str) -> Any:
        """The local copy if it is there and younger than `ttl`, else GET (and keep the answer)."""
        validate.name(key, "key")
        entry = self.entries.get(key)
        if entry is not None and self.clock() < entry[0]:
            return entry[1]
        value = self.r.get(key)
        self.entries[key] = (math.inf if self.ttl is None else self.clock() + self.ttl, value)
        return value

    @staticmethod
    def write(r: redis.Redis, channel: str, key: str, value: str) -> int:
        """SET `key` and announce it on `channel`, in one MULTI; returns how many caches heard it."""
        pipe = r.pipeline(transaction=True)
        pipe.set(validate.name(key, "key"), value)
        pipe.publish(validate.name(channel, "channel"), key)
        return pipe.execute()[1]

    def _invalidate(self, message: Message) -> None:
        self.entries.pop(message[2], None)

    def _connected(self, _client: redis.Redis) -> None:
        if self.flush_on_reconnect:
            self.entries.clear()
            self.flushes += 1

    def close(self) -> None:
        self.subscriber.close()

    def __enter__(self) -> InvalidatedCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
