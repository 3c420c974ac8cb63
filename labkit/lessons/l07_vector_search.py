"""Lesson 07, vector search and semantic cache (`notebooks/07_vector_search.ipynb`): Redis 8's vector sets on
every installed engine, and the exercise checks."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import redis

from labkit.bench import clustered_vectors, cycling, side_by_side
from labkit.clients import text
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Capabilities
from labkit.tracing import abridge, trace
from labkit.vectors import DIM, Embedder, corpus, create_index, index_exists, knn, to_bytes, wait_indexed


def search_module(r: redis.Redis) -> str:
    """The search module loaded into the server, as `MODULE LIST` names it: name, version (its `ver`, 21005 read
    as 2.10.5) and library file, say "search 2.10.5 (redisearch.so)"; "none" without one."""
    for module in r.execute_command("MODULE", "LIST"):
        entry = module if isinstance(module, dict) else dict(zip(module[::2], module[1::2], strict=True))
        entry = {text(key): value for key, value in entry.items()}
        if text(entry["name"]).lower() in ("search", "ft", "searchlight"):
            ver = int(entry["ver"])
            library = text(entry.get("path") or "").rsplit("/", 1)[-1] or "built in"
            return f"{text(entry['name'])} {ver // 10000}.{ver // 100 % 100}.{ver % 100} ({library})"
    return "none"


# -- 7.2 Redis 8's vector sets beside the search index ---------------------------------------------------------
@dataclass
class VectorSetRun:
    """The same vectors and query as a vector set (VADD, VSIM) on a fresh server of one engine."""

    server: str  # engine and version
    supported: bool  # capabilities().vector_sets
    reason: str = ""  # why not, where not
    top: list[tuple[int, float]] = field(default_factory=list)  # (vector's row, VSIM score), best first
    quantization: str = ""  # VADD's default, as VINFO reports it
    bytes_default: int = 0  # MEMORY USAGE of the set built with VADD's defaults
    bytes_noquant: int = 0  # ... and of the same set built with NOQUANT (full FLOAT32)


def _vector_set(r: redis.Redis, key: str, vectors: np.ndarray, *options: str) -> None:
    with r.pipeline(transaction=False) as pipe:
        for i, vector in enumerate(vectors):
            pipe.execute_command("VADD", key, "FP32", to_bytes(vector), str(i), *options)
        pipe.execute()


def vector_set_run(r: redis.Redis, caps: Capabilities, vectors: np.ndarray, query: np.ndarray,
                   k: int = 5) -> VectorSetRun:
    """On a server of its own (its keys are this experiment's; run it with `on_each_engine`): put `vectors`
    (element i is row i) in a vector set and ask VSIM for the `k` nearest to `query`, with scores; build it again
    with NOQUANT to compare the memory."""
    name = caps.server
    if not caps.vector_sets:
        return VectorSetRun(name, False, "no vector sets: VADD is an unknown command")
    _vector_set(r, "questions", vectors)
    _vector_set(r, "questions:exact", vectors, "NOQUANT")
    reply = r.execute_command("VSIM", "questions", "FP32", to_bytes(query), "WITHSCORES", "COUNT", k)
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    top = sorted(((int(e), float(s)) for e, s in pairs), key=lambda pair: -pair[1])
    info = r.execute_command("VINFO", "questions")
    return VectorSetRun(name, True, "", top, str(info["quant-type"]), r.memory_usage("questions"),
                        r.memory_usage("questions:exact"))


# -- 7.5 the server's own time per query -----------------------------------------------------------------------
def _searches_timed(r: redis.Redis, search: Callable[[np.ndarray], object], probes: np.ndarray) -> list[int]:
    """Each FT.SEARCH's own microseconds, as the SLOWLOG records them, for one query per probe."""
    r.slowlog_reset()
    for vector in probes:
        search(vector)
    entries = r.execute_command("SLOWLOG", "GET", len(probes) + 10, NEVER_DECODE=[])  # the vector is binary
    # each entry: id, time, microseconds, the command's arguments, client address, client name
    return [int(entry[2]) for entry in entries if bytes(entry[3][0]).upper() == b"FT.SEARCH"]


def server_usec_per_query(r: redis.Redis, searches: dict[str, Callable[[np.ndarray], object]], probes: np.ndarray,
                          *, batch: int = 50, rounds: int = 5) -> dict[str, float]:
    """For each contender (`search(vector)` sends one FT.SEARCH), the server's own microseconds per query, as the
    SLOWLOG records each command (logging all of them while this runs, its settings restored after): `rounds`
    batches of `batch` queries each, contenders taking turns; the median query. The client's work is not in it,
    and a query the busy machine's scheduler interrupted is an outlier the median ignores."""
    saved = r.config_get("slowlog-log-slower-than") | r.config_get("slowlog-max-len")
    r.config_set("slowlog-log-slower-than", 0)
    r.config_set("slowlog-max-len", batch + 10)
    usec: dict[str, list[int]] = {name: [] for name in searches}
    try:
        for _ in range(rounds):
            for name, search in searches.items():
                usec[name] += _searches_timed(r, search, probes[:batch])
    finally:
        for setting, value in saved.items():
            r.config_set(setting, value)
        r.slowlog_reset()
    return {name: float(np.median(values)) for name, values in usec.items()}


def _check_index(r: redis.Redis, ns: Namespace) -> tuple[str, str, list[tuple[str, str, str]], np.ndarray, Embedder]:
    """A small index of the corpus (hash documents with topic and embedding) for the checks."""
    data, embedder = corpus(), Embedder(precomputed=True)
    docs = [(q, g["topic"], g["id"]) for g in data["groups"] for q in g["questions"][:1]]
    docs += [(d["question"], d["topic"], "distractor") for d in data["distractors"]]
    index, prefix = ns.key("check-idx"), ns.key("check-doc") + ":"
    create_index(r, index, prefix=prefix, algorithm="FLAT", fields={"topic": "TAG", "group": "TAG"}, replace=True)
    vectors = embedder.embed([q for q, _, _ in docs])
    pipe = r.pipeline(transaction=False)
    for i, ((q, topic, group), vector) in enumerate(zip(docs, vectors, strict=True)):
        pipe.hset(f"{prefix}{i}", mapping={"text": q, "topic": topic, "group": group, "embedding": to_bytes(vector)})
    pipe.execute()
    wait_indexed(r, index)
    return index, prefix, docs, vectors, embedder


def _drop(r: redis.Redis, index: str) -> None:
    """Drop the check's index and its documents."""
    r.execute_command("FT.DROPINDEX", index, "DD")


TOPIC_ASKS = (("billing", 5), ("billing", 12), ("account", 5))  # 12 > 10: FT.SEARCH's default LIMIT 0 10 cuts a
# KNN 12 short unless the query says LIMIT 0 k; a second topic, so that the `topic` argument has to be used
NOT_A_FUNCTION = "pass the function itself, without (): {name}, not {answer!r}."


def _params(args: tuple[str, ...]) -> dict[str, str]:
    """An FT.SEARCH's PARAMS, name to value, as sent."""
    at = next((i for i in range(3, len(args)) if args[i].upper() == "PARAMS"), None)
    if at is None or not args[at + 1:at + 2] or not args[at + 1].isdigit():
        return {}
    pairs = args[at + 2:at + 2 + int(args[at + 1])]
    return dict(zip(pairs[::2], pairs[1::2], strict=False))  # an odd count: the server's error


def prefilters(args: tuple[str, ...], topic: str, k: int) -> bool:
    """Whether an FT.SEARCH (its arguments as sent) filters on `@topic:{<topic>}` in front of `=>[KNN <k> `, so
    that the KNN chooses among the matching documents only ($parameters read with the values PARAMS gives)."""
    params = _params(args)
    query = re.sub(r"\$(\w+)", lambda m: params.get(m[1], m[0]), args[2] if len(args) > 2 else "")
    before, arrow, after = query.partition("=>")
    return bool(arrow and re.search(rf"@topic:\{{\s*{re.escape(topic)}\s*\}}", before)
                and re.match(rf"\s*\[\s*KNN\s+{k}\s", after, re.IGNORECASE))


def _ask_topics(r: redis.Redis, index: str, vector: np.ndarray, nearest_in_topic: Callable
                ) -> tuple[dict[tuple[str, int], list[str]], dict[tuple[str, int], list[tuple[str, ...]]]]:
    """Each of TOPIC_ASKS put to the learner's function: the keys it returned, and the FT.SEARCH it sent."""
    answers, searches = {}, {}
    for topic, k in TOPIC_ASKS:
        with trace(r, show=False) as sent:
            answers[topic, k] = [text(key) for key in nearest_in_topic(r, index, vector, topic, k)]
        searches[topic, k] = [call.args for call in sent.calls if call.name == "FT.SEARCH"]
    return answers, searches


@check
def check_topic_knn(r: redis.Redis, ns: Namespace, nearest_in_topic: Callable) -> Result:
    """`nearest_in_topic(r, index, vector, topic, k)` returns the keys of the k documents nearest to
    `vector` among those whose TAG field `topic` is `topic`, nearest first (a pre-filtered KNN): asked for k 5
    and 12 in topic billing (the check's index holds 16 billing documents) and k 5 in topic account. Its
    commands are traced: one FT.SEARCH per question, with `@topic:{<topic>}` in front of `=>[KNN <k> `."""
    if not callable(nearest_in_topic):
        return Result(False, NOT_A_FUNCTION.format(name="nearest_in_topic", answer=nearest_in_topic))
    index, prefix, docs, vectors, embedder = _check_index(r, ns)
    query = embedder("I want to close my account permanently.")
    try:
        answers, searches = _ask_topics(r, index, np.asarray(query, dtype=np.float32), nearest_in_topic)
    except redis.ResponseError as err:
        return Result(False, f"the server answered {err}. Vector queries need DIALECT 2, and the vector passed as "
                             "a PARAMS blob of FLOAT32 bytes.")
    except UnicodeDecodeError:
        return Result(False, "the reply could not be decoded as text. RETURN only the fields you need: the vector "
                             "field is binary (`RETURN 1 distance`; the key comes back anyway).")
    finally:
        _drop(r, index)
    topic_of = {f"{prefix}{i}": topic for i, (_, topic, _) in enumerate(docs)}
    for (topic, k), got in answers.items():
        in_topic = [i for i, (_, t, _) in enumerate(docs) if t == topic]
        order = sorted(in_topic, key=lambda i: float(1 - vectors[i] @ query))
        problem = _wrong_keys(got, [f"{prefix}{i}" for i in order[:k]], topic, k, topic_of)
        if problem:
            return Result(False, problem)
    for (topic, k), sent in searches.items():
        if len(sent) != 1:
            return Result(False, f"topic {topic!r}, k={k}: {len(sent)} FT.SEARCH commands sent, expected one: the "
                                 f"filter goes inside the query, `(@topic:{{{topic}}})=>[KNN {k} ...]`, and the "
                                 "server answers in one go.")
        if not prefilters(sent[0], topic, k):
            return Result(False, f"topic {topic!r}, k={k}: the query sent was `{abridge(sent[0][2], 60)}`: the filter "
                                 f"goes in front of the KNN clause, `(@topic:{{{topic}}})=>[KNN {k} ...]`, so that KNN "
                                 "chooses among that topic's documents; fetching more neighbours than k and filtering "
                                 "them afterwards ranks every document, and can still come up short when the topic "
                                 "is rare.")
    asked = ", ".join(f"{topic} k={k}" for topic, k in TOPIC_ASKS)
    return Result(True, f"the nearest documents of the topic asked, nearest first ({asked}), each from one FT.SEARCH "
                        "whose filter ran before the KNN, with a LIMIT that let all k through.")


def _wrong_keys(got: list[str], expected: list[str], topic: str, k: int, topic_of: dict[str, str]) -> str:
    """What is wrong with the keys `got` for (topic, k), or "" if they are the `expected` ones."""
    if got == expected:
        return ""
    others = sorted({topic_of.get(key, "?") for key in got} - {topic})
    if got and others:
        return (f"asked for topic {topic!r}, k={k}, got documents of topic {', '.join(others)}: build the filter "
                "from the `topic` argument, not a topic written into the query.")
    if len(got) == 10 < k:
        return f"10 results for k={k}: FT.SEARCH returns 10 unless the command says `LIMIT 0 {k}`."
    if len(got) < k:
        return (f"{len(got)} results instead of {k}: filter inside the query, `(@topic:{{{topic}}})=>[KNN {k} ...]`, "
                f"so KNN picks among {topic} documents, rather than filtering the {k} nearest of all.")
    if set(got) == set(expected):
        return "the right documents in the wrong order: sort by the distance, ascending (0 = nearest)."
    return f"k={k}: got {got[:3]}..., expected {expected[:3]}...: KNN {k} among @topic:{{{topic}}} documents."


@check
def check_similarity_lookup(r: redis.Redis, ns: Namespace, lookup: Callable) -> Result:
    """`lookup(r, index, vector, min_similarity)` returns the cached `text` of the nearest entry if its
    cosine SIMILARITY is at least `min_similarity`, else None; the server reports cosine DISTANCE."""
    if not callable(lookup):
        return Result(False, NOT_A_FUNCTION.format(name="lookup", answer=lookup))
    index, _, docs, vectors, embedder = _check_index(r, ns)
    try:
        data = corpus()
        paraphrases = [q for g in data["groups"][:20] for q in g["questions"][1:]]
        unrelated = np.zeros(vectors.shape[1], dtype=np.float32)
        unrelated[0] = 1.0  # then made orthogonal to every cached vector
        basis, _ = np.linalg.qr(vectors.T)
        unrelated -= basis @ (basis.T @ unrelated)
        unrelated /= np.linalg.norm(unrelated)
        asked = embedder.embed(paraphrases)
        answers = [lookup(r, index, vector, 0.7) for vector in asked]
        orthogonal = lookup(r, index, unrelated, 0.7)
    finally:
        _drop(r, index)
    similarity = asked @ vectors.T  # one row per paraphrase, one column per cached prompt
    expected = [docs[int(row.argmax())][0] if row.max() >= 0.7 else None for row in similarity]
    problems = []
    if orthogonal is not None:
        problems.append(f"a vector orthogonal to every cached prompt (similarity 0) got {orthogonal!r}: the score is a "
                        "DISTANCE (1 - similarity), so `score >= min_similarity` accepts the least similar.")
    wrong = sum(a != e for a, e in zip(answers, expected, strict=True))
    if wrong:
        problems.append(f"{wrong} of {len(paraphrases)} paraphrases got a different answer than expected: hit when "
                        "distance <= 1 - min_similarity.")
    return verdict(problems, f"{sum(a is not None for a in answers)} of {len(paraphrases)} paraphrases hit at "
                             "similarity >= 0.7, and the orthogonal vector missed.")


def _labelled_nearest() -> tuple[list[float], list[bool]]:
    """Each paraphrase's and distractor's distance to its nearest cached first phrasing, and whether that
    entry's answer is the right one (never, for a distractor)."""
    data, embedder = corpus(), Embedder(precomputed=True)
    cached = embedder.embed([g["questions"][0] for g in data["groups"]])
    asked = [(q, g["id"]) for g in data["groups"] for q in g["questions"][1:]]
    asked += [(d["question"], None) for d in data["distractors"]]
    similarity = embedder.embed([q for q, _ in asked]) @ cached.T
    nearest = similarity.argmax(axis=1)
    distances = [float(1 - row[n]) for row, n in zip(similarity, nearest, strict=True)]
    right = [group == data["groups"][int(n)]["id"] for (_, group), n in zip(asked, nearest, strict=True)]
    return distances, right


def precision_recall(distances: list[float], right: list[bool], threshold: float) -> tuple[float, int]:
    """The precision of the hits at `threshold` (1.0 when there are none) and how many right answers it gives."""
    hits = [ok for d, ok in zip(distances, right, strict=True) if d <= threshold]
    return (sum(hits) / len(hits) if hits else 1.0), sum(hits)


@check
def check_threshold(pick_threshold: Callable, target: float = 0.85) -> Result:
    """`pick_threshold(distances, right, target)` returns the cosine-distance threshold that answers the most
    questions right while the hits' precision stays at least `target`, from labelled data: `distances[i]` is
    question i's distance to its nearest cached entry, `right[i]` whether that entry's answer is right."""
    if not callable(pick_threshold):
        return Result(False, NOT_A_FUNCTION.format(name="pick_threshold", answer=pick_threshold))
    distances, right = _labelled_nearest()
    best = max((precision_recall(distances, right, d)[1], d) for d in distances
               if precision_recall(distances, right, d)[0] >= target)
    threshold = pick_threshold(list(distances), list(right), target)
    if not isinstance(threshold, (int, float)) or not 0 <= threshold < 2:
        return Result(False, f"got {threshold!r}: a threshold is a cosine DISTANCE between 0 and 2.")
    precision, answered = precision_recall(distances, right, threshold)
    if precision < target:
        return Result(False, f"at {threshold:.3f} the hits' precision is {precision:.3f}, below the target {target}: "
                             "too loose (a similarity taken for a distance, or a threshold picked by recall alone?).")
    if answered < best[0]:
        return Result(False, f"too tight: {threshold:.3f} answers {answered} right where {best[1]:.3f} answers "
                             f"{best[0]} at precision >= {target}. Precision is not monotonic in the threshold: "
                             "try every observed distance, and keep the one that answers most within the target.")
    return Result(True, f"{threshold:.3f}: {answered} of the {sum(right)} answerable questions (nearest entry with "
                        f"the right answer) right at precision {precision:.3f} >= {target}.")


CROSSOVER_TIERS = ((1_000, "a"), (10_000, "b"), (50_000, "c"))  # size, and the key tier it adds
CROSSOVER_HNSW = ("M", 16, "EF_CONSTRUCTION", 20)  # a cheap build: the cell stays short


def crossover(r: redis.Redis, ns: Namespace, *, queries: int = 30, reps: int = 60) -> dict[int, dict[str, float]]:
    """FLAT against HNSW over 1k, 10k and 50k clustered vectors: per size, the median microseconds of a KNN 10
    query on each index (timed side by side, each asked the same probes in order) and HNSW's recall@10 at
    EF_RUNTIME 10 and 100. The vectors are loaded once, in tiers, and each size's index covers the first tiers
    (FT.CREATE ... PREFIX n); everything is dropped at the end."""
    points, probes = clustered_vectors(CROSSOVER_TIERS[-1][0], seed=11), clustered_vectors(queries, seed=12)
    base, results = ns.key("x"), {}
    keys = [f"{base}:{_tier_of(i)}:{i}" for i in range(len(points))]
    try:
        for first in range(0, len(keys), 2000):
            pipe = r.pipeline(transaction=False)
            for key, vector in zip(keys[first:first + 2000], points[first:first + 2000], strict=True):
                pipe.hset(key, mapping={"embedding": vector.tobytes()})
            pipe.execute()
        for n, (size, _) in enumerate(CROSSOVER_TIERS):
            prefixes = [f"{base}:{tier}:" for _, tier in CROSSOVER_TIERS[:n + 1]]
            flat, hnsw = (_tiered_index(r, f"{base}-{a}-{size}", prefixes, a) for a in ("FLAT", "HNSW"))
            speed = side_by_side({name: cycling(_query(r, name), probes) for name in (flat, hnsw)}, reps=reps)
            truth = [set(np.argsort(-(points[:size] @ q))[:10]) for q in probes]
            results[size] = {"FLAT us": speed[flat], "HNSW us": speed[hnsw],
                             **{f"recall ef {ef}": _recall(r, hnsw, probes, truth, ef) for ef in (10, 100)}}
    finally:
        for size, _ in CROSSOVER_TIERS:
            for algorithm in ("FLAT", "HNSW"):
                if index_exists(r, f"{base}-{algorithm}-{size}"):
                    r.execute_command("FT.DROPINDEX", f"{base}-{algorithm}-{size}")
        for first in range(0, len(keys), 5000):
            r.unlink(*keys[first:first + 5000])
    return results


def _tier_of(i: int) -> str:
    return next(tier for size, tier in CROSSOVER_TIERS if i < size)


def _tiered_index(r: redis.Redis, name: str, prefixes: list[str], algorithm: str) -> str:
    params = CROSSOVER_HNSW if algorithm == "HNSW" else ()
    attrs = ["TYPE", "FLOAT32", "DIM", DIM, "DISTANCE_METRIC", "COSINE", *params]
    r.execute_command("FT.CREATE", name, "ON", "HASH", "PREFIX", len(prefixes), *prefixes,
                      "SCHEMA", "embedding", "VECTOR", algorithm, len(attrs), *attrs)
    wait_indexed(r, name)
    return name


def _query(r: redis.Redis, index: str) -> Callable[[np.ndarray], object]:
    return lambda probe: knn(r, index, probe, k=10)


def _recall(r: redis.Redis, index: str, probes: np.ndarray, truth: list[set], ef: int) -> float:
    found = [{int(h.key.rsplit(":", 1)[1]) for h in knn(r, index, q, k=10, ef_runtime=ef)} for q in probes]
    return float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))
