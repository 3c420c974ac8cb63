"""The lesson 07 module (`labkit.lessons.l07_vector_search`): each check accepts the reference answer and rejects the
known-wrong ones."""

import numpy as np
import pytest
import redis

from labkit.bench import clustered_vectors, load_vectors
from labkit.lessons import l07_vector_search as lesson
from labkit.vectors import create_index, drop_indexes, knn, wait_indexed


def _topic_right(r, index, vector, topic, k):
    return [h.key for h in knn(r, index, vector, k=k, filter=f"@topic:{{{topic}}}")]


@pytest.mark.needs("search")
def test_topic_knn_accepts_a_prefiltered_knn(r, ns):
    assert lesson.check_topic_knn(r, ns, _topic_right)


@pytest.mark.needs("search")
def test_topic_knn_rejects_filtering_after_the_knn(r, ns):
    def post_filter(r, index, vector, topic, k):
        hits = knn(r, index, vector, k=k, return_fields=("topic",))
        return [h.key for h in hits if h.fields["topic"] == topic]

    result = lesson.check_topic_knn(r, ns, post_filter)
    assert not result and "instead of 5" in result.message


@pytest.mark.needs("search")
def test_topic_knn_rejects_a_hybrid_ft_search_without_limit(r, ns):
    """FT.SEARCH's default LIMIT 0 10 returns 10 of a KNN 12: right for k=5, short for k=12."""
    result = lesson.check_topic_knn(r, ns, lambda *a: _topic_by_hand(*a, limit=False))
    assert not result and "10 results for k=12" in result.message and "LIMIT 0 12" in result.message


@pytest.mark.needs("search")
def test_topic_knn_rejects_farthest_first(r, ns):
    result = lesson.check_topic_knn(r, ns, lambda *a: _topic_right(*a)[::-1])
    assert not result and "wrong order" in result.message


def _topic_query(r, index, vector, query, k, returned="distance"):
    """One hybrid FT.SEARCH by hand for `query`, sorted by distance, LIMIT 0 k."""
    reply = r.execute_command("FT.SEARCH", index, query, "SORTBY", "distance", "ASC", "LIMIT", 0, k,
                              "RETURN", 1, returned, "PARAMS", 2, "vec", vector.tobytes(), "DIALECT", 2)
    return reply["results"]


@pytest.mark.needs("search")
def test_topic_knn_rejects_a_topic_written_into_the_query(r, ns):
    def billing_always(r, index, vector, topic, k):
        query = f"(@topic:{{billing}})=>[KNN {k} @embedding $vec AS distance]"
        return [row["id"] for row in _topic_query(r, index, vector, query, k)]

    result = lesson.check_topic_knn(r, ns, billing_always)
    assert not result and "'account'" in result.message and "billing" in result.message, result.message


@pytest.mark.needs("search")
def test_topic_knn_rejects_a_knn_over_everything_filtered_in_python(r, ns):
    """KNN 1000 over every document, then the topic kept in Python: the right keys, from a post-filter."""
    def over_fetch(r, index, vector, topic, k):
        rows = _topic_query(r, index, vector, "*=>[KNN 1000 @embedding $vec AS distance]", 1000, returned="topic")
        return [row["id"] for row in rows if row["extra_attributes"]["topic"] == topic][:k]

    result = lesson.check_topic_knn(r, ns, over_fetch)
    assert not result and "in front of" in result.message and "KNN 1000" in result.message, result.message


@pytest.mark.needs("search")
def test_topic_knn_rejects_a_knn_widened_until_enough_survive_the_filter(r, ns):
    """Two FT.SEARCH for one answer (a KNN widened until enough survive the filter) is a post-filter too."""
    def widening(r, index, vector, topic, k):
        for wanted in (k, 1000):
            rows = _topic_query(r, index, vector, f"*=>[KNN {wanted} @embedding $vec AS distance]", wanted,
                                returned="topic")
            kept = [row["id"] for row in rows if row["extra_attributes"]["topic"] == topic][:k]
            if len(kept) == k:
                return kept
        return kept

    result = lesson.check_topic_knn(r, ns, widening)
    assert not result and "FT.SEARCH" in result.message, result.message


@pytest.mark.needs("search")
def test_topic_knn_accepts_the_topic_and_k_passed_as_parameters(r, ns):
    def with_params(r, index, vector, topic, k):
        reply = r.execute_command("FT.SEARCH", index, "(@topic:{$topic})=>[KNN $k @embedding $vec AS distance]",
                                  "SORTBY", "distance", "ASC", "LIMIT", 0, k, "RETURN", 1, "distance",
                                  "PARAMS", 6, "topic", topic, "k", k, "vec", vector.tobytes(), "DIALECT", 2)
        return [row["id"] for row in reply["results"]]

    assert lesson.check_topic_knn(r, ns, with_params)


@pytest.mark.needs("search")
def test_topic_knn_explains_a_reply_with_the_vector_in_it(r, ns):
    """Without RETURN the reply carries the binary vector, which a decoding client cannot read as text."""
    def everything_returned(r, index, vector, topic, k):
        reply = r.execute_command("FT.SEARCH", index, f"(@topic:{{{topic}}})=>[KNN {k} @embedding $vec AS distance]",
                                  "SORTBY", "distance", "ASC", "LIMIT", 0, k, "PARAMS", 2, "vec", vector.tobytes(),
                                  "DIALECT", 2)
        return [row["id"] for row in reply["results"]]

    result = lesson.check_topic_knn(r, ns, everything_returned)
    assert not result and "RETURN only the fields you need" in result.message, result.message


@pytest.mark.parametrize("answer", [None, "nearest_in_topic", 5])
def test_checks_explain_an_answer_that_is_not_a_function(r, ns, answer):
    """A learner passing what their function returned (or its name) gets told to pass the function itself."""
    for result in (lesson.check_topic_knn(r, ns, answer), lesson.check_similarity_lookup(r, ns, answer),
                   lesson.check_threshold(answer)):
        assert not result and "the function itself" in result.message, result.message
    assert ns.keys(r) == []


@pytest.mark.needs("search")
def test_topic_knn_explains_a_query_without_dialect_2(r, ns):
    def dialect_1(r, index, vector, topic, k):
        reply = r.execute_command("FT.SEARCH", index, f"(@topic:{{{topic}}})=>[KNN {k} @embedding $vec]",
                                  "PARAMS", 2, "vec", vector.tobytes())
        return [row["id"] for row in reply["results"]] if isinstance(reply, dict) else reply[1::2]

    result = lesson.check_topic_knn(r, ns, dialect_1)
    assert not result and "DIALECT 2" in result.message


def _lookup(r, index, vector, min_similarity, accept):
    hits = knn(r, index, vector, k=1, return_fields=("text",))
    return hits[0].fields["text"] if hits and accept(hits[0].distance, min_similarity) else None


@pytest.mark.needs("search")
def test_similarity_lookup_accepts_distance_below_one_minus_similarity(r, ns):
    assert lesson.check_similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d <= 1 - s))


@pytest.mark.needs("search")
def test_similarity_lookup_rejects_the_score_taken_as_a_similarity(r, ns):
    result = lesson.check_similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d >= s))
    assert not result and "orthogonal" in result.message


@pytest.mark.needs("search")
def test_similarity_lookup_rejects_the_similarity_used_as_the_distance_cut(r, ns):
    result = lesson.check_similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d <= s))
    assert not result and "paraphrases got a different answer" in result.message


@pytest.mark.needs("search")
def test_search_module_names_the_module_and_its_version(r):
    named = lesson.search_module(r)
    listed = next(m for m in r.execute_command("MODULE", "LIST") if m["name"] == "search")
    major, minor, patch = (int(part) for part in named.split()[1].split("."))
    assert named.startswith("search ") and major * 10000 + minor * 100 + patch == int(listed["ver"])
    assert named.endswith(f"({listed['path'].rsplit('/', 1)[-1]})")


def test_vector_sets_find_the_exact_neighbours_with_similarity_scores_where_the_engine_has_them(fresh):
    r, caps = fresh
    points, query = clustered_vectors(300, seed=3), clustered_vectors(1, seed=4)[0]
    run = lesson.vector_set_run(r, caps, points, query, k=5)
    assert run.server == f"{caps.engine} {caps.version}"
    if not run.supported:
        with pytest.raises(redis.ResponseError, match="unknown command"):  # the server really lacks them
            r.execute_command("VADD", "probe", "VALUES", 2, 0.5, 0.5, "e")
        assert run.top == [] and "unknown command" in run.reason
        return
    cosine = points @ query
    assert {row for row, _ in run.top} == set(np.argsort(-cosine)[:5].tolist())
    assert all(abs(score - (1 + cosine[row]) / 2) < 0.01 for row, score in run.top)
    assert run.quantization == "int8" and run.bytes_noquant > 1.5 * run.bytes_default


@pytest.mark.needs("search")
def test_server_time_per_query_ranks_hnsw_far_ahead_of_flat(r, ns):
    points, probes = clustered_vectors(10_000, seed=5), clustered_vectors(20, seed=6)
    load_vectors(r, ns.key("v") + ":", points)
    for name, config in (("flat", {"algorithm": "FLAT"}), ("hnsw", {"algorithm": "HNSW", "M": 16})):
        create_index(r, ns.key(name), prefix=ns.key("v") + ":", **config)
        wait_indexed(r, ns.key(name))
    try:
        usec = lesson.server_usec_per_query(r, {"flat": lambda q: knn(r, ns.key("flat"), q, k=10),
                                                "hnsw": lambda q: knn(r, ns.key("hnsw"), q, k=10, ef_runtime=50)},
                                            probes, batch=20, rounds=5)
    finally:
        drop_indexes(r, ns.prefix)
    assert usec["hnsw"] > 0 and usec["flat"] > 2 * usec["hnsw"], usec


def _topic_by_hand(r, index, vector, topic, k, limit=True):
    reply = r.execute_command("FT.SEARCH", index, f"(@topic:{{{topic}}})=>[KNN {k} @embedding $vec AS distance]",
                              "SORTBY", "distance", "ASC", *(["LIMIT", 0, k] if limit else []), "RETURN", 1,
                              "distance", "PARAMS", 2, "vec", vector.tobytes(), "DIALECT", 2)
    return [row["id"] for row in reply["results"]] if isinstance(reply, dict) else reply[1::2]


@pytest.mark.needs("search")
def test_topic_knn_accepts_a_hybrid_ft_search_written_by_hand(r, ns):
    assert lesson.check_topic_knn(r, ns, _topic_by_hand)


def _best_threshold(distances, right, target):
    meeting = [t for t in distances if lesson.precision_recall(distances, right, t)[0] >= target]
    return max(meeting, key=lambda t: lesson.precision_recall(distances, right, t)[1])


def _first_failure(distances, right, target):
    best = 0.0
    for t in sorted(distances):
        if lesson.precision_recall(distances, right, t)[0] < target:
            break
        best = t
    return best


def test_threshold_accepts_the_largest_recall_meeting_the_target():
    assert lesson.check_threshold(_best_threshold)


def test_threshold_rejects_stopping_at_the_first_dip_in_precision():
    result = lesson.check_threshold(_first_failure)
    assert not result and "not monotonic" in result.message


def test_threshold_rejects_one_minus_the_target_as_a_threshold():
    result = lesson.check_threshold(lambda distances, right, target: 1 - target)
    assert not result and "too tight" in result.message


def test_threshold_rejects_a_threshold_chosen_by_recall_alone():
    def by_recall(distances, right, target):
        return max(d for d, ok in zip(distances, right, strict=True) if ok)

    result = lesson.check_threshold(by_recall)
    assert not result and "below the target" in result.message


def test_threshold_rejects_a_similarity_outside_the_distance_range():
    result = lesson.check_threshold(lambda distances, right, target: -0.5)
    assert not result and "DISTANCE" in result.message


def test_precision_recall_counts_a_threshold_without_hits_as_precise():
    distances, right = [0.1, 0.2, 0.3, 0.4], [True, False, True, True]
    assert lesson.precision_recall(distances, right, 0.05) == (1.0, 0)
    assert lesson.precision_recall(distances, right, 0.2) == (0.5, 1)
    assert lesson.precision_recall(distances, right, 0.4) == (0.75, 3)


def _sent(query, *params):
    """An FT.SEARCH's arguments as the trace records them, with its PARAMS (the vector's as decoded text)."""
    params = params or ("vec", "\x00\ufffd$k")
    return ("FT.SEARCH", "idx", query, "SORTBY", "d", "PARAMS", str(len(params)), *params, "DIALECT", "2")


def test_prefilters_reads_the_filter_in_front_of_the_knn_clause_with_its_parameters():
    assert lesson.prefilters(_sent("(@topic:{billing})=>[KNN 5 @embedding $vec AS d]"), "billing", 5)
    assert lesson.prefilters(_sent("@topic:{ billing }=>[knn 5 @embedding $vec]"), "billing", 5)
    assert lesson.prefilters(_sent("(@topic:{$t})=>[KNN $k @embedding $vec]", "t", "billing", "k", "5", "vec", "x"),
                             "billing", 5)
    assert not lesson.prefilters(_sent("*=>[KNN 1000 @embedding $vec]"), "billing", 5)
    assert not lesson.prefilters(_sent("(@topic:{billing})=>[KNN 50 @embedding $vec]"), "billing", 5)
    assert not lesson.prefilters(_sent("(@topic:{billing})=>[KNN 5 @embedding $vec]"), "account", 5)
    assert not lesson.prefilters(("FT.SEARCH", "idx"), "billing", 5)
