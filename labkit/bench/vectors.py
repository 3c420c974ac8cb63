"""Suite `vectors`: HNSW next to FLAT and numpy brute force, then labkit's SemanticCache next to RedisVL's."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from labkit.bench.core import Row, cycling, rate_row, side_by_side_rounds
from labkit.server.process import Server

SUITE = "vectors"
EXACT = "numpy brute force"
FLAT = "FLAT"
REDISVL = "RedisVL SemanticCache"


def clustered_vectors(n: int, seed: int = 7, spread: float = 0.05):
    """`n` unit vectors scattered around the lab corpus's real embeddings (clusters, like real data)."""
    import numpy as np

    from labkit.vectors import Embedder, corpus_texts

    rng = np.random.default_rng(seed)
    centres = Embedder(precomputed=True).embed(corpus_texts())
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, spread, (n, centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def load_vectors(r: redis.Redis, prefix: str, vectors) -> None:
    """HSET each vector as `embedding` under `prefix<i>`, 1,000 per round trip."""
    for first in range(0, len(vectors), 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(first, min(first + 1000, len(vectors))):
            pipe.hset(f"{prefix}{i}", mapping={"embedding": vectors[i].tobytes()})
        pipe.execute()


def _build_rows(r: redis.Redis, data) -> list[Row]:
    """Seconds to load and index `data` with FLAT (the baseline) and with HNSW."""
    from labkit.vectors import create_index, wait_indexed

    rows: list[Row] = []
    for algorithm, params in ((FLAT, {}), ("HNSW", {"M": 16, "EF_CONSTRUCTION": 200})):
        create_index(r, algorithm, prefix=f"{algorithm}:", algorithm=algorithm, **params)
        started = time.perf_counter()
        load_vectors(r, f"{algorithm}:", data)
        wait_indexed(r, algorithm)
        rows.append(Row(SUITE, "index build", algorithm, time.perf_counter() - started, "s", algorithm == FLAT))
    return rows


def _searches(r: redis.Redis, data) -> dict[str, Callable[[Any], list[int]]]:
    """The ids of the 10 nearest neighbours of a query, from each contender."""
    import numpy as np

    from labkit.vectors import knn

    searches: dict[str, Callable[[Any], list[int]]] = {
        EXACT: lambda q: [int(i) for i in np.argpartition(-(data @ q), 10)[:10]],
        FLAT: lambda q: [int(h.key.split(":")[1]) for h in knn(r, "FLAT", q, k=10)],
    }
    for ef in (10, 50, 100):
        searches[f"HNSW ef_runtime {ef}"] = lambda q, ef=ef: [int(h.key.split(":")[1])
                                                              for h in knn(r, "HNSW", q, k=10, ef_runtime=ef)]
    return searches


def _semantic_caches(server: Server, threshold: float, groups: list[dict]) -> dict[str, Callable[[str], object]]:
    """Lookups of labkit's and RedisVL's semantic caches, both seeded with the first question of each group."""
    from redisvl.extensions.cache.llm import SemanticCache as RedisVLCache
    from redisvl.utils.vectorize import CustomVectorizer

    from labkit.vectors import Embedder, SemanticCache

    embedder = Embedder(precomputed=True)
    probe = [1.0] + [0.0] * (embedder.dim - 1)  # RedisVL embeds a test string to learn the dimension

    def embed(text: str) -> list[float]:
        return probe if text == "dimension test" else embedder(text).tolist()

    ours = SemanticCache(server.client(), name="bench-labkit", threshold=threshold, ttl=None, embedder=embedder)
    theirs = RedisVLCache(name="bench-redisvl", redis_url=server.url, distance_threshold=threshold,
                          vectorizer=CustomVectorizer(embed=embed))
    for group in groups:
        ours.put(group["questions"][0], group["id"])
        theirs.store(prompt=group["questions"][0], response=group["id"])
    return {"labkit SemanticCache": lambda q: (h.fields["response"] if (h := ours.get(q)) else None),
            REDISVL: lambda q: (h[0]["response"] if (h := theirs.check(prompt=q)) else None)}


def _semantic_cache_rows(server: Server, threshold: float, reps: int) -> list[Row]:
    """True and false hits over the corpus's paraphrases and distractors, and lookup latency (timed in turns)."""
    from labkit.vectors import corpus

    data = corpus()
    queries = [(q, g["id"]) for g in data["groups"] for q in g["questions"][1:]]
    queries += [(d["question"], None) for d in data["distractors"]]
    paraphrases = sum(group is not None for _, group in queries)
    lookups = _semantic_caches(server, threshold, data["groups"])
    rows: list[Row] = []
    for name, lookup in lookups.items():
        answers = [(lookup(q), group) for q, group in queries]
        base = name == REDISVL
        rows.append(Row(SUITE, f"semantic cache: true hits of {paraphrases} paraphrases", name,
                        sum(a is not None and a == g for a, g in answers), "hits", base))
        rows.append(Row(SUITE, f"semantic cache: false hits of {len(queries)} queries", name,
                        sum(a is not None and a != g for a, g in answers), "hits", base))
    texts = [text for text, _ in queries]
    timed = side_by_side_rounds({name: cycling(f, texts) for name, f in lookups.items()}, reps=reps)
    rows += [Row(SUITE, "semantic cache: lookup", name, us, "us", name == REDISVL, rounds)
             for name, (us, rounds) in timed.items()]
    return rows


def run(n: int = 20_000, queries: int = 200, threshold: float = 0.4) -> list[Row]:
    """Recall@10 and queries/s: HNSW (several EF_RUNTIME) next to FLAT and numpy brute force on `n` clustered
    vectors, queries timed in turns; then labkit's SemanticCache next to RedisVL's (the baseline) on the
    corpus."""
    import numpy as np

    data = clustered_vectors(n)
    probes = clustered_vectors(queries, seed=8)
    exact = [set(np.argsort(-(data @ q))[:10]) for q in probes]
    with Server() as server:
        r = server.client()
        rows = _build_rows(r, data)
        searches = _searches(r, data)
        for name, search in searches.items():
            recall = np.mean([len(set(search(q)) & e) / 10 for q, e in zip(probes, exact, strict=True)])
            rows.append(Row(SUITE, "recall@10", name, recall, "fraction", name == EXACT))
        timed = side_by_side_rounds({name: cycling(s, probes) for name, s in searches.items()}, reps=queries)
        rows += [rate_row(SUITE, "queries per second", name, t, "queries/s", name == FLAT) for name, t in timed.items()]
        rows += _semantic_cache_rows(server, threshold, reps=300)
    return rows
