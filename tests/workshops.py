"""Simulated workshop learners: the reference answer of every exercise check of lessons 00-04, run as a
learner of a real workshop (their own ACL user, their own namespace), and the server the instructor
notebook runs against under nbval."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable

import redis

import labkit
from labkit import workshop
from labkit.keys import USER_ENV
from labkit.lessons import Result
from labkit.lessons import l00_setup as l00
from labkit.lessons import l01_data_structures as l01
from labkit.lessons import l02_caching as l02
from labkit.lessons import l03_sessions as l03
from labkit.lessons import l04_rate_limiting as l04
from labkit.server import Server, spawn
from tests.lessons import test_l01, test_l02, test_l03, test_l04

Check = tuple[str, str]  # (lesson, check name)


def _greeting(r: redis.Redis, ns: labkit.Namespace) -> Result:
    r.set(ns.key("greeting"), "hello", ex=60)
    return l00.check_greeting(r, ns.key("greeting"))


def _scripted(check: Callable, source: str, keys: Callable[[str], list[str]]) -> Callable:
    """A reference answer that runs a Lua script: registered on the learner's own client."""
    def answer(r: redis.Redis, ns: labkit.Namespace) -> Result:
        script = r.register_script(source)
        return check(r, ns, lambda r, key, *args: bool(script(keys=keys(key), args=list(args))))
    return answer


REFERENCE: dict[Check, Callable[[redis.Redis, labkit.Namespace], Result]] = {
    ("l00", "check_greeting"): _greeting,
    ("l01", "check_leaderboard"): lambda r, ns: l01.check_leaderboard(r, ns, test_l01.top_n_reference),
    ("l01", "check_daily_visitors"): lambda r, ns: l01.check_daily_visitors(
        r, ns, test_l01.record_visit_hll, test_l01.unique_visitors_hll),
    ("l01", "check_tag_query"): lambda r, ns: l01.check_tag_query(
        r, ns, lambda r, ns, tags: r.sinter([ns.key("tag", t) for t in tags])),
    ("l02", "check_xfetch"): lambda r, ns: l02.check_xfetch(
        lambda now, expiry, delta, beta, rand: now - delta * beta * math.log(rand) >= expiry),
    ("l02", "check_single_flight"): lambda r, ns: l02.check_single_flight(r, ns, test_l02.reference_get_or_compute),
    ("l03", "check_touch_session"): _scripted(l03.check_touch_session, test_l03.TOUCH_LUA, lambda key: [key]),
    ("l04", "check_sliding_log"): _scripted(l04.check_sliding_log, test_l04.SLIDING_LUA,
                                            lambda key: [key, key + ":seq"]),
}


def run_checks(seat: workshop.Seat, checks: Iterable[Check] = REFERENCE,
               answers: dict[Check, Callable] | None = None) -> dict[Check, Result]:
    """Run `checks` as the learner of `seat` (on their own connection, in their namespaces, recording their
    progress), with the reference answers unless `answers` replaces some; clean each lesson's keys."""
    answers = REFERENCE | (answers or {})
    results = {}
    with workshop.as_learner(seat.learner, seat.url):
        r = labkit.connect()
        try:
            for lesson, name in checks:
                ns = labkit.Namespace(lesson)
                results[lesson, name] = answers[lesson, name](r, ns)
                ns.cleanup(r)
        finally:
            r.close()
    return results


def not_written(r: redis.Redis, ns: labkit.Namespace) -> Result:
    """A wrong answer to lesson 00's exercise: the key is never written."""
    return l00.check_greeting(r, ns.key("greeting"))


class InstructorServer:
    """The server the instructor notebook runs against under nbval: a workshop of two learners, ada having
    passed lesson 00's check and grace lesson 02's xfetch and failed lesson 00's (both really run, as
    those learners). `verify_and_close()` checks what the notebook left, then closes the workshop."""

    LEARNERS = ("ada", "grace")

    def __init__(self) -> None:
        self.server: Server = spawn(modules=False)
        self.url = self.server.url
        self.admin = self.server.client()
        self.seats = {seat.learner: seat for seat in workshop.create(self.admin, list(self.LEARNERS))}
        run_checks(self.seats["ada"], [("l00", "check_greeting")])
        run_checks(self.seats["grace"], [("l02", "check_xfetch"), ("l00", "check_greeting")],
                   answers={("l00", "check_greeting"): not_written})
        self._learner_env = os.environ.pop(USER_ENV, None)  # the instructor is no learner

    def passwords(self) -> list[str]:
        return [seat.password for seat in self.seats.values()]

    def verify_and_close(self) -> list[str]:
        """What is wrong with the server after the notebook (an empty list when nothing), then close."""
        if self._learner_env is not None:
            os.environ[USER_ENV] = self._learner_env
        problems = []
        try:
            users = sorted(str(u) for u in self.admin.acl_users())
            if users != ["ada", "default", "grace"]:
                problems.append(f"the demo learner was not removed: users {users}")
            board = workshop.Progress(self.admin).update()
            expected = {"ada": {("l00", "check_greeting")}, "grace": {("l02", "check_xfetch")}}
            if {name: board.passed(name) for name in self.LEARNERS} != expected:
                problems.append(f"the learners' progress changed: {[str(a) for a in board.attempts]}")
            stray = [k for k in self.admin.scan_iter() if not k.startswith(workshop.WORKSHOP)]
            if stray:
                problems.append(f"keys left behind: {stray[:10]}")
            closed = workshop.close(self.admin)
            if closed.users != ["ada", "grace"] or self.admin.dbsize() or self.admin.acl_users() != ["default"]:
                problems.append(f"close left something: {closed}, {self.admin.dbsize()} key(s)")
        finally:
            self.admin.close()
            self.server.stop()
        return problems



def simulate(seats: list[tuple[str, str, str]], start, out) -> None:
    """In a process of its own: one thread per seat (learner, password, url), all starting together once
    every process is ready (`start`, a barrier), each running the reference answer of every check in
    REFERENCE as that learner. Puts {learner: {"began", "ended", "results" or "error"}} on `out`."""
    import threading
    import time

    report: dict = {}
    ready = threading.Barrier(len(seats) + 1)

    def learner(seat: workshop.Seat) -> None:
        ready.wait()
        began = time.monotonic()
        try:
            results = {f"{lesson}.{name}": [r.passed, r.message] for (lesson, name), r in run_checks(seat).items()}
            report[seat.learner] = {"began": began, "ended": time.monotonic(), "results": results}
        except Exception as err:  # reported to the test, which fails naming it
            report[seat.learner] = {"began": began, "ended": time.monotonic(), "error": repr(err)}

    threads = [threading.Thread(target=learner, args=(workshop.Seat(*seat),)) for seat in seats]
    for thread in threads:
        thread.start()
    start.wait()
    ready.wait()
    for thread in threads:
        thread.join()
    out.put(report)
