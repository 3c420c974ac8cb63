"""Server-side sessions as hashes: sliding idle expiry, an absolute lifetime cap, rotation, log out everywhere.

Keys: `<prefix>:{<tag>}:<random>` (a hash) and `<prefix>:{<tag>}:user:<user_id>` (a set of that user's
session ids, expiring with the newest session's absolute lifetime). The tag, four hex digits of a hash of
the user id, is also the start of each session id (`<tag>.<random>`): one user's sessions and index share a
hash slot, so every multi-key step is one script, also on a cluster. Hot-path calls (`create`, `get`,
`touch`, `update`, `invalidate`) are one round trip each; `rotate` and `invalidate_user` read, then run one
script. Field values are strings or numbers (numbers come back as their text); store anything structured
as JSON yourself.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
from dataclasses import dataclass, field

import redis

from labkit import scripts, validate
from labkit.clients import text
from labkit.errors import ConfigError

RESERVED = frozenset({"user_id", "created", "last_seen", "deadline"})
ID_BYTES = 32
TAG_HEX = 4  # 65,536 tags: enough to spread users over a cluster's 16,384 slots
_ID = re.compile(r"^([0-9a-f]{4})\.([A-Za-z0-9_-]{43})$")  # <tag>.<secrets.token_urlsafe(32)>
_BATCH = 1000  # session ids per invalidate_user script call


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
    """256 random bits from `secrets` (never `random`, never anything a client chose): the random part of a
    session id."""
    return secrets.token_urlsafe(ID_BYTES)


def user_tag(user_id: str) -> str:
    """The hash tag of `user_id`'s keys: four hex digits of its SHA-256."""
    return hashlib.sha256(user_id.encode()).hexdigest()[:TAG_HEX]


class SessionStore:
    """Sessions in hashes under `prefix`, idle TTL `ttl` seconds, absolute lifetime `absolute_ttl` seconds.

    Example:
        >>> store = SessionStore(r, ttl=1800, absolute_ttl=86400, prefix="lab:l03:session")
        >>> sid = store.create("user42", theme="dark")
        >>> store.touch(sid), store.get(sid).data["theme"]
        (True, 'dark')
    """

    def __init__(self, r: redis.Redis, ttl: float = 1800, absolute_ttl: float = 86400, prefix: str = "session"):
        self.ttl_ms = validate.milliseconds_from_seconds(ttl, "ttl")
        self.absolute_ms = validate.milliseconds_from_seconds(absolute_ttl, "absolute_ttl")
        if self.absolute_ms < self.ttl_ms:
            raise ConfigError(f"absolute_ttl ({absolute_ttl} s) must be at least the idle ttl ({ttl} s).")
        self.r, self.prefix = r, validate.prefix(prefix)
        self._create = scripts.register(r, "sessions/create")
        self._touch = scripts.register(r, "sessions/touch")
        self._update = scripts.register(r, "sessions/update")
        self._rotate = scripts.register(r, "sessions/rotate")
        self._invalidate_user = scripts.register(r, "sessions/invalidate_user")

    def new_id(self, user_id: str) -> str:
        """A fresh session id for `user_id`: its tag, a dot, 256 random bits."""
        return f"{user_tag(validate.name(user_id, 'user_id'))}.{new_id()}"

    def key(self, session_id: str) -> str:
        """The hash of session `session_id`; a ConfigError for an id this store could not have issued."""
        match = _ID.match(session_id) if _valid(session_id) else None
        if match is None:
            raise ConfigError(f"{session_id!r} is not a session id of this store: they look like "
                              f"{self.new_id('user')!r} (store.new_id(user_id) makes one).")
        return f"{self.prefix}:{{{match[1]}}}:{match[2]}"

    def user_key(self, user_id: str) -> str:
        """The set indexing `user_id`'s session ids."""
        return f"{self.prefix}:{{{user_tag(validate.name(user_id, 'user_id'))}}}:user:{user_id}"

    def create(self, user_id: str, **meta: object) -> str:
        """Start a session for `user_id` with extra fields `meta` (strings or numbers); return its new id."""
        fields = _fields(meta)
        session_id = self.new_id(user_id)
        self._create(keys=[self.key(session_id), self.user_key(user_id)],
                     args=[self.ttl_ms, self.absolute_ms, session_id, "user_id", user_id, *fields])
        return session_id

    def get(self, session_id: str) -> Session | None:
        """The session, or None if it is missing, expired, or the id is not one we could have issued."""
        if not _valid(session_id):
            return None
        data = self.r.hgetall(self.key(session_id))
        data = {text(k): text(v) for k, v in data.items()}
        if "user_id" not in data:
            return None
        return Session(session_id, data.pop("user_id"), int(data.pop("created")), int(data.pop("last_seen")),
                       int(data.pop("deadline")), data)

    def touch(self, session_id: str) -> bool:
        """Refresh the idle TTL (capped by the absolute lifetime); True only if the session exists."""
        return _valid(session_id) and bool(self._touch(keys=[self.key(session_id)], args=[self.ttl_ms]))

    def update(self, session_id: str, **fields: object) -> bool:
        """Set some fields of an existing session (one round trip); False if it does not exist."""
        if not fields:
            raise ConfigError("update() needs at least one field, e.g. update(session_id, theme='dark').")
        flat = _fields(fields)
        return _valid(session_id) and bool(self._update(keys=[self.key(session_id)], args=flat))

    def invalidate(self, session_id: str) -> bool:
        """Delete the session (log out); True if it existed."""
        return _valid(session_id) and self.r.delete(self.key(session_id)) == 1

    def rotate(self, session_id: str) -> str | None:
        """Give the session a new id (do it at login, against session fixation); the old id dies at once.
        Returns the new id, or None if the session does not exist. One read, then one script."""
        if not _valid(session_id):
            return None
        user_id = self.r.hget(self.key(session_id), "user_id")
        if user_id is None or user_tag(text(user_id)) != session_id[:TAG_HEX]:
            return None
        user_id = text(user_id)
        fresh = self.new_id(user_id)
        moved = self._rotate(keys=[self.key(session_id), self.key(fresh), self.user_key(user_id)],
                             args=[user_id, session_id, fresh])
        return fresh if moved else None

    def sessions_of(self, user_id: str) -> list[str]:
        """The user's live session ids; ids of expired sessions are pruned from the index."""
        ids = self._indexed(user_id)
        with self.r.pipeline(transaction=False) as pipe:
            for session_id in ids:
                pipe.exists(self.key(session_id))
            alive = pipe.execute()
        dead = [i for i, ok in zip(ids, alive, strict=True) if not ok]
        if dead:
            self.r.srem(self.user_key(user_id), *dead)
        return [i for i, ok in zip(ids, alive, strict=True) if ok]

    def invalidate_user(self, user_id: str) -> int:
        """Log the user out everywhere; return how many live sessions were deleted. One read, then one
        script per thousand sessions; a login racing this call stays indexed (a next call finds it)."""
        ids, deleted = self._indexed(user_id), 0
        for first in range(0, len(ids), _BATCH):
            chunk = ids[first:first + _BATCH]
            deleted += int(self._invalidate_user(keys=[self.user_key(user_id), *map(self.key, chunk)], args=chunk))
        return deleted

    def _indexed(self, user_id: str) -> list[str]:
        """The ids in the user's index, sorted; anything in it that is not one of our ids is removed."""
        members = sorted(text(i) for i in self.r.smembers(self.user_key(user_id)))
        junk = [i for i in members if not _ID.match(i)]
        if junk:
            self.r.srem(self.user_key(user_id), *junk)
        return [i for i in members if _ID.match(i)]


def _valid(session_id: object) -> bool:
    if not isinstance(session_id, str) or not session_id:
        raise ConfigError(f"session_id must be a non-empty string (the id create() returned), got {session_id!r}.")
    return bool(_ID.match(session_id))


def _fields(values: dict[str, object]) -> list[str]:
    bad = sorted(set(values) & RESERVED)
    if bad:
        raise ConfigError(f"{bad} are managed by the store and cannot be set.")
    flat: list[str] = []
    for name, value in values.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"Session field names must be non-empty strings, got {name!r}.")
        flat += [name, _value(name, value)]
    return flat


def _value(name: str, value: object) -> str:
    """A field value as stored: a string as is, a finite number as its text; anything else refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    raise ConfigError(f"Session field {name!r} must be a string or a number, got {type(value).__name__} {value!r}: "
                      f"store structured data as JSON (json.dumps(value)) and parse it when you read it.")
