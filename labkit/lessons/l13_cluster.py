"""Lesson 13, Cluster (`notebooks/13_cluster.ipynb`): slots and CRC16, hash tags, what a cluster client sees,
resharding and failover under load, adding and removing a node, the lab's patterns on a cluster, scaling
out, and the exercise checks. Every experiment runs on a cluster the lesson starts (`labkit.server.cluster`),
never on the shared lab server."""

from __future__ import annotations

import atexit
import binascii
import contextlib
import os
import random
import re
import shutil
import subprocess
import tempfile
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import matplotlib.pyplot as plt
import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import LoadBalancingStrategy, RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from labkit import ops
from labkit.clients import probe_options
from labkit.errors import LabkitError, ServerUnavailable
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Server, cli_path, cluster
from labkit.server.process import pid_alive as _alive
from labkit.server.process import temp_root
from labkit.server.topology import CLUSTER_SLOTS, Cluster, _runs, _slot_view, wait_until

CALM_TIMEOUT_MS = 5000  # between experiments: a busy machine must never look like a dead node
FAILOVER_TIMEOUTS_MS = (500, 1000, 2000)
DEFAULT_NODE_TIMEOUT_MS = 15000
_current: list[Cluster] = []


def fresh_cluster(primaries: int = 3, replicas: int = 1) -> Cluster:
    """A started cluster for the lesson (node timeout `CALM_TIMEOUT_MS`), its servers' directories in a folder of
    this process's own (`l13-<pid>-...` under labkit's temp root). A cluster an earlier run of Setup made in this
    kernel is stopped first; the folders that kernels killed mid-lesson left behind (their servers died with
    them) are removed, so running the lesson again never piles anything up."""
    while _current:
        stop_cluster(_current.pop())
    for stale in temp_root().glob("l13-*-*"):
        owner = stale.name.split("-")[1]
        if owner.isdigit() and not _alive(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    root = Path(tempfile.mkdtemp(prefix=f"l13-{os.getpid()}-", dir=temp_root()))
    atexit.register(shutil.rmtree, root, True)
    topo = cluster(primaries, replicas, node_timeout_ms=CALM_TIMEOUT_MS, root=root)
    _current.append(topo)
    return topo


def stop_cluster(topo: Cluster) -> int:
    """Stop every member of the lesson's cluster and remove its folder; return how many server directories were
    still in it (each member removes its own when it stops, so 0)."""
    topo.stop()
    root = Path(topo.root) if topo.root else None
    left = [p for p in root.iterdir() if p.name.startswith("labkit-")] if root and root.exists() else []
    if root:
        shutil.rmtree(root, ignore_errors=True)
    return len(left)


def label(node: Server) -> str:
    """How the lesson names a node in tables and pictures: its port."""
    return f":{node.port}"


# -- 13.1 slots -------------------------------------------------------------------------------------------------
def crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, the checksum Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def hashed_part(key: str) -> str:
    """The part of `key` that is hashed: what lies between the first `{` and the next `}`, if that is not
    empty (a hash tag); else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1:end] if end > start + 1 else key


def key_slot(key: str) -> int:
    """The hash slot of `key`, computed here: CRC16 of its hashed part, modulo 16384."""
    return crc16(hashed_part(key).encode()) % CLUSTER_SLOTS


def _slot(key: str) -> int:
    """`key_slot`, with the standard library's CRC16 (`binascii.crc_hqx`, in C): for searching many names."""
    return binascii.crc_hqx(hashed_part(key).encode(), 0) % CLUSTER_SLOTS


def server_slots(client: redis.Redis, keys: Sequence[str]) -> list[int]:
    """CLUSTER KEYSLOT for every key, asked of one node in one pipeline."""
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command("CLUSTER", "KEYSLOT", key)
        return [int(slot) for slot in pipe.execute()]


def slot_owners(c: Cluster) -> dict[int, Server]:
    """Every slot and the primary that serves it now."""
    return {slot: node for node in c.serving_primaries() for lo, hi in _ranges(node) for slot in range(lo, hi + 1)}


def _ranges(node: Server) -> list[tuple[int, int]]:
    return Cluster.slot_ranges(node)


def _by_port(nodes: Iterable[Server]) -> list[Server]:
    return sorted(nodes, key=lambda n: n.port)


def keys_by_node(c: Cluster, keys: Iterable[str]) -> dict[str, int]:
    """How many of `keys` each primary serves, by slot (nothing is written)."""
    owners = slot_owners(c)
    counts = Counter(owners[key_slot(k)] for k in keys)
    return {label(n): counts.get(n, 0) for n in _by_port(c.serving_primaries())}


def plot_slots(c: Cluster, slots: Sequence[int]) -> None:
    """Where 1,000 keys fall: a histogram over the 16384 slots, each primary's range shaded, and keys per node."""
    owners = sorted(((lo, hi, n) for n in c.serving_primaries() for lo, hi in _ranges(n)), key=lambda t: t[0])
    colors = dict(zip(sorted({label(n) for *_, n in owners}), plt.cm.tab10.colors, strict=False))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 2.8), gridspec_kw={"width_ratios": [3, 1]})
    for lo, hi, node in owners:
        left.axvspan(lo, hi + 1, color=colors[label(node)], alpha=0.15)
    left.hist(slots, bins=64, range=(0, CLUSTER_SLOTS), color="tab:gray")
    left.set(xlabel="hash slot", ylabel="keys", title=f"{len(slots):,} keys over 16384 slots (shaded: each "
             "primary's range)", xlim=(0, CLUSTER_SLOTS))
    per_node = Counter(label(next(n for lo, hi, n in owners if lo <= s <= hi)) for s in slots)
    names = sorted(per_node)
    right.bar(names, [per_node[n] for n in names], color=[colors[n] for n in names])
    right.set(title="keys per primary", xlabel="node (port)")
    fig.tight_layout()
    plt.show()


def _command_calls(node: Server, command: str) -> int:
    return int(node.probe().info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def ops_per_node(c: Cluster, rc: RedisCluster, keys: Sequence[str], batch: int = 500) -> dict[str, int]:
    """Send a GET for each of `keys` (pipelined, `batch` at a time) and return how many GETs each primary
    executed, read from its INFO commandstats."""
    nodes = _by_port(c.serving_primaries())
    before = {n: _command_calls(n, "get") for n in nodes}
    for i in range(0, len(keys), batch):
        with rc.pipeline() as pipe:
            for key in keys[i:i + batch]:
                pipe.get(key)
            pipe.execute()
    return {label(n): _command_calls(n, "get") - before[n] for n in nodes}


def hot_workload(hot: Sequence[str], cold: Sequence[str], ops: int, share: float, seed: int = 13) -> list[str]:
    """`ops` key names to read: a `share` of them from `hot`, the rest from `cold`, shuffled (seeded)."""
    rng = random.Random(seed)
    return [rng.choice(hot) if rng.random() < share else rng.choice(cold) for _ in range(ops)]


def plot_per_node(groups: dict[str, dict[str, int]], title: str, what: str) -> None:
    """Each group's share (%) per primary, as grouped bars, with the even share dashed."""
    names = list(groups)
    nodes = sorted(next(iter(groups.values())))
    _, ax = plt.subplots(figsize=(8, 2.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        total = sum(groups[name].values()) or 1
        ax.bar(np.arange(len(nodes)) + i * width, [groups[name][n] / total * 100 for n in nodes], width, label=name)
    ax.set_xticks(np.arange(len(nodes)) + width * (len(names) - 1) / 2, nodes)
    ax.axhline(100 / len(nodes), color="gray", linestyle="--", linewidth=1, label="an even share")
    ax.set(ylabel=f"% of the {what}", xlabel="primary (port)", title=title, ylim=(0, 105))
    ax.legend(fontsize=8)
    plt.show()


# -- 13.2 hash tags ------------------------------------------------------------------------------------------
def _transaction(client: redis.Redis, a: str, b: str) -> Any:
    with client.pipeline(transaction=True) as pipe:
        pipe.set(a, 1)
        pipe.set(b, 2)
        return pipe.execute()


MULTI_KEY_COMMANDS: dict[str, Callable[[redis.Redis, str, str], Any]] = {
    "SUNIONSTORE": lambda cl, a, b: cl.sunionstore(a, b),
    "MGET": lambda cl, a, b: cl.mget(a, b),
    "MSET": lambda cl, a, b: cl.mset({a: 1, b: 2}),
    "MULTI ... EXEC": _transaction,
    "EVAL with 2 keys": lambda cl, a, b: cl.eval("return redis.call('EXISTS', KEYS[1], KEYS[2])", 2, a, b),
}


def _outcome(call: Callable[[], Any]) -> str:
    try:
        call()
    except redis.RedisError as err:
        return f"{type(err).__name__}: {str(err)[:60]}"
    return "ok"


def same_node_pair(c: Cluster, make: Callable[[int], str]) -> tuple[str, str]:
    """Two keys `make(i)` in different slots served by the same primary."""
    owners, first = slot_owners(c), make(0)
    home = owners[key_slot(first)]
    second = next(make(i) for i in range(1, 10_000)
                  if owners[_slot(make(i))] is home and _slot(make(i)) != _slot(first))
    return first, second


def multi_key_table(c: Cluster, pair: tuple[str, str]) -> dict[str, str]:
    """Each multi-key command on the two keys, sent by a plain client to the primary serving the first: what
    the server answers (a cluster client would refuse some before sending; see 13.3). Deletes the keys."""
    a, b = pair
    with c.primary_for(a).client() as node:
        table = {name: _outcome(lambda run=run: run(node, a, b)) for name, run in MULTI_KEY_COMMANDS.items()}
        node.delete(a)
        if key_slot(a) == key_slot(b):
            node.delete(b)
    return table


def written_per_node(rc: RedisCluster, keys: Sequence[str]) -> dict[str, int]:
    """Write `keys` (MSET split by slot), count how many landed on each primary (DBSIZE before and after),
    delete them again."""
    before = ops.keys_per_node(rc)
    rc.mset_nonatomic(dict.fromkeys(keys, 1))
    after = ops.keys_per_node(rc)
    rc.delete(*keys)
    return {f":{name.rsplit(':', 1)[1]}": after[name] - before.get(name, 0) for name in sorted(after)}


# -- 13.3 the client's view ---------------------------------------------------------------------------------
class CountingConnection(redis.Connection):
    """A redis-py connection that counts what it sends, by server port: each send is one round trip, as the
    client waits for the replies before it can send what depends on them."""

    sends: ClassVar[Counter] = Counter()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends[self.port] += 1
        super().send_packed_command(command, check_health)


def counting_client(c: Cluster) -> RedisCluster:
    """A cluster client whose connections count their sends (`CountingConnection.sends`, by port)."""
    rc = c.client()
    for node in rc.get_nodes():
        pool = rc.get_redis_connection(node).connection_pool
        pool.disconnect()
        pool.connection_class = CountingConnection
        pool.reset()  # forget the connections made so far: the next ones are counting ones
    return rc


def round_trips(c: Cluster, rc_counting: RedisCluster, keys: Sequence[str]) -> dict[str, dict[str, int]]:
    """Round trips (sends) per primary to read `keys`: one command at a time, then as one pipeline. The client
    comes from `counting_client`."""
    nodes = _by_port(c.serving_primaries())
    with rc_counting.pipeline() as warm:  # open a connection to every node first: its handshake is not counted
        for node in nodes:
            warm.get(_key_on(node, "warm"))
        warm.execute()
    measured = {}
    for name, run in {"one by one": lambda: [rc_counting.get(k) for k in keys],
                      "one pipeline": lambda: _pipelined_gets(rc_counting, keys)}.items():
        CountingConnection.sends.clear()
        run()
        measured[name] = {label(n): CountingConnection.sends.get(n.port, 0) for n in nodes}
    return measured


def _pipelined_gets(rc: RedisCluster, keys: Sequence[str]) -> list:
    with rc.pipeline() as pipe:
        for key in keys:
            pipe.get(key)
        return pipe.execute()


def _key_on(node: Server, name: str) -> str:
    """A key (under the lesson's prefix) whose slot `node` serves."""
    slots = {s for lo, hi in _ranges(node) for s in range(lo, hi + 1)}
    return next(k for i in range(100_000) if _slot(k := f"lab:l13:{name}:{i}") in slots)


def one_key_per_primary(c: Cluster, name: str) -> list[str]:
    """One key under the lesson's prefix on each primary, in port order."""
    return [_key_on(n, f"{name}:{n.port}") for n in _by_port(c.serving_primaries())]


@dataclass(frozen=True)
class Behaviour:
    """One redis-py `RedisCluster` call on keys spread over the primaries: what came back, and whether the
    servers saw a CROSSSLOT (a refusal made in the client never reaches them)."""

    call: str
    outcome: str
    crossslot_replies: int


def redis_py_behaviours(rc: RedisCluster, keys: Sequence[str]) -> list[Behaviour]:
    """What `RedisCluster` does with multi-key calls on `keys` (one per primary, so in different slots)."""
    calls: dict[str, Callable[[], Any]] = {
        "mset(3 keys)": lambda: rc.mset(dict.fromkeys(keys, 1)),
        "mget(3 keys)": lambda: rc.mget(*keys),
        "eval(script, 3 keys)": lambda: rc.eval("return #KEYS", len(keys), *keys),
        "rename(a, b)": lambda: rc.rename(keys[0], keys[1]),
        "mset_nonatomic(3 keys)": lambda: rc.mset_nonatomic(dict.fromkeys(keys, 1)),
        "keys(pattern)": lambda: len(rc.keys(_common_pattern(keys))),
        "keys(pattern, target_nodes=PRIMARIES)": lambda: len(rc.keys(_common_pattern(keys),
                                                                    target_nodes=RedisCluster.PRIMARIES)),
        "dbsize()": lambda: rc.dbsize(),
        "scan_iter(pattern)": lambda: len(list(rc.scan_iter(match=_common_pattern(keys)))),
        "delete(3 keys)": lambda: rc.delete(*keys),
    }
    rows = []
    for name, call in calls.items():
        before = ops.cluster_errors(rc)["CROSSSLOT"]
        try:
            outcome = repr(call())
        except (redis.RedisError, RedisClusterException) as err:
            outcome = f"{type(err).__name__}: {str(err)[:50]}"
        rows.append(Behaviour(name, outcome, ops.cluster_errors(rc)["CROSSSLOT"] - before))
    return rows


def _common_pattern(keys: Sequence[str]) -> str:
    """The SCAN pattern of the longest text every key starts with."""
    first = min(keys)
    last = max(keys)
    size = next((i for i, (a, b) in enumerate(zip(first, last, strict=False)) if a != b), min(len(first), len(last)))
    return first[:size] + "*"


def stale_reads(c: Cluster, key: str, reads: int = 10) -> tuple[int, int, int]:
    """Write then read `key` `reads` times with a client that reads round-robin from the primary and its
    replica, while the replica applies nothing (CLIENT PAUSE WRITE holds its replication stream, as a slow
    network would). Returns (stale reads, reads the replica served, reads). The replica is let go in a
    `finally`."""
    primary = c.primary_for(key)
    replica = c.replicas_of(primary)[0]
    client = c.client(load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN)
    slot = key_slot(key)
    wait_until(lambda: len(client.nodes_manager.slots_cache[slot]) > 1 or client.nodes_manager.initialize(), 10,
               "the client to learn the replica")
    served_before, stale = _command_calls(replica, "get"), 0
    try:
        with replica.client(**probe_options()) as hold:
            hold.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")
        for i in range(reads):
            client.set(key, i)
            stale += client.get(key) != str(i)
    finally:
        with replica.client(**probe_options()) as hold:
            hold.execute_command("CLIENT", "UNPAUSE")
        client.delete(key)
        client.close()
    return stale, _command_calls(replica, "get") - served_before, reads


# -- 13.4 live resharding ------------------------------------------------------------------------------------
class Load:
    """A client that sets `keys` to 0, then keeps incrementing (INCR) and reading (GET) them in a background
    thread until stopped, counting what succeeded and every error by type, as an application would see them.
    Each key's acknowledged INCRs are counted too, so that a lost or doubled write shows (`lost()`).

    Example:
        >>> with Load(c, keys) as load:
        ...     c.migrate_slots(0, 999, target)
        >>> load.errors, load.lost()
        (Counter(), 0)
    """

    def __init__(self, c: Cluster, keys: Sequence[str], *, seed: int = 13) -> None:
        self.c, self.keys = c, list(keys)
        self.acked: Counter = Counter()
        self.errors: Counter = Counter()
        self.ops = 0
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labkit-l13-load", daemon=True)
        self._client = c.client()

    def _run(self) -> None:
        while not self._stop.is_set():
            key = self._rng.choice(self.keys)
            try:
                self._client.incr(key)
                self.acked[key] += 1
                self._client.get(key)
                self.ops += 2
            except Exception as err:  # whatever the client raises is an error the application sees, its bugs too
                self.errors[type(err).__name__] += 1
                time.sleep(0.01)

    def __enter__(self) -> Load:
        self._client.mset_nonatomic(dict.fromkeys(self.keys, 0))
        self._thread.start()
        deadline = time.monotonic() + 10
        while self.ops < 20 and time.monotonic() < deadline:  # running before the caller goes on
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._client.close()

    def lost(self) -> int:
        """Acknowledged INCRs missing from the keys now (the keys started at 0; negative: more than acknowledged)."""
        with self.c.client() as rc:
            values = rc.mget_nonatomic(self.keys)
        return sum(self.acked.values()) - sum(int(v or 0) for v in values)


def keys_in_slots(slots: Iterable[int], count: int, name: str = "reshard") -> list[str]:
    """`count` keys under the lesson's prefix whose slots are among `slots`."""
    wanted, found, i = set(slots), [], 0
    while len(found) < count:
        key = f"lab:l13:{name}:{i}"
        if _slot(key) in wanted:
            found.append(key)
        i += 1
    return found


@dataclass
class Reshard:
    """One resharding under load: how, what moved, how long, and what the application and the servers saw."""

    method: str
    slots: int
    keys: int
    seconds: float
    errors: dict[str, int]
    redirects: dict[str, int]
    lost: int
    ops: int
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    retries: int = 0  # valkey-cli runs repeated after NOREPLICAS (see cli_reshard)
    source: str = ""  # the primaries the slots left and reached (labels)
    target: str = ""

    def moved_keys(self) -> int:
        """How many keys the target gained, by its DBSIZE before and after."""
        return self.after[self.target] - self.before[self.target]


def lowest_slots(node: Server, count: int) -> list[int]:
    """`node`'s `count` lowest slots (what `valkey-cli --cluster reshard` moves first)."""
    slots = [s for lo, hi in sorted(_ranges(node)) for s in range(lo, hi + 1)][:count]
    if len(slots) < count:
        raise ValueError(f"{label(node)} serves {len(slots)} slots, fewer than {count}.")
    return slots


def reshard_under_load(c: Cluster, rc: RedisCluster, source: Server, count: int, target: Server, method: str,
                       *, keys: int = 600) -> Reshard:
    """Move `source`'s lowest `count` slots to `target` by `method` ("steps": SETSLOT + MIGRATE; "atomic":
    CLUSTER MIGRATESLOTS; "valkey-cli": `--cluster reshard`), while a `Load` increments and reads `keys` keys
    in those slots. The keys are deleted afterwards."""
    return _reshard(c, rc, lowest_slots(source, count), source, target, method, keys)


def _reshard(c: Cluster, rc: RedisCluster, slots: list[int], source: Server, target: Server, method: str,
             keys: int) -> Reshard:
    """`reshard_under_load` for the given `slots` (all served by `source`)."""
    count = len(slots)
    names = keys_in_slots(slots, keys)
    try:
        rc.mset_nonatomic(dict.fromkeys(names, 0))
        before, errors_before = ops.keys_per_node(rc), ops.cluster_errors(rc)
        with Load(c, names) as load:
            started = time.monotonic()
            retries = 0
            if method == "valkey-cli":
                moved_keys, retries = cli_reshard(c, source, count, target)
            else:
                moved_keys = sum(c.migrate_slots(lo, hi, target, atomic=method == "atomic").keys
                                 for lo, hi in _runs(slots))
            seconds = time.monotonic() - started
        errors_after, after = ops.cluster_errors(rc), ops.keys_per_node(rc)
        lost = load.lost()
    finally:
        rc.delete(*names)
    redirects = {k: errors_after[k] - errors_before[k] for k in ("MOVED", "ASK", "TRYAGAIN")}
    return Reshard(method, count, moved_keys, seconds, dict(load.errors), redirects, lost, load.ops,
                   _short(before), _short(after), retries, label(source), label(target))


def reshard_table(runs: Sequence[Reshard]) -> str:
    """One line per resharding: method, size, time, what the application saw and the servers sent, and the keys
    per primary before and after."""
    lines = [f"{'method':10} {'slots':>5} {'seconds':>7} {'errors':>6} {'lost':>4} {'MOVED':>5} {'ASK':>4} "
             f"{'TRYAGAIN':>8}  keys per primary, before -> after"]
    for run in runs:
        lines.append(f"{run.method:10} {run.slots:5} {run.seconds:7.2f} {sum(run.errors.values()):6} {run.lost:4} "
                     f"{run.redirects['MOVED']:5} {run.redirects['ASK']:4} {run.redirects['TRYAGAIN']:8}  "
                     f"{run.before} -> {run.after}")
    return "\n".join(lines)


def _short(per_node: dict[str, int]) -> dict[str, int]:
    return {f":{name.rsplit(':', 1)[1]}": n for name, n in sorted(per_node.items())}


CLI_ATTEMPTS = 4


def cli_reshard(c: Cluster, source: Server, count: int, target: Server) -> tuple[int, int]:
    """`valkey-cli --cluster reshard`: move `count` slots from `source` (its lowest) to `target`; return the keys
    they held and how many times the tool had to be run again. Since Valkey 8 each CLUSTER SETSLOT waits (2 s at
    most) for the node's replicas; on a busy machine that can pass, the node answers NOREPLICAS and valkey-cli,
    which does not retry, stops with a slot half-moved. Then `valkey-cli --cluster fix` closes the open slot and
    the slots still on `source` are moved again. The password goes through the environment, not the command line."""
    slots = lowest_slots(source, count)
    keys = sum(_count_keys(source, lo, hi) for lo, hi in _runs(slots))
    retries = 0
    while remaining := [s for s in slots if c.owner(s) is source]:
        done = _cli(source, "reshard", f"{source.host}:{source.port}", "--cluster-from", c.node_id(source),
                    "--cluster-to", c.node_id(target), "--cluster-slots", str(len(remaining)))
        if not done.returncode:
            break
        output = done.stderr + done.stdout
        if "NOREPLICAS" not in output or retries == CLI_ATTEMPTS - 1:
            raise RuntimeError(f"valkey-cli failed: {output[-300:]}")
        retries += 1
        _cli(source, "fix", f"{source.host}:{source.port}")  # closes the half-moved slot
        c.wait_healthy()
    wait_until(lambda: all(c.owner(s) is target for s in slots), 30, "every node to see the move")
    return keys, retries


def _cli(node: Server, action: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(cli_path()), "--cluster", action, *args, "--cluster-yes"],
                          env=os.environ | {"REDISCLI_AUTH": node.password}, capture_output=True, text=True,
                          timeout=300, check=False)


def _count_keys(node: Server, first: int, last: int) -> int:
    with node.client() as admin, admin.pipeline(transaction=False) as pipe:
        for slot in range(first, last + 1):
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        return sum(pipe.execute())


@dataclass
class ReshardComparison:
    """The same slots moved back and forth between two primaries under load, each method in turn (A B B A ...):
    every run of every method, in the order they ran."""

    slots: int
    runs: list[Reshard]

    def seconds(self, method: str) -> list[float]:
        return [run.seconds for run in self.runs if run.method == method]

    def median(self, method: str) -> float:
        return float(np.median(self.seconds(method)))

    def ratio(self, slower: str = "steps", faster: str = "atomic") -> float:
        """How many times longer the median `slower` run took than the median `faster` one."""
        return self.median(slower) / self.median(faster)


def compare_reshards(c: Cluster, rc: RedisCluster, a: Server, b: Server, slots: int, methods: Sequence[str],
                     *, rounds: int = 3, keys: int = 300) -> ReshardComparison:
    """Move `a`'s lowest `slots` slots to `b` and back, again and again, under a `Load` on `keys` keys in them:
    `rounds` runs of each method, interleaved A B B A A B... so that a busy moment of the machine falls on
    both. The slots end where they started when the number of runs is even."""
    moving = lowest_slots(a, slots)
    order = [methods[(i // len(methods) + i) % len(methods)] for i in range(rounds * len(methods))]
    runs = []
    for i, method in enumerate(order):
        source, target = (a, b) if i % 2 == 0 else (b, a)
        runs.append(_reshard(c, rc, moving, source, target, method, keys))
    return ReshardComparison(slots, runs)


def plot_reshard_comparison(comparison: ReshardComparison) -> None:
    """Seconds of each run per method (dots; the bar is the median) and the redirects the servers sent."""
    methods = list(dict.fromkeys(run.method for run in comparison.runs))
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.8))
    for i, method in enumerate(methods):
        left.bar(i, comparison.median(method), 0.6, color="tab:blue" if method == "steps" else "tab:green")
        left.plot([i] * len(comparison.seconds(method)), comparison.seconds(method), "ko", markersize=4)
    left.set_xticks(range(len(methods)), methods)
    left.set(ylabel="seconds", title=f"moving the same {comparison.slots} slots (dots: each run)")
    x = np.arange(len(methods))
    for j, kind in enumerate(("MOVED", "ASK")):
        medians = [np.median([r.redirects[kind] for r in comparison.runs if r.method == m]) for m in methods]
        right.bar(x + (j - 0.5) * 0.35, medians, 0.35, label=kind)
    right.set_xticks(x, methods)
    right.set(ylabel="replies per run (median)", title="redirects the servers sent")
    right.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


# -- 13.5 failover -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failover:
    """A primary killed under load: seconds until its replica said it was primary, seconds until the
    application's next write to that primary's slots succeeded, the errors it saw meanwhile, and the writes
    acknowledged before the kill that were missing after."""

    node_timeout_ms: int
    promoted_s: float
    writes_back_s: float
    errors: int
    acked: int
    lost: int
    election: tuple[str, ...] = ()  # what the promoted replica's log said about the election


def _election_lines(node: Server, since: int) -> tuple[str, ...]:
    """The lines `node` logged after byte `since` about its failover election, without pid and timestamp."""
    with open(node.log_path, "rb") as log:
        log.seek(since)
        lines = log.read().decode(errors="replace").splitlines()
    return tuple(line.split(" * ", 1)[-1] for line in lines if "election" in line.lower())


def _wait_role(node: Server, role: str, timeout: float) -> float:
    """Seconds until `node` says it has `role` (polled every 10 ms through its probe)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if node.probe().info("replication")["role"] == role:
                return time.monotonic() - started
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.01)
    raise TimeoutError(f"{node.port} did not become {role} within {timeout:.0f} s")


def rejoin(c: Cluster, node: Server) -> None:
    """Start a killed member again (same port, same nodes.conf) and wait until the cluster is healthy: a
    former primary comes back as a replica of the one that replaced it."""
    if not node.is_running():
        node.restart()
    c.wait_healthy()


def failover_under_load(c: Cluster, tag: str, node_timeout_ms: int) -> Failover:
    """Set `cluster-node-timeout` on every node, then kill the primary serving `tag` while a client writes new
    keys `<tag>:<n>` in a loop, and time the failover. Counts the keys acknowledged before the kill that the
    promoted replica does not have. The killed node rejoins (as a replica) in a `finally`; the keys are deleted."""
    c.config_set(cluster_node_timeout=node_timeout_ms)
    victim = c.primary_for(tag)
    replica = c.replicas_of(victim)[0]
    writer = c.client(socket_timeout=0.25, socket_connect_timeout=0.25)
    acked: list[int] = []
    state = {"errors": 0, "back": None, "written": 0}
    killed, stop = threading.Event(), threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            after_kill = killed.is_set()
            try:
                writer.set(f"{tag}:{i}", i)
            except Exception:  # whatever the client raises is an error the application sees
                state["errors"] += after_kill
                time.sleep(0.005)
                continue
            state["written"] = i
            if not after_kill:
                acked.append(i)
            else:
                state["back"] = time.monotonic()
                return

    thread = threading.Thread(target=write, name="labkit-l13-writer", daemon=True)
    try:
        thread.start()
        time.sleep(0.2)
        before_kill = list(acked)
        log_mark = replica.log_path.stat().st_size
        victim.kill()
        t0 = time.monotonic()
        killed.set()
        promoted = _wait_role(replica, "master", 60)
        election = _election_lines(replica, log_mark)
        thread.join(60)
        survived = writer.mget([f"{tag}:{i}" for i in before_kill])  # one tag, one slot: one MGET
        lost = sum(v is None for v in survived)
        writer.delete(*[f"{tag}:{i}" for i in range(1, state["written"] + 1)])
    finally:
        stop.set()
        thread.join(5)
        writer.close()
        rejoin(c, victim)
    back = (state["back"] - t0) if state["back"] else float("nan")
    return Failover(node_timeout_ms, promoted, back, state["errors"], len(before_kill), lost, election)


def plot_failovers(runs: Sequence[Failover]) -> None:
    """Failover time against cluster-node-timeout, with the line time = timeout."""
    timeouts = np.array([run.node_timeout_ms / 1000 for run in runs])
    _, ax = plt.subplots(figsize=(6.5, 2.8))
    ax.plot(timeouts, [run.promoted_s for run in runs], "o-", label="replica promoted")
    ax.plot(timeouts, [run.writes_back_s for run in runs], "s--", label="the application's next write")
    ax.plot([0, timeouts.max() * 1.1], [0, timeouts.max() * 1.1], ":", color="gray", label="= the node timeout")
    ax.set(xlabel="cluster-node-timeout (s)", ylabel="seconds after the kill", title="failover under load",
           xlim=(0, None), ylim=(0, None))
    ax.legend(fontsize=8)
    plt.show()


def fit_line(runs: Sequence[Failover]) -> tuple[float, float]:
    """Least-squares (slope, intercept) of promotion time in seconds against the node timeout in seconds."""
    slope, intercept = np.polyfit([r.node_timeout_ms / 1000 for r in runs], [r.promoted_s for r in runs], 1)
    return float(slope), float(intercept)


@dataclass(frozen=True)
class LostWrites:
    """Writes a primary acknowledged while its replica lagged, what WAIT said about them, and how many the
    promoted replica had."""

    acked: int
    replicas_confirmed: int
    survived: int
    wait_s: float = 0.0  # how long WAIT 1 100 blocked before it answered


def lost_writes(c: Cluster, tag: str, writes: int = 100) -> LostWrites:
    """Hold the replica of the primary serving `tag` (CLIENT PAUSE WRITE: it receives the replication stream
    but applies nothing), write `writes` keys on the primary, ask WAIT 1 100 on the same connection, kill the
    primary, let the replica take over. The replica is let go and the old primary rejoins in a `finally`."""
    keys = [f"{tag}:write:{i}" for i in range(writes)]
    victim = c.primary_for(keys[0])
    replica = c.replicas_of(victim)[0]
    try:
        with replica.client(**probe_options()) as hold:
            hold.execute_command("CLIENT", "PAUSE", 30_000, "WRITE")
        with victim.client() as primary:  # one connection: WAIT counts that connection's own writes
            for key in keys:
                primary.set(key, 1)
            asked = time.monotonic()
            confirmed = primary.wait(1, 100)  # at least 1 replica, at most 100 ms
            waited = time.monotonic() - asked
        victim.kill()
        _wait_role(replica, "master", 60)
    finally:
        with replica.client(**probe_options()) as hold:
            hold.execute_command("CLIENT", "UNPAUSE")
        rejoin(c, victim)
    with c.client() as rc:
        survived = sum(rc.exists(key) for key in keys)
        rc.delete(*keys)
    return LostWrites(writes, confirmed, survived, waited)


@dataclass(frozen=True)
class Coverage:
    """What clients saw with a replica-less primary dead, under each `cluster-require-full-coverage`."""

    full_coverage_yes: dict[str, str]
    full_coverage_no: dict[str, str]
    down_after_s: float
    reads_when_down: dict[str, str] = field(default_factory=dict)  # full coverage yes, allow-reads-when-down yes


def coverage_loss(c: Cluster, alive_key: str, dead_key: str, timeout_ms: int = 500) -> Coverage:
    """Kill the primary serving `dead_key` and its replica, then read `alive_key` (served by a live primary)
    and `dead_key` through the cluster client and through a plain client of `alive_key`'s primary, with
    `cluster-require-full-coverage` yes (the default), yes with `cluster-allow-reads-when-down yes`, then no (a
    node re-evaluates its cluster_state when a node's state changes, or every cron tick while it is down: so
    the cases go from down to up, not back). Both come back in a `finally` (empty: nothing
    was persisted), with the setting back at yes."""
    c.config_set(cluster_node_timeout=timeout_ms)
    victim = c.primary_for(dead_key)
    replica = c.replicas_of(victim)[0]
    home = c.primary_for(alive_key)
    rc = c.client(socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))  # made while all
    try:  # are up: redis-py 8 cannot build a cluster client while a slot's primary is down
        replica.kill()
        victim.kill()
        killed = time.monotonic()
        wait_until(lambda: home.probe().cluster("info")["cluster_state"] == "fail", 60, "cluster_state:fail")
        down_after = time.monotonic() - killed
        yes = _reads(rc, home, alive_key, dead_key)
        c.config_set(cluster_allow_reads_when_down=True)  # checked per command: the cluster stays down
        reads = _reads(rc, home, alive_key, dead_key)
        c.config_set(cluster_require_full_coverage=False, cluster_allow_reads_when_down=False)
        wait_until(lambda: home.probe().cluster("info")["cluster_state"] == "ok", 60, "cluster_state:ok")
        no = _reads(rc, home, alive_key, dead_key)
    finally:
        rc.close()
        c.config_set(cluster_require_full_coverage=True, cluster_allow_reads_when_down=False)
        for node in (victim, replica):
            if not node.is_running():
                node.restart()
        c.wait_healthy()
    return Coverage(yes, no, down_after, reads)


def _reads(rc: RedisCluster, home: Server, alive_key: str, dead_key: str) -> dict[str, str]:
    with home.client(**probe_options()) as plain:
        return {
            "cluster client, live slot": _outcome_value(lambda: rc.get(alive_key)),
            "plain client, live slot": _outcome_value(lambda: plain.get(alive_key)),
            "cluster client, dead slot": _outcome_value(lambda: rc.get(dead_key)),
            "plain client, dead slot": _outcome_value(lambda: plain.get(dead_key)),
            # a write that leaves the value as it was: APPEND of nothing
            "plain client, write live slot": _outcome_value(lambda: plain.append(alive_key, "")),
        }


def _outcome_value(call: Callable[[], Any]) -> str:
    try:
        return repr(call())
    except (redis.RedisError, OSError) as err:
        first_clause = str(err).split(". ")[0].split(", ")[0]
        return f"{type(err).__name__}: {textwrap.shorten(first_clause, 60, placeholder=' ...')}"


# -- 13.6 adding and removing a node --------------------------------------------------------------------------
def plot_slot_counts(stages: dict[str, dict[Server, int]]) -> None:
    """Slots per primary at each stage (a node absent at a stage has none)."""
    nodes = sorted({n for counts in stages.values() for n in counts}, key=lambda n: n.port)
    _, ax = plt.subplots(figsize=(7.5, 2.6))
    width = 0.8 / len(stages)
    for i, (stage, counts) in enumerate(stages.items()):
        ax.bar(np.arange(len(nodes)) + i * width, [counts.get(n, 0) for n in nodes], width, label=stage)
    ax.set_xticks(np.arange(len(nodes)) + width * (len(stages) - 1) / 2, [label(n) for n in nodes])
    ax.set(ylabel="slots", xlabel="primary (port)", title="slots per primary")
    ax.legend(fontsize=8)
    plt.show()


# -- 13.7 the lab's patterns: keyspace events and sharded pub/sub ------------------------------------------
def keyspace_events_seen(c: Cluster, keys: Sequence[str], *, every_primary: bool) -> int:
    """Subscribe to `__keyevent@0__:set` on one primary (or on every primary), SET each of `keys` through the
    cluster client, and count the events heard. Notifications are switched on for the experiment and off
    after it; every subscriber is closed."""
    nodes = _by_port(c.serving_primaries())
    listened = nodes if every_primary else nodes[:1]
    c.config_set(notify_keyspace_events="E$")
    subscribers, clients = [], []
    try:
        for node in listened:
            clients.append(client := node.client())
            subscribers.append(sub := client.pubsub())
            sub.subscribe("__keyevent@0__:set")
            sub.get_message(timeout=1)  # the subscription confirmation
        with c.client() as rc:
            for key in keys:
                rc.set(key, 1)
            heard = 0
            for sub in subscribers:
                while sub.get_message(timeout=0.2):
                    heard += 1
            rc.delete(*keys)
    finally:
        for sub in subscribers:
            sub.close()
        for client in clients:
            client.close()
        c.config_set(notify_keyspace_events="")
    return heard


# -- 13.8 scaling out ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scaling:
    """The same pipelined INCR workload spread over `primaries` primaries: commands per second, the CPU seconds
    each of those primaries spent on it, and its CPU use (CPU seconds / elapsed seconds; medians of the rounds)."""

    primaries: int
    ops_per_s: float
    cpu_s: dict[str, float]
    cpu_use: dict[str, float] = field(default_factory=dict)


def _resp(*parts: str) -> bytes:
    return f"*{len(parts)}\r\n".encode() + b"".join(f"${len(p)}\r\n{p}\r\n".encode() for p in parts)


def _cpu(node: Server) -> float:
    info = node.probe().info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _pipe(node: Server) -> subprocess.Popen:
    """`valkey-cli --pipe`: the C client sends every command without waiting, the fastest way to load a node."""
    return subprocess.Popen([str(cli_path()), "-h", node.host, "-p", str(node.port), "--pipe"],
                           env=os.environ | {"REDISCLI_AUTH": node.password}, stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def throughput(c: Cluster, counts: Sequence[int] = (1, 2, 3), commands: int = 1_000_000,
               rounds: int = 2) -> list[Scaling]:
    """Send `commands` INCRs, spread evenly over the first k primaries for each k in `counts` (one
    `valkey-cli --pipe` per primary, every one fed at the same time by a thread of its own), in interleaved
    rounds; deletes its counters after."""
    nodes = _by_port(c.serving_primaries())
    keys = {n: _key_on(n, "tp") for n in nodes}
    rates: dict[int, list[float]] = {k: [] for k in counts}
    cpu: dict[int, dict[str, list[float]]] = {k: {label(n): [] for n in nodes[:k]} for k in counts}
    use: dict[int, dict[str, list[float]]] = {k: {label(n): [] for n in nodes[:k]} for k in counts}
    try:
        for _ in range(rounds):
            for k in counts:
                used = nodes[:k]
                share = commands // k
                payload = {n: _resp("INCR", keys[n]) * share for n in used}
                before = {n: _cpu(n) for n in used}
                started = time.monotonic()
                _feed_all({_pipe(n): payload[n] for n in used})
                elapsed = time.monotonic() - started
                rates[k].append(share * k / elapsed)
                for n in used:
                    spent = _cpu(n) - before[n]
                    cpu[k][label(n)].append(spent)
                    use[k][label(n)].append(spent / elapsed)
    finally:
        with c.client() as rc:
            for key in keys.values():
                rc.delete(key)
    return [Scaling(k, float(np.median(rates[k])), {n: float(np.median(v)) for n, v in cpu[k].items()},
                    {n: float(np.median(v)) for n, v in use[k].items()}) for k in counts]


def _feed_all(payloads: dict[subprocess.Popen, bytes]) -> None:
    """Write each process its stdin, all at once (a thread each), and wait until every one has exited."""
    threads = [threading.Thread(target=proc.communicate, args=(data,), kwargs={"timeout": 120}, daemon=True)
               for proc, data in payloads.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    for proc in payloads:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            raise RuntimeError("valkey-cli --pipe did not finish in 120 s")


def plot_scaling(runs: Sequence[Scaling]) -> None:
    """Throughput against the number of primaries, and the CPU time each primary spent on the workload."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.2))
    names = [str(r.primaries) for r in runs]
    left.bar(names, [r.ops_per_s / 1000 for r in runs], color="tab:blue", label="measured here")
    left.plot(names, [runs[0].ops_per_s * r.primaries / 1000 for r in runs], "o--", color="gray",
              label="k x one primary: a core (a machine) each")
    left.set(xlabel="primaries sharing the work", ylabel="thousand commands/s",
             title=f"throughput on this machine ({os.cpu_count()} cores)")
    left.legend(fontsize=8)
    for run in runs:
        right.bar([f"{run.primaries}: {n}" for n in run.cpu_s], [v * 1000 for v in run.cpu_s.values()],
                  label=f"{run.primaries} primar{'y' if run.primaries == 1 else 'ies'}")
    right.set(xlabel="primaries in the run: primary (port)", ylabel="CPU ms",
              title="CPU each primary spent on the same workload")
    right.tick_params(axis="x", labelrotation=30, labelsize=8)
    right.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


# -- common mistakes -------------------------------------------------------------------------------------------
UNDECLARED = "redis.call('INCR', KEYS[1]); return redis.call('INCR', ARGV[1])"  # ARGV[1] names a key: undeclared
DECLARED = "redis.call('INCR', KEYS[1]); return redis.call('INCR', KEYS[2])"


def key_beside(c: Cluster, key: str, name: str) -> str:
    """A key under the lesson's prefix in another slot than `key` but on the same primary."""
    home, slot = c.primary_for(key), key_slot(key)
    slots = {s for lo, hi in _ranges(home) for s in range(lo, hi + 1)} - {slot}
    return next(k for i in range(100_000) if _slot(k := f"lab:l13:{name}:{i}") in slots)


def key_elsewhere(c: Cluster, key: str, name: str) -> str:
    """A key under the lesson's prefix served by another primary than `key`."""
    home = c.primary_for(key)
    slots = {s for n in c.serving_primaries() if n is not home for lo, hi in _ranges(n) for s in range(lo, hi + 1)}
    return next(k for i in range(100_000) if _slot(k := f"lab:l13:{name}:{i}") in slots)


class StaticSlotMap:
    """A hand-made cluster client that reads the slot map once (CLUSTER SLOTS) and sends each command to the
    node the map names, through plain clients: it never learns that a slot moved."""

    def __init__(self, c: Cluster) -> None:
        self.nodes = {node.port: node.client() for node in c.serving_primaries()}
        self.owner = {slot: node.port for slot, node in slot_owners(c).items()}

    def get(self, key: str) -> Any:
        return self.nodes[self.owner[key_slot(key)]].get(key)

    def close(self) -> None:
        for client in self.nodes.values():
            client.close()


def read_all(read: Callable[[str], Any], keys: Sequence[str]) -> Counter:
    """Read every key; count the outcomes ("ok" or the error's type)."""
    outcomes: Counter = Counter()
    for key in keys:
        try:
            read(key)
            outcomes["ok"] += 1
        except redis.RedisError as err:
            outcomes[type(err).__name__] += 1
    return outcomes


# -- exercise 1: a cart that a cluster can update atomically -------------------------------------------------
CART_PARTS = ("cart", "reserved", "hold")
RESERVE = """
-- KEYS[1] cart (hash sku -> quantity), KEYS[2] reserved (hash sku -> quantity), KEYS[3] hold (deadline)
-- ARGV[1] sku, ARGV[2] quantity, ARGV[3] hold seconds. Returns the cart's quantity of the sku.
redis.call('HINCRBY', KEYS[2], ARGV[1], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[3])
return redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
"""
CART_USERS = 40


@check
def check_cart_keys(c: Cluster, cart_keys: Callable[[str], dict[str, str]]) -> Result:
    """`cart_keys(user_id)` names a user's three keys, {"cart", "reserved", "hold"}, under `lab:l13:`. The check
    runs the reservation script (one EVAL on all three) for 40 users on the cluster: it must work for every
    user, and the users must spread over the primaries."""
    if not callable(cart_keys):
        return Result(False, f"pass your function itself, cart_keys, not {cart_keys!r}.")
    users = [f"user-{i}" for i in range(CART_USERS)]
    try:
        named = {u: cart_keys(u) for u in users}
    except Exception as err:  # the learner's code: any error is an answer to explain
        return Result(False, f"cart_keys raised {type(err).__name__}: {err}")
    problems = _cart_shape(named)
    if problems:
        return verdict(problems, "")
    problems += _cart_on_cluster(c, named)
    owners = slot_owners(c)
    nodes = {owners[key_slot(keys["cart"])].port for keys in named.values()}
    tags = {hashed_part(keys["cart"]) for keys in named.values()}
    if len(tags) < CART_USERS:
        problems.append(f"the {CART_USERS} users' carts share {len(tags)} hash tag(s) (over-tagging): users with "
                        "one tag are one slot on one primary, however many there are. Give each user a tag of "
                        "their own, e.g. {cart-<user id>}.")
    return verdict(problems, f"each user's three keys share one slot and the reservation ran atomically for all "
                             f"{CART_USERS} users, spread over {len(nodes)} primaries.")


def _cart_shape(named: dict[str, Any]) -> list[str]:
    first = next(iter(named.values()))
    if not isinstance(first, dict) or set(first) != set(CART_PARTS):
        return [f"cart_keys must return a dict with the keys {', '.join(CART_PARTS)}; got {first!r}."]
    keys = [k for d in named.values() for k in d.values()]
    prefix = Namespace("l13").prefix  # lab:l13:, or lab:<learner>:l13: for a workshop learner
    if not all(isinstance(k, str) and k.startswith(prefix) for k in keys):
        return [f"every key must be a string under the lesson's prefix, {prefix} (use ns.key)."]
    if len(set(keys)) != len(keys):
        return ["two users (or two parts) got the same key name: include the user id and the part."]
    return []


def _cart_on_cluster(c: Cluster, named: dict[str, dict[str, str]]) -> list[str]:
    failed = []
    with c.client() as rc:
        for user, keys in named.items():
            try:
                rc.eval(RESERVE, 3, keys["cart"], keys["reserved"], keys["hold"], "sku-7", 2, 600)
            except (redis.RedisError, RedisClusterException) as err:  # refused by the server or by redis-py
                failed.append((user, err))
            rc.delete(*keys.values())
    if not failed:
        return []
    user, err = failed[0]
    slots = sorted({key_slot(k) for k in named[user].values()})
    return [f"the reservation failed for {len(failed)} of {CART_USERS} users ({user}: {type(err).__name__}: "
            f"{str(err)[:60]}): its keys are in slots {slots}. One EVAL needs all its keys in one slot: give "
            "the three keys the same hash tag, {...}, the first braces in each name."]


# -- exercise 2: move a slot without errors ----------------------------------------------------------------------
RESHARD_SLOTS = 6
KEYS_PER_SLOT = 40
NOREPLICAS_HINT = (" (the node waited longer than SETSLOT's timeout for its replicas to confirm the change: 2 s "
                   "by default, `TIMEOUT <ms>` at the end of the command sets it; run the check again)")


def _exercise_keys(owners: dict[int, Server], target: Server) -> dict[int, list[str]]:
    """`KEYS_PER_SLOT` keys in each of `RESHARD_SLOTS` slots not served by `target`: one hash tag per slot."""
    found: dict[int, list[str]] = {}
    for i in range(10_000):
        slot = key_slot(tag := f"exercise-{i}")
        if owners[slot] is not target and slot not in found:
            found[slot] = [f"lab:l13:{{{tag}}}:{n}" for n in range(KEYS_PER_SLOT)]
        if len(found) == RESHARD_SLOTS:
            return found
    raise RuntimeError("no slots found for the exercise")  # unreachable with three primaries


_SETSLOT = re.compile(rb"\$7\r\nCLUSTER\r\n\$7\r\nSETSLOT\r\n\$\d+\r\n(\d+)\r\n\$\d+\r\n(IMPORTING|MIGRATING)\r\n",
                      re.IGNORECASE)


@contextlib.contextmanager
def setslot_log() -> Iterator[list[tuple[int, int, str]]]:
    """While the block runs, record every `CLUSTER SETSLOT <slot> IMPORTING|MIGRATING` that any redis-py
    connection of this process sends (any client, any thread, pipelines too), as (server port, slot, state)
    in the order they went over the wire."""
    sent: list[tuple[int, int, str]] = []
    lock, original = threading.Lock(), redis.connection.AbstractConnection.send_packed_command

    def recording(conn: Any, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes | str) else b"".join(bytes(part) for part in command)
        packed = packed.encode() if isinstance(packed, str) else packed
        with lock:
            sent.extend((conn.port, int(slot), state.decode().upper()) for slot, state in _SETSLOT.findall(packed))
        original(conn, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = recording
    try:
        yield sent
    finally:
        redis.connection.AbstractConnection.send_packed_command = original


def _order_problems(sent: list[tuple[int, int, str]], sources: dict[int, Server], target: Server) -> list[str]:
    """Slots whose source was marked MIGRATING before (or without) the target being marked IMPORTING."""
    early = []
    for slot, source in sources.items():
        marks = [(port, state) for port, s, state in sent if s == slot]
        migrating = marks.index((source.port, "MIGRATING")) if (source.port, "MIGRATING") in marks else None
        importing = marks.index((target.port, "IMPORTING")) if (target.port, "IMPORTING") in marks else None
        if migrating is not None and (importing is None or importing > migrating):
            early.append(slot)
    if not early:
        return []
    return [f"the source was marked MIGRATING before the target was marked IMPORTING (slots {early}). In between, "
            "the source answers ASK for a key it does not hold (a new key, or one already moved), and the target, "
            "not importing yet, refuses the ASKING client with MOVED back to the source: the client bounces "
            "between them until it gives up. Mark the target IMPORTING first, then the source MIGRATING."]


@check
def check_move_slot(c: Cluster, move_slot: Callable[[Cluster, int, Server], Any]) -> Result:
    """`move_slot(c, slot, target)` moves one slot and its keys to the primary `target`. The check moves 6
    slots (40 keys each) one after another while a client increments and reads those keys, then wants: the
    target marked IMPORTING before the source MIGRATING (the commands this process sent are recorded), no
    error seen by the client, no increment lost, every primary agreeing on the new owner, no key left behind."""
    if not callable(move_slot):
        return Result(False, f"pass your function itself, move_slot, not {move_slot!r}.")
    target = _by_port(c.serving_primaries())[0]
    owners = slot_owners(c)
    by_slot = _exercise_keys(owners, target)
    slots, keys = list(by_slot), [k for names in by_slot.values() for k in names]
    sources = {s: owners[s] for s in slots}
    problems = []
    with Load(c, keys) as load, setslot_log() as sent:
        for slot in slots:
            try:
                move_slot(c, slot, target)
            except Exception as err:  # the learner's code
                problems.append(f"move_slot(c, {slot}, target) raised {type(err).__name__}: {str(err)[:90]}"
                                + (NOREPLICAS_HINT if "NOREPLICAS" in str(err) else ""))
                break
    problems += _order_problems(sent, sources, target) + _after_moves(c, slots, sources, target, load)
    _tidy_slots(c, slots, sources, target)
    with c.client() as rc:
        rc.delete(*keys)
    return verdict(problems, f"{len(slots)} slots and their {len(keys)} keys moved under load: 0 errors, "
                             f"0 increments lost, every primary agrees.")


def _after_moves(c: Cluster, slots: list[int], sources: dict[int, Server], target: Server, load: Load) -> list[str]:
    left = {s: _count_keys(sources[s], s, s) for s in slots}
    try:
        owners = {s: c.owner(s) for s in slots}
    except LabkitError:  # a slot nobody serves
        owners = {}
    if all(owners.get(s) is sources[s] for s in slots) and all(left[s] == KEYS_PER_SLOT for s in slots):
        return [f"no slot moved: the {len(slots)} slots and their keys are where they were. Mark the target "
                "IMPORTING and the source MIGRATING, MIGRATE the keys, then CLUSTER SETSLOT <slot> NODE <target id> "
                "on every primary."]
    problems = []
    if load.errors:
        problems.append(f"the client saw errors while the slots moved: {dict(load.errors)}. Set IMPORTING on the "
                        "target and MIGRATING on the source before moving keys: then the source answers ASK for "
                        "a key already moved, and clients follow it.")
    if any(left.values()):
        problems.append(f"keys are still on the old owner ({sum(left.values())} in slots "
                        f"{[s for s, n in left.items() if n]}): MIGRATE every key (CLUSTER GETKEYSINSLOT until "
                        "it returns none), without COPY.")
    if any(owners.get(s) is not target for s in slots):
        problems.append("not every slot is served by the target now: finish with CLUSTER SETSLOT <slot> NODE "
                        "<target id> on the target, the source and the other primaries.")
    elif not _every_primary_agrees(c, slots, target):
        problems.append("the target serves the slots, but not every primary says so (CLUSTER NODES on each): run "
                        "CLUSTER SETSLOT <slot> NODE <target id> on the source and the other primaries too.")
    lost = load.lost() if not problems else 0
    if lost:
        problems.append(f"{lost} acknowledged increments are missing: a write went to a node that no longer held "
                        "the key.")
    return problems


def _every_primary_agrees(c: Cluster, slots: list[int], target: Server, within: float = 5.0) -> bool:
    """Whether every serving primary's own CLUSTER NODES names `target` for each slot (within a few seconds:
    a view a node learns by gossip is late, not wrong)."""
    target_id, deadline = c.node_id(target), time.monotonic() + within
    while True:
        if all(_slot_view(n, s, s) == {target_id} for n in c.serving_primaries() for s in slots):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _tidy_slots(c: Cluster, slots: list[int], sources: dict[int, Server], target: Server) -> None:
    """After a check, whatever the answer did: every slot STABLE, served by the node holding its keys (the
    source, unless they all reached the target), and every primary agreeing."""
    primaries, holders = c.serving_primaries(), {}
    for slot in slots:
        for node in primaries:
            with node.client() as admin, contextlib.suppress(redis.ResponseError):
                admin.execute_command("CLUSTER", "SETSLOT", slot, "STABLE")
        source = sources[slot]
        on_source, on_target = _count_keys(source, slot, slot), _count_keys(target, slot, slot)
        holder = target if on_target and not on_source else source
        if holder is source and on_target:  # keys on both sides: the source takes the slot, then the target's keys
            _assign(c, {slot: source}, [source])
            with target.client() as admin:
                while keys := admin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                    admin.execute_command("MIGRATE", source.host, source.port, "", 0, 5000, "REPLACE", "AUTH",
                                          source.password, "KEYS", *keys)
        holders[slot] = holder
    for attempt in range(3):
        _assign(c, holders)
        try:
            wait_until(lambda: all(c.owner(s) is holders[s] for s in slots), 10, "every primary to agree on the slots")
            return
        except ServerUnavailable:
            if attempt == 2:
                raise


def _assign(c: Cluster, holders: dict[int, Server], nodes: list[Server] | None = None) -> None:
    """Each slot to its holder on `nodes` (every primary), the holder first, after CLUSTER BUMPEPOCH on the
    holder. An answer may have left a claim in flight from a node with a greater config epoch: arriving after the
    holder took the slot back, it would hand the slot to a node that no longer claims it, and nobody would
    serve it."""
    primaries = c.serving_primaries() if nodes is None else nodes
    for slot, holder in holders.items():
        with holder.client() as admin:
            admin.execute_command("CLUSTER", "BUMPEPOCH")
        for node in [holder, *[n for n in primaries if n is not holder]]:
            with node.client() as admin, contextlib.suppress(redis.ResponseError):
                admin.execute_command("CLUSTER", "SETSLOT", slot, "NODE", c.node_id(holder))
