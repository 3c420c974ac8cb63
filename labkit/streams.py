"""Streams with consumer groups: an idempotent group set-up, an at-least-once `Worker`, and `lag`.

A `Worker` reads new entries with `>`, hands each to your handler, and acknowledges only those the
handler finished. Entries left pending by a consumer that died are reclaimed with XAUTOCLAIM once idle
for `claim_idle_ms`, following its cursor (never only its first page); an entry delivered
`max_deliveries` times without success goes to the dead-letter stream, with its error, and is
acknowledged there.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from labkit import validate
from labkit.errors import ConfigError

Handler = Callable[[str, dict], object]
Entry = tuple[str, dict]


def ensure_group(r: redis.Redis, stream: str, group: str, start: str = "0", *, mkstream: bool = True) -> bool:
    """Create consumer group `group` on `stream` reading from `start`; True if created, False if it existed.

    An existing group is not an error; anything else is, with what to do about it.
    """
    try:
        r.xgroup_create(stream, group, id=start, mkstream=mkstream)
        return True
    except redis.ResponseError as err:
        message = str(err)
        if message.startswith("BUSYGROUP"):
            return False
        if "requires the key to exist" in message:
            raise ConfigError(f"Stream {stream!r} does not exist: add an entry first, or pass mkstream=True.") from None
        if message.startswith("WRONGTYPE"):
            raise ConfigError(f"{stream!r} holds a {r.type(stream)}, not a stream: choose another key.") from None
        raise


@dataclass
class Lag:
    """How far a group is behind, from XINFO GROUPS and XINFO CONSUMERS."""

    lag: int | None  # entries added but not yet delivered to the group (None when the server cannot tell)
    pending: int  # delivered but not acknowledged
    entries_read: int | None
    last_delivered_id: str
    consumers: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> pending, idle_ms, inactive_ms


def lag(r: redis.Redis, stream: str, group: str) -> Lag:
    """The group's lag, pending count and per-consumer pending and idle time."""
    groups = {g["name"]: g for g in r.xinfo_groups(stream)}
    if group not in groups:
        raise ConfigError(f"No group {group!r} on {stream!r} (groups: {sorted(groups)}); see ensure_group().")
    info = groups[group]
    consumers = {c["name"]: {"pending": int(c["pending"]), "idle_ms": int(c["idle"]),
                             "inactive_ms": int(c.get("inactive", -1))}
                 for c in r.xinfo_consumers(stream, group)}
    return Lag(info.get("lag"), int(info["pending"]), info.get("entries-read"), info["last-delivered-id"], consumers)


@dataclass
class WorkerStats:
    processed: int = 0  # handled and acknowledged
    failed: int = 0  # handler raised; left pending for another delivery
    dead_lettered: int = 0
    claimed: int = 0  # taken over from idle consumers
    deleted_while_pending: int = 0  # XAUTOCLAIM's third element: gone from the stream, dropped from the PEL
    errors: list[str] = field(default_factory=list)  # the latest handler errors, newest last


class Worker:
    """One consumer of a group: read, process, acknowledge after success; reclaim; dead-letter.

    A read waits up to `block_ms` for new entries (0: return at once, never XREADGROUP's BLOCK 0 = forever).

    Example:
        >>> ensure_group(r, "orders", "billing")
        >>> worker = Worker(r, "orders", "billing", "worker-1", lambda id, fields: charge(fields))
        >>> worker.run(until=stop_event)
    """

    def __init__(self, r: redis.Redis, stream: str, group: str, consumer: str, handler: Handler, *,
                 batch: int = 10, block_ms: int = 100, claim_idle_ms: int = 30_000, max_deliveries: int = 5,
                 dead_letter: str | None = None) -> None:
        if not callable(handler):
            raise ConfigError(f"handler must be callable as handler(entry_id, fields), got {handler!r}.")
        validate.integer(batch, "batch")
        validate.milliseconds(claim_idle_ms, "claim_idle_ms")
        validate.integer(max_deliveries, "max_deliveries")
        validate.integer(block_ms, "block_ms", minimum=0)
        for what, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            validate.name(value, what)
        self.r, self.stream, self.group, self.consumer, self.handler = r, stream, group, consumer, handler
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dead_letter = dead_letter or f"{stream}:dead"
        self.stats = WorkerStats()
        self._backlog_cursor: str | None = "0"  # first, what this consumer name left pending before a restart
        self._next_claim = 0.0
        self._claim_cursor = "0-0"

    # -- one step -----------------------------------------------------------------------------
    def process_once(self) -> int:
        """Reclaim if due, then read one batch (own pending entries first) and process it.

        Returns the number of entries handled and acknowledged.
        """
        done = 0
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
            done += self._handle(self.reclaim(), reclaimed=True)
        backlog = self._backlog_cursor is not None
        entries = self._read(self._backlog_cursor) if backlog else []
        if backlog:  # walk this consumer's own pending entries once, oldest first, then switch to new ones
            self._backlog_cursor = entries[-1][0] if entries else None
            backlog = bool(entries)
        if not backlog:
            entries = self._read(">")
        gone = [i for i, f in entries if f is None]  # pending, but deleted from the stream since
        if gone:
            self.r.xack(self.stream, self.group, *gone)
            self.stats.deleted_while_pending += len(gone)
            entries = [(i, f) for i, f in entries if f is not None]
        return done + self._handle(entries, reclaimed=backlog)

    def _read(self, start: str) -> list[Entry]:
        reply = self.r.xreadgroup(self.group, self.consumer, {self.stream: start}, count=self.batch,
                                  block=self.block_ms if start == ">" and self.block_ms else None)
        return reply[0][1] if reply else []

    def reclaim(self, max_pages: int = 10) -> list[Entry]:
        """XAUTOCLAIM entries idle for `claim_idle_ms`, following the cursor: up to `max_pages` pages of
        `max(batch, 100)` per call, resuming where the previous call stopped, so a huge backlog is shared
        among workers rather than swallowed by one."""
        claimed = []
        for _ in range(max_pages):
            reply = self.r.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms, self._claim_cursor,
                                      count=max(self.batch, 100))
            self._claim_cursor, entries = reply[0], reply[1]
            if len(reply) > 2:  # 7.0+: ids deleted from the stream while pending, now dropped from the PEL
                self.stats.deleted_while_pending += len(reply[2])
            claimed += [(i, f) for i, f in entries if f is not None]
            if self._claim_cursor in ("0-0", b"0-0"):
                break
        self.stats.claimed += len(claimed)
        return claimed

    def _handle(self, entries: list[Entry], *, reclaimed: bool) -> int:
        if not entries:
            return 0
        deliveries = self._deliveries([i for i, _ in entries]) if reclaimed else {}
        succeeded = []
        for entry_id, fields in entries:
            count = deliveries.get(entry_id, 1)
            if count > self.max_deliveries:
                self._bury(entry_id, fields, count, "delivered without success (a consumer died each time?)")
                continue
            try:
                self.handler(entry_id, fields)
                succeeded.append(entry_id)
            except Exception as err:  # recorded, and the entry stays pending for a later delivery
                self._failed(entry_id, fields, err)
        if succeeded:
            self.r.xack(self.stream, self.group, *succeeded)
            self.stats.processed += len(succeeded)
        return len(succeeded)

    def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """Delivery counts (XPENDING's times_delivered) of pending entries."""
        counts = {}
        pipe = self.r.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        for rows in pipe.execute():
            for row in rows:
                counts[row["message_id"]] = int(row["times_delivered"])
        return counts

    def _failed(self, entry_id: str, fields: dict, err: Exception) -> None:
        self.stats.failed += 1
        self.stats.errors = [*self.stats.errors[-9:], f"{entry_id}: {type(err).__name__}: {err}"]
        count = self._deliveries([entry_id]).get(entry_id, 1)
        if count >= self.max_deliveries:
            self._bury(entry_id, fields, count, f"{type(err).__name__}: {err}")

    def _bury(self, entry_id: str, fields: dict, deliveries: int, error: str) -> None:
        """Move an entry to the dead-letter stream and acknowledge it, in one transaction."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.dead_letter, {"id": entry_id, "stream": self.stream, "group": self.group,
                                     "deliveries": deliveries, "error": error, "fields": json.dumps(fields)})
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.stats.dead_lettered += 1

    # -- a loop ---------------------------------------------------------------------------------
    def run(self, max_messages: int | None = None, until: threading.Event | Callable[[], bool] | None = None) -> int:
        """Process until `max_messages` were handled or `until` is set (an Event) or returns True.

        Returns the number handled. With neither, runs until the process is stopped.
        """
        stop = until.is_set if isinstance(until, threading.Event) else until
        handled = 0
        while (max_messages is None or handled < max_messages) and not (stop and stop()):
            handled += self.process_once()
        return handled
