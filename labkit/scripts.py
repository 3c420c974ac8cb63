"""The Lua scripts labkit ships, as package files `labkit/lua/<module>/<script>.lua`.

Each file opens with a comment stating its KEYS, ARGV and return value. The loader puts the shared
prelude (`labkit/lua/prelude.lua`: `now_ms()`, the server's clock) before each script, so no script
carries a copy, and registers a script once per client.

The same files also make one function library per module (`library`, `load_library`): an administrator
loads it once with FUNCTION LOAD, and a client calls its functions with FCALL (`function`), so that a
service's ACL user can be given `+fcall` instead of `+eval` (arbitrary Lua).

Example:
    >>> release = register(r, "locks/release")
    >>> release(keys=["lab:lock:{job}"], args=[token])
    0
"""

from __future__ import annotations

import functools
import inspect
import os
import re
from importlib.resources import files
from importlib.resources.abc import Traversable

import redis
from redis.client import Pipeline
from redis.commands import core
from redis.exceptions import NoScriptError

from labkit.clients import text as decoded
from labkit.errors import ConfigError, MissingLibrary

PRELUDE = "prelude"
LIBRARY_PREFIX = "labkit_"  # library `labkit_<module>`, functions `labkit_<module>_<script>`
_REGISTRY = "_labkit_scripts"  # the attribute a client keeps its registered scripts in
_EXECUTE_COMMAND = inspect.unwrap(redis.Redis.execute_command)  # redis-py's own, under any wrapper put on it


def _root() -> Traversable:
    return files("labkit") / "lua"


def names() -> list[str]:
    """Every script labkit ships, as `module/script` (the prelude is not a script)."""
    return sorted(f"{module.name}/{path.name.removesuffix('.lua')}"
                  for module in _root().iterdir() if module.is_dir()
                  for path in module.iterdir() if path.name.endswith(".lua"))


@functools.cache
def text(name: str) -> str:
    """The file `labkit/lua/<name>.lua` as written, header comment first."""
    path = _root().joinpath(*f"{name}.lua".split("/"))
    if not path.is_file():
        raise ConfigError(f"No Lua script named {name!r}; labkit ships {', '.join(names())}.")
    return path.read_text()


@functools.cache
def source(name: str) -> str:
    """What the server runs for `name`: the prelude, then the script."""
    if name == PRELUDE:
        raise ConfigError(f"{PRELUDE!r} is put before every script; ask for a script: {', '.join(names())}.")
    return text(PRELUDE) + text(name)


class Script(core.Script):
    """redis-py's `Script` with a lean call: EVALSHA of the SHA1 computed once, SCRIPT LOAD and again only
    when the server lacks the script (a restart, a flush, another server). Called on hot paths, so it builds
    no argument tuples and, on the client it was registered with, sends as `on_key` does (over a borrowed
    connection where the client allows it); on another client or a pipeline, through `execute_command`."""

    def __init__(self, registered_client, script):
        super().__init__(registered_client, script)
        client = registered_client  # `on_key` borrows from its pool, unless it is anything but a plain client
        plain = (inspect.getattr_static(client, "execute_command") is _EXECUTE_COMMAND  # not overridden, wrapped
                 and not isinstance(client, Pipeline) and client.connection is None
                 and type(client.connection_pool) is redis.ConnectionPool
                 and getattr(client.connection_pool, "cache", None) is None
                 and client.connection_pool.connection_kwargs.get("credential_provider") is None)
        self._pool = client.connection_pool if plain else None

    def __call__(self, keys=(), args=(), client=None):
        if client is None or client is self.registered_client:
            return self._evalsha(len(keys), *keys, *args)
        if isinstance(client, Pipeline):
            client.scripts.add(self)  # the pipeline loads it before EXEC if the server lacks it
        try:
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = client.script_load(self.script)
            return client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

    def on_key(self, key, *args):
        """`self(keys=[key], args=args)` on the registered client, for a hot path: one key, the arguments as
        they are (no list or tuple built).

        On a client of one server whose connections do not retry (labkit's `clients.options()`) and whose
        pool is a plain `ConnectionPool` without a client-side cache or a credential provider, EVALSHA goes
        straight over a connection borrowed from the pool and given back at once (`_borrow`): redis-py's
        `execute_command` and `get_connection`/`release` cost about 13 us together (7 and 6, measured on the
        lab's machine, where an idle loopback round trip takes about 90) in retry, metrics and event plumbing
        that a command it must not retry has no use for. As a checkout does, the borrow looks (one
        non-blocking read) whether the server closed the connection and reconnects if so; a call that fails
        or is interrupted midway closes it, so a late reply is never read as the next call's. `labkit.trace`
        still sees the command and a response callback set for EVALSHA still parses the reply; redis-py's own
        metrics (its observability recorder) and release events do not count the borrow.
        Any other client (a cluster, a pipeline, a single-connection client, connections that retry, a
        blocking pool) goes through `execute_command`, and so does a client whose `execute_command` was
        overridden or wrapped when the script was registered (a subclass, tracing or APM instrumentation
        such as OpenTelemetry's): the wrapper sees every EVALSHA."""
        return self._evalsha(1, key, *args)

    def _evalsha(self, numkeys, *keys_and_args):
        """EVALSHA on the registered client (see `on_key`); SCRIPT LOAD and again if the server lacks it."""
        if isinstance(self.registered_client, Pipeline):
            self.registered_client.scripts.add(self)  # the pipeline loads it before EXEC if the server lacks it
        try:
            return self._send("EVALSHA", self.sha, numkeys, *keys_and_args)
        except NoScriptError:
            self._send("SCRIPT LOAD", self.script)  # it returns the SHA1 we send
            return self._send("EVALSHA", self.sha, numkeys, *keys_and_args)

    def _send(self, *command):
        pool = self._pool
        conn = None if pool is None else _borrow(pool)
        if conn is not None and conn.retry.get_retries() != 0:  # they retry: execute_command must send, always
            _give_back(pool, conn)
            conn, self._pool = None, None
        if conn is None:
            return self.registered_client.execute_command(*command)
        try:
            _drop_if_stale(conn)
            conn.send_command(*command)
            reply = conn.read_response()
        except redis.ResponseError:  # a whole reply was read (NOSCRIPT, a script error): the connection is fine
            raise
        except BaseException:
            conn.disconnect()  # the reply may still come: the next user must never read it
            raise
        finally:
            _give_back(pool, conn)
        # a callback set for EVALSHA, if any; dict.get skips case folding: the keys are upper case, as ours
        parse = dict.get(self.registered_client.response_callbacks, command[0])
        return reply if parse is None else parse(reply)


def _borrow(pool: redis.ConnectionPool) -> redis.Connection | None:
    """An idle connection of `pool`, counted in use as `pool.get_connection()` counts it, without the metrics
    and events around it; None (ask the pool itself) when it has none idle or was made in another process
    (after a fork, `get_connection` resets it)."""
    if pool.pid != os.getpid():
        return None
    with pool._lock:
        if not pool._available_connections:
            return None
        conn = pool._available_connections.pop()
        pool._in_use_connections.add(conn)
    return conn


def _give_back(pool: redis.ConnectionPool, conn: redis.Connection) -> None:
    """Return a borrowed connection as `pool.release()` does: idle again, or closed if the pool was reset
    meanwhile (it no longer counts the connection) or the connection asks to reconnect."""
    with pool._lock:
        counted = conn in pool._in_use_connections
        if counted:
            pool._in_use_connections.remove(conn)
            if conn.should_reconnect():
                conn.disconnect()
            pool._available_connections.append(conn)
    if not counted:
        conn.disconnect()


def _drop_if_stale(conn: redis.Connection) -> None:
    """Disconnect `conn` (the next command connects it again) if the server closed it or it holds data no
    command asked for: what a pool's checkout checks."""
    if conn._sock is None:
        return
    try:
        stale = conn.can_read()
    except (redis.ConnectionError, OSError):  # closed by the server
        stale = True
    if stale:
        conn.disconnect()


def register(r: redis.Redis, name: str) -> Script:
    """The callable `Script` for `name` on client `r` (EVALSHA by its SHA1, loading the script once if the
    server lacks it), made once per client and reused."""
    registered = r.__dict__.setdefault(_REGISTRY, {})
    if name not in registered:
        registered[name] = Script(r, source(name))
    return registered[name]


def modules() -> list[str]:
    """The modules that ship scripts, e.g. `sessions`: one function library each."""
    return sorted({name.split("/")[0] for name in names()})


def library_name(module: str) -> str:
    """The name of `module`'s function library: `labkit_<module>`."""
    if module not in modules():
        raise ConfigError(f"No scripts for module {module!r}; labkit ships {', '.join(modules())}.")
    return LIBRARY_PREFIX + module


def function_name(name: str) -> str:
    """The function that runs script `name` (`sessions/touch` -> `labkit_sessions_touch`)."""
    text(name)  # a clear error for a script that does not exist
    return LIBRARY_PREFIX + name.replace("/", "_")


@functools.cache
def library(module: str) -> str:
    """The scripts of `module` as one Lua function library: the prelude once, then each script as a local
    function of (KEYS, ARGV) registered under `function_name`. Its source is what FUNCTION LOAD takes."""
    parts = [f"#!lua name={library_name(module)}", text(PRELUDE)]
    for name in names():
        if name.split("/")[0] == module:
            local = "script_" + name.split("/")[1]
            parts += [f"local function {local}(KEYS, ARGV)", text(name).rstrip("\n"), "end",
                      f"redis.register_function('{function_name(name)}', {local})", ""]
    return "\n".join(parts)


def load_library(r: redis.Redis, module: str) -> str:
    """Load (or replace) `module`'s function library on the server of `r`, on every primary of a cluster;
    needs a user allowed FUNCTION LOAD (an administrator, not the service). Returns the library's name."""
    r.function_load(library(module), replace=True)
    return library_name(module)


class Function:
    """A function of a labkit library, called like a registered `Script`: `f(keys=[...], args=[...])`
    sends one FCALL."""

    def __init__(self, r: redis.Redis, name: str) -> None:
        self.r, self.name, self.module = r, function_name(name), name.split("/")[0]

    def __call__(self, keys: list | tuple = (), args: list | tuple = (), client: redis.Redis | None = None):
        try:
            return (client or self.r).fcall(self.name, len(keys), *keys, *args)
        except redis.ResponseError as err:
            if _NOT_FOUND.search(str(err)):
                raise MissingLibrary(f"The server has no function {self.name}: load the library once, as a user "
                                     "allowed FUNCTION LOAD: labkit.scripts.load_library(admin, "
                                     f"{self.module!r}).") from err
            raise


_NOT_FOUND = re.compile(r"function not found", re.I)


def function(r: redis.Redis, name: str) -> Function:
    """The callable function for script `name` on client `r` (FCALL; its library must be loaded), made once
    per client and reused."""
    registered = r.__dict__.setdefault(_REGISTRY, {})
    key = ("function", name)
    if key not in registered:
        registered[key] = Function(r, name)
    return registered[key]


def loaded_libraries(r: redis.Redis) -> list[str]:
    """The names of the labkit libraries loaded on the server of `r` (FUNCTION LIST)."""
    found = r.function_list(library=LIBRARY_PREFIX + "*")
    if isinstance(found, dict):  # a cluster client: one answer per node
        found = [lib for answer in found.values() for lib in answer]
    return sorted({decoded(_field(lib, "library_name")) for lib in found})


def _field(entry: dict | list, name: str) -> object:
    if isinstance(entry, dict):
        return entry.get(name, entry.get(name.encode()))
    flat = [decoded(x) for x in entry]
    return entry[flat.index(name) + 1]
