"""The lesson 07 module (`labkit.lessons.l07_vector_search`): each check accepts the reference answer and rejects the
known-wrong ones."""

from labkit.lessons import l07_vector_search as lesson
from labkit.vectors import knn


def _topic_right(r, index, vector, topic, k):
    return [h.key for h in knn(r, index, vector, k=k, filter=f"@topic:{{{topic}}}")]


def test_topic_knn_accepts_a_prefiltered_knn(r, ns):
    assert lesson.check_topic_knn(r, ns, _topic_right)


def test_topic_knn_rejects_filtering_after_the_knn(r, ns):
    def post_filter(r, index, vector, topic, k):
        hits = knn(r, index, vector, k=k, return_fields=("topic",))
        return [h.key for h in hits if h.fields["topic"] == topic]

    result = lesson.check_topic_knn(r, ns, post_filter)
    assert not result and "instead of 5" in result.message


def test_topic_knn_rejects_farthest_first(r, ns):
    result = lesson.check_topic_knn(r, ns, lambda *a: _topic_right(*a)[::-1])
    assert not result and "wrong order" in result.message


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


def test_similarity_lookup_accepts_distance_below_one_minus_similarity(r, ns):
    assert lesson.check_similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d <= 1 - s))


def test_similarity_lookup_rejects_the_score_taken_as_a_similarity(r, ns):
    result = lesson.check_similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d >= s))
    assert not result and "orthogonal" in result.message


def test_similarity_lookup_rejects_the_similarity_used_as_the_distance_cut(r, ns):
    result = lesson.check_similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d <= s))
    assert not result and "paraphrases got a different answer" in result.message


def _topic_by_hand(r, index, vector, topic, k):
    reply = r.execute_command("FT.SEARCH", index, f"(@topic:{{{topic}}})=>[KNN {k} @embedding $vec AS distance]",
                              "SORTBY", "distance", "ASC", "RETURN", 1, "distance", "PARAMS", 2, "vec",
                              vector.tobytes(), "DIALECT", 2)
    return [row["id"] for row in reply["results"]] if isinstance(reply, dict) else reply[1::2]


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
