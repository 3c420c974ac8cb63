"""Throwaway topologies of real processes: one server, replicas, Sentinel, Cluster, independent nodes.

Each is started on creation, is a context manager, and stops every member on exit even when the body
raises. Failure timers default to 1000 ms so a lesson sees a failover in seconds; production defaults
are much longer (Sentinel down-after-milliseconds 30000, cluster-node-timeout 15000). The helpers ask
members through each server's probe client (short timeouts, no retry), so a paused member costs them
about a second, never a hang.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel

from labkit.clients import options, probe_options
from labkit.errors import ConfigError, ServerUnavailable
from labkit.server.process import HOST, Server

CLUSTER_SLOTS = 16384
CLUSTER_RETRIES = 3  # a cluster client's retries after a connection error (redis-py's default: 10)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    """Poll `predicate` until true; raise ServerUnavailable naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(every)
    raise ServerUnavailable(f"Timed out after {timeout:.0f} s waiting for {what}.")


def spawn(engine: str | None = None, *, modules: bool = True, root: Path | str | None = None, **config: Any) -> Server:
    """A dedicated, started server; `config` becomes server directives (`maxmemory="10mb"`; None leaves one
    out, so the engine's default applies). Its data directory is created under `root` (default: labkit's
    temp root) and deleted when it stops.

    Example:
        >>> with spawn(maxmemory="2mb", maxmemory_policy="allkeys-lru") as srv:
        ...     srv.client().config_get("maxmemory-policy")
        {'maxmemory-policy': 'allkeys-lru'}
    """
    return Server(engine, root=root, modules=modules, config=config).start()


class Topology:
    """Several servers stopped together; a context manager."""

    def __init__(self) -> None:
        self.servers: list[Server] = []

    def _add(self, server: Server) -> Server:
        self.servers.append(server)
        server.start()
        return server

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _guard(self, build: Callable[[], None]) -> None:
        try:
            build()
        except BaseException:
            self.stop()
            raise


# A full sync starts at once and writes begin to flow as soon as it is done. A diskless sync (the default) makes
# the primary hold the stream back until the replica's first acknowledgement, sent once a second: writes reach
# a "linked" replica up to a second late. An empty replica loads the snapshot straight from the socket (Valkey 9
# would otherwise write it to disk first and notice it had arrived only at its next once-a-second check).
FAST_SYNC = {"repl-diskless-sync": "no", "repl-diskless-load": "on-empty-db"}
SYNC_PROBE = "labkit:sync-probe"  # a channel: a PUBLISH is replicated but is no write (min-replicas cannot refuse it)


def _link_up(replica: Server) -> bool:
    return replica.probe().info("replication").get("master_link_status") == "up"


class Replicated(Topology):
    """A primary and `replicas` replicas, all linked and in sync; data directories under `root` (as in
    `spawn`)."""

    def __init__(self, replicas: int = 1, engine: str | None = None, *, root: Path | str | None = None,
                 **config: Any) -> None:
        super().__init__()
        if replicas < 1:
            raise ConfigError(f"replicas must be at least 1, got {replicas}.")
        self.replicas: list[Server] = []
        self.root = root
        self._guard(lambda: self._build(replicas, engine, config))

    def _build(self, replicas: int, engine: str | None, config: dict[str, Any]) -> None:
        config = FAST_SYNC | config
        self.primary = self._add(Server(engine, root=self.root, modules=False, config=config))
        for _ in range(replicas):
            replica_config = config | {"replicaof": f"{HOST} {self.primary.port}"}
            replica = self._add(Server(engine, password=self.primary.password, root=self.root, modules=False,
                                       config=replica_config))
            self.replicas.append(replica)
        for replica in self.replicas:
            wait_until(lambda r=replica: _link_up(r), 15, f"replica {replica.port} to sync")
        wait_until(self._writes_reach_every_replica, 15, "writes to reach every replica")

    def _writes_reach_every_replica(self) -> bool:
        with self.primary.probe().pipeline(transaction=False) as pipe:  # one connection: WAIT counts its writes
            pipe.publish(SYNC_PROBE, "ready").wait(len(self.replicas), 100)
            return pipe.execute()[-1] == len(self.replicas)


def replicated(replicas: int = 1, engine: str | None = None, *, root: Path | str | None = None,
               **config: Any) -> Replicated:
    """A started primary with `replicas` synced replicas (`.primary`, `.replicas`, `.servers`)."""
    return Replicated(replicas, engine, root=root, **config)


class SentinelTopology(Replicated):
    """A replicated set watched by `sentinels` Sentinel processes under `master_name`.

    `quorum` (default: a majority of the sentinels) is how many must agree that the primary is down; a
    failover also needs the votes of a majority, whatever the quorum. `down_after_ms` and
    `failover_timeout_ms` set the sentinels' timers (None: Sentinel's own defaults, 30000 and 180000 ms).
    `config` becomes directives of the primary and replicas, as in `replicated`. Each sentinel's config
    already names the replicas and the other sentinels (their ids are chosen here), so they need not
    discover each other through hello messages (a few seconds); the topology is ready once every sentinel
    is connected to every member and to the other sentinels.
    """

    def __init__(
        self,
        replicas: int = 1,
        sentinels: int = 3,
        *,
        master_name: str = "labmaster",
        quorum: int | None = None,
        down_after_ms: int | None = 1000,
        failover_timeout_ms: int | None = 10000,
        engine: str | None = None,
        **config: Any,
    ) -> None:
        if not isinstance(sentinels, int) or isinstance(sentinels, bool) or sentinels < 1:
            raise ConfigError(f"sentinels must be an integer of at least 1, got {sentinels!r}.")
        self.majority = sentinels // 2 + 1
        self.quorum = self.majority if quorum is None else quorum
        if not isinstance(self.quorum, int) or isinstance(self.quorum, bool) or not 1 <= self.quorum <= sentinels:
            raise ConfigError(f"quorum must be an integer from 1 to sentinels ({sentinels}), got {quorum!r}.")
        for name, value in (("down_after_ms", down_after_ms), ("failover_timeout_ms", failover_timeout_ms)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} is a whole number of milliseconds or None (the default), got {value!r}.")
        self.master_name = master_name
        self.sentinels: list[Server] = []
        super().__init__(replicas, engine, **config)
        self._guard(lambda: self._watch(sentinels, down_after_ms, failover_timeout_ms, engine))

    def _watch(self, count: int, down_after_ms: int | None, failover_ms: int | None, engine: str | None) -> None:
        password = self.primary.password
        name = self.master_name
        lines = [
            f"sentinel monitor {name} {HOST} {self.primary.port} {self.quorum}",
            f"sentinel auth-pass {name} {password}",
            f"sentinel sentinel-pass {password}",
            *(f"sentinel known-replica {name} {HOST} {replica.port}" for replica in self.replicas),
        ]
        if down_after_ms is not None:
            lines.append(f"sentinel down-after-milliseconds {name} {down_after_ms}")
        if failover_ms is not None:
            lines.append(f"sentinel failover-timeout {name} {failover_ms}")
        members = [(Server(engine, password=password, sentinel=True), secrets.token_hex(20)) for _ in range(count)]
        for sentinel, myid in members:
            others = [f"sentinel known-sentinel {name} {HOST} {s.port} {i}" for s, i in members if s is not sentinel]
            self.servers.append(sentinel)
            self.sentinels.append(sentinel.start([*lines, f"sentinel myid {myid}", *others]))
        wait_until(self._all_sentinels_connected, 30, "the sentinels to connect to every member and to each other")

    def _all_sentinels_connected(self) -> bool:
        for sentinel in self.sentinels:
            probe = sentinel.probe()
            state = probe.sentinel_master(self.master_name)
            if state["flags"] != "master" or state["num-other-sentinels"] != len(self.sentinels) - 1:
                return False
            replicas = probe.sentinel_slaves(self.master_name)
            if len(replicas) != len(self.replicas) or any(
                    r["flags"] != "slave" or r.get("master-link-status") != "ok" for r in replicas):
                return False
            if any(s["flags"] != "sentinel" for s in probe.sentinel_sentinels(self.master_name)):
                return False
        return True

    def sentinel_client(self, **kwargs: Any) -> Sentinel:
        """A redis-py `Sentinel` that knows every sentinel and the data password; it asks sentinels with
        probe timeouts and no retry, and its data clients use `labkit.clients.options()` unless overridden."""
        return Sentinel(
            [(s.host, s.port) for s in self.sentinels],
            sentinel_kwargs={"password": self.primary.password, **probe_options()},
            password=self.primary.password,
            **(options() | {"decode_responses": True} | kwargs),
        )

    def _reported_ports(self) -> list[int]:
        """The primary's port as each sentinel that answers reports it (a paused one is skipped)."""
        ports = []
        for sentinel in self.sentinels:
            try:
                ports.append(int(sentinel.probe().sentinel_get_master_addr_by_name(self.master_name)[1]))
            except (redis.RedisError, OSError):
                continue
        return ports

    def master_address(self) -> tuple[str, int]:
        """The primary's address as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            try:
                host, port = sentinel.probe().sentinel_get_master_addr_by_name(self.master_name)
            except (redis.RedisError, OSError):
                continue
            return host, int(port)
        raise ServerUnavailable(f"No sentinel of {self.master_name!r} answered: are they all stopped or paused?")

    def wait_for_new_primary(self, old: Server, timeout: float = 60) -> Server:
        """Block until a majority of the sentinels answer, all of them report a primary other than `old`,
        and that server says it is master; return it."""

        def promoted() -> bool:
            ports = self._reported_ports()
            if len(ports) < self.majority or len(set(ports)) != 1 or ports[0] == old.port:
                return False
            return self.member(ports[0]).probe().info("replication")["role"] == "master"

        wait_until(promoted, timeout, f"the sentinels to promote a new primary in place of port {old.port}")
        return self.member(self.master_address()[1])

    def member(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def master_for(self, **kwargs: Any) -> redis.Redis:
        """A client that follows the primary through failovers."""
        return self.sentinel_client(**kwargs).master_for(self.master_name)


def sentinel(replicas: int = 1, sentinels: int = 3, **kwargs: Any) -> SentinelTopology:
    """A started primary, `replicas` replicas and `sentinels` sentinels (see `SentinelTopology`)."""
    return SentinelTopology(replicas, sentinels, **kwargs)


class Cluster(Topology):
    """`primaries` primaries sharing the 16384 slots, each with `replicas` replicas."""

    def __init__(
        self, primaries: int = 3, replicas: int = 1, *, node_timeout_ms: int = 1000, engine: str | None = None
    ) -> None:
        super().__init__()
        if primaries < 1 or replicas < 0:
            raise ConfigError(f"Need primaries >= 1 and replicas >= 0, got {primaries} and {replicas}.")
        self.primaries: list[Server] = []
        self.replicas: list[Server] = []
        self._guard(lambda: self._build(primaries, replicas, node_timeout_ms, engine))

    def _build(self, primaries: int, replicas: int, node_timeout_ms: int, engine: str | None) -> None:
        config = FAST_SYNC | {
            "cluster-enabled": True, "cluster-config-file": "nodes.conf", "cluster-node-timeout": node_timeout_ms,
        }
        first = None
        for i in range(primaries * (1 + replicas)):
            node = self._add(Server(engine, password=first.password if first else None, modules=False, config=config))
            first = first or node
            (self.primaries if i < primaries else self.replicas).append(node)
        self._assign_slots()
        with first.client() as admin:  # setting up, not probing: the ordinary timeouts
            for node in self.servers[1:]:
                admin.cluster("meet", HOST, node.port)
        total = len(self.servers)
        wait_until(lambda: all(len(_cluster_nodes(n)) == total for n in self.servers), 30, "every node to meet")
        for i, replica in enumerate(self.replicas):
            primary = self.primaries[i % primaries]
            wait_until(lambda r=replica, p=primary: r.probe().cluster("replicate", self.node_id(p)), 15,
                       "CLUSTER REPLICATE")
        wait_until(self._healthy, 60, "cluster_state:ok on every node")

    def _assign_slots(self) -> None:
        count = len(self.primaries)
        for i, node in enumerate(self.primaries):
            first, last = i * CLUSTER_SLOTS // count, (i + 1) * CLUSTER_SLOTS // count - 1
            with node.client() as admin:
                admin.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)

    def _healthy(self) -> bool:
        live = [n for n in self.servers if n.is_running()]
        if not all(n.probe().cluster("info")["cluster_state"] == "ok" for n in live):
            return False
        return all(_link_up(n) for n in live if n.probe().info("replication")["role"] == "slave")

    @staticmethod
    def node_id(node: Server) -> str:
        return node.probe().execute_command("CLUSTER", "MYID")

    def wait_healthy(self, timeout: float = 60) -> None:
        """Block until every running node reports cluster_state:ok and replicas are linked."""
        wait_until(self._healthy, timeout, "cluster_state:ok on every node")

    def client(self, **kwargs: Any) -> RedisCluster:
        """A cluster-aware client seeded with every node: `decode_responses=True`, the timeouts of
        `labkit.clients.options()`, and 3 retries (backoff from 10 ms, at most 1 s) after a connection
        error, refreshing the slot map meanwhile (a failover moves slots); each unless overridden."""
        from redis.cluster import ClusterNode

        stated = options()
        retry = Retry(ExponentialWithJitterBackoff(base=0.01, cap=1.0), CLUSTER_RETRIES)
        defaults = {"decode_responses": True, "retry": retry} | {k: stated[k] for k in stated if k != "retry"}
        seeds = [ClusterNode(n.host, n.port) for n in self.servers if n.is_running()]
        return RedisCluster(startup_nodes=seeds, password=self.servers[0].password, **(defaults | kwargs))

    def primary_for(self, key: str) -> Server:
        """The node that currently serves `key`'s slot as a primary (a member that does not answer its
        probe, paused or dying, is passed over)."""
        slot = key_slot(key.encode())
        for node in (n for n in self.servers if n.is_running()):
            try:
                if node.probe().info("replication")["role"] == "master" and _serves(node, slot):
                    return node
            except (redis.RedisError, OSError):
                continue
        raise ServerUnavailable(f"No running primary that answers serves slot {slot} (key {key!r}).")


def _cluster_nodes(node: Server) -> dict:
    return node.probe().cluster("nodes")


def _serves(node: Server, slot: int) -> bool:
    return any(lo <= slot <= hi for lo, hi in _own_slots(node))


def _own_slots(node: Server) -> list[tuple[int, int]]:
    line = next(ln for ln in node.probe().execute_command("CLUSTER", "NODES").splitlines() if "myself" in ln)
    ranges = []
    for part in line.split()[8:]:
        if part.startswith("["):
            continue
        lo, _, hi = part.partition("-")
        ranges.append((int(lo), int(hi or lo)))
    return ranges


def cluster(primaries: int = 3, replicas: int = 1, **kwargs: Any) -> Cluster:
    """A started cluster (`.primaries`, `.replicas`, `.servers`, `.client()`)."""
    return Cluster(primaries, replicas, **kwargs)


class Nodes(Topology, list):
    """`n` independent servers (for Redlock); also a list of `Server`s."""

    def __init__(self, n: int, engine: str | None = None, **config: Any) -> None:
        Topology.__init__(self)
        if n < 1:
            raise ConfigError(f"n must be at least 1, got {n}.")
        self._guard(lambda: [self._add(Server(engine, modules=False, config=config)) for _ in range(n)])
        list.extend(self, self.servers)

    def clients(self, **kwargs: Any) -> list[redis.Redis]:
        return [s.client(**kwargs) for s in self.servers]

    def __enter__(self) -> Nodes:
        return self

    __hash__ = object.__hash__


def nodes(n: int = 3, engine: str | None = None, **config: Any) -> Nodes:
    """`n` started independent servers; `with nodes(3) as servers:` gives a list of `Server`s."""
    return Nodes(n, engine, **config)
