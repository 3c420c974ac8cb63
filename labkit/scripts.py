"""Lua scripts shipped as package files in `labkit/lua/NAME.lua`, each opening with a comment that states
its KEYS, ARGV and return value."""

from __future__ import annotations

import functools
from importlib.resources import files

import redis
from redis.commands.core import Script

from labkit.errors import ConfigError


@functools.cache
def source(name: str) -> str:
    """The text of `labkit/lua/<name>.lua`."""
    path = files("labkit") / "lua" / f"{name}.lua"
    if not path.is_file():
        known = sorted(p.name.removesuffix(".lua") for p in (files("labkit") / "lua").iterdir())
        raise ConfigError(f"No Lua script named {name!r}; labkit ships {', '.join(known)}.")
    return path.read_text()


def register(r: redis.Redis, name: str) -> Script:
    """A callable `Script` for `r` (EVALSHA, falling back to EVAL once if the server lacks it)."""
    return r.register_script(source(name))
