"""labkit.replication.retry: retried until a deadline with capped, jittered backoff (an injected clock), and
against a real server that is frozen and thawed, and one that never comes back."""

import threading
import time

import pytest
import redis

from labkit.clients import options
from labkit.replication import retry
from labkit.server import spawn


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(times: int, error: Exception, then: object = "done"):
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= times:
            raise error
        return then

    return call, calls


def test_returns_at_once_when_the_call_works():
    fake = FakeTime()
    assert retry(lambda: 42, deadline_s=1, clock=fake.clock, sleep=fake.sleep) == 42
    assert fake.sleeps == []


@pytest.mark.parametrize("error", [redis.ConnectionError("refused"), redis.TimeoutError("slow"),
                                   redis.sentinel.MasterNotFoundError("no primary")])
def test_retries_connection_errors_and_timeouts_with_growing_capped_sleeps(error):
    fake = FakeTime()
    call, calls = failing(6, error)
    assert retry(call, deadline_s=60, base_s=0.05, cap_s=0.5, clock=fake.clock, sleep=fake.sleep,
                 rng=lambda: 1.0) == "done"
    assert len(calls) == 7 and fake.sleeps == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_jitter_draws_each_sleep_between_zero_and_the_step():
    fake = FakeTime()
    call, _ = failing(3, redis.ConnectionError())
    retry(call, deadline_s=60, base_s=0.1, cap_s=1, clock=fake.clock, sleep=fake.sleep, rng=lambda: 0.25)
    assert fake.sleeps == [0.025, 0.05, 0.1]


def test_gives_up_at_the_deadline_with_the_last_error_and_never_sleeps_past_it():
    fake = FakeTime()
    call, calls = failing(10_000, redis.ConnectionError("still down"))
    with pytest.raises(redis.ConnectionError, match="still down"):
        retry(call, deadline_s=2, base_s=0.05, cap_s=0.5, clock=fake.clock, sleep=fake.sleep, rng=lambda: 1.0)
    assert fake.now == pytest.approx(2.0) and max(fake.sleeps) <= 0.5
    assert len(calls) == len(fake.sleeps) + 1  # one last attempt at the deadline


def test_other_errors_are_raised_at_once():
    fake = FakeTime()
    call, calls = failing(1, redis.ResponseError("WRONGTYPE"))
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        retry(call, deadline_s=10, clock=fake.clock, sleep=fake.sleep)
    assert len(calls) == 1 and fake.sleeps == []


def test_retry_on_chooses_what_is_retried():
    fake = FakeTime()
    call, calls = failing(2, redis.ResponseError("NOREPLICAS Not enough good replicas to write"))
    assert retry(call, deadline_s=10, retry_on=(redis.ResponseError,), clock=fake.clock, sleep=fake.sleep) == "done"
    assert len(calls) == 3


def test_a_frozen_server_thawed_within_the_deadline_gets_the_write():
    with spawn(modules=False) as server:
        client = server.client(**options(timeout=0.2))
        server.pause()
        thaw = threading.Timer(0.6, server.resume)
        thaw.start()
        try:
            started = time.monotonic()
            assert retry(lambda: client.set("order:1", "paid"), deadline_s=10) is True
            assert time.monotonic() - started >= 0.5
        finally:
            thaw.join()
            server.resume()
        assert server.client().get("order:1") == "paid"


def test_a_server_that_never_answers_costs_about_the_deadline():
    with spawn(modules=False) as server:
        client = server.client(**options(timeout=0.2))
        server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                retry(lambda: client.set("order:1", "paid"), deadline_s=1.0)
            took = time.monotonic() - started
        finally:
            server.resume()
    assert 1.0 <= took < 1.0 + 3  # the last attempt, started at the deadline, may add its own 0.2 s timeout
