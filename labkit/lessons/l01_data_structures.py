"""Lesson 01, data structures (`notebooks/01_data_structures.ipynb`): the exercise checks, then the
measurements and plots the notebook runs (complexity timed on the server, encodings read by capability,
a long script watched by another client)."""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import redis

from labkit.keys import ROOT, SEP, Namespace
from labkit.lessons import Result, check, delete_keys, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Capabilities

LEADERBOARD = {"ada": 310, "bob": 120, "cy": 990, "dee": 450, "eve": 45, "fay": 700, "gus": 450.5}


@check
def check_leaderboard(r: redis.Redis, ns: Namespace, top_n: Callable) -> Result:
    """`top_n(r, key, n)` returns [(rank, member, score)], rank 1 = highest score, n entries (asked for
    n = 3, then n = 1 and n = 5: an answer must follow `n`)."""
    key = ns.key("check", "leaderboard")
    r.delete(key)
    r.zadd(key, LEADERBOARD)
    try:
        answers = {n: [tuple(row) for row in top_n(r, key, n)] for n in (3, 1, 5)}
    finally:
        delete_keys(r, [key])
    ranked = sorted(LEADERBOARD.items(), key=lambda kv: -kv[1])
    problems = []
    for n, answer in answers.items():
        expected = [(i + 1, m, float(s)) for i, (m, s) in enumerate(ranked[:n])]
        if len(answer) != n:
            problems.append(f"asked for {n} entries, got {len(answer)} (use n; ZRANGE's stop index is inclusive: "
                            "0..n-1).")
        elif [m for _, m, _ in answer] != [m for _, m, _ in expected]:
            problems.append(f"members {[m for _, m, _ in answer]}, expected {[m for _, m, _ in expected]}: "
                            "highest score first (ZRANGE ... REV, or ZREVRANGE).")
        elif [rank for rank, _, _ in answer] != list(range(1, n + 1)):
            problems.append(f"ranks {[rank for rank, _, _ in answer]}: people count from 1, ZRANK from 0.")
        elif [float(s) for _, _, s in answer] != [s for _, _, s in expected]:
            problems.append("the scores do not match: ask for WITHSCORES.")
        if problems:
            break
    return verdict(problems, f"top 3: {answers[3]} (and top 1 and top 5 right too)")


VISITS_DAYS = {"2026-11-25": 1500, "2026-11-26": 2500}
VISITS_PER_USER = 2
HLL_TOLERANCE = 0.03  # more than 3 standard errors (0.81% each) for HyperLogLog


@check
def check_daily_visitors(r: redis.Redis, ns: Namespace, record_visit: Callable, unique_visitors: Callable) -> Result:
    """`record_visit(r, ns, day, user)` and `unique_visitors(r, ns, day)` count distinct users per
    day with HyperLogLog: within 3% of the truth, about 12 KB per day at most."""
    before, outside_before = set(ns.keys(r)), set(_keys_naming_the_days(r, ns))
    for day, users in VISITS_DAYS.items():
        for _ in range(VISITS_PER_USER):
            for user in range(users):
                record_visit(r, ns, day, f"user{user}")
    try:
        counts = {day: unique_visitors(r, ns, day) for day in VISITS_DAYS}
        new_keys = sorted(set(ns.keys(r)) - before)
        sizes = {k: _kind_size_head(r, k) for k in new_keys}
        outside = sorted(set(_keys_naming_the_days(r, ns)) - outside_before - set(new_keys))
    finally:
        delete_keys(r, sorted(set(ns.keys(r)) - before))
        delete_keys(r, sorted(set(_keys_naming_the_days(r, ns)) - outside_before))  # written by this check's calls
    problems = []
    for day, truth in VISITS_DAYS.items():
        got = counts[day]
        if got >= truth * VISITS_PER_USER * (1 - HLL_TOLERANCE):
            problems.append(f"{day}: {got} counts visits, not visitors: each of {truth} users came "
                            f"{VISITS_PER_USER} times; count distinct users (PFADD/PFCOUNT).")
        elif abs(got - truth) > truth * HLL_TOLERANCE:
            everyone = max(VISITS_DAYS.values())
            mixed = abs(got - everyone) <= everyone * HLL_TOLERANCE
            hint = "add users with PFADD, count with PFCOUNT"
            if mixed:
                hint = "the days are mixed: keep one counter per day"
            problems.append(f"{day}: {got} is off by more than 3% from {truth}: {hint}.")
    if not problems:
        problems = _storage_problems(new_keys, sizes, outside)
    return verdict(problems, f"distinct visitors {counts}, true {VISITS_DAYS}, in keys {sorted(sizes)}.")


def _kind_size_head(r: redis.Redis, key: str) -> tuple[str, int, str]:
    """A key's type, its MEMORY USAGE, and its first four bytes if it is a string (HYLL for a HyperLogLog)."""
    kind = str(r.type(key))
    head = r.getrange(key, 0, 3) if kind == "string" else ""
    return kind, r.memory_usage(key, samples=0) or 0, head.decode(errors="replace") if isinstance(head, bytes) else head


def _storage_problems(new_keys: list[str], sizes: dict, outside: list[str]) -> list[str]:
    """Right counts, kept where and how the exercise asks: one HyperLogLog per day, under ns."""
    problems = []
    if outside:
        problems.append(f"keys outside this lesson's prefix were written ({outside[:3]}...; removed): name each "
                        f"day's counter with ns.key(...), e.g. ns.key('visitors', day).")
    elif not new_keys:
        problems.append("no keys under ns were written: the counts must live on the server (one HyperLogLog per "
                        "day, PFADD to add a user, PFCOUNT to count), not in Python.")
    elif len(new_keys) != len(VISITS_DAYS):
        problems.append(f"{len(new_keys):,} keys were written under ns, expected one counter per day "
                        f"({len(VISITS_DAYS)}): a HyperLogLog per day holds all of that day's users.")
    elif any(kind != "string" or size > 16 * 1024 for kind, size, _ in sizes.values()):
        problems.append(f"the counts are right but the keys are {sizes}: a HyperLogLog is a string of at most "
                        "12 KB, whatever the number of users; a Set grows with every user.")
    elif any(head != "HYLL" for *_, head in sizes.values()):
        problems.append("the keys are strings but not HyperLogLogs (they do not start with HYLL): add users with "
                        "PFADD, count with PFCOUNT.")
    return problems


def _keys_naming_the_days(r: redis.Redis, ns: Namespace) -> list[str]:
    """Keys whose name holds one of the check's days (bounded: the days are unusual): anywhere on the server,
    or for a workshop learner under `lab:<learner>:` only (all they may write; other learners' keys are theirs)."""
    where = f"{ROOT}{SEP}{ns.learner}{SEP}" if ns.learner else ""
    return [k for day in VISITS_DAYS for k in r.scan_iter(match=f"{where}*{day}*", count=1000)]


TAGGED = {"redis": {"a1", "a2", "a3", "a5"}, "python": {"a2", "a3", "a4"}, "caching": {"a3", "a5", "a2"}}


@check
def check_tag_query(r: redis.Redis, ns: Namespace, with_all_tags: Callable) -> Result:
    """`with_all_tags(r, ns, tags)` returns the set of article ids that carry every tag in `tags`,
    with tag sets stored at `ns.key("tag", name)`."""
    keys = [ns.key("tag", tag) for tag in TAGGED]
    for tag, ids in TAGGED.items():
        r.delete(ns.key("tag", tag))
        r.sadd(ns.key("tag", tag), *ids)
    cases = [["redis", "python"], ["redis", "python", "caching"], ["python"]]
    try:
        answers = [set(with_all_tags(r, ns, tags)) for tags in cases]
    finally:
        delete_keys(r, keys)
    problems = []
    for tags, got in zip(cases, answers, strict=True):
        want = set.intersection(*(TAGGED[t] for t in tags))
        if got == set.union(*(TAGGED[t] for t in tags)) and got != want:
            problems.append(f"{tags}: {sorted(got)} has articles with ANY of the tags (SUNION); "
                            "ask for ALL of them (SINTER).")
            break
        if got != want:
            problems.append(f"{tags}: got {sorted(got)}, expected {sorted(want)}.")
            break
    return verdict(problems, f"{len(cases)} queries answered with set intersections.")


# == Experiments and plots (the notebook's measurements; kept apart from the checks above) ===============
# -- 1.2 bitmaps ------------------------------------------------------------------------------------------
def plot_bitmap(activity: np.ndarray, bytes_per_day: int) -> None:
    """One row per day, one column per user (bit offset): green where the user was active."""
    _, ax = plt.subplots(figsize=(8, 2.4))
    ax.imshow(activity, aspect="auto", cmap="Greens", interpolation="nearest")
    users = activity.shape[1]
    ax.set(xlabel="user id (bit offset)", ylabel="day",
           title=f"SETBIT per day: {users} users in {bytes_per_day} bytes a day")
    plt.show()


# -- 1.8 complexity ---------------------------------------------------------------------------------------
def server_usec_per_call(q: redis.Redis, command: str, call: Callable, reps: int, batches: int = 7) -> float:
    """Run `call(pipe)` `reps` times in one pipeline, `batches` times; the median over batches of the server's
    own microseconds per call from INFO commandstats (one batch slowed by a busy machine does not move it)."""
    means = []
    for _ in range(batches):
        before = q.info("commandstats").get(f"cmdstat_{command}", {"calls": 0, "usec": 0})
        with q.pipeline(transaction=False) as pipe:
            for _ in range(reps):
                call(pipe)
            pipe.execute()
        after = q.info("commandstats")[f"cmdstat_{command}"]
        means.append((after["usec"] - before["usec"]) / (after["calls"] - before["calls"]))
    return statistics.median(means)


def grow_structures(q: redis.Redis, n: int, item: str) -> None:
    """Grow a hash `h`, a list `l` (of `item`), a set `s` and a sorted set `z` on `q` up to n elements."""
    for start in range(q.hlen("h"), n, 10_000):
        chunk = range(start, min(n, start + 10_000))
        q.hset("h", mapping={f"f{i}": i for i in chunk})
        q.rpush("l", *[item] * len(chunk))
        q.sadd("s", *[f"m{i}" for i in chunk])
        q.zadd("z", {f"m{i}": (i * 7919) % 100_003 for i in chunk})


def plot_complexity(sizes: Sequence[int], timings: dict[str, list[float]],
                    families: Sequence[tuple[str, Sequence[str]]]) -> None:
    """One log-log chart per family: the server's µs per call against the number of elements."""
    _, axes = plt.subplots(1, len(families), figsize=(14, 3.2))
    for ax, (family, names) in zip(axes, families, strict=True):
        for name in names:
            ax.loglog(sizes, timings[name], marker="o", label=name)
        ax.set(title=family, xlabel="elements (N)", ylim=(0.05, 3 * max(max(timings[n]) for n in names)))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("server time per call (µs)")
    plt.tight_layout()
    plt.show()


# -- 1.9 encodings, read by capability --------------------------------------------------------------------
ENCODING_LIMIT = re.compile(r"-max-(listpack|intset)-(entries|value|size)$")


def encoding_limits(config: dict[str, str]) -> dict[str, int]:
    """The compact-encoding thresholds in a `CONFIG GET *-max-*` reply, by name (`*-max-*-entries`,
    `*-max-*-value`, `list-max-listpack-size`), without the old `ziplist` aliases. Versions differ (Redis
    7.0 has no `set-max-listpack-*`: its sets of strings are hash tables from the first member): use the
    names the server answers, never assume them."""
    return {name: int(value) for name, value in config.items() if ENCODING_LIMIT.search(name)}


@dataclass
class Growth:
    """One structure grown an element at a time: MEMORY USAGE and OBJECT ENCODING after each element."""

    usage: list[int]
    encodings: list[str]

    @property
    def switch(self) -> int | None:
        """The element (counting from 1) at which the encoding changed, or None if it never did."""
        return next((i + 1 for i, e in enumerate(self.encodings) if e != self.encodings[0]), None)


def grow_one_by_one(r: redis.Redis, key: str, add: Callable, top: int) -> Growth:
    """`add(pipe, key, i)` for i = 1..top, each followed by MEMORY USAGE and OBJECT ENCODING, in one
    pipeline (the server runs them in order)."""
    with r.pipeline(transaction=False) as pipe:
        for i in range(1, top + 1):
            add(pipe, key, i)
            pipe.memory_usage(key, samples=0)
            pipe.object("encoding", key)
        replies = pipe.execute()
    return Growth(replies[1::3], replies[2::3])


def plot_growth(curves: dict[str, tuple[str, int, Growth]]) -> None:
    """Bytes per element as each structure grows, its configured limit dashed."""
    _, axes = plt.subplots(1, len(curves), figsize=(3.5 * len(curves), 3.2), squeeze=False)
    for ax, (name, (setting, limit, growth)) in zip(axes[0], curves.items(), strict=True):
        n = np.arange(1, len(growth.usage) + 1)
        ax.plot(n, np.array(growth.usage) / n, color="tab:purple")
        ax.axvline(limit, color="gray", linestyle="--", label=f"{setting} = {limit}")
        ax.set(title=f"{name}: {growth.encodings[0]} → {growth.encodings[-1]}", xlabel="elements", ylim=(0, None))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("bytes per element")
    plt.tight_layout()
    plt.show()


LIST_NODE_BYTES = {-1: 4096, -2: 8192, -3: 16384, -4: 32768, -5: 65536}  # list-max-listpack-size < 0


# -- 1.9 the thresholds of every installed engine, side by side -------------------------------------------
GROW_PAST = {  # each count or size threshold: one more element (or one more byte) per step
    "hash-max-listpack-entries": lambda p, key, i: p.hset(key, f"field{i}", i),
    "hash-max-listpack-value": lambda p, key, i: p.hset(key, "field", "x" * i),
    "set-max-listpack-entries": lambda p, key, i: p.sadd(key, f"member{i}"),
    "set-max-listpack-value": lambda p, key, i: p.sadd(key, "x" * i),
    "set-max-intset-entries": lambda p, key, i: p.sadd(key, i),
    "zset-max-listpack-entries": lambda p, key, i: p.zadd(key, {f"member{i}": i}),
    "zset-max-listpack-value": lambda p, key, i: p.zadd(key, {"x" * i: i}),
}
EMBSTR_CASES = ((8, None), (16, None), (16, 100), (48, None))  # (key-name bytes, EX seconds or None): where the
# longest embstr value is measured


@dataclass
class EngineEncodings:
    """What one server does with small structures: its thresholds, and its encodings, measured."""

    server: str  # engine and version
    limits: dict[str, int]  # the compact-encoding thresholds it has (CONFIG GET)
    switches: dict[str, int | None]  # threshold -> the element (or byte) at which the encoding changed
    small_set: str  # OBJECT ENCODING of a set of two short strings
    small_list: str  # ... of a list of two short strings
    list_switch: int | None  # the 100-byte item at which a list became a quicklist (None: it started as one)
    embstr_longest: tuple[int, ...]  # the longest string value kept embstr, in each of EMBSTR_CASES

    @property
    def switched_one_past(self) -> int:
        """How many thresholds the encoding changed at exactly one element (or byte) past."""
        return sum(self.switches[setting] == self.limits[setting] + 1 for setting in self.switches)


def encodings_here(r: redis.Redis, caps: Capabilities) -> EngineEncodings:
    """On a server of its own (its keys are this experiment's): read the thresholds, grow each structure one
    step past each of them, and note how small sets, small lists and short strings are kept."""
    limits = encoding_limits(r.config_get("*-max-*"))
    switches = {setting: grow_one_by_one(r, setting, add, limits[setting] + 1).switch
                for setting, add in GROW_PAST.items() if setting in limits}
    r.sadd("small:set", "redis", "python")
    r.rpush("small:list", "job1", "job2")
    items = grow_one_by_one(r, "list", lambda p, key, i: p.rpush(key, "x" * 100), 200)
    return EngineEncodings(caps.server, limits, switches, r.object("encoding", "small:set"),
                           r.object("encoding", "small:list"), items.switch,
                           tuple(longest_embstr(r, "k" * length, ex=ex) for length, ex in EMBSTR_CASES))


def longest_embstr(r: redis.Redis, key: str, top: int = 256, ex: int | None = None) -> int:
    """The longest value `SET key value [EX ex]` keeps as `embstr` (0 if none), trying 1..`top` bytes in one
    pipeline."""
    with r.pipeline(transaction=False) as pipe:
        for n in range(1, top + 1):
            pipe.set(key, "x" * n, ex=ex)
            pipe.object("encoding", key)
        encodings = pipe.execute()[1::2]
    r.delete(key)
    return next((n for n, encoding in enumerate(encodings) if encoding != "embstr"), top)


def differing_defaults(rows: Sequence[EngineEncodings]) -> dict[str, set[int]]:
    """The thresholds whose default is not the same on every server that has them, with their values."""
    values: dict[str, set[int]] = {}
    for row in rows:
        for setting, limit in row.limits.items():
            values.setdefault(setting, set()).add(limit)
    return {setting: found for setting, found in values.items() if len(found) > 1}


def embstr_case(length: int, ex: int | None) -> str:
    """A column name of the embstr figures: the key name's bytes, `+EX` when the key has a TTL."""
    return f"{length}{'+EX' if ex else ''}"


def print_encodings(rows: Sequence[EngineEncodings]) -> None:
    """One line per server: each threshold (e/v: entries/value; "-" where the server has no such setting),
    how many thresholds it switched at one step past, then what it did with a small set, a small list and
    short strings; a legend after the table."""
    def pair(limits: dict[str, int], kind: str) -> str:
        found = [str(limits.get(f"{kind}-max-listpack-{part}", "-")) for part in ("entries", "value")]
        return "-" if found == ["-", "-"] else "/".join(found)

    cases = "/".join(embstr_case(length, ex) for length, ex in EMBSTR_CASES)
    print(f"{'server':14} {'hash e/v':8} {'set e/v':8} {'intset':6} {'zset e/v':8} {'list':4}  {'switched':8}  "
          f"{'small set':10} {'small list':10} embstr up to (name {cases})")
    for row in rows:
        print(f"{row.server:14} {pair(row.limits, 'hash'):8} {pair(row.limits, 'set'):8} "
              f"{row.limits.get('set-max-intset-entries', '-')!s:6} {pair(row.limits, 'zset'):8} "
              f"{row.limits.get('list-max-listpack-size', '-')!s:4}  "
              f"{f'{row.switched_one_past}/{len(row.switches)}':8}  {row.small_set:10} {row.small_list:10} "
              f"{'/'.join(str(n) for n in row.embstr_longest)}")
    print("e/v = -max-listpack-entries (a count) / -max-listpack-value (bytes of one field or member); "
          "intset = set-max-intset-entries (a count)")
    print("list = list-max-listpack-size (-2: 8 KB per node); switched = thresholds at which the encoding changed "
          "exactly one element (or byte) past / thresholds grown past")
    print("small set/list = OBJECT ENCODING of two short strings; embstr = the longest value (bytes) SET keeps "
          f"embstr under a key name of {cases} bytes (+EX: with EX 100)")


def plot_json_vs_hash(json_bytes: int, hash_bytes: int, timed: dict[str, float]) -> None:
    """Bytes on the server, and median µs to read and to update one field, JSON string against hash."""
    _, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    axes[0].bar(["JSON string", "hash"], [json_bytes, hash_bytes], color=["tab:orange", "tab:blue"])
    axes[0].set(title="MEMORY USAGE (bytes)")
    x = np.arange(2)
    axes[1].bar(x - 0.2, [timed["read JSON"], timed["write JSON"]], 0.4, label="JSON string", color="tab:orange")
    axes[1].bar(x + 0.2, [timed["read hash"], timed["write hash"]], 0.4, label="hash", color="tab:blue")
    axes[1].set(xticks=x, xticklabels=["read one field", "update one field"], title="median µs per call")
    axes[1].legend(fontsize=8)
    plt.tight_layout()
    plt.show()


# -- 1.10 HyperLogLog -------------------------------------------------------------------------------------
def plot_hll(checkpoints: Sequence[int], relative: Sequence[float], trial_errors: Sequence[float],
             standard_error: float) -> None:
    """One counter's error as it grows, within ±1 and ±3 standard errors; the spread of many counters."""
    se = standard_error * 100
    _, axes = plt.subplots(1, 2, figsize=(11, 3))
    axes[0].axhspan(-se, se, color="tab:green", alpha=0.2, label="±1 standard error")
    axes[0].axhspan(-3 * se, 3 * se, color="tab:green", alpha=0.08, label="±3")
    axes[0].plot(checkpoints, np.array(relative) * 100, "o-", color="tab:blue", label="PFCOUNT vs truth")
    axes[0].set(xscale="log", xlabel="distinct items", ylabel="error (%)", title="one counter, growing")
    axes[0].legend(fontsize=7)
    axes[1].hist(np.array(trial_errors) * 100, bins=12, color="tab:blue")
    for sign in (-1, 1):
        axes[1].axvline(sign * se, color="tab:green", linestyle="--")
    spread = float(np.std(trial_errors, ddof=1))
    axes[1].set(xlabel="error (%)", title=f"{len(trial_errors)} counters: spread {spread:.2%}")
    plt.tight_layout()
    plt.show()


# -- 1.11 round trips -------------------------------------------------------------------------------------
def plot_round_trips(results: dict[str, tuple[float, int]]) -> None:
    """Writes per second and the server's network reads, per way of sending them (log scales)."""
    _, axes = plt.subplots(1, 2, figsize=(10, 2.8))
    axes[0].bar(list(results), [v[0] for v in results.values()], color="tab:blue")
    axes[0].set(title="writes per second", yscale="log")
    axes[1].bar(list(results), [v[1] for v in results.values()], color="tab:gray")
    axes[1].set(title="network reads on the server", yscale="log")
    plt.tight_layout()
    plt.show()


# -- 1.13 functions ---------------------------------------------------------------------------------------
def libraries(c: redis.Redis) -> dict[str, list[str]]:
    """FUNCTION LIST as {library: [function names]}, whichever shape the reply has (a map under RESP3, a
    flat list of names and values under RESP2)."""
    def as_map(item: object) -> dict:
        return item if isinstance(item, dict) else dict(zip(item[::2], item[1::2], strict=True))

    return {as_map(lib)["library_name"]: [as_map(f)["name"] for f in as_map(lib)["functions"]]
            for lib in c.execute_command("FUNCTION", "LIST")}


# -- 1.13 a long script blocks every client ---------------------------------------------------------------
@dataclass
class PingWatch:
    """What another client saw while something ran: its PINGs, the longest wait, the errors it got."""

    pings: int
    longest_ms: float
    errors: list[str]
    result: object


def ping_while(other: redis.Redis, run: Callable[[], object]) -> PingWatch:
    """Another client (`other`, its own connection) PINGs in a loop in a thread while `run()` runs; an
    error reply (BUSY) is noted, not raised. `run`'s own error reply is returned as its result."""
    waits: list[float] = []
    errors: list[str] = []
    stop = threading.Event()

    def pinger() -> None:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                other.ping()
            except redis.ResponseError as err:
                errors.append(str(err))
            waits.append(time.perf_counter() - started)

    thread = threading.Thread(target=pinger)
    thread.start()
    time.sleep(0.02)  # the PINGs are flowing before `run` starts
    try:
        result = run()
    except redis.ResponseError as err:
        result = err
    finally:
        stop.set()
        thread.join()
    return PingWatch(len(waits), 1000 * max(waits, default=0.0), errors, result)


# -- Common mistake: read, modify, write ------------------------------------------------------------------
def plot_lost_updates(lost: dict[str, int], total: int) -> None:
    """Lost updates per strategy (red for the one that loses some)."""
    _, ax = plt.subplots(figsize=(7, 2.6))
    ax.bar(list(lost), list(lost.values()), color=["tab:red" if n else "tab:green" for n in lost.values()])
    ax.set(title=f"lost updates out of {total:,}", ylabel="lost")
    plt.show()
