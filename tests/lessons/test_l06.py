"""The lesson 06 module (`labkit.lessons.l06_streams`): the crash test, and each check accepting the reference
answer and rejecting the known-wrong ones."""

import contextlib

import pytest

from labkit import ConfigError
from labkit.lessons import l06_streams as lesson
from labkit.server import capabilities, spawn


# -- the crash test -------------------------------------------------------------------------------------
def test_sigkilled_worker_processes_lose_nothing(r, ns):
    result = lesson.crash_test(r, ns.key("crash"), messages=3000, workers=3, kills=4, rate=3000, claim_idle_ms=200)
    assert result.lost == 0 and result.processed == 3000 and result.pending_after == 0
    assert result.idempotent_total == result.expected_total
    assert result.naive_total - result.expected_total == result.duplicated_amount
    assert (result.duplicated_amount > 0) == (result.duplicates > 0)
    assert {name for _, name in result.kill_times} == {"worker-0", "worker-1", "worker-2"}  # every worker hit


def test_crash_test_needs_two_workers(r, ns):
    with pytest.raises(ConfigError, match="at least 2 workers"):
        lesson.crash_test(r, ns.key("crash"), workers=1)
    assert ns.keys(r) == []


# -- exercise checks ------------------------------------------------------------------------------------
def _consume_right(r, stream, group, consumer, handle):
    done = []
    for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
        try:
            handle(entry_id, fields)
            done.append(entry_id)
        except Exception:
            pass
    if done:
        r.xack(stream, group, *done)


def test_ack_after_success_accepts_the_reference(r, ns):
    assert lesson.check_ack_after_success(r, ns, _consume_right)


def test_ack_after_success_rejects_acking_first(r, ns):
    def ack_first(r, stream, group, consumer, handle):
        for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
            r.xack(stream, group, entry_id)
            with contextlib.suppress(Exception):
                handle(entry_id, fields)

    result = lesson.check_ack_after_success(r, ns, ack_first)
    assert not result and "was acknowledged: it is lost" in result.message


def test_ack_after_success_rejects_never_acking(r, ns):
    def never_ack(r, stream, group, consumer, handle):
        for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
            with contextlib.suppress(Exception):
                handle(entry_id, fields)

    result = lesson.check_ack_after_success(r, ns, never_ack)
    assert not result and "still pending" in result.message


def test_ack_after_success_rejects_letting_the_error_escape(r, ns):
    def no_catch(r, stream, group, consumer, handle):
        for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
            handle(entry_id, fields)
            r.xack(stream, group, entry_id)

    result = lesson.check_ack_after_success(r, ns, no_catch)
    assert not result and "raised ValueError" in result.message


def _reclaim_right(r, stream, group, consumer, min_idle_ms):
    cursor, ids = "0-0", []
    while True:
        cursor, entries, _ = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id=cursor)
        ids += [entry_id for entry_id, _ in entries]
        if cursor == "0-0":
            return ids


def test_reclaim_all_accepts_following_the_cursor(r, ns):
    assert lesson.check_reclaim_all(r, ns, _reclaim_right)


def test_reclaim_all_rejects_a_single_call(r, ns):
    def once(r, stream, group, consumer, min_idle_ms):
        return [i for i, _ in r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms)[1]]

    result = lesson.check_reclaim_all(r, ns, once)
    assert not result and "at most COUNT" in result.message


def test_reclaim_all_rejects_unpacking_two_elements(r, ns):
    def two(r, stream, group, consumer, min_idle_ms):
        _cursor, entries = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms)
        return [i for i, _ in entries]

    result = lesson.check_reclaim_all(r, ns, two)
    assert not result and "three elements" in result.message


def test_reclaim_all_rejects_stopping_on_an_empty_page(r, ns):
    def stop_on_empty(r, stream, group, consumer, min_idle_ms):
        cursor, ids = "0-0", []
        while True:
            cursor, entries, _ = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id=cursor)
            if not entries:
                return ids
            ids += [entry_id for entry_id, _ in entries]

    result = lesson.check_reclaim_all(r, ns, stop_on_empty)
    assert not result and "returned 0 ids" in result.message and "never stopping on an empty page" in result.message


def test_reclaim_all_rejects_one_call_with_a_huge_count(r, ns):
    def one_big(r, stream, group, consumer, min_idle_ms):
        return [i for i, _ in r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, count=10_000)[1]]

    result = lesson.check_reclaim_all(r, ns, one_big)
    assert not result and "one XAUTOCLAIM call claimed everything" in result.message


def test_reclaim_all_rejects_claiming_entries_that_are_not_idle(r, ns):
    def ignore_idle(r, stream, group, consumer, min_idle_ms):
        return _reclaim_right(r, stream, group, consumer, 0)

    result = lesson.check_reclaim_all(r, ns, ignore_idle)
    assert not result and "not idle for 500 ms" in result.message and ns.keys(r) == []


def test_ref_policies_spare_pending_entries_where_the_engine_has_them(fresh):
    r, caps = fresh
    row = lesson.ref_policies(r, caps)
    assert row.server == f"{caps.engine} {caps.version}" and row.supported is caps.has("xackdel")
    assert row.pending_after_xdel == 10  # XDEL leaves the entry pending everywhere
    answers = (row.left_after_acked_trim, row.pending_after_delref, row.ackdel_reply, row.pending_after_ackdel)
    if row.supported:
        assert answers == (990, 9, [1], 8)
    else:
        assert all(str(a).startswith("refused") for a in answers[:3]) and answers[3] == 10


@pytest.fixture(scope="module")
def own():
    """A client of a server of this module's own, and its capabilities."""
    with spawn(modules=False) as server:
        client = server.client()
        yield client, capabilities(client)
        client.close()


@pytest.mark.parametrize("entries", [0, -5, 10, 20, 100, "1000", 1000.0, True, None])
def test_ref_policies_refuses_too_few_entries(own, entries):
    """It reads 20 entries, acknowledges 10 and trims to MAXLEN 100: fewer than 101 entries say nothing (or
    fail deep inside), so they are refused at once, naming what to pass, before anything is written."""
    r, caps = own
    with pytest.raises(ConfigError, match=r"entries.*at least 101"):
        lesson.ref_policies(r, caps, entries)
    assert r.dbsize() == 0


# -- ordering -------------------------------------------------------------------------------------------
def test_key_inversions_counts_only_within_a_key():
    assert lesson.key_inversions([("a", 0), ("b", 0), ("a", 1), ("b", 1)]) == 0
    assert lesson.key_inversions([("a", 1), ("b", 0), ("a", 0), ("a", 2), ("b", 1)]) == 1
    assert lesson.key_inversions([("a", 2), ("a", 1), ("a", 0)]) == 2


# -- exercise 3 -----------------------------------------------------------------------------------------
def test_idempotent_effect_accepts_a_ledger_keyed_by_order(r, ns):
    assert lesson.check_idempotent_effect(r, ns, lambda r, ledger, i, f: r.hsetnx(ledger, f["order"], f["amount"]))
    assert ns.keys(r) == []


def test_idempotent_effect_rejects_a_ledger_keyed_by_entry_id(r, ns):
    result = lesson.check_idempotent_effect(r, ns, lambda r, ledger, i, f: r.hsetnx(ledger, i, f["amount"]))
    assert not result and "business id" in result.message


def test_idempotent_effect_rejects_adding_on_every_delivery(r, ns):
    result = lesson.check_idempotent_effect(r, ns, lambda r, ledger, i, f: r.hincrby(ledger, f["order"], f["amount"]))
    assert not result and "must change nothing" in result.message


def test_idempotent_effect_accepts_hset_by_order_id(r, ns):
    """HSET by order id is idempotent for identical retries: the check accepts it (same amount each time)."""
    assert lesson.check_idempotent_effect(r, ns, lambda r, ledger, i, f: r.hset(ledger, f["order"], f["amount"]))


def test_idempotent_effect_reports_an_error_it_raised(r, ns):
    def broken(r, ledger, entry_id, fields):
        raise KeyError("amount")

    result = lesson.check_idempotent_effect(r, ns, broken)
    assert not result and "raised KeyError" in result.message and ns.keys(r) == []
