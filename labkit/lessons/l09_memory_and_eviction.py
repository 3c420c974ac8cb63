"""Lesson 09, memory, eviction and keys at scale (`notebooks/09_memory_and_eviction.ipynb`): what a key
costs, a cache workload under every eviction policy, the approximated LRU, the stalls KEYS and a big DEL
cause, the command-line tools, expiry, and the exercise checks. Every experiment runs on servers it
spawns (or is given), never on the shared lab server."""

from __future__ import annotations

import functools
import math
import os
import secrets
import struct
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import redis

from labkit import scripts, validate
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Capabilities, Server, available_engines, cli_path, spawn

POLICIES = ("noeviction", "allkeys-lru", "allkeys-lfu", "allkeys-random",
            "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")
VALUE = "v" * 100  # every cached item: 100 bytes
CACHE_TTL_S = 3600


# -- 9.1 what a key costs ------------------------------------------------------------------------------
def fill(c: redis.Redis, keys: Iterable[str], value: str = "x", *, ttl_s: int | None = None,
         batch: int = 1000) -> int:
    """Write `value` under every key, `batch` keys a round trip: one MSET, or (with `ttl_s`) pipelined
    SET ... EX. Returns how many keys were written."""
    written = 0
    for chunk in _chunks(keys, batch):
        with c.pipeline(transaction=False) as pipe:
            if ttl_s is None:
                pipe.mset(dict.fromkeys(chunk, value))
            else:
                for key in chunk:
                    pipe.set(key, value, ex=ttl_s)
            pipe.execute()
        written += len(chunk)
    return written


def _chunks(items: Iterable[str], size: int) -> Iterable[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def expire_all(c: redis.Redis, keys: Iterable[str], ttl_s: int, batch: int = 1000) -> None:
    """EXPIRE every key, pipelined in batches."""
    pipe = c.pipeline(transaction=False)
    for i, key in enumerate(keys, start=1):
        pipe.expire(key, ttl_s)
        if i % batch == 0:
            pipe.execute()
    pipe.execute()


def used_memory(c: redis.Redis) -> int:
    return int(c.info("memory")["used_memory"])


@dataclass(frozen=True)
class KeyCost:
    """What `keys` small string keys cost on one server, measured from INFO memory before and after."""

    keys: int
    payload: int  # bytes of name and value per key: what the application thinks it stores
    per_key: float  # used_memory growth per key
    memory_usage: int  # MEMORY USAGE of one of them
    ttl_per_key: float  # used_memory growth per key when each gets an expiry
    memory_usage_with_ttl: int  # MEMORY USAGE of the same key once it has an expiry
    dataset_per_key: float  # used_memory_dataset growth per key
    overhead_per_key: float  # used_memory_overhead growth per key


def key_cost(c: redis.Redis, keys: int = 100_000, prefix: str = "user") -> KeyCost:
    """Write `keys` keys `<prefix>:00000001` holding "x", then give each a TTL; what each step cost."""
    names = [f"{prefix}:{i:08d}" for i in range(keys)]
    deadline = time.monotonic() + 10
    while int(c.info("memory").get("lazyfree_pending_objects", 0)) and time.monotonic() < deadline:
        time.sleep(0.05)  # an earlier DEL or FLUSHALL may still be freeing memory in the background
    before = c.info("memory")
    fill(c, names)
    after = c.info("memory")
    usage = c.memory_usage(names[1], samples=0)
    expire_all(c, names, CACHE_TTL_S)
    with_ttl = used_memory(c)
    grew = {field: (int(after[field]) - int(before[field])) / keys
            for field in ("used_memory", "used_memory_dataset", "used_memory_overhead")}
    return KeyCost(keys, len(names[0]) + 1, grew["used_memory"], usage, (with_ttl - int(after["used_memory"])) / keys,
                   c.memory_usage(names[1], samples=0), grew["used_memory_dataset"], grew["used_memory_overhead"])


def plot_memory_breakdown(info: dict) -> None:
    """used_memory as INFO memory splits it: startup, the rest of the overhead, the dataset."""
    startup, overhead = int(info["used_memory_startup"]), int(info["used_memory_overhead"])
    parts = {"startup": startup, "overhead beyond startup (key tables, buffers)": overhead - startup,
             "dataset": int(info["used_memory_dataset"])}
    _, ax = plt.subplots(figsize=(8, 1.6))
    left = 0
    for (name, size), colour in zip(parts.items(), ["tab:gray", "tab:orange", "tab:blue"], strict=True):
        ax.barh([0], [size / 2**20], left=left / 2**20, color=colour, label=f"{name}: {size / 2**20:.1f} MiB")
        left += size
    ax.set(xlabel="MiB", yticks=[], title=f"used_memory = {left / 2**20:.1f} MiB")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3)
    plt.show()


SHAPES: dict[str, Callable[[redis.client.Pipeline, str, int], object]] = {
    "string": lambda p, key, n: p.set(key, "x" * n),
    "hash": lambda p, key, n: p.hset(key, mapping={f"f{i}": "x" * 8 for i in range(n)}),
    "set": lambda p, key, n: p.sadd(key, *[f"member-{i}" for i in range(n)]),
}
def growth(c: redis.Redis, sizes: Sequence[int] = (1, 4, 16, 64, 256, 1024, 4096)) -> dict[str, list[tuple]]:
    """For each shape (a string of n bytes, a hash of n 8-byte fields, a set of n members):
    [(n, payload bytes, MEMORY USAGE, encoding)] as n grows."""
    rows: dict[str, list[tuple]] = {}
    for shape, write in SHAPES.items():
        for n in sizes:
            key = f"shape:{shape}:{n}"
            with c.pipeline(transaction=False) as pipe:
                write(pipe, key, n)
                pipe.memory_usage(key, samples=0)
                pipe.object("encoding", key)
                usage, encoding = pipe.execute()[-2:]
            payload = n if shape == "string" else _payload(c, key, shape)
            rows.setdefault(shape, []).append((n, payload, usage, encoding))
            c.delete(key)
    return rows


def _payload(c: redis.Redis, key: str, shape: str) -> int:
    if shape == "hash":
        return sum(len(f) + len(v) for f, v in c.hgetall(key).items())
    return sum(len(m) for m in c.smembers(key))


def plot_growth(rows: dict[str, list[tuple]]) -> None:
    _, ax = plt.subplots(figsize=(7.5, 3.2))
    for shape, points in rows.items():
        ax.loglog([p[1] for p in points], [p[2] for p in points], "o-", label=shape)
    top = max(p[1] for points in rows.values() for p in points)
    ax.loglog([1, top], [1, top], "--", color="gray", label="bytes stored = bytes of payload")
    ax.set(xlabel="payload (bytes of names, fields and values)", ylabel="MEMORY USAGE (bytes)",
           title="small keys are mostly overhead")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    plt.show()


# -- 9.2-9.3 a cache under every policy ---------------------------------------------------------------
def zipf_trace(items: int, requests: int, *, exponent: float = 1.0, seed: int = 9) -> np.ndarray:
    """`requests` item ids drawn from a Zipf popularity over `items` items (item 0 most popular), seeded."""
    validate.integer(items, "items")
    validate.integer(requests, "requests")
    weights = 1 / np.arange(1, items + 1) ** exponent
    return np.random.default_rng(seed).choice(items, size=requests, p=weights / weights.sum())


def shifted_trace(items: int, stable: int, shifted: int, *, seed: int = 9) -> np.ndarray:
    """`stable` requests over items 0..items-1 (Zipf), then `shifted` requests over a new catalogue,
    items..2*items-1, whose popular items are others (a new day's products, a new season's pages)."""
    new_order = np.random.default_rng(seed + 1).permutation(items) + items
    return np.concatenate([zipf_trace(items, stable, seed=seed),
                           new_order[zipf_trace(items, shifted, seed=seed + 2)]])


def item_keys(trace: Iterable[int], prefix: str = "cache:item") -> list[str]:
    return [f"{prefix}:{i}" for i in trace]


HIT, MISS, REFUSED = 1, 0, -1


def read_through(c: redis.Redis, keys: Sequence[str], *, ttl_s: int = CACHE_TTL_S, batch: int = 100,
                 seconds: float | None = None) -> np.ndarray:
    """Send each request of `keys` as a read-through (GET, and SET on a miss) in one script call, in
    pipelines of `batch`; spread over about `seconds` when given (for a live view). Per request: 1 a hit,
    0 a miss that was cached, -1 a miss whose write the server refused (OOM)."""
    read = scripts.register(c, "l09_memory_and_eviction/read_through")
    outcomes, started = [], time.monotonic()
    for start in range(0, len(keys), batch):
        if seconds:
            time.sleep(max(0.0, started + seconds * start / len(keys) - time.monotonic()))
        with c.pipeline(transaction=False) as pipe:
            for key in keys[start:start + batch]:
                read(keys=[key], args=[VALUE, ttl_s], client=pipe)
            replies = pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, redis.exceptions.OutOfMemoryError):
                outcomes.append(REFUSED)
            elif isinstance(reply, Exception):
                raise reply
            else:
                outcomes.append(int(reply))
    return np.array(outcomes)


def set_budget(c: redis.Redis, extra_bytes: int) -> int:
    """maxmemory = what the server uses now (empty, scripts loaded) + `extra_bytes`; returns it."""
    limit = used_memory(c) + extra_bytes
    c.config_set("maxmemory", limit)
    return limit


def cache_server(policy: str, budget_bytes: int, **config: object) -> tuple[Server, redis.Redis]:
    """A spawned server with `policy` and room for `budget_bytes` of data, the read-through script loaded."""
    validate.one_of(policy, "policy", POLICIES)
    server = spawn(modules=False, maxmemory_policy=policy, **config)
    c = server.client()
    c.script_load(scripts.source("l09_memory_and_eviction/read_through"))  # counted before the budget
    set_budget(c, budget_bytes)
    return server, c


@dataclass(frozen=True)
class PolicyRun:
    """One policy's run of a trace: each request's outcome, the keys evicted, the keys held at the end."""

    policy: str
    outcomes: np.ndarray = field(repr=False)
    evicted: int
    cached: int
    seconds: float  # how long the trace took

    @property
    def turnover_s(self) -> float:
        """Seconds to evict as many keys as the cache holds: how long a key typically stays."""
        return self.cached / (self.evicted / self.seconds) if self.evicted else math.inf

    def hit_rate(self, start: int = 0, end: int | None = None) -> float:
        """The share of hits among requests `start` to `end`."""
        return float(np.mean(self.outcomes[start:end] == HIT))

    @property
    def refused(self) -> int:
        """Misses whose write the server refused (OOM)."""
        return int(np.sum(self.outcomes == REFUSED))


def run_policy(policy: str, keys: Sequence[str], budget_bytes: int, *, ttl_s: int = CACHE_TTL_S) -> PolicyRun:
    """`keys` as read-through requests against a fresh server with `policy` and `budget_bytes` of room."""
    server, c = cache_server(policy, budget_bytes)
    try:
        started = time.perf_counter()
        outcomes = read_through(c, keys, ttl_s=ttl_s)
        seconds = time.perf_counter() - started
        return PolicyRun(policy, outcomes, int(c.info("stats")["evicted_keys"]), int(c.dbsize()), seconds)
    finally:
        server.stop()


def ideal_hit_rate(trace: np.ndarray, capacity: int) -> float:
    """The hit rate of a clairvoyant static cache holding the `capacity` most requested items of `trace`
    (each first request still misses)."""
    counts = np.sort(np.bincount(trace))[::-1][:capacity]
    return float((counts - 1).clip(min=0).sum() / len(trace))


def exact_lru_hit_rate(trace: Sequence[int], capacity: int) -> float:
    """The hit rate of an exact LRU cache of `capacity` items on `trace` (a miss caches the item)."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = 0
    for item in trace:
        if item in cache:
            hits += 1
            cache.move_to_end(item)
        else:
            cache[item] = None
            if len(cache) > capacity:
                cache.popitem(last=False)
    return hits / len(trace)


def plot_policies(runs: dict[str, PolicyRun], phases: dict[str, tuple[int, int | None]], ideal: float) -> None:
    """Hit rate per policy in each phase of the trace (bars side by side), and evictions and refused writes."""
    _, (rate_ax, evict_ax) = plt.subplots(1, 2, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    names, x = list(runs), np.arange(len(runs))
    width = 0.8 / len(phases)
    for i, (phase, (start, end)) in enumerate(phases.items()):
        rates = [runs[n].hit_rate(start, end) for n in names]
        bars = rate_ax.bar(x + (i - (len(phases) - 1) / 2) * width, rates, width, label=phase)
        rate_ax.bar_label(bars, labels=[f"{v:.2f}" for v in rates], fontsize=6)
    rate_ax.axhline(ideal, color="black", linestyle="--", lw=1, label=f"ideal static cache, {next(iter(phases))}")
    rate_ax.set(title="hit rate: same trace, same memory", ylim=(0, 1), xticks=x, xticklabels=names)
    rate_ax.legend(fontsize=7, loc="lower left")
    evict_ax.bar(x - 0.2, [runs[n].evicted for n in names], 0.4, color="tab:gray", label="keys evicted")
    evict_ax.bar(x + 0.2, [runs[n].refused for n in names], 0.4, color="tab:red", label="writes refused (OOM)")
    evict_ax.set(title="evictions and refused writes", xticks=x, xticklabels=names)
    evict_ax.legend(fontsize=7)
    for ax in (rate_ax, evict_ax):
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    plt.tight_layout()
    plt.show()


# -- 9.4 LFU, and a scan passing through ----------------------------------------------------------------
def lfu_counters(c: redis.Redis, hits: Sequence[int] = (10, 100, 1000, 10_000)) -> dict[int, int]:
    """OBJECT FREQ of a fresh key after each number of GETs (the server must run an LFU policy)."""
    counters = {}
    for n in hits:
        key = f"freq:{n}"
        c.set(key, "x")
        with c.pipeline(transaction=False) as pipe:
            for _ in range(n):
                pipe.get(key)
            pipe.execute()
        counters[n] = int(c.object("freq", key))
        c.delete(key)
    return counters


@dataclass
class ScanRun:
    """A cache warmed by a Zipf workload, then a scan of cold keys, then the workload again."""

    policy: str
    hot_before: int  # of the `hot` most popular items, how many were cached just before the scan
    hot_after: int  # ... and just after it
    outcomes_after: np.ndarray = field(repr=False)

    def hit_rate_after(self, first: int | None = None) -> float:
        return float(np.mean(self.outcomes_after[:first] == HIT))


def scan_pollution(clients: dict[str, redis.Redis], warm: Sequence[str], scan: Sequence[str],
                   after: Sequence[str], hot: Sequence[str], *, seconds: float = 0.0) -> dict[str, ScanRun]:
    """Run warm, scan and after against every client in turns, batch by batch (so a live view sees them
    side by side), spread over about `seconds`; count the `hot` keys cached before and after the scan."""
    phases = [warm, scan, after]
    total = sum(len(p) for p in phases)
    results = {name: [] for name in clients}
    cached = {name: [] for name in clients}
    done, started = 0, time.monotonic()
    for keys in phases:
        for name in clients:
            cached[name].append(_count_existing(clients[name], hot))
        outcomes = {name: [] for name in clients}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            for name, c in clients.items():
                outcomes[name].append(read_through(c, chunk))
            done += len(chunk)
            if seconds:
                time.sleep(max(0.0, started + seconds * done / total - time.monotonic()))
        for name in clients:
            results[name].append(np.concatenate(outcomes[name]))
    return {name: ScanRun(name, cached[name][1], cached[name][2], results[name][2]) for name in clients}


def _count_existing(c: redis.Redis, keys: Sequence[str]) -> int:
    """How many of `keys` exist (EXISTS does not touch a key's LRU or LFU data)."""
    with c.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return sum(pipe.execute())


def plot_scan(runs: dict[str, ScanRun], window: int = 500) -> None:
    _, ax = plt.subplots(figsize=(8, 3))
    for name, run in runs.items():
        rates = [np.mean(run.outcomes_after[i:i + window] == HIT)
                 for i in range(0, len(run.outcomes_after), window)]
        ax.plot(np.arange(len(rates)) * window, rates, "o-", markersize=3, label=name)
    ax.set(title="hit rate after the scan, per 500 requests", xlabel="requests after the scan",
           ylabel="hit rate", ylim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plt.show()


# -- 9.5 approximated LRU ---------------------------------------------------------------------------------
def server_seconds(c: redis.Redis) -> float:
    seconds, micros = c.time()
    return seconds + micros / 1e6


def write_generations(clients: Sequence[redis.Redis], generations: int, per_generation: int) -> list[list[str]]:
    """Write `generations` generations of keys on every client, each early in a new second of the
    server's clock (the LRU clock counts whole seconds, so each generation gets its own idle time)."""
    names = [[f"gen:{g}:{i:04d}" for i in range(per_generation)] for g in range(generations)]
    for keys in names:
        time.sleep(1 - server_seconds(clients[0]) % 1 + 0.25)  # 250 ms into the next second
        for c in clients:
            fill(c, keys, VALUE, batch=500)
    return names


def exact_lru_kept(trace: Sequence[str], capacity: int) -> set[str]:
    """The keys an exact LRU of `capacity` keys holds after the writes in `trace`."""
    cache: OrderedDict[str, None] = OrderedDict()
    for key in trace:
        cache[key] = None
        cache.move_to_end(key)
        if len(cache) > capacity:
            cache.popitem(last=False)
    return set(cache)


@dataclass
class Approximation:
    """Which keys survived an overflow, generation by generation, and against an exact LRU."""

    samples: int  # maxmemory-samples, or 0 for the exact LRU computed in Python
    kept: dict[str, list[bool]]  # generation name -> survived, key by key in write order
    wrong: float  # share of the evicted keys that an exact LRU would have kept

    def survivors(self) -> dict[str, int]:
        return {gen: sum(flags) for gen, flags in self.kept.items()}


def lru_approximation(samples: Sequence[int] = (1, 5, 10), generations: int = 4, per_generation: int = 1000,
                      overflow: int = 1500) -> tuple[dict[int, Approximation], dict[int, list[int]]]:
    """Write generations one second apart on one allkeys-lru server per sample size, cap memory at what
    they use, write `overflow` new keys, and compare the survivors with an exact LRU of the same size.
    Also returns each server's OBJECT IDLETIME per generation, read before the overflow."""
    servers = {n: spawn(modules=False, maxmemory_policy="allkeys-lru", maxmemory_samples=n) for n in samples}
    try:
        clients = {n: s.client() for n, s in servers.items()}
        names = write_generations(list(clients.values()), generations, per_generation)
        names.append([f"gen:new:{i:04d}" for i in range(overflow)])
        idle = {n: [int(c.object("idletime", gen[0])) for gen in names[:-1]] for n, c in clients.items()}
        labels = [f"generation {g}" for g in range(generations)] + ["new"]
        results = {}
        for n, c in clients.items():
            c.config_set("maxmemory", used_memory(c))
            fill(c, names[-1], VALUE, batch=50)
            c.config_set("maxmemory", 0)  # reading the survivors must not evict anything more
            kept = {label: _exists_each(c, keys) for label, keys in zip(labels, names, strict=True)}
            results[n] = _score(n, kept, names)
        capacity = sum(results[samples[-1]].survivors().values())
        exact = exact_lru_kept([k for keys in names for k in keys], capacity)
        results[0] = _score(0, {label: [k in exact for k in keys] for label, keys in zip(labels, names, strict=True)},
                            names)
        return results, idle
    finally:
        for server in servers.values():
            server.stop()


def _exists_each(c: redis.Redis, keys: Sequence[str]) -> list[bool]:
    with c.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return [bool(n) for n in pipe.execute()]


def _score(samples: int, kept: dict[str, list[bool]], names: list[list[str]]) -> Approximation:
    """How many evictions an exact LRU, evicting the same number of keys, would not have made."""
    order = [k for keys in names for k in keys]
    flags = [f for gen in kept.values() for f in gen]
    evicted = [k for k, alive in zip(order, flags, strict=True) if not alive]
    exact_victims = set(order[:len(evicted)])  # an exact LRU evicts the oldest writes first
    wrong = sum(k not in exact_victims for k in evicted) / len(evicted) if evicted else 0.0
    return Approximation(samples, kept, wrong)


KEY_COLOURS = ["#d9d9d9", "#f4a582", "#4d4d4d", "#1a9850"]  # old evicted, new evicted, old kept, new kept


def plot_lru_approximation(results: dict[int, Approximation], width: int = 100) -> None:
    """One dot per key in write order (oldest at the top, `width` keys a row), coloured kept or evicted."""
    order = [0, *sorted(n for n in results if n)]
    fig, axes = plt.subplots(1, len(order), figsize=(3.2 * len(order), 3.4))
    for ax, n in zip(axes, order, strict=True):
        run = results[n]
        codes = [(3 if label == "new" else 2) if alive else (1 if label == "new" else 0)
                 for label, flags in run.kept.items() for alive in flags]
        codes += [np.nan] * (-len(codes) % width)
        ax.imshow(np.array(codes, dtype=float).reshape(-1, width), aspect="auto", interpolation="nearest",
                  cmap=plt.matplotlib.colors.ListedColormap(KEY_COLOURS), vmin=0, vmax=3)
        title = "exact LRU (Python)" if n == 0 else f"maxmemory-samples {n}"
        ax.set(title=f"{title}\nwrong evictions: {run.wrong:.0%}", xticks=[], yticks=[])
    axes[0].set_ylabel("oldest writes at the top")
    fig.text(0.5, 0.0, "dark grey: old key kept · light grey: old key evicted · green: new key kept · "
             "orange: new key evicted", ha="center", fontsize=8)
    plt.tight_layout(rect=(0, 0.05, 1, 1))
    plt.show()


# -- 9.6 keys at scale, and the stalls of KEYS and DEL ---------------------------------------------------
def fill_keyspace(c: redis.Redis, keys: int = 200_000, *, every: int = 20) -> int:
    """`keys` keys: one in `every` is `user:<n>`, the others `cache:<n>`; MSET in pipelined batches.
    Returns how many `user:` keys there are."""
    with c.pipeline(transaction=False) as pipe:
        for start in range(0, keys, 2000):
            pipe.mset({f"{'user' if i % every == 0 else 'cache'}:{i:07d}": "x"
                       for i in range(start, min(keys, start + 2000))})
            if start % 20_000 == 0:
                pipe.execute()
        pipe.execute()
    return len(range(0, keys, every))


@dataclass(frozen=True)
class ScanCost:
    """One full SCAN MATCH iteration: calls (round trips), calls that returned nothing, keys found, time."""

    count: int
    calls: int
    empty: int
    found: int
    seconds: float


def scan_cost(c: redis.Redis, match: str, count: int) -> ScanCost:
    calls = empty = found = 0
    cursor, started = 0, time.perf_counter()
    while True:
        cursor, keys = c.scan(cursor, match=match, count=count)
        calls, empty, found = calls + 1, empty + (not keys), found + len(keys)
        if cursor == 0:
            return ScanCost(count, calls, empty, found, time.perf_counter() - started)


PROBE = r"""
import select, socket, struct, sys, time
host, port, password, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], open(sys.argv[4], "wb")
every = float(sys.argv[5])
conn = socket.create_connection((host, port))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
conn.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password.encode()))
assert conn.recv(64).startswith(b"+OK")
sys.stdout.write("ready\n")
sys.stdout.flush()
clock = lambda: time.clock_gettime(time.CLOCK_MONOTONIC)
while not select.select([sys.stdin], [], [], 0)[0]:
    sent = clock()
    conn.sendall(b"PING\r\n")
    reply = b""
    while not reply.endswith(b"\r\n"):
        reply += conn.recv(64)
    out.write(struct.pack("dd", sent, clock() - sent))
    time.sleep(every)
out.close()
"""


def monotonic() -> float:
    """The system's monotonic clock, the same in every process (the probe stamps its PINGs with it)."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


class PingProbe:
    """Another client, in a process of its own: it PINGs the server every `every` seconds (1 ms: often
    enough to see any stall, rarely enough to cost the server little) and records when each PING was
    sent and how long it waited. `with PingProbe(server) as probe:`, then `probe.longest_wait(start, end)`
    with times from `monotonic()`."""

    def __init__(self, server: Server, every: float = 0.001) -> None:
        self.server, self.every = server, every
        self.samples: list[tuple[float, float]] = []
        self._path = server.dir / "ping-probe.bin"

    def __enter__(self) -> PingProbe:
        args = [sys.executable, "-c", PROBE, self.server.host, str(self.server.port), self.server.password,
                str(self._path), str(self.every)]
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the PING probe could not connect")
        return self

    def __exit__(self, *exc: object) -> None:
        self._proc.stdin.close()  # the probe stops at its next PING
        self._proc.wait(timeout=30)
        self._proc.stdout.close()
        data = self._path.read_bytes()
        self._path.unlink()
        self.samples = list(struct.iter_unpack("dd", data[: len(data) // 16 * 16]))

    def longest_wait(self, start: float, end: float) -> float:
        """The longest PING (seconds) that was in flight at some moment between `start` and `end`."""
        overlapping = [wait for sent, wait in self.samples if sent <= end and sent + wait >= start]
        return max(overlapping, default=0.0)


@dataclass(frozen=True)
class Stall:
    """One run of an operation: the caller's time, the commands the server ran for it and the CPU time
    its main thread spent meanwhile, and the longest PING another client waited."""

    operation: str
    wall_ms: float
    calls: int
    server_cpu_ms: float  # the main thread's CPU time: it runs one command at a time
    other_client_ms: float

    @property
    def cpu_per_call_ms(self) -> float:
        return self.server_cpu_ms / max(self.calls, 1)


@dataclass
class StallRun:
    """Every run of every operation, and what the other client saw over time."""

    stalls: dict[str, list[Stall]]
    timeline: list[tuple[float, float]]  # (seconds since the start, that PING's wait in ms)
    windows: list[tuple[str, float, float]]  # (operation, start, end) in the same seconds

    def worst(self, operation: str, attribute: str) -> float:
        return max(getattr(s, attribute) for s in self.stalls[operation])

    def best(self, operation: str, attribute: str) -> float:
        return min(getattr(s, attribute) for s in self.stalls[operation])


BOOKKEEPING = {"ping", "info", "config", "client", "hello"}  # the probe's and our own commands


def main_thread_cpu_s(c: redis.Redis) -> float:
    """CPU seconds the server's main thread has used (user + system): preemption by other processes on a
    busy machine does not count, unlike a wall-clock time."""
    cpu = c.info("cpu")
    return float(cpu["used_cpu_user_main_thread"]) + float(cpu["used_cpu_sys_main_thread"])


def _calls(c: redis.Redis) -> int:
    return sum(int(v["calls"]) for name, v in c.info("commandstats").items()
               if name.removeprefix("cmdstat_").split("|")[0] not in BOOKKEEPING)


def measure_stalls(server: Server, operations: dict[str, Callable[[redis.Redis], object]], *,
                   repeats: int = 3, pause: float = 0.05) -> StallRun:
    """Run each operation `repeats` times, in turns, while a PingProbe watches; for each run, the commands
    it sent, the server's main-thread CPU time meanwhile, and the probe's longest wait."""
    c = server.client()
    measured = []
    with PingProbe(server) as probe:
        origin = monotonic()
        for _ in range(repeats):
            for name, operation in operations.items():
                time.sleep(pause)
                calls_before = _calls(c)
                cpu_before = main_thread_cpu_s(c)  # read last before, first after: INFO commandstats stays out
                started = monotonic()
                operation(c)
                ended = monotonic()
                cpu = main_thread_cpu_s(c) - cpu_before
                measured.append((name, started, ended, _calls(c) - calls_before, cpu))
        time.sleep(pause)
    c.close()
    stalls: dict[str, list[Stall]] = {name: [] for name in operations}
    for name, started, ended, calls, cpu in measured:
        stalls[name].append(Stall(name, 1000 * (ended - started), calls, 1000 * cpu,
                                  1000 * probe.longest_wait(started, ended)))
    windows = [(name, started - origin, ended - origin) for name, started, ended, _, _ in measured]
    timeline = [(sent - origin, 1000 * wait) for sent, wait in probe.samples if sent >= origin]
    return StallRun(stalls, timeline, windows)


def scan_all(c: redis.Redis, match: str, count: int = 1000) -> int:
    """A full SCAN MATCH iteration; the number of keys found."""
    return sum(1 for _ in c.scan_iter(match=match, count=count))


def plot_stalls(run: StallRun, title: str) -> None:
    """Another client's PING waits over time (log scale), each operation's runs shaded."""
    _, ax = plt.subplots(figsize=(10, 3))
    colours = dict(zip(run.stalls, ["tab:red", "tab:green", "tab:blue", "tab:orange"], strict=False))
    for name, start, end in run.windows:
        ax.axvspan(start, max(end, start + 0.004), color=colours[name], alpha=0.25, lw=0)
    times, waits = zip(*run.timeline, strict=True)
    ax.plot(times, waits, ".", markersize=2, color="black")
    for name, colour in colours.items():
        ax.plot([], [], "s", color=colour, alpha=0.4, label=name)
    ax.set(title=title, xlabel="seconds", ylabel="another client's PING (ms)", yscale="log")
    ax.legend(fontsize=8, loc="upper right")
    plt.show()


def big_hash(c: redis.Redis, key: str, fields: int = 1_000_000, batch: int = 1000) -> None:
    """A hash of `fields` small fields, HSET in pipelined batches."""
    with c.pipeline(transaction=False) as pipe:
        for start in range(0, fields, batch):
            pipe.hset(key, mapping={f"field:{i}": "1" for i in range(start, min(fields, start + batch))})
            if start % (50 * batch) == 0:
                pipe.execute()
        pipe.execute()


# -- 9.7 the command-line tools ---------------------------------------------------------------------------
CLI_OPTION = "--count"  # the newest option this lesson passes (`--bigkeys --count N`); older clients refuse it


def cli_binary(server: Server) -> Path:
    """The engine's command-line client if it takes every option this lesson uses, else an installed client
    that does (Debian's redis-cli 7.0 refuses `--count` with `--bigkeys`); the clients speak one protocol."""
    candidates = [cli_path(server.engine)] + [e.cli for e in available_engines().values() if e.cli]
    return next((path for path in candidates if f"  {CLI_OPTION} " in _help_text(str(path))), candidates[0])


@functools.cache
def _help_text(path: str) -> str:
    done = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=10)
    return done.stdout + done.stderr


def cli(server: Server, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """Run the command-line client (`cli_binary`) against `server` (the password passed in the environment,
    never on the command line)."""
    return subprocess.run([str(cli_binary(server)), "-h", server.host, "-p", str(server.port), *args],
                          capture_output=True, text=True, env=_cli_env(server), input=stdin, timeout=60)


def _cli_env(server: Server) -> dict[str, str]:
    return os.environ | {"REDISCLI_AUTH": server.password, "VALKEYCLI_AUTH": server.password}


def cli_command(server: Server) -> str:
    """The shell words that start the command-line client against `server` (the password in the env)."""
    return f"{cli_binary(server)} -h {server.host} -p {server.port}"


def summary_lines(output: str, *starts: str) -> list[str]:
    """The lines of a tool's output that start with any of `starts` (after leading spaces)."""
    return [line.strip() for line in output.splitlines() if line.strip().startswith(starts)]


def build_inventory(c: redis.Redis) -> dict[str, str]:
    """An application's keys: product cache, sessions, a list of events, one big export hash and one
    big string. Returns what each big key is."""
    fill(c, [f"app:cache:product:{i}" for i in range(3000)], "x" * 100, ttl_s=CACHE_TTL_S)
    with c.pipeline(transaction=False) as pipe:
        for i in range(1000):
            pipe.hset(f"app:session:{i}", mapping={"user": i, "cart": "a,b,c", "theme": "dark"})
        pipe.rpush("app:stats:events", *range(60_000))
        pipe.hset("app:report:export", mapping={f"row:{i}": "y" * 500 for i in range(3000)})
        pipe.set("app:blob:logo", "z" * 50_000)
        pipe.execute()
    return {"app:stats:events": "a list of 60,000 small integers", "app:report:export": "a hash of 3,000 rows "
            "of 500 bytes", "app:blob:logo": "a 50,000-byte string"}


def plot_memory_by_prefix(rows: Sequence) -> None:
    _, ax = plt.subplots(figsize=(7, 2.6))
    ax.barh([row.prefix for row in rows][::-1], [row.bytes / 1024 for row in rows][::-1], color="tab:purple")
    for i, row in enumerate(rows[::-1]):
        ax.text(row.bytes / 1024, i, f" {row.keys:,} key(s)", va="center", fontsize=8)
    ax.set(xlabel="KiB (MEMORY USAGE)", title="memory by prefix")
    ax.set_xlim(0, max(row.bytes for row in rows) / 1024 * 1.25)
    plt.show()


# -- 9.8 expiry --------------------------------------------------------------------------------------------
@dataclass
class ExpiryRun:
    """Short-lived keys among others on one server: how many were still in memory over time, once all
    had expired, and how many our own reads reclaimed at the end (lazy expiry)."""

    label: str
    times: list[float] = field(default_factory=list)
    present: list[int] = field(default_factory=list)  # short-lived keys still counted by DBSIZE
    reclaimed_lazily: int = 0

    def reclaimed_by(self, seconds: float) -> int:
        """Short keys gone (reclaimed by the active cycle) at the last sample up to `seconds` after expiry."""
        return self.present[0] - [n for t, n in zip(self.times, self.present, strict=True) if t <= seconds][-1]

    def all_gone_after(self) -> float | None:
        """Seconds after expiry of the first sample at which every short key was gone, or None."""
        return next((t for t, n in zip(self.times, self.present, strict=True) if n == 0), None)


def expiry_race(others_ttl: dict[str, int | None], *, short: int = 10_000, others: int = 50_000,
                ttl_ms: int = 2000, watch_s: float = 2.0) -> dict[str, ExpiryRun]:
    """One fresh server per entry of `others_ttl` (label -> TTL in seconds of the `others` long-lived keys,
    or None): add `short` keys that all expire at one absolute time (`PXAT`, `ttl_ms` after the first write
    starts), watch DBSIZE on all servers at once until `watch_s` seconds after that time, then read every
    short key (EXISTS) and count what that reclaimed. Times are seconds since the keys' expiry time
    (negative before it); each server's first sample is taken right after its own write."""
    servers = {label: spawn(modules=False) for label in others_ttl}
    try:
        clients = {label: server.client() for label, server in servers.items()}
        for label, c in clients.items():
            fill(c, (f"keep:{i}" for i in range(others)), ttl_s=others_ttl[label], batch=5000)
        runs = {label: ExpiryRun(label) for label in clients}
        expire_at = time.time() + ttl_ms / 1000
        for label, c in clients.items():
            pipe = c.pipeline(transaction=False)
            for i in range(short):
                pipe.set(f"short:{i}", "x", pxat=int(expire_at * 1000))
            pipe.execute()
            runs[label].times.append(time.time() - expire_at)
            runs[label].present.append(int(c.dbsize()) - others)
        while (now := time.time()) - expire_at < watch_s:
            for label, c in clients.items():
                runs[label].times.append(now - expire_at)
                runs[label].present.append(int(c.dbsize()) - others)
            time.sleep(0.05)
        for label, c in clients.items():
            before = int(c.info("stats")["expired_keys"])
            _count_existing(c, [f"short:{i}" for i in range(short)])
            runs[label].reclaimed_lazily = int(c.info("stats")["expired_keys"]) - before
        return runs
    finally:
        for server in servers.values():
            server.stop()


def plot_expiry(runs: Sequence[ExpiryRun], short: int, ttl_ms: int) -> None:
    _, ax = plt.subplots(figsize=(8, 3))
    for run in runs:
        ax.plot(run.times, run.present, label=run.label)
    ax.axvline(0, color="gray", linestyle=":", label="every short key has expired")
    ax.set(xlabel="seconds after the short keys' expiry time", ylabel="short keys still in memory",
           title=f"{short:,} keys with a {ttl_ms:,} ms TTL: what the active expiry cycle reclaims",
           ylim=(0, short * 1.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plt.show()


# Where each engine counts hash fields with a TTL (INFO keyspace) and fields reclaimed (INFO stats): Valkey's
# name first, then Redis's. The lesson reads whichever the server reports.
VOLATILE_KEYS_FIELDS = ("keys_with_volatile_items", "subexpiry")
EXPIRED_FIELDS_STATS = ("expired_fields", "expired_subkeys")


@dataclass
class FieldExpiry:
    """Hash fields with a TTL of their own, on a fresh server of one engine, reclaimed without being read."""

    server: str
    supported: bool  # capabilities().hash_field_expiration
    reason: str = ""
    keyspace_name: str = ""  # the INFO keyspace counter of keys that hold fields with a TTL
    keyspace_before: int = 0
    keyspace_after: int = 0
    stats_name: str = ""  # the INFO stats counter of fields reclaimed
    reclaimed: int = 0
    fields_left: set[int] = field(default_factory=set)  # HLEN of the hashes afterwards (each value once)


def field_expiry(r: redis.Redis, caps: Capabilities, *, sessions: int = 1000, ttl_ms: int = 500,
                 deadline_s: float = 5.0) -> FieldExpiry:
    """On a server of its own (its keys are this experiment's; run it with `on_each_engine`): `sessions` hashes
    (user, csrf, cart), HPEXPIRE `ttl_ms` on each csrf field; then poll INFO (reading no hash) until every csrf
    field is reclaimed or `deadline_s` passes."""
    name = caps.server
    if not caps.hash_field_expiration:
        return FieldExpiry(name, False, "no per-field TTL: HPEXPIRE is an unknown command")
    with r.pipeline(transaction=False) as pipe:
        for i in range(sessions):
            pipe.hset(f"session:{i}", mapping={"user": i, "csrf": secrets.token_hex(16), "cart": "a,b"})
            pipe.hpexpire(f"session:{i}", ttl_ms, "csrf")
        pipe.execute()
    keyspace_name = next(n for n in VOLATILE_KEYS_FIELDS if n in r.info("keyspace")["db0"])
    stats_name = next(n for n in EXPIRED_FIELDS_STATS if caps.has_info(n))
    before = int(r.info("keyspace")["db0"][keyspace_name])
    give_up = time.monotonic() + deadline_s
    while int(r.info("stats")[stats_name]) < sessions and time.monotonic() < give_up:
        time.sleep(0.02)
    reclaimed, after = int(r.info("stats")[stats_name]), int(r.info("keyspace")["db0"][keyspace_name])
    with r.pipeline(transaction=False) as pipe:
        for i in range(sessions):
            pipe.hlen(f"session:{i}")
        left = set(pipe.execute())
    return FieldExpiry(name, True, "", keyspace_name, before, after, stats_name, reclaimed, left)


# -- common mistakes ---------------------------------------------------------------------------------------
def default_eviction_settings(r: redis.Redis, caps: Capabilities) -> tuple[str, dict[str, str]]:
    """The server (engine and version) and its maxmemory and maxmemory-policy: on a server started with no
    configuration (`on_each_engine` starts one of each engine), what every server starts with."""
    return caps.server, r.config_get("maxmemory") | r.config_get("maxmemory-policy")


@dataclass(frozen=True)
class SharedInstance:
    """Sessions and a cache sharing one server: sessions created, sessions left after the cache's traffic."""

    policy: str
    sessions: int
    survived: int
    cache_writes: int


def sessions_and_cache(policy: str, budget_bytes: int, sessions: int = 2000, cache_items: int = 30_000,
                       separate: bool = False) -> SharedInstance:
    """`sessions` session hashes (30-minute TTL), then `cache_items` cache writes, on one server with
    `policy` and `budget_bytes` of room, or, with `separate`, on two servers: sessions on a noeviction
    one sized for them, the cache on its own `policy` server."""
    session_server, s = cache_server("noeviction" if separate else policy, budget_bytes)
    cache_srv, c = cache_server(policy, budget_bytes) if separate else (session_server, s)
    try:
        if separate:
            s.config_set("maxmemory", 0)
        with s.pipeline(transaction=False) as pipe:
            for i in range(sessions):
                pipe.hset(f"session:{i}", mapping={"user_id": i, "csrf": "f3a9c2e1d4b5", "cart": "3"})
                pipe.expire(f"session:{i}", 1800)
            pipe.execute()
        read_through(c, item_keys(range(cache_items)))
        survived = _count_existing(s, [f"session:{i}" for i in range(sessions)])
        return SharedInstance(policy + (" + separate sessions" if separate else ""), sessions, survived, cache_items)
    finally:
        session_server.stop()
        if separate:
            cache_srv.stop()


def xargs_delete(server: Server, pattern: str) -> subprocess.CompletedProcess:
    """The widely copied one-liner: `cli --scan --pattern P | xargs cli del`."""
    command = f"{cli_command(server)} --scan --pattern '{pattern}' | xargs {cli_command(server)} del"
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=_cli_env(server), timeout=60)


# -- exercise 1: choose a policy ---------------------------------------------------------------------------
MIX_FLAGS, MIX_ITEMS, MIX_REQUESTS, MIX_CRAWL, MIX_BUDGET = 200, 5000, 24_000, 3000, 300_000


@dataclass(frozen=True)
class MixRun:
    """The exercise's workload under one policy: the cache's hit rate, feature flags lost, writes refused."""

    policy: str
    hit_rate: float
    flags_lost: int
    refused: int


def run_mix(policy: str) -> MixRun:
    """The exercise's workload: 200 feature flags (no TTL, must never disappear), then product pages
    read through a cache with a one-hour TTL (Zipf popularity), with a crawler reading 3,000 pages once
    in the middle; on a fresh server with `policy` and 300 KB of room. Takes about a second."""
    server, c = cache_server(policy, MIX_BUDGET)
    try:
        flags = [f"flag:{i}" for i in range(MIX_FLAGS)]
        fill(c, flags, "on")
        trace = item_keys(zipf_trace(MIX_ITEMS, MIX_REQUESTS, seed=23), "page")
        crawl = item_keys(range(MIX_ITEMS, MIX_ITEMS + MIX_CRAWL), "page")
        half = MIX_REQUESTS // 2
        outcomes = np.concatenate([read_through(c, trace[:half]), read_through(c, crawl),
                                   read_through(c, trace[half:])])
        user_requests = np.concatenate([outcomes[:half], outcomes[half + MIX_CRAWL:]])
        return MixRun(policy, float(np.mean(user_requests == HIT)), MIX_FLAGS - _count_existing(c, flags),
                      int(np.sum(outcomes == REFUSED)))
    finally:
        server.stop()


@check
def check_policy_choice(policy: str, hit_rate: float) -> Result:
    """`policy` is the choice for the exercise's workload and `hit_rate` the hit rate measured for it with
    `run_mix`: no flag may be lost, no write refused, and no safe policy may do clearly better."""
    if policy not in POLICIES:
        return Result(False, f"{policy!r} is not a policy: choose one of {', '.join(POLICIES)}.")
    if not isinstance(hit_rate, (int, float)) or isinstance(hit_rate, bool) or not 0 <= hit_rate <= 1:
        return Result(False, f"hit_rate must be the number run_mix measured (between 0 and 1), got {hit_rate!r}.")
    mine = run_mix(policy)
    problems = []
    if mine.flags_lost:
        problems.append(f"{policy} evicted {mine.flags_lost} of {MIX_FLAGS} feature flags: an allkeys-* policy may "
                        "evict any key; only volatile-* policies leave keys without a TTL alone.")
    if mine.refused:
        problems.append(f"{policy} refused {mine.refused:,} cache writes (OOM errors): noeviction never makes "
                        "room, the application gets errors.")
    if not problems and policy != "volatile-lfu":
        best = run_mix("volatile-lfu")
        if best.hit_rate > mine.hit_rate + 0.02:
            problems.append(f"{policy} keeps the flags but its hit rate is {mine.hit_rate:.3f} against "
                            f"{best.hit_rate:.3f} for another safe policy: which one ignores the crawler?")
    if abs(mine.hit_rate - hit_rate) > 0.15:  # runs differ by up to ~0.07 on a busy machine
        problems.append(f"you reported a hit rate of {hit_rate:.3f}, the check measured {mine.hit_rate:.3f} for "
                        f"{policy}: justify the choice with run_mix({policy!r}).hit_rate.")
    return verdict(problems, f"{policy}: no flag lost, no write refused, and the best hit rate of the policies "
                             f"that keep the flags: {mine.hit_rate:.3f} here, {hit_rate:.3f} when you measured it.")


# -- exercise 2: delete a prefix -----------------------------------------------------------------------------
PREFIX_KEYS, PREFIX_DECOYS, PREFIX_OTHERS = 5000, 1000, 20_000


def _command_stats(c: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in c.info("commandstats").items()}


def _largest_delete(c: redis.Redis) -> int:
    """The most keys one DEL or UNLINK named, from the SLOWLOG (every command logged). An entry keeps the
    first 31 words of a long command and ends "... (N more arguments)"."""
    largest = 0
    for entry in c.slowlog_get(1_000_000):
        words = (entry["command"].decode() if isinstance(entry["command"], bytes) else entry["command"]).split(" ")
        if words[0].upper() not in ("DEL", "UNLINK"):
            continue
        if words[-2:] == ["more", "arguments)"]:
            largest = max(largest, 30 + int(words[-3].lstrip("(")))
        else:
            largest = max(largest, len(words) - 1)
    return largest


@check
def check_prefix_delete(delete_prefix: Callable[[redis.Redis, str], int]) -> Result:
    """`delete_prefix(r, prefix)` deletes every key that starts with `prefix + ":"` and returns how many:
    without KEYS, in batches (no DEL per key, no single DEL of everything), nothing outside the prefix.
    Runs on a server of its own: 5,000 keys under `app:users`, 1,000 under `app:users-archive`, 20,000
    others."""
    with spawn(modules=False, slowlog_log_slower_than=0, slowlog_max_len=1_000_000) as server:
        c = server.client()
        fill(c, (f"app:users:{i}" for i in range(PREFIX_KEYS)))
        fill(c, (f"app:users-archive:{i}" for i in range(PREFIX_DECOYS)))
        fill(c, (f"app:orders:{i}" for i in range(PREFIX_OTHERS)))
        c.config_resetstat()
        c.slowlog_reset()
        returned = delete_prefix(c, "app:users")
        stats, largest = _command_stats(c), _largest_delete(c)
        left = sum(1 for _ in c.scan_iter(match="app:users:*", count=1000))
        decoys = sum(1 for _ in c.scan_iter(match="app:users-archive:*", count=1000))
        others = c.dbsize() - left - decoys
    deletes = stats.get("del", 0) + stats.get("unlink", 0)
    problems = []
    if stats.get("keys"):
        problems.append("it called KEYS, which walks the whole keyspace in one command and stalls every other "
                        "client (see the Common mistake section): iterate with SCAN.")
    if decoys < PREFIX_DECOYS or others < PREFIX_OTHERS:
        problems.append(f"it deleted keys outside the prefix ({PREFIX_DECOYS - decoys} of app:users-archive:*, "
                        f"{PREFIX_OTHERS - others} others): match `prefix + ':*'`, not `prefix + '*'`.")
    if left:
        problems.append(f"{left:,} keys under app:users: are left.")
    if deletes > PREFIX_KEYS / 10:
        problems.append(f"it sent {deletes:,} DEL/UNLINK commands for {PREFIX_KEYS:,} keys: batch them (hundreds of "
                        "keys per UNLINK).")
    elif largest > 2000:
        problems.append(f"one command deleted {largest:,} keys at once: a single call for everything is one long "
                        "command and one huge request; send batches of a few hundred.")
    scans = stats.get("scan", 0)
    if not stats.get("keys") and scans > (PREFIX_KEYS + PREFIX_DECOYS + PREFIX_OTHERS) / 50:
        problems.append(f"it took {scans:,} SCAN calls to walk {PREFIX_KEYS + PREFIX_DECOYS + PREFIX_OTHERS:,} keys: "
                        "the default COUNT is 10; ask for about 1000 per call.")
    if not problems and returned != PREFIX_KEYS:
        problems.append(f"it returned {returned!r}: return how many keys it deleted ({PREFIX_KEYS}).")
    return verdict(problems, f"{PREFIX_KEYS:,} keys deleted with {scans} SCAN calls and {deletes} batched "
                             f"deletes; nothing outside the prefix was touched.")


# -- exercise 3: the key that breaks the budget --------------------------------------------------------------
def budget_instance(c: redis.Redis) -> str:
    """Fill `c` like an application whose instance is over its memory budget; return the culprit key."""
    build_inventory(c)
    culprit = f"app:report:{secrets.token_hex(4)}"  # a name nobody can copy from section 9.7
    c.rename("app:report:export", culprit)
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("maxmemory", used_memory(c) - 1_000_000)
    return culprit


@check
def check_budget_culprit(find_culprit: Callable[[redis.Redis], str]) -> Result:
    """`find_culprit(r)` returns the key whose memory put the instance over its maxmemory budget (deleting
    it alone brings the instance back under), without KEYS. Runs on a server of its own."""
    with spawn(modules=False) as server:
        c = server.client()
        culprit = budget_instance(c)
        c.config_resetstat()
        answer = find_culprit(c)
        used_keys = _command_stats(c).get("keys", 0)
        sizes = {key: c.memory_usage(key) for key in ("app:stats:events", "app:blob:logo", culprit)}
    problems = []
    if used_keys:
        problems.append("it called KEYS on an instance in trouble: one command over every key, every other client "
                        "waiting. Walk the keyspace with SCAN (or use labkit.ops).")
    if answer == "app:stats:events":
        problems.append(f"app:stats:events has the most elements (60,000) but is a compact list of "
                        f"{sizes['app:stats:events']:,} bytes: compare MEMORY USAGE, not element counts.")
    elif answer == "app:blob:logo":
        problems.append(f"app:blob:logo is the biggest string ({sizes['app:blob:logo']:,} bytes), but a string "
                        "is not the only type: compare MEMORY USAGE across every type.")
    elif answer != culprit:
        problems.append(f"{answer!r} is not it: find the key with the largest MEMORY USAGE.")
    return verdict(problems, f"{culprit} uses {sizes[culprit]:,} bytes, more than any other key; found without "
                             "KEYS.")

