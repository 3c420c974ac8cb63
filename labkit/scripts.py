"""The Lua scripts labkit ships, as package files `labkit/lua/<module>/<script>.lua`.

Each file opens with a comment stating its KEYS, ARGV and return value. The loader puts the shared
prelude (`labkit/lua/prelude.lua`: `now_ms()`, the server's clock) before each script, so no script
carries a copy, and registers a script once per client.

Example:
    >>> release = register(r, "locks/release")
    >>> release(keys=["lab:lock:{job}"], args=[token])
    0
"""

from __future__ import annotations

import functools
from importlib.resources import files
from importlib.resources.abc import Traversable

import redis
from redis.commands.core import Script

from labkit.errors import ConfigError

PRELUDE = "prelude"
_REGISTRY = "_labkit_scripts"  # the attribute a client keeps its registered scripts in


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


def register(r: redis.Redis, name: str) -> Script:
    """The callable `Script` for `name` on client `r` (EVALSHA, falling back to EVAL once if the server
    lacks the script), made once per client and reused."""
    registered = r.__dict__.setdefault(_REGISTRY, {})
    if name not in registered:
        registered[name] = r.register_script(source(name))
    return registered[name]
