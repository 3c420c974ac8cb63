"""Widgets run headless: bounded in time, ending with a figure and a one-line summary."""

import math
import threading
import time

import pytest

from labkit import ConfigError
from labkit.widgets import AdmissionTimeline, LagMonitor, LiveMonitor, OpsMonitor, PubSubMonitor

from .waiting import eventually


def test_ops_monitor_sees_a_workload(r, ns, capsys, label_only):
    def workload(stop):
        while not stop.is_set():
            r.incr(ns.key("counter"))

    result = OpsMonitor(r, duration=1.0, interval=0.1).run(workload)
    assert len(result.times) >= 2 and result.times == sorted(result.times)
    assert result.times[-1] < 1.0 and result.peak("ops/s") > 0
    assert result.png.startswith(b"\x89PNG")
    assert result.summary.startswith("server ops/s: now") and result.summary in capsys.readouterr().out
    assert int(r.get(ns.key("counter"))) > 0


def test_workload_errors_reach_the_cell():
    def broken(stop):
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        LiveMonitor(lambda: {"x": 1.0}, duration=0.3, interval=0.05).run(broken)


def test_the_live_figure_is_drawn_while_sampling():
    monitor = LiveMonitor(lambda: {"x": 1.0}, duration=0.3, interval=0.05)
    drawn = []
    monitor.plot.observe(lambda change: drawn.append(change["new"]), names="outputs")
    monitor.run()
    assert drawn and drawn[0][0]["data"]["image/png"] and monitor.label.value.startswith("<b>live monitor</b> (done)")


def test_admission_timeline_totals_are_the_workloads_counts_to_its_last_request(capsys, label_only):
    counts = {"limiter": {"admitted": 0, "rejected": 0}}

    def workload(stop):
        i = 0
        while not stop.is_set():
            counts["limiter"]["admitted" if i % 3 else "rejected"] += 1
            i += 1
            time.sleep(0.001)
        counts["limiter"]["admitted"] += 5  # after the monitor's last timed sample

    monitor = AdmissionTimeline(counts, duration=0.5, interval=0.1)
    monitor.run(workload)
    assert monitor.totals("limiter") == (counts["limiter"]["admitted"], counts["limiter"]["rejected"])
    assert counts["limiter"]["rejected"] > 0 and f"limiter {counts['limiter']['admitted']}/" in capsys.readouterr().out


def test_duration_must_be_positive():
    with pytest.raises(ConfigError, match="duration"):
        LiveMonitor(lambda: {}, duration=0)


def test_pubsub_monitor_counts_published_and_received(r, ns, capsys, label_only):
    from labkit.pubsub import Subscriber

    channel = ns.key("monitored")
    with Subscriber(r, channel, name=ns.key("monitor")) as sub:
        def workload(stop):
            while not stop.is_set():
                r.publish(channel, "x")
                time.sleep(0.002)

        result = PubSubMonitor(r, channel, received=lambda: len(sub.messages), gauges={"queue": lambda: 3},
                               duration=1.0, interval=0.1).run(workload)
    assert result.peak("published/s") > 50 and result.peak("received/s") > 50
    assert result.peak("subscribers") == 1 and result.series["queue"][-1] == 3
    assert "published/s" in result.summary and result.summary in capsys.readouterr().out


def test_lag_monitor_sees_lag_grow_and_drain(r, ns, capsys, label_only):
    from labkit.streams import Worker, ensure_group

    stream = ns.key("lagging")
    ensure_group(r, stream, "g")
    monitor = LagMonitor(r, stream, "g", duration=2.0, interval=0.1)

    def workload(stop):
        for _ in range(5):
            r.xadd(stream, {"n": 1})
        eventually(lambda: 5 in monitor.result.series.get("lag", ()))  # drain once the monitor saw the lag
        Worker(r, stream, "g", "c1", lambda i, f: None, block_ms=10).run(until=stop)

    result = monitor.run(workload)
    assert result.peak("lag") == 5 and result.series["lag"][-1] == 0 and result.series["pending c1"][-1] == 0
    assert result.summary.startswith("consumer group lag: lag 0 (peak 5)") and result.summary in capsys.readouterr().out


def test_lag_monitor_says_unknown_where_the_server_cannot_count(r, ns, capsys, label_only):
    stream = ns.key("holed")
    from labkit.streams import ensure_group

    ensure_group(r, stream, "g")
    ids = [r.xadd(stream, {"n": n}) for n in range(10)]
    r.xreadgroup("g", "c1", {stream: ">"}, count=2)
    monitor = LagMonitor(r, stream, "g", duration=0.3, interval=0.1)
    before = monitor.run()
    r.xdel(stream, ids[5])  # deleted where the group has not read yet: XINFO GROUPS says lag nil
    after = LagMonitor(r, stream, "g", duration=0.3, interval=0.1).run()
    assert before.series["lag"][-1] == 8 and before.summary.startswith("consumer group lag: lag 8 (peak 8)")
    assert all(math.isnan(v) for v in after.series["lag"]) and math.isnan(after.peak("lag"))
    assert math.isnan(after.mean("lag")) and "(peak unknown)" in after.summary and "peak 0" not in after.summary
    assert after.summary.startswith("consumer group lag: lag unknown") and after.summary in capsys.readouterr().out


@pytest.mark.parametrize(("stream", "group", "says"), [
    (None, "g", "stream must be a non-empty string"),
    ("present", "", "group must be a non-empty string"),
    ("present", None, "group must be a non-empty string"),
    ("missing", "g", "No stream .*missing.*ensure_group"),
    ("present", "gg", r"No group 'gg' on .*present.* \(groups: \['g'\]\)"),
    ("a string", "g", "holds a string, not a stream"),
])
def test_lag_monitor_refuses_a_stream_or_group_that_is_not_there_when_made(r, ns, stream, group, says):
    """A misspelt group used to give an empty chart ("no samples yet") for the whole run, a missing stream a raw
    server error at the first sample: each is a ConfigError naming what to pass, before anything runs."""
    from labkit import ConfigError
    from labkit.streams import ensure_group

    ensure_group(r, ns.key("present"), "g")
    r.set(ns.key("a string"), "v")
    with pytest.raises(ConfigError, match=says):
        LagMonitor(r, ns.key(stream) if stream else stream, group, duration=0.3, interval=0.1)


def test_lag_monitor_stops_with_an_error_if_its_group_goes_during_the_run(r, ns, label_only):
    from labkit import ConfigError
    from labkit.streams import ensure_group

    stream = ns.key("vanishing")
    ensure_group(r, stream, "g")
    monitor = LagMonitor(r, stream, "g", duration=2.0, interval=0.05)

    def workload(stop):
        eventually(lambda: monitor.result.series.get("lag"))
        r.xgroup_destroy(stream, "g")
        stop.wait()

    started = time.monotonic()
    with pytest.raises(ConfigError, match="No group 'g'"):
        monitor.run(workload)
    assert time.monotonic() - started < 2.0  # stopped at once, not after an empty run


def test_peak_and_mean_leave_unknown_samples_out():
    from labkit.widgets import MonitorResult

    result = MonitorResult(series={"lag": [math.nan, 4.0, math.nan, 2.0], "unknown": [math.nan, math.nan],
                                   "zero": [0.0, 0.0]})
    assert result.peak("lag") == 4.0 and result.mean("lag") == 3.0
    assert math.isnan(result.peak("unknown")) and math.isnan(result.mean("unknown"))  # unknown is never 0
    assert result.peak("zero") == 0 and result.mean("zero") == 0


def test_peak_of_a_series_not_recorded_names_the_ones_that_were():
    from labkit import ConfigError
    from labkit.widgets import MonitorResult

    with pytest.raises(ConfigError, match=r"No series 'lg'.*\['lag', 'pending'\]"):
        MonitorResult(series={"lag": [1.0], "pending": [0.0]}).peak("lg")


def test_eviction_monitor_sees_a_server_fill_up_and_evict(capsys):
    from labkit.server import spawn
    from labkit.widgets import EvictionMonitor

    with spawn(modules=False, maxmemory="2mb", maxmemory_policy="allkeys-lru") as server:
        c = server.client()

        def workload(stop):
            for start in range(0, 12_000, 200):
                with c.pipeline(transaction=False) as pipe:
                    for i in range(start, start + 200):
                        pipe.set(f"item:{i}", "v" * 200)
                        pipe.get(f"item:{i // 2}")
                    pipe.execute()
                time.sleep(0.01)

        result = EvictionMonitor({"lru": c}, duration=20.0, interval=0.1).run(workload, until_done=True)
    assert result.times[-1] < 15  # it ended with the workload, not after 20 s
    assert result.peak("lru evicted/s") > 0 and 90 < result.series["lru memory %"][-1] <= 105
    rates = [rate for rate in result.series["lru hit rate %"] if rate == rate]  # NaN: an interval without reads
    assert rates and 0 < max(rates) <= 100
    assert result.summary.startswith("eviction: lru: hit rate") and result.summary in capsys.readouterr().out


def test_a_failing_sample_stops_the_workload():
    calls, threads = [], []

    def sample():
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("INFO failed")
        return {"x": 1.0}

    def workload(stop):
        threads.append(threading.current_thread())
        give_up = time.monotonic() + 30  # so that a broken monitor cannot leave it running for ever
        while not stop.is_set() and time.monotonic() < give_up:
            time.sleep(0.005)

    with pytest.raises(RuntimeError, match="INFO failed"):
        LiveMonitor(sample, duration=10, interval=0.01).run(workload)
    assert threads and eventually(lambda: not threads[0].is_alive(), timeout=5)


def test_server_monitor_sees_traffic_memory_clients_evictions_and_slow_commands(capsys, label_only):
    from labkit.server import spawn
    from labkit.widgets import ServerMonitor

    with spawn(modules=False, maxmemory="2mb", maxmemory_policy="allkeys-lru", enable_debug_command="local",
               slowlog_log_slower_than=100_000) as server:
        c = server.client()
        monitor = ServerMonitor(c, duration=20.0, interval=0.1)

        def workload(stop):
            extra = [server.client() for _ in range(10)]
            for e in extra:
                e.ping()
            for start in range(0, 12_000, 200):
                with c.pipeline(transaction=False) as pipe:
                    for i in range(start, start + 200):
                        pipe.set(f"item:{i}", "v" * 200)
                        pipe.get(f"item:{i // 2}")
                    pipe.execute()
            for e in extra:
                e.close()
            c.execute_command("DEBUG", "SLEEP", "0.12")  # over the 100 ms threshold: stalls rarely are
            eventually(lambda: monitor.result.series.get("slow commands", [0])[-1] >= 1)

        result = monitor.run(workload, until_done=True)
        logged = c.slowlog_get(128)  # the DEBUG SLEEP, and on a busy machine a descheduled SET or two
    assert result.times[-1] < 15  # it ended with the workload
    assert result.peak("ops/s") > 0 and result.peak("evicted/s") > 0 and result.peak("clients") >= 11
    assert result.series["slow commands"][0] == 0 and result.series["slow commands"][-1] == len(logged) >= 1
    assert any(entry["command"].startswith(b"DEBUG SLEEP") for entry in logged)
    assert 1.5 < result.peak("memory MB") < 3
    rates = [rate for rate in result.series["hit rate %"] if rate == rate]
    assert rates and 0 < max(rates) <= 100
    assert result.png.startswith(b"\x89PNG")
    assert result.summary.startswith("server dashboard: ") and result.summary.endswith(
        f", {len(logged)} slow command" + ("" if len(logged) == 1 else "s"))
    assert result.summary in capsys.readouterr().out


def test_failover_timeline_shows_the_errors_of_a_real_failover(capsys, label_only):
    import redis

    from labkit.server import sentinel
    from labkit.widgets import FailoverTimeline

    counts, events = {"writer": {"ok": 0, "errors": 0}}, []
    with sentinel(replicas=1, sentinels=3, down_after_ms=500) as topo:
        client = topo.master_for(socket_timeout=0.5)
        old = topo.primary

        def workload(stop):
            promoted, i = threading.Event(), 0

            def kill_and_watch():
                events.append((time.monotonic(), "primary killed"))
                old.kill()
                topo.wait_for_new_primary(old, timeout=30)
                events.append((time.monotonic(), "new primary"))
                promoted.set()

            killer = threading.Timer(0.5, kill_and_watch)
            killer.start()
            while not stop.is_set() and not (promoted.is_set() and time.monotonic() - events[-1][0] > 0.5):
                try:
                    client.set(f"k:{i}", 1)
                    counts["writer"]["ok"] += 1
                except redis.RedisError:
                    counts["writer"]["errors"] += 1
                i += 1
                time.sleep(0.005)
            killer.join()

        monitor = FailoverTimeline(counts, events, duration=30, interval=0.1)
        result = monitor.run(workload, until_done=True)
        client.close()
    assert result.times[-1] < 25 and counts["writer"]["errors"] > 0
    assert result.peak("writer errors/s") > 0
    assert monitor.seconds_with_errors("writer") >= 0.5  # at least down-after-milliseconds
    (killed_at, killed), (promoted_at, promoted) = monitor.marks()
    assert (killed, promoted) == ("primary killed", "new primary") and 0 < killed_at < promoted_at < result.times[-1]
    writes = result.series["writer writes/s"]  # writing again once promoted (the last sample may come after the
    after = [v for t, v in zip(result.times[-len(writes):], writes, strict=True) if t > promoted_at]  # writer ended)
    assert any(v > 0 for v in after), (promoted_at, list(zip(result.times[-len(writes):], writes, strict=True))[-8:])
    assert result.png.startswith(b"\x89PNG")
    assert result.summary.startswith("writes and errors per second: writer:")
    assert result.summary in capsys.readouterr().out


def test_failover_timeline_counts_seconds_with_errors_from_its_samples():
    from labkit.widgets import FailoverTimeline

    monitor = FailoverTimeline({"w": {"ok": 0, "errors": 0}}, duration=1, interval=0.1)
    monitor.result.times = [0.0, 0.1, 0.2, 0.3, 0.4]
    monitor.result.series = {"w errors/s": [0.0, 50.0, 30.0, 0.0]}  # the first sample has no rate
    assert monitor.seconds_with_errors("w") == pytest.approx(0.2)


@pytest.mark.parametrize("counts", [{}, {"w": 5}, [("w", {"ok": 0})], None])
def test_failover_timeline_wants_counters_per_writer(counts):
    from labkit.widgets import FailoverTimeline

    with pytest.raises(ValueError, match="counts maps each writer"):
        FailoverTimeline(counts)


def test_server_monitor_counts_slow_commands_after_a_slowlog_reset(label_only):
    from labkit.server import spawn
    from labkit.widgets import ServerMonitor

    with spawn(modules=False, enable_debug_command="local", slowlog_log_slower_than=100_000) as server:
        c = server.client()
        c.execute_command("DEBUG", "SLEEP", "0.12")
        c.slowlog_reset()  # the log is empty, but its ids keep counting
        monitor = ServerMonitor(c, duration=20.0, interval=0.05)

        def workload(stop):
            eventually(lambda: monitor.result.series.get("slow commands"))  # sampled once before the slow command
            c.execute_command("DEBUG", "SLEEP", "0.12")
            eventually(lambda: monitor.result.series["slow commands"][-1] >= 1)
            time.sleep(0.2)  # a few more samples

        result = monitor.run(workload, until_done=True)
        logged = len(c.slowlog_get(128))
    assert result.series["slow commands"][0] == 0 and result.series["slow commands"][-1] == logged >= 1
