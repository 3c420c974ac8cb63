"""Lesson 10, persistence and durability (`notebooks/10_persistence.ipynb`): experiments on servers it spawns,
each with its own data directory (snapshots and forks, crashes and restarts, fsync policies measured side by
side, WAITAOF), the pictures, and the exercise checks."""

from __future__ import annotations

import atexit
import os
import random
import re
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import redis
from matplotlib.patches import FancyBboxPatch
from redis.backoff import NoBackoff
from redis.retry import Retry

from labkit import ops
from labkit.errors import ConfigError
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.ops import FSYNC_POLICIES
from labkit.server import Server, capabilities, replicated, spawn
from labkit.server.process import OWNER_MARKER, temp_root
from labkit.server.process import pid_alive as _alive
from labkit.server.topology import Replicated, wait_until
from labkit.sessions import SessionStore

REAL_DEFAULT_SAVE = "3600 1 300 100 60 10000"  # built into Redis and Valkey; in the shipped redis.conf since 6.2
COPIED_SAVE = "900 1 300 10 60 10000"  # redis.conf before 6.2, still in many tutorials and copied configs
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
CHECKOUT_BUILD = Path(__file__).resolve().parents[2] / "build"


# -- where the data lives ------------------------------------------------------------------------------
def filesystem_type(path: Path | str) -> str | None:
    """The type of the file system holding `path` ("ext4", "tmpfs"...), from /proc/self/mounts (Linux);
    None where that cannot be read."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best = str(Path(path).resolve()), ("", None)
    for line in mounts:
        fields = line.split()
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[2])
    return best[1]


def data_root() -> Path:
    """A fresh directory for this lesson's servers, on a file system that really fsyncs: labkit's temp root,
    unless that lives in memory (tmpfs), then the checkout's `build/`. `remove_data_root` deletes it, and so
    does the process's exit; a run whose kernel was killed leaves one behind, removed by the next call."""
    base = temp_root()
    if filesystem_type(base) in MEMORY_FILESYSTEMS:
        base = CHECKOUT_BUILD
    base.mkdir(parents=True, exist_ok=True)
    for stale in base.glob("l10-*-*"):
        owner = stale.name.split("-")[1]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"l10-{os.getpid()}-", dir=base))
    atexit.register(shutil.rmtree, root, True)
    return root


def remove_data_root(root: Path) -> int:
    """Delete the lesson's data directory; return how many server directories were still in it (each
    experiment removes its own, so 0 unless one was interrupted)."""
    leftovers = [p for p in root.iterdir() if p.name.startswith("labkit-")] if root.exists() else []
    shutil.rmtree(root, ignore_errors=True)
    return len(leftovers)


@dataclass(frozen=True)
class FsyncCost:
    """Median microseconds to append 100 bytes to a file, without and with an fsync after each write."""

    write_us: float
    fsync_us: float


def fsync_cost(directory: Path, writes: int = 40) -> FsyncCost:
    """Time appends to a scratch file in `directory`, each followed by fsync or not, in turns."""
    samples: dict[bool, list[float]] = {False: [], True: []}
    fd, name = tempfile.mkstemp(dir=directory)
    try:
        for _ in range(writes):
            for sync in (False, True):
                started = time.perf_counter()
                os.write(fd, b"x" * 100)
                if sync:
                    os.fsync(fd)
                samples[sync].append((time.perf_counter() - started) * 1e6)
    finally:
        os.close(fd)
        os.unlink(name)
    return FsyncCost(statistics.median(samples[False]), statistics.median(samples[True]))


def dirty_expire_s() -> float | None:
    """After how many seconds the kernel writes out file data it holds in memory (`vm.dirty_expire_centisecs`,
    30 s by default on Linux), or None where /proc cannot tell."""
    try:
        return int(Path("/proc/sys/vm/dirty_expire_centisecs").read_text()) / 100
    except (OSError, ValueError):
        return None


def overcommit_memory() -> str | None:
    """`vm.overcommit_memory` of this machine's kernel ("0" heuristic, "1" always, "2" never overcommit), or
    None where /proc cannot tell (not Linux)."""
    try:
        return Path("/proc/sys/vm/overcommit_memory").read_text().strip()
    except OSError:
        return None


def _box(ax: Any, x: float, y: float, w: float, h: float, label: str, color: str) -> None:
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.04", fc=color, ec=color, alpha=0.25))
    ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=9)


def _arrow(ax: Any, start: tuple[float, float], end: tuple[float, float], label: str = "") -> None:
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "->", "color": "black"})
    if label:
        ax.text((start[0] + end[0]) / 2, max(start[1], end[1]) + 0.12, label, ha="center", fontsize=8)


def plot_write_path(policies: bool = False) -> None:
    """A write's path from the client to the disk, and what a dead process or a dead machine takes with it;
    with `policies`, when each `appendfsync` setting calls fsync()."""
    _, ax = plt.subplots(figsize=(9, 3.1 if policies else 2.4))
    stops = [("client", "tab:gray"), ("server process\n(AOF buffer)", "tab:blue"),
             ("kernel memory\n(page cache)", "tab:purple"), ("disk", "tab:green")]
    for i, (label, color) in enumerate(stops):
        _box(ax, 2.4 * i, 1.0, 1.8, 0.8, label, color)
    for i, label in enumerate(["SET", "write()", "fsync()"]):
        _arrow(ax, (2.4 * i + 1.85, 1.4), (2.4 * i + 2.35, 1.4), label)
    losses = [(2.4, 4.2, 0.7, "lost when the process dies (SIGKILL, the OOM killer, a crash)"),
              (2.4, 6.6, 0.25, "lost when the machine dies (a power cut, a kernel panic, a failing VM host)")]
    for left, right, y, text in losses:
        ax.plot([left, left, right, right], [y + 0.12, y, y, y + 0.12], color="tab:red")
        ax.text(left + 0.05, y - 0.2, text, fontsize=8, color="tab:red")
    if policies:
        for j, text in enumerate(["appendfsync always: before each reply",
                                  "appendfsync everysec: a background thread, about once a second",
                                  "appendfsync no: when the kernel decides (about 30 s on Linux)"]):
            ax.text(4.8, 2.75 - 0.25 * j, text, fontsize=8, color="tab:green")
    ax.set(xlim=(-0.1, 9.3), ylim=(-0.15, 3.0 if policies else 2.1),
           title="a write's path to the disk, and what each failure takes with it")
    ax.axis("off")
    plt.show()


def plot_fork_pages() -> None:
    """fork() and copy-on-write: parent and child share the dataset's memory pages until the parent writes
    to one, which the kernel then copies for it."""
    _, axes = plt.subplots(1, 2, figsize=(9, 2.6))
    titles = ["right after fork(): both see the same pages", "the parent overwrites a key on page 3"]
    for ax, written, title in zip(axes, (False, True), titles, strict=True):
        _box(ax, 0.6, 2.3, 3.4, 0.5, "parent: keeps serving clients", "tab:blue")
        _box(ax, 0.6, -0.3, 3.4, 0.5, "child: writes the snapshot", "tab:orange")
        for i in range(5):
            _box(ax, 0.9 * i, 1.0, 0.7, 0.6, f"page {i + 1}\n4 KB", "tab:gray")
            child_end, parent_end = (0.9 * i + 0.35, 0.95), (0.9 * i + 0.35, 1.65)
            if written and i == 2:
                _box(ax, 4.6, 1.0, 0.9, 0.6, "copy of\npage 3", "tab:red")
                parent_end = (5.05, 1.65)
            ax.plot([2.3, parent_end[0]], [2.25, parent_end[1]], color="tab:blue", lw=0.8)
            ax.plot([2.3, child_end[0]], [0.25, child_end[1]], color="tab:orange", lw=0.8)
        ax.set(xlim=(-0.2, 5.7), ylim=(-0.4, 2.9), title=title)
        ax.title.set_fontsize(9)
        ax.axis("off")
    plt.suptitle("copy-on-write: a snapshot costs memory only for the pages written while it runs", fontsize=10)
    plt.tight_layout()
    plt.show()


def _server(root: Path, **config: Any) -> Server:
    return spawn(modules=False, root=root, **config)


def _in_parallel(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run independent experiments that mostly wait (on restarts, on replication) at the same time."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def _wait_for_bgsave(r: redis.Redis, timeout: float = 60) -> None:
    wait_until(lambda: not r.info("persistence")["rdb_bgsave_in_progress"], timeout, "the snapshot to finish")


def wait_for_auto_rewrite(r: redis.Redis, rewrites_before: int, timeout: float = 10) -> dict[str, Any]:
    """Wait until the server has started an AOF rewrite of its own (`aof_rewrites` above `rewrites_before`,
    read from INFO persistence) and finished it; return INFO persistence then."""
    wait_until(lambda: r.info("persistence")["aof_rewrites"] > rewrites_before, timeout,
               "the server to start a rewrite by itself")
    ops.wait_for_aof_rewrite(r)
    return r.info("persistence")


def wait_until_written(r: redis.Redis, timeout: float = 10) -> None:
    """Wait until the server holds no AOF bytes in its own memory (`aof_buffer_length` 0): under everysec it
    postpones its write() while a background fsync is still running."""
    wait_until(lambda: not r.info("persistence")["aof_buffer_length"], timeout, "the AOF buffer to be written")


# -- RDB: fork and copy-on-write -------------------------------------------------------------------------
@dataclass(frozen=True)
class ForkSample:
    """One dataset size and the shortest time the server spent in fork() for a BGSAVE of it."""

    megabytes: int
    keys: int
    used_memory: int
    fork_usec: int


def _fork_once(r: redis.Redis, cancel: bool) -> int:
    """One BGSAVE's fork time (µs); with `cancel`, the snapshot is stopped right after the fork (a snapshot
    slowed to a crawl, then BGSAVE CANCEL), else it runs to the end."""
    r.bgsave()
    fork_usec = r.info("stats")["latest_fork_usec"]
    if cancel:
        r.execute_command("BGSAVE", "CANCEL")
    _wait_for_bgsave(r)
    return fork_usec


def fork_times(root: Path, megabytes: Iterable[int] = (32, 64, 128, 256), repeats: int = 5) -> list[ForkSample]:
    """Grow one server through datasets of about `megabytes` MB (DEBUG POPULATE, 1 KB values) and fork for a
    BGSAVE `repeats` times at each size, keeping the shortest fork: a busy machine can only add time."""
    samples = []
    with _server(root, enable_debug_command="local", hz=100) as srv:  # hz 100: a stopped child is reaped in 10 ms
        r = srv.client()
        cancel = capabilities(r).bgsave_cancel
        if cancel:
            r.config_set("rdb-key-save-delay", 1_000_000)  # a second per key: the child is cancelled long before
        for mb in megabytes:
            keys = mb * 2**20 // 1024
            r.execute_command("DEBUG", "POPULATE", keys, "key", 1024)
            forks = [_fork_once(r, cancel) for _ in range(repeats)]
            samples.append(ForkSample(mb, keys, r.info("memory")["used_memory"], min(forks)))
    return samples


def fork_ms_per_gb(samples: list[ForkSample]) -> float:
    """The slope of fork time against the memory the server uses, least squares, in ms per GB."""
    slope, _ = np.polyfit([s.used_memory / 1e9 for s in samples], [s.fork_usec / 1000 for s in samples], 1)
    return float(slope)


def plot_fork_times(samples: list[ForkSample]) -> None:
    slope = fork_ms_per_gb(samples)
    gb = np.array([s.used_memory / 1e9 for s in samples])
    fork_ms = np.array([s.fork_usec / 1000 for s in samples])
    intercept = float(np.mean(fork_ms - slope * gb))
    _, ax = plt.subplots(figsize=(7, 2.8))
    ax.plot(gb * 1000, fork_ms, "o", color="tab:blue", label="shortest of the forks at each size")
    line = np.linspace(0, gb.max() * 1.05, 20)
    ax.plot(line * 1000, intercept + slope * line, "--", color="gray", label=f"fit: {slope:.0f} ms per GB")
    ax.set(xlabel="memory used (MB)", ylabel="fork() (ms)", title="BGSAVE: time the server is frozen in fork()",
           xlim=(0, None), ylim=(0, max(fork_ms.max(), float(intercept + slope * line[-1])) * 1.15))
    ax.legend(fontsize=8)
    plt.show()


@dataclass(frozen=True)
class CopyOnWrite:
    """Bytes the snapshot child had to copy because the parent wrote while it ran, by fraction of keys."""

    dataset_bytes: int
    copied: dict[float, int]


def copy_on_write(root: Path, fractions: Iterable[float] = (0.0, 0.01, 0.1), keys: int = 50_000,
                  snapshot_s: float = 0.4, seed: int = 10) -> CopyOnWrite:
    """For each fraction: start a snapshot slowed to about `snapshot_s` seconds (`rdb-key-save-delay`),
    overwrite that fraction of the keys, chosen at random, while it runs, and read `rdb_last_cow_size`."""
    rng = random.Random(seed)
    copied = {}
    with _server(root, enable_debug_command="local", hz=100) as srv:
        r = srv.client()
        r.execute_command("DEBUG", "POPULATE", keys, "key", 100)
        dataset = r.info("memory")["used_memory"]
        # a negative delay -N: after each key, sleep 1 µs (about 60 µs with the system call) with probability 1/N
        one_in = max(1, round(keys * 60e-6 / snapshot_s))
        r.config_set("rdb-key-save-delay", -one_in)
        for fraction in fractions:
            r.bgsave()
            pipe = r.pipeline(transaction=False)
            for k in rng.sample(range(keys), int(fraction * keys)):
                pipe.set(f"key:{k}", "y" * 100)
            pipe.execute()
            still_running = r.info("persistence")["rdb_bgsave_in_progress"]
            _wait_for_bgsave(r)
            if not still_running:
                raise RuntimeError("the snapshot ended before the writes did: raise snapshot_s")
            copied[fraction] = r.info("persistence")["rdb_last_cow_size"]
    return CopyOnWrite(dataset, copied)


def plot_copy_on_write(cow: CopyOnWrite) -> None:
    labels = [f"{f:.0%} of keys" for f in cow.copied]
    _, ax = plt.subplots(figsize=(7, 2.4))
    ax.barh(labels, [b / 1e6 for b in cow.copied.values()], color="tab:orange")
    ax.axvline(cow.dataset_bytes / 1e6, color="gray", linestyle="--", label="the whole dataset")
    ax.set(xlabel="MB copied during one snapshot", title="copy-on-write: keys overwritten at random while BGSAVE runs",
           xlim=(0, cow.dataset_bytes / 1e6 * 1.35))
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper right")
    plt.show()


# -- what a crash or a restart loses ----------------------------------------------------------------------
@dataclass(frozen=True)
class Loss:
    """Acknowledged writes before the stop, how many the restarted server still had, and how many bytes of
    AOF the server was still holding in its own memory (`aof_buffer_length`) just before the stop."""

    written: int
    recovered: int
    unwritten_bytes: int = 0

    @property
    def lost(self) -> int:
        return self.written - self.recovered


def _write_keys(r: redis.Redis, first: int, last: int) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(first, last):
        pipe.set(f"order:{i}", "paid")
    pipe.execute()


def loaded(srv: Server, timeout: float = 60) -> redis.Redis:
    """A client of `srv` once it has finished loading its data. While a restarted server loads, it answers
    INFO (with `loading:1`) and CONFIG, and LOADING to nearly everything else, PING included."""
    client, deadline = srv.client(), time.monotonic() + timeout
    while client.info("persistence").get("loading", 0) and time.monotonic() < deadline:
        time.sleep(0.005)
    return client


def crash_loss(root: Path, *, stop: str, writes: int = 2000, save_after: int | None = 1000,
               **config: Any) -> Loss:
    """Write `writes` keys (a SAVE after `save_after` of them, if given), stop the server with SIGKILL
    (`stop="kill"`, a crash) or SIGTERM (`stop="term"`, a clean shutdown), start it again on the same
    directory and count what came back."""
    if stop not in ("kill", "term"):
        raise ValueError(f"stop is 'kill' or 'term', got {stop!r}")
    with _server(root, **config) as srv:
        r = srv.client()
        _write_keys(r, 0, save_after if save_after is not None else writes)
        if save_after is not None:
            r.save()
            _write_keys(r, save_after, writes)
        unwritten = r.info("persistence").get("aof_buffer_length", 0)
        if stop == "kill":
            srv.kill()
            srv.start()
        else:
            srv.restart()
        return Loss(writes, loaded(srv).dbsize(), unwritten)


def plot_losses(losses: dict[str, Loss], title: str) -> None:
    names = list(losses)
    _, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1))
    kept = [losses[n].recovered for n in names]
    ax.barh(names, kept, color="tab:green", label="came back")
    ax.barh(names, [losses[n].lost for n in names], left=kept, color="tab:red", label="lost")
    ax.set(xlabel="acknowledged writes", title=title)
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    plt.show()


def server_files(directory: Path) -> list[str]:
    """The files in a spawned server's directory, without the marker labkit writes there (who made it)."""
    return sorted(p.name for p in directory.iterdir() if p.name != OWNER_MARKER)


# -- the AOF ---------------------------------------------------------------------------------------------
def aof_files(directory: Path) -> list[tuple[str, int, str]]:
    """The files of a multi-part AOF directory: (name, bytes, what it holds)."""
    kinds = {".manifest": "manifest: the list of files, in order", ".rdb": "base, RDB format",
             ".aof": "commands (RESP)"}
    rows = []
    for path in sorted(directory.iterdir()):
        kind = kinds.get(path.suffix, "")
        if ".base." in path.name:
            kind = "base, RDB format" if _starts_like_rdb(path) else "base, commands (RESP)"
        elif ".incr." in path.name:
            kind = "incremental: commands since the base"
        rows.append((path.name, path.stat().st_size, kind))
    return rows


def aof_commands(path: Path) -> list[list[str]]:
    """The commands in an AOF file of commands (RESP arrays of bulk strings), decoded."""
    data, pos, commands = path.read_bytes(), 0, []
    while pos < len(data):
        end = data.index(b"\r\n", pos)
        count, pos, command = int(data[pos + 1:end]), end + 2, []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            size, pos = int(data[pos + 1:end]), end + 2
            command.append(data[pos:pos + size].decode(errors="replace"))
            pos += size + 2
        commands.append(command)
    return commands


def _starts_like_rdb(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(6) in (b"REDIS0", b"VALKEY")  # an RDB's magic; an AOF of commands starts with '*'


def _set_loop(r: redis.Redis, count: int) -> None:
    for i in range(count):
        r.set(f"bench:{i % 1000}", "v" * 100)


def _timed_round(conns: list[redis.Redis], count: int) -> float:
    """Seconds for every connection to send `count` SETs of 100 bytes, each from its own thread."""
    threads = [threading.Thread(target=_set_loop, args=(c, count)) for c in conns]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


@dataclass(frozen=True)
class Throughput:
    """SETs per second on each server (medians of rounds) with `clients` writing at once, and the median
    cost of one fsync on the same disk, timed in the same rounds."""

    clients: int
    rates: dict[str, float]
    fsync_us: float

    def extra_us_per_write(self, slower: str, faster: str) -> float:
        """How much longer one write took on `slower` than on `faster`, in µs."""
        return 1e6 / self.rates[slower] - 1e6 / self.rates[faster]


def fsync_throughput(root: Path, *, clients: int = 1, rounds: int = 5, batch: int = 200) -> Throughput:
    """100-byte SETs per second on four servers (AOF off, appendfsync no, everysec, always): the same workload
    timed in turns, `rounds` times, median of each; `clients` connections (threads) write at once."""
    configs = {"AOF off": {"appendonly": False}} | {
        f"appendfsync {p}": {"appendonly": True, "appendfsync": p} for p in reversed(FSYNC_POLICIES)}
    servers = {name: _server(root, **config) for name, config in configs.items()}
    try:
        conns = {name: [srv.client() for _ in range(clients)] for name, srv in servers.items()}
        rates: dict[str, list[float]] = {name: [] for name in servers}
        fsyncs = []
        for _ in range(rounds):
            for name, pool in conns.items():
                rates[name].append(batch // clients * clients / _timed_round(pool, batch // clients))
            fsyncs.append(fsync_cost(root, writes=5).fsync_us)
        return Throughput(clients, {name: statistics.median(v) for name, v in rates.items()}, statistics.median(fsyncs))
    finally:
        for srv in servers.values():
            srv.stop()


def plot_throughput(runs: list[Throughput]) -> None:
    _, axes = plt.subplots(1, len(runs), figsize=(9, 2.8), sharey=True)
    for ax, run in zip(np.atleast_1d(axes), runs, strict=True):
        colors = ["tab:gray", "tab:blue", "tab:green", "tab:red"]
        ax.bar([n.replace("appendfsync ", "") for n in run.rates], list(run.rates.values()), color=colors)
        ax.set(title=f"{run.clients} client{'s' if run.clients > 1 else ''}", xlabel="appendfsync")
    np.atleast_1d(axes)[0].set(ylabel="SETs per second")
    plt.suptitle("the same 100-byte SETs, timed in turns (medians)", fontsize=10)
    plt.tight_layout()
    plt.show()


@dataclass(frozen=True)
class WaitaofRun:
    """WAITAOF after each of several writes: the replies and how long each took (ms)."""

    policy: str
    replies: list[list[int]]
    waits_ms: list[float]
    delayed_fsync: int

    @property
    def seconds(self) -> float:
        return sum(self.waits_ms) / 1000


def aof_pair(root: Path | None = None) -> Replicated:
    """A started primary and replica, both with `appendfsync always`, returned once the replica confirms
    fsyncs: after its first full sync a replica rewrites its AOF, and until that is done WAITAOF cannot
    count it."""
    topo = replicated(replicas=1, root=root, appendonly=True, appendfsync="always")
    try:
        r = topo.primary.client(single_connection_client=True)  # WAITAOF counts its own connection's writes
        wait_until(lambda: (r.set("probe", 1), r.execute_command("WAITAOF", 1, 1, 100))[1] == [1, 1], 60,
                   "the replica's first AOF fsync")
        r.delete("probe")
        r.close()
    except BaseException:
        topo.stop()
        raise
    return topo


def waitaof_after_writes(root: Path, policy: str, writes: int = 10) -> WaitaofRun:
    """On a server with `appendfsync policy`: SET then `WAITAOF 1 0 3000`, `writes` times in a row."""
    with _server(root, appendonly=True, appendfsync=policy) as srv:
        r = srv.client(single_connection_client=True)  # WAITAOF counts the writes of its own connection
        replies, waits = [], []
        for i in range(writes):
            r.set("order:1", i)
            started = time.perf_counter()
            replies.append(r.execute_command("WAITAOF", 1, 0, 3000))
            waits.append((time.perf_counter() - started) * 1000)
        delayed = r.info("persistence")["aof_delayed_fsync"]
        r.close()
    return WaitaofRun(policy, replies, waits, delayed)


# -- restart time ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RestartSample:
    """A server coming back with `keys` keys from its files: seconds until it answered PING, the part of it
    the server itself reports as loading, the CPU seconds it had used by then (INFO cpu: starting and
    loading), and the LOADING replies PING got meanwhile."""

    fmt: str
    keys: int
    seconds: float
    load_seconds: float
    cpu_seconds: float
    file_bytes: int
    loading_replies: int


LOADING_STEP_BYTES = 2 * 2**20  # loading-process-events-interval-bytes for the restarts: Valkey's and Redis 7's
# default (Redis 8's is 512 KB), so every engine serves clients as often while it loads
RESTART_FORMATS = {
    "RDB": {"save": "3600 1"},
    "AOF, RDB base": {"appendonly": True},
    "AOF, commands": {"appendonly": True, "aof_use_rdb_preamble": False},
}
_LOADED = re.compile(r"DB loaded from (?:disk|append only file): ([0-9.]+) seconds")


def timed_start(srv: Server) -> tuple[float, float, float, int]:
    """Start a stopped server. Returns the seconds until PING succeeds, the loading time it logs, the CPU
    seconds the process had used by then (a busy machine delays that work but hardly adds to it), and the
    LOADING replies a client asking PING every 5 ms got meanwhile (connections are accepted before the data
    is back, and PING is refused until it is, as a health check would see)."""
    started = time.perf_counter()
    srv.start()
    client, loading = srv.client(retry=Retry(NoBackoff(), 0)), 0
    try:
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.BusyLoadingError:
                loading += 1
                time.sleep(0.005)
        seconds = time.perf_counter() - started
        cpu = client.info("cpu")
    finally:
        client.close()
    logged = _LOADED.findall(srv.log_path.read_text())
    return (seconds, float(logged[-1]) if logged else float("nan"), cpu["used_cpu_user"] + cpu["used_cpu_sys"],
            loading)


def fill_random(r: redis.Redis, keys: int, value_bytes: int = 100, *, start: int = 0, batch: int = 10_000) -> None:
    """Keys `order:start` to `order:{start + keys - 1}`, each holding `value_bytes` random hex digits: data that
    compression cannot shrink much, like most real values (DEBUG POPULATE's zero-padded values shrink to a
    fraction of their size in an RDB). MSETs of `batch` keys, written as RESP directly: redis-py's encoding
    of 20,000 arguments costs more than the server's work."""
    conn = r.connection_pool.get_connection()
    try:
        for first in range(start, start + keys, batch):
            last = min(start + keys, first + batch)
            values = os.urandom((last - first) * value_bytes // 2).hex().encode()
            args = b"".join(b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, value_bytes, values[j:j + value_bytes])
                            for j, key in ((n * value_bytes, b"order:%d" % i)
                                           for n, i in enumerate(range(first, last))))
            conn.send_packed_command([b"*%d\r\n$4\r\nMSET\r\n" % (1 + 2 * (last - first)) + args])
            reply = conn.read_response()
            if reply not in ("OK", b"OK"):
                raise RuntimeError(f"MSET answered {reply!r}")
    finally:
        r.connection_pool.release(conn)


def _copy_aof(source: Path, target: Path) -> None:
    """Copy an AOF directory's manifest and the files it lists as current (no history files)."""
    target.mkdir(parents=True)
    manifest = (source / "appendonly.aof.manifest").read_text()
    for line in manifest.splitlines():
        fields = line.split()
        if fields and fields[fields.index("type") + 1] != "h":
            shutil.copy(source / fields[fields.index("file") + 1], target)
    (target / "appendonly.aof.manifest").write_text(manifest)


def _data_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.suffix in (".rdb", ".aof"))


def restart_times(root: Path, sizes: Iterable[int] = (40_000, 160_000), repeats: int = 3) -> list[RestartSample]:
    """For each size, one server is filled with that many keys of random 100-byte values (growing through
    the sizes) and persisted three ways: a snapshot, an AOF with an RDB base, an AOF of commands. A server
    per format and size starts from a copy of those files; in `repeats` rounds every one in turn is started
    and timed, then killed (SIGKILL), keeping each one's least CPU (a busy machine can only add to it, and
    the rounds spread a busy moment over different servers)."""
    servers: dict[tuple[str, int], Server] = {}
    try:
        with _server(root) as source:
            r, filled = source.client(), 0
            for keys in sorted(sizes):
                fill_random(r, keys - filled, start=filled)
                filled = keys
                for fmt, config in RESTART_FORMATS.items():
                    base = {"hz": 100, "loading_process_events_interval_bytes": LOADING_STEP_BYTES}
                    srv = servers[fmt, keys] = Server(root=root, modules=False, config=base | config)
                    if fmt == "RDB":
                        r.save()
                        shutil.copy(source.dir / "dump.rdb", srv.dir)
                        continue
                    preamble = "no" if config.get("aof_use_rdb_preamble") is False else "yes"
                    r.config_set("aof-use-rdb-preamble", preamble)
                    if r.config_get("appendonly")["appendonly"] == "yes":
                        r.bgrewriteaof()
                    else:
                        r.config_set("appendonly", "yes")  # a rewrite of its own
                    ops.wait_for_aof_rewrite(r)
                    _copy_aof(source.dir / "appendonlydir", srv.dir / "appendonlydir")
                r.config_set("appendonly", "no")  # the next fill writes no AOF
        runs: dict[tuple[str, int], list[tuple[float, float, float, int]]] = {key: [] for key in servers}
        for round_ in range(repeats):
            for (fmt, keys), srv in servers.items():
                runs[fmt, keys].append(timed_start(srv))
                if round_ == repeats - 1 and srv.client().dbsize() != keys:
                    raise RuntimeError(f"{fmt}: {srv.client().dbsize()} keys came back, expected {keys}")
                srv.kill()
        samples = []
        for fmt in RESTART_FORMATS:
            for keys in sorted(sizes):
                seconds, load_seconds, cpu, loading = min(runs[fmt, keys], key=lambda run: run[2])
                samples.append(RestartSample(fmt, keys, seconds, load_seconds, cpu,
                                             _data_bytes(servers[fmt, keys].dir), loading))
        return samples
    finally:
        for srv in servers.values():
            srv.stop()


def plot_restart_times(samples: list[RestartSample]) -> None:
    _, axes = plt.subplots(1, 2, figsize=(9, 2.8))
    for fmt, color in zip(RESTART_FORMATS, ["tab:blue", "tab:green", "tab:orange"], strict=True):
        rows = [s for s in samples if s.fmt == fmt]
        keys = [s.keys / 1000 for s in rows]
        axes[0].plot(keys, [s.cpu_seconds for s in rows], "o-", color=color, label=fmt)
        axes[1].plot(keys, [s.file_bytes / 1e6 for s in rows], "o-", color=color, label=fmt)
    axes[0].set(xlabel="thousand keys", ylabel="CPU seconds", title="work to start and load (least of 2 starts)",
                ylim=(0, None))
    axes[1].set(xlabel="thousand keys", ylabel="MB on disk", title="size of the files it loads", ylim=(0, None))
    axes[0].legend(fontsize=8)
    plt.tight_layout()
    plt.show()


# -- configurations by use -------------------------------------------------------------------------------
PROFILES: dict[str, dict[str, Any]] = {
    "cache": {"save": "", "appendonly": False},
    "session store": {"save": "", "appendonly": True, "appendfsync": "everysec"},
    "queue on streams": {"save": "", "appendonly": True, "appendfsync": "always"},
}


PROFILE_WORKLOADS = {"cache": "AOF off", "session store": "appendfsync everysec",
                     "queue on streams": "appendfsync always"}  # the row of 10.4's throughput each one matches
POWER_CUT = {"cache": "loses everything", "session store": "loses about the last 2 s",
             "queue on streams": "loses nothing acknowledged"}  # from how fsync works (10.5), not measurable here


def conf_lines(directives: dict[str, Any]) -> list[str]:
    """Directives as redis.conf lines: {"save": "", "appendonly": False} -> ['save ""', 'appendonly no']."""
    def value(v: Any) -> str:
        return ("yes" if v else "no") if isinstance(v, bool) else (str(v) if v != "" else '""')
    return [f"{name.replace('_', '-')} {value(v)}" for name, v in directives.items()]


@dataclass(frozen=True)
class ProfileTest:
    """A configuration put through the loss test: what came back after a clean restart and after a crash."""

    after_restart: Loss
    after_crash: Loss


def loss_test(root: Path, config: dict[str, Any], writes: int = 1000) -> ProfileTest:
    """The lesson's loss test: `writes` acknowledged writes, then a clean restart (SIGTERM) on one server,
    a crash (SIGKILL) on another; `config` directives left out take the engine's defaults."""
    config = {"save": None} | config
    outcomes = _in_parallel({stop: lambda stop=stop: crash_loss(root, stop=stop, writes=writes, save_after=None,
                                                                **config) for stop in ("term", "kill")})
    return ProfileTest(outcomes["term"], outcomes["kill"])


def profile_tests(root: Path, profiles: dict[str, dict[str, Any]] = PROFILES) -> dict[str, ProfileTest]:
    """The loss test for each profile, all at once."""
    return _in_parallel({name: lambda c=config: loss_test(root, c) for name, config in profiles.items()})


def profiles_table(tested: dict[str, ProfileTest], throughput: Throughput) -> str:
    """A Markdown table of the profiles: their directives, what the loss test measured, what a power cut
    would lose, and one client's SETs per second on the matching server of 10.4."""
    rows = ["| use | directives | after a restart | after a crash | after a power cut | one client's SETs/s (10.4) |",
            "|---|---|---|---|---|---|"]
    for use, test in tested.items():
        directives = ", ".join(f"`{line}`" for line in conf_lines(PROFILES[use]))
        back = [f"{loss.recovered:,} of {loss.written:,} back" for loss in (test.after_restart, test.after_crash)]
        workload = PROFILE_WORKLOADS[use]
        rows.append(f"| {use} | {directives} | {back[0]} | {back[1]} | {POWER_CUT[use]} | "
                    f"{throughput.rates[workload]:,.0f} ({workload}) |")
    return "\n".join(rows)


# -- common mistakes -------------------------------------------------------------------------------------
def loss_window_s(save: str, writes_per_s: float) -> float:
    """How long writes can wait for the next snapshot with save points `save` at a steady rate: the first
    rule (T seconds, C changes) to fire does so after max(T, C / rate); inf when none ever fires."""
    words = [int(w) for w in save.split()]
    rules = list(zip(words[::2], words[1::2], strict=True))
    return min((max(t, c / writes_per_s) for t, c in rules), default=float("inf"))


def plot_loss_windows(rates_per_min: np.ndarray) -> None:
    _, ax = plt.subplots(figsize=(7, 3.2))
    for save, color, label in ((COPIED_SAVE, "tab:red", "the copied 900 1 / 300 10 / 60 10000"),
                               (REAL_DEFAULT_SAVE, "tab:blue", "the real default 3600 1 / 300 100 / 60 10000")):
        ax.plot(rates_per_min, [loss_window_s(save, w / 60) / 60 for w in rates_per_min], color=color, label=label)
    ax.set(xscale="log", xlabel="writes per minute", ylim=(0, 65),
           ylabel="minutes until the next snapshot\n(writes in this window are lost to a crash)",
           title="the longest wait for the next snapshot, at a steady write rate")
    ax.legend(fontsize=8)
    plt.show()


def snapshots_after(root: Path, rules: dict[str, str], writes: int, deadline_s: float = 4.0) -> dict[str, int]:
    """Servers with the given save `rules` each take `writes` writes; poll until the first snapshots
    (or `deadline_s`); return each server's count of snapshots."""
    servers = {name: _server(root, save=save) for name, save in rules.items()}
    try:
        for s in servers.values():
            _write_keys(s.client(), 0, writes)
        started = time.monotonic()
        while time.monotonic() - started < deadline_s:
            saves = {n: s.client().info("persistence")["rdb_saves"] for n, s in servers.items()}
            if any(saves.values()):
                time.sleep(0.3)  # one more cron tick or three for the others to have their chance
                return {n: s.client().info("persistence")["rdb_saves"] for n, s in servers.items()}
            time.sleep(0.05)
        return saves
    finally:
        for s in servers.values():
            s.stop()


def sessions_after_restart(root: Path, users: int = 300, **config: Any) -> int:
    """Log `users` users in (labkit's SessionStore), restart the server cleanly (SIGTERM, as for an upgrade),
    and count the users still logged in."""
    with _server(root, **config) as srv:
        store = SessionStore(srv.client(), ttl=1800, prefix="session")
        ids = [store.create(f"user{i}") for i in range(users)]
        srv.restart()
        store = SessionStore(loaded(srv), ttl=1800, prefix="session")
        return sum(store.get(sid) is not None for sid in ids)


@dataclass(frozen=True)
class ReplicaAfterRestart:
    """Keys on the replica before its primary crashed, after it resynced, the time that took, and the AOF
    bytes the primary still held in its own memory at the crash (`aof_buffer_length`, 10.5)."""

    before: int
    after: int
    seconds: float
    unwritten_bytes: int = 0


def replica_after_primary_restarts(root: Path, configs: dict[str, dict[str, Any]], keys: int = 1000
                                   ) -> dict[str, ReplicaAfterRestart]:
    """`replica_after_primary_restart` for each named configuration, all at once."""
    return _in_parallel({name: lambda c=config: replica_after_primary_restart(root, keys, **c)
                         for name, config in configs.items()})


def replica_after_primary_restart(root: Path, keys: int = 1000, **config: Any) -> ReplicaAfterRestart:
    """A primary and its replica hold `keys` keys; the primary crashes (SIGKILL) and is started again at
    once, as a supervisor would; wait until it has loaded whatever it had, and until the replica is linked
    and caught up again, and count the replica's keys."""
    with replicated(replicas=1, root=root, **config) as topo:
        primary, replica = topo.primary, topo.replicas[0]
        _write_keys(primary.client(), 0, keys)
        primary.client().wait(1, 5000)
        before = replica.client().dbsize()
        unwritten = primary.client().info("persistence").get("aof_buffer_length", 0)
        started = time.monotonic()
        primary.kill()
        primary.start()
        loaded(primary)

        def caught_up() -> bool:
            link = replica.client().info("replication")
            return (link["master_link_status"] == "up" and link["master_sync_in_progress"] == 0
                    and link["slave_repl_offset"] == primary.client().info("replication")["master_repl_offset"])

        wait_until(caught_up, 30, "the replica to resync with its restarted primary")
        return ReplicaAfterRestart(before, replica.client().dbsize(), time.monotonic() - started, unwritten)


def aof_switched_on_by_config_file(root: Path, keys: int = 1000) -> tuple[int, int, list[str]]:
    """An RDB server with `keys` keys; its config file is changed to `appendonly yes` and it is restarted.
    Returns keys before, keys after, and the files in its directory."""
    with _server(root, save=REAL_DEFAULT_SAVE) as srv:
        _write_keys(srv.client(), 0, keys)
        srv.config["appendonly"] = True
        srv.restart()
        return keys, loaded(srv).dbsize(), server_files(srv.dir)


def aof_switched_on_at_runtime(root: Path, *, keys: int = 1000, rewrite_config: bool) -> tuple[int, int]:
    """A server without persistence takes `keys` keys, gets `CONFIG SET appendonly yes` (and CONFIG REWRITE
    if `rewrite_config`) and more keys, then restarts from its config file. Returns keys before, after."""
    with _server(root) as srv:
        r = srv.client()
        _write_keys(r, 0, keys // 2)
        r.config_set("appendonly", "yes")
        ops.wait_for_aof_rewrite(r)
        if rewrite_config:
            r.config_rewrite()
        _write_keys(r, keys // 2, keys)
        srv.restart(keep_config=True)
        return keys, loaded(srv).dbsize()


@dataclass(frozen=True)
class FailedSnapshot:
    """A BGSAVE that could not write its file: the server's status, what a write got, the log line, the
    status `ops.persistence_status` read then, whether a SIGTERM then left the server running (its final
    snapshot fails too) and the line it logged, and the status and a write once the cause was removed."""

    status: str
    write_error: str | None
    log_line: str
    persistence: ops.PersistenceStatus
    running_after_sigterm: bool
    shutdown_log_line: str
    status_after_fix: str
    write_after_fix: bool


def _log_lines(srv: Server, text: str) -> list[str]:
    """The server's log lines that contain `text`, without their prefix (pid, role, date)."""
    return [re.split(r" [#*.-] ", line, maxsplit=1)[-1] for line in srv.log_path.read_text().splitlines()
            if text in line]


def failed_snapshot(root: Path, *, stop_writes: bool = True) -> FailedSnapshot:
    """On a server with save points: make BGSAVE fail (a directory stands where the snapshot must be renamed
    to: a forced failure that needs no tiny disk), try a write, read the status, send SIGTERM (the final
    snapshot fails the same way), then remove the obstacle and snapshot again."""
    with _server(root, save=REAL_DEFAULT_SAVE, stop_writes_on_bgsave_error=stop_writes) as srv:
        r = srv.client()
        r.set("order:1", "paid")
        obstacle = srv.dir / "dump.rdb"
        obstacle.mkdir()
        (obstacle / "keep").touch()
        r.bgsave()
        _wait_for_bgsave(r)
        status = r.info("persistence")["rdb_last_bgsave_status"]
        try:
            r.set("order:2", "paid")
            error = None
        except redis.ResponseError as err:
            error = str(err)
        persistence = ops.persistence_status(r)
        log = _log_lines(srv, "Error moving temp DB file")[0]
        srv.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: _log_lines(srv, "can't exit"), 10, "the server to log its failed shutdown")
        running, refused = srv.is_running(), _log_lines(srv, "can't exit")[0]
        (obstacle / "keep").unlink()
        obstacle.rmdir()
        r.bgsave()
        _wait_for_bgsave(r)
        fixed_status = r.info("persistence")["rdb_last_bgsave_status"]
        return FailedSnapshot(status, error, _without_paths(log), persistence, running, refused, fixed_status,
                              bool(r.set("order:3", "paid")))


def _without_paths(line: str) -> str:
    """A log line with its file-system paths left out: '... dump.rdb (in server root dir /x/y): ...' ->
    '... dump.rdb: ...'."""
    return re.sub(r" \(in server root dir [^)]*\)", "", line)


def first_sentence(text: str) -> str:
    """The first sentence of an error message."""
    return re.split(r"(?<=\.) ", text, maxsplit=1)[0]


# -- exercise checks -------------------------------------------------------------------------------------
SERVICES = {
    "leaderboard": "Game scores, rebuilt from the database in a minute whenever needed. After a restart it may "
                   "start empty. It must be as fast as possible and never pause to fork or write to disk.",
    "analytics": "Page-view counters, summed into a daily report. Losing up to an hour of counts to a crash is "
                 "acceptable; losing them at every restart is not. The dataset is large: fork it at most once "
                 "an hour, and write nothing else to disk.",
    "carts": "Shopping carts. They must survive a restart and a crash of the server process; if the machine "
             "loses power, losing the last second or two of changes is acceptable. Writes are frequent: "
             "pay for no more durability than that.",
    "ledger": "A stream of payment events. A payment acknowledged to the client must never be lost, even if "
              "the machine loses power.",
}
_ALLOWED = {"save", "appendonly", "appendfsync"}
HOUR = 3600


def _directives(choice: Any) -> tuple[dict[str, str] | None, str | None]:
    """The directives of one service, checked and spelt as the server reads them (yes/no, lowercase), or
    what is wrong with them."""
    if not isinstance(choice, dict):
        return None, f"give a dict of directives such as {{'appendonly': 'yes'}}, got {choice!r}."
    config = {str(k).lower().replace("_", "-"): v for k, v in choice.items()}
    unknown = set(config) - _ALLOWED
    if unknown:
        return None, f"only {', '.join(sorted(_ALLOWED))} matter here, not {', '.join(sorted(unknown))}."
    for key, value in config.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        if not isinstance(value, str):
            return None, f"{key} is a string (or True/False for appendonly), got {value!r}."
        config[key] = value.strip().lower()  # the server reads yes/no and the policies in any case
    if config.get("appendonly", "no") not in ("yes", "no"):
        return None, f"appendonly is 'yes' or 'no' (or True/False), got {choice_value(choice, 'appendonly')!r}."
    if config.get("appendfsync", "everysec") not in FSYNC_POLICIES:
        return None, (f"appendfsync is one of {', '.join(FSYNC_POLICIES)}, got "
                      f"{choice_value(choice, 'appendfsync')!r}.")
    try:
        ops.parse_save_points(config.get("save", ""))
    except ConfigError as err:
        return None, f"save: {err}"
    return config, None


def choice_value(choice: dict[str, Any], name: str) -> Any:
    """The value a learner gave for directive `name`, however its key was spelt."""
    return next(v for k, v in choice.items() if str(k).lower().replace("_", "-") == name)


def _judge_analytics(config: dict[str, str], measured: str) -> list[str]:
    if config.get("appendonly") == "yes":
        return ["analytics: the AOF writes every change to disk; losing an hour is acceptable here, so one "
                "snapshot an hour is all the disk work needed (appendonly no)."]
    save = config.get("save", REAL_DEFAULT_SAVE)
    points = ops.parse_save_points(save)
    if not points:
        return [f"analytics: with no save points nothing is snapshotted, not even at a clean restart {measured}."]
    default = "" if "save" in config else f" (left out, save is the engine's default {REAL_DEFAULT_SAVE!r})"
    often = [f"'{t} {c}' every {t} s once {c:,} keys have changed" for t, c in points if t < HOUR]
    problems = [f"analytics: the save points{default} snapshot more often than once an hour: "
                f"{', '.join(often)}."] if often else []
    if not any(t <= HOUR and c == 1 for t, c in points):
        problems.append(f"analytics: no save point fires within the hour after a single change (save {save!r}): "
                        "in a quiet hour, counts wait longer than an hour for a snapshot.")
    return problems


def _judge(service: str, config: dict[str, str], test: ProfileTest) -> list[str]:
    aof = config.get("appendonly") == "yes"
    fsync = config.get("appendfsync", "everysec")
    snapshots = config.get("save", REAL_DEFAULT_SAVE) != ""
    measured = (f"(measured: {test.after_restart.recovered:,} of {test.after_restart.written:,} back after a "
                f"restart, {test.after_crash.recovered:,} after a crash)")
    if service == "leaderboard":
        problems = []
        if snapshots:
            problems.append("leaderboard: snapshots are on (left out, `save` is the engine's default "
                            f"{REAL_DEFAULT_SAVE!r}); each one forks. Set save to ''.")
        if aof:
            problems.append(f"leaderboard: the AOF writes every change to disk for data you can rebuild {measured}.")
        return problems
    if service == "analytics":
        return _judge_analytics(config, measured)
    crash_lost = 0 if test.after_crash.unwritten_bytes else test.after_crash.lost  # not everysec's slow-fsync window
    if test.after_restart.lost or crash_lost:
        return [f"{service}: acknowledged writes were lost {measured}: only the AOF keeps every write through a "
                "crash (turn appendonly on)."]
    if service == "carts" and fsync != "everysec":
        return [f"carts: appendfsync {fsync} " + ("fsyncs before every reply: 10.4 measured how much slower that "
                "makes one client than everysec, which already meets 'a second or two'." if fsync == "always" else
                "leaves fsync to the kernel, which may hold writes in memory for 30 s or more: a power cut "
                "loses them. everysec bounds that at about 2 s.")]
    if service == "ledger" and fsync != "always":
        return [f"ledger: survives a crash {measured}, but with appendfsync {fsync} an acknowledged payment can "
                "sit in the page cache for up to about 2 s (longer with 'no'): a power cut loses it. Use always."]
    return []


@check
def check_persistence_choices(root: Path, choices: dict[str, dict[str, Any]]) -> Result:
    """`choices` maps each service of `SERVICES` to its directives (`save`, `appendonly`, `appendfsync`;
    left out, a directive takes the engine's default). Each is run through the loss test and judged; the
    verdict names each problem on a line of its own."""
    problems, configs = [], {}
    for service in SERVICES:
        config, error = _directives(choices.get(service) if isinstance(choices, dict) else None)
        if error:
            problems.append(f"{service}: {error}")
        else:
            configs[service] = config
    tests = _in_parallel({name: lambda c=config: loss_test(root, c, writes=500) for name, config in configs.items()})
    for service, config in configs.items():
        problems += _judge(service, config, tests[service])
    return _listed(problems, "no persistence for the rebuildable leaderboard, one snapshot an hour for the "
                             "analytics counters, AOF everysec for the carts (nothing lost to a crash), AOF always "
                             "for the ledger (nothing lost to a power cut).")


def _listed(problems: list[str], success: str) -> Result:
    """Like `verdict`, with each problem on a line of its own (a Markdown list)."""
    if problems:
        return Result(False, "\n\n" + "\n".join(f"- {problem}" for problem in problems))
    return verdict(problems, success)


def _call_with_deadline(write: Callable, args: tuple, deadline_s: float) -> tuple[bool, Any]:
    """Run `write(*args)` in a thread; (finished in time, its result or the exception it raised)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(write(*args))
        except Exception as err:  # the learner's code: any error is an answer to judge
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(deadline_s)
    return (not thread.is_alive()), (outcome[0] if outcome else None)


def _freeze_replica(topo: Any) -> Callable[[], None]:
    topo.replicas[0].pause()
    return topo.replicas[0].resume


def _primary_without_aof(topo: Any) -> Callable[[], None]:
    topo.primary.client().config_set("appendonly", "no")
    return lambda: _switch_aof_on(topo.primary.client())


def _primary_rewriting(topo: Any) -> Callable[[], None]:
    """The primary has just switched its AOF on and is still writing the first one (the rewrite is slowed to
    about 10 s, far longer than the tries, however busy the machine; undo ends it at once); the replica
    fsyncs as usual."""
    p = topo.primary.client()
    p.config_set("appendonly", "no")
    p.mset({f"fill:{i}": i for i in range(200)})
    p.config_set("rdb-key-save-delay", 50_000)  # µs per key
    p.config_set("appendonly", "yes")

    def undo() -> None:
        p.config_set("appendonly", "no")  # ends the slowed rewrite at once
        p.config_set("rdb-key-save-delay", 0)
        _switch_aof_on(p)
        p.close()

    return undo


def _replica_without_aof(topo: Any) -> Callable[[], None]:
    topo.replicas[0].client().config_set("appendonly", "no")
    return lambda: None


def _switch_aof_on(r: redis.Redis) -> None:
    r.config_set("appendonly", "yes")
    ops.wait_for_aof_rewrite(r)


@dataclass(frozen=True)
class Scenario:
    """A state of the primary and replica the durable write is tried in: how to bring it about (returning how
    to undo it), the right answer, a hint for a wrong one, and how many writes to try: a replica sometimes
    confirms only with its once-a-second report, so one try can miss a right True or a wrong one."""

    label: str
    bring_about: Callable[[Any], Callable[[], None]] | None
    expected: bool
    hint: str
    tries: int = 1


DURABILITY_SCENARIOS = [
    Scenario("both fsync", None, True, "a write fsynced here and on the replica is safe: say True.", tries=3),
    Scenario("the replica is frozen (SIGSTOP)", _freeze_replica, False,
             "check WAITAOF's reply [numlocal, numreplicas], not just that it returned."),
    Scenario("the primary has no AOF", _primary_without_aof, False,
             "ask WAITAOF for the local fsync too (numlocal 1) and check it."),
    Scenario("the primary is still writing its first AOF", _primary_rewriting, False,
             "check numlocal too: the replica fsynced the write, this server did not yet.", tries=5),
    Scenario("the replica acknowledges but has no AOF", _replica_without_aof, False,
             "WAIT counts replicas that received the write, not ones that fsynced it: use WAITAOF."),
]
REFUSE_WITHIN_S = 1.5  # the task says "within 500 ms"; the rest is room for a busy machine


def _as_answer(result: Any) -> bool:
    return False if isinstance(result, Exception) else bool(result)


@check
def check_durable_write(write: Callable[[redis.Redis, str, str], bool], deadline_s: float = 5.0) -> Result:
    """`write(r, key, value)` writes and returns True only once the write is fsynced to the AOF of the
    primary and of at least one replica; False (or an error) when that cannot be confirmed within 500 ms.

    Each call gets a client of its own holding one connection. The healthy case gets three tries, `deadline_s`
    each: a replica's confirmation sometimes waits for its once-a-second report, longer than a short timeout,
    and saying False then is not wrong. The other cases must answer within `REFUSE_WITHIN_S`."""
    problems = []
    with aof_pair() as topo:
        for i, case in enumerate(DURABILITY_SCENARIOS):
            limit = deadline_s if case.expected else min(deadline_s, REFUSE_WITHIN_S)
            undo = case.bring_about(topo) if case.bring_about else (lambda: None)
            try:
                answers = []
                for attempt in range(case.tries):  # until an answer differs from a right False, or is a True
                    client = topo.primary.client(single_connection_client=True)
                    finished, result = _call_with_deadline(write, (client, f"order:{i}:{attempt}", "paid"), limit)
                    if finished:
                        client.close()
                    answers.append((finished, result))
                    if not finished or _as_answer(result) is not False:
                        break
            finally:
                undo()
            finished, result = answers[-1]
            if not finished:
                problems.append(f"when {case.label}, it had not answered after {limit:g} s: give WAITAOF a timeout "
                                "(the task says 500 ms).")
            elif _as_answer(result) is not case.expected:
                # tries go on only after a False: a True on a later try followed Falses, not other Trues
                times = f" {len(answers)} times in a row" if len(answers) > 1 and _as_answer(result) is False else ""
                problems.append(f"when {case.label}, it returned {result!r}{times}: {case.hint}")
    return _listed(problems, "it says True only when the primary and a replica have fsynced the write (WAITAOF 1 1 "
                             "with a timeout, both counts checked).")
