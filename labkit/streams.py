"""Streams with consumer groups: an idempotent group set-up, an at-least-once `Worker`, `lag` (and the
group's raw `group_info`), and `partition` (per-key order across several streams).

A `Worker` reads new entries with `>`, hands each to your handler, and acknowledges only those the
handler finished. Entries left pending by a consumer that died are reclaimed with XAUTOCLAIM once idle
for `claim_idle_ms`, one page of `batch` per step, resuming at its cursor (never only its first page);
an entry delivered `max_deliveries` times without success goes to the dead-letter stream, with its error,
and is acknowledged there, in one transaction: on a cluster the dead-letter stream must share the
stream's hash slot (give the stream a hash tag: `orders:{o}` and `orders:{o}:dead`).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError

Handler = Callable[[str, dict], object]
Entry = tuple[str, dict]


def ensure_group(r: redis.Redis, stream: str, group: str, start: str = "0", *, mkstream: bool = True) -> bool:
    """Create consumer group `group` on `stream` reading from `start`; True if created, False if it existed.

    An existing group is not an error; anything else is, with what to do about it.
    """
    validate.name(stream, "stream")
    validate.name(group, "group")
    validate.name(start, "start (an entry id, '0' for the beginning or '$' for new entries only)")
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

    lag: int | None  # entries added but not yet delivered to the group; None: unknown, never 0 (see lag())
    pending: int  # delivered but not acknowledged
    entries_read: int | None
    last_delivered_id: str
    consumers: dict[str, dict[str, int]] = field(default_factory=dict)  # name -> pending, idle_ms, inactive_ms


def group_info(r: redis.Redis, stream: str, group: str) -> dict:
    """The group's row of XINFO GROUPS (name, consumers, pending, last-delivered-id, entries-read, lag), or a
    ConfigError saying what is missing: the stream, or the group on it."""
    validate.name(stream, "stream")
    validate.name(group, "group")
    try:
        groups = {text(g["name"]): g for g in r.xinfo_groups(stream)}
    except redis.ResponseError as err:
        if "no such key" in str(err).lower():
            raise ConfigError(f"No stream {stream!r}: create it with its group, ensure_group(r, stream, group), "
                              "or check the name.") from None
        if str(err).startswith("WRONGTYPE"):
            raise ConfigError(f"{stream!r} holds a {text(r.type(stream))}, not a stream: choose another key.") from None
        raise
    if group not in groups:
        raise ConfigError(f"No group {group!r} on {stream!r} (groups: {sorted(groups)}); create it with "
                          "ensure_group(r, stream, group), or check the name.")
    return groups[group]


def lag(r: redis.Redis, stream: str, group: str) -> Lag:
    """The group's lag, pending count and per-consumer pending and idle time.

    `lag` is None when the server cannot compute it (XINFO GROUPS says nil): an entry was deleted (XDEL,
    XACKDEL) inside the stream (not its oldest entry), at or past the group's last delivered entry. It stays
    None until the group has read to the end of the stream, or the entries before the hole are gone (Redis
    7.0 recovers as soon as the group reads past the hole: `capabilities(r).stream_lag_recovers_past_hole`).
    Deleting from the head leaves it known. None means unknown, not caught up: never treat it as 0."""
    info = group_info(r, stream, group)
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
    A Worker is one consumer with its own cursors and counts: run it on one thread at a time. For
    parallel work, make one Worker per thread or process, each with its own consumer name.

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
        self.dead_letter = _dead_letter(r, stream, dead_letter)
        self.stats = WorkerStats()
        self._backlog_cursor: str | None = "0"  # first, what this consumer name left pending before a restart
        self._next_claim = 0.0
        self._claim_cursor = "0-0"
        self._more_to_claim = False  # the last reclaim filled its page: claim again at the next step
        self._unacked: list[str] = []  # handled, their XACK to go with the next read (see run) or at the end

    # -- one step -----------------------------------------------------------------------------
    def process_once(self) -> int:
        """Reclaim one page if due, then read one batch (own pending entries first) and process it.

        A reclaim is due every `claim_idle_ms / 2`, or at once while pages come back full. Returns the
        number of entries handled and acknowledged: what it handled is acknowledged when it returns (or
        raises).
        """
        with self._acknowledging():
            return self._step()

    def _step(self, limit: int | None = None) -> int:
        """One step of `process_once`, leaving the XACK of what it handled in `_unacked`: each read sends
        the XACKs waiting before it in its own round trip. With a `limit`, it takes no more entries than that
        in all (`run(max_messages=...)`)."""
        done = 0
        if self._more_to_claim or time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + self.claim_idle_ms / 2000
            claimed = self._reclaim(1, self._count(limit))
            done += self._handle(claimed, reclaimed=True)
            if limit is not None and (limit := limit - len(claimed)) == 0:
                return done
        count = self._count(limit)
        backlog = self._backlog_cursor is not None
        entries = self._read(self._backlog_cursor, count) if backlog else []
        if backlog:  # walk this consumer's own pending entries once, oldest first, then switch to new ones
            self._backlog_cursor = entries[-1][0] if entries else None
            backlog = bool(entries)
        if not backlog:
            entries = self._read(">", count)
        elif gone := [i for i, f in entries if f is None]:  # pending, but deleted from the stream since (new
            self.r.xack(self.stream, self.group, *gone)     # entries, read with ">", always have their fields)
            self.stats.deleted_while_pending += len(gone)
            entries = [(i, f) for i, f in entries if f is not None]
        return done + self._handle(entries, reclaimed=backlog)

    def _count(self, limit: int | None) -> int:
        return self.batch if limit is None else min(self.batch, limit)

    def _read(self, start: str, count: int) -> list[Entry]:
        wait = start == ">" and self.block_ms and not self._more_to_claim  # no waiting while a backlog is left
        block = self.block_ms if wait else None
        with self._delivering():
            if not self._unacked:
                reply = self.r.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count,
                                          block=block)
                return reply[0][1] if reply else []
            # the XACK of what was handled, then the read, in one round trip (not a transaction: the server
            # runs the XACK before the read waits for entries)
            pipe = self.r.pipeline(transaction=False)
            pipe.xack(self.stream, self.group, *self._unacked)
            pipe.xreadgroup(self.group, self.consumer, {self.stream: start}, count=count, block=block)
            _, reply = pipe.execute()
        self._acknowledged()
        return reply[0][1] if reply else []

    @contextlib.contextmanager
    def _delivering(self) -> Iterator[None]:
        """Around a command that delivers entries to this consumer: should it fail once sent (a timeout, a
        lost connection, an interrupt), the server may still have run it, putting entries in this consumer's
        pending list whose reply nobody read. The next step walks that list first (as after a restart), so
        they come back at once, not only through a reclaim after `claim_idle_ms`. NOGROUP becomes a
        ConfigError saying what to do."""
        try:
            yield
        except redis.ResponseError as err:
            self._backlog_cursor = "0"
            if "NOGROUP" in str(err):  # said alone, or as "Command # 2 (XREADGROUP ...) of pipeline caused ..."
                raise ConfigError(f"No group {self.group!r} on stream {self.stream!r}, or no such stream (deleted "
                                  "while the worker ran?): create it with ensure_group(r, stream, group), then "
                                  "run the worker again.") from err
            raise
        except BaseException:
            self._backlog_cursor = "0"
            raise

    @contextlib.contextmanager
    def _acknowledging(self) -> Iterator[None]:
        """Acknowledge what was handled when the block ends, however it ends (should the block raise, its
        error is the one raised, not a failed XACK's), except on a timeout: then at the next step or run."""
        try:
            yield
        except redis.TimeoutError:  # the server is stalled: another XACK would wait out a second timeout; the
            raise                   # ids stay in _unacked, for the next step or run to acknowledge
        except BaseException:
            with contextlib.suppress(redis.RedisError):
                self._acknowledge()
            raise
        self._acknowledge()

    def _acknowledge(self) -> None:
        """XACK what was handled and not yet acknowledged, on its own round trip."""
        if self._unacked:
            self.r.xack(self.stream, self.group, *self._unacked)
            self._acknowledged()

    def _acknowledged(self) -> None:
        self.stats.processed += len(self._unacked)
        self._unacked = []

    def reclaim(self, max_pages: int = 1) -> list[Entry]:
        """XAUTOCLAIM entries idle for `claim_idle_ms`: up to `max_pages` pages of `batch`, resuming at the
        cursor where the previous call stopped. `process_once` takes one page per step, so a worker holds no
        more reclaimed entries than it handles in one step: entries waiting longer in its hands would go
        idle again, be reclaimed by another worker, and count deliveries towards the dead-letter stream."""
        return self._reclaim(validate.integer(max_pages, "max_pages"), self.batch)

    def _reclaim(self, pages: int, count: int) -> list[Entry]:
        claimed = []
        self._acknowledge()  # never reclaim an entry this worker handled and has not acknowledged yet
        for _ in range(pages):
            with self._delivering():
                reply = self.r.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                                          self._claim_cursor, count=count)
            self._claim_cursor, entries = text(reply[0]), reply[1]
            if len(reply) > 2:  # 7.0+: ids deleted from the stream while pending, now dropped from the PEL
                self.stats.deleted_while_pending += len(reply[2])
            claimed += [(i, f) for i, f in entries if f is not None]
            if self._claim_cursor == "0-0":
                break
        self._more_to_claim = self._claim_cursor != "0-0"
        self.stats.claimed += len(claimed)
        return claimed

    def _handle(self, entries: list[Entry], *, reclaimed: bool) -> int:
        if not entries:
            return 0
        deliveries = self._deliveries([i for i, _ in entries]) if reclaimed else None
        handled, handler = 0, self.handler
        for entry_id, fields in entries:
            if deliveries is not None:  # delivered before: dead-letter it if that was too often
                count = deliveries.get(entry_id, 1)
                if count > self.max_deliveries:
                    self._bury(entry_id, fields, count, "delivered without success (a consumer died each time?)")
                    continue
            try:
                handler(entry_id, fields)
            except Exception as err:  # recorded, and the entry stays pending for a later delivery
                self._failed(entry_id, fields, err)
                continue
            # at once: should the next entry's handler raise past us, it is still acked; self._unacked each time:
            # a handler that calls this worker (reclaim) has it acknowledged and replaced
            self._unacked.append(entry_id)
            handled += 1
        return handled

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
        self.stats.errors = [*self.stats.errors[-9:], f"{text(entry_id)}: {type(err).__name__}: {err}"]
        count = self._deliveries([entry_id]).get(entry_id, 1)
        if count >= self.max_deliveries:
            self._bury(entry_id, fields, count, f"{type(err).__name__}: {err}")

    def _bury(self, entry_id: str, fields: dict, deliveries: int, error: str) -> None:
        """Move an entry to the dead-letter stream and acknowledge it, in one transaction. Its fields go as
        JSON; bytes that are not UTF-8 survive as surrogate escapes (`.encode("utf-8", "surrogateescape")`)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.xadd(self.dead_letter, {"id": entry_id, "stream": self.stream, "group": self.group,
                                     "deliveries": deliveries, "error": error, "fields": _as_json(fields)})
        pipe.xack(self.stream, self.group, entry_id)
        pipe.execute()
        self.stats.dead_lettered += 1

    # -- a loop ---------------------------------------------------------------------------------
    def run(self, max_messages: int | None = None, until: threading.Event | Callable[[], bool] | None = None) -> int:
        """Process until `max_messages` were handled or `until` is set (an Event) or returns True. A read or
        reclaim asks for no more than what is left of `max_messages`: the rest stay for other workers.

        Returns the number handled, every one acknowledged. With neither, runs until the process is stopped.
        A batch costs one round trip: its XACK goes in the round trip of the next read, pipelined before it
        (`process_once` acknowledges before it returns); when the loop stops, however it stops, the last
        XACK is sent on its own (after a timeout: by the next run, not to a server that just stalled). A
        worker killed between a batch and the next read leaves that batch pending: delivered again, never
        lost."""
        if max_messages is not None:
            validate.integer(max_messages, "max_messages (or None for no limit)")
        if until is not None and not isinstance(until, threading.Event) and not callable(until):
            raise ConfigError(f"until must be a threading.Event or a function returning True to stop, got {until!r}.")
        stop = until.is_set if isinstance(until, threading.Event) else until
        handled = 0
        with self._acknowledging():
            while (max_messages is None or handled < max_messages) and not (stop and stop()):
                handled += self._step(None if max_messages is None else max_messages - handled)
        return handled


def partition(stream: str, key: str, partitions: int) -> str:
    """The stream of `partitions` that carries every entry of `key`: `<stream>:p<n>`, n = CRC32(key) mod
    `partitions`, the same in every process (Python's `hash` is not). Entries of one key then stay in one
    stream, in order; give each partition stream one consumer at a time to keep that order when handled.
    Changing `partitions` moves keys: drain the streams first."""
    stream = validate.name(stream, "stream")
    key = validate.name(key, "key")
    partitions = validate.integer(partitions, "partitions")
    return f"{stream}:p{zlib.crc32(key.encode()) % partitions}"


def _dead_letter(r: redis.Redis, stream: str, dead_letter: str | None) -> str:
    """The dead-letter stream's name: `dead_letter`, or `<stream>:dead`; on a cluster, in the stream's slot."""
    name = validate.name(dead_letter, "dead_letter") if dead_letter is not None else f"{stream}:dead"
    if isinstance(r, RedisCluster) and key_slot(name.encode()) != key_slot(stream.encode()):
        raise ConfigError(
            f"On a cluster the dead-letter stream must be in the stream's hash slot (an entry moves there and is "
            f"acknowledged in one transaction), but {name!r} and {stream!r} are not. Give the stream a hash tag, "
            f"e.g. {_tagged(stream)!r}, and leave dead_letter out (the default '<stream>:dead' shares the tag), "
            "or pass a dead_letter with the same tag.")
    return name


def _tagged(stream: str) -> str:
    """`stream` with its last part made a hash tag: 'lab:orders' -> 'lab:{orders}'."""
    head, _, last = stream.rpartition(":")
    return f"{head}:{{{last}}}" if head else f"{{{last}}}"


def _as_json(fields: dict) -> str:
    """Entry fields as a JSON object, from a client with or without `decode_responses`."""
    def as_str(value: object) -> object:
        return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value
    return json.dumps({as_str(k): as_str(v) for k, v in fields.items()})
