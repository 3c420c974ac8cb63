"""Lesson 03, sessions (`notebooks/03_sessions.ipynb`): the session service's ACL rules, a script that blocks
the server, the pictures, and the exercise check."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import redis

from labkit.clients import options
from labkit.errors import ConfigError
from labkit.keys import Namespace
from labkit.lessons import Result, check, delete_keys, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Capabilities, Server
from labkit.sessions import SessionStore
from labkit.tracing import trace

# What a SessionStore sends itself (get, invalidate, rotate, sessions_of) and what its Lua calls inside: a
# function or script runs with its caller's permissions, so the service's user needs these either way.
SESSION_DATA_COMMANDS = ("hset", "hget", "hmget", "hgetall", "del", "exists", "pexpire", "pttl", "rename",
                         "sadd", "srem", "smembers", "time")
RUN_SCRIPTS = ("eval", "evalsha", "script|load")  # EVALSHA, and SCRIPT LOAD when the server lacks the script
RUN_FUNCTIONS = ("fcall",)
CONNECT = ("hello", "ping", "client|setinfo")  # redis-py's handshake (CLIENT SETINFO since Redis 7.2)


def server_ms(r: redis.Redis) -> int:
    """The server's clock (TIME) in milliseconds since the epoch: the unit of every session time."""
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def commands(client: redis.Redis, name: str) -> int:
    """How many times the server ran command `name` since its stats were reset (INFO commandstats), counting
    the calls scripts and functions make."""
    return int(client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


# -- 3.6 least privilege ---------------------------------------------------------------------------------
def session_service_rules(caps: Capabilities, *, code: str, prefix: str = "session") -> list[str]:
    """ACL rules for a session service on keys `<prefix>:*`: nothing but its data commands, the handshake
    the server knows (`caps`), and a way to run the session code: `code="functions"` (+fcall: only the
    loaded library runs) or `code="scripts"` (+eval: any Lua the service sends runs)."""
    if code not in ("functions", "scripts"):
        raise ConfigError(f"code is 'functions' or 'scripts', got {code!r}")
    run = RUN_FUNCTIONS if code == "functions" else RUN_SCRIPTS
    known = [c for c in CONNECT if caps.has(c)]
    return ["reset", "on", f"~{prefix}:*", "-@all", *(f"+{c}" for c in (*SESSION_DATA_COMMANDS, *run, *known))]


def client_as(server: Server, username: str, password: str) -> redis.Redis:
    """A client of `server` logged in as `username`, with labkit's stated timeouts and no retry."""
    return redis.Redis(host=server.host, port=server.port, username=username, password=password,
                       decode_responses=True, **options())


def acl_log_rows(admin: redis.Redis, username: str) -> list[tuple[str, str, str]]:
    """(reason, context, object) of each ACL LOG entry of `username`, newest first: what was refused,
    at the top level or inside a script ('lua'), and which command or key."""
    return [(e["reason"], e["context"], e["object"]) for e in admin.acl_log() if e["username"] == username]


def blocking_script(svc: redis.Redis, admin: redis.Redis, seconds: float = 0.4) -> tuple[float, float]:
    """Have `svc` EVAL a pure Lua loop of at least `seconds` while `admin` PINGs: returns (how long the EVAL
    took, the longest PING). The loop is sized by doubling a timed run until one lasts `seconds` (Lua has no
    portable clock: `os.clock` is missing on Redis 7.0, and on Valkey `TIME` does not move while a script
    runs; on Redis 7.0 it does)."""
    loop = "for i = 1, tonumber(ARGV[1]) do end return 1"
    steps = 1_000_000
    for _ in range(8):  # at most 256x the first size
        began = time.perf_counter()
        svc.eval(loop, 0, steps)
        if time.perf_counter() - began >= seconds:
            break
        steps *= 2
    took, pings = [0.0], [0.0]

    def run() -> None:
        began = time.perf_counter()
        svc.eval(loop, 0, steps)
        took[0] = time.perf_counter() - began

    worker = threading.Thread(target=run)
    worker.start()
    while worker.is_alive():
        began = time.perf_counter()
        admin.ping()
        pings.append(time.perf_counter() - began)
    worker.join()
    return took[0], max(pings)


# -- 3.2 sliding expiry with a cap -------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One look at a session: the server's clock just before and just after, and the PTTL read between."""

    before_ms: int
    after_ms: int
    pttl: int


def watch_expiry(store: SessionStore, every_s: float = 0.1, attempts: int = 3) -> tuple[dict, dict]:
    """Create a busy session and an idle one; touch the busy one every `every_s` and sample both until both
    have ended. Returns ({name: Session as created}, {name: [Sample...]}). A run in which the machine stalled
    the touches for more than half the idle timeout runs again (a stall, not the store, would end the busy one)."""
    r = store.r
    for _ in range(attempts):
        ids = {"busy": store.create("u-busy"), "idle": store.create("u-idle")}
        sessions = {name: store.get(sid) for name, sid in ids.items()}
        samples: dict[str, list[Sample]] = {"busy": [], "idle": []}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(s and s[-1].pttl < 0 for s in samples.values()):
            store.touch(ids["busy"])
            for name, sid in ids.items():
                before = server_ms(r)
                ttl = r.pttl(store.key(sid))
                samples[name].append(Sample(before, server_ms(r), ttl))
            time.sleep(every_s)
        busy = samples["busy"]
        gaps = [b.before_ms - a.after_ms for a, b in itertools.pairwise(busy)]
        if max(gaps, default=0) < store.ttl_ms / 2:
            return sessions, samples
    raise RuntimeError("the machine stalled every run for half the idle timeout; run the cell again")


def ended_ms(samples: list[Sample]) -> int:
    """The server's time of the first sample that found the session gone."""
    return next(s.before_ms for s in samples if s.pttl < 0)


def alive_exactly_until(samples: list[Sample], end_ms: int) -> bool:
    """Whether every sample taken wholly before `end_ms` (1 ms slack) found the session, and every sample
    begun at or after it found it gone."""
    return (all(s.pttl > 0 for s in samples if s.after_ms < end_ms - 1)
            and all(s.pttl < 0 for s in samples if s.before_ms > end_ms + 1))


# -- pictures --------------------------------------------------------------------------------------------
def plot_hash_vs_json(sizes: dict[str, int], micros: dict[str, float]) -> None:
    """Bytes on the server, and the median µs of a one-field update, for each way of storing a session."""
    colors = ["tab:blue", "tab:orange", "tab:green"][: len(sizes)]
    _, axes = plt.subplots(1, 2, figsize=(9, 2.6))
    axes[0].bar(list(sizes), list(sizes.values()), color=colors)
    axes[0].set(title="bytes on the server")
    axes[1].bar(list(micros), list(micros.values()), color=colors)
    axes[1].set(title="update one field: median µs")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    plt.tight_layout()
    plt.show()


def plot_ttls(samples: dict[str, list[tuple[float, int]]], ended: dict[str, float], cap_s: float) -> None:
    """The TTL of each session over time, with when it ended and the absolute cap."""
    _, ax = plt.subplots(figsize=(8, 2.8))
    for name, color in zip(samples, ("tab:blue", "tab:orange"), strict=False):
        ts, ttls = zip(*samples[name], strict=True)
        ax.step(ts, ttls, where="post", color=color, label=f"{name}: ended at {ended[name]:.1f} s")
    ax.axvline(cap_s, color="gray", linestyle="--", label=f"absolute lifetime {cap_s} s")
    ax.set(xlabel="seconds", ylabel="TTL (ms)", ylim=(0, None), title="touched every 0.1 s vs left alone")
    ax.legend(fontsize=8)
    plt.show()


def plot_writes(writes: dict[str, int], requests: int) -> None:
    """Writes per `requests` touches, eager against lazy."""
    _, ax = plt.subplots(figsize=(6, 2.2))
    ax.barh(list(writes), list(writes.values()), color=["tab:orange", "tab:blue"])
    ax.set(title=f"writes for {requests:,} requests (PEXPIRE calls on the server)", xlabel="writes")
    plt.show()


def plot_lost(lost: dict[str, int], total: int) -> None:
    _, ax = plt.subplots(figsize=(6, 2.4))
    ax.bar(list(lost), list(lost.values()), color=["tab:orange", "tab:blue"])
    ax.set(title=f"updates lost out of {total}", ylabel="lost")
    plt.show()


def plot_eviction(outcome: dict[str, dict[str, int]], logins: int) -> None:
    _, ax = plt.subplots(figsize=(8, 2.8))
    x = np.arange(len(outcome))
    for i, (label, color) in enumerate((("still there", "tab:green"), ("logged out", "tab:red"),
                                        ("refused", "tab:gray"))):
        ax.bar(x + (i - 1) * 0.25, [outcome[p][label] for p in outcome], 0.25, label=label, color=color)
    ax.set(xticks=x, xticklabels=list(outcome), title=f"{logins:,} logins on a 2 MB server")
    ax.legend(fontsize=8)
    plt.show()


# -- the exercise ----------------------------------------------------------------------------------------
LAST_SEEN_SLACK_MS = 60_000  # a touch's last_seen must be the server's clock in ms, within this


@check
def check_touch_session(r: redis.Redis, ns: Namespace, touch: Callable) -> Result:
    """`touch(r, key, idle_ms) -> bool` refreshes an existing session hash's idle TTL and returns
    True (if it records `last_seen`, in ms since the epoch on the server's clock, as the store does); for a
    missing session it returns False and writes nothing. One touch is one round trip (traced, after a warm-up
    call that lets a registered script load itself): a write after a separate existence check can recreate a
    session that expired in between."""
    live, missing = ns.key("check", "session", "live"), ns.key("check", "session", "missing")
    warm = ns.key("check", "session", "warm-up")
    r.delete(live, missing, warm)
    for key in (live, warm):
        r.hset(key, mapping={"user_id": "u1", "last_seen": "0"})
        r.pexpire(key, 2000)
    try:
        touch(r, warm, 60_000)  # a registered script loads itself on its first call: not the touch measured
        with trace(r, show=False) as sent:
            refreshed = touch(r, live, 60_000)
        ttl_after, now = r.pttl(live), server_ms(r)
        last_seen = r.hget(live, "last_seen")
        absent = touch(r, missing, 60_000)
        created = r.exists(missing)
        leftover = r.hgetall(missing) if created else {}
    finally:
        delete_keys(r, [live, missing, warm])
    problems = []
    if sent.round_trips > 1:
        problems.append(f"one touch took {sent.round_trips} round trips ({', '.join(sent.names())}): between a check "
                        "and a later write the session can expire or be logged out, and the write then recreates a "
                        "half session with no user. Check and write in one round trip: a script, or PEXPIRE alone.")
    if refreshed is not True:
        problems.append(f"touching a live session returned {refreshed!r}, expected True (HSET returns how many "
                        "fields are NEW, so 0 for a refresh: use EXPIRE's reply, or a script).")
    if not 50_000 < ttl_after <= 60_000:
        problems.append(f"the live session's TTL is {ttl_after} ms after touch, expected about 60,000 ms.")
    if last_seen not in (None, "0", b"0") and not _near(last_seen, now):
        problems.append(f"last_seen is {last_seen!r}, the server's clock is {now} ms: store milliseconds since the "
                        "epoch from TIME (seconds * 1000 + microseconds // 1000), the unit of every session time.")
    if absent is not False:
        problems.append(f"touching a missing session returned {absent!r}, expected False.")
    if created:
        problems.append(f"touching a missing session created {missing!r} holding {leftover}: a half session "
                        "with no user. Check that the session exists before writing, in the same round trip.")
    return verdict(problems, "refreshes live sessions, reports and leaves missing ones alone.")


def _near(value: object, now_ms: int) -> bool:
    try:
        return abs(float(value.decode() if isinstance(value, bytes) else value) - now_ms) <= LAST_SEEN_SLACK_MS
    except (TypeError, ValueError):
        return False
