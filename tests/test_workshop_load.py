"""Load: thirty simulated learners in three processes run the reference answer of every exercise check of
lessons 00-04 at once against one workshop server; every check passes and every learner's progress
shows up on the instructor's table."""

from __future__ import annotations

import multiprocessing
import time

import pytest

from labkit import workshop
from labkit.server import spawn
from tests.workshops import REFERENCE, simulate

LEARNERS, PROCESSES = 30, 3


@pytest.mark.slow
@pytest.mark.load  # make test runs it alone, after the notebooks: their timing claims need no thirty learners
@pytest.mark.timeout(240)
def test_thirty_learners_pass_every_check_of_lessons_00_to_04_at_once():
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no client or thread of this one
    with spawn(modules=False) as server:
        admin = server.client()
        seats = workshop.create(admin, LEARNERS)
        started = time.monotonic()
        start, out = context.Barrier(PROCESSES + 1), context.Queue()
        groups = [[(s.learner, s.password, s.url) for s in seats[i::PROCESSES]] for i in range(PROCESSES)]
        processes = [context.Process(target=simulate, args=(group, start, out)) for group in groups]
        for process in processes:
            process.start()
        try:
            start.wait(timeout=120)  # every process has imported labkit and opened its threads
            ran_from = time.monotonic()
            report = {}
            for _ in processes:
                report |= out.get(timeout=180)
            ran_for = time.monotonic() - ran_from
        finally:
            for process in processes:
                process.join(timeout=30)
                if process.is_alive():
                    process.kill()
        failed = {name: r.get("error") or {c: m for c, (ok, m) in r["results"].items() if not ok}
                  for name, r in report.items() if r.get("error") or not all(ok for ok, _ in r["results"].values())}
        assert sorted(report) == [s.learner for s in seats] and not failed, failed
        assert max(r["began"] for r in report.values()) < min(r["ended"] for r in report.values()), \
            "the learners did not all run at once"
        board = workshop.Progress(admin).update()
        assert {name: board.passed(name) for name in board.learners} == {s.learner: set(REFERENCE) for s in seats}
        assert len(board.attempts) == LEARNERS * len(REFERENCE)
        assert all(row[-1].startswith(f"{len(REFERENCE)}/") for row in board.rows()[1:])
        print(f"{LEARNERS} learners x {len(REFERENCE)} checks in {PROCESSES} processes: {ran_for:.1f} s running, "
              f"{time.monotonic() - started:.1f} s in all")
        workshop.close(admin)
        assert admin.dbsize() == 0
