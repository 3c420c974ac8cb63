"""The lab server of this checkout, and `connect()`: which server a lesson talks to."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from labkit.clients import options, probe_options
from labkit.errors import ConfigError, ServerUnavailable
from labkit.keys import URL_ENV, WORKSHOP
from labkit.server.binaries import DEFAULT_ENGINE, find_engine
from labkit.server.process import HOST, Server, mask, pid_alive, ping_raw

LAB_SAVE = "3600 1 300 100 60 10000"
START_HINT = "Start it with `make lab` (or `python -m labkit server start`)"
_embedded: Server | None = None
_url_here: ContextVar[str | None] = ContextVar("labkit_url", default=None)  # url_context()


def home() -> Path:
    """The checkout's root (`LABKIT_HOME`, else the folder holding labkit's pyproject.toml, else cwd)."""
    if os.environ.get("LABKIT_HOME"):
        return Path(os.environ["LABKIT_HOME"]).resolve()
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").exists() else Path.cwd()


def state_dir() -> Path:
    return home() / ".labkit"


def _state_file() -> Path:
    return state_dir() / "server.json"


def read_state() -> dict[str, Any] | None:
    """The recorded lab server, or None when none is recorded."""
    try:
        return json.loads(_state_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _alive(state: dict[str, Any] | None) -> bool:
    return bool(state) and ping_raw(HOST, state["port"])


def start(engine: str | None = None) -> dict[str, Any]:
    """Start the lab server for this checkout (or reuse the running one); return its state.

    `engine` defaults to `LABKIT_ENGINE`, else valkey9. Each engine keeps its data in a directory of its own
    (`.labkit/data` for valkey9, `.labkit/data-NAME` for the others): one engine's snapshot format need not
    load into another."""
    state = read_state()
    if _alive(state):
        return state
    chosen = find_engine(engine)
    data = state_dir() / ("data" if chosen.name == DEFAULT_ENGINE else f"data-{chosen.name}")
    password = state["password"] if state else None
    server = Server(chosen, directory=data, password=password, detached=True, config={"save": LAB_SAVE})
    server.start()
    state = {
        "url": server.url, "port": server.port, "password": server.password, "pid": server.pid,
        "engine": server.engine.name, "version": server.engine.version, "dir": str(data),
        "modules": sorted(server.modules), "module_error": server.module_error, "started": time.time(),
    }
    _state_file().write_text(json.dumps(state, indent=2))
    _state_file().chmod(0o600)
    return state


def _is_ours(state: dict[str, Any]) -> bool:
    """Whether the recorded pid is the recorded lab server: the server on the recorded port takes the
    recorded password and says that it is that process (a pid or a port can be reused by another)."""
    try:
        with redis.Redis(host=HOST, port=state["port"], password=state["password"], **probe_options()) as probe:
            info = probe.info("server")
    except (redis.RedisError, OSError, KeyError):
        return False
    return info.get("process_id") == state.get("pid")


def stop() -> bool:
    """Stop the recorded lab server; True if one was running. Signals the recorded pid only once the server
    on the recorded port proves to be that process; a stale record is removed and nothing signalled."""
    state = read_state()
    _state_file().unlink(missing_ok=True)
    if not _alive(state) or not _is_ours(state):
        return False
    try:
        os.kill(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 10
    while (ping_raw(HOST, state["port"]) or _running(state["pid"])) and time.monotonic() < deadline:
        time.sleep(0.02)  # until the process is gone: it writes its last log lines after it stops answering
    return True


def _running(pid: int) -> bool:
    """Whether process `pid` still exists (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # no /proc (macOS): whether the pid exists at all
        return pid_alive(pid)


def status() -> dict[str, Any]:
    """`running`, and for a running server its masked URL, pid, engine and data directory."""
    state = read_state()
    if not _alive(state):
        return {"running": False, "state_file": str(_state_file())}
    return {"running": True, **{k: v for k, v in state.items() if k != "password"}, "url": mask(state["url"])}


def client_for(url: str, *, unreachable: str | None = None, **kwargs: Any) -> redis.Redis:
    """A checked client for `url`: `decode_responses=True` and the timeouts and retry policy of
    `labkit.clients.options()` unless overridden; one clear error naming the (masked) URL if it cannot be
    used, ending with `unreachable` (what to do) when the server cannot be reached."""
    kwargs = options() | {"decode_responses": True} | kwargs
    try:
        r = redis.Redis.from_url(url, **kwargs)
        probe = redis.Redis.from_url(url, **kwargs | {"retry": Retry(NoBackoff(), 0)})
    except ValueError as err:
        expected = "Expected redis://:PASSWORD@HOST:PORT/0."
        raise ConfigError(f"{mask(url)} is not a usable server URL ({err}). {expected}") from None
    try:
        with probe:
            probe.ping()
    except redis.AuthenticationError as err:
        raise ServerUnavailable(
            f"The server at {mask(url)} rejected the password ({err}). Check the password in the URL."
        ) from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as err:
        todo = unreachable or (f"{START_HINT} and use the URL it prints, or unset {URL_ENV} to let labkit start an "
                               f"embedded server.")
        raise ServerUnavailable(f"Cannot reach a server at {mask(url)} ({err}). {todo}") from None
    return r


@contextmanager
def url_context(url: str) -> Iterator[str]:
    """Inside, `connect()` and `configured_url()` use `url` in this thread (or task) only (a simulated
    learner: `labkit.workshop.as_learner`)."""
    token = _url_here.set(url)
    try:
        yield url
    finally:
        _url_here.reset(token)


def configured_url() -> str | None:
    """The server lessons use, without starting one: the URL set for this context (`workshop.as_learner`),
    else `LABKIT_REDIS_URL`, else this checkout's running lab server; None when there is none."""
    if url := _url_here.get() or os.environ.get(URL_ENV):
        return url
    state = read_state()
    return state["url"] if _alive(state) else None


def connect(url: str | None = None, *, own_server: bool = False, **kwargs: Any) -> redis.Redis:
    """The client for the lab: `url`, else the URL set for this context (`url_context`), else
    `LABKIT_REDIS_URL`, else this checkout's lab server, else an embedded server owned by this process
    (stopped at exit).

    `own_server=True` is for a lesson that changes the server itself (its configuration, its processes, its
    memory): such a lesson never runs on a workshop's shared server. When the server above is one (a
    workshop is open on it), it says so and uses an embedded server instead.

    Example:
        >>> r = connect()
        >>> r.ping()
        True
    """
    url = url or configured_url()
    if url:
        r = client_for(url, **kwargs)
        if not (own_server and _workshop_open(r)):
            return r
        r.close()
        print(f"labkit: a workshop is open on {mask(url)}, and this lesson changes the server itself, so it runs "
              f"on a server of its own on this machine.")
    return client_for(embedded().url, **kwargs)


def _workshop_open(r: redis.Redis) -> bool:
    """Whether a workshop is open on `r`'s server (its marker, which every learner may read, exists)."""
    try:
        return bool(r.exists(WORKSHOP))
    except redis.exceptions.NoPermissionError:  # a user who may not read the marker is no workshop learner
        return False


def embedded() -> Server:
    """The embedded server owned by this process, started on first use."""
    global _embedded
    if _embedded is None or not _embedded.is_running():
        _embedded = Server().start()
        mods = ", ".join(sorted(_embedded.modules)) or "no modules"
        print(
            f"labkit: started an embedded {_embedded.engine.name} {_embedded.engine.version} ({mods}) on "
            f"{HOST}:{_embedded.port} for this process; it stops when the process exits. {START_HINT} to keep one."
        )
    return _embedded
