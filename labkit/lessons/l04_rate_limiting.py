"""Lesson 04, rate limiting (`notebooks/04_rate_limiting.ipynb`): replayed arrivals on an injected clock, the
state of each algorithm, a limiter behind a paused server, the pictures, and the exercise check."""

from __future__ import annotations

import multiprocessing
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import redis

from labkit.keys import Namespace
from labkit.lessons import Result, check, delete_keys, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.ratelimit import GCRA, FixedWindow, Limiter, SlidingLog, SlidingWindowCounter, TokenBucket
from labkit.server.lab import client_for
from labkit.tracing import trace

SLIDING_USERS, SLIDING_LIMIT, SLIDING_THREADS = 50, 4, 8
EPOCH_MS = 1_795_000_000_000  # a replay's clock starts here: a whole second, so windows start at 0 ms


def server_ms(r: redis.Redis) -> int:
    """The server's clock (TIME) in milliseconds since the epoch."""
    seconds, micros = r.time()
    return int(seconds) * 1000 + int(micros) // 1000


def burst_profile(limiter: Limiter) -> dict:
    """A burst of twice the limit at once, on a fresh key, early in a window of the server's clock (so that it
    never straddles a boundary): how many passed, the bytes its keys take (all of them), the `retry_after` of
    the first refusal, and the refill allowance: how many units could refill while the burst ran (one, plus
    one per unit interval of the burst's span on the server's clock)."""
    r, key = limiter.r, f"profile-{uuid.uuid4().hex[:8]}"
    window_ms = round(limiter.window * 1000)
    left_ms = window_ms - server_ms(r) % window_ms
    if left_ms < 0.6 * window_ms:
        time.sleep(left_ms / 1000 + 0.01)
    decisions = [limiter.allow(key) for _ in range(2 * limiter.limit)]
    memory = sum(r.memory_usage(k, samples=0) or 0 for k in limiter.keys(key))
    first_denied = next(d for d in decisions if not d.allowed)
    span_ms = decisions[-1].now_ms - decisions[0].now_ms
    return {"admitted": sum(d.allowed for d in decisions), "bytes": memory, "retry_after": first_denied.retry_after,
            "refill allowance": 1 + int(span_ms * limiter.limit / window_ms)}


# -- replays on an injected clock -------------------------------------------------------------------------
def picture_arrivals() -> list[int]:
    """The arrivals the state pictures replay (ms from the start): a burst of 15 at 0.2 s, then one every
    50 ms (twice the rate of 10 a second) until 2.4 s, silence, and a burst of 12 at 3.2 s."""
    return [200] * 15 + list(range(250, 2400, 50)) + [3200] * 12


def bursty_arrivals(seconds: int = 20, seed: int = 4) -> list[int]:
    """Seeded arrivals (ms from the start) for `seconds`: a trickle of about 5 a second, plus a burst of 15
    at a random moment of about every second, so some bursts fall just before and just after a boundary."""
    rng = random.Random(seed)
    trickle = [rng.randrange(seconds * 1000) for _ in range(5 * seconds)]
    bursts = [t for _ in range(seconds) for t in [rng.randrange(seconds * 1000)] for _ in range(15)]
    return sorted(trickle + bursts)


@dataclass(frozen=True)
class StatePoint:
    """One replayed request: when (ms from the start), whether it passed, and the algorithm's state after it."""

    t: int
    allowed: bool
    level: float


STALL_S = 0.3  # a replay paused this long between two requests starts again (its keys expire in real time)


def replay(limiter: Limiter, key: str, arrivals: Sequence[int], *, read_state: bool = True) -> list[StatePoint]:
    """Ask `limiter` about each arrival on an injected clock (`allow_at`, EPOCH_MS + t) and, unless told
    not to, read the algorithm's state from its keys after each decision (`state`; else the level is 0).
    The scripts still set real expiries: a replay runs far faster than its clock, but if the machine stalls
    it for STALL_S between two requests, it starts again on fresh keys, so no state expires under it."""
    for attempt in range(5):
        points, last = [], time.perf_counter()
        for t in arrivals:
            decision = limiter.allow_at(f"{key}:{attempt}", EPOCH_MS + t)
            level = state(limiter, f"{key}:{attempt}", EPOCH_MS + t) if read_state else 0.0
            points.append(StatePoint(t, decision.allowed, level))
            if time.perf_counter() - last > STALL_S:
                break
            last = time.perf_counter()
        else:
            return points
    raise RuntimeError(f"the machine stalled every replay for {STALL_S} s or more; run the cell again")


def state(limiter: Limiter, key: str, now_ms: int) -> float:
    """What the algorithm holds for `key` at `now_ms`, in its own terms: units counted in the current window
    (fixed window), entries in the sliding window (log), the weighted estimate (counter), tokens left
    (bucket), or how far the theoretical arrival time runs ahead of now, in units (GCRA)."""
    r, first = limiter.r, limiter.keys(key)[0]
    if isinstance(limiter, FixedWindow):
        start, used = r.hmget(first, "start", "used")
        return float(used) if start is not None and int(start) == now_ms - now_ms % limiter.window_ms else 0.0
    if isinstance(limiter, SlidingLog):
        return float(r.zcount(first, f"({now_ms - limiter.window_ms}", "+inf"))
    if isinstance(limiter, SlidingWindowCounter):
        start, cur, prev = r.hmget(first, "start", "cur", "prev")
        window_start = now_ms - now_ms % limiter.window_ms
        if start is None or int(start) < window_start - limiter.window_ms:
            return 0.0
        if int(start) < window_start:  # the saved window is the previous one
            cur, prev = 0, cur
        return float(prev) * (limiter.window_ms - (now_ms - window_start)) / limiter.window_ms + float(cur)
    if isinstance(limiter, TokenBucket):
        tokens, ts = r.hmget(first, "tokens", "ts")
        if tokens is None:
            return float(limiter.limit)
        return min(limiter.limit, float(tokens) + (now_ms - int(ts)) / limiter.ms_per_unit)
    if isinstance(limiter, GCRA):
        tat = r.get(first)
        return max(0.0, float(tat) - now_ms) / limiter.ms_per_unit if tat is not None else 0.0
    raise TypeError(f"no state reader for {type(limiter).__name__}")


def most_in_any_window(points: Sequence[StatePoint], window_ms: int) -> int:
    """The most admitted requests within any `window_ms` of the replay (windows starting anywhere)."""
    admitted = sorted(p.t for p in points if p.allowed)
    best, first = 0, 0
    for last, t in enumerate(admitted):
        while admitted[first] <= t - window_ms:
            first += 1
        best = max(best, last - first + 1)
    return best


def skewed_pair(limiter: SlidingLog, key: str, skew_ms: int, *, late_ms: int = 750) -> int:
    """Two app servers share `key`: A (a true clock) sends `limit` requests 10 ms apart from 0 ms; B, whose
    clock runs `skew_ms` fast, sends `limit` more at `late_ms` (true time), each passing its own clock as
    `now`. Returns how many of the 2 x limit, all within one true window, were admitted."""
    a = [limiter.allow_at(key, EPOCH_MS + 10 * i) for i in range(limiter.limit)]
    b = [limiter.allow_at(key, EPOCH_MS + late_ms + i + skew_ms) for i in range(limiter.limit)]
    return sum(d.allowed for d in a + b)


# -- fail open, fail closed ------------------------------------------------------------------------------
def guarded_allow(limiter: Limiter, key: str, *, fail_open: bool) -> tuple[bool, str | None]:
    """`limiter.allow(key)`, or, when its server does not answer (timeout, refused connection), the policy's
    answer: admit everyone (fail open) or no one (fail closed). Returns (admitted, the error if any)."""
    try:
        return limiter.allow(key).allowed, None
    except (redis.ConnectionError, redis.TimeoutError) as err:
        return fail_open, type(err).__name__


@dataclass(frozen=True)
class Outage:
    """Requests of one user while the limiter's server was paused, under one policy."""

    asked: int
    admitted: int
    errors: int
    median_s: float  # how long each decision took (the client's timeout)


def during_outage(limiter: Limiter, key: str, requests: int, *, fail_open: bool) -> Outage:
    """`requests` guarded decisions for `key` (call it while the limiter's server is paused)."""
    admitted, errors, took = 0, 0, []
    for _ in range(requests):
        began = time.perf_counter()
        allowed, error = guarded_allow(limiter, key, fail_open=fail_open)
        took.append(time.perf_counter() - began)
        admitted, errors = admitted + allowed, errors + (error is not None)
    return Outage(requests, admitted, errors, statistics.median(took))


# -- count, then add: four app servers race ---------------------------------------------------------------
def race_processes(url: str, ask: Callable[[redis.Redis, str], bool], keys: Sequence[str], processes: int = 4) -> int:
    """`processes` processes (app servers), each with its own client of `url`, start together and call
    `ask(client, key)` once for every key, in turn: how many calls were admitted in all."""
    fork = multiprocessing.get_context("fork")  # the child inherits `ask`, even one defined in a notebook
    queue, start_at = fork.Queue(), time.time() + 0.5

    def app_server() -> None:
        client = client_for(url)
        time.sleep(max(0.0, start_at - time.time()))
        queue.put(sum(bool(ask(client, key)) for key in keys))
        client.close()

    workers = [fork.Process(target=app_server) for _ in range(processes)]
    for w in workers:
        w.start()
    try:
        return sum(queue.get(timeout=60) for _ in workers)
    finally:
        for w in workers:
            w.join(10)


def url_of(r: redis.Redis) -> str:
    """A URL for `r`'s server, with its user and password (a workshop learner's user too)."""
    kw = r.connection_pool.connection_kwargs
    return f"redis://{kw.get('username') or ''}:{kw.get('password') or ''}@{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


# -- pictures --------------------------------------------------------------------------------------------
STATE_LABEL = {FixedWindow: "units in this window", SlidingLog: "entries in the last window",
               SlidingWindowCounter: "weighted estimate", TokenBucket: "tokens in the bucket",
               GCRA: "TAT ahead of now (units)"}


def plot_state(limiter: Limiter, points: Sequence[StatePoint]) -> None:
    """The algorithm's state after each replayed request, admitted (green) or refused (red), with the
    limit, and the window boundaries for the window counters."""
    _, ax = plt.subplots(figsize=(8, 2.4))
    for allowed, color in ((True, "tab:green"), (False, "tab:red")):
        chosen = [p for p in points if p.allowed is allowed]
        ax.scatter([p.t / 1000 for p in chosen], [p.level for p in chosen], s=10, color=color,
                   label="admitted" if allowed else "refused")
    ax.axhline(limiter.limit, color="black", linestyle="--", linewidth=1, label=f"limit / burst {limiter.limit}")
    if isinstance(limiter, (FixedWindow, SlidingWindowCounter)):
        for edge in range(0, points[-1].t // limiter.window_ms + 1):
            ax.axvline(edge * limiter.window_ms / 1000, color="gray", linewidth=0.5)
    ax.set(xlabel="seconds (replayed clock)", ylabel=STATE_LABEL[type(limiter)], xlim=(0, points[-1].t / 1000 + 0.3),
           title=f"{limiter.algorithm}: state after each request")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    plt.show()


def plot_boundary(boundary: dict[str, int], limit: int) -> None:
    _, ax = plt.subplots(figsize=(8, 2.6))
    ax.bar(list(boundary), list(boundary.values()), color=["tab:red"] + ["tab:green"] * (len(boundary) - 1))
    ax.axhline(limit, color="black", linestyle="--", label=f"limit: {limit} per second")
    ax.set(title="admitted within a fraction of a second around a window boundary", ylabel="admitted")
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    plt.show()


def plot_skew(admitted: dict[int, int], limit: int) -> None:
    _, ax = plt.subplots(figsize=(7, 2.4))
    ax.step(list(admitted), list(admitted.values()), where="post", color="tab:red")
    ax.axhline(limit, color="black", linestyle="--", label=f"limit: {limit} per window")
    ax.set(xlabel="app server B's clock ahead of A's (ms)", ylabel="admitted in one true window",
           title="sliding log fed the app servers' clocks", ylim=(0, 2.2 * limit))
    ax.legend(fontsize=8)
    plt.show()


def plot_outage(healthy: int, outages: dict[str, Outage], limit: int) -> None:
    _, ax = plt.subplots(figsize=(7, 2.4))
    names = ["server up", *outages]
    ax.bar(names, [healthy, *(o.admitted for o in outages.values())], color=["tab:blue", "tab:orange", "tab:gray"])
    ax.axhline(limit, color="black", linestyle="--", label=f"limit: {limit}")
    ax.set(title=f"one user's {next(iter(outages.values())).asked} requests: admitted", ylabel="admitted")
    ax.legend(fontsize=8)
    plt.show()


# -- the exercise ----------------------------------------------------------------------------------------
PROBE_WINDOW_MS = 60_000  # the probe's and the race's window: nothing leaves it while the check runs
SLIDE_LIMIT, SLIDE_WINDOW_MS = 2, 600  # the sliding phase: short enough to watch an entry leave
DAY_MS = 86_400_000


@check
def check_sliding_log(r: redis.Redis, ns: Namespace, allow: Callable) -> Result:
    """`allow(r, key, limit, window_ms) -> bool` is an atomic sliding log on the server's clock whose script is
    given every key it touches (in KEYS: keys built inside a script may live on another cluster node).
    One request alone, traced: it writes only keys it sent, sends no time of the client's, scores its entry by
    the server's clock in ms, and every key it wrote expires within the window. Then the log slides (limit 2
    per 600 ms: a slot frees when the oldest entry is 600 ms old, not before the second one is). Then 8 threads
    ask for 50 users in lockstep (each user 8 times, limit 4 per 60 s): exactly 4 per user must pass.
    The keys carry a hash tag (`...:{u}`)."""
    base = ns.key("check", "sliding-log")
    users = [f"{base}:{{{u}}}" for u in range(SLIDING_USERS)]
    admitted: dict[str, int] = dict.fromkeys(users, 0)
    lock, errors = threading.Lock(), []
    step = threading.Barrier(SLIDING_THREADS)  # the lockstep: every thread asks for a user at the same moment,
    # so that a check and an add in separate steps are raced on every user, however the machine schedules them

    def client() -> None:
        try:
            for key in users:
                step.wait(60)
                if allow(r, key, SLIDING_LIMIT, PROBE_WINDOW_MS):
                    with lock:
                        admitted[key] += 1
        except threading.BrokenBarrierError:  # another thread failed (reported below) or hung
            return
        except Exception as err:  # reported below, never swallowed
            errors.append(err)
            step.abort()

    problems: list[str] = []
    try:
        problems += _probe(r, f"{base}:{{probe}}", allow)
        problems += _slides(r, base, allow)
    except Exception as err:  # reported below, never swallowed
        errors.append(err)
    threads = [threading.Thread(target=client) for _ in range(SLIDING_THREADS)] if not errors else []
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        entries = max((r.zcard(k) for k in users if r.type(k) == "zset"), default=0)
    finally:
        delete_keys(r, [k for k in r.scan_iter(match=base + "*")])
    if errors:
        return Result(False, f"your function raised {errors[0]!r}.")
    over = {k: n for k, n in admitted.items() if n > SLIDING_LIMIT}
    total, expected = sum(admitted.values()), SLIDING_USERS * SLIDING_LIMIT
    if over:
        problems.append(f"{len(over)} of {SLIDING_USERS} users got more than {SLIDING_LIMIT} requests through "
                        f"({total} admitted, expected {expected}): the check and the add must happen in one atomic "
                        "step (one script), and every request needs its own member.")
    elif total < expected:
        problems.append(f"only {total} admitted, expected exactly {expected} ({SLIDING_LIMIT} per user).")
    if entries > SLIDING_LIMIT:
        problems.append(f"a sorted set holds {entries} entries: a denied request must not be recorded.")
    asked = SLIDING_USERS * SLIDING_THREADS
    return verdict(problems, f"exactly {SLIDING_LIMIT} per user, {total} of {asked} concurrent requests; the log "
                             "slides on the server's clock; every key in KEYS; every key expires within the window.")


def _probe(r: redis.Redis, key: str, allow: Callable) -> list[str]:
    """One request for `key`, traced: the problems with what it sent and what it wrote."""
    with trace(r, show=False) as sent:
        allow(r, key, SLIDING_LIMIT, PROBE_WINDOW_MS)
    now = server_ms(r)
    calls = [call for call in sent.calls if not call.handshake]
    named = {arg for call in calls for arg in call.args}
    written = sorted(k if isinstance(k, str) else k.decode() for k in r.scan_iter(match=key + "*"))
    problems = []
    hidden = [k for k in written if k not in named]
    if hidden:
        problems.append(f"one request wrote {hidden}, a key it never sent: a script must be given every key it "
                        "touches in KEYS (here KEYS[2] = key .. ':seq', which shares the key's {hash tag}), or on "
                        "a cluster it may live on another node and the script fails.")
    if any(_near(arg, now) for call in calls for arg in call.args[1:]):
        problems.append("a request sent a time of the client's clock: read `TIME` inside the script, so that every "
                        "app server decides on the same clock (4.8 showed what a fast clock costs).")
    sets = [k for k in written if r.type(k) in ("zset", b"zset")]
    scores = [score for k in sets for _, score in r.zrange(k, 0, -1, withscores=True)]
    if not scores:
        problems.append("an admitted request left no sorted-set entry under its key.")
    elif not all(abs(score - now) < 1000 for score in scores):
        problems.append(f"the entry is scored {scores[0]:.0f}, not the server's time in ms ({now}): score by "
                        "`TIME` seconds x 1000 + microseconds / 1000, the unit of window_ms.")
    ttls = {k: r.pttl(k) for k in written}
    lasting = {k: ttl for k, ttl in ttls.items() if not 0 < ttl <= PROBE_WINDOW_MS}
    if lasting:
        problems.append(f"after one request with window_ms={PROBE_WINDOW_MS}, these keys' PTTL is not within the "
                        f"window: {lasting} (-1: no expiry). PEXPIRE every key the script writes by window_ms, so "
                        "that an idle user costs nothing.")
    return problems


def _near(arg: str, now_ms: int) -> bool:
    """Whether `arg` is a number within a day of the server's clock, in ms or in seconds."""
    try:
        value = float(arg)
    except ValueError:
        return False
    return abs(value - now_ms) < DAY_MS or abs(value - now_ms / 1000) < DAY_MS / 1000


def _slides(r: redis.Redis, base: str, allow: Callable) -> list[str]:
    """Limit 2 per 600 ms: a request at 0 ms and one at 300 ms pass, a third is refused; once the first is 600 ms
    old a request passes, and the next is refused (the second is still inside). Times on the server's clock; a
    run the machine stalled past a deadline starts again on a fresh key."""
    for attempt in range(4):
        key = f"{base}:{{slide{attempt}}}"
        def ask(key: str = key) -> bool:
            return bool(allow(r, key, SLIDE_LIMIT, SLIDE_WINDOW_MS))

        first = ask()
        first_at = server_ms(r)  # the first entry's score is at most this
        _wait_until(r, first_at + SLIDE_WINDOW_MS // 2)
        second_at = server_ms(r)  # the second entry's score is at least this
        second, third = ask(), ask()
        _wait_until(r, first_at + SLIDE_WINDOW_MS + 5)
        fourth, fifth = ask(), ask()
        if server_ms(r) >= second_at + SLIDE_WINDOW_MS - 5:
            continue  # the second entry may have left before the fifth request: no verdict from this run
        got = [first, second, third, fourth, fifth]
        if got[:3] != [True, True, False]:
            return [f"with limit {SLIDE_LIMIT} per {SLIDE_WINDOW_MS} ms, two requests 300 ms apart must pass and a "
                    f"third be refused; got {got[:3]}."]
        if not fourth:
            return [f"the log does not slide: {SLIDE_WINDOW_MS} ms after the first of {SLIDE_LIMIT} requests a new "
                    "request was refused. Remove the entries older than `now - window_ms` (ms, from TIME) before "
                    "counting."]
        if fifth:
            return [f"the log forgot a live entry: with one entry {SLIDE_WINDOW_MS // 2} ms old and one just added, "
                    f"a third request within {SLIDE_WINDOW_MS} ms was admitted. Remove only entries older than "
                    "`now - window_ms`."]
        return []
    raise RuntimeError("the machine stalled every run of the sliding phase for 300 ms or more; run the check again")


def _wait_until(r: redis.Redis, at_ms: int) -> None:
    """Sleep until the server's clock reads `at_ms` (polled, with a 10 s deadline)."""
    deadline = time.monotonic() + 10
    while (left := at_ms - server_ms(r)) > 0 and time.monotonic() < deadline:
        time.sleep(min(left, 50) / 1000)
