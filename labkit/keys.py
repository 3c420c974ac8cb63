"""Key naming: `lab:<lesson>:<entity>:<id>:<field>` (in a workshop `lab:<learner>:<lesson>:...`), and a
per-lesson Namespace that cleans only itself."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from numbers import Integral
from urllib.parse import urlsplit

import redis

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError

ROOT = "lab"
SEP = ":"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_LEARNER = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_LESSON_LIKE = re.compile(r"^l\d")  # lesson namespaces are lNN: a learner named so would share their keys
USER_ENV = "LABKIT_USER"
URL_ENV = "LABKIT_REDIS_URL"  # the same as labkit.server.lab.URL_ENV (this leaf imports no server code)
WORKSHOP = "labkit:workshop"  # on a workshop server: the marker every learner may read (labkit.workshop)
_learner_here: ContextVar[str | None] = ContextVar("labkit_learner", default=None)


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


def learner_name(name: object, what: str = "a learner's name") -> str:
    """`name` if it can be a learner's name: a lowercase letter, then up to 31 lowercase letters, digits, '_'
    or '-' (it becomes a key segment and an ACL user name), and not `lNN...` (the lessons' namespaces)."""
    if not isinstance(name, str) or not _LEARNER.match(name):
        raise ConfigError(f"{what} is a lowercase letter followed by up to 31 lowercase letters, digits, '_' or "
                          f"'-' (no ':' or '*': it becomes part of every key), got {name!r}.")
    if _LESSON_LIKE.match(name):
        raise ConfigError(f"{what} may not start with 'l' and a digit (lesson namespaces are lNN), got {name!r}.")
    return name


def url_user(url: str | None) -> str | None:
    """The user name in a server URL (`redis://ada:PASSWORD@host:port/0` gives 'ada'), None for none or
    'default'."""
    try:
        user = urlsplit(url).username if url else None
    except ValueError:
        return None
    return user if user and user != "default" else None


def current_learner() -> str | None:
    """The learner whose keys this code writes, or None outside a workshop: the one set for this context
    (`labkit.workshop.as_learner`), else `LABKIT_USER`, else the user in `LABKIT_REDIS_URL` (a workshop's
    per-learner URL) when it is a valid learner name (other user names are ordinary accounts)."""
    if here := _learner_here.get():
        return here
    if chosen := os.environ.get(USER_ENV):
        return learner_name(chosen, USER_ENV)
    user = url_user(os.environ.get(URL_ENV))
    return user if user and _LEARNER.match(user) and not _LESSON_LIKE.match(user) else None


@contextmanager
def learner_context(name: str) -> Iterator[str]:
    """Inside, `current_learner()` is `name` in this thread (or task) only: many simulated learners can share a
    process (`labkit.workshop.as_learner`)."""
    token = _learner_here.set(learner_name(name))
    try:
        yield name
    finally:
        _learner_here.reset(token)


def learner_pattern(name: str) -> str:
    """The SCAN MATCH pattern (and ACL key pattern) of every key of learner `name`: `lab:<name>:*`."""
    return f"{ROOT}{SEP}{learner_name(name)}{SEP}*"


class Namespace:
    """The keys of one lesson: every key it makes starts with `lab:<name>:`, or `lab:<learner>:<name>:` for
    a learner (`current_learner()`: `LABKIT_USER`, or the user of a workshop's per-learner URL).

    Example:
        >>> ns = Namespace("l00_setup")
        >>> ns.key("greeting")
        'lab:l00_setup:greeting'
        >>> ns.cleanup(r)  # deletes lab:l00_setup:* and nothing else
        >>> Namespace("l00", learner="ada").key("greeting")
        'lab:ada:l00:greeting'
    """

    def __init__(self, name: str, *, learner: str | None = None) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"Namespace names are lowercase letters, digits, '_' and '-', got {name!r}.")
        self.name = name
        self.learner = learner_name(learner, "learner") if learner is not None else current_learner()
        owner = f"{self.learner}{SEP}" if self.learner else ""
        self.prefix = f"{ROOT}{SEP}{owner}{name}{SEP}"

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
        return f"Namespace({self.name!r}, learner={self.learner!r})" if self.learner else f"Namespace({self.name!r})"


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
