"""Key naming: `lab:<lesson>:<entity>:<id>:<field>`, and a per-lesson Namespace that cleans only itself."""

from __future__ import annotations

import re
from numbers import Integral

import redis

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError

ROOT = "lab"
SEP = ":"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def key(*parts: str | int) -> str:
    """Join parts with ':' (`key("user", 42, "name") == "user:42:name"`); parts are strings or integers, and
    may not be empty or contain ':'."""
    if not parts:
        raise ConfigError("key() needs at least one part.")
    bad = [p for p in parts if isinstance(p, bool) or not isinstance(p, (str, Integral)) or not str(p) or SEP in str(p)]
    if bad:
        raise ConfigError(f"Key parts are non-empty strings or integers and contain no ':', got {bad[0]!r} "
                          f"in {parts!r}.")
    return SEP.join(map(str, parts))


class Namespace:
    """The keys of one lesson: every key it makes starts with `lab:<name>:`.

    Example:
        >>> ns = Namespace("l00_setup")
        >>> ns.key("greeting")
        'lab:l00_setup:greeting'
        >>> ns.cleanup(r)  # deletes lab:l00_setup:* and nothing else
    """

    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"Namespace names are lowercase letters, digits, '_' and '-', got {name!r}.")
        self.name = name
        self.prefix = f"{ROOT}{SEP}{name}{SEP}"

    def key(self, *parts: object) -> str:
        """A key inside this namespace."""
        return self.prefix + key(*parts)

    @property
    def pattern(self) -> str:
        """The SCAN MATCH pattern for every key of this namespace."""
        return self.prefix + "*"

    def keys(self, r: redis.Redis, count: int = 1000) -> list[str]:
        """This namespace's keys (SCAN, never KEYS)."""
        validate.integer(count, "count")
        return [text(k) for k in r.scan_iter(match=self.pattern, count=count)]

    def cleanup(self, r: redis.Redis) -> int:
        """Delete this namespace's keys (SCAN + UNLINK); return how many were deleted."""
        return scan_unlink(r, self.pattern)

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"


def scan_unlink(r: redis.Redis, pattern: str, batch: int = 500) -> int:
    """UNLINK every key matching `pattern`, in batches, without blocking the server; return the count."""
    validate.name(pattern, "pattern")
    validate.integer(batch, "batch")
    deleted, chunk = 0, []
    for k in r.scan_iter(match=pattern, count=batch):
        chunk.append(k)
        if len(chunk) >= batch:
            deleted += r.unlink(*chunk)
            chunk = []
    if chunk:
        deleted += r.unlink(*chunk)
    return deleted


def reset(r: redis.Redis) -> int:
    """Delete every lab key (`lab:*`) and nothing else; return the count."""
    return scan_unlink(r, f"{ROOT}{SEP}*")
