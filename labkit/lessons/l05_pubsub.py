"""Lesson 05, pub/sub (`notebooks/05_pubsub.ipynb`): numbered messages to count what a subscriber missed,
dropping connections by name, the slow-subscriber experiment, and the exercise checks."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import redis

from labkit import validate
from labkit.clients import connection_spec
from labkit.errors import ConfigError
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.pubsub import InvalidatedCache, PresenceFeed, Subscriber, named_client


# -- counting losses ------------------------------------------------------------------------------------
def publish_numbered(r: redis.Redis, channel: str, count: int, *, start: int = 0, rate: float | None = None,
                     sent_at: list[float] | None = None) -> int:
    """Publish messages "0", "1", ... on `channel` (`rate` per second, or as fast as possible), appending
    the monotonic time of each PUBLISH to `sent_at` if given.

    Returns the number of deliveries PUBLISH reported (receivers summed over messages).
    """
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ConfigError(f"count must be a whole number, zero or more; got {count!r}.")
    validate.integer(start, "start", minimum=0)
    if rate is not None:
        validate.number(rate, "rate (messages per second; None: as fast as possible)", low=0, low_open=True)
    delivered, began = 0, time.monotonic()
    for i in range(start, start + count):
        if rate:
            time.sleep(max(0.0, began + (i - start) / rate - time.monotonic()))
        if sent_at is not None:
            sent_at.append(time.monotonic())
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


# -- a subscribed connection, RESP2 and RESP3 -----------------------------------------------------------
def command_while_subscribed(r: redis.Redis, protocol: int, channel: str, *command: str) -> str:
    """Subscribe a new connection speaking RESP `protocol` to `channel`, then send `command` on that same
    connection: its reply, or the server's error, as text. (redis-py's `PubSub` object offers no way to do
    this, so it goes through the connection itself.)"""
    client = redis.Redis(**connection_spec(r), protocol=protocol, decode_responses=True)
    pubsub = client.pubsub()
    try:
        pubsub.subscribe(channel)
        pubsub.get_message(timeout=1)
        pubsub.connection.send_command(*command)
        try:
            return str(pubsub.connection.read_response())
        except redis.ResponseError as err:
            return f"error: {err}"
    finally:
        pubsub.close()
        client.close()


# -- presence heartbeats -----------------------------------------------------------------------------------
@dataclass
class HeartbeatRun:
    """Heartbeats and sweeps over time, in seconds from the start of the run."""

    beats: dict[str, list[float]]  # when each user sent a heartbeat
    crashed: dict[str, float]  # when each crashing user stopped
    swept: dict[str, float]  # when the sweeper removed each user
    announced: list[str]  # what the presence channel carried meanwhile
    online: set[str]  # the set at the end

    @property
    def last_beat(self) -> dict[str, float]:
        return {user: times[-1] for user, times in self.beats.items()}


def heartbeat_run(feed: PresenceFeed, users: list[str], *, crash: dict[str, float], run_s: float, every: float,
                  max_age: float) -> HeartbeatRun:
    """`users` join and send a heartbeat every `every` seconds; each user in `crash` stops at that time
    (no leave). After each round of heartbeats a sweeper removes those silent for more than `max_age`.
    Everyone still online leaves at the end."""
    if isinstance(users, str) or not isinstance(users, (list, tuple)) or not users:
        raise ConfigError(f"users must be a list of names, like ['ada', 'bob']; got {users!r}.")
    for user in users:
        validate.name(user, "each user")
    if not isinstance(crash, dict) or set(crash) - set(users):
        raise ConfigError(f"crash maps some of users {list(users)} to when each stops, like {{'bob': 0.3}}; "
                          f"got {crash!r}.")
    for when in crash.values():
        validate.seconds(when, "each crash time", allow_zero=True)
    run_s, every = validate.seconds(run_s, "run_s"), validate.seconds(every, "every")
    validate.seconds(max_age, "max_age")
    for user in users:
        feed.join(user)
    start, beats, swept = time.monotonic(), {user: [0.0] for user in users}, {}
    with Subscriber(feed.r, feed.channel) as heard:
        while (now := time.monotonic() - start) < run_s:
            for user in users:
                if now < crash.get(user, run_s):
                    feed.heartbeat(user)
                    beats[user].append(time.monotonic() - start)
            for user in feed.sweep(max_age):
                swept[user] = time.monotonic() - start
            time.sleep(every)
        heard.wait_for(len(swept))
        announced = heard.data()
    online = feed.online()
    for user in online:
        feed.leave(user)
    return HeartbeatRun(beats, dict(crash), swept, announced, online)


def plot_heartbeats(run: HeartbeatRun, max_age: float) -> None:
    """One row per user: its heartbeats, where it crashed, and when the sweeper removed it."""
    import matplotlib.pyplot as plt

    users = list(run.beats)
    _, ax = plt.subplots(figsize=(7, 0.5 + 0.5 * len(users)))
    for row, user in enumerate(users):
        ax.plot(run.beats[user], [row] * len(run.beats[user]), "|", markersize=12, color="tab:blue")
        if user in run.crashed:
            ax.plot(run.crashed[user], row, "x", color="black", markersize=9)
            last = run.beats[user][-1]
            ax.plot([last, last + max_age], [row - 0.25] * 2, color="tab:orange", linewidth=3)
        if user in run.swept:
            ax.plot(run.swept[user], row, "o", color="tab:red", markersize=9)
    ax.set_yticks(range(len(users)), users)
    ax.set_ylim(-0.6, len(users) - 0.4)
    ax.set(xlabel="seconds", title=f"heartbeats (|), crash (x), max_age {max_age:g} s (orange), swept (red)")
    plt.show()


# -- the slow subscriber --------------------------------------------------------------------------------
@dataclass
class SlowSubscriberResult:
    """What happened to a subscriber that never read."""

    hard_limit_bytes: int
    published: int
    last_backlog_bytes: int  # the server's output buffer for it (omem) at the last look before the kill
    held_bytes: int  # growth of the server's used_memory at that last look: what the backlog really cost
    disconnections: int | None  # INFO stats client_output_buffer_limit_disconnections, this experiment's share
    # (None on a server whose INFO has no such counter: it came in 2023, with Redis 7.2)
    received: int  # what it read afterwards, from its socket, before the error
    error: str
    backlog: list[tuple[int, int]] = field(default_factory=list)  # (published, omem) samples

    @property
    def in_kernel(self) -> int:
        """Messages published while omem was still 0: what the kernel's socket buffers took first."""
        return max((published for published, omem in self.backlog if omem == 0), default=0)

    @property
    def omem_per_message(self) -> float | None:
        """omem at the last look over the messages queued in the server by then (published minus those in the
        kernel's buffers): what the output buffer limit counts for one message. An estimate: omem grows in
        blocks, and the kernel's buffers may take a few more messages as they grow."""
        if not self.backlog:
            return None
        published, omem = self.backlog[-1]
        queued = published - self.in_kernel
        return omem / queued if queued > 0 else None


DISCONNECTIONS = "client_output_buffer_limit_disconnections"


def pubsub_limit(r: redis.Redis) -> tuple[int, int, int]:
    """The server's `client-output-buffer-limit` for pub/sub clients: (hard bytes, soft bytes, soft seconds)."""
    words = r.config_get("client-output-buffer-limit")["client-output-buffer-limit"].split()
    at = words.index("pubsub")
    hard, soft, seconds = (int(w) for w in words[at + 1:at + 4])
    return hard, soft, seconds


def _pubsub_hard_limit(r: redis.Redis) -> int:
    return pubsub_limit(r)[0]


def slow_subscriber(r: redis.Redis, channel: str, *, payload_bytes: int = 1000, step: int = 50,
                    max_messages: int = 100_000) -> SlowSubscriberResult:
    """Subscribe without reading, publish until the server disconnects the subscriber, then read.

    Run it on a server of its own with a small `client-output-buffer-limit pubsub` (see `spawn`).
    """
    validate.name(channel, "channel")
    validate.integer(payload_bytes, "payload_bytes")
    validate.integer(step, "step (messages per look at CLIENT LIST)")
    validate.integer(max_messages, "max_messages")
    limit = _pubsub_hard_limit(r)
    before, memory_before = _disconnections(r), _used_memory(r)
    name = f"labkit-slow-{secrets.token_hex(4)}"  # its own: other experiments' connections are never counted
    listener = named_client(r, name, retry=False).pubsub()
    listener.subscribe(channel)
    listener.get_message(timeout=1)
    published, samples, payload, held = 0, [], "x" * payload_bytes, 0
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
            held = _used_memory(r) - memory_before
        received, error = 0, "still connected"
        try:
            while listener.get_message(timeout=1):
                received += 1
        except (redis.ConnectionError, OSError) as err:
            error = f"{type(err).__name__}: {err}"
    finally:
        listener.close()
        listener.connection_pool.disconnect()
    after = _disconnections(r)
    counted = None if after is None or before is None else after - before
    return SlowSubscriberResult(limit, published, samples[-1][1] if samples else 0, held, counted, received, error,
                                samples)


def plot_backlog(run: SlowSubscriberResult) -> None:
    """The server's output buffer for a subscriber that never reads, against messages published: flat while
    the kernel's socket buffers take the messages (omem 0), then rising to the limit; x marks the last look
    before the cut."""
    import matplotlib.pyplot as plt

    published, backlog = zip(*run.backlog, strict=True)
    kb = [b / 1024 for b in backlog]
    _, ax = plt.subplots(figsize=(7, 2.8))
    in_kernel = [p for p, b in run.backlog if b == 0]
    if in_kernel:
        ax.axvspan(0, in_kernel[-1], color="tab:gray", alpha=0.15, label="in the kernel's socket buffers (omem 0)")
    ax.plot(published, kb, label="server output buffer (omem)")
    ax.plot(published[-1], kb[-1], "x", color="black", markersize=10, label="last look: cut by the next messages")
    ax.axhline(run.hard_limit_bytes / 1024, color="tab:red", linestyle="--", label="hard limit")
    ax.set(xlabel="messages published", ylabel="KB", title="a subscriber that never reads")
    ax.legend(fontsize=7, loc="upper left")
    plt.show()


def _used_memory(r: redis.Redis) -> int:
    return int(r.info("memory")["used_memory"])


COPY_AVOIDANCE = "min-string-size-avoid-copy-reply"


def copy_avoidance_threshold(r: redis.Redis) -> int | None:
    """The size from which the server queues a bulk reply by reference instead of copying it into the
    client's output buffer (`min-string-size-avoid-copy-reply`, Valkey 9), or None if it has no such
    setting. A hidden setting: `CONFIG GET *` does not list it, CONFIG GET by its exact name does."""
    value = r.config_get(COPY_AVOIDANCE).get(COPY_AVOIDANCE)
    return None if value is None else int(value)


@dataclass
class MemoryGauges:
    """What each memory gauge of the server says about one subscriber that never reads."""

    messages: int  # published to it, none read
    used_memory_growth: int  # INFO memory used_memory, after minus before: what the server really holds
    omem: int  # CLIENT LIST omem: its output buffer, what client-output-buffer-limit counts
    tot_mem: int | None  # CLIENT LIST tot-mem: all its memory, what maxmemory-clients (client eviction) counts
    mem_clients_normal: int | None  # INFO memory: every normal and pub/sub client together (= MEMORY STATS
    # clients.normal)


def memory_gauges(r: redis.Redis, channel: str, *, messages: int = 1000, payload_bytes: int = 20_000,
                  timeout: float = 3.0) -> MemoryGauges:
    """Publish `messages` to a subscriber that never reads, then read every gauge once the server's cron
    has counted the client (mem_clients_normal is updated there, every 100 ms or so, not per command).
    Run it on a server of its own whose limits let the messages pile up (the default's do: 32 MB hard)."""
    validate.name(channel, "channel")
    validate.integer(messages, "messages")
    validate.integer(payload_bytes, "payload_bytes")
    validate.seconds(timeout, "timeout")
    name = f"labkit-gauge-{secrets.token_hex(4)}"
    listener = named_client(r, name, retry=False).pubsub()
    try:
        listener.subscribe(channel)
        listener.get_message(timeout=1)
        before = _used_memory(r)
        pipe, payload = r.pipeline(transaction=False), "x" * payload_bytes
        for _ in range(messages):
            pipe.publish(channel, payload)
        pipe.execute()
        deadline = time.monotonic() + timeout
        while True:
            mine = [c for c in r.client_list() if c.get("name") == name]
            if not mine:
                raise ConfigError(f"the subscriber was disconnected: raise this server's client-output-buffer-limit "
                                  f"pubsub above {messages} x {payload_bytes} bytes, or publish fewer.")
            memory = r.info("memory")
            tot_mem = int(mine[0]["tot-mem"]) if "tot-mem" in mine[0] else None
            normal = int(memory["mem_clients_normal"]) if "mem_clients_normal" in memory else None
            if tot_mem is None or normal is None or normal >= tot_mem or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return MemoryGauges(messages, int(memory["used_memory"]) - before, int(mine[0]["omem"]), tot_mem, normal)
    finally:
        listener.close()
        listener.connection_pool.disconnect()


def _disconnections(r: redis.Redis) -> int | None:
    value = r.info("stats").get(DISCONNECTIONS)
    return None if value is None else int(value)


# -- the slow subscriber's fixes: conflation, or a stream ------------------------------------------------
@dataclass
class Consumer:
    """One way of consuming the same tick workload with the same slow handler."""

    handled: int  # calls of the slow handler
    received: int  # messages or entries read
    disconnected: bool  # its connection was closed under it (by the output buffer limit)
    latest_right: bool  # its final price per symbol is the last one published


def _ticks(count: int, symbols: int, payload_bytes: int) -> list[tuple[str, str]]:
    pad = "x" * max(0, payload_bytes - 16)
    return [(f"s{i % symbols:02d}", f"{i}:{pad}") for i in range(count)]


def _latest(ticks: list[tuple[str, str]]) -> dict[str, int]:
    return {symbol: int(value.split(":")[0]) for symbol, value in ticks}


def consume_inline(r: redis.Redis, channel: str, ticks: list[tuple[str, str]], handler_s: float) -> Consumer:
    """The handler runs in the reading loop: while it works, nothing is read and the server buffers."""
    state, counts = {}, {"read": 0, "cut": False}
    listener = redis.Redis(**connection_spec(r), decode_responses=True).pubsub(ignore_subscribe_messages=True)
    listener.subscribe(channel)
    listener.get_message(timeout=1)

    def read() -> None:
        try:
            while counts["read"] < len(ticks):
                message = listener.get_message(timeout=1)
                if message is None:
                    return
                counts["read"] += 1
                symbol, value = message["data"].split("|")
                time.sleep(handler_s)  # the slow work
                state[symbol] = int(value.split(":")[0])
        except (redis.ConnectionError, OSError):
            counts["cut"] = True

    reader = threading.Thread(target=read)
    reader.start()
    _publish_ticks(r, channel, ticks)
    reader.join(30)
    listener.close()
    return Consumer(counts["read"], counts["read"], counts["cut"], state == _latest(ticks))


def consume_conflated(r: redis.Redis, channel: str, ticks: list[tuple[str, str]], handler_s: float) -> Consumer:
    """A reader that only reads, keeping the latest value per symbol; the slow handler takes the latest
    values when it is free. Intermediate prices are skipped on purpose: only the newest matters."""
    latest, state, lock = {}, {}, threading.Lock()
    handled, done = [0], threading.Event()

    def keep_latest(message: tuple[float, str, str]) -> None:
        symbol, value = message[2].split("|")
        with lock:
            latest[symbol] = value

    def handle() -> None:
        while not done.is_set() or latest:
            with lock:
                batch = dict(latest)
                latest.clear()
            for symbol, value in batch.items():
                time.sleep(handler_s)
                state[symbol] = int(value.split(":")[0])
                handled[0] += 1
            if not batch:
                time.sleep(0.001)

    with Subscriber(r, channel, on_message=keep_latest) as reader:
        worker = threading.Thread(target=handle)
        worker.start()
        _publish_ticks(r, channel, ticks)
        reader.wait_for(len(ticks), timeout=30)
        done.set()
        worker.join(30)
        received, cut = len(reader.messages), bool(reader.disconnects)
    return Consumer(handled[0], received, cut, state == _latest(ticks))


def consume_stream(r: redis.Redis, stream: str, ticks: list[tuple[str, str]], handler_s: float) -> Consumer:
    """The producer appends to a stream; the slow consumer reads it at its own pace (XREAD from the last
    id it saw). The backlog waits in the stream, not in an output buffer, and nothing is skipped."""
    state, read = {}, [0]

    def consume() -> None:
        last, deadline = "0-0", time.monotonic() + 60
        while read[0] < len(ticks) and time.monotonic() < deadline:
            for _, entries in r.xread({stream: last}, count=100, block=100) or []:
                for entry_id, fields in entries:
                    last, read[0] = entry_id, read[0] + 1
                    time.sleep(handler_s)
                    state[fields["symbol"]] = int(fields["value"].split(":")[0])

    consumer = threading.Thread(target=consume)
    consumer.start()
    began = time.monotonic()
    for start in range(0, len(ticks), 20):
        time.sleep(max(0.0, began + start / 2000 - time.monotonic()))
        pipe = r.pipeline(transaction=False)
        for symbol, value in ticks[start:start + 20]:
            pipe.xadd(stream, {"symbol": symbol, "value": value})
        pipe.execute()
    consumer.join(60)
    return Consumer(read[0], read[0], False, state == _latest(ticks))  # no output buffer to outgrow


def _publish_ticks(r: redis.Redis, channel: str, ticks: list[tuple[str, str]], rate: float = 2000) -> None:
    """Publish in batches of 20 at `rate` ticks per second (a steady feed, not one burst)."""
    began = time.monotonic()
    for start in range(0, len(ticks), 20):
        time.sleep(max(0.0, began + start / rate - time.monotonic()))
        pipe = r.pipeline(transaction=False)
        for symbol, value in ticks[start:start + 20]:
            pipe.publish(channel, f"{symbol}|{value}")
        pipe.execute()


def tick_race(r: redis.Redis, channel: str, stream: str, *, count: int = 1000, symbols: int = 20,
              payload_bytes: int = 12_000, handler_s: float = 0.002) -> dict[str, Consumer]:
    """The same ticks (2,000 a second), the same slow handler, three consumers one after the other:
    inline, conflated, stream. Run it on a server of its own with a small `client-output-buffer-limit
    pubsub`; the socket buffers between server and client hold a few MB more (measured on Linux: about
    4 MB on loopback), so the workload is larger than that. The ticks stay under 16 KB, below the size
    from which Valkey 9 queues a message by reference and the limit counts it as ~100 bytes."""
    ticks = _ticks(count, symbols, payload_bytes)
    try:
        return {"handler in the read loop": consume_inline(r, channel, ticks, handler_s),
                "conflated (latest wins)": consume_conflated(r, channel, ticks, handler_s),
                "stream (XREAD)": consume_stream(r, stream, ticks, handler_s)}
    finally:
        r.delete(stream)


# -- expired events among many volatile keys -------------------------------------------------------------
def expired_events_heard(r: redis.Redis, ns: Namespace, *, others: int, short: int = 100,
                         ttl_ms: int = 100, wait_s: float = 2.0) -> int:
    """Write `others` keys with a one-hour TTL, then `short` keys with a `ttl_ms` TTL, and count the
    expired events heard within `wait_s` seconds, touching no key (so only the background cycle expires
    them). Needs `notify-keyspace-events` with E and x; deletes its keys afterwards."""
    pipe = r.pipeline(transaction=False)
    for i in range(others):
        pipe.set(ns.key("long", i), 1, ex=3600)
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    try:
        with Subscriber(r, "__keyevent@0__:expired") as events:
            for i in range(short):
                pipe.set(ns.key("short", i), 1, px=ttl_ms)
            pipe.execute()
            time.sleep(wait_s)
            return len(events.messages)
    finally:
        ns.cleanup(r)


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
def check_near_cache(r: redis.Redis, ns: Namespace,
                     make_cache: Callable[[redis.Redis, str], InvalidatedCache]) -> Result:
    """`make_cache(r, channel)` returns an `InvalidatedCache` that serves no stale value after a reconnect
    that lost an invalidation, and bounds any stale entry by a TTL."""
    channel, key = ns.key("check", "invalidations"), ns.key("check", "price")
    r.set(key, "100")
    cache = make_cache(r, channel)
    try:
        if not isinstance(cache, InvalidatedCache):
            return Result(False, f"make_cache returned {type(cache).__name__}; return an InvalidatedCache.")
        cache.get(key)
        write_while_disconnected(r, [cache.subscriber.name], channel, key, "120")
        resubscribed = wait_resubscribed([cache.subscriber])
        served = cache.get(key)
    finally:
        if isinstance(cache, InvalidatedCache):
            cache.close()
        r.delete(key)
    problems = []
    if not resubscribed:
        problems.append("its subscriber did not reconnect within 5 s.")
    if served != "120":
        problems.append(f"after the reconnect it still served {served} (the price is 120): the invalidation sent "
                        "meanwhile was lost; flush the local copy on reconnect (flush_on_reconnect=True).")
    if cache.ttl is None:
        problems.append("Its entries never age out: a read that races an invalidation can store an old value that "
                        "nothing will ever remove; give them a TTL.")
    return verdict(problems, f"after the lost invalidation it served 120, and no entry outlives {cache.ttl} s.")


@check
def check_expired_events(r: redis.Redis, flags: str) -> Result:
    """With notify-keyspace-events set to `flags`, a subscriber of `__keyevent@0__:expired` hears
    each key that expires, and the server publishes nothing else (no event for writes, none per key name),
    and enables no other class: the server's normalised setting is exactly E and x (a class this workload
    never triggers, such as l or e, still costs work on the writes it covers). Restores the server's
    previous setting afterwards.

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
        enabled = set(r.config_get("notify-keyspace-events")["notify-keyspace-events"])  # normalised: "Ex" -> "xE"
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
    elif enabled - {"E", "x"}:
        problems.append(f"the server reports {''.join(sorted(enabled))!r}: the classes {sorted(enabled - {'E', 'x'})} "
                        "fired nothing here, but cost the server work on every write they cover; keep only E and x.")
    return verdict(problems, f"{flags!r} publishes exactly one event for the expired key, on {expired[:1]}.")


def expiry_events_on_replica(pair, key: str) -> dict[str, list[str]]:
    """On a primary and its replica (a `replicated` topology), listen to every keyevent channel while
    `key` is written with a 100 ms TTL and expires on the primary: the event names each one published."""
    heard = {}
    clients = {"primary": pair.primary.client(), "replica": pair.replicas[0].client()}
    for client in clients.values():
        client.config_set("notify-keyspace-events", "Eg$x")
    with Subscriber(clients["primary"], patterns=["__keyevent@*__:*"]) as on_primary, \
            Subscriber(clients["replica"], patterns=["__keyevent@*__:*"]) as on_replica:
        clients["primary"].set(key, "v", px=100)
        deadline = time.monotonic() + 10
        while clients["primary"].exists(key) and time.monotonic() < deadline:  # expires it if due
            time.sleep(0.01)
        while clients["replica"].exists(key) and time.monotonic() < deadline:  # the replica: until DEL arrives
            time.sleep(0.01)
        on_primary.wait_for(3), on_replica.wait_for(3)
        for role, sub in (("primary", on_primary), ("replica", on_replica)):
            heard[role] = [channel.rsplit(":", 1)[-1] for _, channel, _ in sub.messages]
    return heard


def expired_on_writable_replica(pair, key: str) -> list[str]:
    """Make the replica of `pair` writable (`replica-read-only no`), write `key` with a 100 ms TTL on the
    replica itself, and return the expired events the replica published for it (touching it until it is
    gone). Restores `replica-read-only yes`."""
    replica = pair.replicas[0].client()
    replica.config_set("replica-read-only", "no")
    replica.config_set("notify-keyspace-events", "Ex")
    try:
        with Subscriber(replica, "__keyevent@0__:expired") as events:
            replica.set(key, "local", px=100)
            deadline = time.monotonic() + 10
            while replica.exists(key) and time.monotonic() < deadline:  # expires it, if due
                time.sleep(0.01)
            events.wait_for(1, timeout=2)
            return events.data()
    finally:
        replica.delete(key)
        replica.config_set("replica-read-only", "yes")


# -- what is local to one node of a cluster ---------------------------------------------------------------
@dataclass
class NodeLocality:
    """Classic pub/sub and keyspace events seen from one node of a cluster."""

    count_on_other_node: int  # what PUBLISH sent to another node returned
    heard_on_this_node: list[str]  # what a subscriber on this node received
    keys_written: int  # keys written through the cluster client, spread over every slot
    keys_on_this_node: int  # of those, the ones whose slot this node serves
    events_heard: int  # `set` events a subscriber on this node heard


def node_locality(c, channel: str, ns: Namespace, keys: int = 60) -> NodeLocality:
    """On cluster `c`: subscribe on one primary, PUBLISH on another; then write `keys` keys through the
    cluster client with `set` events on, and count the events the first primary published. No guessed
    wait: a marker published on the first primary after the writes arrives after every event it sent."""
    here, elsewhere = c.serving_primaries()[:2]
    for node in c.serving_primaries():
        node.client().config_set("notify-keyspace-events", "E$")
    names, rc = [ns.key("spread", i) for i in range(keys)], c.client()
    try:
        with Subscriber(here.client(), channel, patterns=["__keyevent@*__:set"]) as sub:
            count = elsewhere.client().publish(channel, "from another node")
            for name in names:
                rc.set(name, 1)
            here.client().publish(channel, "marker")
            sub.wait_for(1)
            deadline = time.monotonic() + 10
            while "marker" not in sub.data() and time.monotonic() < deadline:
                time.sleep(0.005)
            heard = [data for _, name, data in sub.messages if name == channel]
            events = sum(name.endswith(":set") for _, name, _ in sub.messages)
    finally:
        for name in names:
            rc.delete(name)
        rc.close()
    mine = sum(c.primary_for(name) == here for name in names)
    return NodeLocality(count, heard, keys, mine, events)


def bus_messages(nodes, kind: str) -> int:
    """Cluster-bus messages of `kind` (`publish`, `publishshard`) the nodes have sent, from CLUSTER INFO."""
    return sum(int(node.client().execute_command("CLUSTER INFO").get(f"cluster_stats_messages_{kind}_sent", 0))
               for node in nodes)


def write_while_disconnected(r: redis.Redis, names: list[str], channel: str, key: str, value: str) -> list:
    """In one MULTI: drop every connection named in `names` (CLIENT KILL), then SET `key` and PUBLISH
    its name on `channel`. Nothing runs between the kill and the write, so the announcement reaches none
    of them, whatever their reconnect delay. Returns the replies (kills, OK, receivers)."""
    ids = [c["id"] for c in r.client_list() if c.get("name") in names]
    pipe = r.pipeline(transaction=True)
    for client_id in ids:
        pipe.client_kill_filter(_id=client_id)
    pipe.set(key, value)
    pipe.publish(channel, key)
    return pipe.execute()


def wait_resubscribed(subscribers: Iterable[Subscriber], connects: int = 2, timeout: float = 5.0) -> bool:
    """Wait until each subscriber has connected `connects` times and is listening (its `on_connect` done)."""
    deadline, subscribers = time.monotonic() + timeout, list(subscribers)
    while time.monotonic() < deadline:
        if all(s.connects >= connects and s.connected for s in subscribers):
            return True
        time.sleep(0.005)
    return False


def plot_blink(messages: list[tuple[float, str, str]], published_at: list[float], lost: list[int]) -> None:
    """A timeline of the blink: when each numbered message was published and when it arrived; the run
    that never arrived is shaded."""
    import matplotlib.pyplot as plt

    start = published_at[0]
    _, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot([(t - start) * 1000 for t in published_at], range(len(published_at)), color="lightgray", linewidth=4,
            label="published")
    ax.plot([(t - start) * 1000 for t, _, _ in messages], [int(data) for _, _, data in messages], ".",
            markersize=2, color="tab:blue", label="received")
    if lost:
        ax.axhspan(lost[0], lost[-1], color="tab:red", alpha=0.2, label=f"lost: {len(lost)}")
    ax.set(xlabel="ms since the first PUBLISH", ylabel="message number", title="a subscriber that blinks")
    ax.legend(loc="upper left")
    plt.show()


# -- pub/sub against a stream, with a crashing consumer --------------------------------------------------
def crash_race(r: redis.Redis, channel: str, stream: str, group: str, *, name: str, n: int = 2000,
               rate: float = 4000, crash_at: int = 600, down_s: float = 0.1) -> tuple[dict, dict, list]:
    """Publish `n` orders at `rate` per second on `channel` and append them to `stream`; a pub/sub
    consumer (a `Subscriber` named `name`) and a consumer-group member each crash once, after `crash_at`
    orders, for `down_s` seconds. Returns the latency of each order each consumer got ({number: s}) and
    every delivery the stream consumer saw, duplicates included."""
    r.xgroup_create(stream, group, id="0", mkstream=True)
    done, by_pubsub, by_stream, deliveries = threading.Event(), {}, {}, []

    def record(message: tuple[float, str, str]) -> None:
        number, sent = message[2].split(":")
        by_pubsub.setdefault(int(number), time.monotonic() - float(sent))

    def pubsub_consumer() -> None:
        sub = Subscriber(r, channel, on_message=record, name=name)
        while len(by_pubsub) < crash_at and not done.is_set():
            time.sleep(0.001)
        sub.close()
        time.sleep(down_s)
        with Subscriber(r, channel, on_message=record, name=name):
            done.wait()

    consumers = [threading.Thread(target=pubsub_consumer),
                 threading.Thread(target=_stream_consumer, args=(r, stream, group, done, by_stream, deliveries,
                                                                 crash_at, down_s))]
    for t in consumers:
        t.start()
    while r.pubsub_numsub(channel)[0][1] == 0:
        time.sleep(0.001)
    began = time.monotonic()
    for i in range(n):
        time.sleep(max(0.0, began + i / rate - time.monotonic()))
        now = time.monotonic()
        pipe = r.pipeline(transaction=False)
        pipe.publish(channel, f"{i}:{now}")
        pipe.xadd(stream, {"n": i, "t": now})
        pipe.execute()
    time.sleep(0.2)
    done.set()
    for t in consumers:
        t.join(timeout=10)
    return by_pubsub, by_stream, deliveries


def _stream_consumer(r: redis.Redis, stream: str, group: str, done: threading.Event, got: dict, deliveries: list,
                     crash_at: int, down_s: float) -> None:
    """A group member that crashes once holding a batch it read but never acknowledged; on restart it
    reads its pending entries first (id 0), then new ones (>)."""
    crashed, backlog_first = False, True
    while True:
        reply = r.xreadgroup(group, "worker-1", {stream: "0" if backlog_first else ">"}, count=50, block=50)
        entries = reply[0][1] if reply else []
        if done.is_set() and not entries and not backlog_first:
            return
        backlog_first = backlog_first and bool(entries)
        for _, fields in entries:
            deliveries.append(int(fields["n"]))
            got.setdefault(int(fields["n"]), time.monotonic() - float(fields["t"]))
        if len(got) >= crash_at and not crashed:
            crashed, backlog_first = True, True  # processed, never acknowledged: the restart reads them again
            time.sleep(down_s)
        elif entries:
            r.xack(stream, group, *[entry_id for entry_id, _ in entries])


# -- a silent peer -----------------------------------------------------------------------------------------
@dataclass
class SilentPeer:
    """Three listeners on a server that was paused under them."""

    silence: list  # what the plain loop and the health_check_interval client read meanwhile
    listened_s: list[float]  # how long after the pause each of those two had listened, when it gave up
    unanswered_pings: int  # the PINGs redis-py's health check sent that got no reply
    disconnects: list[str]  # what Subscriber(health_check=) reported
    noticed_s: float  # how long after the pause it did


def silent_peer(server, channel: str, name: str, health_check: float = 0.2) -> SilentPeer:
    """Subscribe a plain redis-py loop, a client with `health_check_interval=health_check`, and a
    `Subscriber(health_check=health_check)` on `server`; pause the server until the Subscriber reports
    the loss (5 s at most), read once from the other two, resume the server, and close everything."""
    client = server.client()
    checked_client = redis.Redis(**connection_spec(client), health_check_interval=health_check)
    listeners = [client.pubsub(), checked_client.pubsub()]
    try:
        for each in listeners:
            each.subscribe(channel)
            each.get_message(timeout=1)
        with Subscriber(client, channel, health_check=health_check, reconnect=False, name=name) as watched:
            server.pause()
            paused_at = time.monotonic()
            try:
                while not watched.disconnects and time.monotonic() < paused_at + 5:
                    time.sleep(0.01)
                noticed_s = time.monotonic() - paused_at
                silence, listened_s = [], []
                for each in listeners:
                    silence.append(each.get_message(timeout=0.5))
                    listened_s.append(time.monotonic() - paused_at)
                unanswered = listeners[1].health_check_response_counter
            finally:
                server.resume()
    finally:
        for each in listeners:
            each.close()
        checked_client.close()
    return SilentPeer(silence, listened_s, unanswered, list(watched.disconnects), noticed_s)
