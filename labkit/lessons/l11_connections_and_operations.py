"""Lesson 11, connections, timeouts, observability and security (`notebooks/11_connections_and_operations.ipynb`):
what a connection costs, pools under threads, asyncio and fork, clients against a paused server, retries that
count twice, what INFO, SLOWLOG, LATENCY and CLIENT LIST say, what MONITOR costs, ACL users and protected
configs, and the exercise checks. Every experiment that changes a server's configuration, pauses it or adds
users runs on a server it spawns; every client it makes states its timeouts and retry policy."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import random
import select
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import redis
import redis.asyncio as aredis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.retry import Retry

from labkit import ops, validate
from labkit.bench import side_by_side
from labkit.clients import connection_spec, options
from labkit.errors import ConfigError, ServerUnavailable
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Server, available_engines, spawn, tls_built_in
from labkit.server.process import free_port, temp_root
from labkit.server.topology import wait_until

PREFIX = "l11"  # the client names and thread names this lesson uses, so that Cleanup can find what is left
NO_RETRY = Retry(NoBackoff(), 0)
_SERVERS: list[Server] = []


# -- servers and clients of this lesson ------------------------------------------------------------------
def server(engine: str | None = None, **config: Any) -> Server:
    """A started server of this lesson's own (no modules; `engine` as in `spawn`), remembered so that Cleanup
    can check that every one of them was stopped."""
    srv = spawn(engine, modules=False, **config)
    _SERVERS.append(srv)
    return srv


def client_of(srv: Server, **overrides: Any) -> redis.Redis:
    """A client of `srv` with labkit's stated options (5 s, 3 s to connect, no retry) unless overridden."""
    return srv.client(**overrides)


def raw_kwargs(srv: Server) -> dict[str, Any]:
    """Where `srv` is and how to log in: nothing about timeouts or retries (each experiment states its own)."""
    return {"host": srv.host, "port": srv.port, "password": srv.password}


def describe_retry(retry: Retry) -> str:
    """`Retry(<backoff>, <retries>)`, for printing a retry policy."""
    return f"Retry({type(retry._backoff).__name__}(), {retry.get_retries()})"


def thread(target: Callable[..., Any], *args: Any, name: str = "worker") -> threading.Thread:
    """A started daemon thread named `l11-<name>` (Cleanup looks for threads of that name still alive)."""
    t = threading.Thread(target=target, args=args, name=f"{PREFIX}-{name}", daemon=True)
    t.start()
    return t


@dataclass(frozen=True)
class Leftovers:
    """What this lesson left running: its servers, its threads, and its connections to the lab server."""

    servers: list[str]
    threads: list[str]
    connections: list[str]

    def __bool__(self) -> bool:
        return bool(self.servers or self.threads or self.connections)


def leftovers(r: redis.Redis, settle_s: float = 5.0) -> Leftovers:
    """Servers, threads and lab-server connections of this lesson still alive (a connection just closed may
    take a moment to leave CLIENT LIST: asked again until `settle_s` passes)."""
    deadline = time.monotonic() + settle_s
    while True:
        found = Leftovers([repr(s) for s in _SERVERS if s.is_running()],
                          [t.name for t in threading.enumerate() if t.name.startswith(PREFIX)],
                          [f"{c.name} ({c.cmd})" for c in ops.connections(r, name_prefix=PREFIX)])
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def stop_all() -> None:
    """Stop every server this lesson started (Cleanup, or a cell that failed half-way)."""
    for srv in _SERVERS:
        srv.stop()


# -- 11.1 what a connection costs ------------------------------------------------------------------------
@dataclass(frozen=True)
class ConnectCost:
    """Median µs per GET with a new client each time and with a pooled one, and to build a `redis.Redis`
    object alone (no connection), timed in turns."""

    new_us: float
    pooled_us: float
    build_us: float

    @property
    def ratio(self) -> float:
        return self.new_us / self.pooled_us


def connect_cost(r: redis.Redis, key: str, reps: int = 200) -> ConnectCost:
    """GET `key` on `r`'s server `reps` times each way, in turns: through a new client (built, then TCP
    connect, the handshake, the GET, close) and through one pooled client; and, in the same turns, the
    building of a client alone (`redis.Redis(...)` then `close()`, which connects nothing)."""
    spec = connection_spec(r)
    pooled = redis.Redis(**spec, client_name=f"{PREFIX}-pooled")

    def fresh() -> None:
        with redis.Redis(**spec) as once:
            once.get(key)

    try:
        timings = side_by_side({"new": fresh, "pooled": lambda: pooled.get(key),
                                "build": lambda: redis.Redis(**spec).close()}, reps=reps)
    finally:
        pooled.close()
    return ConnectCost(timings["new"], timings["pooled"], timings["build"])


@dataclass(frozen=True)
class Handshake:
    """What the server received from one new client that sent one GET: the commands it ran (INFO commandstats)
    and the error replies it sent (INFO stats total_error_replies: commands it refused)."""

    commands: dict[str, int]
    errors: int

    @property
    def ceremony(self) -> int:
        """Commands sent besides the GET: the ones the server ran and the ones it refused."""
        return sum(self.commands.values()) - self.commands.get("get", 0) + self.errors


def commands_of_a_new_connection(srv: Server) -> Handshake:
    """The commands the server ran and refused for one new client that sent one GET (INFO commandstats and
    total_error_replies before and after, on a server nobody else uses)."""
    admin = client_of(srv)
    before, errors_before = _calls(admin), _error_replies(admin)
    with redis.Redis(**raw_kwargs(srv), **options()) as once:
        once.get("greeting")
    after, errors_after = _calls(admin), _error_replies(admin)
    admin.close()
    own = {"info": 2}  # the admin's INFO commandstats and INFO stats, run between the two readings
    commands = {name: n - before.get(name, 0) - own.get(name, 0) for name, n in after.items()
                if n - before.get(name, 0) - own.get(name, 0)}
    return Handshake(commands, errors_after - errors_before)


def _error_replies(c: redis.Redis) -> int:
    return int(c.info("stats")["total_error_replies"])


def _calls(c: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in c.info("commandstats").items()}


def plot_connect_cost(cost: ConnectCost) -> None:
    _, ax = plt.subplots(figsize=(7, 1.8))
    ax.barh(["pooled connection", "new connection per GET"], [cost.pooled_us, cost.new_us],
            color=["tab:green", "tab:red"])
    ax.set(xlabel="µs per GET (median, timed in turns)",
           title=f"a new connection per request: {cost.ratio:.0f}x slower")
    plt.tight_layout()
    plt.show()


@dataclass(frozen=True)
class ConnectionMemory:
    """Bytes of server memory per connection (CLIENT LIST's tot-mem, the mean over the connections opened):
    right after connecting (with the reply buffer and the connection's own query buffer, if the engine gives
    it one), once the server has shrunk their buffers (`shrunk_after_s` later), and for one connection with a
    big reply it does not read."""

    connections: int
    right_after: float
    idle: float
    shrunk_after_s: float
    reply_buffer_after: int
    reply_buffer_idle: int
    pending_reply: int
    pending_value_bytes: int
    query_buffer_after: float = 0


def memory_per_connection(srv: Server, n: int = 100, value_bytes: int = 4_000_000,
                          deadline_s: float = 15) -> ConnectionMemory:
    """Open `n` connections to `srv` (started with `enable-debug-command local`) and read what they cost
    right away, then once the server has shrunk their reply buffers; then one raw connection asks for a
    `value_bytes` value and reads nothing.

    The server shrinks the reply buffer of a connection whose replies were small when its cron next visits
    that connection (each about once a second): to read "right after" on all `n` at once, resizing is
    switched off while they connect (DEBUG REPLYBUFFER RESIZING 0), then on again and the shrink awaited
    with a deadline. An engine that gives each connection its own query buffer (qbuf-free in CLIENT LIST)
    frees it after about 2 s idle: that is awaited too. (INFO memory's mem_clients_normal says the same,
    but is updated by that cron too, so it lags; CLIENT LIST computes each connection's tot-mem when asked.)"""
    admin = client_of(srv, client_name=f"{PREFIX}-admin")
    idle = [client_of(srv, client_name=f"{PREFIX}-idle") for _ in range(n)]
    mine = lambda: ops.connections(admin, name_prefix=f"{PREFIX}-idle")  # noqa: E731
    try:
        admin.execute_command("DEBUG", "REPLYBUFFER", "RESIZING", 0)
        for c in idle:
            c.ping()
        connected = mine()
        admin.execute_command("DEBUG", "REPLYBUFFER", "RESIZING", 1)
        started = time.monotonic()
        first = max(c.reply_buffer for c in connected)
        wait_until(lambda: all(c.reply_buffer < first // 2 and not c.query_buffer for c in mine()), deadline_s,
                   "the connections' buffers to shrink", every=0.05)
        shrunk_after, shrunk = time.monotonic() - started, mine()
    finally:
        admin.execute_command("DEBUG", "REPLYBUFFER", "RESIZING", 1)
        for c in idle:
            c.close()
    pending = _pending_reply_memory(srv, admin, value_bytes)
    admin.close()
    return ConnectionMemory(n, statistics.mean(c.total_memory for c in connected),
                            statistics.mean(c.total_memory for c in shrunk), shrunk_after, first,
                            max(c.reply_buffer for c in shrunk), pending, value_bytes,
                            statistics.mean(c.query_buffer for c in connected))


def settled(read: Callable[[], int], deadline_s: float = 10, every: float = 0.05) -> int:
    """The value `read()` settles on: above 0 and the same three reads in a row (polled, with a deadline)."""
    deadline, last = time.monotonic() + deadline_s, []
    while time.monotonic() < deadline:
        last = [*last[-2:], read()]
        if len(last) == 3 and last[0] == last[1] == last[2] > 0:
            return last[-1]
        time.sleep(every)
    raise ServerUnavailable(f"a value that kept changing (last reads {last}) did not settle within {deadline_s} s")


def _slow_reader_memory(admin: redis.Redis) -> int:
    found = ops.connections(admin, name_prefix=f"{PREFIX}-slow-reader")
    return found[0].output_memory if found and found[0].cmd == "get" else 0


def _pending_reply_memory(srv: Server, admin: redis.Redis, value_bytes: int) -> int:
    admin.set("big", "x" * value_bytes)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader (set before connecting)
        s.connect((srv.host, srv.port))
        s.sendall(f"AUTH {srv.password}\r\nCLIENT SETNAME {PREFIX}-slow-reader\r\nGET big\r\n".encode())
        settled(lambda: _slow_reader_memory(admin))  # the server has queued what the socket does not take
        pending = ops.connections(admin, name_prefix=f"{PREFIX}-slow-reader")[0].total_memory
    admin.delete("big")
    return pending


def plot_connection_memory(mem: ConnectionMemory, folklore_kb: float = 20) -> None:
    _, ax = plt.subplots(figsize=(7, 2.0))
    labels = ["right after connecting", f"{mem.shrunk_after_s:.1f} s later"]
    ax.barh(labels, [mem.right_after / 1024, mem.idle / 1024], color=["tab:orange", "tab:green"])
    ax.axvline(folklore_kb, color="gray", linestyle="--", label=f'"about {folklore_kb:.0f} KB per connection"')
    ax.set(xlabel="KB of server memory per connection (CLIENT LIST tot-mem, mean)",
           title=f"{mem.connections} connections; one unread {mem.pending_value_bytes / 1e6:.0f} MB reply "
                 f"holds {mem.pending_reply / 1e6:.1f} MB")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    plt.tight_layout()
    plt.show()


def output_buffer_limits(c: redis.Redis) -> dict[str, tuple[int, int, int]]:
    """`client-output-buffer-limit` by client class (normal, slave (replicas), pubsub): (hard limit MiB, soft
    limit MiB, soft seconds); 0 0 0 is no limit."""
    words = c.config_get("client-output-buffer-limit")["client-output-buffer-limit"].split()
    return {words[i]: (int(words[i + 1]) // 2**20, int(words[i + 2]) // 2**20, int(words[i + 3]))
            for i in range(0, len(words), 4)}


@dataclass(frozen=True)
class MaxClients:
    """How many connections a server with `maxclients` took, the error the next one got, and INFO's count
    of refused connections."""

    maxclients: int
    accepted: int
    error: str
    rejected: int


def maxclients_reached(maxclients: int = 8) -> MaxClients:
    """Open connections (with a no-retry client each) to a server with `maxclients` until one is refused."""
    held: list[redis.Redis] = []
    with server(maxclients=maxclients) as srv:
        try:
            error = ""
            for _ in range(maxclients + 1):
                c = client_of(srv)
                try:
                    c.ping()
                except redis.ConnectionError as err:
                    error = str(err)
                    c.close()
                    break
                held.append(c)
            rejected = int(held[0].info("stats")["rejected_connections"])
        finally:
            for c in held:
                c.close()
    return MaxClients(maxclients, len(held), error, rejected)


# -- 11.2 pools ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Checkout:
    """A third checkout from a pool of two: the error it got and how long it took to get it."""

    pool: str
    error: str
    seconds: float


def third_checkout(pool: redis.ConnectionPool) -> Checkout:
    """Check out two connections from `pool` (a pool of two) and ask for a third: the error it got and how long
    it took; then give the two back and close the pool."""
    bound = f"max_connections={pool.max_connections}"
    name = f"{type(pool).__name__}({bound}" + (f", timeout={pool.timeout:g})" if hasattr(pool, "timeout") else ")")
    held = [pool.get_connection() for _ in range(2)]
    started = time.perf_counter()
    try:
        pool.get_connection()
        error = "none"
    except redis.ConnectionError as err:
        error = f"{type(err).__name__}: {err}"
    finally:
        seconds = time.perf_counter() - started
        for conn in held:
            pool.release(conn)
        pool.disconnect()
    return Checkout(name, error, seconds)


def blocking_checkout_after_release(srv: Server, hold_s: float = 0.2, timeout: float = 2.0) -> float:
    """Seconds a third checkout from a `BlockingConnectionPool` of two waited while another thread gave one
    of the two back after `hold_s`."""
    pool = redis.BlockingConnectionPool(max_connections=2, timeout=timeout, **raw_kwargs(srv), **options())
    held = [pool.get_connection() for _ in range(2)]
    timer = threading.Timer(hold_s, pool.release, args=(held[0],))
    timer.name = f"{PREFIX}-release"
    started = time.perf_counter()
    timer.start()
    try:
        third = pool.get_connection()
        waited = time.perf_counter() - started
        pool.release(third)
    finally:
        timer.join()
        pool.release(held[1])
        pool.disconnect()
    return waited


def connections_for_threads(srv: Server, threads: int = 16, block_s: float = 0.1) -> dict[str, int]:
    """Connections one shared client (redis-py's default pool, bounded at 100) opened for `threads` threads,
    started together (a barrier: a thread started late would find the others done): each sending 200 GETs
    back to back, and each sending one `BLPOP` of `block_s` seconds on an empty list (counted in CLIENT LIST
    by name)."""
    admin = client_of(srv)
    used = {}
    for label, work in (("200 GETs each", lambda c: [c.get("k") for _ in range(200)]),
                        (f"one BLPOP {block_s:g} s each", lambda c: c.blpop(["empty"], block_s))):
        name = f"{PREFIX}-threads-{len(used)}"
        shared = client_of(srv, client_name=name)
        together = threading.Barrier(threads)
        with ThreadPoolExecutor(threads, thread_name_prefix=f"{PREFIX}-pool") as executor:
            list(executor.map(lambda c, work=work, together=together: (together.wait(10), work(c)), [shared] * threads))
        used[label] = len(ops.connections(admin, name_prefix=name))
        shared.close()
    admin.close()
    return used


@dataclass(frozen=True)
class AsyncRun:
    """`tasks` concurrent BLPOPs through one asyncio pool: how many failed (by error), and how many
    connections the pool opened."""

    tasks: int
    errors: dict[str, int]
    connections: int
    seconds: float


async def _async_blpops(pool: aredis.ConnectionPool, tasks: int, block_s: float,
                        count: Callable[[], int]) -> AsyncRun:
    client = aredis.Redis(connection_pool=pool)
    errors: dict[str, int] = {}

    async def one() -> None:
        try:
            await client.blpop(["empty"], block_s)
        except redis.RedisError as err:
            errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    seconds = time.perf_counter() - started
    opened = count()
    await client.aclose()
    await pool.aclose()
    return AsyncRun(tasks, errors, opened, seconds)


def async_pools(srv: Server, tasks: int = 50, size: int = 10, block_s: float = 0.1) -> dict[str, AsyncRun]:
    """`tasks` concurrent `BLPOP block_s` through `redis.asyncio`'s ConnectionPool and BlockingConnectionPool,
    each of `size` connections (the blocking one waits up to 5 s for a free connection); the connections each
    opened are counted in CLIENT LIST."""
    admin = client_of(srv)
    makers = {f"ConnectionPool(max_connections={size})": aredis.ConnectionPool,
              f"BlockingConnectionPool(max_connections={size}, timeout=5)":
                  lambda **kw: aredis.BlockingConnectionPool(timeout=5, **kw)}
    runs = {}
    for i, (label, make) in enumerate(makers.items()):
        name = f"{PREFIX}-async-{i}"
        pool = make(max_connections=size, client_name=name, **raw_kwargs(srv), **options())
        count = lambda name=name: len(ops.connections(admin, name_prefix=name))  # noqa: E731
        runs[label] = run_async(_async_blpops(pool, tasks, block_s, count))
    admin.close()
    return runs


def run_async(coro: Any) -> Any:
    """Run a coroutine to completion from a notebook cell, where an event loop may already be running: in a
    thread of its own with its own loop."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(coro))
        except BaseException as err:  # re-raised in the caller's thread
            outcome.append(err)

    worker = thread(run, name="asyncio")
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def pid_guard_source() -> list[str]:
    """The code lines (comments dropped) of the installed redis-py's `ConnectionPool._checkpid`: what a pool
    does when it finds itself in a process other than the one that made it."""
    lines = inspect.getsource(redis.ConnectionPool._checkpid).splitlines()
    return [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def in_child(work: Callable[[], str], deadline_s: float = 10.0) -> str:
    """Fork; run `work()` in the child and return the text it produced (or the error it raised, as text).
    The child never runs the parent's cleanup (it leaves with os._exit), and one that is still running after
    `deadline_s` is killed."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12+ warns about fork with threads
        pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read_end)
            try:
                out = work()
            except BaseException as err:
                out = f"{type(err).__name__}: {err}"
            os.write(write_end, out.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    ready: list[int] = []
    try:
        ready, _, _ = select.select([read_end], [], [], deadline_s)
        out = _read_all(read_end) if ready else "(no answer: the child was killed)"
    finally:
        os.close(read_end)
        _reap(pid, grace_s=5.0 if ready else 0.0)
    return out


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def _reap(pid: int, grace_s: float) -> None:
    """Wait up to `grace_s` for the child to exit, then SIGKILL it."""
    deadline = time.monotonic() + grace_s
    while True:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@dataclass(frozen=True)
class ForkGuard:
    """CLIENT ID of the connection a pooled client used in the parent before the fork, in the child, and in
    the parent after."""

    parent_before: int
    child: int
    parent_after: int


def fork_pooled_client(srv: Server) -> ForkGuard:
    """A pooled client used before a fork, then in the child and again in the parent."""
    c = client_of(srv, client_name=f"{PREFIX}-forked-pool")
    try:
        before = c.client_id()
        child = int(in_child(lambda: str(c.client_id())))
        after = c.client_id()
    finally:
        c.close()
    return ForkGuard(before, child, after)


@dataclass(frozen=True)
class CrossTalk:
    """One connection shared by a parent and its child: each asked for its own key; what each got."""

    parent_asked: str
    parent_got: str
    child_asked: str
    child_got: str


def fork_shared_connection(srv: Server) -> CrossTalk:
    """A single-connection client (`single_connection_client=True`: one socket, no pool, so no pid guard)
    shared across a fork. The parent sends GET parent-key and, before it reads the reply, the child sends
    GET child-key and reads."""
    shared = client_of(srv, single_connection_client=True, socket_timeout=0.5)
    try:
        shared.mset({"parent-key": "the parent's value", "child-key": "the child's value"})
        shared.connection.send_command("GET", "parent-key")
        child_got = in_child(lambda: repr(shared.get("child-key")))
        try:
            parent_got = repr(shared.connection.read_response())
        except redis.RedisError as err:
            parent_got = f"{type(err).__name__}: {err}"
    finally:
        shared.close()
    return CrossTalk("parent-key", parent_got, "child-key", child_got)


def fork_then_connect(srv: Server) -> CrossTalk:
    """The fix: the child makes its own client after the fork (a post-fork hook), the parent keeps its own."""
    parent = client_of(srv, single_connection_client=True, socket_timeout=0.5)
    try:
        parent.mset({"parent-key": "the parent's value", "child-key": "the child's value"})
        parent.connection.send_command("GET", "parent-key")

        def child() -> str:
            with client_of(srv) as own:
                return repr(own.get("child-key"))

        child_got = in_child(child)
        parent_got = repr(parent.connection.read_response())
    finally:
        parent.close()
    return CrossTalk("parent-key", parent_got, "child-key", child_got)


# -- 11.3 timeouts and retries -------------------------------------------------------------------------------
@contextlib.contextmanager
def paused(srv: Server, at_most_s: float) -> Iterator[threading.Timer]:
    """SIGSTOP `srv` for the block, and resume it after `at_most_s` seconds even if the block is still
    waiting (a timer thread), or when the block ends, whichever comes first: no cell can hang on it."""
    timer = threading.Timer(at_most_s, srv.resume)
    timer.name = f"{PREFIX}-resume"
    srv.pause()
    timer.start()
    _wait_stopped(srv.pid)
    try:
        yield timer
    finally:
        timer.cancel()
        timer.join()
        srv.resume()


def _wait_stopped(pid: int | None, deadline_s: float = 5) -> None:
    """Return once the kernel shows process `pid` stopped (state T in /proc/<pid>/stat, Linux): SIGSTOP is
    delivered asynchronously, and a command sent in between could still be answered. Elsewhere, return."""
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
                return
        except (OSError, IndexError):
            return
        time.sleep(0.001)


@dataclass(frozen=True)
class Outcome:
    """What one call against a troubled server did: its result or error, and how long it took."""

    label: str
    result: str
    seconds: float
    attempts: int | None = None
    resumed_at: float | None = None

    @property
    def failed(self) -> bool:
        return self.result.startswith(("TimeoutError", "ConnectionError", "AuthenticationError"))


def timed(label: str, call: Callable[[], Any]) -> Outcome:
    """Run `call`, return its result (or the error it raised, as text) and how long it took."""
    started = time.perf_counter()
    try:
        result = repr(call())
    except redis.RedisError as err:
        result = f"{type(err).__name__}: {err}"
    return Outcome(label, result, time.perf_counter() - started)


def ping_paused(srv: Server, client: redis.Redis, label: str, pause_s: float) -> Outcome:
    """PING through `client` while `srv` is paused for at most `pause_s` seconds; `resumed_at` is `pause_s` if
    the timer resumed the server before the PING returned, None if the PING returned first."""
    client.ping()  # connected before the pause
    with paused(srv, pause_s) as timer:
        outcome = timed(label, client.ping)
        resumed = timer.finished.is_set()
    client.close()
    return Outcome(outcome.label, outcome.result, outcome.seconds, resumed_at=pause_s if resumed else None)


def _paused_with_default_retry(srv: Server, socket_timeout: float, at_most_s: float) -> Outcome:
    admin = client_of(srv)
    default = redis.Redis(**raw_kwargs(srv), socket_timeout=socket_timeout)
    default.ping()
    received = int(admin.info("stats")["total_connections_received"])
    with paused(srv, at_most_s):
        outcome = timed("a paused server", default.ping)
    default.close()
    reconnects = settled(lambda: int(admin.info("stats")["total_connections_received"]) - received)
    admin.close()
    return Outcome(outcome.label, outcome.result, outcome.seconds, attempts=1 + reconnects)


def _wrong_password_with(srv: Server, retry: Retry | None, label: str) -> Outcome:
    admin = client_of(srv)
    extra = {} if retry is None else {"retry": retry}
    outcome = timed(label, redis.Redis(host=srv.host, port=srv.port, password="wrong", socket_timeout=1,
                                       **extra).ping)
    attempts = sum(f.count for f in ops.acl_failures(admin) if f.reason == "auth")
    admin.close()
    return Outcome(outcome.label, outcome.result, outcome.seconds, attempts=attempts)


def default_retry_traps(srv: Server, socket_timeout: float = 0.2, at_most_s: float = 20) -> list[Outcome]:
    """What redis-py's default retry (`Redis(host=...)`: 10 retries, exponential backoff with jitter) does
    to a PING, all at once in threads: on `srv` paused (with a `socket_timeout` short enough for the cell;
    the attempts are counted by the server once resumed: each retry is a new connection it receives), on a
    closed port, and with a wrong password (attempts counted by the server's ACL LOG); each beside the same
    call with no retry."""
    port = closed_port()
    with server() as guarded, server() as guarded_once:  # started (and stopped) here, in the caller's thread
        calls = {
            "paused": lambda: _paused_with_default_retry(srv, socket_timeout, at_most_s),
            "closed, default": lambda: timed("a closed port", redis.Redis(host="127.0.0.1", port=port).ping),
            "closed, none": lambda: timed("a closed port, no retry",
                                          redis.Redis(host="127.0.0.1", port=port, retry=NO_RETRY).ping),
            "password, default": lambda: _wrong_password_with(guarded, None, "a wrong password"),
            "password, none": lambda: _wrong_password_with(guarded_once, NO_RETRY, "a wrong password, no retry"),
        }
        return list(in_parallel(calls).values())


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def retries_of(client: redis.Redis) -> tuple[int, str]:
    """How many times each connection of `client`'s pool retries a failed command, and with which backoff
    (read from a connection object the pool would make, not connected)."""
    pool = client.connection_pool
    conn = pool.connection_class(**pool.connection_kwargs)
    return conn.retry.get_retries(), type(conn.retry._backoff).__name__


def default_backoff() -> tuple[float, float]:
    """(base, cap) in seconds of the backoff a default `Redis(host=...)` sleeps between retries."""
    backoff = redis.Redis(host="127.0.0.1").connection_pool.connection_kwargs["retry"]._backoff
    return backoff._base, backoff._cap


def in_parallel(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each call in a thread of its own; return their results by name once all have returned."""
    with ThreadPoolExecutor(len(calls), thread_name_prefix=f"{PREFIX}-parallel") as executor:
        futures = {name: executor.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


@dataclass(frozen=True)
class Counted:
    """One INCR sent while the server was paused: what the client was told, and the counter afterwards."""

    label: str
    reply: str
    counter: int


def incr_while_paused(srv: Server, label: str, pause_s: float = 1.0,
                      write: Callable[[redis.Redis], Any] = lambda c: c.incr("counter"), **client: Any) -> Counted:
    """`write(c)` (by default INCR counter) through `c = Redis(host=..., **client)` on a fresh `counter` (and
    no `req:*` key) while `srv` is paused for `pause_s` seconds, then read the counter once the server has run
    everything it received."""
    admin = client_of(srv)
    admin.delete("counter", *admin.scan_iter("req:*"))
    c = redis.Redis(**raw_kwargs(srv), decode_responses=True, **client)
    c.ping()
    with paused(srv, pause_s):
        outcome = timed(label, lambda: write(c))
    c.close()
    wait_until(lambda: admin.get("counter") is not None, 5, "the abandoned INCR to run")
    counter = int(admin.get("counter"))
    admin.close()
    return Counted(label, outcome.result, counter)


def blpop_with_timeouts(srv: Server, block_s: float = 0.5) -> list[Outcome]:
    """`BLPOP empty block_s` through a client whose socket_timeout is shorter than the block, and through
    one whose socket_timeout is longer (both without retry)."""
    runs = []
    for timeout in (block_s / 2, block_s + 2):
        c = client_of(srv, socket_timeout=timeout)
        runs.append(timed(f"socket_timeout={timeout:g}", lambda c=c: c.blpop(["empty"], block_s)))
        c.close()
    return runs


def connect_to_full_backlog(connect_timeout: float = 0.25) -> Outcome:
    """A paused server whose accept queue is full (`tcp-backlog 1`, filled by raw connections): a new
    connection's TCP handshake gets no answer, and `socket_connect_timeout` ends the wait."""
    with server(tcp_backlog=1) as srv, paused(srv, 30):
        fillers = []
        try:
            for _ in range(8):
                s = socket.socket()
                s.settimeout(0.1)
                fillers.append(s)
                try:
                    s.connect((srv.host, srv.port))
                except OSError:
                    break  # the queue is full: this handshake was not answered
            c = client_of(srv, socket_connect_timeout=connect_timeout, socket_timeout=5)
            outcome = timed(f"socket_connect_timeout={connect_timeout:g}", c.ping)
            c.close()
        finally:
            for s in fillers:
                s.close()
    return outcome


class RecordingBackoff(ExponentialWithJitterBackoff):
    """redis-py's exponential backoff with jitter, remembering every delay it chose."""

    def __init__(self, cap: float, base: float) -> None:
        super().__init__(cap=cap, base=base)
        self.delays: list[float] = []

    def compute(self, failures: int) -> float:
        delay = super().compute(failures)
        self.delays.append(delay)
        return delay

    def __deepcopy__(self, memo: dict) -> RecordingBackoff:
        return self  # redis-py copies the Retry it is given: share this one, so its delays can be read


@dataclass(frozen=True)
class RetryRun:
    """A call through a client with `Retry(backoff, retries)`: what it got, and the delays it slept."""

    label: str
    result: str
    delays: list[float]


def retry_through_restart(down_s: float = 0.6, retries: int = 8, seed: int = 11) -> list[RetryRun]:
    """A server is killed and started again on the same port `down_s` seconds later (a restart, a failover):
    SET through a client without retry, and through one with `Retry(ExponentialWithJitterBackoff(base=0.05,
    cap=1), retries)`; then a WRONGTYPE error through the retrying client."""
    random.seed(seed)
    with server() as srv:
        runs = []
        for label, retry_count in (("no retry", 0), (f"Retry(backoff, {retries})", retries)):
            backoff = RecordingBackoff(cap=1.0, base=0.05)
            c = redis.Redis(**raw_kwargs(srv), **(options() | {"retry": Retry(backoff, retry_count)}),
                            decode_responses=True)
            c.ping()
            srv.kill()
            restart = threading.Timer(down_s, srv.start)
            restart.name = f"{PREFIX}-restart"
            restart.start()
            try:
                outcome = timed(label, lambda c=c: c.set("k", "v"))
            finally:  # a cell interrupted here must not leave a timer that starts the server after Cleanup
                restart.cancel()
                restart.join()
            if not srv.is_running():  # the call ended before the timer fired: restart here, in this thread
                srv.start()
            runs.append(RetryRun(label, outcome.result, backoff.delays))
            if retry_count:
                backoff.delays = []
                outcome = timed("WRONGTYPE", lambda c=c: c.lpush("k", "x"))
                runs.append(RetryRun(f"{label}, a WRONGTYPE error", outcome.result, backoff.delays))
            c.close()
    return runs


def retried_errors() -> dict[str, bool]:
    """Which redis-py errors a `Retry` retries by default (it retries ConnectionError, TimeoutError and
    socket.timeout, and so their subclasses). MaxConnectionsError is a ConnectionError too, but a full pool
    raises it before the command is sent, outside the retry loop: `full_pool_with_retry` shows it."""
    supported = Retry(NoBackoff(), 1)._supported_errors
    names = ("ConnectionError", "TimeoutError", "AuthenticationError", "BusyLoadingError", "ResponseError",
             "NoPermissionError", "ReadOnlyError", "OutOfMemoryError")
    return {name: issubclass(getattr(redis.exceptions, name), supported) for name in names}


def full_pool_with_retry(srv: Server, retries: int = 3) -> RetryRun:
    """A GET through a client with `Retry(backoff, retries)` whose `ConnectionPool(max_connections=1)` has its
    one connection checked out: the error, and the delays the backoff chose (none: no retry happened)."""
    backoff = RecordingBackoff(cap=1.0, base=0.05)
    pool = redis.ConnectionPool(max_connections=1, **raw_kwargs(srv),
                                **(options() | {"retry": Retry(backoff, retries)}))
    held = pool.get_connection()
    try:
        outcome = timed("a full pool", redis.Redis(connection_pool=pool).ping)
    finally:
        pool.release(held)
        pool.disconnect()
    return RetryRun(f"{outcome.label}, Retry(backoff, {retries}), {outcome.seconds * 1000:.2f} ms", outcome.result,
                    backoff.delays)


def health_checks(srv: Server, interval: int = 1) -> dict[str, int]:
    """PINGs a client with `health_check_interval=interval` sends before a GET: after an idle pause longer than
    the interval, and right after that (counted in INFO commandstats)."""
    admin = client_of(srv)
    c = client_of(srv, health_check_interval=interval)
    c.get("k")
    pings = {}
    for label, idle_s in ((f"after {interval + 0.2:g} s idle", interval + 0.2), ("right after", 0.0)):
        time.sleep(idle_s)
        before = _calls(admin).get("ping", 0)
        c.get("k")
        pings[label] = _calls(admin).get("ping", 0) - before
    c.close()
    admin.close()
    return pings


def plot_outcomes(outcomes: Sequence[Outcome], title: str) -> None:
    _, ax = plt.subplots(figsize=(8, 0.6 + 0.45 * len(outcomes)))
    labels = [o.label for o in outcomes]
    colors = ["tab:red" if o.failed else "tab:green" for o in outcomes]
    ax.barh(labels, [o.seconds for o in outcomes], color=colors)
    for i, o in enumerate(outcomes):
        note = o.result.split(":")[0] + (f", {o.attempts} attempt{'s' if o.attempts > 1 else ''}" if o.attempts else "")
        ax.text(o.seconds, i, f"  {o.seconds:.2f} s: {note}", va="center", fontsize=8)
        if o.resumed_at is not None:
            ax.plot([o.resumed_at], [i], "k|", markersize=14)
    ax.set(xlabel="seconds until the call returned (green: an answer, red: an error; |: server resumed)",
           title=title, xlim=(0, max(o.seconds for o in outcomes) * 1.6))
    ax.invert_yaxis()
    plt.tight_layout()
    plt.show()


# -- 11.4 observability ----------------------------------------------------------------------------------------
INFO_FIELDS = {
    "clients": ("connected_clients", "blocked_clients", "maxclients"),
    "memory": ("used_memory", "used_memory_peak", "maxmemory", "maxmemory_policy", "mem_clients_normal"),
    "stats": ("total_connections_received", "rejected_connections", "total_commands_processed",
              "instantaneous_ops_per_sec", "keyspace_hits", "keyspace_misses", "expired_keys", "evicted_keys"),
    "replication": ("role", "connected_slaves"),
}


def info_digest(c: redis.Redis) -> dict[str, dict[str, Any]]:
    """The INFO fields worth a dashboard, by section, plus the keyspace and the three busiest commands."""
    info = c.info("everything")
    digest = {section: {k: _mb(k, info.get(k)) for k in fields} for section, fields in INFO_FIELDS.items()}
    digest["keyspace"] = {k: v for k, v in info.items() if k.startswith("db") and isinstance(v, dict)}
    stats = {k.removeprefix("cmdstat_"): v for k, v in c.info("commandstats").items()}
    busiest = sorted(stats.items(), key=lambda kv: -int(kv[1]["usec"]))[:3]
    digest["commandstats"] = {name: {"calls": s["calls"], "usec_per_call": s["usec_per_call"]} for name, s in busiest}
    return digest


BYTE_FIELDS = {"used_memory", "used_memory_peak", "maxmemory", "mem_clients_normal"}


def _mb(field: str, value: Any) -> Any:
    """A byte count from INFO as megabytes (text), anything else as it is."""
    return f"{int(value) / 1e6:.2f} MB" if field in BYTE_FIELDS and value is not None else value


def stats_delta(c: redis.Redis, work: Callable[[], Any]) -> dict[str, int]:
    """How INFO stats' hit, miss and command counters moved while `work()` ran (one INFO before, one after)."""
    keys = ("keyspace_hits", "keyspace_misses", "total_commands_processed")
    before = c.info("stats")
    work()
    after = c.info("stats")
    return {k: int(after[k]) - int(before[k]) for k in keys}


@dataclass(frozen=True)
class MonitorCost:
    """The same pipelined SETs with and without a MONITOR client attached, in turns: the server's CPU per
    command (µs, INFO cpu) and the client's commands per second, medians of the rounds."""

    cpu_us: dict[str, float]
    ops_per_s: dict[str, float]
    lines_seen: int


def _server_cpu_s(c: redis.Redis) -> float:
    info = c.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _set_batch(c: redis.Redis, commands: int) -> None:
    with c.pipeline(transaction=False) as pipe:
        for i in range(commands):
            pipe.set(f"k{i % 100}", "v" * 50)
        pipe.execute()


def monitor_cost(srv: Server, rounds: int = 4, commands: int = 4_000, batch: int = 2_000) -> MonitorCost:
    """Time `commands` pipelined SETs `rounds` times without and with a MONITOR client that reads every
    line it is sent (in a thread), in turns."""
    c = client_of(srv)
    samples: dict[str, list[tuple[float, float]]] = {"without MONITOR": [], "with MONITOR": []}
    seen = [0]
    for _ in range(rounds):
        for mode in samples:
            with _monitoring(srv, seen) if mode == "with MONITOR" else contextlib.nullcontext():
                cpu, started = _server_cpu_s(c), time.perf_counter()
                for _ in range(commands // batch):
                    _set_batch(c, batch)
                elapsed, cpu_used = time.perf_counter() - started, _server_cpu_s(c) - cpu
            samples[mode].append((cpu_used / commands * 1e6, commands / elapsed))
    c.close()
    return MonitorCost({m: statistics.median(s[0] for s in v) for m, v in samples.items()},
                       {m: statistics.median(s[1] for s in v) for m, v in samples.items()}, seen[0])


@contextlib.contextmanager
def _monitoring(srv: Server, seen: list[int]) -> Iterator[None]:
    """A MONITOR client reading in a thread for the duration of the block."""
    watcher = client_of(srv, client_name=f"{PREFIX}-monitor", socket_timeout=10)
    nudge = client_of(srv)
    monitor = watcher.monitor()
    monitor.__enter__()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                monitor.next_command()
            except (redis.ConnectionError, redis.TimeoutError, ValueError):
                return  # the connection is gone (redis-py drops it after a timeout): nothing more to read
            seen[0] += 1

    reader = thread(read, name="monitor-reader")
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(redis.RedisError):  # cleanup goes on if the server cannot be nudged
            nudge.ping()  # one more line for the monitor, so that a reader waiting for one sees stop at once
        reader.join()
        monitor.__exit__(None, None, None)
        watcher.close()
        nudge.close()


def three_kinds_of_connection(srv: Server, idle_s: int = 1, value_bytes: int = 4_000_000) -> list[ops.ClientConnection]:
    """CLIENT LIST with three connections of note: one idle for `idle_s` seconds, one waiting in BLPOP, one
    with a `value_bytes` reply it does not read; each closed (the blocked one woken) before returning."""
    admin = client_of(srv)
    idle = client_of(srv, client_name=f"{PREFIX}-idle-app")
    idle.ping()
    waiting = client_of(srv, client_name=f"{PREFIX}-waiting-worker", socket_timeout=10)
    waiter = thread(lambda: waiting.blpop(["jobs"], 8), name="blpop")
    admin.set("big", "x" * value_bytes)
    try:
        with socket.socket() as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a slow reader (set before connecting)
            slow.connect((srv.host, srv.port))
            slow.sendall(f"AUTH {srv.password}\r\nCLIENT SETNAME {PREFIX}-slow-reader\r\nGET big\r\n".encode())

            def ready() -> bool:
                rows = {c.name.removeprefix(f"{PREFIX}-"): c for c in ops.connections(admin, name_prefix=PREFIX)}
                quiet, blocked, slow_reader = (rows.get(n) for n in ("idle-app", "waiting-worker", "slow-reader"))
                return bool(quiet and quiet.idle_s >= idle_s and blocked and blocked.blocked
                            and slow_reader and slow_reader.output_memory > 0)

            wait_until(ready, idle_s + 10, "the three connections to settle")
            settled(lambda: _slow_reader_memory(admin))
            rows = ops.connections(admin, name_prefix=PREFIX)
    finally:
        admin.lpush("jobs", "wake up")
        waiter.join()
        admin.delete("big", "jobs")
        for c in (idle, waiting, admin):
            c.close()
    return rows


def plot_monitor_cost(cost: MonitorCost) -> None:
    _, ax = plt.subplots(figsize=(7, 1.8))
    names = list(cost.cpu_us)
    ax.barh(names, [cost.cpu_us[n] for n in names], color=["tab:green", "tab:red"])
    ax.set(xlabel="server CPU per SET (µs, median of the rounds)", title="what the server spends")
    ax.invert_yaxis()
    plt.tight_layout()
    plt.show()


def mixed_workload(srv: Server, seed: int = 11) -> Callable[[threading.Event], None]:
    """A workload for the dashboard: three threads reading through a cache (GET, and SET what missed) that
    outgrows the server's `maxmemory` (hits, misses, evictions; 80% of reads go to 2,000 hot items, the rest
    to 200,000 others), a burst of 40 extra connections held for 1.5 s after the first second, and a slow command
    (DEBUG SLEEP 0.03) every 0.4 s."""

    def cache_user(stop: threading.Event, worker: int) -> None:
        rng = random.Random(seed + worker)
        c = client_of(srv, client_name=f"{PREFIX}-app-{worker}")
        while not stop.is_set():
            keys = [f"item:{rng.randrange(2_000) if rng.random() < 0.8 else rng.randrange(200_000)}"
                    for _ in range(50)]
            missed = [key for key, value in zip(keys, c.mget(keys), strict=True) if value is None]
            if missed:
                c.mset(dict.fromkeys(missed, "v" * 200))
            stop.wait(0.005)  # an application does other work between its reads
        c.close()

    def slow_commands(stop: threading.Event) -> None:
        c = client_of(srv, client_name=f"{PREFIX}-ops")
        while not stop.wait(0.4):
            c.execute_command("DEBUG", "SLEEP", "0.03")
        c.close()

    def burst(stop: threading.Event) -> None:
        if stop.wait(1.0):
            return
        extra = [client_of(srv, client_name=f"{PREFIX}-burst") for _ in range(40)]
        for e in extra:
            e.ping()
        stop.wait(1.5)
        for e in extra:
            e.close()

    def workload(stop: threading.Event) -> None:
        workers = [thread(cache_user, stop, i, name=f"app-{i}") for i in range(3)]
        workers.append(thread(slow_commands, stop, name="slow"))
        burst(stop)
        for w in workers:
            w.join()

    return workload


# -- 11.5 security ---------------------------------------------------------------------------------------------
def non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None without a network."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP "connect" only picks the route
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def first_reply(host: str, port: int, command: bytes = b"PING\r\n") -> str:
    """The first line a server sends back to a raw connection from `host` (no client library, no login)."""
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(command)
        return s.recv(300).decode(errors="replace").split("\r\n")[0]


def protected_mode(address: str) -> dict[str, str]:
    """A server with no password and protected mode on (the default), listening on loopback and on `address`:
    what a client from `address` and one from loopback hear; then, once a password is set, what the client
    from `address` hears. The server never answers a command from `address` without a password."""
    with server(requirepass="", bind=f"127.0.0.1 {address}") as srv:
        replies = {f"from {address}": first_reply(address, srv.port),
                   "from 127.0.0.1": first_reply("127.0.0.1", srv.port)}
        local = redis.Redis(host="127.0.0.1", port=srv.port, **options())
        local.config_set("requirepass", srv.password)
        local.close()
        replies[f"from {address}, password set"] = first_reply(address, srv.port)
    return replies


SERVICE_USERS = {
    "sessions": ["on", ">sessions-pw", "~session:*", "resetchannels", "&session:events", "-@all", "+@hash",
                 "+expire", "+del", "+exists", "+ping", "+publish"],
    "worker": ["on", ">worker-pw", "~jobs:*", "resetchannels", "-@all", "+@stream", "+ping"],
    "reporting": ["on", ">reporting-pw", "~report:*", "resetchannels", "+@read", "-@dangerous"],
    "metrics": ["on", ">metrics-pw", "resetchannels", "-@all", "+info", "+ping", "+slowlog|get",
                "+latency|latest", "+client|list"],
}
PROBES: dict[str, tuple[str | int, ...]] = {
    "HGETALL session:abc": ("HGETALL", "session:abc"),
    "PUBLISH session:events": ("PUBLISH", "session:events", "logout"),
    "XREADGROUP jobs:email": ("XREADGROUP", "GROUP", "g", "c", "STREAMS", "jobs:email", ">"),
    "GET report:daily": ("GET", "report:daily"),
    "GET session:abc": ("GET", "session:abc"),
    "SCAN 0": ("SCAN", 0),
    "KEYS *": ("KEYS", "*"),
    "INFO": ("INFO",),
    "PUBLISH orders": ("PUBLISH", "orders", "x"),
    "FLUSHALL": ("FLUSHALL",),
    "CONFIG SET": ("CONFIG", "SET", "maxmemory", "1"),
    "DEBUG SLEEP": ("DEBUG", "SLEEP", "0"),
}


def create_users(c: redis.Redis, users: dict[str, list[str]] = SERVICE_USERS) -> None:
    """ACL SETUSER each user from `reset`, so the rules are exactly these."""
    for name, rules in users.items():
        c.execute_command("ACL", "SETUSER", name, "reset", *rules)


def permission_matrix(c: redis.Redis, users: Sequence[str],
                      probes: dict[str, tuple] = PROBES) -> dict[str, dict[str, bool]]:
    """For each probe and user: would ACL DRYRUN let it run?"""
    return {probe: {user: ops.acl_dryrun(c, user, *command) is None for user in users}
            for probe, command in probes.items()}


def plot_permissions(matrix: dict[str, dict[str, bool]]) -> None:
    probes, users = list(matrix), list(next(iter(matrix.values())))
    grid = np.array([[matrix[p][u] for u in users] for p in probes], dtype=float)
    _, ax = plt.subplots(figsize=(6.5, 0.5 + 0.32 * len(probes)))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(users)), users)
    ax.set_yticks(range(len(probes)), probes, fontsize=8)
    ax.xaxis.tick_top()
    for i in range(len(probes)):
        for j in range(len(users)):
            ax.text(j, i, "allowed" if grid[i, j] else "refused", ha="center", va="center", fontsize=7)
    ax.set_title("ACL DRYRUN: each service user against each command", fontsize=9, pad=28)
    plt.tight_layout()
    plt.show()


def refused_as(srv: Server, user: str, password: str, command: Sequence[str | int]) -> str:
    """Log in as `user` and run `command`; the error it gets (or 'allowed')."""
    with redis.Redis(host=srv.host, port=srv.port, username=user, password=password, decode_responses=True,
                     **options()) as c:
        try:
            c.execute_command(*command)
        except redis.ResponseError as err:
            return str(err)
    return "allowed"


def config_set_refusals(c: redis.Redis) -> dict[str, str]:
    """What CONFIG SET says to settings an attacker would change, and to the switch that protects them."""
    attempts = {"dir": "/tmp", "dbfilename": "authorized_keys", "enable-protected-configs": "yes",
                "maxmemory-samples": "5"}
    replies = {}
    for setting, value in attempts.items():
        try:
            c.config_set(setting, value)
            replies[setting] = "OK"
        except redis.ResponseError as err:
            replies[setting] = str(err).split(" - ")[-1]
    return replies


@dataclass(frozen=True)
class Guessing:
    """Password guessing from one connection that never logged in: guesses per second one at a time (each
    waiting for its reply) against PINGs per second from a logged-in connection doing the same, and the median
    of their per-round ratio; guesses per second `depth` at a time (pipelined, each write ending with a PING
    whose reply says the server has answered all it will), the median ratio to one at a time, and how many of
    the wrong passwords pipelined got a reply; what `depth` - 1 wrong passwords and the right one in one write
    got; what ACL LOG counted against the wrong passwords sent; and what happened to a connection that sent
    `flood` wrong AUTHs, or `flood` PINGs, in one write without reading a reply."""

    guesses_per_s: float
    ping_per_s: float
    ratio: float
    pipelined_per_s: float
    pipelined_ratio: float
    depth: int
    pipelined_sent: int
    pipelined_answered: int  # WRONGPASS replies to the `pipelined_sent` wrong passwords
    right_guess: str  # the replies to `depth` - 1 wrong passwords and the right one in one write, then a PING
    sent: int  # wrong passwords sent before ACL LOG was read, all connections together
    logged_failures: int
    flood: int
    flood_reply: str
    ping_flood_reply: str

    @property
    def fastest_per_s(self) -> float:
        """Guesses per second the faster way."""
        return max(self.pipelined_per_s, self.guesses_per_s)

    @property
    def right_guess_found(self) -> bool:
        """The right password among pipelined guesses got its +OK, and the connection answered the PING after it."""
        return self.right_guess.endswith("+OK, +PONG")


def _one_at_a_time(s: socket.socket, lines: Sequence[bytes]) -> float:
    """Seconds to send each line and wait for its one-line reply."""
    started = time.perf_counter()
    for line in lines:
        s.sendall(line)
        if not s.recv(512):
            raise redis.ConnectionError("the server closed the connection")
    return time.perf_counter() - started


def _at_once(s: socket.socket, lines: Sequence[bytes], last: bytes) -> tuple[float, bytes, bool]:
    """Send every line in one write and read until the reply `last` (the last line's) arrives or the server
    closes the connection: the seconds that took, what came, and whether the server closed it."""
    started, received = time.perf_counter(), b""
    s.sendall(b"".join(lines))
    while not received.endswith(last):
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return time.perf_counter() - started, received, True
        received += chunk
    return time.perf_counter() - started, received, False


NOAUTH = b"-NOAUTH Authentication required.\r\n"  # what a PING gets from a connection that has not logged in


def _flood(srv: Server, line: Callable[[int], bytes], count: int) -> str:
    """Send `count` lines in one write from a new connection that never logged in, then a PING: what came back."""
    with socket.create_connection((srv.host, srv.port), timeout=5) as s:
        _, received, closed = _at_once(s, [line(i) for i in range(count)] + [b"PING\r\n"], NOAUTH)
    answered = received.count(b"\r\n") - (not closed)
    if closed:
        return f"closed by the server after {answered:,} replies"
    return f"{answered:,} of {count:,} answered, then the PING: the connection stays open"


def password_guessing(srv: Server, guesses: int = 2000, rounds: int = 40, depth: int = 15,
                      flood: int = 1000) -> Guessing:
    """`guesses` wrong AUTHs one at a time (no pipelining) from a connection that never logged in, against as
    many PINGs from a logged-in one, and `depth` at a time (then a PING) from the first, in `rounds` interleaved
    turns (the order alternating); `depth` - 1 wrong AUTHs and the right one in one write; then `flood` wrong
    AUTHs, and `flood` PINGs, in one write from new connections."""
    _check_guessing(srv, guesses, rounds, depth, flood)
    admin = client_of(srv)
    admin.acl_log_reset()
    per_round = guesses // rounds
    auths = lambda r, kind, n: [f"AUTH {kind}-{r}-{i}\r\n".encode() for i in range(n)]  # noqa: E731
    spent: dict[str, list[float]] = {"auth": [], "ping": [], "pipelined": []}
    replies = b""

    def pipelined(r: int) -> float:
        nonlocal replies
        seconds, received, closed = _at_once(guesser, [*auths(r, "many", depth), b"PING\r\n"], NOAUTH)
        if closed:
            raise redis.ConnectionError(
                f"the server closed a connection that sent {depth} guesses and a PING at once: their replies "
                f"overflowed its reply buffer, which shrinks to 1 KB for a connection whose replies stay small "
                f"(15 guesses and the PING fit)")
        replies += received
        return seconds

    with socket.create_connection((srv.host, srv.port), timeout=5) as guesser, \
            socket.create_connection((srv.host, srv.port), timeout=5) as user:
        _one_at_a_time(user, [f"AUTH {srv.password}\r\n".encode()])
        for r in range(rounds):
            turns = {"auth": lambda r=r: _one_at_a_time(guesser, auths(r, "one", per_round)),
                     "ping": lambda: _one_at_a_time(user, [b"PING\r\n"] * per_round),
                     "pipelined": lambda r=r: pipelined(r)}
            for kind in (list(spent) if r % 2 else list(reversed(spent))):
                spent[kind].append(turns[kind]())
        right = [*auths(0, "last", depth - 1), f"AUTH {srv.password}\r\n".encode(), b"PING\r\n"]
        _, received, closed = _at_once(guesser, right, b"+PONG\r\n")
    failures = sum(f.count for f in ops.acl_failures(admin, 100) if f.reason == "auth")
    admin.close()
    sent = {"auth": per_round * rounds, "ping": per_round * rounds, "pipelined": depth * rounds}
    rate = {kind: sent[kind] / sum(seconds) for kind, seconds in spent.items()}
    per_guess = {kind: [t / (depth if kind == "pipelined" else per_round) for t in seconds]
                 for kind, seconds in spent.items()}
    ratios = {"ping": statistics.median(map(_ratio, per_guess["ping"], per_guess["auth"])),
              "pipelined": statistics.median(map(_ratio, per_guess["auth"], per_guess["pipelined"]))}
    right_guess = _replies(received) + (", closed by the server" if closed else "")
    return Guessing(rate["auth"], rate["ping"], ratios["ping"], rate["pipelined"], ratios["pipelined"], depth,
                    sent["pipelined"], replies.count(b"-WRONGPASS"), right_guess,
                    sent["auth"] + sent["pipelined"] + depth - 1, failures, flood,
                    _flood(srv, lambda i: f"AUTH flood-{i}\r\n".encode(), flood),
                    _flood(srv, lambda i: b"PING\r\n", flood))


def _replies(received: bytes) -> str:
    """One-line replies, shortened: '15 x -WRONGPASS, +OK, +PONG'."""
    kinds = [line.split(b" ")[0].decode() for line in received.split(b"\r\n") if line]
    runs: list[list] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    return ", ".join(kind if n == 1 else f"{n} x {kind}" for kind, n in runs)


def _check_guessing(srv: Any, guesses: Any, rounds: Any, depth: Any, flood: Any) -> None:
    """Refuse bad arguments to `password_guessing` before it touches the server (and resets its ACL LOG)."""
    if not isinstance(srv, Server):
        raise ConfigError(f"srv must be a labkit Server this lesson started (lesson.server(...)): it needs the "
                          f"server's address and password, and resets its ACL LOG; got {type(srv).__name__}.")
    for what, value, least in (("guesses", guesses, 1), ("rounds", rounds, 1), ("depth", depth, 1),
                               ("flood", flood, 0)):
        validate.integer(value, what, minimum=least)
    if guesses < rounds:
        raise ConfigError(f"guesses ({guesses}) must be at least rounds ({rounds}): each round sends guesses // "
                          f"rounds of them one at a time.")


def _ratio(a: float, b: float) -> float:
    return a / b


def search_time_s(alphabet: int, length: int, per_second: float) -> float:
    """Seconds to try every password of `length` symbols from an `alphabet` at `per_second` guesses."""
    return alphabet**length / per_second


def tls_engine() -> str | None:
    """The first installed engine whose binary is built with TLS, if any (a capability, read from the binary)."""
    return next((name for name in available_engines() if tls_built_in(name)), None)


def make_certificates(directory: Path) -> dict[str, Path]:
    """A throwaway certificate authority and a certificate for 127.0.0.1 that it signed, made with the openssl
    command line (EC P-256 keys, valid for a day), in `directory`."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    steps = [
        ["req", "-x509", *ec, "-days", "1", "-subj", "/CN=labkit lesson 11 CA", "-keyout", "ca.key", "-out", "ca.crt"],
        ["req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
         "-extfile", "san.cnf", "-out", "server.crt"],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], cwd=directory, check=True, capture_output=True, timeout=30)
    return {"ca": directory / "ca.crt", "cert": directory / "server.crt", "key": directory / "server.key"}


@dataclass(frozen=True)
class TlsRun:
    """A server with a TLS port beside its plain one: what three clients got from the TLS port, and the median
    µs to open a new connection and PING, over TLS and in plain text, timed in turns."""

    engine: str
    trusted: str
    plain_text: str
    untrusted: str
    new_tls_us: float
    new_plain_us: float
    client_arguments: dict[str, str]  # the trusting client's, as code, without its password (the CA file by name)


def tls_demo(engine: str, reps: int = 12) -> TlsRun:
    """Certificates from a throwaway CA, a server of `engine` with `tls-port` (and `tls-auth-clients no`: the
    client checks the server, not the other way round), and clients that trust the CA, speak plain text to
    the TLS port, or do not know the CA."""
    with tempfile.TemporaryDirectory(dir=temp_root()) as tmp:
        certs = make_certificates(Path(tmp))
        tls_port = free_port()
        with server(engine=engine, tls_port=tls_port, tls_cert_file=certs["cert"], tls_key_file=certs["key"],
                    tls_ca_cert_file=certs["ca"], tls_auth_clients="no") as srv:
            base = {"host": "127.0.0.1", "password": srv.password} | options(timeout=2, connect_timeout=2)
            secure = {"port": tls_port, "ssl": True, "ssl_ca_certs": str(certs["ca"])} | base
            attempts = {"trusted": secure, "plain_text": {"port": tls_port} | base,
                        "untrusted": {"port": tls_port, "ssl": True} | base}
            replies = {name: timed(name, lambda kw=kw: _ping_once(kw)).result for name, kw in attempts.items()}
            times = side_by_side({"tls": lambda: _ping_once(secure), "plain": lambda: _ping_once(
                {"port": srv.port} | base)}, reps=reps)
    shown = {k: repr(Path(v).name) if k == "ssl_ca_certs" else describe_retry(v) if k == "retry" else repr(v)
             for k, v in secure.items() if k != "password"}
    return TlsRun(engine, replies["trusted"], replies["plain_text"], replies["untrusted"], times["tls"], times["plain"],
                  shown)


def _ping_once(kwargs: dict[str, Any]) -> bool:
    with redis.Redis(**kwargs) as c:
        return c.ping()


# -- common mistakes ---------------------------------------------------------------------------------------------
CLOSED_BY_US = {"04", "05", "06", "0B"}  # FIN_WAIT1, FIN_WAIT2, TIME_WAIT, CLOSING in /proc/net/tcp


def time_wait_sockets(port: int) -> set[str] | None:
    """This machine's sockets towards `port` that it closed and that linger in TIME_WAIT (or are on their way
    there, in FIN_WAIT), by local address and port (Linux: /proc/net/tcp and tcp6); None where that cannot be
    read."""
    found, seen = set(), False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for row in rows:
            fields = row.split()
            if fields[3] in CLOSED_BY_US and int(fields[2].rsplit(":", 1)[1], 16) == port:
                found.add(fields[1])
    return found if seen else None


@dataclass(frozen=True)
class PerRequest:
    """A handler run `requests` times: connections the server received, sockets it left in TIME_WAIT on this
    machine (new ones: None where that cannot be read), and connections still open once things settled."""

    requests: int
    connections_received: int
    time_wait: int | None
    open_after: int


def handler_runs(srv: Server, handler: Callable[[int], Any], requests: int = 200, *, owned: int = 0) -> PerRequest:
    """Call `handler(i)` `requests` times and count what it did to the connections of `srv`; `owned` is how many
    connections the handler's own clients keep open between requests (waited for, with a deadline)."""
    admin = client_of(srv)
    received = int(admin.info("stats")["total_connections_received"])
    before = int(admin.info("clients")["connected_clients"])  # the admin's and any others already open
    waiting = time_wait_sockets(srv.port)
    for i in range(requests):
        handler(i)
    opened = lambda: int(admin.info("clients")["connected_clients"]) - before  # noqa: E731
    with contextlib.suppress(ServerUnavailable):  # then report what is still open
        wait_until(lambda: opened() <= owned, 5, "closed connections to leave")
    now_waiting = time_wait_sockets(srv.port)
    new_waiting = None if waiting is None or now_waiting is None else len(now_waiting - waiting)
    result = PerRequest(requests, int(admin.info("stats")["total_connections_received"]) - received, new_waiting,
                        opened())
    admin.close()
    return result


def health_endpoint(srv: Server, client: redis.Redis, pause_s: float = 1.5) -> Outcome:
    """A health endpoint (`client.ping()`, False on an error) asked while the server is paused."""

    def healthy() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    client.ping()
    with paused(srv, pause_s) as timer:
        outcome = timed("health endpoint", healthy)
        resumed = timer.finished.is_set()
    client.close()
    return Outcome(outcome.label, outcome.result, outcome.seconds, resumed_at=pause_s if resumed else None)


def import_aioredis() -> str:
    """Try `import aioredis` as the copied snippets do; the error it raises, as text (or 'imported')."""
    try:
        import aioredis  # noqa: F401  (the unmaintained package: the import is the experiment)
    except (ImportError, TypeError) as err:  # TypeError: aioredis 2.0.1 on Python 3.11+
        return f"{type(err).__name__}: {err}"
    return "imported"


def open_server_attack(srv: Server) -> dict[str, str]:
    """What any local process can do to `srv` without a password: read a key, read the config, flush."""
    with redis.Redis(host=srv.host, port=srv.port, decode_responses=True, **options()) as stranger:
        results = {}
        for label, call in (("GET user:1:email", lambda: stranger.get("user:1:email")),
                            ("CONFIG GET requirepass", lambda: stranger.config_get("requirepass")),
                            ("FLUSHALL", stranger.flushall)):
            try:
                results[label] = repr(call())
            except redis.RedisError as err:
                results[label] = f"{type(err).__name__}: {err}"
    return results


# -- exercise 1: size a pool --------------------------------------------------------------------------------------
SERVICE = {"instances": 3, "threads": 8, "maxclients": 40, "reserved": 4, "spike_threads": 20, "call_s": 0.1}
SERVICE_TEXT = (
    "A checkout service runs as {instances} instances (processes), each with {threads} worker threads; every "
    "request makes one Redis call that holds its connection for about {call_s:g} s. The server allows "
    "{maxclients} clients (maxclients), of which {reserved} are kept for operators and monitoring. At a traffic "
    "spike each instance runs {spike_threads} threads. Nothing may fail under normal load or the spike, no "
    "worker thread should wait for a connection under normal load, and a request that cannot get a connection "
    "must fail within a few seconds rather than wait for ever. Every client states its timeouts."
).format(**SERVICE)
MAX_POOL_TIMEOUT_S = 5.0  # "fail within a few seconds"


@dataclass(frozen=True)
class LoadRun:
    """One load on every instance's pool: calls, failures (by error), seconds the threads spent waiting for a
    connection (all checkouts together), the most connections the server saw, and the ones it refused."""

    calls: int
    errors: dict[str, int]
    waited_s: float
    peak_connections: int
    rejected: int


def _timed_checkouts(pool: Any) -> None:
    """Make `pool` record how long each checkout takes in `pool.checkout_seconds` (wraps get_connection once)."""
    if hasattr(pool, "checkout_seconds"):
        return
    pool.checkout_seconds = []
    original = pool.get_connection

    def get_connection(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            pool.checkout_seconds.append(time.perf_counter() - started)

    pool.get_connection = get_connection


def _run_load(pools: list[Any], threads: int, calls_each: int, call_s: float, admin: redis.Redis) -> LoadRun:
    """`threads` threads per pool, each making `calls_each` calls that hold a connection for `call_s` (a BLPOP
    on an empty list), with every checkout timed."""
    errors: dict[str, int] = {}
    peak = [0]
    lock = threading.Lock()
    for pool in pools:
        _timed_checkouts(pool)
        pool.checkout_seconds.clear()
    rejected_before = int(admin.info("stats")["rejected_connections"])

    def work(client: redis.Redis) -> None:
        for _ in range(calls_each):
            try:
                client.blpop(["lab-empty"], call_s)
            except Exception as err:  # the learner's pool: any error (a TypeError from a wrong argument too) counts
                with lock:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1

    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], int(admin.info("clients")["connected_clients"]))

    watcher = thread(watch, name="pool-watch")
    try:
        clients = [redis.Redis(connection_pool=pool) for pool in pools]
        with ThreadPoolExecutor(threads * len(pools), thread_name_prefix=f"{PREFIX}-load") as executor:
            list(executor.map(work, [c for c in clients for _ in range(threads)]))
    finally:
        done.set()
        watcher.join()
    waited = sum(seconds for pool in pools for seconds in pool.checkout_seconds)
    return LoadRun(len(pools) * threads * calls_each, errors, waited, peak[0],
                   int(admin.info("stats")["rejected_connections"]) - rejected_before)


def _pool_facts(pool: Any) -> tuple[int | None, float | None, bool]:
    """(max_connections, checkout timeout, states socket_timeout) of a redis-py pool."""
    size = getattr(pool, "max_connections", None)
    timeout = getattr(pool, "timeout", None) if isinstance(pool, redis.BlockingConnectionPool) else None
    kwargs = getattr(pool, "connection_kwargs", {})
    return size, timeout, kwargs.get("socket_timeout") is not None


def _static_problems(pool: Any, service: dict[str, Any]) -> list[str]:
    if not isinstance(pool, redis.ConnectionPool):
        return [f"make_pool must return a redis-py pool (ConnectionPool or BlockingConnectionPool), got {pool!r}."]
    size, timeout, states_timeout = _pool_facts(pool)
    problems = []
    budget = (service["maxclients"] - service["reserved"]) // service["instances"]
    if size is None or size > budget:
        shown = f"{size}{' (redis-py default)' if size == redis.ConnectionPool().max_connections else ''}"
        problems.append(f"max_connections is {shown}: {service['instances']} instances may open more than the "
                        f"{budget} connections each that the server can give ((maxclients - reserved) / instances).")
    if size is not None and size < service["threads"]:
        problems.append(f"max_connections is {size}, fewer than the {service['threads']} worker threads: "
                        "under normal load threads queue for a connection.")
    if isinstance(pool, redis.BlockingConnectionPool) and (timeout is None or timeout > MAX_POOL_TIMEOUT_S):
        problems.append(f"the pool's timeout is {timeout}: a request must give up within a few seconds "
                        f"(at most {MAX_POOL_TIMEOUT_S:g}), not wait for ever.")
    if not states_timeout:
        problems.append("the pool's connections do not state socket_timeout: pass one (longer than the "
                        f"{service['call_s']:g} s a call blocks).")
    return problems


@check
def check_pool_size(make_pool: Callable[..., Any], service: dict[str, Any] = SERVICE) -> Result:
    """`make_pool(host=, port=, password=)` returns the pool one instance of the service in `SERVICE_TEXT`
    should use. The check makes one per instance against a server with the service's maxclients (the
    operators' connections held open), and runs the normal load, then the spike."""
    with server(maxclients=service["maxclients"], hz=100) as srv:
        operators = [client_of(srv, client_name=f"{PREFIX}-operator") for _ in range(service["reserved"])]
        for c in operators:
            c.ping()
        pools: list[Any] = []
        try:
            try:
                pools = [make_pool(**raw_kwargs(srv)) for _ in range(service["instances"])]
            except Exception as err:  # the learner's code: any error is an answer to judge
                return Result(False, f"make_pool raised {type(err).__name__}: {err}")
            problems = _static_problems(pools[0], service)
            if not isinstance(pools[0], redis.ConnectionPool):
                return verdict(problems, "")
            _run_load(pools, service["threads"], 1, service["call_s"], operators[0])  # warm up: connect first
            normal = _run_load(pools, service["threads"], 5, service["call_s"], operators[0])
            spike = _run_load(pools, service["spike_threads"], 3, service["call_s"], operators[0])
        finally:
            for pool in pools:
                if isinstance(pool, redis.ConnectionPool):
                    pool.disconnect()
            for c in operators:
                c.close()
    for label, run in (("normal load", normal), ("the spike", spike)):
        if run.errors:
            failed = ", ".join(f"{n} {name}" for name, n in run.errors.items())
            problems.append(f"under {label} {sum(run.errors.values())} of {run.calls} calls failed ({failed}); "
                            f"the server refused {run.rejected} connections.")
    busy_s = normal.calls * service["call_s"]
    if normal.waited_s > busy_s / 10:
        problems.append(f"under normal load the threads waited {normal.waited_s:.1f} s in all for a connection, "
                        f"against {busy_s:.0f} s of calls.")
    return verdict(problems, f"normal load: {normal.calls} calls, none failed, {normal.waited_s:.2f} s spent waiting "
                             f"for a connection; the spike: {spike.calls} calls, none failed, at most "
                             f"{spike.peak_connections} connections of {service['maxclients']}.")


# -- exercise 2: an ACL user for a cache service ---------------------------------------------------------------------
CACHE_PASSWORD = "cache-service-secret"
CACHE_ALLOWED: dict[str, tuple[str | int, ...]] = {
    "GET cache:user:1": ("GET", "cache:user:1"),
    "SET cache:user:1 EX 60": ("SET", "cache:user:1", "x", "EX", 60),
    "MGET cache:user:1 cache:user:2": ("MGET", "cache:user:1", "cache:user:2"),
    "EXPIRE cache:user:1 30": ("EXPIRE", "cache:user:1", 30),
    "TTL cache:user:1": ("TTL", "cache:user:1"),
    "DEL cache:user:1": ("DEL", "cache:user:1"),
    "PING": ("PING",),
    "PUBLISH cache:invalidations": ("PUBLISH", "cache:invalidations", "user:1"),
}
CACHE_REFUSED: dict[str, tuple[tuple[str | int, ...], str]] = {
    "GET session:abc": (("GET", "session:abc"), "keys outside cache:* (~cache:*, after resetkeys)"),
    "SET session:abc": (("SET", "session:abc", "x"), "keys outside cache:* (~cache:*, after resetkeys)"),
    "PUBLISH orders": (("PUBLISH", "orders", "x"),
                       "channels other than cache:invalidations (resetchannels, then &cache:invalidations)"),
    "FLUSHALL": (("FLUSHALL",), "FLUSHALL (-@dangerous, or leave it out of an allow-list)"),
    "FLUSHDB": (("FLUSHDB",), "FLUSHDB (-@dangerous)"),
    "KEYS *": (("KEYS", "*"), "KEYS (-@dangerous)"),
    "SCAN 0": (("SCAN", 0), "SCAN, which lists every key name whatever the key patterns (-scan, or an allow-list)"),
    "RANDOMKEY": (("RANDOMKEY",), "RANDOMKEY, which returns any key's name whatever the key patterns (-randomkey, "
                                  "or an allow-list)"),
    "CONFIG SET": (("CONFIG", "SET", "maxmemory", "1"), "CONFIG (-@dangerous, or -@admin)"),
    "DEBUG SLEEP 0": (("DEBUG", "SLEEP", 0), "DEBUG (-@dangerous)"),
    "SHUTDOWN": (("SHUTDOWN",), "SHUTDOWN (-@dangerous)"),
    "ACL SETUSER": (("ACL", "SETUSER", "cache", "+@all"), "ACL (-@dangerous): the user could grant itself anything"),
    "EVAL": (("EVAL", "return 1", 0), "EVAL and FUNCTION (-@scripting): a looping script keeps the server busy "
                                       "for every client, and a Lua bug is a way out of the sandbox"),
}


def _login(srv: Server, password: str) -> tuple[redis.Redis | None, str]:
    c = redis.Redis(host=srv.host, port=srv.port, username="cache", password=password, decode_responses=True,
                    **options())
    try:
        c.get("cache:probe")
    except redis.AuthenticationError as err:
        c.close()
        return None, f"the service cannot log in as cache with its password ({err}): add 'on' and '>{password}'."
    except redis.ResponseError:
        pass  # logged in; GET itself may be refused: judged below
    return c, ""


@check
def check_cache_acl(rules: Sequence[str]) -> Result:
    """`rules` (ACL SETUSER rules, applied after `reset`) make user `cache` for a cache service: it logs in with
    `CACHE_PASSWORD`, runs every command of `CACHE_ALLOWED` for real, and is refused every one of
    `CACHE_REFUSED` (asked with ACL DRYRUN, so nothing destructive runs)."""
    if isinstance(rules, str) or not all(isinstance(rule, str) for rule in rules):
        return Result(False, f"rules must be a list of ACL rules (strings), got {rules!r}.")
    with server(enable_debug_command="local") as srv:
        admin = client_of(srv)
        try:
            admin.execute_command("ACL", "SETUSER", "cache", "reset", *rules)
        except redis.ResponseError as err:
            return Result(False, f"ACL SETUSER refused the rules: {err}.")
        c, problem = _login(srv, CACHE_PASSWORD)
        if c is None:
            return Result(False, problem)
        problems = []
        stranger, _ = _login(srv, "not-" + CACHE_PASSWORD)
        if stranger is not None:
            stranger.close()
            problems.append("The user logs in with a wrong password too (nopass?): give it only "
                            f"'>{CACHE_PASSWORD}'.")
        for label, command in CACHE_ALLOWED.items():
            try:
                c.execute_command(*command)
            except redis.ResponseError as err:
                problems.append(f"{label} was refused ({err}).")
        c.close()
        allowed = [hint for label, (command, hint) in CACHE_REFUSED.items()
                   if ops.acl_dryrun(admin, "cache", *command) is None]
        if allowed:
            problems.append("The user may still run: " + "; ".join(allowed) + ".")
        admin.close()
    return verdict(problems, f"the cache user runs its {len(CACHE_ALLOWED)} commands and is refused the "
                             f"{len(CACHE_REFUSED)} others.")

