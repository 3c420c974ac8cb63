"""What a block of code sends to the server: every command, its reply, and the round trips.

`with trace(r):` records everything sent through the client's connections while the block runs, from any
thread (a background thread using the same client shows up too). It records at the wire, below redis-py's
helpers: a pipeline shows each of its commands in one round trip, a transaction shows MULTI, the QUEUED
replies and EXEC, a script shows EVALSHA (and the SCRIPT LOAD it needed, if any), and a connection opened
inside the block shows its handshake (HELLO, CLIENT SETINFO). Passwords sent by AUTH or HELLO are masked.
Traces nest: a trace inside another records in both. The table abridges where a command says least
(digests, script sources, the middle of long arguments), so keys and short arguments stay readable.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from labkit.errors import ConfigError

COMMAND_WIDTH = 72
KEY_SLACK = 28  # a line may grow this much past COMMAND_WIDTH rather than cut a key name
SCRIPT_WIDTH = 24
REPLY_WIDTH = 40
DIGEST = re.compile(r"[0-9a-f]{32,}")  # a SHA1 or SHA256 in hex: a script's digest, a cache key's hash
SCRIPT_AT = {"EVAL": 1, "EVAL_RO": 1, "SCRIPT LOAD": 2, "FUNCTION LOAD": -1}  # where the source code is
SECRET_AFTER = {"AUTH": 0, "HELLO": None}  # AUTH [user] pass; HELLO ... AUTH user pass


@dataclass
class Call:
    """One command as it went over the wire, with its reply (or the error the server sent)."""

    args: tuple[str, ...]
    connection: int
    round_trip: int
    handshake: bool = False
    reply: Any = None
    error: str | None = None

    @property
    def name(self) -> str:
        """The command's name, with its subcommand for container commands (CLIENT SETINFO, SCRIPT LOAD)."""
        head = self.args[0].upper() if self.args else ""
        if head in {"CLIENT", "SCRIPT", "CONFIG", "FUNCTION", "OBJECT", "MEMORY", "XINFO", "ACL", "CLUSTER",
                    "COMMAND", "LATENCY", "SLOWLOG", "FT.CONFIG", "XGROUP"} and len(self.args) > 1:
            return f"{head} {self.args[1].upper()}"
        return head


@dataclass
class Trace:
    """The commands recorded by `trace()`, in the order they were sent."""

    calls: list[Call] = field(default_factory=list)

    @property
    def round_trips(self) -> int:
        """Writes that waited for a reply: a pipeline of 100 commands is one. Like `names()`, without the
        handshake of a connection opened inside the block (`trips(handshake=True)` counts it too)."""
        return self.trips()

    def trips(self, *, handshake: bool = False) -> int:
        """The round trips, with the connection handshake's only if asked."""
        return len({(c.connection, c.round_trip) for c in self.calls if handshake or not c.handshake})

    def names(self, *, handshake: bool = False) -> list[str]:
        """The command names, without the connection handshake unless asked."""
        return [c.name for c in self.calls if handshake or not c.handshake]

    def table(self) -> str:
        """A short table: round trip, command with its arguments abridged, reply abridged."""
        trips = {key: i + 1 for i, key in enumerate(dict.fromkeys((c.connection, c.round_trip) for c in self.calls))}
        commands = [abridge_command(call.args) for call in self.calls]
        width = max([len("command"), *map(len, commands)])
        lines = [f"{'trip':>4}  {'command':<{width}}  reply"]
        for call, command in zip(self.calls, commands, strict=True):
            reply = f"(error) {call.error}" if call.error is not None else abridge_reply(call.reply)
            mark = " (connect)" if call.handshake else ""
            lines.append(f"{trips[(call.connection, call.round_trip)]:>4}  "
                         f"{command:<{width}}  {abridge(reply, REPLY_WIDTH)}{mark}")
        sent, trips = len(self.calls), self.trips(handshake=True)
        shaking = trips - self.round_trips
        lines.append(f"{sent} command{'s' * (sent != 1)} in {trips} round trip{'s' * (trips != 1)}"
                     + (f" ({shaking} of them the connection's handshake)" if shaking else ""))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def text(value: Any) -> str:
    """An argument as the server sees it: bytes decoded, numbers as digits, a str enum member (RedisVL's
    `VectorIndexAlgorithm.FLAT`) as the characters it holds ("FLAT"), which is what redis-py sends."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, str):
        return str.__str__(value)
    return str(value)


def abridge(value: str, width: int) -> str:
    """`value` on one line, cut to `width` characters with an ellipsis."""
    flat = value.replace("\n", "\\n")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def abridge_command(args: tuple[str, ...], width: int = COMMAND_WIDTH) -> str:
    """A command on one line, abridged where it says least: digests to their first 8 digits, a script's
    source to its start if the line is too long, then the longest values cut in the middle to fit `width`.
    Key names stay whole while the line fits `width + KEY_SLACK`; past that they are cut in the middle too
    (keeping prefix and end)."""
    words = [*args[0].split(), *args[1:]] if args else []  # redis-py sends "SCRIPT LOAD" as one argument
    parts = [DIGEST.sub(lambda m: m.group(0)[:8] + "…", a.replace("\n", "\\n")) for a in words]
    at = SCRIPT_AT.get(Call(tuple(words), 0, 0).name)
    too_long = len(" ".join(parts)) > width
    if at is not None and -len(parts) < at < len(parts) and len(parts) > 1 and too_long:
        parts[at] = abridge(parts[at], SCRIPT_WIDTH)
    keys = _key_positions(parts)
    for cut_keys, limit in ((False, width), (True, width + KEY_SLACK)):  # values first; keys only past the slack
        while len(" ".join(parts)) > limit:
            candidates = [i for i in range(1, len(parts)) if (i in keys) == cut_keys and len(parts[i]) > 12]
            if not candidates:
                break
            longest = max(candidates, key=lambda i: len(parts[i]))
            excess = len(" ".join(parts)) - limit
            parts[longest] = cut_middle(parts[longest], max(12, len(parts[longest]) - excess))
    return abridge(" ".join(parts), width + KEY_SLACK)


def _key_positions(parts: list[str]) -> set[int]:
    """Where the keys are: after the number of keys for a script or function call, else the first argument."""
    head = parts[0].upper() if parts else ""
    if head in {"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO"} and len(parts) > 2:
        try:
            return set(range(3, 3 + int(parts[2])))
        except ValueError:
            return set()
    return {1}


def cut_middle(value: str, width: int) -> str:
    """`value` cut to `width` characters by an ellipsis in the middle: its start and its end stay."""
    if len(value) <= width:
        return value
    head = (width - 1) // 2
    return value[:head] + "…" + value[len(value) - (width - 1 - head):]


def error_text(error: Exception) -> str:
    """An error reply as the server sent it: redis-py strips the code of the errors it maps to an exception
    class (`ERR`, `EXECABORT`, `NOSCRIPT`...) and keeps it in `status_code`; put it back."""
    code = getattr(error, "status_code", None)
    return f"{code} {error}" if code else str(error)


def abridge_reply(reply: Any, items: int = 3) -> str:
    """A reply as redis-cli would show it, on one line: lists cut to their first `items` elements, errors
    inside them (a transaction's EXEC) as `(error) CODE message`."""
    if isinstance(reply, Exception):
        return abridge(f"(error) {error_text(reply)}", REPLY_WIDTH)
    if isinstance(reply, (list, tuple)):
        shown = ", ".join(abridge_reply(r, items) for r in reply[:items])
        more = f", …{len(reply) - items} more" if len(reply) > items else ""
        return f"[{shown}{more}]"
    if isinstance(reply, dict):
        pairs = list(reply.items())
        shown = ", ".join(f"{abridge_reply(k)}: {abridge_reply(v)}" for k, v in pairs[:items])
        more = f", …{len(pairs) - items} more" if len(pairs) > items else ""
        return "{" + shown + more + "}"
    if reply is None:
        return "(nil)"
    if isinstance(reply, (bytes, bytearray, str)):
        return repr(abridge(DIGEST.sub(lambda m: m.group(0)[:8] + "…", text(reply)), REPLY_WIDTH))
    return abridge(str(reply), REPLY_WIDTH)


def masked(args: tuple[str, ...]) -> tuple[str, ...]:
    """`args` with the password of AUTH or HELLO ... AUTH replaced by ***."""
    head = args[0].upper() if args else ""
    if head == "AUTH":
        return (args[0], *args[1:-1], "***") if len(args) > 1 else args
    if head == "HELLO":
        upper = [a.upper() for a in args]
        if "AUTH" in upper:
            at = upper.index("AUTH")
            if at + 2 < len(args):
                return (*args[: at + 2], "***", *args[at + 3:])
    return args


_MISSING = object()


class _Recorder:
    """Patches the connections of the traced pools, and undoes it. A trace inside another patches on top of it
    (each layer calls the one below), so both record; each stop puts back exactly what its start replaced."""

    def __init__(self, pools: list[Any]) -> None:
        self.trace = Trace()
        self.pools = pools
        self.lock = threading.Lock()
        self.saved: list[tuple[Any, dict[str, Any]]] = []  # (pool or connection, its attributes before)
        self.ids: dict[int, int] = {}

    def start(self) -> None:
        try:
            for pool in self.pools:
                for conn in existing_connections(pool):
                    self.patch(conn)
                self.wrap_maker(pool)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for target, before in reversed(self.saved):
            for name, value in before.items():
                if value is _MISSING:
                    target.__dict__.pop(name, None)
                else:
                    target.__dict__[name] = value
        self.saved.clear()

    def replace(self, target: Any, **attributes: Any) -> None:
        """Set instance attributes of `target`, remembering what they were."""
        self.saved.append((target, {name: target.__dict__.get(name, _MISSING) for name in attributes}))
        target.__dict__.update(attributes)

    def wrap_maker(self, pool: Any) -> None:
        make = pool.make_connection

        def make_connection(*a: Any, **kw: Any) -> Any:
            conn = make(*a, **kw)
            self.patch(conn)
            return conn

        self.replace(pool, make_connection=make_connection)

    def patch(self, conn: Any) -> None:
        if id(conn) in self.ids:
            return
        conn_id = self.ids.setdefault(id(conn), len(self.ids) + 1)
        packer = conn._command_packer
        wire = _Wire(self, conn_id)
        send, read = conn.send_packed_command, conn.read_response
        connect, check_health = conn.connect_check_health, conn.check_health

        class Packer:
            def pack(self, *args: Any) -> Any:
                wire.packed(args)
                return packer.pack(*args)

            def __getattr__(self, name: str) -> Any:
                return getattr(packer, name)

        def send_packed_command(command: Any, check_health: bool = True) -> Any:
            try:
                send(command, check_health)
            except BaseException:
                wire.unsent.clear()
                raise
            wire.sent()

        def read_response(*a: Any, **kw: Any) -> Any:
            call = wire.replied()
            try:
                reply = read(*a, **kw)
            except redis.ResponseError as e:
                if call is not None:
                    call.error = error_text(e)
                raise
            except BaseException as e:
                if call is not None:
                    call.error = f"{type(e).__name__}: {e}"
                wire.pending.clear()
                raise
            if call is not None:
                call.reply = reply
            return reply

        def connect_check_health(*a: Any, **kw: Any) -> Any:
            with wire.nested(handshake=True):
                return connect(*a, **kw)

        def checked_health(*a: Any, **kw: Any) -> Any:
            with wire.nested(handshake=False):
                return check_health(*a, **kw)

        self.replace(conn, _command_packer=Packer(), send_packed_command=send_packed_command,
                     read_response=read_response, connect_check_health=connect_check_health,
                     check_health=checked_health)


class _Wire:
    """One connection's view: commands packed but not sent, sent awaiting a reply, and the round trip count."""

    def __init__(self, recorder: _Recorder, conn_id: int) -> None:
        self.recorder, self.conn_id = recorder, conn_id
        self.unsent: list[tuple[str, ...]] = []
        self.pending: deque[Call] = deque()
        self.trip = 0
        self.read_since_send = True
        self.handshake = False

    def packed(self, args: tuple[Any, ...]) -> None:
        self.unsent.append(masked(tuple(text(a) for a in args)))

    def sent(self) -> None:
        """The packed commands went out in one write: one round trip unless no reply was read since the last."""
        if not self.unsent:
            return
        if self.read_since_send:
            self.trip += 1
            self.read_since_send = False
        calls = [Call(args, self.conn_id, self.trip, self.handshake) for args in self.unsent]
        self.unsent.clear()
        self.pending.extend(calls)
        with self.recorder.lock:
            self.recorder.trace.calls.extend(calls)

    def replied(self) -> Call | None:
        self.read_since_send = True
        return self.pending.popleft() if self.pending else None

    @contextmanager
    def nested(self, *, handshake: bool) -> Iterator[None]:
        """A handshake or health check sent in the middle of sending another command: its own commands."""
        saved, before = self.unsent, self.handshake
        self.unsent, self.handshake = [], handshake or before
        if handshake:
            self.pending.clear()
        try:
            yield
        finally:
            self.unsent, self.handshake = saved, before


def existing_connections(pool: Any) -> list[Any]:
    """Every connection a pool holds now, idle or in use."""
    found = list(getattr(pool, "_available_connections", [])) + list(getattr(pool, "_in_use_connections", []))
    found += list(getattr(pool, "_connections", []))
    return list({id(c): c for c in found if c is not None}.values())


def pools_of(client: Any) -> list[Any]:
    """The connection pools behind a client: one for a Redis client, one per node for a RedisCluster."""
    if isinstance(client, redis.RedisCluster):
        return [node.redis_connection.connection_pool for node in client.get_nodes() if node.redis_connection]
    if isinstance(client, redis.Redis):
        return [client.connection_pool]
    raise ConfigError(f"trace() takes a redis.Redis or redis.RedisCluster client, not {type(client).__name__}; "
                      "for an asyncio client, trace the same commands on a synchronous one")


@contextmanager
def trace(client: Any, *, show: bool = True) -> Iterator[Trace]:
    """Record what is sent through `client`'s connections while the block runs (from any thread, so a
    background thread on the same client shows up too); print the table at the end unless `show=False`.

    >>> with trace(r) as t:
    ...     r.set("k", "v", nx=True)
    trip  command      reply
       1  SET k v NX   'OK'
    """
    recorder = _Recorder(pools_of(client))
    recorder.start()
    try:
        yield recorder.trace
    finally:
        recorder.stop()
    if show:
        print(recorder.trace.table())
