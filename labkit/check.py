"""Exercise checks: each says whether an answer is right and, if not, what to change.

A check never raises for a wrong answer; it returns a `Result` that is falsy and explains the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Result:
    """The verdict of one check; truthy when the answer is right."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{'✅ correct' if self.passed else '❌ not yet'}: {self.message}"

    def _repr_markdown_(self) -> str:
        return f"**{'✅ Correct' if self.passed else '❌ Not yet'}**: {self.message}"


def _verdict(problems: list[str], success: str) -> Result:
    return Result(False, " ".join(problems)) if problems else Result(True, success)


# --- lesson 00 -------------------------------------------------------------------------------------
GREETING = "hello"
GREETING_TTL_S = 60


def greeting(r: redis.Redis, key: str) -> Result:
    """Lesson 00: `key` holds the string "hello" and expires by itself within 60 seconds."""
    value = r.get(key)
    if value is None:
        return Result(False, f"there is no key {key!r}; write it with r.set(...) using exactly that key.")
    value = value.decode() if isinstance(value, bytes) else value
    ttl_ms = r.pttl(key)
    problems = []
    if value != GREETING:
        problems.append(f"the value is {value!r}, expected {GREETING!r}.")
    if ttl_ms == -1:
        problems.append("the key never expires: give it a time to live (SET ... EX 60, or r.set(key, v, ex=60)).")
    elif ttl_ms > GREETING_TTL_S * 1000:
        problems.append(
            f"it expires in {ttl_ms / 1000:,.0f} s, more than {GREETING_TTL_S} s: EX takes seconds, PX milliseconds."
        )
    return _verdict(problems, f"{key} = {value!r}, expiring in {ttl_ms / 1000:.1f} s.")


# --- lesson 01 -------------------------------------------------------------------------------------
def _cleanup(r: redis.Redis, keys: list[str]) -> None:
    if keys:
        r.delete(*keys)


LEADERBOARD = {"ada": 310, "bob": 120, "cy": 990, "dee": 450, "eve": 45, "fay": 700, "gus": 450.5}


def leaderboard(r: redis.Redis, ns, top_n) -> Result:
    """Lesson 01: `top_n(r, key, n)` returns [(rank, member, score)], rank 1 = highest score, n entries."""
    key = ns.key("check", "leaderboard")
    r.delete(key)
    r.zadd(key, LEADERBOARD)
    try:
        answer = [tuple(row) for row in top_n(r, key, 3)]
    finally:
        _cleanup(r, [key])
    ranked = sorted(LEADERBOARD.items(), key=lambda kv: -kv[1])
    expected = [(i + 1, m, float(s)) for i, (m, s) in enumerate(ranked[:3])]
    problems = []
    if len(answer) != 3:
        problems.append(f"asked for 3 entries, got {len(answer)} (ZRANGE's stop index is inclusive: 0..n-1).")
    elif [m for _, m, _ in answer] != [m for _, m, _ in expected]:
        problems.append(f"members {[m for _, m, _ in answer]}, expected {[m for _, m, _ in expected]}: "
                        "highest score first (ZRANGE ... REV, or ZREVRANGE).")
    elif [rank for rank, _, _ in answer] != [1, 2, 3]:
        problems.append(f"ranks {[rank for rank, _, _ in answer]}: people count from 1, ZRANK from 0.")
    elif [float(s) for _, _, s in answer] != [s for _, _, s in expected]:
        problems.append("the scores do not match: ask for WITHSCORES.")
    return _verdict(problems, f"top 3: {answer}")


VISITS_DAYS = {"2026-11-25": 1500, "2026-11-26": 2500}
VISITS_PER_USER = 2
HLL_TOLERANCE = 0.03  # more than 3 standard errors (0.81% each) for HyperLogLog


def daily_visitors(r: redis.Redis, ns, record_visit, unique_visitors) -> Result:
    """Lesson 01: `record_visit(r, ns, day, user)` and `unique_visitors(r, ns, day)` count distinct users per
    day with HyperLogLog: within 3% of the truth, about 12 KB per day at most."""
    before = set(ns.keys(r))
    for day, users in VISITS_DAYS.items():
        for _ in range(VISITS_PER_USER):
            for user in range(users):
                record_visit(r, ns, day, f"user{user}")
    try:
        counts = {day: unique_visitors(r, ns, day) for day in VISITS_DAYS}
        new_keys = sorted(set(ns.keys(r)) - before)
        sizes = {k: (r.type(k), r.memory_usage(k, samples=0) or 0) for k in new_keys}
    finally:
        _cleanup(r, sorted(set(ns.keys(r)) - before))
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
    if not problems and any(kind != "string" or size > 16 * 1024 for kind, size in sizes.values()):
        problems.append(f"the counts are right but the keys are {sizes}: a HyperLogLog is a string of at most "
                        "12 KB, whatever the number of users; a Set grows with every user.")
    return _verdict(problems, f"distinct visitors {counts}, true {VISITS_DAYS}, in keys {sorted(sizes)}.")


TAGGED = {"redis": {"a1", "a2", "a3", "a5"}, "python": {"a2", "a3", "a4"}, "caching": {"a3", "a5", "a2"}}


def tag_query(r: redis.Redis, ns, with_all_tags) -> Result:
    """Lesson 01: `with_all_tags(r, ns, tags)` returns the set of article ids that carry every tag in `tags`,
    with tag sets stored at `ns.key("tag", name)`."""
    keys = [ns.key("tag", tag) for tag in TAGGED]
    for tag, ids in TAGGED.items():
        r.delete(ns.key("tag", tag))
        r.sadd(ns.key("tag", tag), *ids)
    cases = [["redis", "python"], ["redis", "python", "caching"], ["python"]]
    try:
        answers = [set(with_all_tags(r, ns, tags)) for tags in cases]
    finally:
        _cleanup(r, keys)
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
    return _verdict(problems, f"{len(cases)} queries answered with set intersections.")


# --- lesson 03 -------------------------------------------------------------------------------------
def touch_session(r: redis.Redis, ns, touch) -> Result:
    """Lesson 03: `touch(r, key, idle_ms) -> bool` refreshes an existing session hash's idle TTL and returns
    True; for a missing session it returns False and writes nothing."""
    live, missing = ns.key("check", "session", "live"), ns.key("check", "session", "missing")
    r.delete(live, missing)
    r.hset(live, mapping={"user_id": "u1", "last_seen": "0"})
    r.pexpire(live, 2000)
    try:
        refreshed = touch(r, live, 60_000)
        ttl_after = r.pttl(live)
        absent = touch(r, missing, 60_000)
        created = r.exists(missing)
        leftover = r.hgetall(missing) if created else {}
    finally:
        _cleanup(r, [live, missing])
    problems = []
    if refreshed is not True:
        problems.append(f"touching a live session returned {refreshed!r}, expected True (HSET returns how many "
                        "fields are NEW, so 0 for a refresh: use EXPIRE's reply, or a script).")
    if not 50_000 < ttl_after <= 60_000:
        problems.append(f"the live session's TTL is {ttl_after} ms after touch, expected about 60,000 ms.")
    if absent is not False:
        problems.append(f"touching a missing session returned {absent!r}, expected False.")
    if created:
        problems.append(f"touching a missing session created {missing!r} holding {leftover}: a half session "
                        "with no user. Check that the session exists before writing, in the same round trip.")
    return _verdict(problems, "refreshes live sessions, reports and leaves missing ones alone.")


# --- lesson 04 -------------------------------------------------------------------------------------
SLIDING_USERS, SLIDING_LIMIT, SLIDING_THREADS = 50, 4, 8


def sliding_log(r: redis.Redis, ns, allow) -> Result:
    """Lesson 04: `allow(r, key, limit, window_ms) -> bool` is an atomic sliding log. 8 threads ask for 50
    users in lockstep (each user 8 times, limit 4 per 60 s): exactly 4 per user must pass, and keys expire."""
    import threading

    base = ns.key("check", "sliding-log")
    users = [f"{base}:{u}" for u in range(SLIDING_USERS)]
    admitted: dict[str, int] = dict.fromkeys(users, 0)
    lock, errors = threading.Lock(), []

    def client() -> None:
        try:
            for key in users:
                if allow(r, key, SLIDING_LIMIT, 60_000):
                    with lock:
                        admitted[key] += 1
        except Exception as err:  # reported below, never swallowed
            errors.append(err)

    threads = [threading.Thread(target=client) for _ in range(SLIDING_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        ttl = r.pttl(users[0])
        entries = max((r.zcard(k) for k in users if r.type(k) == "zset"), default=0)
    finally:
        _cleanup(r, [k for k in r.scan_iter(match=base + "*")])
    if errors:
        return Result(False, f"your function raised {errors[0]!r}.")
    problems = []
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
    if ttl < 0:
        problems.append("the key has no expiry: PEXPIRE it by the window so idle users cost nothing.")
    asked = SLIDING_USERS * SLIDING_THREADS
    return _verdict(problems, f"exactly {SLIDING_LIMIT} per user, {total} of {asked} concurrent requests; keys expire.")


# --- lesson 02 -------------------------------------------------------------------------------------
def xfetch(should_refresh) -> Result:
    """Lesson 02: `should_refresh(now, expiry, delta, beta, rand) -> bool` is XFetch's test
    `now - delta * beta * ln(rand) >= expiry`, with `rand` uniform in (0, 1]."""
    import math
    import random

    problems = []
    if not should_refresh(100.0, 100.0, 10.0, 1.0, 1.0) or should_refresh(99.0, 100.0, 10.0, 1.0, 1.0):
        problems.append("with rand = 1 (ln 1 = 0) it must refresh exactly when now >= expiry.")
    rng = random.Random(2015)
    draws = [1.0 - rng.random() for _ in range(4000)]
    early = sum(bool(should_refresh(0.0, 10.0, 10.0, 1.0, u)) for u in draws) / len(draws)
    expected = math.exp(-1)  # P(-ln U >= remaining / (delta * beta)) with remaining = delta
    if early == 0:
        problems.append("it never refreshes early: -ln(rand) is positive, so `now - delta*beta*ln(rand)` is LATER "
                        "than now; check the sign (a common copy has `+` or compares the wrong way).")
    elif abs(early - expected) > 0.05:
        problems.append(f"with delta = remaining time it refreshed early {early:.0%} of the time; "
                        f"XFetch does so {expected:.0%} of the time (e^-1).")
    bigger_beta = sum(bool(should_refresh(0.0, 10.0, 10.0, 2.0, u)) for u in draws) / len(draws)
    if not problems and bigger_beta <= early:
        problems.append("beta > 1 must make early refreshes MORE likely.")
    return _verdict(problems, f"refreshes early {early:.0%} of the time when one recompute-time is left "
                              f"(theory {expected:.0%}); more often with beta = 2 ({bigger_beta:.0%}).")


def single_flight(r: redis.Redis, ns, get_or_compute) -> Result:
    """Lesson 02: `get_or_compute(r, key, compute, lock_ttl_ms)` returns the cached value at `key`, or computes
    it under a lock at `key + ":lock"` that holds a token: one compute for many concurrent callers, and a
    client never deletes a lock it does not own."""
    import threading
    import time

    problems = []
    key = ns.key("check", "single-flight")
    computes = []

    def compute() -> str:
        computes.append(1)
        time.sleep(0.05)
        return "fresh"

    r.delete(key, key + ":lock")
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(get_or_compute(r, key, compute, 2000)))
               for _ in range(20)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(computes) > 1:
            problems.append(f"{len(computes)} computes for 20 concurrent callers: after taking the lock, read the "
                            "cache again (another client may have filled it while you waited), and let waiters "
                            "re-read rather than compute.")
        if answers != ["fresh"] * 20:
            problems.append(f"callers got {sorted(set(map(str, answers)))}, expected 'fresh' for all 20.")
        # a lock that outlives its TTL: A's lock (50 ms) expires while A computes (150 ms)
        r.delete(key, key + ":lock")
        slow = lambda: (time.sleep(0.15), "slow")[1]  # noqa: E731
        first = threading.Thread(target=get_or_compute, args=(r, key, slow, 50))
        first.start()
        time.sleep(0.08)  # A's 50 ms lock has expired; another client now takes the lock
        r.set(key + ":lock", "someone-else", px=1000)
        first.join()
        if r.get(key + ":lock") != "someone-else":
            problems.append("when its lock had expired, the first client deleted a lock another client held: "
                            "store a random token in the lock and release it only if the token is still yours "
                            "(a Lua compare-and-delete).")
    finally:
        _cleanup(r, [k for k in r.scan_iter(match=key + "*")])
    return _verdict(problems, "one compute for 20 concurrent callers; never releases a lock it does not own.")


# --- lesson 05 -------------------------------------------------------------------------------------
def presence(r: redis.Redis, ns, resync) -> Result:
    """Lesson 05: `resync(feed, seen)`, called on every (re)connect, makes the set `seen` match who is online,
    so a tracker that missed announcements while disconnected ends up right."""
    from labkit.pubsub import PresenceFeed, Subscriber

    feed = PresenceFeed(r, "check", prefix=ns.key("check"))
    seen: set[str] = set()
    r.delete(feed.members_key)

    def tracker() -> Subscriber:
        sub = Subscriber(r, feed.channel, on_connect=lambda _client: resync(feed, seen),
                         on_message=lambda message: PresenceFeed.apply(message[2], seen), name="labkit-check")
        return sub

    try:
        for user in ("alice", "bob", "carol"):
            feed.join(user)
        with tracker() as sub:  # connected from the start: it learns alice, bob and carol from resync
            feed.join("dave")
            sub.wait_for(1)
        feed.leave("bob")  # while the tracker is disconnected: no one hears these two
        feed.join("erin")
        with tracker() as sub:  # the reconnect
            feed.leave("alice")
            sub.wait_for(1)
        truth = feed.online()
    finally:
        r.delete(feed.members_key)
    if seen == truth:
        return Result(True, f"after the reconnect the tracker sees {sorted(seen)}, exactly who is online.")
    problems = [f"the tracker believes {sorted(seen)} are online; really {sorted(truth)} are."]
    if "erin" not in seen:
        problems.append("It missed erin, who joined while it was disconnected: on connect, read feed.online().")
    if "bob" in seen:
        problems.append("It still shows bob, who left while it was disconnected: replace `seen` with the snapshot "
                        "(clear it first), don't just add to it.")
    return Result(False, " ".join(problems))


def expired_events(r: redis.Redis, flags: str) -> Result:
    """Lesson 05: with notify-keyspace-events set to `flags`, a subscriber of `__keyevent@0__:expired` hears
    each key that expires, and the server publishes nothing else (no event for writes, none per key name).
    Restores the server's previous setting afterwards."""
    import time

    from labkit.pubsub import Subscriber

    previous = r.config_get("notify-keyspace-events")["notify-keyspace-events"]
    key = "lab:l05:check:expiring"
    try:
        r.config_set("notify-keyspace-events", flags)
    except redis.ResponseError as err:
        return Result(False, f"the server refused {flags!r}: {err}. Use the letters from the table above.")
    try:
        with Subscriber(r, patterns=["__key*@*__:*"], name="labkit-check") as sub:
            r.set(key, "soon", px=50)
            deadline = time.monotonic() + 2
            while r.exists(key) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.15)
            events = [channel for _, channel, _ in sub.messages]
    finally:
        r.config_set("notify-keyspace-events", previous)
        r.delete(key)
    expired = [c for c in events if c.startswith("__keyevent@") and c.endswith(":expired")]
    others = sorted(set(events) - set(expired))
    problems = []
    if not expired:
        problems.append(f"no expired event reached __keyevent@0__:expired with {flags!r}: you need E (keyevent "
                        "channels) and x (expired events).")
    if others:
        problems.append(f"the server also published on {others[:4]}: every extra event costs the server work "
                        "for each write; keep only E and x.")
    return _verdict(problems, f"{flags!r} publishes exactly one event for the expired key, on {expired[:1]}.")


# --- lesson 06 -------------------------------------------------------------------------------------
def ack_after_success(r: redis.Redis, ns, consume_batch) -> Result:
    """Lesson 06: `consume_batch(r, stream, group, consumer, handle)` reads one batch with `>`, calls
    `handle(entry_id, fields)` for each entry, and acknowledges exactly those whose handler returned."""
    stream, group = ns.key("check", "ack"), "check"
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    ids = [r.xadd(stream, {"n": n}) for n in range(5)]
    handled = []

    def handle(entry_id: str, fields: dict) -> None:
        if fields["n"] == "2":
            raise ValueError("the payment service is down")
        handled.append(entry_id)

    try:
        consume_batch(r, stream, group, "checker", handle)
    except Exception as err:
        r.delete(stream)
        return Result(False, f"your function raised {type(err).__name__}: {err}. Catch the handler's error per "
                             "entry, so one bad entry does not stop the batch (and leave it unacknowledged).")
    pending = {row["message_id"] for row in r.xpending_range(stream, group, "-", "+", 10)}
    r.delete(stream)
    problems = []
    if ids[2] not in pending:
        problems.append("the entry whose handler failed was acknowledged: it is lost. Acknowledge only after "
                        "the handler returns.")
    if set(handled) & pending:
        problems.append(f"{len(set(handled) & pending)} entries handled successfully are still pending: XACK them, "
                        "or they will be delivered again.")
    if len(handled) != 4:
        problems.append(f"the handler ran for {len(handled)} of the 4 good entries: read them all with `>`.")
    return _verdict(problems, "4 entries handled and acknowledged; the failed one stays pending for a retry.")


def reclaim_all(r: redis.Redis, ns, reclaim) -> Result:
    """Lesson 06: `reclaim(r, stream, group, consumer, min_idle_ms)` claims every entry idle longer than
    `min_idle_ms` and returns their ids, following XAUTOCLAIM's cursor and coping with its third element."""
    import time

    stream, group = ns.key("check", "reclaim"), "check"
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = r.pipeline(transaction=False)
    for n in range(250):
        pipe.xadd(stream, {"n": n})
    ids = pipe.execute()
    r.xreadgroup(group, "died", {stream: ">"}, count=250)
    r.xdel(stream, *ids[:5])  # trimmed away while pending
    time.sleep(0.02)
    try:
        claimed = list(reclaim(r, stream, group, "rescuer", 10))
    except ValueError as err:
        r.delete(stream)
        return Result(False, f"{type(err).__name__}: {err}. Since 7.0 XAUTOCLAIM replies with three elements "
                             "(cursor, entries, deleted ids): unpack three, or index the reply.")
    left = r.xpending(stream, group)["pending"]
    r.delete(stream)
    expected = set(ids[5:])
    problems = []
    if set(claimed) != expected:
        problems.append(f"you returned {len(set(claimed))} ids; 245 entries were claimable (250 pending, 5 of them "
                        "deleted from the stream). XAUTOCLAIM claims at most COUNT (default 100) per call: call it "
                        "again with the cursor it returns until the cursor is 0-0.")
    if left != 245:
        problems.append(f"{left} entries are pending afterwards, expected the 245 you now own.")
    return _verdict(problems, "all 245 live entries claimed, the 5 deleted ones dropped from the pending list.")


# --- lesson 08 -------------------------------------------------------------------------------------
class _RacyClient(redis.Redis):
    """A real client of the same server that, right after a GET of the lock returns our token, lets the
    lock expire and another client take it: the moment a two-step release is exposed to."""

    lock_key = ""
    rival_token = "rival"
    raced = False

    def execute_command(self, *args, **options):
        reply = super().execute_command(*args, **options)
        if args and str(args[0]).upper() == "GET" and args[1] == self.lock_key and reply is not None:
            redis.Redis(connection_pool=self.connection_pool).set(self.lock_key, self.rival_token, px=5000)
            self.raced = True
        return reply


def safe_release(r: redis.Redis, ns, release) -> Result:
    """Lesson 08: `release(r, key, token)` deletes the lock at `key` only if it holds `token`, atomically,
    and returns whether it did."""
    key = ns.key("check", "lock")
    problems = []
    r.set(key, "mine", px=5000)
    if not release(r, key, "mine") or r.exists(key):
        problems.append("releasing our own lock did not delete it (or did not return True).")
    r.set(key, "someone-else", px=5000)
    if release(r, key, "mine") or r.get(key) != "someone-else":
        problems.append("it deleted (or claimed to release) a lock held by someone else: compare the token first.")
    racy = _RacyClient(connection_pool=r.connection_pool)
    racy.lock_key = key
    r.set(key, "mine", px=5000)
    release(racy, key, "mine")
    if not problems and racy.raced and r.get(key) != racy.rival_token:
        problems.append("between your GET and your DEL the lock expired and another client took it; your DEL "
                        "removed their lock. Compare and delete in one step: a Lua script.")
    r.delete(key)
    return _verdict(problems, "it releases only its own lock, and atomically (a rival's lock survived the race).")


def redlock_validity(validity) -> Result:
    """Lesson 08: `validity(acquired, nodes, elapsed_ms, ttl_ms)` is the time left in ms for a Redlock that
    won `acquired` of `nodes` in `elapsed_ms`: ttl - elapsed - drift (ttl * 0.01 + 2 ms) with a strict
    majority, else 0."""
    cases = [  # (acquired, nodes, elapsed_ms, ttl_ms, expected, what a wrong answer usually got wrong)
        (5, 5, 0, 10_000, 9898, "subtract the clock drift allowance, ttl * 0.01 + 2 ms"),
        (3, 3, 400, 1000, 588, "subtract the time spent acquiring"),
        (3, 3, 995, 1000, 0, "after 995 ms of a 1000 ms TTL nothing is left once drift is counted: return 0, "
                             "never a negative validity"),
        (2, 5, 10, 1000, 0, "2 of 5 is not a majority: a quorum hard-coded as 2 lets two clients both hold it"),
        (2, 4, 10, 1000, 0, "2 of 4 is not a strict majority (n // 2 + 1 = 3)"),
        (3, 5, 10, 1000, 978, "3 of 5 is a majority"),
        (2, 3, 10, 1000, 978, "2 of 3 is a majority"),
    ]
    for acquired, nodes, elapsed, ttl, expected, hint in cases:
        got = validity(acquired, nodes, elapsed, ttl)
        if got is None or abs(float(got) - expected) > 0.5:
            return Result(False, f"validity({acquired}, {nodes}, {elapsed}, {ttl}) gave {got}, expected {expected}: "
                                 f"{hint}.")
    return Result(True, "majority, elapsed time and drift all counted.")


# --- lesson 07 -------------------------------------------------------------------------------------
def _lesson07_index(r: redis.Redis, ns):
    """A small index of the corpus (hash documents with topic and embedding) for the lesson 07 checks."""
    from labkit.vectors import Embedder, corpus, create_index, to_bytes, wait_indexed

    data, embedder = corpus(), Embedder(precomputed=True)
    docs = [(q, g["topic"], g["id"]) for g in data["groups"] for q in g["questions"][:1]]
    docs += [(d["question"], d["topic"], "distractor") for d in data["distractors"]]
    index, prefix = ns.key("check-idx"), ns.key("check-doc") + ":"
    create_index(r, index, prefix=prefix, algorithm="FLAT", fields={"topic": "TAG", "group": "TAG"}, replace=True)
    vectors = embedder.embed([q for q, _, _ in docs])
    pipe = r.pipeline(transaction=False)
    for i, ((text, topic, group), vector) in enumerate(zip(docs, vectors, strict=True)):
        pipe.hset(f"{prefix}{i}", mapping={"text": text, "topic": topic, "group": group, "embedding": to_bytes(vector)})
    pipe.execute()
    wait_indexed(r, index)
    return index, prefix, docs, vectors, embedder


def _drop(r: redis.Redis, index: str) -> None:
    r.execute_command("FT.DROPINDEX", index, "DD")


def topic_knn(r: redis.Redis, ns, nearest_in_topic) -> Result:
    """Lesson 07: `nearest_in_topic(r, index, vector, topic, k)` returns the keys of the k documents nearest to
    `vector` among those whose TAG field `topic` is `topic`, nearest first (a pre-filtered KNN)."""
    import numpy as np

    index, prefix, docs, vectors, embedder = _lesson07_index(r, ns)
    try:
        query = embedder("I want to close my account permanently.")
        in_topic = [i for i, (_, topic, _) in enumerate(docs) if topic == "billing"]
        order = sorted(in_topic, key=lambda i: float(1 - vectors[i] @ query))
        expected = [f"{prefix}{i}" for i in order[:5]]
        try:
            got = list(nearest_in_topic(r, index, np.asarray(query, dtype=np.float32), "billing", 5))
        except redis.ResponseError as err:
            return Result(False, f"the server answered {err}. Vector queries need DIALECT 2, and the vector passed as "
                                 "a PARAMS blob of FLOAT32 bytes.")
    finally:
        _drop(r, index)
    got = [k.decode() if isinstance(k, bytes) else k for k in got]
    if got == expected:
        return Result(True, "the 5 nearest billing questions, nearest first: the filter ran before the KNN.")
    if len(got) < 5:
        return Result(False, f"{len(got)} results instead of 5: filter inside the query, `(@topic:{{billing}})=>[KNN 5 "
                             "...]`, so KNN picks among billing documents, rather than filtering the 5 nearest of all.")
    if got == expected[::-1] or set(got) == set(expected):
        return Result(False, "the right documents in the wrong order: sort by the distance, ascending (0 = nearest).")
    return Result(False, f"got {got[:3]}..., expected {expected[:3]}...: KNN 5 among @topic:{{billing}} documents.")


def similarity_lookup(r: redis.Redis, ns, lookup) -> Result:
    """Lesson 07: `lookup(r, index, vector, min_similarity)` returns the cached `text` of the nearest entry if its
    cosine SIMILARITY is at least `min_similarity`, else None; the server reports cosine DISTANCE."""
    import numpy as np

    from labkit.vectors import corpus

    index, _, docs, vectors, embedder = _lesson07_index(r, ns)
    try:
        data = corpus()
        paraphrases = [q for g in data["groups"][:20] for q in g["questions"][1:]]
        unrelated = np.zeros(vectors.shape[1], dtype=np.float32)
        unrelated[0] = 1.0  # then made orthogonal to every cached vector
        basis, _ = np.linalg.qr(vectors.T)
        unrelated -= basis @ (basis.T @ unrelated)
        unrelated /= np.linalg.norm(unrelated)
        asked = embedder.embed(paraphrases)
        answers = [lookup(r, index, vector, 0.7) for vector in asked]
        orthogonal = lookup(r, index, unrelated, 0.7)
    finally:
        _drop(r, index)
    similarity = asked @ vectors.T  # one row per paraphrase, one column per cached prompt
    expected = [docs[int(row.argmax())][0] if row.max() >= 0.7 else None for row in similarity]
    problems = []
    if orthogonal is not None:
        problems.append(f"a vector orthogonal to every cached prompt (similarity 0) got {orthogonal!r}: the score is a "
                        "DISTANCE (1 - similarity), so `score >= min_similarity` accepts the least similar.")
    wrong = sum(a != e for a, e in zip(answers, expected, strict=True))
    if wrong:
        problems.append(f"{wrong} of {len(paraphrases)} paraphrases got a different answer than expected: hit when "
                        "distance <= 1 - min_similarity.")
    return _verdict(problems, f"{sum(a is not None for a in answers)} of {len(paraphrases)} paraphrases hit at "
                              "similarity >= 0.7, and the orthogonal vector missed.")
