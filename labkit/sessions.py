"""Server-side sessions as hashes: sliding idle expiry, an absolute lifetime cap, rotation, log out everywhere.

Keys: `<prefix>:<id>` (a hash) and `<prefix>:user:<user_id>` (a set of that user's session ids, expiring
with the newest session's absolute lifetime). Hot-path calls (`create`, `get`, `touch`, `update`,
`invalidate`) are one round trip each.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field

import redis

from labkit import scripts, validate
from labkit.clients import text
from labkit.errors import ConfigError

RESERVED = frozenset({"user_id", "created", "last_seen", "deadline"})
ID_BYTES = 32
_ID = re.compile(r"^[A-Za-z0-9_-]{43}$")  # secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Session:
    """A session read from the server; times are ms since the epoch on the server's clock."""

    id: str
    user_id: str
    created: int
    last_seen: int
    deadline: int
    data: dict[str, str] = field(default_factory=dict)


def new_id() -> str:
    """A session id with 256 bits from `secrets` (never `random`, never anything a client chose)."""
    return secrets.token_urlsafe(ID_BYTES)


class SessionStore:
    """Sessions in hashes under `prefix`, idle TTL `ttl` seconds, absolute lifetime `absolute_ttl` seconds.

    Example:
        >>> store = SessionStore(r, ttl=1800, absolute_ttl=86400, prefix="lab:l03:session")
        >>> sid = store.create("user42", theme="dark")
        >>> store.touch(sid), store.get(sid).data["theme"]
        (True, 'dark')
    """

    def __init__(self, r: redis.Redis, ttl: float = 1800, absolute_ttl: float = 86400, prefix: str = "session"):
        validate.seconds(ttl, "ttl")
        validate.seconds(absolute_ttl, "absolute_ttl")
        if absolute_ttl < ttl:
            raise ConfigError(f"absolute_ttl ({absolute_ttl} s) must be at least the idle ttl ({ttl} s).")
        validate.prefix(prefix)
        self.r, self.prefix = r, prefix
        self.ttl_ms, self.absolute_ms = int(ttl * 1000), int(absolute_ttl * 1000)
        self._touch = scripts.register(r, "sessions/touch")
        self._update = scripts.register(r, "sessions/update")
        self._rotate = scripts.register(r, "sessions/rotate")

    def key(self, session_id: str) -> str:
        return f"{self.prefix}:{session_id}"

    def user_key(self, user_id: str) -> str:
        return f"{self.prefix}:user:{user_id}"

    def create(self, user_id: str, **meta: object) -> str:
        """Start a session for `user_id` with extra fields `meta`; return its new id."""
        validate.name(user_id, "user_id")
        fields = _fields(meta)
        session_id = new_id()
        with self.r.pipeline() as pipe:
            # EVAL, not a registered Script: inside a pipeline redis-py would first ask SCRIPT EXISTS
            pipe.eval(scripts.source("sessions/create"), 1, self.key(session_id),
                      self.ttl_ms, self.absolute_ms, "user_id", user_id, *fields)
            pipe.sadd(self.user_key(user_id), session_id)
            pipe.pexpire(self.user_key(user_id), self.absolute_ms)
            pipe.execute()
        return session_id

    def get(self, session_id: str) -> Session | None:
        """The session, or None if it is missing, expired, or the id is not one we could have issued."""
        if not _valid(session_id):
            return None
        data = self.r.hgetall(self.key(session_id))
        if not data or "user_id" not in data:
            return None
        data = {text(k): text(v) for k, v in data.items()}
        return Session(session_id, data.pop("user_id"), int(data.pop("created")), int(data.pop("last_seen")),
                       int(data.pop("deadline")), data)

    def touch(self, session_id: str) -> bool:
        """Refresh the idle TTL (capped by the absolute lifetime); True only if the session exists."""
        return _valid(session_id) and bool(self._touch(keys=[self.key(session_id)], args=[self.ttl_ms]))

    def update(self, session_id: str, **fields: object) -> bool:
        """Set some fields of an existing session (one round trip); False if it does not exist."""
        if not fields:
            raise ConfigError("update() needs at least one field.")
        return _valid(session_id) and bool(self._update(keys=[self.key(session_id)], args=_fields(fields)))

    def invalidate(self, session_id: str) -> bool:
        """Delete the session (log out); True if it existed."""
        return _valid(session_id) and self.r.delete(self.key(session_id)) == 1

    def rotate(self, session_id: str) -> str | None:
        """Give the session a new id (do it at login, against session fixation); the old id dies at once.
        Returns the new id, or None if the session does not exist."""
        if not _valid(session_id):
            return None
        fresh = new_id()
        user_id = self._rotate(keys=[self.key(session_id), self.key(fresh)])
        if not user_id:
            return None
        with self.r.pipeline() as pipe:
            pipe.srem(self.user_key(text(user_id)), session_id)
            pipe.sadd(self.user_key(text(user_id)), fresh)
            pipe.pexpire(self.user_key(text(user_id)), self.absolute_ms)
            pipe.execute()
        return fresh

    def sessions_of(self, user_id: str) -> list[str]:
        """The user's live session ids; ids of expired sessions are pruned from the index."""
        ids = sorted(text(i) for i in self.r.smembers(self.user_key(user_id)))
        with self.r.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.exists(self.key(session_id))
            alive = pipe.execute()
        dead = [i for i, ok in zip(ids, alive, strict=True) if not ok]
        if dead:
            self.r.srem(self.user_key(user_id), *dead)
        return [i for i, ok in zip(ids, alive, strict=True) if ok]

    def invalidate_user(self, user_id: str) -> int:
        """Log the user out everywhere; return how many live sessions were deleted."""
        keys = [self.key(text(i)) for i in self.r.smembers(self.user_key(user_id))]
        with self.r.pipeline() as pipe:
            if keys:
                pipe.delete(*keys)
            pipe.delete(self.user_key(user_id))
            replies = pipe.execute()
        return int(replies[0]) if keys else 0


def _valid(session_id: object) -> bool:
    if not isinstance(session_id, str) or not session_id:
        raise ConfigError(f"A session id is a non-empty string, got {session_id!r}.")
    return bool(_ID.match(session_id))


def _fields(values: dict[str, object]) -> list[str]:
    bad = sorted(set(values) & RESERVED)
    if bad:
        raise ConfigError(f"{bad} are managed by the store and cannot be set.")
    flat: list[str] = []
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Session field names must be non-empty strings, got {name!r}.")
        flat += [name, str(value)]
    return flat
