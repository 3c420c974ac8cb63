"""Benchmarks, measured side by side in one run and reported as medians and ratios."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Callable

from labkit.server import available_engines
from labkit.server.process import Server

Row = tuple[str, float]


def spawn_to_ping_ms(engine: str | None = None, modules: bool = True) -> float:
    """Milliseconds from creating a server to its first PONG (the server is stopped afterwards)."""
    started = time.perf_counter()
    server = Server(engine, modules=modules).start()
    elapsed = (time.perf_counter() - started) * 1000
    server.stop()
    return elapsed


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def side_by_side(calls: dict[str, Callable[[], object]], reps: int = 300) -> dict[str, float]:
    """Median microseconds per call of each entry, timed round-robin so that a busy machine slows every
    entry alike (compare the results as ratios, never as absolute times)."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(reps):
        for name, call in calls.items():
            started = time.perf_counter_ns()
            call()
            samples[name].append((time.perf_counter_ns() - started) / 1000)
    return {name: statistics.median(values) for name, values in samples.items()}


def bench_server(runs: int = 20) -> list[Row]:
    """Median spawn-to-PING time of every installed engine, without and with the modules."""
    rows: list[Row] = []
    for name in available_engines():
        rows.append((f"{name} spawn-to-PING", median_of(runs, lambda n=name: spawn_to_ping_ms(n, modules=False))))
        if name == "valkey9":
            rows.append((f"{name} + search/JSON modules", median_of(runs, lambda n=name: spawn_to_ping_ms(n))))
    return rows


def _rate(decide: Callable[[], object], seconds: float, clients: int) -> float:
    """Decisions per second from `clients` threads calling `decide` for `seconds`."""
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        while time.perf_counter() < deadline:
            decide()
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def _round_trips(server: Server, decide: Callable[[], object], n: int = 200) -> float:
    r = server.client()
    before = r.info("stats")["total_reads_processed"]
    for _ in range(n):
        decide()
    return (r.info("stats")["total_reads_processed"] - before - 1) / n


def bench_ratelimit(seconds: float = 1.0) -> list[Row]:
    """Decisions per second (1 and 4 clients) and round trips per decision: labkit's limiters next to the
    `limits` library's moving window and sliding window counter, on one quiet server, in one run."""
    from limits import RateLimitItemPerSecond
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    from labkit import ratelimit

    rows: list[Row] = []
    with Server(modules=False) as server:
        r = server.client()
        item = RateLimitItemPerSecond(1_000_000)  # never reached: we time decisions, not denials
        storage = RedisStorage(server.url.removesuffix("/0"))
        contenders = {
            "limits moving window": lambda: MovingWindowRateLimiter(storage).hit(item, "bench"),
            "limits sliding window counter": lambda: SlidingWindowCounterRateLimiter(storage).hit(item, "bench"),
        }
        for cls in ratelimit.ALGORITHMS:
            limiter = (cls(r, 1_000_000, 1, prefix="bench") if cls in (ratelimit.FixedWindow, ratelimit.SlidingLog,
                       ratelimit.SlidingWindowCounter) else cls(r, 1_000_000, 1_000_000, prefix="bench"))
            contenders[f"labkit {cls.algorithm}"] = lambda lim=limiter: lim.allow("bench")
        for name, decide in contenders.items():
            r.flushdb()  # a server of our own: start each contender from an empty keyspace
            decide()
            rows.append((f"{name}: decisions/s, 1 client", _rate(decide, seconds, 1)))
            rows.append((f"{name}: decisions/s, 4 clients", _rate(decide, seconds, 4)))
            rows.append((f"{name}: round trips per decision", _round_trips(server, decide)))
    return rows


def bench_cache(seconds: float = 1.0, clients: int = 50) -> list[Row]:
    """Cache hits per second (from median latencies, the three timed in turns): labkit's `cached` (xfetch)
    next to a raw GET loop and dogpile.cache's Redis backend on one quiet server; then stampede recomputes
    and misses per strategy."""
    from dogpile.cache import make_region

    from labkit.cache import STRATEGIES, cached
    from labkit.lessons.l02_caching import stampede

    rows: list[Row] = []
    with Server(modules=False) as server:
        r = server.client()
        r.set("raw", json.dumps({"id": 1, "name": "widget"}))
        labkit_hit = cached(r, prefix="bench", ttl=600, strategy="xfetch")(lambda pid: {"id": pid, "name": "widget"})
        region = make_region().configure("dogpile.cache.redis", expiration_time=600, arguments={
            "host": server.host, "port": server.port, "password": server.password, "redis_expiration_time": 600})
        dogpile_hit = region.cache_on_arguments()(lambda pid: {"id": pid, "name": "widget"})
        labkit_hit(1), dogpile_hit(1)
        medians = side_by_side({"raw GET + json.loads": lambda: json.loads(r.get("raw")),
                                "labkit cached (xfetch)": lambda: labkit_hit(1),
                                "dogpile.cache redis": lambda: dogpile_hit(1)}, reps=int(3000 * seconds))
        rows += [(f"hits/s: {name}", 1e6 / us) for name, us in medians.items()]
        for strategy in STRATEGIES:
            result = stampede(r, "bench-stampede", strategy, clients=clients)
            rows.append((f"stampede {strategy}: recomputes at expiry", result.recomputes))
            rows.append((f"stampede {strategy}: misses at expiry", result.misses))
    return rows


def _drain_raw(r, stream: str, group: str, batch: int) -> int:
    """The ceiling: XACK of one batch pipelined with the XREADGROUP of the next, one round trip per batch."""
    handled, acks = 0, []
    while True:
        pipe = r.pipeline(transaction=False)
        if acks:
            pipe.xack(stream, group, *acks)
        pipe.xreadgroup(group, "raw", {stream: ">"}, count=batch)
        reply = pipe.execute()[-1]
        entries = reply[0][1] if reply else []
        if not entries:
            return handled
        acks = [entry_id for entry_id, _ in entries]
        handled += len(entries)


def _consumers_rate(r, group: str, consumers: int, jobs: int, io_ms: float) -> float:
    """Messages/s for `consumers` Workers in threads sharing `group`, together handling `jobs` messages."""
    from labkit.streams import Worker, ensure_group

    ensure_group(r, "bench", group)
    handled = [0] * consumers

    def consume(i: int) -> None:
        worker = Worker(r, "bench", group, f"w{i}", lambda _id, _f: time.sleep(io_ms / 1000), batch=10, block_ms=0)
        while sum(handled) < jobs:
            handled[i] += worker.process_once()

    started = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(handled) / (time.perf_counter() - started)


def bench_streams(messages: int = 20_000, batch: int = 100, rounds: int = 3, io_ms: float = 0.5) -> list[Row]:
    """Messages/s processed and acknowledged: labkit's Worker next to a raw pipelined XREADGROUP+XACK loop
    (the two alternating, `rounds` times, medians), then 1, 2 and 4 Workers in threads sharing a group with
    a handler that waits `io_ms` per message (an I/O-bound job)."""
    from labkit.streams import Worker, ensure_group

    rows: list[Row] = []
    with Server(modules=False) as server:
        r = server.client()
        for first in range(0, messages, 1000):
            pipe = r.pipeline(transaction=False)
            for i in range(first, min(first + 1000, messages)):
                pipe.xadd("bench", {"n": i, "payload": "x" * 100})
            pipe.execute()
        rates: dict[str, list[float]] = {"raw pipelined XREADGROUP+XACK": [], "labkit Worker": []}
        for k in range(rounds):
            for name in rates:
                group = f"{name}-{k}"
                ensure_group(r, "bench", group)
                started = time.perf_counter()
                if name.startswith("raw"):
                    handled = _drain_raw(r, "bench", group, batch)
                else:
                    handled = Worker(r, "bench", group, "w", lambda i, f: None, batch=batch,
                                     block_ms=0).run(max_messages=messages)
                rates[name].append(handled / (time.perf_counter() - started))
        rows += [(f"messages/s: {name}", statistics.median(v)) for name, v in rates.items()]
        for consumers in (1, 2, 4):
            rate = _consumers_rate(r, f"io-{consumers}", consumers, min(messages, 2000), io_ms)
            rows.append((f"messages/s: {consumers} Worker(s), {io_ms} ms handler", rate))
    return rows


def _reads(clients: list) -> list[int]:
    return [int(c.info("stats")["total_reads_processed"]) for c in clients]


def _round_trips_per_acquire(clients: list, acquire: Callable[[], object], release: Callable[[], object],
                             n: int = 50) -> float:
    """Requests the servers read during acquire() alone, per call, summed over servers (each INFO that
    measures counts itself once per server, subtracted)."""
    total = 0
    for _ in range(n):
        before = _reads(clients)
        acquire()
        after = _reads(clients)
        release()
        total += sum(a - b - 1 for a, b in zip(after, before, strict=True))
    return total / n


def bench_locks(reps: int = 300) -> list[Row]:
    """Uncontended acquire+release, median microseconds timed in turns: labkit's Lock next to redis-py's on
    one server, labkit's Redlock next to pottery's on three; then round trips per acquire."""
    from pottery import Redlock as PotteryRedlock

    from labkit.locks import Lock, Redlock
    from labkit.server import nodes

    rows: list[Row] = []
    with nodes(3) as servers:
        clients = [s.client() for s in servers]
        r = clients[0]
        ours, theirs = Lock(r, "bench", ttl_ms=10_000), r.lock("bench-redispy", timeout=10)
        ours_rl = Redlock(clients, "bench", ttl_ms=10_000)
        pottery = PotteryRedlock(key="bench-pottery", masters=set(clients), auto_release_time=10)
        contenders = {
            "redis-py Lock, 1 server": (lambda: theirs.acquire(blocking=False), theirs.release, clients[:1]),
            "labkit Lock, 1 server": (lambda: ours.acquire(blocking=False), ours.release, clients[:1]),
            "pottery Redlock, 3 servers": (lambda: pottery.acquire(blocking=False), pottery.release, clients),
            "labkit Redlock, 3 servers": (ours_rl.acquire, ours_rl.release, clients),
        }
        for acquire, release, _ in contenders.values():  # load scripts and connections before timing
            acquire()
            release()
        medians = side_by_side({name: lambda a=a, rel=rel: (a(), rel()) for name, (a, rel, _) in contenders.items()},
                               reps=reps)
        rows += [(f"acquire+release us: {name}", us) for name, us in medians.items()]
        rows += [(f"round trips per acquire: {name}", _round_trips_per_acquire(cs, a, rel))
                 for name, (a, rel, cs) in contenders.items()]
    return rows


def clustered_vectors(n: int, seed: int = 7, spread: float = 0.05):
    """`n` unit vectors scattered around the lab corpus's real embeddings (clusters, like real data)."""
    import numpy as np

    from labkit.vectors import Embedder, corpus_texts

    rng = np.random.default_rng(seed)
    centres = Embedder(precomputed=True).embed(corpus_texts())
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, spread, (n, centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_vectors(r, prefix: str, vectors) -> None:
    """HSET each vector as `embedding` under `prefix<i>`, 1,000 per round trip."""
    for first in range(0, len(vectors), 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(first, min(first + 1000, len(vectors))):
            pipe.hset(f"{prefix}{i}", mapping={"embedding": vectors[i].tobytes()})
        pipe.execute()


def _semantic_cache_rows(server: Server, threshold: float, reps: int) -> list[Row]:
    from redisvl.extensions.cache.llm import SemanticCache as RedisVLCache
    from redisvl.utils.vectorize import CustomVectorizer

    from labkit.vectors import Embedder, SemanticCache, corpus

    data, embedder = corpus(), Embedder(precomputed=True)
    seeds = [(g["questions"][0], g["id"]) for g in data["groups"]]
    queries = [(q, g["id"]) for g in data["groups"] for q in g["questions"][1:]]
    queries += [(d["question"], None) for d in data["distractors"]]
    probe = [1.0] + [0.0] * (embedder.dim - 1)  # RedisVL embeds a test string to learn the dimension

    def embed(text: str) -> list[float]:
        return probe if text == "dimension test" else embedder(text).tolist()

    ours = SemanticCache(server.client(), name="bench-labkit", threshold=threshold, ttl=None, embedder=embedder)
    theirs = RedisVLCache(name="bench-redisvl", redis_url=server.url, distance_threshold=threshold,
                          vectorizer=CustomVectorizer(embed=embed))
    for prompt, group in seeds:
        ours.put(prompt, group)
        theirs.store(prompt=prompt, response=group)
    lookups = {"labkit SemanticCache": lambda q: (h.fields["response"] if (h := ours.get(q)) else None),
               "RedisVL SemanticCache": lambda q: (h[0]["response"] if (h := theirs.check(prompt=q)) else None)}
    rows: list[Row] = []
    for name, lookup in lookups.items():
        answers = [(lookup(q), group) for q, group in queries]
        paraphrases = sum(group is not None for _, group in queries)
        rows.append((f"semantic cache {name}: true hits of {paraphrases} paraphrases",
                     sum(a is not None and a == g for a, g in answers)))
        rows.append((f"semantic cache {name}: false hits of {len(queries)} queries",
                     sum(a is not None and a != g for a, g in answers)))
    cycle = iter(range(10**9))
    medians = side_by_side({name: lambda f=f: f(queries[next(cycle) % len(queries)][0])
                            for name, f in lookups.items()}, reps=reps)
    rows += [(f"semantic cache {name}: lookup us", us) for name, us in medians.items()]
    return rows


def bench_vectors(n: int = 20_000, queries: int = 200, threshold: float = 0.4) -> list[Row]:
    """Recall@10 and queries/s: HNSW (several EF_RUNTIME) next to FLAT and numpy brute force on `n` clustered
    vectors, queries timed in turns; then labkit's SemanticCache next to RedisVL's on the corpus."""
    import numpy as np

    from labkit.vectors import create_index, knn, wait_indexed

    data = clustered_vectors(n)
    probes = clustered_vectors(queries, seed=8)
    exact = [set(np.argsort(-(data @ q))[:10]) for q in probes]
    rows: list[Row] = []
    with Server() as server:
        r = server.client()
        for algorithm, params in (("FLAT", {}), ("HNSW", {"M": 16, "EF_CONSTRUCTION": 200})):
            create_index(r, algorithm, prefix=f"{algorithm}:", algorithm=algorithm, **params)
            started = time.perf_counter()
            load_vectors(r, f"{algorithm}:", data)
            wait_indexed(r, algorithm)
            rows.append((f"build s: {algorithm}", time.perf_counter() - started))
        contenders = {
            "numpy brute force": lambda q: [int(i) for i in np.argpartition(-(data @ q), 10)[:10]],
            "FLAT": lambda q: [int(h.key.split(":")[1]) for h in knn(r, "FLAT", q, k=10)],
        }
        for ef in (10, 50, 100):
            contenders[f"HNSW ef_runtime {ef}"] = lambda q, ef=ef: [int(h.key.split(":")[1])
                                                                   for h in knn(r, "HNSW", q, k=10, ef_runtime=ef)]
        for name, search in contenders.items():
            rows.append((f"recall@10: {name}", float(np.mean([len(set(search(q)) & e) / 10
                                                               for q, e in zip(probes, exact, strict=True)]))))
        cycle = iter(range(10**9))
        medians = side_by_side({name: lambda s=s: s(probes[next(cycle) % queries]) for name, s in contenders.items()},
                               reps=queries)
        rows += [(f"queries/s: {name}", 1e6 / us) for name, us in medians.items()]
        rows += _semantic_cache_rows(server, threshold, reps=300)
    return rows


def _print_vectors(rows: list[Row]) -> None:
    table = dict(rows)
    for name, value in rows:
        note = ""
        if name.startswith("queries/s"):
            note = f"{value / table['queries/s: FLAT']:5.2f}x FLAT"
        elif name.endswith("lookup us"):
            note = f"{value / table['semantic cache RedisVL SemanticCache: lookup us']:5.2f}x RedisVL"
        print(f"{name:64} {value:10,.3f}   {note}" if value < 10 else f"{name:64} {value:10,.0f}   {note}")


SUITES: dict[str, Callable[[], list[Row]]] = {
    "server": bench_server, "ratelimit": bench_ratelimit, "cache": bench_cache, "streams": bench_streams,
    "locks": bench_locks, "vectors": bench_vectors,
}


def run(suite: str = "server") -> list[Row]:
    """Run one suite and print its table; the first row of a group is the baseline of its ratios."""
    rows = SUITES[suite]()
    if suite in PRINTERS:
        PRINTERS[suite](rows)
        return rows
    base = rows[0][1]
    print(f"{'benchmark':40} {'median ms':>10} {'ratio':>7}")
    for name, ms in rows:
        print(f"{name:40} {ms:10.1f} {ms / base:7.2f}")
    return rows


def _print_cache(rows: list[Row]) -> None:
    table = dict(rows)
    raw = table["hits/s: raw GET + json.loads"]
    for name, value in rows:
        if name.startswith("hits/s"):
            print(f"{name:48} {value:10,.0f}   {value / raw:5.2f}x raw GET")
        else:
            print(f"{name:48} {value:10,.0f}")


def _print_ratelimit(rows: list[Row]) -> None:
    table = dict(rows)
    names = dict.fromkeys(name.split(":")[0] for name, _ in rows)
    base1 = table["limits moving window: decisions/s, 1 client"]
    base4 = table["limits moving window: decisions/s, 4 clients"]
    print(f"{'limiter':36} {'1 client/s':>11} {'x limits MW':>11} {'4 clients/s':>12} {'x limits MW':>11} {'RTT':>5}")
    for name in names:
        one, four = table[f"{name}: decisions/s, 1 client"], table[f"{name}: decisions/s, 4 clients"]
        rtt = table[f"{name}: round trips per decision"]
        print(f"{name:36} {one:11,.0f} {one / base1:11.2f} {four:12,.0f} {four / base4:11.2f} {rtt:5.2f}")


def _print_streams(rows: list[Row]) -> None:
    raw = dict(rows)["messages/s: raw pipelined XREADGROUP+XACK"]
    for name, value in rows:
        ratio = f"{value / raw:5.2f}x raw" if "raw" in name or "labkit" in name else ""
        print(f"{name:52} {value:10,.0f}   {ratio}")


def _print_locks(rows: list[Row]) -> None:
    table = dict(rows)
    for name, value in rows:
        kind, _, who = name.partition(": ")
        if kind.startswith("acquire"):
            base = table[f"{kind}: {'redis-py Lock, 1 server' if '1 server' in who else 'pottery Redlock, 3 servers'}"]
            print(f"{name:56} {value:8.0f}   {value / base:5.2f}x")
        else:
            print(f"{name:56} {value:8.2f}")


PRINTERS: dict[str, Callable[[list[Row]], None]] = {
    "ratelimit": _print_ratelimit, "cache": _print_cache, "streams": _print_streams, "locks": _print_locks,
    "vectors": _print_vectors,
}
