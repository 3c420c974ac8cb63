"""Lesson 02, caching and stampedes (`notebooks/02_caching.ipynb`): the slow database the cache sits in
front of, the invalidation races and a cache filled under leases, the Zipf readers, client-side caching
(tracking clients, a network that holds a push or goes silent, each engine with redis-py and valkey-py),
the stampede experiment, the plots, and the exercise checks."""

from __future__ import annotations

import contextlib
import json
import math
import random
import secrets
import socket
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import redis
import valkey
from redis.cache import CacheConfig
from valkey.backoff import NoBackoff as ValkeyNoBackoff
from valkey.retry import Retry as ValkeyRetry

from labkit import scripts, validate
from labkit.cache import Cached, CacheStats, cached
from labkit.clients import CONNECT_TIMEOUT_S, TIMEOUT_S, options, text
from labkit.errors import ConfigError
from labkit.keys import Namespace
from labkit.lessons import Result, check, delete_keys, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Capabilities

# -- the database to cache ------------------------------------------------------------------------------
CATEGORIES = ("books", "games", "garden", "kitchen", "music", "outdoor", "toys", "tools")


class SlowDatabase:
    """A products table of `rows` rows in SQLite (standard library); every query also waits `latency_ms`,
    which stands in for the network and load of a remote database (lesson 02 says so wherever it reports a time)."""

    def __init__(self, rows: int = 10_000, latency_ms: float = 30.0, seed: int = 7) -> None:
        if rows < 1 or latency_ms < 0:
            raise ConfigError(f"need rows >= 1 and latency_ms >= 0, got {rows} and {latency_ms}.")
        self.rows, self.latency_ms = rows, latency_ms
        self.queries = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        rng = random.Random(seed)
        self._db.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL)")
        self._db.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            [(i, f"product {i}", rng.choice(CATEGORIES), round(rng.uniform(2, 200), 2)) for i in range(1, rows + 1)],
        )

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        time.sleep(self.latency_ms / 1000)
        with self._lock:
            self.queries += 1
            return self._db.execute(sql, params).fetchall()

    def product(self, pid: int) -> dict | None:
        """The product with id `pid`, or None."""
        found = self._query("SELECT id, name, category, price FROM products WHERE id = ?", (pid,))
        return dict(zip(("id", "name", "category", "price"), found[0], strict=True)) if found else None

    def update_price(self, pid: int, price: float) -> None:
        self._query("UPDATE products SET price = ? WHERE id = ?", (price, pid))
        with self._lock:
            self._db.commit()


# -- 2.1 and 2.2: what a read costs, TTLs ----------------------------------------------------------------
def plot_read_costs(timed: dict[str, float]) -> None:
    """Median µs per read, one bar each, log scale (the first entry is the slowest: the database)."""
    _, ax = plt.subplots(figsize=(7, 2.4))
    ax.barh(list(timed), list(timed.values()), color=["tab:gray", "tab:green", "tab:blue"][: len(timed)])
    slowest = max(timed.values())
    ax.set(xscale="log", xlim=(10, 2 * slowest), xlabel="median µs per read (log scale)",
           title=f"one product: {slowest / min(timed.values()):.0f}x faster than the database, at best")
    plt.show()


def plot_ttl_spread(plain: list[float], jittered: list[float]) -> None:
    """Seconds until expiry of keys written together, without and with jitter."""
    _, ax = plt.subplots(figsize=(7, 2.4))
    ax.hist([plain, jittered], bins=30, label=["ttl=60", "ttl=60, jitter=0.1"], color=["tab:red", "tab:green"])
    ax.set(xlabel="seconds until expiry", ylabel="keys", title=f"{len(plain)} keys written together")
    ax.legend(fontsize=8)
    plt.show()


# -- 2.3 invalidation on write ----------------------------------------------------------------------------
def store(r: redis.Redis, product: Cached, pid: int, row: dict) -> None:
    """Update-on-write: put `row` in `product`'s entry for `pid` as the cache itself would (value and TTL)."""
    with r.pipeline() as tx:
        tx.hset(product.key(pid), "v", json.dumps(row))
        tx.pexpire(product.key(pid), product.ttl_ms)
        tx.execute()


def two_writers(r: redis.Redis, db: SlowDatabase, product: Cached, on_write: str, rounds: int = 100,
                pid: int = 11) -> int:
    """Real threads, no forced order: in each round two writers set a price in the database, pause up to
    a millisecond (the network between the two steps), then either update the cache with the price they
    wrote (`on_write="update"`) or delete the entry ("delete"). Returns the rounds after which the cache
    served a price the database no longer held."""
    if on_write not in ("update", "delete"):
        raise ConfigError(f"on_write is 'update' or 'delete', got {on_write!r}.")
    latency, db.latency_ms = db.latency_ms, 0.0
    rng, stale = random.Random(24), 0
    try:
        for round_ in range(rounds):
            product(pid)  # the entry exists when the writers start
            start = threading.Barrier(2)
            pauses = [rng.uniform(0, 0.001) for _ in range(2)]

            def writer(price: float, pause: float, start: threading.Barrier = start) -> None:
                start.wait(10)
                db.update_price(pid, price)
                time.sleep(pause)
                if on_write == "update":
                    store(r, product, pid, {**db.product(pid), "price": price})
                else:
                    product.invalidate(pid)

            threads = [threading.Thread(target=writer, args=(float(100 + 2 * round_ + i), pauses[i]))
                       for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            stale += product(pid)["price"] != db.product(pid)["price"]
    finally:
        db.latency_ms = latency
    return stale


class LeasedCache:
    """Cache-aside whose fills need a lease (the idea of memcache's leases at Facebook): a miss takes a
    lease (`SET lease token NX PX`); invalidating deletes the entry and its lease in one DEL; the fill is a
    script that writes only if the lease still holds the reader's token. A reader that read the source
    before a write can no longer store what it read after it: the write took its lease away. `.refused`
    counts the fills refused so."""

    def __init__(self, r: redis.Redis, prefix: str, load: Callable[[int], object], ttl_s: float = 300,
                 lease_s: float = 5) -> None:
        self.r, self.prefix, self.load = r, prefix, load
        self.ttl_ms, self.lease_ms = int(ttl_s * 1000), int(lease_s * 1000)
        self.refused = 0
        self._fill = scripts.register(r, "l02_caching/fill_with_lease")

    def keys(self, item: int) -> tuple[str, str]:
        """The entry and its lease, under one hash tag."""
        entry = f"{self.prefix}:{{{item}}}"
        return entry, f"{entry}:lease"

    def get(self, item: int) -> object:
        entry, lease = self.keys(item)
        raw = self.r.hget(entry, "v")
        if raw is not None:
            return json.loads(raw)
        token = secrets.token_hex(8)
        leased = self.r.set(lease, token, nx=True, px=self.lease_ms)  # another reader's lease: read, don't fill
        value = self.load(item)
        if leased and not self._fill(keys=[entry, lease], args=[token, json.dumps(value), self.ttl_ms]):
            self.refused += 1
        return value

    def invalidate(self, item: int) -> None:
        self.r.delete(*self.keys(item))


class ReadsTogether:
    """A client for `n` threads whose first `GET` in each thread returns only once all `n` have had their
    reply (waiting at most 30 s): every thread reads the cache before any of them goes on. Everything else is
    the wrapped client's."""

    def __init__(self, r: redis.Redis, n: int) -> None:
        self.r, self._barrier, self._here = r, threading.Barrier(n), threading.local()

    def get(self, key: str) -> object:
        value = self.r.get(key)
        if not getattr(self._here, "read", False):
            self._here.read = True
            self._barrier.wait(30)
        return value

    def __getattr__(self, name: str) -> object:
        return getattr(self.r, name)


INVALIDATIONS = ("delete", "delete, and again once the read has ended", "delete, and again while the read is on",
                 "lease")


def invalidation_race(r: redis.Redis, db: SlowDatabase, prefix: str, how: str, pid: int = 8,
                      old_price: float = 10.0, new_price: float = 99.0) -> float:
    """A forced interleaving, ordered by events (not by timing): a reader misses and reads the row (price
    `old_price`); the writer sets `new_price` in the database and invalidates as `how` says (one of
    `INVALIDATIONS`); then the reader stores the row it read. Returns the price the cache serves next."""
    if how not in INVALIDATIONS:
        raise ConfigError(f"how is one of {INVALIDATIONS}, got {how!r}.")
    db.update_price(pid, old_price)
    row_read, may_fill = threading.Event(), threading.Event()

    def slow_source(item: int) -> dict | None:
        row = db.product(item)
        row_read.set()
        may_fill.wait(10)  # the writer acts between this read and the cache write
        return row

    if how == "lease":
        leased = LeasedCache(r, f"{prefix}:lease", slow_source)
        get, invalidate = leased.get, leased.invalidate
    else:
        plain = cached(r, prefix=prefix, ttl=300, strategy="none", name="slow_source")(slow_source)
        get, invalidate = plain, plain.invalidate
    invalidate(pid)
    reader = threading.Thread(target=get, args=(pid,))
    reader.start()
    row_read.wait(10)
    db.update_price(pid, new_price)
    invalidate(pid)
    if how.endswith("while the read is on"):
        invalidate(pid)  # the "delayed" delete, sent before the slow read has stored its row
    may_fill.set()
    reader.join(10)
    if how.endswith("once the read has ended"):
        invalidate(pid)
    served = get(pid)["price"]
    invalidate(pid)
    return served


# -- 2.5 the hit rate under a Zipf law --------------------------------------------------------------------
def zipf_top_share(exponent: float, terms: int = 1000) -> float:
    """The share of reads the most popular item gets under a Zipf law: 1/zeta(exponent), zeta summed to
    `terms` plus the Euler-Maclaurin estimate of the rest (exact to about 1e-6 for exponent 1.2)."""
    if not exponent > 1:
        raise ConfigError(f"a Zipf law over unbounded items needs an exponent above 1, got {exponent!r}.")
    tail = terms ** (1 - exponent) / (exponent - 1) - terms ** -exponent / 2
    zeta = sum(k ** -exponent for k in range(1, terms)) + tail
    return 1 / zeta


def zipf_readers(get: Callable[[int], object], rows: int, requested: list[int], latencies_ms: list[float],
                 threads: int = 4, exponent: float = 1.2) -> Callable[[threading.Event], None]:
    """A workload for a live monitor: `threads` readers call `get(pid)` with pids drawn from a Zipf law
    (seeded; pids above `rows` read the last row), noting each pid and each call's time, until stopped."""

    def workload(stop: threading.Event) -> None:
        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                pid = int(min(rng.zipf(exponent), rows))
                started = time.perf_counter()
                get(pid)
                latencies_ms.append((time.perf_counter() - started) * 1000)
                requested.append(pid)

        running = [threading.Thread(target=reader, args=(seed,)) for seed in range(threads)]
        for t in running:
            t.start()
        for t in running:
            t.join()

    return workload


# -- 2.6 client-side caching ------------------------------------------------------------------------------
def near_cache(r: redis.Redis, port: int | None = None, ttl: float = 0,
               health_check_interval: float = 0) -> valkey.Valkey:
    """A valkey-py client of `r`'s server (or of `port` on the same host: a relay in front of it) with its
    client-side cache on: `valkey.Valkey(host, port, password, protocol=3, cache_enabled=True)`, so RESP3 and
    `CLIENT TRACKING ON` on every connection it opens, and each cacheable reply kept in the process until the
    server pushes that the key changed, or for `ttl` s at most (valkey-py's `cache_ttl`; 0: no local TTL).
    `health_check_interval` (s, 0: off) is valkey-py's: a PING before a command sent after that long idle.
    labkit's timeouts, no retry."""
    ttl = validate.seconds(ttl, "ttl", allow_zero=True)
    health_check_interval = validate.seconds(health_check_interval, "health_check_interval", allow_zero=True)
    kw = r.connection_pool.connection_kwargs
    return valkey.Valkey(host=kw["host"], port=port or kw["port"], username=kw.get("username"),
                         password=kw.get("password"), protocol=3, cache_enabled=True, cache_ttl=ttl,
                         health_check_interval=health_check_interval, decode_responses=True,
                         socket_timeout=TIMEOUT_S, socket_connect_timeout=CONNECT_TIMEOUT_S,
                         retry=ValkeyRetry(ValkeyNoBackoff(), 0))


def redis_py_cache(r: redis.Redis) -> redis.Redis:
    """redis-py's own client-side cache (`protocol=3, cache_config=CacheConfig()`) on `r`'s server, with
    labkit's timeouts and no retry. It reads the server's HELLO reply when it connects (at the first command)."""
    kw = r.connection_pool.connection_kwargs
    return redis.Redis(host=kw["host"], port=kw["port"], username=kw.get("username"), password=kw.get("password"),
                       protocol=3, cache_config=CacheConfig(), decode_responses=True, **options())


def commands_served(r: redis.Redis, *names: str) -> dict[str, int]:
    """Calls of each named command the server has executed since it started (`INFO commandstats`, its own
    count; a subcommand as `client|tracking`)."""
    stats = r.info("commandstats")
    return {name: stats.get(f"cmdstat_{name.lower()}", {}).get("calls", 0) for name in names}


def gets_served(r: redis.Redis) -> int:
    """GET commands the server has executed since it started (`INFO commandstats`): the server's own count."""
    return commands_served(r, "get")["get"]


def served_since(r: redis.Redis, before: dict[str, int]) -> dict[str, int]:
    """What `commands_served` counts now, less `before` (a dict it returned earlier)."""
    return {name: calls - before[name] for name, calls in commands_served(r, *before).items()}


def tracking(r: redis.Redis) -> dict[str, int]:
    """The server's tracking table, from INFO: clients tracking, keys remembered, prefixes (BCAST)."""
    info = r.info("all")
    return {name: info[f"tracking_{name}"] for name in ("clients", "total_keys", "total_prefixes")}


def tracking_clients(r: redis.Redis, expected: int, timeout: float = 5.0) -> int:
    """The server's count of tracking connections, once it equals `expected` or `timeout` s have passed: a
    connection a client closed is counted until the server has processed the close."""
    deadline = time.monotonic() + timeout
    while (count := tracking(r)["clients"]) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return count


def push_arrived(client: redis.Redis | valkey.Valkey, timeout: float = 5.0) -> bool:
    """Wait, at most `timeout` s, until something the server pushed has reached `client`'s connection: what
    the client's own check before each local hit looks for (reads nothing; the next command handles it)."""
    pool = client.connection_pool
    conn = pool.get_connection("GET") if isinstance(client, valkey.Valkey) else pool.get_connection()
    try:
        return bool(conn.can_read(timeout=timeout))
    finally:
        pool.release(conn)


def _shut(sock: socket.socket) -> None:
    """Close `sock` for good: shutdown() first sends the FIN and wakes a thread blocked in its accept() or
    recv() (close() alone does neither while another thread uses the socket)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class HeldLink:
    """A TCP relay on 127.0.0.1 in front of a server: a network whose delivery to the client can be held,
    ordered by events rather than by time. What the client sends goes on at once; what the server sends is
    passed on at once too, except inside `with link.holding():`, where it waits (`.held_data` keeps its
    bytes, `.held` counts them) until the block ends. A context manager: closing it closes every connection
    it relays."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open, self._changed = threading.Event(), threading.Condition()
        self._open.set()
        self.held_data = b""
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        try:
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self._target, timeout=CONNECT_TIMEOUT_S)
                server.settimeout(None)
                self._sockets += [client, server]
                for pump in (threading.Thread(target=self._pump, args=(client, server, False), daemon=True),
                             threading.Thread(target=self._pump, args=(server, client, True), daemon=True)):
                    self._threads.append(pump)
                    pump.start()
        except OSError:
            pass  # closed

    def _pump(self, source: socket.socket, target: socket.socket, to_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if to_client:
                    with self._changed:
                        if not self._open.is_set():
                            self.held_data += data
                        self._changed.notify_all()
                    self._open.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                _shut(end)

    @property
    def held(self) -> int:
        """Bytes the link holds now."""
        return len(self.held_data)

    def wait_held(self, timeout: float = 10.0) -> bool:
        """True once the server has sent something the link holds (at most `timeout` s)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.held > 0, timeout)

    @contextlib.contextmanager
    def holding(self) -> Iterator[None]:
        self._open.clear()
        try:
            yield
        finally:
            self.held_data = b""
            self._open.set()

    def close(self) -> None:
        self._open.set()
        for sock in self._sockets:
            _shut(sock)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> HeldLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SilentReads:
    """`reads_through_a_silent_link`: each value read after the write, in order; how many of them were read
    before the server heard anything from the client, and over how many seconds; what the server heard
    first (PING, GET), and in all."""

    values: list[str]
    before_any_sent: int
    hitting_s: float
    first_sent: dict[str, int]
    sent_in_all: dict[str, int]


def reads_through_a_silent_link(link: HeldLink, client: valkey.Valkey, key: str, write: Callable[[], object],
                                r: redis.Redis, timeout: float = 10.0) -> SilentReads:
    """A connection that died without a FIN, ordered by events: `client` reads `key` once (a copy), then
    `link` holds everything the server sends, `write()` changes `key`, and a thread reads `key` through
    `client` every 10 ms until a read reaches the server (its PING or GET, counted by the server through
    `r`); then the link delivers again, and the loop ends at the first read that returns something new.
    `timeout` s bound every wait."""
    first = client.get(key)
    values: list[str] = []

    def read_until_new() -> None:
        while not values or values[-1] == first:
            values.append(client.get(key))
            time.sleep(0.01)

    reader = threading.Thread(target=read_until_new, daemon=True)
    with link.holding():
        write()
        link.wait_held(timeout)
        before = commands_served(r, "ping", "get")
        started = time.monotonic()
        reader.start()
        while (heard := served_since(r, before)) == dict.fromkeys(before, 0) and time.monotonic() < started + timeout:
            time.sleep(0.01)
        hitting_s, before_any_sent = time.monotonic() - started, len(values)  # the read that was sent waits
    reader.join(timeout)
    return SilentReads(values, before_any_sent, hitting_s, heard, served_since(r, before))


LOCAL_HITS = 100  # reads of a cached key per client in `client_side_caching`
THREADS = 4  # threads sharing one client in `client_side_caching`


def _as_dict(reply: dict | list) -> dict:
    """A map reply as a dict of text keys, whether it came as a RESP3 map or as a RESP2 flat list."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {text(name): value for name, value in pairs}


def tracking_flags(client: redis.Redis | valkey.Valkey) -> list[str]:
    """`CLIENT TRACKINGINFO`'s flags for the connection `client` sends it on (`["off"]`: tracking nothing)."""
    return [text(flag) for flag in _as_dict(client.execute_command("CLIENT", "TRACKINGINFO"))["flags"]]


def redis_py_accepts(hello: dict) -> bool:
    """redis-py's own rule for its client-side cache, from its source: the server's HELLO names it
    `CacheProxyConnection.DEFAULT_SERVER_NAME`, at `MIN_ALLOWED_VERSION` or later."""
    rule = redis.connection.CacheProxyConnection
    version = tuple(int(part) for part in text(hello["version"]).split("."))
    return (text(hello["server"]) == rule.DEFAULT_SERVER_NAME
            and version >= tuple(int(part) for part in rule.MIN_ALLOWED_VERSION.split(".")))


@dataclass
class CacheRow:
    """One engine in the side-by-side cell: what its HELLO says (server, version), each client's cache
    refused (its error, in full) or accepted (None), the GETs the server executed during `LOCAL_HITS` reads
    of a cached key, whether the read after another client's write saw the new value, and, for `THREADS`
    threads reading a new key through one client, (its tracking connections, the GETs the server executed).
    None where the client refused."""

    server: str
    version: str
    refusals: dict[str, str | None]
    gets_during_hits: dict[str, int | None] = field(default_factory=dict)
    sees_the_write: dict[str, bool | None] = field(default_factory=dict)
    threads: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    @property
    def hello(self) -> dict:
        return {"server": self.server, "version": self.version}


def threads_reading(client: redis.Redis | valkey.Valkey, r: redis.Redis, key: str,
                    reads: int = 1000) -> tuple[int, int]:
    """One read of `key` (which `client` has not read yet: a miss), then `THREADS` threads, started
    together, read it `reads` times each through `client`'s pool: (the tracking connections the server then
    counts, the GETs it executed for all of it). Run it when no other client tracks."""
    before, start = gets_served(r), threading.Barrier(THREADS, timeout=10)
    client.get(key)

    def read() -> None:
        start.wait()
        for _ in range(reads):
            client.get(key)

    threads = [threading.Thread(target=read, daemon=True) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return tracking(r)["clients"], gets_served(r) - before


def client_side_caching(r: redis.Redis, caps: Capabilities, prefix: str = "lab:l02:csc") -> CacheRow:
    """redis-py's and valkey-py's client-side caches on `r`'s server: a first read (a miss), `LOCAL_HITS`
    reads counted on the server, a write by `r` (another client), the next read once the push arrived, then
    `THREADS` threads reading another key through the same client."""
    hello = _as_dict(r.execute_command("HELLO"))  # HELLO without a version: the server's name, changing nothing
    row = CacheRow(text(hello["server"]), caps.version, {})
    key, shared = f"{prefix}:price", f"{prefix}:shared"
    for name, make in (("redis-py", redis_py_cache), ("valkey-py", near_cache)):
        r.set(key, "100"), r.set(shared, "1")
        client = make(r)
        try:
            try:
                client.get(key)  # the first read connects (redis-py checks the server here) and misses
            except (redis.RedisError, valkey.ValkeyError) as refused:
                row.refusals[name] = f"{type(refused).__name__}: {refused}"
                row.gets_during_hits[name] = row.sees_the_write[name] = row.threads[name] = None
                continue
            before = gets_served(r)
            hits = [client.get(key) for _ in range(LOCAL_HITS)]
            row.gets_during_hits[name] = gets_served(r) - before if hits == ["100"] * LOCAL_HITS else None
            r.set(key, "120")
            row.sees_the_write[name] = push_arrived(client) and client.get(key) == "120"
            row.threads[name] = threads_reading(client, r, shared)
            row.refusals[name] = None
        finally:
            client.close()
            tracking_clients(r, 0)  # the server has seen every connection of it close
    r.delete(key, shared)
    return row


def cache_table(rows: list[CacheRow]) -> str:
    """The side-by-side rows as a Markdown table."""
    def cell(row: CacheRow, name: str) -> str:
        if row.refusals[name] is not None:
            return f"refused ({row.refusals[name].split(':')[0]})"
        connections, gets = row.threads[name]
        return (f"{row.gets_during_hits[name]} GETs in {LOCAL_HITS} hits, write "
                f"{'seen' if row.sees_the_write[name] else 'NOT seen'}; {THREADS} threads: {connections} "
                f"connections, {gets} GETs")

    lines = ["| server (HELLO) | redis-py 8 `cache_config=CacheConfig()` | valkey-py `cache_enabled=True` |",
             "|---|---|---|"]
    lines += [f"| {row.server} {row.version} | {cell(row, 'redis-py')} | {cell(row, 'valkey-py')} |" for row in rows]
    return "\n".join(lines)


# -- the stampede experiment ----------------------------------------------------------------------------
@dataclass
class StampedeResult:
    """One stampede experiment: how often the source was hit, and what clients waited.

    `latencies_ms` holds every call; `refresher_latencies_ms` the calls that ran the recompute themselves
    (a miss, or an early refresh: that caller waited for the source); `calls / run_s` is the arrival rate;
    `before_expiry` counts the recomputes that began before the warm entry can have expired (an early
    refresh for certain: the bound is the moment warming began, plus one recompute, plus the TTL)."""

    strategy: str
    clients: int
    recomputes: int
    misses: int
    early_refreshes: int
    latencies_ms: list[float]
    refresher_latencies_ms: list[float] = field(default_factory=list)
    calls: int = 0
    run_s: float = 0.0
    recompute_ms: float = 0.0
    before_expiry: int = 0
    recompute_starts_s: list[float] = field(default_factory=list)  # since warming began
    ttl_s: float = 1.0
    early_refreshes_s: list[float] = field(default_factory=list)  # when each early refresh was drawn, since warming

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else 0.0

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0

    @property
    def arrival_rate(self) -> float:
        """Calls per second, all clients together."""
        return self.calls / self.run_s if self.run_s else 0.0

    @property
    def episodes(self) -> int:
        """Bursts of recomputes (one per expiry the run crossed): a new one starts half a TTL after the last."""
        return len(self._episode_starts())

    def _episode_starts(self) -> list[float]:
        starts = sorted(self.recompute_starts_s)
        return [t for i, t in enumerate(starts) if i == 0 or t - starts[i - 1] > self.ttl_s / 2]

    @property
    def early_refreshes_per_episode(self) -> list[int]:
        """The early refreshes of each episode. One is drawn just before its recompute starts, so it belongs to
        the last episode begun by a quarter TTL after its draw (episodes are more than half a TTL apart)."""
        firsts = self._episode_starts()
        counts = [0] * len(firsts)
        for t in self.early_refreshes_s:
            counts[max(0, sum(1 for f in firsts if f <= t + self.ttl_s / 4) - 1)] += 1
        return counts

    @property
    def median_early_per_episode(self) -> float:
        counts = self.early_refreshes_per_episode
        return statistics.median(counts) if counts else 0.0

    @property
    def hits_per_recompute(self) -> float:
        """Calls that arrive while one recompute runs: what a stampede at expiry can send to the source."""
        return self.arrival_rate * self.recompute_ms / 1000


def stampede(r: redis.Redis, prefix: str, strategy: str, clients: int = 50, ttl: float = 1.0,
             recompute_s: float = 0.05, run_s: float = 1.6, think_s: float = 0.02, beta: float = 1.0,
             should_refresh: Callable[[float, float], bool] | None = None,
             decorate: Callable[[Callable], Callable] | None = None) -> StampedeResult:
    """Warm a hot key, then let `clients` threads read it in a loop (pausing ~`think_s`) for `run_s`
    seconds, across its expiry at `ttl`. The source takes `recompute_s` per call. Counts what happened
    before the end of the run: a thread that passed its loop test in time but got the CPU back only after
    the end (50 threads share a few cores) reads a later moment of the cache, so a miss or a recompute that
    began after the end is not counted, nor is the call that made it.
    `should_refresh(delta_ms, remaining_ms)` replaces XFetch's test (to run a broken copy of it);
    `decorate(source)` replaces `cached` altogether, to run someone else's decorator: its keys must start with
    `prefix`, `strategy` is then only a label, and the early refreshes are the recomputes `before_expiry`."""
    if clients < 1 or not run_s > ttl:
        raise ConfigError(f"need clients >= 1 and run_s > ttl, got {clients} and {run_s} <= {ttl}.")
    calls, here, counting = {"n": 0, "ms": 0.0}, threading.local(), threading.Lock()
    began: list[float] = []

    def source(item: int) -> dict:
        started = time.perf_counter()
        time.sleep(recompute_s)
        with counting:
            began.append(started)
            calls["n"] += 1
            calls["ms"] += (time.perf_counter() - started) * 1000
            version = calls["n"]
        here.recomputed = started  # in the caller's thread, unless a background refresher runs it
        return {"item": item, "version": version}

    if decorate is None:
        hot = cached(r, prefix=prefix, ttl=ttl, strategy=strategy, beta=beta, stale_ttl=ttl)(source)
        if should_refresh is not None:
            hot.should_refresh = should_refresh
        hot.stats = _NotedStats(here)
        hot.invalidate(1)
    else:
        delete_keys(r, list(r.scan_iter(match=f"{prefix}*")))
        hot = decorate(source)
    warming = time.perf_counter()
    hot(1)  # warm: the key now expires `ttl` from its write, which is at least `recompute_s` after `warming`
    expires_after = warming + recompute_s + ttl
    warmed = calls["n"]
    # per call: asked, ms, when its own recompute began (or None), when it missed, when it drew an early refresh
    noted: list[tuple[float, float, float | None, float | None, float | None]] = []
    lock, start, stop_at = threading.Lock(), threading.Barrier(clients), time.perf_counter() + run_s

    def client() -> None:
        start.wait()
        while time.perf_counter() < stop_at:
            here.recomputed, here.missed, here.early = None, None, None
            asked = time.perf_counter()
            hot(1)
            with lock:
                noted.append((asked, (time.perf_counter() - asked) * 1000, here.recomputed, here.missed, here.early))
            time.sleep(random.expovariate(1 / think_s))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if decorate is None:  # a background refresh (swr) holds the lock until it has written: wait for it
        deadline = time.monotonic() + 30
        while r.exists(f"{hot.key(1)}:lock") and time.monotonic() < deadline:
            time.sleep(0.005)
    delete_keys(r, list(r.scan_iter(match=f"{prefix}*")))
    starts = [t for t in began[warmed:] if t < stop_at]  # recomputes that began inside the run
    in_run = [call for call in noted if call[0] < stop_at and (call[2] is None or call[2] < stop_at)]
    early = sum(1 for t in starts if t < expires_after)
    if decorate is None:
        misses = sum(1 for *_, missed, _ in in_run if missed is not None and missed < stop_at)
        drawn = [at for *_, at in in_run if at is not None and at < stop_at]
    else:  # someone else's decorator: its misses are not counted, so every recompute not certainly early is one
        misses, drawn = len(starts) - early, [t for t in starts if t < expires_after]
    return StampedeResult(
        strategy, clients, len(starts), misses, len(drawn),
        [ms for _, ms, *_ in in_run], [ms for _, ms, mine, *_ in in_run if mine is not None], calls=len(in_run),
        run_s=run_s, recompute_ms=calls["ms"] / max(calls["n"], 1), before_expiry=early,
        recompute_starts_s=[t - warming for t in starts], ttl_s=ttl, early_refreshes_s=[t - warming for t in drawn])


class _NotedStats(CacheStats):
    """A cached function's counters that also note, in the calling thread, when its call missed or refreshed early."""

    def __init__(self, here: threading.local) -> None:
        super().__init__()
        self._here = here

    def add(self, **counts: int) -> None:
        super().add(**counts)
        if counts.get("misses"):
            self._here.missed = time.perf_counter()
        if counts.get("early_refreshes"):
            self._here.early = time.perf_counter()


def plot_stampede(results: dict[str, StampedeResult]) -> None:
    """Per strategy: the recomputations at expiry, and the read latency (p50, p99, and the slowest read)."""
    names = list(results)
    _, axes = plt.subplots(1, 2, figsize=(11, 2.8))
    colours = ["tab:red" if results[n].before_expiry == 0 and results[n].recomputes > 2 else "tab:green"
               for n in names]
    axes[0].bar(names, [results[n].recomputes for n in names], color=colours)
    axes[0].set(title=f"recomputations (database queries), {results[names[0]].clients} clients")
    x = np.arange(len(names))
    for offset, label, values in ((-0.27, "p50", [results[n].p50 for n in names]),
                                  (0.0, "p99", [results[n].p99 for n in names]),
                                  (0.27, "slowest", [max(results[n].latencies_ms) for n in names])):
        axes[1].bar(x + offset, values, 0.27, label=label)
    axes[1].set(xticks=x, xticklabels=names, ylabel="ms", yscale="log", title="read latency")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))  # beside the bars, hiding none
    plt.tight_layout()
    plt.show()


# -- exercise checks ------------------------------------------------------------------------------------
@check
def check_xfetch(should_refresh: Callable[[float, float, float, float, float], bool]) -> Result:
    """`should_refresh(now, expiry, delta, beta, rand) -> bool` is XFetch's test
    `now - delta * beta * ln(rand) >= expiry`, with `rand` uniform in (0, 1]."""
    problems = []
    if not should_refresh(100.0, 100.0, 10.0, 1.0, 1.0) or any(should_refresh(99.0, 100.0, 10.0, 1.0, 1.0)
                                                                for _ in range(20)):
        problems.append("with rand = 1 (ln 1 = 0) it must refresh exactly when now >= expiry (asked 20 times: "
                        "use the `rand` you are given, do not draw your own).")
    rng = random.Random(2015)
    draws = [1.0 - rng.random() for _ in range(4000)]
    early = sum(bool(should_refresh(0.0, 10.0, 10.0, 1.0, u)) for u in draws) / len(draws)
    again = sum(bool(should_refresh(0.0, 10.0, 10.0, 1.0, u)) for u in draws) / len(draws)
    # P(-ln U >= remaining / (delta * beta)) with remaining = delta: e^-1, and e^-1/2 with beta = 2
    expected, expected_beta2 = math.exp(-1), math.exp(-1 / 2)
    if early == 0:
        problems.append("it never refreshes early: -ln(rand) is positive, so `now - delta*beta*ln(rand)` is LATER "
                        "than now; check the sign (a common copy has `+` or compares the wrong way).")
    elif abs(early - expected) > 0.05:
        problems.append(f"with delta = remaining time it refreshed early {early:.0%} of the time; "
                        f"XFetch does so {expected:.0%} of the time (e^-1).")
    elif again != early:
        problems.append("the same arguments gave different answers: the randomness must come from `rand` only.")
    bigger_beta = sum(bool(should_refresh(0.0, 10.0, 10.0, 2.0, u)) for u in draws) / len(draws)
    if not problems and abs(bigger_beta - expected_beta2) > 0.05:
        problems.append(f"with beta = 2 it refreshed early {bigger_beta:.0%} of the time; XFetch does so "
                        f"{expected_beta2:.0%} (e^-1/2): beta multiplies delta once.")
    return verdict(problems, f"refreshes early {early:.0%} of the time when one recompute-time is left "
                             f"(theory {expected:.0%}); {bigger_beta:.0%} with beta = 2 (theory {expected_beta2:.0%}).")


class _ReadWatcher(redis.Redis):
    """A real client of the same server that notes which threads have had a reply to `GET <key>`. With
    `steal` set, a `GET <key>:lock` that reads a holder's token is answered only after a rival has taken the
    lock: what happens when a lock expires between a client's GET and its DEL."""

    key = ""
    readers: set[int]
    steal = stolen = False

    def execute_command(self, *args, **options):
        reply = super().execute_command(*args, **options)
        if len(args) > 1 and str(args[0]).upper() == "GET" and args[1] == self.key:
            self.readers.add(threading.get_ident())
        if (self.steal and len(args) > 1 and str(args[0]).upper() == "GET" and args[1] == f"{self.key}:lock"
                and reply is not None and reply not in ("someone-else", b"someone-else")):
            super().execute_command("SET", f"{self.key}:lock", "someone-else", "PX", 60_000)
            self.stolen = True
        return reply


SINGLE_FLIGHT_CALLERS = 20
SINGLE_FLIGHT_WAIT_S = 30  # the longest the check waits for its callers: a wrong answer must not hang it


def _released_between_get_and_del(r: redis.Redis, key: str, get_or_compute: Callable) -> list[str]:
    """One caller whose lock is taken over by a rival right after the caller's GET of it: a release by GET,
    compare, DEL deletes the rival's lock; a compare-and-delete in one script (no GET) does not."""
    r.delete(key, key + ":lock")
    stealer = _ReadWatcher(connection_pool=r.connection_pool)
    stealer.key, stealer.readers, stealer.steal = key, set(), True
    caller = threading.Thread(target=get_or_compute, args=(stealer, key, lambda: "v", 30_000), daemon=True)
    caller.start()
    caller.join(30)
    if caller.is_alive():
        return ["a single caller on an empty cache did not return within 30 s."]
    if stealer.stolen and r.get(key + ":lock") != "someone-else":
        return ["when another client took the lock between your GET of the lock and your DEL, you deleted its "
                "lock: compare and delete in one step, a Lua script (GET, compare, DEL run atomically)."]
    return []


@check
def check_single_flight(r: redis.Redis, ns: Namespace, get_or_compute: Callable) -> Result:
    """`get_or_compute(r, key, compute, lock_ttl_ms)` returns the cached value at `key`, or computes
    it under a lock at `key + ":lock"` that holds a token: one compute for many concurrent callers, and a
    client never deletes a lock it does not own.

    Nothing here depends on timing. The callers start together (a barrier), and the compute does not
    finish before every caller has read the cache and missed (or 1 s has passed, for answers that take
    the lock before reading): a missing re-read always shows as extra computes. The expired-lock case is
    ordered by events: the rival takes the lock only once the first client's lock is really gone, and the
    first client's compute returns only after that."""
    problems = []
    key = ns.key("check", "single-flight")
    n = SINGLE_FLIGHT_CALLERS
    watched = _ReadWatcher(connection_pool=r.connection_pool)
    watched.key, watched.readers = key, set()
    computes = []

    def compute() -> str:
        computes.append(1)
        deadline = time.monotonic() + 1
        while len(watched.readers) < n and time.monotonic() < deadline:
            time.sleep(0.002)
        return "fresh"

    r.delete(key, key + ":lock")
    answers: list = []
    start = threading.Barrier(n)

    def caller() -> None:
        start.wait(30)
        answers.append(get_or_compute(watched, key, compute, 30_000))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(n)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + SINGLE_FLIGHT_WAIT_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            return Result(False, f"{sum(t.is_alive() for t in threads)} of {n} callers were still waiting after "
                                 f"{SINGLE_FLIGHT_WAIT_S} s: the lock holder must store the value in the cache "
                                 "(SET key value) before releasing, and waiters must re-read the cache until it "
                                 "is there.")
        if len(computes) > 1:
            problems.append(f"{len(computes)} computes for {n} concurrent callers: after taking the lock, read the "
                            "cache again (another client may have filled it while you waited), and let waiters "
                            "re-read rather than compute.")
        if answers != ["fresh"] * n:
            problems.append(f"callers got {sorted(set(map(str, answers)))}, expected 'fresh' for all {n}.")
        # a lock that outlives its TTL: A's lock (50 ms) expires while A computes; another client takes it
        r.delete(key, key + ":lock")
        computing, rival_in = threading.Event(), threading.Event()

        def slow() -> str:
            computing.set()
            rival_in.wait(30)
            return "slow"

        first = threading.Thread(target=get_or_compute, args=(r, key, slow, 50), daemon=True)
        first.start()
        expired = False
        if not computing.wait(30):
            problems.append("get_or_compute never called compute() on an empty cache.")
        else:
            deadline = time.monotonic() + 10
            while r.exists(key + ":lock") and time.monotonic() < deadline:
                time.sleep(0.005)
            expired = not r.exists(key + ":lock")
            if not expired:
                problems.append("a lock taken with lock_ttl_ms = 50 was still there 10 s later: pass lock_ttl_ms "
                                "as the lock's PX, so that a crashed holder cannot block everyone.")
            else:
                r.set(key + ":lock", "someone-else", px=60_000)
        rival_in.set()
        first.join(30)
        if expired and r.get(key + ":lock") != "someone-else":
            problems.append("when its lock had expired, the first client deleted a lock another client held: "
                            "store a random token in the lock and release it only if the token is still yours "
                            "(a Lua compare-and-delete).")
        elif not problems:
            problems += _released_between_get_and_del(r, key, get_or_compute)
    finally:
        delete_keys(r, [k for k in r.scan_iter(match=key + "*")])
    return verdict(problems, f"one compute for {n} concurrent callers; never releases a lock it does not own.")
