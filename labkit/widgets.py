"""Live views: a background thread samples numbers a few times a second and redraws a widget.

They run the same way in JupyterLab (updating live) and headless under nbval: bounded in time, each
ends by showing a static figure and returning a one-line summary. Widgets read numbers (INFO, XINFO,
a pattern's `.stats`); they never import the pattern modules.
"""

from __future__ import annotations

import base64
import io
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ipywidgets as w
import redis
from IPython.display import Image, display
from matplotlib.figure import Figure

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError
from labkit.streams import group_info

Sample = dict[str, float]
Workload = Callable[[threading.Event], None]


@dataclass
class MonitorResult:
    """What a monitor saw: the time axis, one list per series, and a one-line summary."""

    times: list[float] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)
    summary: str = ""
    png: bytes = b""

    def mean(self, name: str) -> float:
        """The mean of the series, leaving out samples that are NaN (unknown); NaN if none is known."""
        values = self._known(name)
        return sum(values) / len(values) if values else math.nan

    def peak(self, name: str) -> float:
        """The largest value of the series, leaving out samples that are NaN (unknown); NaN if none is known."""
        return max(self._known(name), default=math.nan)

    def _known(self, name: str) -> list[float]:
        if name not in self.series:
            raise ConfigError(f"No series {name!r}: this monitor recorded {sorted(self.series)}.")
        return [v for v in self.series[name] if not math.isnan(v)]


class LiveMonitor:
    """Samples `sample()` every `interval` s for `duration` s while a workload runs; draws the series."""

    title = "live monitor"
    unit = ""

    redraw_every = 0.5  # seconds between redraws of the live figure (the label follows every sample)
    sample_at_the_end = False  # one more sample once the workload has stopped (monitors of counts it keeps)

    def __init__(self, sample: Callable[[], Sample], *, duration: float = 3.0, interval: float = 0.2) -> None:
        if not callable(sample):
            raise ConfigError(f"sample is a function returning this moment's counters, got {sample!r}.")
        self.sample = sample
        self.duration = validate.seconds(duration, "duration (seconds the monitor samples)")
        self.interval = validate.seconds(interval, "interval (seconds between samples)")
        self._drawn_at, self._draw_s = float("-inf"), 0.0
        self.started: float | None = None  # time.monotonic() when the run began (the time axis's 0)
        self.result = MonitorResult()
        self.label = w.HTML(f"<b>{self.title}</b>: starting…")
        self.plot = w.Output()
        self.view = w.VBox([self.label, self.plot])

    def run(self, workload: Workload | None = None, *, until_done: bool = False) -> MonitorResult:
        """Show the live view, run `workload(stop_event)` in a thread, return when `duration` is over (or,
        with `until_done`, as soon as the workload returns, `duration` being the longest it may take).

        If sampling or drawing fails, the workload is stopped (and waited for) before the error reaches
        the cell; an error of the workload itself is raised once the monitor ends."""
        display(self.view)
        stop, errors = threading.Event(), []
        worker = None
        self.started = time.monotonic()
        if workload:
            worker = threading.Thread(target=_capture_errors, args=(workload, stop, errors), daemon=True)
            worker.start()
        try:
            self._sample_until_done(worker if until_done else None)
        finally:
            stop.set()
            if worker:
                worker.join()
        if errors:
            raise errors[0]
        if self.sample_at_the_end and worker:  # what the workload did after the last sample, until it stopped
            self._record(time.monotonic() - self.started, self.sample())
        return self._finish()

    def _sample_until_done(self, worker: threading.Thread | None) -> None:
        """Sample every `interval` for `duration`, or until `worker` (when given) has returned."""
        started = self.started if self.started is not None else time.monotonic()
        next_sample = started
        while (now := time.monotonic()) - started < self.duration:
            finished = worker is not None and not worker.is_alive()
            self._record(now - started, self.sample())
            self._redraw(now)
            if finished:
                break
            next_sample = max(next_sample + self.interval, time.monotonic())
            time.sleep(max(0.0, min(next_sample, started + self.duration) - time.monotonic()))
        else:  # the duration is over; if drawing or a busy machine made sampling fall behind, one last sample
            last = self.result.times[-1] if self.result.times else float("-inf")
            if last < self.duration - self.interval:
                self._record(time.monotonic() - started, self.sample())

    def _record(self, t: float, sample: Sample) -> None:
        self.result.times.append(round(t, 3))
        for name, value in sample.items():
            self.result.series.setdefault(name, []).append(value)

    def _redraw(self, now: float) -> None:
        self.label.value = f"<b>{self.title}</b>: {self.describe()}"
        if now - self._drawn_at < max(self.redraw_every, 3 * self._draw_s):
            return  # a redraw that takes long (a busy machine) must not starve the sampling
        self._drawn_at, drawing = now, time.monotonic()
        png = self.render()
        self._draw_s = time.monotonic() - drawing
        self.plot.outputs = ({"output_type": "display_data", "metadata": {},
                              "data": {"image/png": base64.b64encode(png).decode(), "text/plain": self.title}},)

    def _finish(self) -> MonitorResult:
        self.result.summary = f"{self.title}: {self.describe()}"
        self.result.png = self.render()
        self.label.value = f"<b>{self.title}</b> (done): {self.describe()}"
        self.plot.outputs = ()  # the static figure below replaces the live one
        display(Image(self.result.png))
        print(self.result.summary)
        return self.result

    def describe(self) -> str:
        """One line about the latest numbers (subclasses say more)."""
        parts = [f"{name} {values[-1]:,.0f}{self.unit}" for name, values in self.result.series.items() if values]
        return ", ".join(parts) or "no samples yet"

    def render(self) -> bytes:
        fig = Figure(figsize=(7, 2.6), dpi=90)
        ax = fig.add_subplot()
        for name, values in self.result.series.items():
            ax.plot(self.result.times[: len(values)], values, label=name)
        ax.set(title=self.title, xlabel="seconds", xlim=(0, self.duration))
        ax.grid(alpha=0.3)
        if self.result.series:
            ax.legend(loc="upper left", fontsize=8)
        return _png(fig)


def _two_panels(monitor: LiveMonitor, titles: tuple[str, str], right: Callable[[str], bool],
                label: Callable[[str], str] = str) -> bytes:
    """Every series as a line, on the right panel where `right(name)`, else on the left."""
    fig = Figure(figsize=(9, 2.8), dpi=90)
    axes = fig.subplots(1, 2)
    times = monitor.result.times
    for name, values in monitor.result.series.items():
        axes[1 if right(name) else 0].plot(times[len(times) - len(values):], values, label=label(name))
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlim=(0, monitor.duration), xlabel="seconds")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper left")
    return _png(fig)


def _count(n: float | None, noun: str) -> str:
    """`n` and `noun`, plural unless n is 1 ("1 slow command", "3 slow commands")."""
    n = round(n or 0)
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _png(fig: Figure) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _capture_errors(workload: Workload, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        workload(stop)
    except BaseException as err:  # re-raised in the cell's thread
        errors.append(err)
        stop.set()


class OpsMonitor(LiveMonitor):
    """Commands per second the server processes (from INFO's total_commands_processed)."""

    title = "server ops/s"
    unit = " ops/s"

    def __init__(self, r: redis.Redis, **kwargs: float) -> None:
        self.r = r
        self._last: tuple[float, int] | None = None
        super().__init__(self._ops_per_second, **kwargs)

    def _ops_per_second(self) -> Sample:
        now, total = time.monotonic(), int(self.r.info("stats")["total_commands_processed"])
        last, self._last = self._last, (now, total)
        rate = 0.0 if last is None else (total - last[1]) / (now - last[0])
        return {"ops/s": rate}

    def describe(self) -> str:
        ops = self.result.series.get("ops/s", [])
        if not ops:
            return "no samples yet"
        return f"now {ops[-1]:,.0f} ops/s, peak {max(ops):,.0f} ops/s over {self.result.times[-1]:.1f} s"


class AdmissionTimeline(LiveMonitor):
    """Admitted and rejected requests per interval for several limiters, from counters a workload updates:
    `counts[name]["admitted"]` and `counts[name]["rejected"]`."""

    title = "admitted / rejected per interval"
    redraw_every = 1.0  # five panels cost more to draw than one line
    sample_at_the_end = True  # the totals are then the workload's counts, to the last request

    def __init__(self, counts: dict[str, dict[str, int]], **kwargs: float) -> None:
        self.counts = counts
        self._seen = {name: {"admitted": 0, "rejected": 0} for name in counts}
        super().__init__(self._deltas, **kwargs)

    def _deltas(self) -> Sample:
        sample = {}
        for name, now in self.counts.items():
            for outcome in ("admitted", "rejected"):
                total = now[outcome]
                sample[f"{name} {outcome}"] = float(total - self._seen[name][outcome])
                self._seen[name][outcome] = total
        return sample

    def totals(self, name: str) -> tuple[int, int]:
        series = self.result.series
        return int(sum(series.get(f"{name} admitted", []))), int(sum(series.get(f"{name} rejected", [])))

    def describe(self) -> str:
        parts = [f"{name} {a}/{a + r}" for name in self.counts for a, r in [self.totals(name)]]
        return "admitted/asked: " + ", ".join(parts)

    def render(self) -> bytes:
        names = list(self.counts)
        fig = Figure(figsize=(9, 1.1 + 0.9 * len(names)), dpi=90)
        axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
        ends = self.result.times
        starts = [0.0, *ends[:-1]]  # each sample counts what happened since the previous one
        widths = [0.9 * (end - start) for start, end in zip(starts, ends, strict=True)]
        for ax, name in zip(axes, names, strict=True):
            admitted = self.result.series.get(f"{name} admitted", [])
            rejected = self.result.series.get(f"{name} rejected", [])
            ax.bar(starts, admitted, width=widths, color="tab:green", align="edge")
            ax.bar(starts, rejected, bottom=admitted, width=widths, color="tab:red", align="edge")
            ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0].set_title(f"{self.title}: green admitted, red rejected", fontsize=9)
        axes[-1].set(xlabel="seconds", xlim=(0, max([self.duration, *ends])))
        return _png(fig)


class HitRateMonitor(LiveMonitor):
    """Cache hit rate live: the server's keyspace_hits/misses (every client) and, given a cache's `.stats`
    (anything with `hits` and `misses`), that cache's own; plus the p50 of `latencies_ms` a workload appends."""

    title = "cache hit rate"
    redraw_every = 1.0

    def __init__(self, r: redis.Redis, stats: object | None = None, latencies_ms: list[float] | None = None,
                 **kwargs: float) -> None:
        self.r, self.stats, self.latencies_ms = r, stats, latencies_ms
        self._last: tuple[float, int, int, int, int, int] | None = None
        super().__init__(self._hit_sample, **kwargs)

    def _hit_sample(self) -> Sample:
        info = self.r.info("stats")
        now = time.monotonic()
        hits, misses = int(info["keyspace_hits"]), int(info["keyspace_misses"])
        c_hits, c_misses = (self.stats.hits, self.stats.misses) if self.stats is not None else (0, 0)
        seen = len(self.latencies_ms) if self.latencies_ms is not None else 0
        last, self._last = self._last, (now, hits, misses, c_hits, c_misses, seen)
        if last is None:
            return {}
        dt = max(now - last[0], 1e-6)
        dh, dm, ch, cm = hits - last[1], misses - last[2], c_hits - last[3], c_misses - last[4]
        sample = {"server hits/s": dh / dt, "server misses/s": dm / dt,
                  "server hit rate %": 100 * dh / (dh + dm) if dh + dm else 0.0}
        if self.stats is not None:
            sample["cache hit rate %"] = 100 * ch / (ch + cm) if ch + cm else 0.0
        if self.latencies_ms is not None and seen > last[5]:
            recent = sorted(self.latencies_ms[last[5]:seen])
            sample["p50 latency ms"] = recent[len(recent) // 2]
        return sample

    def describe(self) -> str:
        s = self.result.series
        if not s.get("server hit rate %"):
            return "no samples yet"
        parts = [f"server hit rate {s['server hit rate %'][-1]:.0f}%", f"{s['server hits/s'][-1]:,.0f} hits/s",
                 f"{s['server misses/s'][-1]:,.0f} misses/s"]
        if s.get("cache hit rate %"):
            parts.append(f"cache hit rate {s['cache hit rate %'][-1]:.0f}%")
        if s.get("p50 latency ms"):
            parts.append(f"p50 {s['p50 latency ms'][-1]:.2f} ms")
        return ", ".join(parts)

    def render(self) -> bytes:
        fig = Figure(figsize=(9, 2.8), dpi=90)
        rate_ax, flow_ax = fig.subplots(1, 2)
        times = self.result.times[len(self.result.times) - len(self.result.series.get("server hit rate %", [])):]
        for name in ("server hit rate %", "cache hit rate %"):
            if self.result.series.get(name):
                rate_ax.plot(times, self.result.series[name], label=name)
        rate_ax.set(title="hit rate (%)", ylim=(0, 100), xlim=(0, self.duration), xlabel="seconds")
        for name in ("server hits/s", "server misses/s"):
            if self.result.series.get(name):
                flow_ax.plot(times, self.result.series[name], label=name)
        flow_ax.set(title="per second", xlim=(0, self.duration), xlabel="seconds")
        for ax in (rate_ax, flow_ax):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7, loc="lower right")
        return _png(fig)


class PubSubMonitor(LiveMonitor):
    """Messages per second published (the server's PUBLISH calls) and received (a counter a subscriber keeps),
    with the channel's subscriber count (PUBSUB NUMSUB) and any other gauges, e.g. users online."""

    title = "pub/sub"

    def __init__(self, r: redis.Redis, channel: str, received: Callable[[], int] | None = None,
                 gauges: dict[str, Callable[[], float]] | None = None, **kwargs: float) -> None:
        self.r, self.channel, self.received, self.gauges = r, channel, received, gauges or {}
        self._last: tuple[float, int, int] | None = None
        super().__init__(self._pubsub_sample, **kwargs)

    def _publishes(self) -> int:
        return int(self.r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0))

    def _pubsub_sample(self) -> Sample:
        now, published = time.monotonic(), self._publishes()
        received = self.received() if self.received else 0
        last, self._last = self._last, (now, published, received)
        sample = {"subscribers": float(self.r.pubsub_numsub(self.channel)[0][1])}
        sample |= {name: float(gauge()) for name, gauge in self.gauges.items()}
        if last is not None:
            dt = max(now - last[0], 1e-6)
            sample["published/s"] = (published - last[1]) / dt
            if self.received:
                sample["received/s"] = (received - last[2]) / dt
        return sample

    def describe(self) -> str:
        s = self.result.series
        if not s.get("published/s"):
            return "no samples yet"
        parts = [f"{s['published/s'][-1]:,.0f} published/s"]
        if s.get("received/s"):
            parts.append(f"{s['received/s'][-1]:,.0f} received/s")
        parts += [f"{name} {values[-1]:,.0f}" for name, values in s.items() if not name.endswith("/s") and values]
        return ", ".join(parts)

    def render(self) -> bytes:
        return _two_panels(self, ("messages per second", "subscribers and gauges"), lambda n: not n.endswith("/s"))


class LagMonitor(LiveMonitor):
    """A consumer group's lag (entries not yet delivered) and pending entries (delivered, not acknowledged),
    in total and per consumer, from XINFO GROUPS and XINFO CONSUMERS.

    Where the server reports the lag as nil (a hole a delete left in the stream at or past the group's
    position: it cannot count past it), the sample is NaN: a gap in the line and "lag unknown" in the label,
    never 0. A missing stream or group is a ConfigError when the monitor is made (and if it goes during
    the run), not an empty chart."""

    title = "consumer group lag"

    def __init__(self, r: redis.Redis, stream: str, group: str, **kwargs: float) -> None:
        self.r, self.stream, self.group = r, validate.name(stream, "stream"), validate.name(group, "group")
        self._group_info()
        super().__init__(self._lag_sample, **kwargs)

    def _group_info(self) -> dict:
        return group_info(self.r, self.stream, self.group)

    def _lag_sample(self) -> Sample:
        info = self._group_info()
        lag = info.get("lag")
        sample = {"lag": math.nan if lag is None else float(lag), "pending": float(info["pending"])}
        for consumer in self.r.xinfo_consumers(self.stream, self.group):
            sample[f"pending {text(consumer['name'])}"] = float(consumer["pending"])
        return sample

    def describe(self) -> str:
        s = self.result.series
        if not s.get("lag"):
            return "no samples yet"
        consumers = sum(1 for name in s if name.startswith("pending ") and s[name])
        now = ("lag unknown (a delete left a hole where the group has not read)" if math.isnan(s["lag"][-1])
               else f"lag {s['lag'][-1]:,.0f}")
        peak = self.result.peak("lag")
        peak_text = "peak unknown" if math.isnan(peak) else f"peak {peak:,.0f}"
        return f"{now} ({peak_text}), pending {s['pending'][-1]:,.0f}, {consumers} consumer(s)"

    def render(self) -> bytes:
        return _two_panels(self, (f"group {self.group}: entries", "pending per consumer"),
                           lambda n: n.startswith("pending "), label=lambda n: n.removeprefix("pending "))


class EvictionMonitor(LiveMonitor):
    """Several servers at their memory limit side by side: each one's hit rate over the last interval
    (keyspace_hits and keyspace_misses), keys evicted per second, and used memory as a share of maxmemory."""

    title = "eviction"
    redraw_every = 1.0

    def __init__(self, clients: dict[str, redis.Redis], **kwargs: float) -> None:
        self.clients = clients
        self._last: dict[str, tuple[float, int, int, int]] = {}
        super().__init__(self._eviction_sample, **kwargs)

    def _eviction_sample(self) -> Sample:
        sample = {}
        for name, r in self.clients.items():
            info = r.info()
            now, hits, misses = time.monotonic(), int(info["keyspace_hits"]), int(info["keyspace_misses"])
            evicted, limit = int(info["evicted_keys"]), int(info["maxmemory"])
            last, self._last[name] = self._last.get(name), (now, hits, misses, evicted)
            sample[f"{name} memory %"] = 100 * int(info["used_memory"]) / limit if limit else 0.0
            if last is not None:
                looked_up = hits - last[1] + misses - last[2]
                sample[f"{name} hit rate %"] = 100 * (hits - last[1]) / looked_up if looked_up else math.nan
                sample[f"{name} evicted/s"] = (evicted - last[3]) / max(now - last[0], 1e-6)
        return sample

    def _latest(self, name: str, series: str) -> float | None:
        """The last value of the series; for the hit rate, the last interval that had reads (the final sample,
        taken once the workload has ended, often has none)."""
        values = self.result.series.get(f"{name} {series}") or []
        if series == "hit rate %":
            values = [v for v in values if not math.isnan(v)]
        return values[-1] if values else None

    def describe(self) -> str:
        parts = []
        for name in self.clients:
            rate, evicted = self._latest(name, "hit rate %"), self._latest(name, "evicted/s")
            memory = self._latest(name, "memory %")
            if memory is None:
                continue
            rate_text = "no reads" if rate is None or math.isnan(rate) else f"hit rate {rate:.0f}%"
            parts.append(f"{name}: {rate_text}, {evicted or 0:,.0f} evicted/s, memory {memory:.0f}% of maxmemory")
        return "; ".join(parts) or "no samples yet"

    def render(self) -> bytes:
        fig = Figure(figsize=(10, 2.8), dpi=90)
        axes = fig.subplots(1, 3)
        titles = {"hit rate %": "hit rate (%)", "evicted/s": "keys evicted per second",
                  "memory %": "used memory (% of maxmemory)"}
        for ax, (series, title) in zip(axes, titles.items(), strict=True):
            for name in self.clients:
                values = self.result.series.get(f"{name} {series}", [])
                times = self.result.times[len(self.result.times) - len(values):]
                ax.plot(times, values, label=name)
            ax.set(title=title, xlabel="seconds", xlim=(0, max([*self.result.times[-1:], self.interval])))
            ax.grid(alpha=0.3)
        axes[0].set_ylim(0, 100)
        axes[1].set_ylim(bottom=0)
        axes[2].set_ylim(0, 110)
        if any(ax.lines for ax in axes):
            axes[0].legend(fontsize=7, loc="lower right")
        return _png(fig)


class ServerMonitor(LiveMonitor):
    """One server at a glance, from INFO and the slow log: commands per second, used memory, connected and
    blocked clients, the hit rate of reads, keys evicted per second, and commands slower than
    `slowlog-log-slower-than` since the monitor started."""

    title = "server dashboard"
    redraw_every = 2.0  # six panels take a while to draw: sample more often than that
    PANELS = (("ops/s", "commands per second"), ("memory MB", "used memory (MB)"),
              ("clients", "connected clients"), ("hit rate %", "hit rate of reads (%)"),
              ("evicted/s", "keys evicted per second"), ("slow commands", "slow commands since start"))
    SLOW_LOG_READ = 128  # slow-log entries read per sample (the default slowlog-max-len): the most it counts

    def __init__(self, r: redis.Redis, **kwargs: float) -> None:
        self.r = r
        self._last: tuple[float, int, int, int, int] | None = None
        self._slow_before: int | None = None  # the newest slow-log id when the monitor started (-1: log empty)
        super().__init__(self._server_sample, **kwargs)
        self._drawn_at = time.monotonic()  # the first figure once there is something to draw, not at the start

    def _slow_ids(self) -> list[int]:
        """The ids in the slow log, newest first (ids keep counting across SLOWLOG RESET: count entries, not
        the difference of two ids)."""
        return [int(row[0]) for row in self.r.execute_command("SLOWLOG", "GET", self.SLOW_LOG_READ)]

    def _server_sample(self) -> Sample:
        info, slow_ids, now = self.r.info(), self._slow_ids(), time.monotonic()
        ops, evicted = int(info["total_commands_processed"]), int(info["evicted_keys"])
        hits, misses = int(info["keyspace_hits"]), int(info["keyspace_misses"])
        if self._slow_before is None:
            self._slow_before = max(slow_ids, default=-1)
        slow = sum(1 for ident in slow_ids if ident > self._slow_before)
        sample = {"memory MB": int(info["used_memory"]) / 1e6, "clients": float(info["connected_clients"]),
                  "blocked": float(info["blocked_clients"]), "slow commands": float(slow)}
        last, self._last = self._last, (now, ops, hits, misses, evicted)
        if last is not None:
            dt = max(now - last[0], 1e-6)
            reads = hits - last[2] + misses - last[3]
            sample |= {"ops/s": (ops - last[1]) / dt, "evicted/s": (evicted - last[4]) / dt,
                       "hit rate %": 100 * (hits - last[2]) / reads if reads else math.nan}
        return sample

    def _latest(self, name: str) -> float | None:
        values = [v for v in self.result.series.get(name, []) if v == v]  # NaN: an interval without reads
        return values[-1] if values else None

    def describe(self) -> str:
        if self._latest("ops/s") is None:
            return "no samples yet"
        rate = self._latest("hit rate %")
        parts = [f"{self._latest('ops/s'):,.0f} ops/s", f"{self._latest('memory MB'):.1f} MB",
                 f"{self._latest('clients'):.0f} clients ({self._latest('blocked'):.0f} blocked)",
                 "no reads" if rate is None else f"hit rate {rate:.0f}%",
                 f"{self._latest('evicted/s'):,.0f} evicted/s", _count(self._latest("slow commands"), "slow command")]
        return ", ".join(parts)

    def render(self) -> bytes:
        fig = Figure(figsize=(10, 4.6), dpi=90)
        axes = fig.subplots(2, 3).ravel()
        times = self.result.times
        for ax, (name, title) in zip(axes, self.PANELS, strict=True):
            values = self.result.series.get(name, [])
            ax.plot(times[len(times) - len(values):], values, color="tab:blue")
            if name == "clients" and self.result.series.get("blocked"):
                blocked = self.result.series["blocked"]
                ax.plot(times[len(times) - len(blocked):], blocked, color="tab:orange", label="blocked")
                ax.legend(fontsize=7, loc="upper left")
            ax.set_title(title, fontsize=9)
            ax.set(xlim=(0, max([*times[-1:], self.interval])))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        axes[3].set_ylim(0, 105)
        for ax in axes[3:]:
            ax.set_xlabel("seconds", fontsize=8)
        return _png(fig)


class FailoverTimeline(LiveMonitor):
    """Writes and errors per second of one or more writers while a failover happens, from counters the writers
    keep (`counts[name]["ok"]` and `counts[name]["errors"]`), with the moments the workload appends to
    `events` as `(time.monotonic(), label)` ("primary killed", "new primary") drawn as vertical lines."""

    title = "writes and errors per second"
    redraw_every = 1.0

    def __init__(self, counts: dict[str, dict[str, int]], events: list[tuple[float, str]] | None = None,
                 **kwargs: float) -> None:
        if not isinstance(counts, dict) or not counts or not all(isinstance(c, dict) for c in counts.values()):
            raise ConfigError(f"counts maps each writer's name to its counters {{'ok': 0, 'errors': 0}}, "
                             f"got {counts!r}.")
        self.counts = counts
        self.events = events if events is not None else []
        self._seen = {name: (0, 0) for name in counts}
        self._last_at: float | None = None
        super().__init__(self._rates, **kwargs)

    def _rates(self) -> Sample:
        now = time.monotonic()
        last, self._last_at = self._last_at, now
        sample = {}
        for name, counters in self.counts.items():
            ok, errors = counters.get("ok", 0), counters.get("errors", 0)
            (ok_before, errors_before), self._seen[name] = self._seen[name], (ok, errors)
            if last is not None:
                dt = max(now - last, 1e-6)
                sample[f"{name} writes/s"] = (ok - ok_before) / dt
                sample[f"{name} errors/s"] = (errors - errors_before) / dt
        return sample

    def seconds_with_errors(self, name: str) -> float:
        """How long, to the sampling interval, `name` saw errors (the sum of the intervals with any)."""
        times = self.result.times
        errors = self.result.series.get(f"{name} errors/s", [])
        first = len(times) - len(errors)  # each rate covers the interval since the sample before it
        return sum(times[i] - (times[i - 1] if i else 0.0)
                   for i, rate in enumerate(errors, start=first) if rate > 0)

    def marks(self) -> list[tuple[float, str]]:
        """The events, in seconds since the run began."""
        origin = self.started if self.started is not None else 0.0
        return [(at - origin, label) for at, label in list(self.events)]

    def describe(self) -> str:
        parts = [f"{name}: {c.get('ok', 0):,} writes, {c.get('errors', 0):,} errors" for name, c in self.counts.items()]
        return "; ".join(parts)

    def render(self) -> bytes:
        fig = Figure(figsize=(10, 3.0), dpi=90)
        axes = fig.subplots(1, 2, sharex=True)
        times = self.result.times
        for ax, kind in zip(axes, ("writes/s", "errors/s"), strict=True):
            for name in self.counts:
                values = self.result.series.get(f"{name} {kind}", [])
                # each rate covers the interval since the sample before it: a step, so a gap in sampling
                # shows as a flat stretch at the interval's average, not as a slope
                ax.plot(times[len(times) - len(values):], values, label=name, drawstyle="steps-pre", marker=".",
                        markersize=2)
            for at, label in self.marks():
                ax.axvline(at, color="gray", linestyle="--", linewidth=1)
                ax.annotate(label, (at, 1), xycoords=("data", "axes fraction"), rotation=90, va="top", ha="right",
                            fontsize=7, color="dimgray")
            ax.set(title=kind, xlabel="seconds", xlim=(0, max([*times[-1:], self.interval])))
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        if any(ax.lines for ax in axes):
            axes[0].legend(fontsize=7, loc="lower left")
        return _png(fig)


class ProgressBoard:
    """The instructor's live board of a workshop: every learner's exercise checks (`labkit.workshop.Progress`),
    redrawn as each result arrives. `start()` shows it and keeps it live from a background thread (the
    kernel stays free); `stop()` ends it and prints the final table.

    Example:
        >>> board = ProgressBoard(r).start()
        >>> board.wait_for(lambda progress: progress.passed("ada"), timeout=60)
        >>> board.stop()
    """

    title = "workshop progress"

    def __init__(self, r: redis.Redis, *, interval: float = 0.5) -> None:
        from labkit.clients import derive
        from labkit.workshop import Progress

        validate.seconds(interval, "interval (seconds between redraws)")
        self._client = derive(r, client_name="labkit-progress-board", retries=0)
        self.progress = Progress(self._client)
        self.interval = interval
        self.label = w.HTML(f"<b>{self.title}</b>: starting…")
        self.board = w.HTML()
        self.view = w.VBox([self.label, self.board])
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._errors: list[BaseException] = []
        self._thread: threading.Thread | None = None

    def start(self) -> ProgressBoard:
        display(self.view)
        self._thread = threading.Thread(target=self._follow, name="labkit-progress-board", daemon=True)
        self._thread.start()
        return self

    def _follow(self) -> None:
        try:
            while True:
                with self._changed:  # a short read (no BLOCK): the lock is never held while waiting
                    self.progress.update()
                    self._redraw()
                    self._changed.notify_all()
                if self._stop.wait(self.interval):
                    return
        except BaseException as err:  # reported by wait_for() and stop(), in the cell that calls them
            self._errors.append(err)
            with self._changed:
                self._changed.notify_all()

    def _redraw(self) -> None:
        seen = len(self.progress.attempts)
        latest = f"; latest: {self.progress.attempts[-1]}" if seen else ""
        self.label.value = f"<b>{self.title}</b>: {len(self.progress.learners)} learner(s), {seen} result(s){latest}"
        self.board.value = self.progress.html()

    def wait_for(self, condition: Callable[[object], bool], timeout: float) -> bool:
        """Wait until `condition(progress)` holds (re-asked at each update) or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._errors and not condition(self.progress):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        if self._errors:
            raise self._errors[0]
        return True

    def stop(self):
        """Stop following; print the final table and return the `Progress`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._errors:
            self._client.close()
            raise self._errors[0]
        self.progress.update()
        self._redraw()
        self._client.close()
        self.label.value = f"<b>{self.title}</b> (stopped): {len(self.progress.attempts)} result(s)"
        print(self.progress.table())
        return self.progress
