"""Operations helpers a service can lift, used by the operations lessons. Library only: each takes a client
and never starts a process."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError, LabkitError

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

    WAITAOF counts the writes of its own connection: call it in the thread that wrote (a redis-py client
    reuses one connection within a thread), or send write and WAITAOF in one pipeline and read the reply
    with `FsyncAck.from_reply`. Under `appendfsync always` every acknowledged write is already fsynced
    locally; under `everysec` some engines answer before the fsync (see `waitaof_exact_under_everysec`
    in `labkit.server.capabilities`).

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
        _wait_for_aof_rewrite(r, timeout_s)
    if rewrite_config:
        try:
            r.config_rewrite()
        except redis.ResponseError as err:
            raise ConfigError(f"CONFIG REWRITE failed ({err}): the new settings hold until the next restart; "
                              "write them into the server's config file yourself.") from err
    return persistence_status(r)


def _wait_for_aof_rewrite(r: redis.Redis, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = r.info("persistence")
        if not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]):
            if info["aof_last_bgrewrite_status"] != "ok":
                raise LabkitError("The AOF rewrite that turning on appendonly started has failed: read the "
                                  "server's log (disk full? permissions?), fix it and try again.")
            return
        time.sleep(0.01)
    raise LabkitError(f"The AOF rewrite did not finish within {timeout_s:g} s; it is still running on the server.")
