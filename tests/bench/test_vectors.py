import os

import pytest
import redis

from labkit.bench import vectors
from labkit.server.lab import URL_ENV

from . import assert_spread_printed, baselines, values


@pytest.mark.needs("search")
def test_measures_recall_and_compares_with_redisvl():
    rows = vectors.run(n=2000, queries=30)
    table = values(rows)
    assert table[("recall@10", "FLAT")] == table[("recall@10", "numpy brute force")] == 1.0
    assert table[("recall@10", "HNSW ef_runtime 100")] >= 0.9
    for metric in ("semantic cache: true hits of 150 paraphrases", "semantic cache: false hits of 210 queries"):
        assert table[(metric, "labkit SemanticCache")] == table[(metric, "RedisVL SemanticCache")]
    assert table[("semantic cache: lookup", "labkit SemanticCache")] > 0
    assert_spread_printed(rows, "queries per second")
    assert_spread_printed(rows, "semantic cache: lookup")
    assert baselines(rows)["queries per second"] == "FLAT"
    assert baselines(rows)["semantic cache: lookup"] == "RedisVL SemanticCache"


def test_clustered_vectors_are_seeded_unit_vectors():
    import numpy as np

    first, again, other = vectors.clustered_vectors(50), vectors.clustered_vectors(50), vectors.clustered_vectors(50, 8)
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_load_vectors_writes_one_hash_per_vector(r, ns):
    data = vectors.clustered_vectors(3)
    vectors.load_vectors(r, ns.key("v") + ":", data)
    assert r.exists(*(ns.key("v", i) for i in range(3))) == 3
    binary = redis.Redis.from_url(os.environ[URL_ENV])  # vectors are bytes: no decoding
    assert binary.hget(ns.key("v", 1), "embedding") == data[1].tobytes()
    binary.close()
