"""Operations helpers a service can lift as they are: what the operations lessons reuse.

Every function takes a client first (`redis.Redis`, or a `RedisCluster`, whose SCAN visits every primary
and whose multi-key UNLINK is split by slot), never starts a process, and refuses bad arguments with a
`ConfigError` that says what to pass.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import redis

from labkit import validate
from labkit.clients import text

# ---- lesson 09: keys at scale (scan_delete, memory_by_prefix, big_keys, ttl_report) -------------------
GLOB_SPECIALS = "\\*?[]"
SCAN_COUNT = 1000  # keys the server examines per SCAN call: ~100x fewer round trips than the default 10
DELETE_BATCH = 500  # keys per UNLINK: small enough never to block, large enough to save round trips


def escape_glob(literal: str) -> str:
    """`literal` with SCAN MATCH's special characters (`* ? [ ] \\`) escaped, so it matches only itself.

    Example:
        >>> escape_glob("tenant:[eu]:")
        'tenant:\\\\[eu\\\\]:'
    """
    return "".join("\\" + ch if ch in GLOB_SPECIALS else ch for ch in literal)


def prefix_of(key: str, depth: int = 1, sep: str = ":") -> str:
    """The first `depth` parts of `key` (`prefix_of("cache:user:42", 2) == "cache:user"`); a key with
    fewer parts is its own prefix."""
    return sep.join(key.split(sep)[:depth])


def _scan(r: redis.Redis, match: str, count: int) -> Iterator[str]:
    for key in r.scan_iter(match=match, count=count):
        yield text(key)


def _check_scan(match: str, count: int) -> None:
    validate.name(match, "match")
    validate.integer(count, "count")


def scan_delete(r: redis.Redis, prefix: str, *, sep: str = ":", batch: int = DELETE_BATCH,
                count: int = SCAN_COUNT, progress: Callable[[int], None] | None = None) -> int:
    """Delete every key under `prefix` (the keys that start with `prefix + sep`) with SCAN and UNLINK in
    batches: no KEYS, no command holding the server for long, glob characters in `prefix` taken literally.

    Args:
        r: the client.
        prefix: the key prefix without its trailing separator (`"cache:user"` deletes `cache:user:*`,
            not `cache:users:*`).
        sep: the separator that ends the prefix.
        batch: keys per UNLINK.
        count: the SCAN COUNT hint (keys the server examines per call).
        progress: called with the running total after each UNLINK (a progress bar).

    Returns:
        How many keys were deleted.

    Example:
        >>> scan_delete(r, "lab:l09:cache")
        2006
    """
    validate.prefix(prefix)
    validate.name(sep, "sep")
    validate.integer(batch, "batch")
    validate.integer(count, "count")
    deleted, pending = 0, []
    for key in _scan(r, escape_glob(prefix + sep) + "*", count):
        pending.append(key)
        if len(pending) >= batch:
            deleted += r.unlink(*pending)
            pending.clear()
            if progress:
                progress(deleted)
    if pending:
        deleted += r.unlink(*pending)
    if progress:
        progress(deleted)
    return deleted


def _memory_usages(r: redis.Redis, keys: list[str], samples: int) -> list[int | None]:
    with r.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=samples)
        return pipe.execute()


def _in_batches(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True)
class PrefixMemory:
    """The keys under one prefix and the bytes MEMORY USAGE reports for them."""

    prefix: str
    keys: int
    bytes: int


def memory_by_prefix(r: redis.Redis, match: str = "*", *, depth: int = 1, sep: str = ":",
                     count: int = SCAN_COUNT, samples: int = 5) -> list[PrefixMemory]:
    """Memory by key prefix (the first `depth` parts of each key), largest first, from SCAN and pipelined
    MEMORY USAGE.

    `samples` is MEMORY USAGE's: how many elements of an aggregate (hash, set...) it measures and
    extrapolates from; 0 measures every element, exact but as slow as the key is big.

    Example:
        >>> memory_by_prefix(r, "app:*", depth=2)[0]
        PrefixMemory(prefix='app:report', keys=1, bytes=1672320)
    """
    _check_scan(match, count)
    validate.integer(depth, "depth")
    validate.integer(samples, "samples", minimum=0)
    totals: dict[str, list[int]] = {}
    for keys in _in_batches(_scan(r, match, count), count):
        for key, usage in zip(keys, _memory_usages(r, keys, samples), strict=True):
            if usage is not None:  # gone since SCAN saw it
                entry = totals.setdefault(prefix_of(key, depth, sep), [0, 0])
                entry[0] += 1
                entry[1] += usage
    rows = [PrefixMemory(prefix, n, size) for prefix, (n, size) in totals.items()]
    return sorted(rows, key=lambda row: (-row.bytes, row.prefix))


@dataclass(frozen=True)
class BigKey:
    """One key, its type and the bytes MEMORY USAGE reports for it."""

    key: str
    type: str
    bytes: int


def big_keys(r: redis.Redis, match: str = "*", *, top: int = 10, count: int = SCAN_COUNT,
             samples: int = 5) -> list[BigKey]:
    """The `top` keys using the most memory (MEMORY USAGE), largest first: unlike `--bigkeys`, which
    ranks each type by its element count, this compares bytes across types.

    Example:
        >>> big_keys(r, top=1)
        [BigKey(key='app:report:export', type='hash', bytes=1672320)]
    """
    _check_scan(match, count)
    validate.integer(top, "top")
    validate.integer(samples, "samples", minimum=0)
    sized: list[tuple[int, str]] = []
    for keys in _in_batches(_scan(r, match, count), count):
        sized += [(usage, key) for key, usage in zip(keys, _memory_usages(r, keys, samples), strict=True)
                  if usage is not None]  # None: gone since SCAN saw it
        sized = heapq.nsmallest(top, sized, key=lambda pair: (-pair[0], pair[1]))
    with r.pipeline(transaction=False) as pipe:
        for _, key in sized:
            pipe.type(key)
        types = [text(t) for t in pipe.execute()]
    return [BigKey(key, kind, usage) for (usage, key), kind in zip(sized, types, strict=True)]


@dataclass(frozen=True)
class PrefixTTL:
    """The keys under one prefix and how many of them never expire."""

    prefix: str
    keys: int
    without_ttl: int


def ttl_report(r: redis.Redis, match: str = "*", *, depth: int = 1, sep: str = ":",
               count: int = SCAN_COUNT) -> list[PrefixTTL]:
    """Keys without an expiry, by prefix, most first (SCAN and pipelined PTTL: -1 means no expiry).

    INFO keyspace gives the totals (`keys`, `expires`); this says which prefixes the immortal keys live in.

    Example:
        >>> ttl_report(r, "app:*", depth=2)[0]
        PrefixTTL(prefix='app:session', keys=2000, without_ttl=2000)
    """
    _check_scan(match, count)
    validate.integer(depth, "depth")
    totals: dict[str, list[int]] = {}
    for keys in _in_batches(_scan(r, match, count), count):
        with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            ttls = pipe.execute()
        for key, ttl in zip(keys, ttls, strict=True):
            if ttl == -2:  # gone since SCAN saw it
                continue
            entry = totals.setdefault(prefix_of(key, depth, sep), [0, 0])
            entry[0] += 1
            entry[1] += ttl == -1
    rows = [PrefixTTL(prefix, n, never) for prefix, (n, never) in totals.items()]
    return sorted(rows, key=lambda row: (-row.without_ttl, -row.keys, row.prefix))
# ---- end of lesson 09 ------------------------------------------------------------------------------------
