"""Pub/sub helpers: a subscriber that sees its own disconnects and resynchronises, a presence feed, and an
asyncio listener with backoff.

Pub/sub delivers each message to the subscribers connected at that moment, and to no one else. redis-py
hides a disconnect by reconnecting and resubscribing in silence; `Subscriber` turns that retry off, so
every disconnect is counted, and it calls `on_connect` each time it (re)subscribes: the place to catch up
on what was missed meanwhile, from the source of truth (pub/sub cannot replay it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from labkit.clients import derive, text
from labkit.errors import ConfigError, ServerUnavailable

Message = tuple[float, str, str]  # (monotonic time received, channel, data)


def named_client(r: redis.Redis, name: str, *, retry: bool = True) -> redis.Redis:
    """A client of the same server as `r` whose connections are named `name` in CLIENT LIST.

    With `retry=False` a dropped connection raises instead of being silently re-established.
    """
    return derive(r, retries=None if retry else 0, decode_responses=True, client_name=name)


def backoff_delays(base: float = 0.05, cap: float = 2.0, rng: random.Random | None = None) -> Iterator[float]:
    """Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2**attempt)]."""
    if base <= 0 or cap < base:
        raise ConfigError(f"backoff needs 0 < base <= cap, got base={base}, cap={cap}.")
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap, base * 2**attempt))
        attempt += 1


class Subscriber:
    """A subscriber in a background thread that records every message, and every disconnect.

    On a lost connection it reconnects with backoff (unless `reconnect=False`), subscribes again and calls
    `on_connect(client)`, the place to resynchronise state that pub/sub cannot replay. `close()` (or the
    end of a `with` block) unsubscribes, stops the thread and closes the connection.

    Example:
        >>> with Subscriber(r, "news") as sub:
        ...     r.publish("news", "hello")
        ...     sub.wait_for(1)
        >>> sub.data()
        ['hello']
    """

    def __init__(self, r: redis.Redis, *channels: str, patterns: Iterable[str] = (),
                 on_connect: Callable[[redis.Redis], None] | None = None,
                 on_message: Callable[[Message], None] | None = None,
                 reconnect: bool = True, name: str = "labkit-subscriber") -> None:
        self.patterns = list(patterns)
        if not channels and not self.patterns:
            raise ConfigError("Subscriber needs at least one channel or pattern to listen to.")
        self.channels, self.name = list(channels), name
        self.on_connect, self.on_message, self.reconnect = on_connect, on_message, reconnect
        self.client = named_client(r, name, retry=False)
        self.messages: list[Message] = []
        self.disconnects: list[str] = []  # the error of each lost connection
        self.connects = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._pubsub: redis.client.PubSub | None = None
        self._live = False  # subscribed and confirmed
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if not self.connects:
            self.close()
            raise ServerUnavailable(f"Subscriber could not subscribe: {self.disconnects[-1:] or 'no answer in 10 s'}. "
                                    "Is the server running? `python -m labkit doctor` checks.")

    def _subscribe(self) -> None:
        self._pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        if self.channels:
            self._pubsub.subscribe(*self.channels)
        if self.patterns:
            self._pubsub.psubscribe(*self.patterns)
        confirmations = len(self.channels) + len(self.patterns)
        while confirmations:  # wait until the server has registered every subscription
            reply = self._pubsub.parse_response(block=False, timeout=5)
            if reply is None:
                raise ConnectionError("no subscription confirmation within 5 s")
            confirmations -= 1
        self.connects += 1
        if self.on_connect:
            self.on_connect(self.client)
        self._live = True

    def _run(self) -> None:
        delays = backoff_delays()
        while not self._stop.is_set():
            try:
                if self._pubsub is None:
                    self._subscribe()
                    delays = backoff_delays()
                    self._ready.set()
                message = self._pubsub.get_message(timeout=0.05)
                if message and message["type"] in ("message", "pmessage"):
                    self._record((time.monotonic(), message["channel"], message["data"]))
            except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
                self.disconnects.append(f"{type(err).__name__}: {err}")
                self._drop()
                if not self.reconnect or not self.connects:  # the first connection must work at once
                    self._ready.set()
                    return
                self._stop.wait(next(delays))

    def _record(self, message: Message) -> None:
        self.messages.append(message)
        if self.on_message:
            self.on_message(message)

    def _drop(self) -> None:
        self._live = False
        if self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                self._pubsub.close()
            self._pubsub = None

    @property
    def connected(self) -> bool:
        """Subscribed, with every subscription confirmed by the server."""
        return self._live

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
        self.client.close()
        self.client.connection_pool.disconnect()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def subscribed_clients(r: redis.Redis, name_prefix: str = "") -> list[dict]:
    """Clients that hold a subscription (channel, pattern or shard channel), from CLIENT LIST; only those
    whose connection name starts with `name_prefix` if given."""
    return [c for c in r.client_list()
            if c.get("name", "").startswith(name_prefix)
            and any(int(c.get(kind, 0) or 0) for kind in ("sub", "psub", "ssub"))]


class PresenceFeed:
    """Who is online in a room: a sorted set is the truth, a channel announces every change.

    `join` and `leave` update the set and publish in one MULTI (one round trip), so the set and the
    announcements never disagree. A subscriber that missed announcements reads `online()` to catch up.
    """

    def __init__(self, r: redis.Redis, room: str, *, prefix: str = "lab:presence") -> None:
        self.r = r
        self.members_key = f"{prefix}:{room}:online"
        self.channel = f"{prefix}:{room}:events"

    def _change(self, action: str, user: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        if action == "join":
            pipe.zadd(self.members_key, {user: time.time()})
        else:
            pipe.zrem(self.members_key, user)
        pipe.publish(self.channel, f"{action}:{user}")
        pipe.execute()

    def join(self, user: str) -> None:
        self._change("join", user)

    def leave(self, user: str) -> None:
        self._change("leave", user)

    def online(self) -> set[str]:
        return {text(m) for m in self.r.zrange(self.members_key, 0, -1)}

    @staticmethod
    def apply(event: str, seen: set[str]) -> None:
        """Apply one announcement ("join:alice" or "leave:alice") to a local view of who is online."""
        action, _, user = event.partition(":")
        (seen.add if action == "join" else seen.discard)(user)


async def listen(url: str, channel: str, handler: Callable[[str], Awaitable[None] | None], stop: asyncio.Event,
                 *, on_connect: Callable[[], Awaitable[None] | None] | None = None, base: float = 0.05,
                 cap: float = 2.0) -> int:
    """Listen on `channel` with redis.asyncio until `stop` is set; reconnect with backoff when dropped.

    Calls `on_connect()` after each (re)subscription and `handler(data)` for each message; closes its
    connection on the way out, also when cancelled. Returns the number of reconnections it made.
    """
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
