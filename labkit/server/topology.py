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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.retry import Retry
from redis.sentinel import Sentinel

from labkit import validate
from labkit.clients import options, probe_options
from labkit.errors import ConfigError, ServerUnavailable
from labkit.server.capabilities import _has_token, _tokens
from labkit.server.process import HOST, Server, owned_directives

CLUSTER_SLOTS = 16384
CLUSTER_RETRIES = 3  # a cluster client's retries after a connection error (redis-py's default: 10)
MIGRATE_BATCH = 1024  # slots per round of a step-by-step migration: a few round trips per batch, not per slot
MIGRATE_CONNECTIONS = 32  # connections per node a step-by-step migration uses at once
SETSLOT_TIMEOUT_MS, SETSLOT_ATTEMPTS = 10_000, 3  # how long a node may wait for its replicas, and how often to ask
MIGRATE_KEYS = 100  # keys per MIGRATE call
MIGRATE_TIMEOUT_MS = 5000  # MIGRATE's own timeout for one batch of keys
TURNED_REPLICA = ("only with masters", "master -> replica")  # a SETSLOT NODE refused, or ended, by a demotion
MIGRATION_DONE, MIGRATION_FAILED = "success", ("failed", "cancelled")  # CLUSTER GETSLOTMIGRATIONS states


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.02) -> None:
    """Poll `predicate` until true; raise ServerUnavailable naming `what` after `timeout` seconds."""
    timeout = validate.seconds(timeout, "timeout")
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
    out, so the engine's default applies); those labkit sets itself (port, requirepass, dir, replicaof, ...)
    are refused, saying what to pass instead. Its data directory is created under `root` (default: labkit's
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


SERVER_OPTIONS = ("modules", "port", "password", "directory", "sentinel", "detached")  # Server(...) arguments


def directives_only(config: dict[str, Any]) -> dict[str, Any]:
    """`config` if it holds only server directives a topology leaves to the caller. A `Server` option among
    them (a topology's servers start without modules, on ports and passwords of its choosing), or a
    directive labkit or the topology sets itself (port, requirepass, dir, replicaof, ...), is refused with
    what to do instead."""
    options = [name for name in config if name in SERVER_OPTIONS]
    if options:
        raise ConfigError(f"{', '.join(options)}: not a server directive. A topology chooses its servers' "
                          "ports and password and starts them without modules; pass directives only, e.g. "
                          "maxmemory='10mb'.")
    try:
        owned_directives(config, allow_no_password=False)
    except ConfigError as err:
        raise ConfigError(f"{err} A topology chooses its servers' ports, password, directories and "
                          "replication itself (see its own options); pass other directives only, e.g. "
                          "maxmemory='10mb'.") from None
    return config


def _link_up(replica: Server) -> bool:
    return replica.probe().info("replication").get("master_link_status") == "up"


class Replicated(Topology):
    """A primary and `replicas` replicas, all linked and in sync; data directories under `root` (as in
    `spawn`)."""

    def __init__(self, replicas: int = 1, engine: str | None = None, *, root: Path | str | None = None,
                 **config: Any) -> None:
        super().__init__()
        validate.integer(replicas, "replicas")
        self.replicas: list[Server] = []
        self.root = root
        config = directives_only(config)
        self._guard(lambda: self._build(replicas, engine, config))

    def _build(self, replicas: int, engine: str | None, config: dict[str, Any]) -> None:
        config = FAST_SYNC | config
        self.primary = self._add(Server(engine, root=self.root, modules=False, config=config))
        for _ in range(replicas):
            replica = Server(engine, password=self.primary.password, root=self.root, modules=False, config=config)
            replica.config["replicaof"] = f"{HOST} {self.primary.port}"  # the topology's own directive
            replica = self._add(replica)
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
        self._monitor_lines = lines
        members = [(Server(engine, password=password, sentinel=True), secrets.token_hex(20)) for _ in range(count)]
        for sentinel, myid in members:
            others = [f"sentinel known-sentinel {name} {HOST} {s.port} {i}" for s, i in members if s is not sentinel]
            self.servers.append(sentinel)
            self.sentinels.append(sentinel.start([*lines, f"sentinel myid {myid}", *others]))
        wait_until(self._all_sentinels_connected, 30, "the sentinels to connect to every member and to each other")

    def sentinel_config(self) -> list[str]:
        """The lines every sentinel was started with (besides its own id and the other sentinels'), the
        password masked: what an operator writes in sentinel.conf."""
        return [line.replace(self.primary.password, "<password>") for line in self._monitor_lines]

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
    """`primaries` primaries sharing the 16384 slots, each with `replicas` replicas; data directories under
    `root` (as in `spawn`).

    `.primaries` and `.replicas` list the members in the role they were created (or added) in; after a
    failover, ask `serving_primaries()` or `replicas_of()` for the roles they hold now.
    """

    def __init__(
        self, primaries: int = 3, replicas: int = 1, *, node_timeout_ms: int = 1000, engine: str | None = None,
        root: Path | str | None = None,
    ) -> None:
        super().__init__()
        validate.integer(primaries, "primaries")
        validate.integer(replicas, "replicas", minimum=0)
        validate.milliseconds(node_timeout_ms, "node_timeout_ms")
        self.primaries: list[Server] = []
        self.replicas: list[Server] = []
        self.engine, self.root = engine, root
        self.config = FAST_SYNC | {
            "cluster-enabled": True, "cluster-config-file": "nodes.conf", "cluster-node-timeout": node_timeout_ms,
        }
        self._guard(lambda: self._build(primaries, replicas))

    def _build(self, primaries: int, replicas: int) -> None:
        first = None
        for i in range(primaries * (1 + replicas)):
            node = self._add(self._new_member(first.password if first else None))
            first = first or node
            (self.primaries if i < primaries else self.replicas).append(node)
        self._assign_slots()
        with first.client() as admin:  # setting up, not probing: the ordinary timeouts
            for node in self.servers[1:]:
                admin.cluster("meet", HOST, node.port)
        self._wait_all_known()
        for i, replica in enumerate(self.replicas):
            self._replicate(replica, self.primaries[i % primaries])
        wait_until(self._healthy, 60, "cluster_state:ok on every node")

    def _new_member(self, password: str | None) -> Server:
        return Server(self.engine, password=password, root=self.root, modules=False, config=self.config)

    def _wait_all_known(self) -> None:
        """Until every running member knows exactly the members (a stopped one is still a member: the others
        remember it until it is removed)."""
        members = {n.port for n in self.servers}
        wait_until(lambda: all(_known_ports(n) == members for n in self._running()), 30,
                   "every member to know every other one")

    def _replicate(self, replica: Server, primary: Server) -> None:
        wait_until(lambda: replica.probe().cluster("replicate", self.node_id(primary)), 15, "CLUSTER REPLICATE")

    def _running(self) -> list[Server]:
        return [n for n in self.servers if n.is_running()]

    def _assign_slots(self) -> None:
        count = len(self.primaries)
        for i, node in enumerate(self.primaries):
            first, last = i * CLUSTER_SLOTS // count, (i + 1) * CLUSTER_SLOTS // count - 1
            with node.client() as admin:
                admin.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)

    def _healthy(self) -> bool:
        live = self._running()
        if not all(n.probe().cluster("info")["cluster_state"] == "ok" for n in live):
            return False
        if not all(_link_up(n) for n in live if n.probe().info("replication")["role"] == "slave"):
            return False
        views = [_roles_seen(n, {m.port for m in live}) for n in live]  # gossip spreads a new replica's role
        return all(view == views[0] for view in views)  # late (Redis 8.2: CLUSTER SHARDS lists it as a primary)

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
        return self.owner(key_slot(key.encode()), what=f"key {key!r}")

    def owner(self, slot: int, *, what: str = "") -> Server:
        """The running primary that serves `slot` (by its own account; one that does not answer is passed over)."""
        _check_slot(slot, "slot")
        for node in self.serving_primaries():
            try:
                if _serves(node, slot):
                    return node
            except (redis.RedisError, OSError):
                continue
        raise ServerUnavailable(f"No running primary that answers serves slot {slot}{f' ({what})' if what else ''}.")

    def serving_primaries(self) -> list[Server]:
        """The running members that answer their probe and say they are primaries, now (failovers included)."""
        return [n for n in self._running() if _role(n) == "master"]

    def replicas_of(self, primary: Server) -> list[Server]:
        """The running members that answer and say they replicate `primary` now."""
        found = []
        for node in self._running():
            try:
                info = node.probe().info("replication")
            except (redis.RedisError, OSError):
                continue
            if info["role"] == "slave" and int(info["master_port"]) == primary.port:
                found.append(node)
        return found

    @staticmethod
    def slot_ranges(node: Server) -> list[tuple[int, int]]:
        """The slot ranges `node` serves, by its own account (CLUSTER NODES, its `myself` line)."""
        return _own_slots(node)

    def slot_counts(self) -> dict[Server, int]:
        """How many slots each serving primary owns, by its own account."""
        return {n: sum(hi - lo + 1 for lo, hi in _own_slots(n)) for n in self.serving_primaries()}

    def config_set(self, **directives: Any) -> None:
        """CONFIG SET `directives` (`cluster_node_timeout=500`; underscores become dashes) on every running
        member, and keep them in every member's configuration, so that a member restarted or added later
        starts with them too."""
        if not directives:
            raise ConfigError("config_set needs at least one directive, e.g. cluster_node_timeout=500.")
        settings = {k.replace("_", "-"): _config_value(v) for k, v in directives.items()}
        for node in self._running():
            with node.client() as admin:
                for name, value in settings.items():
                    admin.config_set(name, value)
        for node in self.servers:
            node.config.update(settings)
        self.config |= settings

    # -- changing the topology ------------------------------------------------------------------------------
    def add_node(self, *, replica_of: Server | None = None) -> Server:
        """Start a new member with the cluster's password and settings, introduce it (CLUSTER MEET) and wait
        until every running member knows it. A new primary serves no slot until some are moved to it
        (`migrate_slots`, `rebalance`); with `replica_of`, it replicates that primary and is synced on return.

        Example:
            >>> fourth = topo.add_node()
            >>> topo.rebalance()  # every primary gets 16384 / 4 slots
        """
        if replica_of is not None:
            self._check_member(replica_of, "replica_of", primary=True)
        node = self._add(self._new_member(self.servers[0].password))
        try:
            with self._running()[0].client() as admin:
                admin.cluster("meet", HOST, node.port)
            self._wait_all_known()
            if replica_of is not None:
                self._replicate(node, replica_of)
            self.wait_healthy()  # a new primary says cluster_state:fail for a moment (its rejoin delay)
        except BaseException:
            self.servers.remove(node)
            node.stop()
            raise
        (self.replicas if replica_of is not None else self.primaries).append(node)
        return node

    def remove_node(self, node: Server) -> None:
        """Remove a replica, or a primary that serves no slot and has no replica: every other member forgets
        it (CLUSTER FORGET), then it stops.

        Raises:
            ConfigError: `node` is not a member, or still serves slots (move them first: `migrate_slots`),
                or still has replicas (remove those first).
        """
        self._check_member(node, "node")
        if node.is_running() and _role(node) == "master":
            owned = sum(hi - lo + 1 for lo, hi in _own_slots(node))
            if owned:
                raise ConfigError(f"node {node.port} still serves {owned} slots: move them to another primary "
                                  "first (migrate_slots or rebalance), then remove it.")
            if self.replicas_of(node):
                raise ConfigError(f"node {node.port} still has replicas: remove them first.")
        node_id = self.node_id(node) if node.is_running() else None
        node.stop()
        self.servers.remove(node)
        for group in (self.primaries, self.replicas):
            if node in group:
                group.remove(node)
        if node_id:
            for other in self._running():
                with other.client() as admin:
                    admin.cluster("forget", node_id)
        self._wait_all_known()

    # -- moving slots ---------------------------------------------------------------------------------------
    def migrate_slots(self, first: int, last: int, target: Server, *, atomic: bool | None = None,
                      timeout: float = 60) -> Migration:
        """Move slots `first`..`last` (inclusive), with their keys, from whichever primaries serve them to
        `target`, while clients keep working, and return once every serving primary agrees.

        `atomic=None` uses `CLUSTER MIGRATESLOTS` where the engine has it (Valkey 9+: the target copies the
        slots in the background and takes them over at once), else the step-by-step protocol: `CLUSTER SETSLOT
        IMPORTING` on the target, `MIGRATING` on the source, `MIGRATE` of the keys in batches, then `SETSLOT
        NODE` on the target, the source and every other primary. `atomic=False` forces the steps.

        Raises:
            ConfigError: a bad range, a target that is not a serving primary of this cluster, or `atomic=True`
                on an engine without CLUSTER MIGRATESLOTS.
        """
        _check_slot(first, "first")
        _check_slot(last, "last")
        if last < first:
            raise ConfigError(f"last ({last}) must be at least first ({first}).")
        self._check_member(target, "target", primary=True)
        validate.seconds(timeout, "timeout")
        supported = _has_token(target.probe(), "CLUSTER", "cluster|migrateslots")
        if atomic and not supported:
            raise ConfigError("atomic=True needs CLUSTER MIGRATESLOTS (Valkey 9+), which this engine lacks: pass "
                              "atomic=None (the steps here) or False.")
        atomic = supported if atomic is None else bool(atomic)
        started = time.monotonic()
        by_source = self._sources(first, last, target)
        keys = sum(_count_keys(src, slots) for src, slots in by_source.items())
        for source, slots in by_source.items():
            if atomic:
                self._migrate_atomically(source, slots, target, timeout)
            else:
                self._migrate_step_by_step(source, slots, target)
        wait_until(lambda: self._all_agree(first, last, target), timeout, f"every primary to see slots {first}-"
                   f"{last} on {target.port}")
        return Migration(first, last, tuple(s.port for s in by_source), target.port, keys, atomic,
                         time.monotonic() - started)

    def rebalance(self, among: Iterable[Server] | None = None, *, atomic: bool | None = None) -> list[Migration]:
        """Give every primary in `among` (default: every serving primary) an equal share of the slots (the first
        ones one more when 16384 does not divide), moving the highest slots of those above their share, and
        every slot of a serving primary left out of `among`, to those below (`migrate_slots`). A primary left
        with no slot becomes a replica of the one that took its last slot (`cluster-allow-replica-migration`,
        on by default): `remove_node` then removes it.

        Example:
            >>> topo.rebalance(among=[n for n in topo.serving_primaries() if n is not leaving])
            >>> topo.remove_node(leaving)
        """
        serving = self.serving_primaries()
        chosen = serving if among is None else list(among)
        for node in chosen:
            self._check_member(node, "among", primary=True)
        if not chosen:
            raise ConfigError("among must name at least one serving primary.")
        primaries = sorted(chosen, key=lambda n: n.port)
        leaving = [n for n in serving if n not in primaries]
        owned = {n: list(_slots_of(n)) for n in primaries}
        share = {n: CLUSTER_SLOTS // len(primaries) + (i < CLUSTER_SLOTS % len(primaries))
                 for i, n in enumerate(primaries)}
        spare = [slot for n in primaries for slot in owned[n][share[n]:]]  # each donor's highest slots
        spare += [slot for n in leaving for slot in _slots_of(n)]
        moves = []
        for receiver in primaries:
            missing = share[receiver] - len(owned[receiver])
            if missing > 0:
                taken, spare = spare[:missing], spare[missing:]
                moves += [(lo, hi, receiver) for lo, hi in _runs(sorted(taken))]
        return [self.migrate_slots(lo, hi, receiver, atomic=atomic) for lo, hi, receiver in moves]

    def _sources(self, first: int, last: int, target: Server) -> dict[Server, list[int]]:
        by_source: dict[Server, list[int]] = {}
        for node in self.serving_primaries():
            if node is target:
                continue
            owned = [s for lo, hi in _own_slots(node) for s in range(max(lo, first), min(hi, last) + 1)]
            if owned:
                by_source[node] = owned
        return by_source

    def _migrate_atomically(self, source: Server, slots: list[int], target: Server, timeout: float) -> None:
        with source.client() as admin:
            before = {job["name"] for job in admin.execute_command("CLUSTER", "GETSLOTMIGRATIONS")}
            ranges = [bound for lo, hi in _runs(slots) for bound in (lo, hi)]
            admin.execute_command("CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", *ranges, "NODE", self.node_id(target))

            def finished() -> bool:
                jobs = [j for j in admin.execute_command("CLUSTER", "GETSLOTMIGRATIONS") if j["name"] not in before]
                failed = [j for j in jobs if j["state"] in MIGRATION_FAILED]
                if failed:
                    raise ServerUnavailable(f"CLUSTER MIGRATESLOTS to {target.port} {failed[0]['state']}: "
                                            f"{failed[0].get('message') or 'no message'}")
                return bool(jobs) and all(j["state"] == MIGRATION_DONE for j in jobs)

            _wait_raising(finished, timeout, f"CLUSTER MIGRATESLOTS from {source.port} to {target.port}")

    def _migrate_step_by_step(self, source: Server, slots: list[int], target: Server) -> None:
        source_id, target_id = self.node_id(source), self.node_id(target)
        others = [n for n in self.serving_primaries() if n not in (source, target)]
        timeout = ["TIMEOUT", SETSLOT_TIMEOUT_MS] if "TIMEOUT" in _tokens(source.probe(), "CLUSTER") else []
        with _Parallel() as parallel:
            for i in range(0, len(slots), MIGRATE_BATCH):
                batch = slots[i:i + MIGRATE_BATCH]
                parallel.run(target, batch, _setslot, "IMPORTING", source_id, timeout)
                parallel.run(source, batch, _setslot, "MIGRATING", target_id, timeout)
                parallel.run(source, batch, _migrate_keys, target)
                for node in (target, source, *others):  # the target first: it must own the slots before anyone
                    parallel.run(node, batch, _setslot, "NODE", target_id, timeout)  # else sends clients there

    def _all_agree(self, first: int, last: int, target: Server) -> bool:
        target_id = self.node_id(target)
        return all(_slot_view(n, first, last) == {target_id} for n in self.serving_primaries())

    def _check_member(self, node: Any, what: str, *, primary: bool = False) -> None:
        if not isinstance(node, Server) or node not in self.servers:
            raise ConfigError(f"{what} must be a member of this cluster (one of its .servers), got {node!r}.")
        if primary and (not node.is_running() or _role(node) != "master"):
            raise ConfigError(f"{what} must be a running primary of this cluster; port {node.port} is not one now.")


@dataclass(frozen=True)
class Migration:
    """What `Cluster.migrate_slots` did: the range, where from and to (ports), the keys the range held when it
    started, whether CLUSTER MIGRATESLOTS did it, and how long it took until every primary agreed."""

    first: int
    last: int
    sources: tuple[int, ...]
    target: int
    keys: int
    atomic: bool
    seconds: float

    @property
    def slots(self) -> int:
        return self.last - self.first + 1


def _check_slot(value: Any, what: str) -> int:
    validate.integer(value, what, minimum=0)
    if value >= CLUSTER_SLOTS:
        raise ConfigError(f"{what} is a hash slot, 0 to {CLUSTER_SLOTS - 1}; got {value!r}.")
    return value


def _config_value(value: Any) -> Any:
    return ("yes" if value else "no") if isinstance(value, bool) else value


def _role(node: Server) -> str | None:
    try:
        return node.probe().info("replication")["role"]
    except (redis.RedisError, OSError):
        return None


def _wait_raising(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_until`, except that a LabkitError the predicate raises ends the wait at once."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ServerUnavailable(f"Timed out after {timeout:.0f} s waiting for {what}.")
        time.sleep(0.01)


def _runs(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted slots as (first, last) runs of consecutive numbers."""
    runs: list[list[int]] = []
    for slot in slots:
        if runs and slot == runs[-1][1] + 1:
            runs[-1][1] = slot
        else:
            runs.append([slot, slot])
    return [(lo, hi) for lo, hi in runs]


def _slots_of(node: Server) -> Iterable[int]:
    return (s for lo, hi in _own_slots(node) for s in range(lo, hi + 1))


def _count_keys(node: Server, slots: list[int]) -> int:
    with node.client() as admin:
        pipe = admin.pipeline(transaction=False)
        for slot in slots:
            pipe.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot)
        return sum(pipe.execute())


class _Parallel:
    """Runs a step of a migration for many slots over several connections at once. Since Valkey 8 each
    CLUSTER SETSLOT waits until the node's replicas have it, about a millisecond: one connection would pay
    that wait slot after slot; many connections pay it together."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(MIGRATE_CONNECTIONS, thread_name_prefix="labkit-migrate")
        self._clients: dict[int, redis.Redis] = {}

    def run(self, node: Server, slots: list[int], step: Callable[..., None], *args: Any) -> None:
        """`step(client, some_slots, *args)` on `node`, the slots dealt over the connections."""
        if node.port not in self._clients:
            self._clients[node.port] = node.client(max_connections=MIGRATE_CONNECTIONS)
        client = self._clients[node.port]
        chunks = [slots[i::MIGRATE_CONNECTIONS] for i in range(min(MIGRATE_CONNECTIONS, len(slots)))]
        for done in [self._pool.submit(step, client, chunk, *args) for chunk in chunks]:
            done.result()

    def __enter__(self) -> _Parallel:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown()
        for client in self._clients.values():
            client.close()


def _setslot(client: redis.Redis, slots: list[int], state: str, node_id: str, timeout: list) -> None:
    """CLUSTER SETSLOT for each slot, pipelined. Since Valkey 8 the node first waits until its replicas have the
    change, 2 s at most by default: on a busy machine that can pass, and the node answers NOREPLICAS without
    changing anything. So the wait is stated (TIMEOUT, where the engine takes it) and a refused slot is asked
    again. A node that has turned replica meanwhile refuses SETSLOT NODE: that is a source that lost its last
    slot (a primary left with none follows the node that took it, `cluster-allow-replica-migration`); it learns
    the new owner from the cluster bus, so that refusal is fine, and so is the error (or the closed connection)
    of a SETSLOT NODE that was waiting for the replicas when the node turned replica."""
    pending = list(slots)
    for attempt in range(SETSLOT_ATTEMPTS):
        pipe = client.pipeline(transaction=False)
        for slot in pending:
            pipe.execute_command("CLUSTER", "SETSLOT", slot, state, node_id, *timeout)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.ConnectionError:  # Valkey 8 may close it instead
            if state == "NODE" and client.info("replication")["role"] == "slave":
                return
            raise
        refused = []
        for slot, reply in zip(pending, replies, strict=True):
            if not isinstance(reply, Exception) or (state == "NODE" and any(w in str(reply) for w in TURNED_REPLICA)):
                continue
            if not str(reply).startswith("NOREPLICAS") or attempt == SETSLOT_ATTEMPTS - 1:
                raise reply
            refused.append(slot)
        if not refused:
            return
        pending = refused


def _migrate_keys(src: redis.Redis, slots: list[int], target: Server) -> None:
    for slot in slots:
        while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_KEYS):
            src.execute_command("MIGRATE", target.host, target.port, "", 0, MIGRATE_TIMEOUT_MS,
                                "AUTH", target.password, "KEYS", *keys)


def _slot_view(node: Server, first: int, last: int) -> set[str]:
    """The ids of the nodes that `node` believes serve slots first..last ("(unassigned)" for a gap)."""
    owners, covered = set(), 0
    for line in node.probe().execute_command("CLUSTER", "NODES").splitlines():
        fields = line.split()
        for lo, hi in _ranges(fields[8:]):
            overlap = min(hi, last) - max(lo, first) + 1
            if overlap > 0:
                owners.add(fields[0])
                covered += overlap
    return owners if covered == last - first + 1 else owners | {"(unassigned)"}


def _known_ports(node: Server) -> set[int]:
    """The ports of the nodes `node` knows, itself included (a lone node does not know its own address yet)."""
    return {int(address.rsplit(":", 1)[1].split("@")[0]) for address in _cluster_nodes(node)}


def _roles_seen(node: Server, ports: set[int]) -> dict[int, str]:
    """Who `node` takes for a primary and a replica (and of which node id), among the members on `ports`."""
    seen = {}
    for address, fields in _cluster_nodes(node).items():
        port = int(address.rsplit(":", 1)[1].split("@")[0])
        if port in ports:
            seen[port] = f"replica of {fields['master_id']}" if "slave" in fields["flags"] else "primary"
    return seen


def _cluster_nodes(node: Server) -> dict:
    return node.probe().cluster("nodes")


def _serves(node: Server, slot: int) -> bool:
    return any(lo <= slot <= hi for lo, hi in _own_slots(node))


def _own_slots(node: Server) -> list[tuple[int, int]]:
    line = next(ln for ln in node.probe().execute_command("CLUSTER", "NODES").splitlines() if "myself" in ln)
    return _ranges(line.split()[8:])


def _ranges(parts: list[str]) -> list[tuple[int, int]]:
    """Slot ranges from the slot fields of a CLUSTER NODES line ("0-5460", "7"; "[...]" migrations skipped)."""
    ranges = []
    for part in parts:
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
        validate.integer(n, "n")
        config = directives_only(config)
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
