"""What a server can do, read from the server itself (lessons never test the engine's name)."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass, field

import redis

from labkit import validate
from labkit.clients import text
from labkit.errors import ConfigError, LabkitError
from labkit.server.binaries import Engine, find_engine
from labkit.server.process import free_port

MODULE_ALIASES = {"search": "search", "ft": "search", "searchlight": "search", "rejson": "json", "json": "json"}


@dataclass(frozen=True)
class Capabilities:
    """Engine, version, loaded modules and the optional commands a lesson may need."""

    engine: str
    version: str
    modules: frozenset[str] = field(default_factory=frozenset)
    commands: frozenset[str] = field(default_factory=frozenset)
    bgsave_cancel: bool = False  # BGSAVE CANCEL stops a snapshot in progress (Valkey 8.1+)
    atomic_slot_migration: bool = False  # CLUSTER MIGRATESLOTS moves slots in one step (Valkey 9.0+)
    slot_stats: bool = False  # CLUSTER SLOT-STATS: keys, CPU and bytes per slot (Valkey 8.0+)
    client_setinfo: bool = False  # CLIENT SETINFO: a client names its library for CLIENT LIST (Redis 7.2+, Valkey)
    config_names: frozenset[str] | None = frozenset()  # every CONFIG GET * name; None: this user may not read them
    info_fields: frozenset[str] = field(default_factory=frozenset)  # every INFO ALL field

    @property
    def search(self) -> bool:
        return "search" in self.modules

    @property
    def json(self) -> bool:
        return "json" in self.modules

    @property
    def hash_field_expiration(self) -> bool:
        """HEXPIRE and friends: a TTL on each field of a hash (Redis 7.4+, Valkey 9+)."""
        return "hexpire" in self.commands

    @property
    def hash_setex(self) -> bool:
        """HSETEX and HGETEX: set or read fields and their TTL in one command (Redis 8.0+, Valkey 9+)."""
        return "hsetex" in self.commands and "hgetex" in self.commands

    @property
    def vector_sets(self) -> bool:
        """The vector-set type (VADD, VSIM...): built into Redis 8, in no Valkey."""
        return "vadd" in self.commands

    @property
    def sharded_pubsub(self) -> bool:
        """SPUBLISH and SSUBSCRIBE (Redis 7.0+, every Valkey)."""
        return "spublish" in self.commands

    @property
    def set_listpack(self) -> bool:
        """Small sets of strings are stored as a listpack (Redis 7.2+, every Valkey); before, a set that is
        not all integers is a hash table from its first member. For a user who may not read CONFIG (a workshop
        learner), from the version that brought them."""
        if self.config_names is None:
            return self.engine == "valkey" or self.version_tuple >= (7, 2)
        return "set-max-listpack-entries" in self.config_names

    @property
    def waitaof(self) -> bool:
        """WAITAOF (Redis 7.2+, every Valkey): block until writes are fsynced to the AOF here and on replicas."""
        return "waitaof" in self.commands

    @property
    def waitaof_exact_under_everysec(self) -> bool:
        """Under `appendfsync everysec`, WAITAOF waits for the once-a-second fsync. Redis fixed an early
        reply in 8.0 (redis/redis#13793); Valkey (9.1 included) counts a write as fsynced once it is written
        to the file, so there the count is exact only under `appendfsync always`."""
        return self.waitaof and self.engine == "redis" and self.version_tuple >= (8,)

    @property
    def wait_counts_own_writes(self) -> bool:
        """WAIT waits for this connection's own writes only, so on a connection that wrote nothing it returns at
        once (Valkey, Redis 7.2+). Redis 7.0 and older wait for the whole stream written before the connection's
        last command, whoever wrote it."""
        return self.engine == "valkey" or self.version_tuple >= (7, 2)

    @property
    def stream_lag_exact_after_trim(self) -> bool:
        """Once a group has read past entries trimmed before it got to them, XINFO GROUPS reports lag 0 (Valkey
        8.1 and 9.1, Redis 8.2.3 measured). Redis 7.0 (7.0.15 measured) keeps counting the trimmed entries as lag
        after they are read past; Redis between 7.0 and 8.2 was not measured here, so it is not claimed."""
        return self.engine == "valkey" or self.version_tuple >= (8, 2)

    @property
    def stream_lag_counts_trim(self) -> bool:
        """Right after a trim removed entries a group had not read, XINFO GROUPS' lag counts only the entries left
        (Redis 8.2.3 measured). Valkey (8.1, 9.1) and Redis 7.0.15 go on counting the trimmed entries until the
        group reads past the gap; Redis between 7.0 and 8.2 was not measured, so it is not claimed."""
        return self.engine == "redis" and self.version_tuple >= (8, 2)

    @property
    def stream_lag_recovers_past_hole(self) -> bool:
        """Once a group has read one entry past a hole (an entry deleted inside the stream, at or after the group's
        last delivered entry), XINFO GROUPS reports its lag again (Redis 7.0.15 measured). Valkey (8.1, 9.1) and
        Redis 8.2.3 report nil until the group has read to the end of the stream, or the entries before the hole
        are gone; Redis between 7.0 and 8.2 was not measured, so recovery is not claimed there."""
        return self.engine == "redis" and self.version_tuple < (7, 2)

    @property
    def stream_ack_delete(self) -> bool:
        """XACKDEL and XDELEX, and KEEPREF/DELREF/ACKED on XADD and XTRIM: acknowledge and delete in one command,
        trim only what every group acknowledged (Redis 8.2+; Valkey 8.1 and 9.1 lack them)."""
        return "xackdel" in self.commands

    def has(self, command: str) -> bool:
        """True if the server knows `command` (case-insensitive)."""
        return validate.name(command, "command").lower() in self.commands

    def has_config(self, name: str) -> bool:
        """True if CONFIG GET knows the directive `name` (names differ across versions).

        Raises:
            LabkitError: this user may not read CONFIG (a workshop learner), so nobody can tell from here.
        """
        name = validate.name(name, "name")
        if self.config_names is None:
            raise LabkitError(f"Cannot tell whether the server has {name!r}: this user may not read CONFIG (a "
                              "workshop learner); ask capabilities() with an administrator's connection.")
        return name.lower() in self.config_names

    def has_info(self, field_name: str) -> bool:
        """True if INFO ALL reports `field_name` (fields are added across versions)."""
        return validate.name(field_name, "field_name") in self.info_fields

    def missing(self, *commands: str) -> list[str]:
        """Those of `commands` the server does not know, upper-cased, for a skip message."""
        return [c.upper() for c in commands if not self.has(c)]

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.version.split(".") if p.isdigit())

    @property
    def server(self) -> str:
        """Engine and version, as a side-by-side table labels a row: "valkey 9.1.2"."""
        return f"{self.engine} {self.version}"

    def __str__(self) -> str:
        mods = ", ".join(sorted(self.modules)) or "none"
        return f"{self.engine} {self.version} (modules: {mods})"


def capabilities(r: redis.Redis) -> Capabilities:
    """Read engine, version, modules and command table from the server `r` talks to. For a user who may not
    read the configuration (a workshop learner), `config_names` is None."""
    if not isinstance(r, redis.Redis):
        raise ConfigError(f"capabilities(r): pass a redis.Redis client (labkit.connect(), srv.client()), got {r!r}.")
    info = r.info("server")
    engine = "valkey" if info.get("server_name") == "valkey" or "valkey_version" in info else "redis"
    version = str(info.get("valkey_version") or info.get("redis_version"))
    try:
        loaded = r.execute_command("MODULE", "LIST")
    except redis.exceptions.NoPermissionError:  # a user without @admin (a workshop learner): HELLO lists them
        loaded = _hello_modules(r)
    except redis.ResponseError:
        loaded = []
    modules = {MODULE_ALIASES.get(_name(m).lower(), _name(m).lower()) for m in loaded} - {"lua"}
    commands = {text(n).lower() for n in r.command_list()}
    config_names = _config_names(r)
    info_fields = {str(text(k)) for k in r.info("all")}
    cluster_parts = _tokens(r, "CLUSTER")
    return Capabilities(engine, version, frozenset(modules), frozenset(commands), "CANCEL" in _tokens(r, "BGSAVE"),
                        "cluster|migrateslots" in cluster_parts, "cluster|slot-stats" in cluster_parts,
                        "client|setinfo" in _tokens(r, "CLIENT"), config_names, frozenset(info_fields))


def _config_names(r: redis.Redis) -> frozenset[str] | None:
    """Every CONFIG GET * name, or None for a user who may not read the configuration (a workshop learner)."""
    try:
        return frozenset(text(n).lower() for n in r.config_get("*"))
    except redis.exceptions.NoPermissionError:
        return None


def _hello_modules(r: redis.Redis) -> list:
    """The modules HELLO (without a protocol version: nothing changes) reports, as MODULE LIST would."""
    reply = r.execute_command("HELLO")
    if isinstance(reply, (list, tuple)):  # RESP2: a flat list of names and values
        reply = dict(zip(reply[::2], reply[1::2], strict=True))
    return list(reply.get("modules", reply.get(b"modules", [])))


def _has_token(r: redis.Redis, command: str, token: str) -> bool:
    """True if COMMAND DOCS lists `token` among `command`'s arguments or subcommands ("cluster|nodes")."""
    return token in _tokens(r, command)


def _tokens(r: redis.Redis, command: str) -> set[str]:
    """Every word of COMMAND DOCS `command`: its arguments' tokens, its subcommands' names (empty if unknown)."""
    try:
        return _words(r.execute_command("COMMAND DOCS", command))
    except redis.ResponseError:
        return set()


def _words(reply: object) -> set[str]:
    if isinstance(reply, dict):
        return _words(list(reply.keys())) | _words(list(reply.values()))
    if isinstance(reply, (list, tuple)):
        return set().union(*(_words(item) for item in reply)) if reply else set()
    return {str(text(reply))}


def _name(module: dict | list) -> str:
    if isinstance(module, dict):
        name = module.get("name", module.get(b"name", ""))
    else:
        name = module[module.index(b"name" if b"name" in module else "name") + 1]
    return str(text(name))


TLS_SIGNS = ("tls-cert-file", "Failed to configure TLS")  # what a build with TLS logs without a certificate
NO_TLS_SIGNS = ("TLS support", "connection type tls", "TLS not supported")  # what a build without TLS logs


@functools.cache
def _tls_built_in(server: str) -> bool:
    args = [server, "--port", "0", "--tls-port", str(free_port()), "--save", "", "--appendonly", "no",
            "--logfile", "", "--dir", "/tmp"]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=5, stdin=subprocess.DEVNULL)
        log = done.stdout + done.stderr
    except subprocess.TimeoutExpired as running:  # it kept running: serving on the TLS port, or stuck
        log = "".join(text(part or b"") for part in (running.stdout, running.stderr))
        return "Ready to accept connections" in log and not any(sign in log for sign in NO_TLS_SIGNS)
    return any(sign in log for sign in TLS_SIGNS) and not any(sign in log for sign in NO_TLS_SIGNS)


def tls_built_in(engine: Engine | str | None = None) -> bool:
    """True if the engine's binary is built with TLS. It is asked to listen on a TLS port with no
    certificate: a build without TLS refuses the port itself ("Failed finding TLS support"), a build with it
    gets further and fails on the missing certificate ("No tls-cert-file configured!"), or starts, if one is
    configured by default. Only such a positive sign counts: a binary that fails for another reason is not
    taken for a TLS build. Asked once per binary."""
    chosen = engine if isinstance(engine, Engine) else find_engine(engine)
    return _tls_built_in(str(chosen.server))
