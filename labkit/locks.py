"""Distributed locks: a single-server `Lock` with fencing tokens, `Redlock` over independent servers, and
a `FencedStore` that rejects writes carrying an older token than one it already accepted.

A lock with a TTL is a lease: it can expire while its holder still works (a pause, a slow call), and no
lock alone can stop a stale holder from writing afterwards. The fencing token, a number that grows with
every acquisition, lets the resource itself refuse that write. `Lock` takes it from INCR on its server, so
it only grows while that server keeps its data: across a restart only with the append-only file (and
`appendfsync always` for a power cut), and never across a failover to an asynchronously replicated
replica, which may lack the latest INCR. Where that matters, take the token from the resource itself.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import secrets
import select
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from labkit import scripts, validate
from labkit.clients import derive, text
from labkit.errors import ConfigError, LockNotAcquired, LockNotHeld

T = TypeVar("T")
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


class Lock:
    """A lock on one server: SET NX PX with a random token, and a fencing token from the same script.

    `acquire()` takes it (retrying with random pauses for up to `blocking_timeout` seconds); `release()`
    and `extend()` act only if our token is still there, and raise `LockNotHeld` otherwise: the lock
    expired, so the work since then was not protected. `remaining_ms()` says, without a round trip, how
    long the lease lasts at least: check it before each side effect, and `extend()` when it runs low. As
    a context manager it raises `LockNotAcquired` (a `TimeoutError`) if it cannot take the lock, and
    `LockNotHeld` at the end of the block if the lock was lost meanwhile. An acquisition belongs to the
    thread that made it: threads sharing one `Lock` take turns, and one cannot release or extend another's.

    Example:
        >>> with Lock(r, "invoice:42", ttl_ms=5000) as lock:
        ...     if lock.remaining_ms() < 1000:
        ...         lock.extend()
        ...     store.write(lock.fence, "paid")
    """

    def __init__(self, r: redis.Redis, name: str, *, ttl_ms: int = 10_000, blocking_timeout: float | None = 10.0,
                 prefix: str = "lab:lock") -> None:
        if blocking_timeout is not None:
            validate.seconds(blocking_timeout, "blocking_timeout (or None to wait forever)", allow_zero=True)
        self.r, self.name, self.blocking_timeout = r, validate.name(name, "name"), blocking_timeout
        self.ttl_ms = validate.milliseconds(ttl_ms, "ttl_ms")
        validate.prefix(prefix)
        self.key = f"{prefix}:{{{name}}}"
        self.fence_key = f"{self.key}:fence"
        self._held = threading.local()  # this thread's token and fence
        self._acquire = scripts.register(r, "locks/acquire")
        self._release = scripts.register(r, "locks/release")
        self._extend = scripts.register(r, "locks/extend")

    @property
    def token(self) -> str | None:
        """This thread's random token while it holds the lock, else None."""
        return getattr(self._held, "token", None)

    @property
    def fence(self) -> int | None:
        """The fencing token of this thread's latest acquisition: INCR on the lock's server, so it grows with
        every acquisition while that server keeps its data (see the module's docstring)."""
        return getattr(self._held, "fence", None)

    def remaining_ms(self) -> float:
        """Milliseconds this thread's lease lasts at least (0.0 if not held or run out), counted on this
        machine's monotonic clock from the moment the acquisition or the last `extend()` was sent: the
        server set the TTL after that. A server whose wall clock jumps forward expires the key sooner."""
        if self.token is None:
            return 0.0
        return max(0.0, (self._held.deadline - time.monotonic()) * 1000)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock for this thread; True on success. Sets `token` and `fence` (the fencing token)."""
        token = secrets.token_hex(16)
        deadline = None if self.blocking_timeout is None else time.monotonic() + self.blocking_timeout
        while True:
            sent = time.monotonic()
            fence = self._acquire(keys=[self.key, self.fence_key], args=[token, self.ttl_ms])
            if fence:
                self._held.token, self._held.fence = token, int(fence)
                self._held.deadline = sent + self.ttl_ms / 1000
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            pause = random.uniform(0.002, 0.02)
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))

    def release(self) -> None:
        """Release this thread's lock if it still holds it; `LockNotHeld` if it never did or it expired."""
        if self.token is None:
            raise LockNotHeld(f"Lock {self.name!r} is not held by this client (this thread): acquire() it first.")
        token, self._held.token = self.token, None
        if not self._release(keys=[self.key], args=[token]):
            raise LockNotHeld(f"Lock {self.name!r} expired (ttl {self.ttl_ms} ms) or was taken by another client "
                              "before release: the work done after the expiry was not protected.")

    def extend(self, ttl_ms: int | None = None) -> None:
        """Give the lock a new TTL in ms (default: the original) if this thread still holds it; `LockNotHeld`
        otherwise (an expired lock is never revived, even when nobody took it meanwhile)."""
        ttl_ms = self.ttl_ms if ttl_ms is None else validate.milliseconds(ttl_ms, "ttl_ms")
        if self.token is None:
            raise LockNotHeld(f"Lock {self.name!r} is not held by this client (this thread): acquire() it first.")
        sent = time.monotonic()
        if not self._extend(keys=[self.key], args=[self.token, ttl_ms]):
            self._held.deadline = 0.0  # lost: remaining_ms() says so from now on
            raise LockNotHeld(f"Lock {self.name!r} cannot be extended: it expired or another client took it.")
        self._held.deadline = sent + ttl_ms / 1000

    def owned(self) -> bool:
        """Whether the server still holds this thread's token (one GET; the answer may be stale a moment later)."""
        return self.token is not None and text(self.r.get(self.key)) == self.token

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(f"Could not acquire lock {self.name!r} within {self.blocking_timeout} s: "
                                  "another client holds it. Wait longer (blocking_timeout=) or try later.")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.release()
        except LockNotHeld as lost:
            if exc is None:
                raise
            exc.add_note(str(lost))


class Redlock:
    """A lock held on a majority of independent servers (the Redlock algorithm).

    `acquire()` asks every node at once (SET NX PX sent to all of them before any reply is read, every
    reply awaited until `node_timeout_ms` after sending), so it costs about one round trip to the slowest
    node, not one per node, and no thread. Redlocks made on the same clients share their connections: one
    Redlock per resource name (per order id) costs no new connection. It holds the lock if a majority said yes
    and time is left: validity = ttl - elapsed (monotonic clock) - drift. Else it releases what it took,
    retries after a random delay, and after `retries` raises `LockNotAcquired`. `release()` asks every
    node at once too, whatever the others answer. Check `remaining_ms()` before a side effect; as a
    context manager it raises `LockNotHeld` at the end of the block if the validity ran out meanwhile.
    Redlock issues no fencing token: its random value tells holders apart but not which came later. Pair
    it with a resource that checks a token from elsewhere (its own version, a consensus store).

    Example:
        >>> with Redlock([a, b, c], "report", ttl_ms=10_000) as lock:
        ...     if lock.remaining_ms() > 2000:
        ...         publish()
    """

    def __init__(self, clients: list[redis.Redis], name: str, *, ttl_ms: int = 10_000, retries: int = 3,
                 retry_delay_ms: int = 200, node_timeout_ms: int = 50, drift_factor: float = 0.01,
                 prefix: str = "lab:redlock") -> None:
        validate.milliseconds(ttl_ms, "ttl_ms")
        validate.milliseconds(node_timeout_ms, "node_timeout_ms")
        validate.name(name, "name")
        validate.prefix(prefix)
        if node_timeout_ms >= ttl_ms:
            raise ConfigError(f"node_timeout_ms ({node_timeout_ms}) must be far below ttl_ms ({ttl_ms}).")
        validate.integer(retries, "retries", minimum=0)
        validate.integer(retry_delay_ms, "retry_delay_ms", minimum=0)
        validate.number(drift_factor, "drift_factor", low=0, high=1, high_open=True)
        self.timeout = node_timeout_ms / 1000
        self._nodes = _independent_nodes(clients, self.timeout)  # shared by every Redlock of these clients
        self.nodes = [node.client for node in self._nodes]
        self.name, self.key, self.ttl_ms = name, f"{prefix}:{name}", ttl_ms
        self.retries, self.retry_delay_ms, self.drift_factor = retries, retry_delay_ms, drift_factor
        self.quorum = len(clients) // 2 + 1
        self._held = threading.local()  # this thread's token, deadline, validity and node count

    @property
    def token(self) -> str | None:
        """This thread's random token while it holds the lock, else None."""
        return getattr(self._held, "token", None)

    @property
    def validity_ms(self) -> float:
        """The validity this thread's acquisition started with (0.0 when not held)."""
        return getattr(self._held, "validity_ms", 0.0)

    @property
    def acquired_on(self) -> int:
        """On how many nodes this thread's latest attempt set the key."""
        return getattr(self._held, "acquired_on", 0)

    def remaining_ms(self) -> float:
        """Milliseconds of validity left now (0.0 if not held or run out): check it before a side effect."""
        if self.token is None:
            return 0.0
        return max(0.0, (self._held.deadline - time.monotonic()) * 1000)

    def _on_every_node(self, *command: str | int) -> list[object]:
        """Send `command` to every node at once, then read each reply by one deadline (`node_timeout_ms`
        after sending): about one round trip to the slowest node. Each result is the reply, or the error
        of a node that was down, slow or refused."""
        taken = _connect_all(self._nodes)
        deadline, packed = time.monotonic() + self.timeout, None
        for _node, conn in taken:
            if not isinstance(conn, Exception):
                packed = _send(conn, command, packed)
        return [_reply(node, conn, deadline) for node, conn in taken]

    def _release_everywhere(self, token: str) -> int:
        """Release on every node at once; how many still had our token (a node down or slow: its copy
        expires by TTL)."""
        replies = self._on_every_node("EVALSHA", _release_sha(), 1, self.key, token)
        released = 0
        for node, reply in zip(self._nodes, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):  # first use on this server, or it was flushed
                reply = _quietly(lambda n=node: n.release(keys=[self.key], args=[token]))
            released += reply if isinstance(reply, int) else 0
        return released

    def _attempt(self) -> bool:
        """One round: SET on every node at once; keep the lock on a majority with time left, else give back."""
        token, started = secrets.token_hex(16), time.monotonic()
        won = sum(reply in _OK for reply in self._on_every_node("SET", self.key, token, "NX", "PX", self.ttl_ms))
        validity = self.ttl_ms * (1 - self.drift_factor) - 2 - (time.monotonic() - started) * 1000
        self._held.acquired_on = won
        if won >= self.quorum and validity > 0:
            self._held.token, self._held.validity_ms = token, validity
            self._held.deadline = started + (self.ttl_ms * (1 - self.drift_factor) - 2) / 1000
            return True
        self._release_everywhere(token)
        return False

    def acquire(self) -> float:
        """Take the lock for this thread, trying up to `1 + retries` times; the validity in ms.

        Raises:
            LockNotAcquired: no attempt reached a majority of the nodes with validity left.
        """
        for attempt in range(self.retries + 1):
            if self._attempt():
                return self.validity_ms
            if attempt < self.retries:
                time.sleep(random.uniform(0, self.retry_delay_ms) / 1000)
        raise LockNotAcquired(
            f"Redlock {self.name!r} not acquired after {self.retries + 1} attempt(s): the last set on "
            f"{self.acquired_on} of {len(self.nodes)} servers; a majority is {self.quorum}. Another client "
            "holds it, or too many servers are down or slower than node_timeout_ms: retry later.")

    def release(self) -> int:
        """Release on every node at once; how many still had our token. `LockNotHeld` if this thread does not
        hold it."""
        if self.token is None:
            raise LockNotHeld(f"Redlock {self.name!r} is not held by this client (this thread): acquire() it first.")
        token, self._held.token, self._held.validity_ms = self.token, None, 0.0
        return self._release_everywhere(token)

    def __enter__(self) -> Redlock:
        self.acquire()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        ran_out = self.remaining_ms() == 0
        self.release()
        if ran_out:
            lost = LockNotHeld(f"Redlock {self.name!r}: its validity ({self.validity_ms:.0f} ms) ran out during "
                               "the block: the work done after that was not protected.")
            if exc is None:
                raise lost
            exc.add_note(str(lost))


class _Node:
    """One Redlock server as reached through one client: a sibling client with Redlock's node timeout and no
    retry, and the idle connections that every Redlock of that client takes in turn (made per client and
    timeout, once: a Redlock per resource name opens no connection of its own)."""

    def __init__(self, client: redis.Redis, timeout: float) -> None:
        self.address = _address(client)
        self.client = derive(client, retries=0, socket_timeout=timeout, socket_connect_timeout=timeout)
        self.release = scripts.register(self.client, "locks/release")
        self._idle: list[redis.Connection] = []  # list.pop and list.append are atomic: no lock needed
        self._pid = os.getpid()

    def take(self, pid: int) -> redis.Connection:
        """An idle connection, or a new one not yet connected. In a child process (`pid` is not the one that
        made this node) the parent's connections are forgotten, never used: they are the parent's sockets."""
        if pid != self._pid:
            self._idle, self._pid = [], pid
        try:
            return self._idle.pop()
        except IndexError:
            pool = self.client.connection_pool
            return pool.connection_class(**pool.connection_kwargs)

    def give_back(self, conn: redis.Connection) -> None:
        self._idle.append(conn)


_OK = (b"OK", "OK", True)  # SET's reply when it set the key: raw (bytes or decoded), or through a client
_NODES = "_labkit_redlock_nodes"  # the attribute a client keeps its Redlock nodes in, by node timeout


def _node(client: redis.Redis, timeout: float) -> _Node:
    nodes = client.__dict__.setdefault(_NODES, {})
    if timeout not in nodes:
        nodes[timeout] = _Node(client, timeout)
    return nodes[timeout]


@functools.cache
def _release_sha() -> str:
    return hashlib.sha1(scripts.source("locks/release").encode()).hexdigest()


def _connect_all(nodes: list[_Node]) -> list[tuple[_Node, redis.Connection | Exception]]:
    """A connection to every node; those not yet connected connect at once (a thread each), so a frozen node
    costs one connect timeout, not one per node. A node that cannot be reached gives its error instead."""
    pid = os.getpid()
    taken: list[tuple[_Node, redis.Connection | Exception]] = [(node, node.take(pid)) for node in nodes]
    _drop_closed([conn for _, conn in taken])
    new = [conn for _, conn in taken if conn._sock is None]
    if not new:
        return taken
    failed: dict[int, Exception] = {}

    def connect(conn: redis.Connection) -> None:
        try:
            conn.connect()
        except (redis.RedisError, OSError) as err:
            conn.disconnect()
            failed[id(conn)] = err

    threads = [threading.Thread(target=connect, args=(conn,)) for conn in new[1:]]
    for t in threads:
        t.start()
    if new:
        connect(new[0])
    for t in threads:
        t.join()
    result: list[tuple[_Node, redis.Connection | Exception]] = []
    for node, conn in taken:
        if id(conn) in failed:
            node.give_back(conn)
            result.append((node, failed[id(conn)]))
        else:
            result.append((node, conn))
    return result


def _drop_closed(conns: list[redis.Connection]) -> None:
    """Disconnect the idle connections that have something to read: the server closed them meanwhile (a
    restart, its idle timeout), so they connect again before use. One poll for all of them, not one
    read attempt each."""
    idle = {conn._sock.fileno(): conn for conn in conns if conn._sock is not None}
    if not idle:
        return
    try:
        poller = select.poll()
        for fd in idle:
            poller.register(fd, select.POLLIN)
        readable = [fd for fd, _ in poller.poll(0)]
    except AttributeError:  # no poll() (Windows): select, fine for a handful of sockets
        readable = select.select(list(idle), [], [], 0)[0]
    for fd in readable:
        idle[fd].disconnect()


def _send(conn: redis.Connection, command: tuple, packed: tuple | None) -> tuple:
    """Send `command` on `conn`, packed once for nodes that encode alike; return what was sent and how."""
    how = (conn.encoder.encoding, conn.encoder.encoding_errors)
    if packed is None or packed[0] != how:
        packed = (how, conn.pack_command(*command))
    try:
        conn.send_packed_command(packed[1], check_health=False)
    except (redis.RedisError, OSError):
        conn.disconnect()  # the read below finds it closed and reports the node's error
    return packed


def _reply(node: _Node, conn: redis.Connection | Exception, deadline: float) -> object:
    """The reply on `conn` if it comes by `deadline`, else the error; the connection goes back to `node`
    (closed if its reply did not come: a late one must never be read as the answer to the next command)."""
    if isinstance(conn, Exception):
        return conn
    try:
        if conn._sock is None:
            raise redis.ConnectionError("the connection was lost while sending")
        if not conn.can_read(timeout=max(0.0, deadline - time.monotonic())):
            raise redis.TimeoutError(f"no reply within the node timeout ({conn.socket_timeout} s)")
        return conn.read_response()
    except redis.ResponseError as err:
        return err
    except (redis.RedisError, OSError) as err:
        conn.disconnect()
        return err
    finally:
        node.give_back(conn)


def _quietly(call: Callable[[], T]) -> T | Exception:
    try:
        return call()
    except (redis.RedisError, OSError) as err:
        return err


def _address(client: redis.Redis) -> str:
    """Where `client` connects: a socket path, or host:port with loopback names made one."""
    if isinstance(client, redis.RedisCluster):
        raise ConfigError("Redlock takes clients of independent servers (redis.Redis), not a RedisCluster: the "
                          "nodes of one cluster are not independent (a lock key lives on one primary, and a "
                          "failover there can lose it). On a cluster use one Lock(cluster_client, ...) with "
                          "fencing tokens (FencedStore); keep Redlock for 3 or 5 independent servers.")
    kwargs = client.connection_pool.connection_kwargs
    if kwargs.get("path"):
        return str(kwargs["path"])
    host = str(kwargs.get("host", "localhost")).lower()
    return f"{'127.0.0.1' if host in LOOPBACK else host}:{kwargs.get('port', 6379)}"


def _independent_nodes(clients: list[redis.Redis], timeout: float) -> list[_Node]:
    """Redlock's servers, checked: at least one, an odd number, no server twice."""
    if not clients:
        raise ConfigError("Redlock needs a list of independent servers (3 or 5), got none.")
    n = len(clients)
    if n % 2 == 0:
        raise ConfigError(f"Redlock needs an odd number of independent servers, got {n}: a majority of {n} is "
                          f"{n // 2 + 1}, so {n} servers survive {n // 2 - 1} failure(s), no more than {n - 1} "
                          f"would: the extra one adds cost, not fault tolerance. Pass {n - 1} or {n + 1} (3 or 5 "
                          "is usual).")
    nodes = [_node(client, timeout) for client in clients]
    seen: dict[str, int] = {}
    for i, node in enumerate(nodes):
        if node.address in seen:
            raise ConfigError(f"Redlock needs independent servers, but clients {seen[node.address]} and {i} are the "
                              f"same server ({node.address}): pass one client per server.")
        seen[node.address] = i
    return nodes


class FencedStore:
    """A value that refuses a write carrying a fencing token below the highest it accepted: the current
    holder writes as often as it likes with its token; a holder whose lock was taken over cannot.

    Example:
        >>> store = FencedStore(r, "invoice:42")
        >>> store.write(7, "paid"), store.write(7, "paid, receipt sent"), store.write(6, "stale")
        (True, True, False)
    """

    def __init__(self, r: redis.Redis, name: str, *, prefix: str = "lab:fenced") -> None:
        self.r = r
        validate.name(name, "name")
        validate.prefix(prefix)
        self.key = f"{prefix}:{{{name}}}:value"
        self.highest_key = f"{prefix}:{{{name}}}:highest-token"
        self._write = scripts.register(r, "locks/fenced_write")

    def write(self, token: int, value: str | int | float) -> bool:
        """True if written; False if `token` is stale (below the highest accepted)."""
        validate.integer(token, "token (a lock's fence)")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"value must be a string or a number (what the server stores), got {value!r}: "
                              "serialise anything else first (json.dumps).")
        return bool(self._write(keys=[self.key, self.highest_key], args=[token, value]))

    def read(self) -> str | None:
        """The value last written (None if none was)."""
        return text(self.r.get(self.key))
