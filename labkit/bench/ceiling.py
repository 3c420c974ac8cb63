"""Suite `ceiling`: the server's own single-client rate, one request in flight (`-c 1 -P 1`), on the same
kind of embedded server the other suites use, so that every rate they report can be read as a fraction of
what the server allows one client.

Measured with `valkey-benchmark` or `redis-benchmark` where one is installed, else with a pipelined
redis-py loop (which states the pipeline depth in its name). redis-benchmark reads no password from its
environment (7.0 checked: redis-cli's REDISCLI_AUTH is not read), and `-a` would show the server's password
to anyone running `ps`: the tool logs in instead as a temporary ACL user without a password, allowed nothing
but GET, SET and PING on the one key it uses (`key:__rand_int__`), deleted as soon as the tool exits.
"""

from __future__ import annotations

import csv
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import redis

from labkit.bench.core import CEILING_SUITE, Row
from labkit.errors import LabkitError
from labkit.server.binaries import Engine
from labkit.server.process import Server

SUITE = CEILING_SUITE
METRIC = "one client, one request in flight (-c 1 -P 1)"
TOOLS = ("valkey-benchmark", "redis-benchmark")
USER = "labkit-ceiling"  # the temporary user the benchmark tool logs in as
BENCH_KEY = "key:__rand_int__"  # the key redis-benchmark's GET and SET use without -r
PIPELINE = 100  # the fallback's commands per round trip


def find_tool(engine: Engine) -> Path | None:
    """A benchmark tool beside the engine's binaries, else on PATH, else None."""
    for tool in TOOLS:
        for folder in (engine.server.parent, engine.cli.parent):
            if (folder / tool).is_file():
                return folder / tool
        if found := shutil.which(tool):
            return Path(found)
    return None


def _tool_version(tool: Path) -> str:
    out = subprocess.run([str(tool), "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    return f"{tool.name} {out[1] if len(out) > 1 else '?'}"


def tool_command(server: Server, tool: Path, requests: int) -> list[str]:
    """The tool's command line: the temporary user and an empty password (the user has none), never the
    server's password."""
    return [str(tool), "-h", server.host, "-p", str(server.port), "--user", USER, "-a", "", "-c", "1", "-P", "1",
            "-n", str(requests), "-t", "set,get", "--csv"]


def _with_tool(server: Server, r: redis.Redis, tool: Path, requests: int) -> dict[str, float]:
    """GET and SET requests per second from the tool, logged in as the temporary user."""
    r.acl_setuser(USER, enabled=True, nopass=True, reset=True, keys=[BENCH_KEY], commands=["+get", "+set", "+ping"])
    try:
        done = subprocess.run(tool_command(server, tool, requests), capture_output=True, text=True, timeout=300)
    finally:
        r.acl_deluser(USER)
    rates = {line["test"]: float(line["rps"]) for line in csv.DictReader(done.stdout.splitlines()) if "rps" in line}
    if done.returncode != 0 or set(rates) != {"GET", "SET"}:
        raise LabkitError(f"{tool.name} failed (exit {done.returncode}): {done.stderr.strip()[-300:]}")
    return rates


def _with_pipeline(r: redis.Redis, requests: int) -> dict[str, float]:
    """GET and SET requests per second from redis-py, PIPELINE commands per round trip."""
    rates = {}
    for command, call in (("SET", lambda p: p.set(BENCH_KEY, "xxx")), ("GET", lambda p: p.get(BENCH_KEY))):
        started = time.perf_counter()
        for _ in range(max(1, requests // PIPELINE)):
            pipe = r.pipeline(transaction=False)
            for _ in range(PIPELINE):
                call(pipe)
            pipe.execute()
        rates[command] = max(1, requests // PIPELINE) * PIPELINE / (time.perf_counter() - started)
    return rates


def _redis_py_get(r: redis.Redis, requests: int) -> float:
    """GETs per second from the lab's client, one request in flight."""
    started = time.perf_counter()
    for _ in range(requests):
        r.get(BENCH_KEY)
    return requests / (time.perf_counter() - started)


def run(requests: int = 50_000, rounds: int = 5, use_tool: bool = True) -> list[Row]:
    """The server's GET rate for one client with one request in flight (the baseline: the ceiling that the
    other suites' rates are read against) and its SET rate, each contender named with the engine, its
    version and the tool (`use_tool=False`: the pipelined redis-py loop); then redis-py's own GET loop on the
    same server, against that ceiling. `rounds` alternate the tool (requests / rounds of each command) and
    the redis-py loop (a fifth as many GETs); each row is the median of its rounds and keeps them (a busy
    spell of the machine slows one round, not the ceiling)."""
    per_round = max(1, requests // rounds)
    with Server(modules=False) as server:
        r = server.client()
        tool = find_tool(server.engine) if use_tool else None
        engine = f"{server.engine.name} {server.engine.version}"
        how = _tool_version(tool) if tool else f"redis-py, pipeline of {PIPELINE}: no benchmark tool"
        measured: dict[str, list[float]] = {"GET": [], "SET": [], "redis-py": []}
        for _ in range(rounds):
            rates = _with_tool(server, r, tool, per_round) if tool else _with_pipeline(r, per_round)
            measured["GET"].append(rates["GET"])
            measured["SET"].append(rates["SET"])
            measured["redis-py"].append(_redis_py_get(r, max(1, per_round // 5)))
        r.delete(BENCH_KEY)
    names = {"GET": f"GET, {engine} ({how})", "SET": f"SET, {engine} ({how})", "redis-py": "GET, redis-py loop"}
    return [Row(SUITE, METRIC, names[what], statistics.median(values), "requests/s", baseline=what == "GET",
                rounds=tuple(values)) for what, values in measured.items()]
