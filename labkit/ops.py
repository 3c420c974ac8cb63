"""Operations helpers a service can lift as they are: what the operations lessons reuse.

Every function takes a client first (`redis.Redis`, or a `RedisCluster`, whose SCAN visits every primary
and whose multi-key UNLINK is split by slot), never starts a process, and refuses bad arguments with a
`ConfigError` that says what to pass.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError, LabkitError

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


# ======================================================================================================
# Persistence and durability (lesson 10): status, save points, WAITAOF, changing persistence at runtime
# ======================================================================================================
FSYNC_POLICIES = ("always", "everysec", "no")
_STATUS_SETTINGS = ("save", "appendfsync", "stop-writes-on-bgsave-error")


def parse_save_points(value: str) -> tuple[tuple[int, int], ...]:
    """The `save` setting as (seconds, changes) pairs: snapshot once `seconds` have passed since the last
    one if at least `changes` writes happened meanwhile.

    Example:
        >>> parse_save_points("3600 1 300 100 60 10000")
        ((3600, 1), (300, 100), (60, 10000))
        >>> parse_save_points("")  # snapshots off
        ()
    """
    words = value.split() if isinstance(value, str) else None
    if words is None or len(words) % 2 or not all(w.isdigit() for w in words):
        raise ConfigError(f"save points are pairs of whole numbers, 'seconds changes ...' "
                          f"(e.g. '3600 1 300 100'), or '' for none; got {value!r}.")
    return tuple((int(words[i]), int(words[i + 1])) for i in range(0, len(words), 2))


@dataclass(frozen=True)
class PersistenceStatus:
    """What a server persists, how, and whether its last attempts worked (CONFIG GET and INFO)."""

    save_points: tuple[tuple[int, int], ...]
    aof_enabled: bool
    appendfsync: str
    changes_since_last_save: int
    last_save_time: int
    last_bgsave_ok: bool
    last_aof_write_ok: bool
    stop_writes_on_bgsave_error: bool
    bgsave_in_progress: bool
    aof_rewrite_in_progress: bool
    aof_delayed_fsync: int
    latest_fork_usec: int
    loading: bool

    @property
    def persists(self) -> bool:
        """True if data reaches the disk without anyone asking (save points or the AOF)."""
        return bool(self.save_points) or self.aof_enabled

    @property
    def refusing_writes(self) -> bool:
        """True if the server refuses writes (MISCONF) because its last snapshot or AOF write failed."""
        failed_snapshot = self.stop_writes_on_bgsave_error and bool(self.save_points) and not self.last_bgsave_ok
        return failed_snapshot or not self.last_aof_write_ok


def persistence_status(r: redis.Redis) -> PersistenceStatus:
    """The server's persistence settings and state, in one round trip.

    Example:
        >>> status = persistence_status(r)
        >>> status.save_points, status.aof_enabled, status.refusing_writes
        (((3600, 1), (300, 100), (60, 10000)), False, False)
    """
    pipe = r.pipeline(transaction=False)
    pipe.config_get(*_STATUS_SETTINGS)
    pipe.info("persistence")
    pipe.info("stats")
    settings, info, stats = pipe.execute()
    settings = {text(k): text(v) for k, v in settings.items()}
    return PersistenceStatus(
        save_points=parse_save_points(settings["save"]),
        aof_enabled=bool(info["aof_enabled"]),
        appendfsync=settings["appendfsync"],
        changes_since_last_save=int(info["rdb_changes_since_last_save"]),
        last_save_time=int(info["rdb_last_save_time"]),
        last_bgsave_ok=info["rdb_last_bgsave_status"] == "ok",
        last_aof_write_ok=info["aof_last_write_status"] == "ok",
        stop_writes_on_bgsave_error=settings["stop-writes-on-bgsave-error"] == "yes",
        bgsave_in_progress=bool(info["rdb_bgsave_in_progress"]),
        aof_rewrite_in_progress=bool(info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]),
        aof_delayed_fsync=int(info.get("aof_delayed_fsync", 0)),
        latest_fork_usec=int(stats["latest_fork_usec"]),
        loading=bool(info["loading"]),
    )


@dataclass(frozen=True)
class FsyncAck:
    """WAITAOF's answer: did this server fsync the connection's earlier writes to its AOF (`local`, 0 or 1),
    and how many replicas did; truthy when both reached what was asked."""

    local: int
    replicas: int
    wanted_local: int = 1
    wanted_replicas: int = 0

    def __bool__(self) -> bool:
        return self.local >= self.wanted_local and self.replicas >= self.wanted_replicas

    @classmethod
    def from_reply(cls, reply: Sequence[int], *, local: bool = True, replicas: int = 0) -> FsyncAck:
        """From WAITAOF's raw reply (`[numlocal, numreplicas]`), say from a pipeline that also wrote."""
        return cls(int(reply[0]), int(reply[1]), int(local), replicas)


_WAITAOF_ERRORS = {
    "unknown command": "this server has no WAITAOF (Redis 7.2+ and Valkey have it): count replicas that "
                       "received the write with WAIT instead, and know that it says nothing about fsync.",
    "appendonly is disabled": "appendonly is off here, so nothing is ever fsynced to a local AOF: turn it on "
                              "(configure_persistence(r, appendonly=True)) or pass local=False to count "
                              "replicas only.",
    "replica": "WAITAOF goes to the primary that took the write, not to a replica.",
}


def wait_fsynced(r: redis.Redis, replicas: int = 0, *, local: bool = True, timeout_ms: int = 1000) -> FsyncAck:
    """Block until the writes sent earlier on this connection are fsynced to the AOF here (`local`) and on
    at least `replicas` replicas, or until `timeout_ms` passes (WAITAOF); truthy when both were met.

    WAITAOF counts the writes of its own connection, and a redis-py client draws each command's connection
    from a pool shared by its threads: send the write and WAITAOF in one pipeline (read the reply with
    `FsyncAck.from_reply`), or pass a client that holds one connection
    (`redis.Redis(..., single_connection_client=True)`). Under `appendfsync always` every acknowledged write
    is already fsynced locally; under `everysec` some engines answer before the fsync (see
    `waitaof_exact_under_everysec` in `labkit.server.capabilities`).

    Example:
        >>> r.xadd("orders", {"id": "o-17", "total": "42.00"})
        >>> if not wait_fsynced(r, replicas=1, timeout_ms=500):
        ...     ...  # not durable yet: retry, alert, or tell the caller
    """
    validate.integer(replicas, "replicas", minimum=0)
    validate.milliseconds(timeout_ms, "timeout_ms")
    if not isinstance(local, bool):
        raise ConfigError(f"local must be True or False, got {local!r}.")
    if not local and replicas == 0:
        raise ConfigError("Nothing to wait for: ask for local=True, replicas >= 1, or both.")
    try:
        reply = r.execute_command("WAITAOF", int(local), replicas, timeout_ms)
    except redis.ResponseError as err:
        hint = next((h for key, h in _WAITAOF_ERRORS.items() if key in str(err).lower()), None)
        if hint is None:
            raise
        raise ConfigError(f"WAITAOF refused ({err}): {hint}") from err
    return FsyncAck.from_reply(reply, local=local, replicas=replicas)


def _save_setting(save: str | Sequence[tuple[int, int]]) -> str:
    if isinstance(save, str):
        parse_save_points(save)
        return save
    pairs = [(validate.integer(s, "save seconds"), validate.integer(c, "save changes")) for s, c in save]
    return " ".join(f"{s} {c}" for s, c in pairs)


def configure_persistence(
    r: redis.Redis,
    *,
    appendonly: bool | None = None,
    appendfsync: str | None = None,
    save: str | Sequence[tuple[int, int]] | None = None,
    rewrite_config: bool = True,
    timeout_s: float = 60,
) -> PersistenceStatus:
    """Change persistence on a running server the safe way, and return the new status.

    CONFIG SET applies the settings at once (turning the AOF on starts a rewrite that writes the whole
    dataset into a new AOF; this waits for it, since until then the AOF does not hold the data), then
    CONFIG REWRITE saves them in the server's config file so that a restart keeps them.

    Example:
        >>> configure_persistence(r, appendonly=True, appendfsync="everysec").aof_enabled
        True
    """
    settings: dict[str, Any] = {}
    if appendonly is not None:
        if not isinstance(appendonly, bool):
            raise ConfigError(f"appendonly must be True or False, got {appendonly!r}.")
        settings["appendonly"] = "yes" if appendonly else "no"
    if appendfsync is not None:
        settings["appendfsync"] = validate.one_of(appendfsync, "appendfsync", FSYNC_POLICIES)
    if save is not None:
        settings["save"] = _save_setting(save)
    if not settings:
        raise ConfigError("Nothing to change: pass appendonly=, appendfsync= or save=.")
    validate.seconds(timeout_s, "timeout_s")
    first, *rest = settings.items()
    r.config_set(*first, *[item for pair in rest for item in pair])
    if appendonly:
        wait_for_aof_rewrite(r, timeout_s)
    if rewrite_config:
        try:
            r.config_rewrite()
        except redis.ResponseError as err:
            raise ConfigError(f"CONFIG REWRITE failed ({err}): the new settings hold until the next restart; "
                              "write them into the server's config file yourself.") from err
    return persistence_status(r)


def wait_for_aof_rewrite(r: redis.Redis, timeout_s: float = 60) -> None:
    """Return once no AOF rewrite is running or scheduled (`aof_rewrite_in_progress` and
    `aof_rewrite_scheduled` in INFO persistence are 0), polling every 10 ms; raise as soon as one has
    failed (the server then schedules a retry of its own), or if `timeout_s` passes first.

    Example:
        >>> r.config_set("appendonly", "yes")  # starts a rewrite: the AOF holds the data once it ends
        >>> wait_for_aof_rewrite(r)
    """
    validate.seconds(timeout_s, "timeout_s")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not info["aof_rewrite_in_progress"] and info["aof_last_bgrewrite_status"] != "ok":
            raise LabkitError("The last AOF rewrite failed (aof_last_bgrewrite_status err; the server retries on "
                              "its own): read its log (disk full? permissions?) and fix the cause.")
        if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
            return
        time.sleep(0.01)
    raise LabkitError(f"The AOF rewrite did not finish within {timeout_s:g} s; it is still running on the server.")


# ======================================================================================================
# Connections, observability and security (lesson 11): who is connected, what was slow, what may run
# ======================================================================================================
@dataclass(frozen=True)
class ClientConnection:
    """One connection as CLIENT LIST sees it (sizes in bytes, ages in seconds)."""

    id: int
    name: str
    addr: str
    user: str
    age_s: int
    idle_s: int
    cmd: str
    flags: str
    total_memory: int
    output_memory: int
    reply_buffer: int
    library: str
    query_buffer: int = 0  # qbuf + qbuf-free: 0 where the engine shares one query buffer between idle clients

    @property
    def blocked(self) -> bool:
        """Waiting in a blocking command (BLPOP, XREAD BLOCK...)."""
        return "b" in self.flags

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> ClientConnection:
        f = {text(k): text(v) for k, v in fields.items()}
        number = lambda name: int(f.get(name) or 0)  # noqa: E731 - a field older engines lack counts as 0
        return cls(number("id"), f.get("name", ""), f.get("addr", ""), f.get("user", ""), number("age"),
                   number("idle"), f.get("cmd", ""), f.get("flags", ""), number("tot-mem"), number("omem"),
                   number("rbs"), " ".join(filter(None, (f.get("lib-name"), f.get("lib-ver")))),
                   number("qbuf") + number("qbuf-free"))


def connections(r: redis.Redis, *, name_prefix: str | None = None) -> list[ClientConnection]:
    """The server's connections (CLIENT LIST), oldest first; with `name_prefix`, only those whose client name
    starts with it (name your clients, `client_name=`, and this tells services apart).

    Example:
        >>> [(c.name, c.idle_s, c.cmd) for c in connections(r, name_prefix="checkout")]
        [('checkout-1', 0, 'get'), ('checkout-2', 12, 'blpop')]
    """
    if name_prefix is not None:
        validate.name(name_prefix, "name_prefix")
    found = [ClientConnection.from_fields(fields) for fields in r.client_list()]
    if name_prefix is not None:
        found = [c for c in found if c.name.startswith(name_prefix)]
    return sorted(found, key=lambda c: (-c.age_s, c.id))


@dataclass(frozen=True)
class LogEntry:
    """One entry of the slow log, or of a COMMANDLOG (`value`: microseconds for `slow`, bytes for
    `large-request` and `large-reply`)."""

    id: int
    at: int
    value: int
    command: tuple[str, ...]
    client_addr: str
    client_name: str


COMMAND_LOGS = ("slow", "large-request", "large-reply")


def _log_entry(row: Any) -> LogEntry:
    """One raw row of SLOWLOG GET or COMMANDLOG GET: id, time, value, the arguments (a list, so an argument
    that contains a space stays one argument), then the client's address and name where the engine sends them."""
    ident, at, value, args, *client = row
    addr, name = [*client, "", ""][:2]
    return LogEntry(int(ident), int(at), int(value), tuple(text(a) for a in args), text(addr), text(name))


def slow_commands(r: redis.Redis, count: int = 10, *, log: str = "slow") -> list[LogEntry]:
    """The latest `count` entries of a command log, newest first: `slow` (commands slower than
    `slowlog-log-slower-than` µs, read with SLOWLOG GET, which every engine has; where COMMANDLOG exists it is
    the same log as COMMANDLOG GET slow), `large-request` or `large-reply` (bigger than
    `commandlog-request/reply-larger-than` bytes: COMMANDLOG only, Valkey 8.1+). Each argument is kept whole
    (the raw reply is read, not redis-py's parsed SLOWLOG GET, which joins the arguments with spaces).

    Example:
        >>> slow_commands(r, 1)[0].command
        ('DEBUG', 'SLEEP', '0.05')
    """
    validate.integer(count, "count")
    validate.one_of(log, "log", COMMAND_LOGS)
    if log == "slow":
        return [_log_entry(row) for row in r.execute_command("SLOWLOG", "GET", count)]
    try:
        rows = r.execute_command("COMMANDLOG", "GET", count, log)
    except redis.ResponseError as err:
        raise ConfigError(f"log={log!r} needs COMMANDLOG (Valkey 8.1+), which this server refused ({err}); "
                          "on other engines only log='slow' (SLOWLOG) exists.") from err
    return [_log_entry(row) for row in rows]


@dataclass(frozen=True)
class LatencyEvent:
    """One row of LATENCY LATEST: an event (`command`, `fast-command`, `fork`, `expire-cycle`...) that took
    at least `latency-monitor-threshold` ms; `total_ms` and `count` where the engine reports them."""

    event: str
    at: int
    latest_ms: int
    max_ms: int
    total_ms: int | None = None
    count: int | None = None


def latency_events(r: redis.Redis) -> list[LatencyEvent]:
    """LATENCY LATEST, typed: rows of four fields (event, time, latest, max; Redis) or six (with the sum and
    the count of spikes; Valkey 8.1+). Empty until `latency-monitor-threshold` is set above 0 and something
    took that long.

    Example:
        >>> latency_events(r)
        [LatencyEvent(event='command', at=1764518400, latest_ms=54, max_ms=54, total_ms=54, count=1)]
    """
    rows = r.execute_command("LATENCY", "LATEST")
    events = []
    for row in rows:
        event, at, latest, most, *rest = row
        total, count = (int(rest[0]), int(rest[1])) if len(rest) >= 2 else (None, None)
        events.append(LatencyEvent(text(event), int(at), int(latest), int(most), total, count))
    return events


def acl_dryrun(r: redis.Redis, user: str, *command: str | int) -> str | None:
    """Would `user` be allowed to run `command`? None if so, else the server's reason (ACL DRYRUN: nothing
    runs, no connection as that user is needed; the password and on/off are not checked).

    Example:
        >>> acl_dryrun(r, "cache", "FLUSHALL")
        "User cache has no permissions to run the 'flushall' command"
    """
    validate.name(user, "user")
    if not command or not all(isinstance(part, (str, int)) and not isinstance(part, bool) for part in command):
        raise ConfigError(f"command must be the command and its arguments, strings or integers, got {command!r}.")
    reply = text(r.execute_command("ACL", "DRYRUN", user, *command))
    return None if reply == "OK" else reply


@dataclass(frozen=True)
class AclFailure:
    """One ACL LOG entry: who was refused (`username`), why (`reason`: auth, command, key, channel), what
    (`object`: the command, key or channel), how many times in a row, and from where."""

    reason: str
    object: str
    username: str
    count: int
    client_addr: str
    client_name: str


def acl_failures(r: redis.Redis, count: int = 10) -> list[AclFailure]:
    """The latest `count` ACL LOG entries, newest first: failed logins and refused commands, keys and
    channels (repeats of one failure within 60 s are one entry with a count).

    Example:
        >>> acl_failures(r, 1)
        [AclFailure(reason='auth', object='AUTH', username='default', count=2000, client_addr='10.0.0.7:51234', ...)]
    """
    validate.integer(count, "count")
    failures = []
    for entry in r.acl_log(count=count):
        e = {text(k): v for k, v in entry.items()}
        client = e.get("client-info", {})
        client = client if isinstance(client, dict) else dict(
            part.split("=", 1) for part in text(client).split(" ") if "=" in part)
        failures.append(AclFailure(text(e["reason"]), text(e["object"]), text(e["username"]), int(e["count"]),
                                   text(client.get("addr", "")), text(client.get("name", ""))))
    return failures


@dataclass(frozen=True)
class Finding:
    """A setting that exposes a server, its value, and why it matters."""

    setting: str
    value: str
    risk: str


_LOOPBACK = ("127.", "::1", "-::1", "localhost")


def _exposed(bind: str) -> list[str]:
    """The addresses in a `bind` setting that are not loopback ('*' and 0.0.0.0 are every interface)."""
    return [a for a in bind.split() if not a.lstrip("-").startswith(_LOOPBACK)]


def security_findings(r: redis.Redis) -> list[Finding]:
    """What exposes this server, read from its configuration and its default user (CONFIG GET and ACL
    GETUSER, so an admin connection): an empty list when nothing does.

    It flags a default user without a password, a plain-text port on non-loopback addresses (with or without
    a TLS port beside it), protected mode off,
    CONFIG SET of protected settings (`dir`, `dbfilename`: how exposed servers were made to write files),
    DEBUG and MODULE LOAD allowed.

    Example:
        >>> [f.setting for f in security_findings(r)]
        ['default user', 'enable-protected-configs']
    """
    try:
        settings = {text(k): text(v) for k, v in r.config_get(
            "bind", "protected-mode", "tls-port", "port", "enable-protected-configs", "enable-debug-command",
            "enable-module-command").items()}
        default = r.acl_getuser("default")
    except redis.ResponseError as err:
        raise LabkitError(f"security_findings needs CONFIG GET and ACL GETUSER, which were refused ({err}): "
                          "ask with an admin connection.") from err
    flags = [text(f) for f in default.get("flags", [])]
    findings = []
    if "on" in flags and "nopass" in flags:
        findings.append(Finding("default user", "on, nopass", "anyone who reaches the port runs any command the "
                                "default user may: set a password (requirepass) or switch it off (ACL)"))
    exposed = _exposed(settings.get("bind", ""))
    if exposed and settings.get("port", "0") != "0":
        beside = "" if settings.get("tls-port", "0") == "0" else f" (beside TLS port {settings['tls-port']})"
        findings.append(Finding("bind", settings["bind"], f"a plain-text port, {settings['port']}{beside}, listens "
                                f"on {', '.join(exposed)}: passwords and data cross the network in clear text "
                                "(port 0 leaves only the TLS port)"))
    if settings.get("protected-mode") == "no":
        findings.append(Finding("protected-mode", "no", "without a password the server answers every "
                                "address it listens on, not only loopback"))
    for setting, risk in (("enable-protected-configs", "CONFIG SET may change dir and dbfilename: a client can "
                           "make the server write its data as a file anywhere it may write"),
                          ("enable-debug-command", "DEBUG can crash, freeze or reload the server"),
                          ("enable-module-command", "MODULE LOAD runs any shared library as server code")):
        if settings.get(setting, "no") != "no":
            findings.append(Finding(setting, settings[setting], risk))
    return findings


# ======================================================================================================
# Cluster (lesson 13): keys per node, the redirects and refusals the nodes sent, the hottest slots
# ======================================================================================================
CLUSTER_ERRORS = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN", "CROSSSLOT")
SLOT_METRICS = ("key-count", "cpu-usec", "network-bytes-in", "network-bytes-out")


def _check_cluster(rc: Any) -> RedisCluster:
    if not isinstance(rc, RedisCluster):
        raise ConfigError(f"rc must be a redis.cluster.RedisCluster client, got {type(rc).__name__}: these helpers "
                          "ask every node of a cluster.")
    return rc


def _per_node(rc: RedisCluster, nodes: list, *args: Any) -> dict[str, Any]:
    return {node.name: rc.get_redis_connection(node).execute_command(*args) for node in nodes}


def keys_per_node(rc: RedisCluster) -> dict[str, int]:
    """DBSIZE of every primary, by address (`{"127.0.0.1:7000": 3312, ...}`): how evenly the keys are spread.
    (`rc.dbsize()` alone asks ONE node; `rc.dbsize(target_nodes=RedisCluster.PRIMARIES)` adds them up.)"""
    return {name: int(n) for name, n in _per_node(_check_cluster(rc), rc.get_primaries(), "DBSIZE").items()}


def cluster_errors(rc: RedisCluster) -> dict[str, int]:
    """How many MOVED, ASK, TRYAGAIN, CLUSTERDOWN and CROSSSLOT replies the cluster's nodes have sent since
    they started, summed over every node (INFO errorstats). Read it before and after a resharding: a smart
    client follows MOVED and ASK silently, so the servers are where redirects are counted.

    Example:
        >>> before = cluster_errors(rc); reshard(); after = cluster_errors(rc)
        >>> {kind: after[kind] - before[kind] for kind in after}
        {'MOVED': 35, 'ASK': 19, 'TRYAGAIN': 0, 'CLUSTERDOWN': 0, 'CROSSSLOT': 0}
    """
    totals = dict.fromkeys(CLUSTER_ERRORS, 0)
    for stats in _per_node(_check_cluster(rc), rc.get_nodes(), "INFO", "errorstats").values():
        for kind in CLUSTER_ERRORS:
            totals[kind] += int(stats.get(f"errorstat_{kind}", {}).get("count", 0))
    return totals


@dataclass(frozen=True)
class SlotStats:
    """One slot's counters from CLUSTER SLOT-STATS, and the node that serves it."""

    slot: int
    node: str
    key_count: int
    cpu_usec: int
    network_bytes_in: int
    network_bytes_out: int


def hot_slots(rc: RedisCluster, *, by: str = "cpu-usec", limit: int = 5) -> list[SlotStats]:
    """The `limit` slots highest in `by` across the whole cluster (CLUSTER SLOT-STATS ORDERBY on each primary,
    merged): where a hot key or an over-used hash tag lives. `key-count` is always counted; CPU time and
    network bytes only while `cluster-slot-stats-enabled` is yes (Valkey 8.0+; a server without SLOT-STATS
    raises `LabkitError`).

    Example:
        >>> hot_slots(rc, by="cpu-usec", limit=1)
        [SlotStats(slot=6093, node='127.0.0.1:7001', key_count=1, cpu_usec=1611, ...)]
    """
    _check_cluster(rc)
    validate.one_of(by, "by", SLOT_METRICS)
    validate.integer(limit, "limit")
    try:
        replies = _per_node(rc, rc.get_primaries(), "CLUSTER", "SLOT-STATS", "ORDERBY", by, "LIMIT", limit)
    except redis.ResponseError as err:
        if "metric" in str(err).lower():
            raise LabkitError(f"The primaries do not count {by} per slot yet ({err}): set cluster-slot-stats-enabled "
                              "to yes on every primary (CONFIG SET), or rank by key-count.") from err
        raise LabkitError(f"This server cannot report slot statistics ({err}): CLUSTER SLOT-STATS needs Valkey "
                          "8.0 or Redis 8.0 or later.") from err
    found = [_slot_stats(slot, node, stats) for node, rows in replies.items() for slot, stats in rows]
    return sorted(found, key=lambda s: getattr(s, by.replace("-", "_")), reverse=True)[:limit]


def _slot_stats(slot: Any, node: str, stats: dict | list) -> SlotStats:
    pairs = stats.items() if isinstance(stats, dict) else zip(stats[::2], stats[1::2], strict=True)
    values = {text(k): int(v) for k, v in pairs}
    return SlotStats(int(slot), node, *(values.get(metric, 0) for metric in SLOT_METRICS))
