"""Workshops: one shared server, one ACL user per learner, and each learner's exercise checks recorded as
they pass.

The instructor (an administrator of the server) opens a workshop with `create`, which makes one user per
learner allowed only the keys and channels under `lab:<learner>:*` and the commands the shared lessons
send, and writes a sheet of connection lines. A learner sets `LABKIT_REDIS_URL` to their line: every
`Namespace` becomes `lab:<learner>:lNN`, and every exercise check (`labkit.lessons.check`) appends its
verdict to the learner's progress stream, which `Progress` reads. `reset` clears one learner's keys; `close`
removes the users and every key the workshop made.

On the server: the marker `labkit:workshop` (a hash every learner may read: a check records progress only
where it exists), the set `labkit:workshop:learners`, and one stream `labkit:workshop:progress:<learner>`
that only that learner may write (and only the instructor read).

Example:
    >>> seats = create(r, 2)  # learner01, learner02
    >>> write_sheet(seats, Path("build/workshop"), info(r)["id"])  # learners.csv and .html, mode 0600
    >>> print(Progress(r).update().table())
    >>> close(r)
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import re
import secrets
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError
from labkit.keys import WORKSHOP, current_learner, learner_context, learner_name, learner_pattern, scan_unlink
from labkit.server import lab
from labkit.server.process import mask

LEARNERS = f"{WORKSHOP}:learners"  # the learners' names (instructor only)
MAX_LEARNERS = 500
PROGRESS_MAXLEN = 1000  # entries kept per learner (approximately: MAXLEN ~)
MESSAGE_CHARS = 300  # of a check's message, recorded with its verdict
_HOST = re.compile(r"[A-Za-z0-9.-]+|\[?[0-9A-Fa-f:.]+\]?")  # a name, an IPv4 or an IPv6 address

# Every command but these: the server's administration (@admin, @dangerous: CONFIG, FLUSHALL, KEYS, DEBUG,
# MONITOR, SHUTDOWN, CLIENT LIST/KILL/PAUSE, SORT with BY/GET patterns...), ACL itself, the commands that
# name other learners' keys or channels (RANDOMKEY, PUBSUB CHANNELS, CLIENT TRACKING with a prefix), and
# those that change what every user shares (function libraries, the script cache). INFO stays: it shows
# the server's counters, never a key or a value.
COMMANDS = ("+@all", "-@admin", "-@dangerous", "+info", "-acl", "-randomkey", "-pubsub|channels",
            "-pubsub|shardchannels", "-client|tracking", "-function|load", "-function|delete", "-function|flush",
            "-function|restore", "-function|kill", "-script|flush", "-script|kill")
# Search commands are refused too: an index's PREFIX is not checked against key permissions, so a learner's
# index could serve another learner's documents (lessons that search run on a server of their own).
REFUSED_PREFIXES = ("ft.", "search.")


class WorkshopWarning(UserWarning):
    """A check's verdict could not be recorded on the workshop server (the verdict itself stands)."""


def progress_key(learner: str) -> str:
    """The stream of `learner`'s check results: written by that learner only."""
    return f"{WORKSHOP}:progress:{learner_name(learner)}"


# -- opening a workshop ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Seat:
    """One learner's account: their name, generated password and connection URL."""

    learner: str
    password: str = field(repr=False)
    url: str = field(repr=False)

    @property
    def line(self) -> str:
        """What the learner runs before `make lab` (it holds the password: a sheet, never a log)."""
        return f"export LABKIT_REDIS_URL='{self.url}'"

    def __str__(self) -> str:
        return f"{self.learner} ({mask(self.url)})"


def learner_names(learners: int | Iterable[str]) -> list[str]:
    """`learners` as a list of names: a count gives learner01, learner02...; names are checked and unique."""
    if isinstance(learners, str):
        raise ConfigError(f"learners is a number of learners or a list of names, got the string {learners!r}.")
    if isinstance(learners, int) and not isinstance(learners, bool):
        count = validate.integer(learners, "the number of learners")
        if count > MAX_LEARNERS:
            raise ConfigError(f"a workshop has 1 to {MAX_LEARNERS} learners, got {count}.")
        return [f"learner{i:0{max(2, len(str(count)))}d}" for i in range(1, count + 1)]
    try:
        names = [learner_name(name, f"learners[{i}]") for i, name in enumerate(learners)]
    except TypeError:
        raise ConfigError(f"learners is a number of learners or a list of names, got {learners!r}.") from None
    if not 1 <= len(names) <= MAX_LEARNERS:
        raise ConfigError(f"a workshop has 1 to {MAX_LEARNERS} learners, got {len(names)} names.")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"learners must have unique names, got {twice} more than once.")
    return names


def create(r: redis.Redis, learners: int | Iterable[str], *, host: str | None = None) -> list[Seat]:
    """Open a workshop on `r`'s server: one user per learner (`learners`: a count or names); return their
    seats. `host` replaces the server's address in the learners' URLs (the name learners reach it by).

    `r` must be an administrator (ACL SETUSER). Refuses a server where a workshop is already open, or where
    a user already has a learner's name."""
    names = learner_names(learners)
    _check_host(host)
    _require_admin(r)
    if r.exists(WORKSHOP):
        raise ConfigError(f"a workshop is already open on {where(r)} ({r.scard(LEARNERS)} learners): close it "
                          f"first (python -m labkit workshop close).")
    _refuse_taken(r, names)
    r.hset(WORKSHOP, mapping={"id": secrets.token_hex(8), "created": int(time.time()), "learners": len(names)})
    return add_learners(r, names, host=host)


def add_learners(r: redis.Redis, names: list[str], *, host: str | None = None) -> list[Seat]:
    """Add learners (a list of names) to the workshop open on `r`'s server (`create` opens one); return their
    seats. Refuses a name some user already has (a learner's included: their password stays theirs)."""
    if not isinstance(names, list):
        raise ConfigError(f"names is a list of learners' names, got {names!r}.")
    names = learner_names(names)
    _check_host(host)
    _require_open(r)
    _refuse_taken(r, names)
    one_db = _databases_rule(r)
    refused = [f"-{c}" for c in _known_commands(r) if c.startswith(REFUSED_PREFIXES) and "|" not in c]
    seats = []
    for name in names:
        password = secrets.token_urlsafe(18)
        rules = ["reset", "on", f">{password}", f"~{learner_pattern(name)}", f"%R~{WORKSHOP}",
                 f"%W~{progress_key(name)}", "resetchannels", f"&{learner_pattern(name)}", *one_db, *COMMANDS,
                 *refused]
        r.execute_command("ACL", "SETUSER", name, *rules)
        r.sadd(LEARNERS, name)
        seats.append(Seat(name, password, _learner_url(r, name, password, host)))
    r.hset(WORKSHOP, "learners", r.scard(LEARNERS))
    return seats


def info(r: redis.Redis) -> dict[str, str]:
    """The open workshop's marker: its `id`, when it was `created` (Unix seconds), how many `learners`."""
    _require_open(r)
    return {text(k): text(v) for k, v in r.hgetall(WORKSHOP).items()}


def _refuse_taken(r: redis.Redis, names: list[str]) -> None:
    taken = sorted(set(names) & {text(u) for u in r.acl_users()})
    if taken:
        raise ConfigError(f"users named {taken} already exist on {where(r)}: choose other learner names.")


def _check_host(host: object) -> None:
    if host is not None and not (isinstance(host, str) and _HOST.fullmatch(host)):
        raise ConfigError(f"host is the name or address learners reach the server by (example.org, 10.0.0.5, "
                          f"::1), or None for the server's own; got {host!r}.")


def _require_admin(r: redis.Redis) -> None:
    try:
        r.acl_users()
    except redis.exceptions.NoPermissionError:
        raise ConfigError(f"the user of {where(r)} may not manage ACL users (NOPERM): run the workshop commands "
                          f"as the server's administrator (the lab server's default user, or --server with the "
                          f"URL of a user allowed +@admin).") from None


def _require_open(r: redis.Redis) -> None:
    _require_admin(r)
    if not r.exists(WORKSHOP):
        raise ConfigError(f"no workshop is open on {where(r)}: open one with "
                          f"python -m labkit workshop create --learners N.")


def _databases_rule(r: redis.Redis) -> list[str]:
    """`resetdbs db=N` (the learners' database only) where the server's ACL can limit databases (Valkey 9+);
    elsewhere none, and `reset`/`close` look in every database."""
    db = r.connection_pool.connection_kwargs.get("db", 0)
    probe = f"labkit-probe-{secrets.token_hex(4)}"
    try:
        r.execute_command("ACL", "SETUSER", probe, "off", "resetdbs", f"db={db}")
    except redis.ResponseError:
        return []
    finally:
        r.execute_command("ACL", "DELUSER", probe)
    return ["resetdbs", f"db={db}"]


def _known_commands(r: redis.Redis) -> list[str]:
    return [str(text(name)).lower() for name in r.command_list()]


def _learner_url(r: redis.Redis, name: str, password: str, host: str | None) -> str:
    kw = r.connection_pool.connection_kwargs
    where = host or kw.get("host", "127.0.0.1")
    if ":" in where and not where.startswith("["):
        where = f"[{where}]"  # an IPv6 address
    return f"redis://{name}:{password}@{where}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def where(r: redis.Redis) -> str:
    """host:port of `r`'s server, for messages (never a password)."""
    kw = r.connection_pool.connection_kwargs
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"


# -- the sheet -----------------------------------------------------------------------------------------------
SHEET = ("learners.csv", "learners.html", "workshop.json")


def write_sheet(seats: list[Seat], directory: Path | str, workshop_id: str) -> list[Path]:
    """Write `learners.csv` and `learners.html` (a printable page: one card per learner) into `directory`,
    readable by you only (mode 0600, the directory 0700): they hold the passwords. `workshop.json` records
    which workshop they belong to, for `remove_sheet`. Return the two sheets' paths."""
    if not isinstance(seats, list) or not seats or not all(isinstance(s, Seat) for s in seats):
        raise ConfigError(f"seats is the non-empty list create() returned, got {seats!r}.")
    validate.name(workshop_id, "workshop_id")
    folder = Path(directory)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder.chmod(0o700)
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["learner", "password", "url", "connection"])
    writer.writerows([s.learner, s.password, s.url, s.line] for s in seats)
    csv_path, html_path, about = (folder / name for name in SHEET)
    _write_private(csv_path, rows.getvalue())
    _write_private(html_path, _page(seats))
    _write_private(about, json.dumps({"id": workshop_id, "learners": [s.learner for s in seats]}, indent=1))
    return [csv_path, html_path]


def remove_sheet(directory: Path | str, workshop_id: str) -> list[Path]:
    """Delete the sheet in `directory` if it belongs to workshop `workshop_id` (its passwords are void once
    the workshop is closed); return what was deleted."""
    folder = Path(directory)
    try:
        recorded = json.loads((folder / SHEET[2]).read_text())["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    if recorded != workshop_id:
        return []
    removed = [folder / name for name in SHEET if (folder / name).exists()]
    for path in removed:
        path.unlink()
    return removed


def _write_private(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that was already there keeps its old mode otherwise
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        out.write(content)


def _page(seats: list[Seat]) -> str:
    cards = "\n".join(
        f'<section class="card"><h2>{html.escape(s.learner)}</h2><p>In a terminal, in your checkout of the lab, '
        f'run:</p><pre>{html.escape(s.line)}\nmake lab</pre><p>Every lesson then writes under '
        f'<code>lab:{html.escape(s.learner)}:</code>; exercise checks you pass show on the instructor\'s board. '
        f'Keep this card to yourself: it holds your password.</p></section>' for s in seats)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Redis/Valkey lab: workshop seats</title>
<style>
body {{ font-family: sans-serif; margin: 1cm; }}
.card {{ border: 1px dashed #555; padding: 0.4cm 0.6cm; margin-bottom: 0.6cm; break-inside: avoid; }}
pre {{ background: #f4f4f4; padding: 0.3cm; white-space: pre-wrap; word-break: break-all; }}
</style></head><body>
<h1>Workshop seats ({len(seats)})</h1>
{cards}
</body></html>
"""


# -- as a learner: the progress of each check ----------------------------------------------------------------
@contextmanager
def as_learner(name: str, url: str) -> Iterator[None]:
    """Inside, this thread works as learner `name` on the server at `url`: `Namespace` prefixes
    `lab:<name>:`, `labkit.connect()` uses `url`, and checks record their verdicts for `name`. For a
    simulated learner (many in one process); a real one sets `LABKIT_REDIS_URL` to their seat's URL."""
    learner_name(name, "name")
    validate.name(url, "url")
    with learner_context(name), lab.url_context(url):
        yield


_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()
_SERVER_TROUBLE = (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError)


def record(lesson: str, check: str, passed: bool, message: str) -> bool:
    """Append one check's verdict to the current learner's progress stream, if this code runs as a learner
    (`current_learner()`) against a server where a workshop is open; return whether it was recorded.

    The server's refusals and the network's failures (down, closed workshop, NOPERM, timeout) become a
    `WorkshopWarning`: the verdict stands. Wrong arguments (a bug in a check) raise `ConfigError` as ever."""
    validate.name(lesson, "lesson")
    validate.name(check, "check")
    if not isinstance(passed, bool):
        raise ConfigError(f"passed is True or False, got {passed!r}.")
    if not isinstance(message, str):
        raise ConfigError(f"message is the check's message (a str), got {message!r}.")
    learner = current_learner()
    url = lab.configured_url() if learner else None
    if url is None:
        return False
    try:
        client = _progress_client(url)
        if not client.exists(WORKSHOP):
            return False
        client.xadd(progress_key(learner), {"lesson": lesson, "check": check, "passed": int(passed),
                                            "message": message[:MESSAGE_CHARS]},
                    maxlen=PROGRESS_MAXLEN, approximate=True)
    except _SERVER_TROUBLE as err:
        warnings.warn(f"{check} could not be recorded for {learner} on the workshop server {mask(url)} "
                      f"({type(err).__name__}: {err}); its verdict stands.", WorkshopWarning, stacklevel=3)
        return False
    return True


def _progress_client(url: str) -> redis.Redis:
    with _clients_lock:
        if url not in _clients:
            _clients[url] = lab.client_for(url, client_name="labkit-progress")
        return _clients[url]


# -- the instructor's view -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One recorded check: who, which, whether it passed, what it said, and when (server ms, the entry ID)."""

    learner: str
    lesson: str
    check: str
    passed: bool
    message: str
    at_ms: int

    def __str__(self) -> str:
        outcome = "passed" if self.passed else "tried"
        return f"{self.learner} {outcome} {self.lesson} {self.check}: {self.message}"


class Progress:
    """Every learner's check results, read from their streams; `update()` reads what is new.

    Example:
        >>> board = Progress(r).update()
        >>> board.update(block_ms=1000).new  # what arrived, waiting up to 1 s for something
        >>> print(board.table())
    """

    PASSED, TRIED, NOT_YET = "✓", "✗", "·"

    def __init__(self, r: redis.Redis, checks: dict[str, list[str]] | None = None) -> None:
        _require_open(r)
        self.r = r
        self.checks = checks if checks is not None else _all_checks()
        self.learners: list[str] = []
        self.attempts: list[Attempt] = []
        self.new: list[Attempt] = []
        self._last: dict[str, str] = {}

    def update(self, block_ms: int | None = None) -> Progress:
        """Read every result recorded since the last update, waiting up to `block_ms` for one when there is
        none (learners added meanwhile join the board, removed ones leave it); return self. `new` holds what
        this update read."""
        if block_ms is not None:
            validate.integer(block_ms, "block_ms")
        self.learners = sorted(text(n) for n in self.r.smembers(LEARNERS))
        streams = {progress_key(name) for name in self.learners}
        self._last = {stream: self._last.get(stream, "0-0") for stream in streams}  # removed learners leave
        self.attempts = [a for a in self.attempts if a.learner in self.learners]
        new: list[Attempt] = []
        self.new = new
        if not self._last:
            return self
        for stream, entries in self.r.xread(self._last, block=block_ms) or []:
            stream = text(stream)
            learner = stream.rsplit(":", 1)[-1]
            for entry_id, fields in entries:
                fields = {text(k): text(v) for k, v in fields.items()}
                new.append(Attempt(learner, fields["lesson"], fields["check"], fields["passed"] == "1",
                                   fields.get("message", ""), int(text(entry_id).split("-")[0])))
                self._last[stream] = text(entry_id)
        self.attempts += new
        return self

    def passed(self, learner: str) -> set[tuple[str, str]]:
        """The (lesson, check) pairs `learner` has passed at least once."""
        return {(a.lesson, a.check) for a in self.attempts if a.learner == learner and a.passed}

    def tried(self, learner: str) -> set[tuple[str, str]]:
        return {(a.lesson, a.check) for a in self.attempts if a.learner == learner}

    def cell(self, learner: str, lesson: str) -> str:
        """One mark per check of `lesson`: passed, tried and not passed yet, or not tried."""
        passed, tried = self.passed(learner), self.tried(learner)
        return "".join(self.PASSED if (lesson, c) in passed else self.TRIED if (lesson, c) in tried
                       else self.NOT_YET for c in self.checks.get(lesson, []))

    def rows(self) -> list[list[str]]:
        """A header, then one row per learner: name, one cell per lesson with checks, passed/total."""
        lessons = [lesson for lesson, checks in self.checks.items() if checks]
        total = sum(len(self.checks[lesson]) for lesson in lessons)
        rows = [["learner", *lessons, "passed"]]
        for learner in self.learners:
            done = sum(1 for lesson, check in self.passed(learner) if check in self.checks.get(lesson, []))
            rows.append([learner, *(self.cell(learner, lesson) for lesson in lessons), f"{done}/{total}"])
        return rows

    def table(self) -> str:
        """The rows as aligned text, with a legend naming the checks behind each mark."""
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
        legend = [f"{lesson}: " + ", ".join(checks) for lesson, checks in self.checks.items() if checks]
        marks = f"{self.PASSED} passed, {self.TRIED} tried and not passed yet, {self.NOT_YET} not tried"
        return "\n".join([*lines, "", marks, *legend])

    def html(self) -> str:
        """The rows as an HTML table (the instructor notebook's board)."""
        rows = self.rows()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td style='font-family:monospace'>{html.escape(c)}</td>" for c in row)
                       + "</tr>" for row in rows[1:])
        return f"<table><tr>{head}</tr>{body}</table>"


def _all_checks() -> dict[str, list[str]]:
    from labkit.lessons import all_checks  # the lessons import this module (their checks record through it)

    return all_checks()


# -- resetting and closing -----------------------------------------------------------------------------------
def learners(r: redis.Redis) -> list[str]:
    """The learners of the workshop open on `r`'s server."""
    _require_open(r)
    return sorted(text(n) for n in r.smembers(LEARNERS))


def reset(r: redis.Redis, learner: str) -> int:
    """Delete every key of `learner` (`lab:<learner>:*`, in every database); return how many. Their account
    and their recorded progress stay."""
    name = learner_name(learner)
    enrolled = learners(r)
    if name not in enrolled:
        raise ConfigError(f"{name!r} is not a learner of the workshop on {where(r)}; its learners: "
                          f"{', '.join(enrolled)}.")
    return _unlink_everywhere(r, learner_pattern(name))


@dataclass(frozen=True)
class Closed:
    """What `close` removed."""

    id: str
    users: list[str]
    keys: int


def close(r: redis.Redis) -> Closed:
    """Remove every learner's user (their connections close with it), then every key of theirs (in every
    database), their progress, and the workshop's own keys."""
    enrolled, opened = learners(r), info(r)
    for name in enrolled:
        r.execute_command("ACL", "DELUSER", name)
    deleted = sum(_unlink_everywhere(r, learner_pattern(name)) for name in enrolled)
    deleted += r.unlink(*[progress_key(n) for n in enrolled], LEARNERS, WORKSHOP)
    return Closed(opened["id"], enrolled, deleted)


def remove_learner(r: redis.Redis, learner: str) -> int:
    """Remove one learner from the open workshop: their user (first: nothing of theirs is written after),
    keys and progress; return the keys deleted."""
    if learner_name(learner) not in learners(r):
        raise ConfigError(f"{learner!r} is not a learner of the workshop on {where(r)}.")
    r.execute_command("ACL", "DELUSER", learner)
    r.srem(LEARNERS, learner)
    r.hset(WORKSHOP, "learners", r.scard(LEARNERS))
    return _unlink_everywhere(r, learner_pattern(learner)) + r.unlink(progress_key(learner))


def _unlink_everywhere(r: redis.Redis, pattern: str) -> int:
    """SCAN + UNLINK `pattern` in each database that holds keys (on servers whose ACL cannot keep a learner
    in one database, they may have written in another)."""
    kw = r.connection_pool.connection_kwargs
    deleted = 0
    for db in _databases_with_keys(r):
        if db == kw.get("db", 0):
            deleted += scan_unlink(r, pattern)
        else:
            with redis.Redis(connection_pool=redis.ConnectionPool(
                    connection_class=r.connection_pool.connection_class, **(kw | {"db": db}))) as other:
                deleted += scan_unlink(other, pattern)
    return deleted


def _databases_with_keys(r: redis.Redis) -> list[int]:
    return sorted({int(name[2:]) for name in r.info("keyspace") if name.startswith("db")}
                  | {r.connection_pool.connection_kwargs.get("db", 0)})
