"""One real server process: start, readiness, failure injection, clean stop."""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

from labkit.clients import options, probe_options
from labkit.errors import ConfigError, ServerUnavailable
from labkit.server.binaries import Engine, find_engine, module_paths

HOST = "127.0.0.1"
READY_TIMEOUT_S = 15.0
_RUNNING: set[Server] = set()
_MODULES_REFUSED: dict[Path, str] = {}  # engine binary -> why the modules did not load into it


def temp_root() -> Path:
    """Where throwaway servers keep their directories (`LABKIT_TMP`, else the system temp dir)."""
    root = Path(os.environ.get("LABKIT_TMP") or tempfile.gettempdir())
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        where = f"LABKIT_TMP={root}" if os.environ.get("LABKIT_TMP") else f"The temp directory {root}"
        reason = "is not a directory" if isinstance(err, (FileExistsError, NotADirectoryError)) else (
            f"cannot be made ({err.strerror})")
        raise ConfigError(f"{where} {reason}: unset LABKIT_TMP or point it at a writable directory.") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ConfigError(f"{root} (LABKIT_TMP, else the system temp dir) is not writable: unset LABKIT_TMP or "
                          "point it at a writable directory.")
    return root


def pid_alive(pid: int) -> bool:
    """True if a process with this id exists (signal 0 tests without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


PORT_CLAIM_S = 900  # a port handed out is not handed out again (by any process sharing temp_root) for this long


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, with port+10000 free too (the cluster bus), and not handed
    to another server lately: a server killed and started again on its port must not find a stranger there."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port < 55535 and _port_free(port + 10000) and _claim(port):
            return port
    raise ServerUnavailable("Found no free port on 127.0.0.1.")


def _claim(port: int) -> bool:
    """Mark `port` as handed out, in a file under temp_root() that every process of this user shares; False
    if it was handed out in the last PORT_CLAIM_S seconds. Older marks are swept on the way."""
    claims = temp_root() / ".labkit-ports"
    claims.mkdir(exist_ok=True)
    now = time.time()
    for old in claims.iterdir():
        try:
            if now - old.stat().st_mtime > PORT_CLAIM_S:
                old.unlink()
        except FileNotFoundError:
            pass  # another process swept it first
    try:
        os.close(os.open(claims / str(port), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def mask(url: str) -> str:
    """`url` with its password replaced by ****."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0] if ":" in creds else ""
    return f"{scheme}://{user}:****@{host}"


def _config_lines(config: dict[str, Any]) -> list[str]:
    lines = []
    for key, value in config.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool):
                v = "yes" if v else "no"
            text = str(v)
            lines.append(f"{key.replace('_', '-')} {text if text else chr(34) * 2}")
    return lines


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGTERM us when the parent dies (no orphan servers)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


OWNER_MARKER = "labkit-owner.json"  # in each directory labkit makes for a server: who made it, what runs in it


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, from /proc), so that a pid the kernel handed to
    another process is told apart; None if there is no such process or no /proc."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else None


def _gone(pid: int | None, started: int | None) -> bool:
    """True when the process recorded as (`pid`, `started`) no longer runs: no such pid, a zombie, or a pid the
    kernel has since handed to another process (another start time)."""
    if pid is None or not pid_alive(pid):
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return False  # no /proc: the pid is alive, so keep the directory
    return fields[0] == "Z" or (started is not None and int(fields[19]) != started)


def _write_marker(directory: Path, *, server_pid: int | None = None) -> None:
    marker = {"owner_pid": os.getpid(), "owner_start": process_start(os.getpid()),
              "server_pid": server_pid, "server_start": process_start(server_pid) if server_pid else None}
    tmp = directory / f".{OWNER_MARKER}.tmp"
    tmp.write_text(json.dumps(marker))
    tmp.replace(directory / OWNER_MARKER)


def _read_marker(directory: Path) -> dict[str, Any] | None:
    marker = directory / OWNER_MARKER
    try:
        if marker.is_symlink() or not marker.is_file():
            return None
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("owner_pid"), int) else None


def _new_data_dir(root: Path | str | None) -> Path:
    """A new directory labkit-<this process's pid>-<random> under `root`, holding the owner marker. Under
    labkit's own temp root, the stale server directories there are swept first."""
    parent = (Path(root) if root else temp_root()).resolve()  # the server runs in its own directory
    parent.mkdir(parents=True, exist_ok=True)
    if parent == temp_root().resolve():  # never a directory of the caller's choosing
        _sweep_stale_dirs(parent)
    directory = Path(tempfile.mkdtemp(prefix=f"labkit-{os.getpid()}-", dir=parent))
    _write_marker(directory)
    return directory


def _sweep_stale_dirs(parent: Path) -> list[Path]:
    """Delete the server directories under `parent` that labkit made and that are provably abandoned. A
    notebook kernel shut down by its front end never runs atexit, and its server (which dies with it) leaves
    its directory behind, password in its config file included.

    A directory is swept only if it is a real directory (not a symlink) of this user holding labkit's owner
    marker, and both processes the marker names are gone: the owner (pid dead, or alive with another start
    time) and the server (likewise; none if it never started). A paused or busy server is alive, so its
    directory stays; nothing is decided on whether it answers. Returns the directories deleted."""
    swept = []
    for path in parent.glob("labkit-[0-9]*-*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        if path.is_symlink() or not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        marker = _read_marker(path)
        if marker is None:
            continue  # not provably labkit's: never touched
        if not (_gone(marker["owner_pid"], marker.get("owner_start"))
                and _gone(marker.get("server_pid"), marker.get("server_start"))):
            continue
        try:
            shutil.rmtree(path)
        except OSError:
            continue  # another process is sweeping it too, or a file is not ours: not claimed as deleted
        swept.append(path)
    return swept


# Directives labkit sets itself, with what to pass instead: given as `config`, they would override labkit's and
# leave a server it cannot reach, authenticate to, or clean up.
OWNED_DIRECTIVES = {
    "port": "labkit picks a free port; choose one with Server(port=...)",
    "requirepass": "every labkit server has a generated password; choose it with Server(password=...)",
    "masterauth": "labkit sets it to the server's password (Server(password=...))",
    "masteruser": "a replica authenticates with the server's password (Server(password=...))",
    "dir": "labkit gives each server a directory of its own; choose it with Server(directory=...), or where "
           "labkit makes it with root=",
    "logfile": "the log is the server's log_path, in its directory",
    "daemonize": "labkit runs the server in the foreground, to watch and stop it",
    "loadmodule": "labkit loads the search and JSON modules with modules=True",
    "replicaof": "use labkit.server.replicated(), or REPLICAOF on a client once the server runs",
    "slaveof": "use labkit.server.replicated(), or REPLICAOF on a client once the server runs",
}


def owned_directives(config: dict[str, Any], *, allow_no_password: bool = True) -> dict[str, Any]:
    """`config` (server directives), refusing those labkit sets itself, whatever their case or `_`/`-`
    spelling, with a `ConfigError` saying what to use instead. `requirepass=""` (no password, a lesson's
    open server) passes only with `allow_no_password`."""
    refused = []
    for key, value in config.items():
        if not isinstance(key, str):
            raise ConfigError(f"config keys are directive names (strings), got {key!r}.")
        directive = key.lower().replace("_", "-")
        if directive in OWNED_DIRECTIVES and not (directive == "requirepass" and value == "" and allow_no_password):
            refused.append(f"{key}: {OWNED_DIRECTIVES[directive]}")
    if refused:
        raise ConfigError("labkit sets these directives itself: " + "; ".join(refused) + ".")
    return config


class Server:
    """A real valkey-server/redis-server on 127.0.0.1, a free port and a generated password.

    It works in `directory` if given (kept at `stop()`), else in a new directory under `root` (default
    `temp_root()`) that `stop()` deletes. `config` holds server directives; a value of None leaves the
    directive out, so the engine's built-in default applies. The directives labkit sets itself (port,
    requirepass, dir, replicaof, ...: `OWNED_DIRECTIVES`) are refused, saying what to pass instead.

    Example:
        >>> with Server() as srv:
        ...     srv.client().ping()
        True
    """

    def __init__(
        self,
        engine: Engine | str | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
        directory: Path | str | None = None,
        root: Path | str | None = None,
        modules: bool = True,
        sentinel: bool = False,
        detached: bool = False,
        config: dict[str, Any] | None = None,
    ) -> None:
        config = owned_directives(dict(config or {}))  # before anything is made
        self.engine = engine if isinstance(engine, Engine) else find_engine(engine)
        self.host = HOST
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(18)
        self._owns_dir = directory is None
        self.dir = Path(directory).resolve() if directory else _new_data_dir(root)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sentinel = sentinel
        self.detached = detached
        self.config = config
        self.modules = {} if (sentinel or not modules) else module_paths()
        self.module_error: str | None = _MODULES_REFUSED.get(self.engine.server) if self.modules else None
        if self.module_error:
            self.modules = {}  # they failed to load into this engine before: do not try again
        self.proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self._probe: redis.Redis | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """`redis://:PASSWORD@127.0.0.1:PORT/0`."""
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else self._pid

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def _base_config(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "bind": HOST,
            "port": self.port,
            "requirepass": self.password,
            "dir": str(self.dir),
            "logfile": str(self.log_path),
            "daemonize": False,
            "set-proc-title": False,
        }
        if not self.sentinel:
            base |= {"masterauth": self.password, "save": "", "appendonly": False}
        if self.modules:
            base["loadmodule"] = [str(p) for p in self.modules.values()]
        return {key: value for key, value in (base | self.config).items() if value is not None}

    def write_config(self, extra_lines: list[str] = (), *, keep: bool = False) -> Path:
        """Write the config file from `config` (a sentinel's, or with `keep`, an existing one stays as it is)."""
        path = self.dir / ("sentinel.conf" if self.sentinel else "server.conf")
        if not ((self.sentinel or keep) and path.exists()):
            path.write_text("\n".join(_config_lines(self._base_config()) + list(extra_lines)) + "\n")
        return path

    def start(self, extra_lines: list[str] = (), *, keep_config: bool = False) -> Server:
        """Start the process and return once it answers PING (it may still be loading its data from disk:
        until then commands get LOADING).

        With `keep_config`, start from the config file as the server left it (say after CONFIG REWRITE)
        instead of writing it afresh from `config`. If the modules fail to load here, start again without
        them and record why in `module_error` (later servers of the same engine in this process do not try).
        """
        try:
            try:
                self._launch(self.write_config(extra_lines, keep=keep_config))
            except ServerUnavailable as err:
                if not self.modules:
                    raise
                self.module_error = str(err)
                self.modules = {}
                (self.dir / "server.conf").unlink(missing_ok=True)
                self._launch(self.write_config(extra_lines))
                _MODULES_REFUSED[self.engine.server] = self.module_error
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, conf: Path) -> None:
        args = [str(self.engine.server), str(conf)] + (["--sentinel"] if self.sentinel else [])
        in_main_thread = threading.current_thread() is threading.main_thread()
        own_death = not self.detached and sys.platform == "linux" and in_main_thread
        self.proc = subprocess.Popen(
            args,
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=self.detached,
            preexec_fn=_die_with_parent if own_death else None,
        )
        _RUNNING.add(self)
        if self._owns_dir:
            _write_marker(self.dir, server_pid=self.proc.pid)  # the sweep keeps the directory while this runs
        self._wait_ready()

    def _wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                _RUNNING.discard(self)
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise ServerUnavailable(
                    f"{self.engine.name} exited at start (code {self.proc.returncode}): {self._log_tail(err)}"
                )
            if ping_raw(self.host, self.port):
                return
            time.sleep(0.004)
        self.kill()
        raise ServerUnavailable(f"{self.engine.name} on port {self.port} did not answer PING within {timeout:.0f} s.")

    def _log_tail(self, stderr: str = "") -> str:
        text = stderr + (self.log_path.read_text(errors="replace") if self.log_path.exists() else "")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        return " | ".join(lines[-4:]) or "no log output"

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- failure injection -------------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL the process, as a crash would (data not yet persisted may be lost)."""
        if self.is_running():
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()
        _RUNNING.discard(self)

    def pause(self) -> None:
        """SIGSTOP: the process is frozen, its port open and silent (a GC pause, a VM stall)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        """SIGTERM, as for an upgrade: the server shuts down cleanly (saving a snapshot if it has save points)
        and its directory stays, so `start()` brings it back with its data."""
        if self.is_running():
            self._terminate()

    def restart(self, *, keep_config: bool = False) -> Server:
        """Stop (SIGTERM, if running) and start again on the same port, password and data directory;
        `keep_config` as in `start()`."""
        if self.is_running():
            self._terminate()
        return self.start(keep_config=keep_config)

    def _terminate(self, grace_s: float = 5.0) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        _RUNNING.discard(self)

    def stop(self) -> None:
        """Stop the process and delete its directory if labkit created it."""
        if self.is_running():
            self._terminate()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        _RUNNING.discard(self)
        if self._owns_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients -----------------------------------------------------------------------------
    def client(self, **kwargs: Any) -> redis.Redis:
        """A `redis.Redis` for this server: `decode_responses=True` and the timeouts and retry policy of
        `labkit.clients.options()` (5 s, 3 s to connect, no retry), each unless overridden; `connect()`
        states the same, so a cell behaves alike with either."""
        return redis.Redis(host=self.host, port=self.port, password=self.password,
                           **(options() | {"decode_responses": True} | kwargs))

    def probe(self) -> redis.Redis:
        """This server's probe client (made once): short timeouts and no retry, so asking a paused or dead
        server raises within about a second. Topology helpers ask their members through it."""
        if self._probe is None:
            self._probe = self.client(**probe_options())
        return self._probe

    def info(self, section: str = "server") -> dict[str, Any]:
        """INFO `section`, asked through the probe (a paused server raises `redis.TimeoutError` quickly)."""
        return self.probe().info(section)

    def __enter__(self) -> Server:
        return self if self.is_running() else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        role = "sentinel" if self.sentinel else self.engine.name
        return f"<Server {role} {self.host}:{self.port} pid={self.pid} {state}>"


def first_complaint(error: str | None) -> str:
    """The first warning line (`#`) of a start-up failure's log tail, without its pid and time stamp: why a
    module was refused, say; the whole message when it has none."""
    parts = [part.strip() for part in (error or "").split("|")]
    return next((part.split(" # ", 1)[1] for part in parts if " # " in part), error or "")


def ping_raw(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something on host:port answers PING like a Redis server (+PONG or -NOAUTH)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError:
        return False
    return reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH")


@atexit.register
def _stop_all() -> None:
    for server in list(_RUNNING):
        if not server.detached:
            server.stop()
