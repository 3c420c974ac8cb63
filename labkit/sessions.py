"""Server-side sessions as hashes: sliding idle expiry, an absolute lifetime cap, rotation, login, log out everywhere.

Keys: `<prefix>:{<tag>}:<random>` (a hash) and `<prefix>:{<tag>}:user:<user_id>` (a set of that user's
session ids, expiring with the newest session's absolute lifetime). The tag, four hex digits of an HMAC of
the user id keyed by the store's `tag_secret` (random for an anonymous session), is also the start of each
session id (`<tag>.<random>`): one user's sessions and index share a hash slot, so every multi-key step is
one script, also on a cluster. Keyed, the tag lets no one test a guessed user id against a cookie; it does
show that two cookies with the same tag may belong to one user (16 bits, 1 in 65,536 by chance).
Hot-path calls (`create`, `get`, `touch`, `update`, `invalidate`) are one round trip each; `rotate` and
`login` take two or three, `invalidate_user` three per pass. Times (`created`, `last_seen`, `deadline`) are ms
since the epoch on the server's clock. Field values are strings or numbers (numbers come back as their text);
store anything structured as JSON yourself.

The index is pruned lazily: an expired session's id stays in it until `sessions_of` or `invalidate_user`
reads it (and removes it), or until the index itself expires with the user's newest session.

The scripts run with EVALSHA by default; with `functions=True` the store calls the same Lua as a function
library with FCALL (an administrator loads it once: `load_library(admin)`), so that the service's ACL user
needs `+fcall`, not `+eval` (which runs any Lua it is sent).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
from dataclasses import dataclass, field

import redis

from labkit import scripts, validate
from labkit.clients import text
from labkit.errors import ConfigError

RESERVED = frozenset({"user_id", "created", "last_seen", "deadline"})
ANONYMOUS = ""  # the user_id of a session nobody has logged in to yet
ID_BYTES = 32
TAG_HEX = 4  # 65,536 tags: enough to spread users over a cluster's 16,384 slots
_ID = re.compile(r"^([0-9a-f]{4})\.([A-Za-z0-9_-]{43})$")  # <tag>.<secrets.token_urlsafe(32)>
_BATCH = 1000  # session ids per invalidate_user script call
_INVALIDATE_PASSES = 10  # invalidate_user re-reads the index until it finds no id it has not deleted
# The default tag secret: LABKIT_SESSION_SECRET if set, else random for this process. Every app server of
# one service must tag a user alike: give them all the same `tag_secret` (or the same variable).
_PROCESS_SECRET = os.environ.get("LABKIT_SESSION_SECRET", "").encode() or secrets.token_bytes(32)


@dataclass(frozen=True)
class Session:
    """A session read from the server; times are ms since the epoch on the server's clock."""

    id: str
    user_id: str
    created: int
    last_seen: int
    deadline: int
    data: dict[str, str] = field(default_factory=dict)

    @property
    def anonymous(self) -> bool:
        """True until someone logs in to this session (`SessionStore.login`)."""
        return self.user_id == ANONYMOUS


def new_id() -> str:
    """256 random bits from `secrets` (never `random`, never anything a client chose): the random part of a
    session id."""
    return secrets.token_urlsafe(ID_BYTES)


def load_library(r: redis.Redis) -> str:
    """Load (or replace) the sessions function library, for stores made with `functions=True`; run it once
    with a user allowed FUNCTION LOAD (an administrator), on every primary of a cluster. Returns its name."""
    return scripts.load_library(r, "sessions")


def user_tag(user_id: str, secret: bytes = b"") -> str:
    """The hash tag of `user_id`'s keys: four hex digits of HMAC-SHA-256(`secret`, user id); the process's
    default secret when `secret` is empty. Without the secret, a cookie's tag reveals nothing testable."""
    return hmac.new(secret or _PROCESS_SECRET, user_id.encode(), hashlib.sha256).hexdigest()[:TAG_HEX]


class SessionStore:
    """Sessions in hashes under `prefix`, idle TTL `ttl` seconds, absolute lifetime `absolute_ttl` seconds.

    `touch_every` (seconds, 0 by default) makes `touch` lazy: it writes only when the session was last
    written at least that long ago, so a session expires between `ttl - touch_every` and `ttl` after its
    last request, and `last_seen` is that coarse. `functions=True` calls the scripts with FCALL (the
    library must be loaded: `load_library`) instead of EVALSHA. `tag_secret` keys the HMAC that makes a
    user's hash tag (see the module docstring): every app server of one service must pass the same one
    (by default, `LABKIT_SESSION_SECRET` or a random secret of this process).

    Example:
        >>> store = SessionStore(r, ttl=1800, absolute_ttl=86400, prefix="lab:l03:session")
        >>> sid = store.create("user42", theme="dark")
        >>> store.touch(sid), store.get(sid).data["theme"]
        (True, 'dark')
    """

    def __init__(self, r: redis.Redis, ttl: float = 1800, absolute_ttl: float = 86400, prefix: str = "session",
                 *, touch_every: float = 0, functions: bool = False, tag_secret: str | bytes = b""):
        self.ttl_ms = validate.milliseconds_from_seconds(ttl, "ttl")
        self.absolute_ms = validate.milliseconds_from_seconds(absolute_ttl, "absolute_ttl")
        if self.absolute_ms < self.ttl_ms:
            raise ConfigError(f"absolute_ttl ({absolute_ttl} s) must be at least the idle ttl ({ttl} s).")
        every = validate.seconds(touch_every, "touch_every", allow_zero=True)
        self.touch_every_ms = validate.milliseconds_from_seconds(every, "touch_every") if every else 0
        if self.touch_every_ms >= self.ttl_ms:
            raise ConfigError(f"touch_every ({touch_every} s) must be shorter than the idle ttl ({ttl} s): a session "
                              "written less often than it expires ends while it is in use.")
        if not isinstance(functions, bool):
            raise ConfigError(f"functions must be True (FCALL a loaded library) or False (EVALSHA), got {functions!r}.")
        if not isinstance(tag_secret, (str, bytes)):
            raise ConfigError(f"tag_secret must be a string or bytes shared by the service's app servers, got "
                              f"{type(tag_secret).__name__}.")
        self._tag_secret = tag_secret.encode() if isinstance(tag_secret, str) else tag_secret
        self.r, self.prefix, self.functions = r, validate.prefix(prefix), functions
        call = scripts.function if functions else scripts.register
        self._create = call(r, "sessions/create")
        self._touch = call(r, "sessions/touch")
        self._update = call(r, "sessions/update")
        self._rotate = call(r, "sessions/rotate")
        self._take = call(r, "sessions/take_anonymous")
        self._invalidate_user = call(r, "sessions/invalidate_user")

    def new_id(self, user_id: str) -> str:
        """A fresh session id for `user_id`: its tag (keyed by `tag_secret`), a dot, 256 random bits."""
        return f"{self.tag(user_id)}.{new_id()}"

    def tag(self, user_id: str) -> str:
        """The hash tag of `user_id`'s session ids and index."""
        return user_tag(validate.name(user_id, "user_id"), self._tag_secret)

    def key(self, session_id: str) -> str:
        """The hash of session `session_id`; a ConfigError for an id this store could not have issued."""
        match = _ID.match(session_id) if _valid(session_id) else None
        if match is None:
            raise ConfigError(f"{session_id!r} is not a session id of this store: they look like "
                              f"{self.new_id('user')!r} (store.new_id(user_id) makes one).")
        return f"{self.prefix}:{{{match[1]}}}:{match[2]}"

    def user_key(self, user_id: str) -> str:
        """The set indexing `user_id`'s session ids."""
        return f"{self.prefix}:{{{self.tag(user_id)}}}:user:{user_id}"

    def create(self, user_id: str, **meta: object) -> str:
        """Start a session for `user_id` with extra fields `meta` (strings or numbers); return its new id."""
        fields = _fields(meta)
        session_id = self.new_id(user_id)
        self._create(keys=[self.key(session_id), self.user_key(user_id)],
                     args=[self.ttl_ms, self.absolute_ms, session_id, "user_id", user_id, *fields])
        return session_id

    def create_anonymous(self, **meta: object) -> str:
        """Start a session nobody has logged in to (a visitor's cart, a CSRF token); `login` binds it to a
        user later. Its tag is random: anonymous sessions spread over a cluster and have no index."""
        fields = _fields(meta)
        session_id = f"{secrets.token_hex(TAG_HEX // 2)}.{new_id()}"
        self._create(keys=[self.key(session_id)],
                     args=[self.ttl_ms, self.absolute_ms, session_id, "user_id", ANONYMOUS, *fields])
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
        return _valid(session_id) and bool(self._touch(keys=[self.key(session_id)],
                                                       args=[self.ttl_ms, self.touch_every_ms]))

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
        """Give the session a new id (on any change of privilege; `login` does it for you); the old id dies
        at once. Returns the new id, or None if the session does not exist. One read, then one script (a
        RENAME for an anonymous session)."""
        if not _valid(session_id):
            return None
        user_id = self.r.hget(self.key(session_id), "user_id")
        if user_id is None:
            return None
        user_id = text(user_id)
        if user_id == ANONYMOUS:
            return self._rotate_anonymous(session_id)
        if self.tag(user_id) != session_id[:TAG_HEX]:
            return None
        fresh = self.new_id(user_id)
        moved = self._rotate(keys=[self.key(session_id), self.key(fresh), self.user_key(user_id)],
                             args=[user_id, session_id, fresh])
        return fresh if moved else None

    def _rotate_anonymous(self, session_id: str) -> str | None:
        fresh = f"{session_id[:TAG_HEX]}.{new_id()}"  # the same tag: the same slot, so RENAME works on a cluster
        try:
            self.r.rename(self.key(session_id), self.key(fresh))
        except redis.ResponseError:  # gone meanwhile (expired, logged in, logged out)
            return None
        return fresh

    def login(self, session_id: str, user_id: str) -> str | None:
        """Log the visitor of session `session_id` in as `user_id`. An anonymous session moves to a new id
        bound to the user (its fields kept, a fresh lifetime, in the user's index) and its old id dies at once,
        so an id planted before login (session fixation) never becomes a logged-in one; the user's own
        session is rotated. Returns the new id, or None if the session does not exist or belongs to another
        user (log that one out first). Two scripts: take the anonymous session, create the user's; a crash
        between them loses the anonymous fields, and never logs the old id in."""
        validate.name(user_id, "user_id")
        if not _valid(session_id):
            return None
        status, *rest = [text(x) for x in self._take(keys=[self.key(session_id)])]
        if status == "user":
            return self.rotate(session_id) if rest[0] == user_id else None
        if status == "missing":
            return None
        fields = dict(zip(rest[::2], rest[1::2], strict=True))
        return self.create(user_id, **{k: v for k, v in fields.items() if k not in RESERVED})

    def sessions_of(self, user_id: str) -> list[str]:
        """The user's live session ids. Ids of sessions that expired are removed from the index here: this read
        (and `invalidate_user`) is where the index is pruned."""
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
        """Log the user out everywhere; return how many live sessions were deleted. Reads the index, deletes
        what it read (one script per thousand sessions), and reads again until a read finds no id it has not
        deleted: a session rotated or logged in during a pass moves to an id the next pass finds. Bounded at
        ten passes (each needs a rotation racing it); a session created after the call returns is not its
        concern."""
        deleted, done = 0, set()
        for _ in range(_INVALIDATE_PASSES):
            ids = [i for i in self._indexed(user_id) if i not in done]
            if not ids:
                break
            deleted += self._delete_indexed(user_id, ids)
            done.update(ids)
        return deleted

    def _delete_indexed(self, user_id: str, ids: list[str]) -> int:
        """Delete these sessions of `user_id` and remove them from its index; how many still existed."""
        deleted = 0
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
