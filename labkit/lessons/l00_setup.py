"""Lesson 00, setup and tour (`notebooks/00_setup.ipynb`): the picture of a command's way to the server,
the command-line client beside redis-py, what each lesson needs from a server, the plots, and the
exercise check."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import redis
from matplotlib.patches import FancyBboxPatch

from labkit.clients import text
from labkit.errors import ConfigError, LabkitError
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import cli_path

GREETING = "hello"
GREETING_TTL_S = 60
LESSON_MODULES = Path(__file__).resolve().parent
NOTEBOOKS = LESSON_MODULES.parents[1] / "notebooks"


# -- 0.2 one command's way to the server --------------------------------------------------------------
def wire_bytes(r: redis.Redis, *command: object) -> bytes:
    """The bytes redis-py writes to the socket for `command` (RESP: an array of bulk strings)."""
    conn = r.connection_pool.get_connection()
    try:
        return b"".join(conn.pack_command(*command))
    finally:
        r.connection_pool.release(conn)


def draw_path(call: str, command: str, wire: bytes, address: str) -> None:
    """The way of one command: the notebook's call, redis-py's command and bytes, TCP, the server."""
    shown = repr(wire[:30])[2:-1] + ("…" if len(wire) > 30 else "")
    boxes = [("this notebook", textwrap.fill(call, 26)),
             ("redis-py", f"{textwrap.fill(command, 26)}\n\nas RESP bytes:\n{textwrap.fill(shown, 26)}"),
             ("TCP", f"{address}\n(the loopback\ninterface here)"),
             ("the server", "one thread runs\none command at a time;\nkeys live in memory")]
    _, ax = plt.subplots(figsize=(12, 2.8))
    width, gap = 2.6, 0.55
    for i, (title, body) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.1), width, 1.6, boxstyle="round,pad=0.05",
                                    facecolor=["#dbe9f6", "#e3f1e0", "#f3f3f3", "#fbe5d6"][i], edgecolor="gray"))
        ax.text(x + width / 2, 1.5, title, ha="center", va="center", fontsize=10, weight="bold")
        ax.text(x + width / 2, 0.75, body.replace("$", r"\$"), ha="center", va="center", fontsize=7.5,
                family="monospace")  # (a $ would start matplotlib's math mode)
        if i:
            left = x - gap
            ax.annotate("", xy=(x - 0.03, 1.05), xytext=(left + 0.03, 1.05), arrowprops={"arrowstyle": "->"})
            ax.annotate("", xy=(left + 0.03, 0.45), xytext=(x - 0.03, 0.45),
                        arrowprops={"arrowstyle": "->", "color": "gray"})
            ax.text(x - gap / 2, 1.15, "command", ha="center", fontsize=6.5)
            ax.text(x - gap / 2, 0.3, "reply", ha="center", fontsize=6.5, color="gray")
    ax.set(xlim=(-0.1, 4 * width + 3 * gap + 0.1), ylim=(0, 1.85))
    ax.axis("off")
    plt.show()


# -- 0.4 the command-line client ----------------------------------------------------------------------
def cli_words(r: redis.Redis) -> tuple[list[str], dict[str, str]]:
    """The words that start the command-line client (`valkey-cli`) against the server `r` talks to, and the
    environment that carries its password (never on the command line, where `ps` would show it)."""
    kwargs = r.connection_pool.connection_kwargs
    if "host" not in kwargs or kwargs.get("ssl") or "SSL" in r.connection_pool.connection_class.__name__:
        raise ConfigError("the command-line client here speaks plain TCP only: connect to a host and port without "
                          "TLS (the lab server, or a compose service) to use it.")
    words = [str(cli_path()), "-h", str(kwargs["host"]), "-p", str(kwargs["port"]), "-n", str(kwargs.get("db") or 0)]
    if kwargs.get("username"):
        words += ["--user", str(kwargs["username"])]
    password = kwargs.get("password")
    env = dict(os.environ) | ({"REDISCLI_AUTH": str(password), "VALKEYCLI_AUTH": str(password)} if password else {})
    return words, env


def cli(r: redis.Redis, *command: str) -> str:
    """Run one command with the command-line client against `r`'s server; its output, as a terminal would
    show it (`--no-raw`: `"quoted"` strings, `(integer)`, `(nil)`, `(error) ...`). A client that cannot
    connect or log in raises `LabkitError` with its message."""
    words, env = cli_words(r)
    done = subprocess.run([*words, "--no-raw", *command], capture_output=True, text=True, env=env, timeout=30)
    if done.returncode != 0 or "AUTH failed" in done.stderr:  # (a wrong password still exits with 0)
        raise LabkitError(f"{Path(words[0]).name} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout.rstrip("\n")


# -- 0.5 a round trip ---------------------------------------------------------------------------------
def time_single_pings(r: redis.Redis, n: int) -> list[float]:
    """Microseconds of each of `n` single PINGs, one round trip each."""
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        r.ping()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def time_pipelined_pings(r: redis.Redis, n: int) -> float:
    """Microseconds for `n` PINGs sent in one pipeline (one round trip)."""
    started = time.perf_counter_ns()
    with r.pipeline(transaction=False) as pipe:
        for _ in range(n):
            pipe.ping()
        pipe.execute()
    return (time.perf_counter_ns() - started) / 1000


def plot_pings(samples_us: Sequence[float]) -> None:
    """Single PING round trips as a histogram (log scale), median and p99 marked."""
    p50, p99 = np.percentile(samples_us, [50, 99])
    _, ax = plt.subplots(figsize=(7, 2.8))
    ax.hist(samples_us, bins=np.geomspace(min(samples_us), max(samples_us), 40), color="tab:blue")
    ax.set_xscale("log")
    ax.axvline(p50, color="black", linestyle="--", label=f"median {p50:.0f} µs")
    ax.axvline(p99, color="tab:red", linestyle=":", label=f"p99 {p99:.0f} µs")
    ax.set(title=f"{len(samples_us)} single PINGs", xlabel="round trip (µs, log scale)", ylabel="count")
    ax.legend()
    plt.show()


# -- 0.7 what each lesson needs from a server -----------------------------------------------------------
NEEDS = {  # need: (how the code shows it, also looked for in the lesson's module)
    "starts servers of its own on this machine": (r"\b(spawn|cluster|nodes|replicated|sentinel|cache_server)\(", True),
    "CONFIG on the lab server": (r"\br\.config_\w+\(", False),
    "ACL users on the lab server": (r"\br\.acl_\w+\(", False),
    "functions (FUNCTION LOAD) on the lab server": (r"\br\.(function_\w+|fcall\w*)\(", False),
    "the search and JSON modules on the lab server": (r"\bMissingModule\b|\bcreate_index\(", False),
}


def notebook_code(path: Path) -> str:
    """The code cells of a notebook, joined (read as JSON: no nbformat needed)."""
    cells = json.loads(path.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def lesson_needs(notebooks: Path = NOTEBOOKS, modules: Path = LESSON_MODULES) -> dict[str, list[str]]:
    """For each lesson `NN_name.ipynb` in `notebooks`, what it needs beyond data commands and Lua scripts on
    the lab server, read from its code cells (and, for the servers it starts, from `modules/lNN_name.py`).
    Calls made through a helper on the lab client are not seen: the notebooks show their commands."""
    if not notebooks.is_dir():
        raise ConfigError(f"no notebooks at {notebooks}: run this from a checkout of the lab.")
    found = {}
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        code = notebook_code(path)
        module = modules / f"l{path.stem}.py"
        module_code = module.read_text() if module.exists() else ""
        found[path.stem] = [need for need, (pattern, in_module) in NEEDS.items()
                            if re.search(pattern, code) or (in_module and re.search(pattern, module_code))]
    return found


def needs_table(needs: dict[str, list[str]]) -> str:
    """The lessons' needs as a Markdown table, one column per need."""
    short = ["starts its own servers", "CONFIG on your server", "ACL on your server", "FUNCTION on your server",
             "search, JSON on your server"]
    rows = ["| lesson | " + " | ".join(short) + " |", "|---|" + "---|" * len(short)]
    for lesson, found in needs.items():
        rows.append(f"| {lesson} | " + " | ".join("✔" if need in found else "" for need in NEEDS) + " |")
    return "\n".join(rows)


# -- exercise check -----------------------------------------------------------------------------------
@check
def check_greeting(r: redis.Redis, key: str) -> Result:
    """`key` holds the string "hello" and expires by itself within 60 seconds."""
    kind = text(r.type(key))
    if kind == "none":
        return Result(False, f"there is no key {key!r}; write it with r.set(...) using exactly that key.")
    if kind != "string":
        return Result(False, f"{key!r} holds a {kind}, not a string: store a string with "
                             f"r.set(key, {GREETING!r}, ex=60).")
    value = r.get(key)
    value = text(value)
    ttl_ms = r.pttl(key)
    problems = []
    if value != GREETING:
        problems.append(f"the value is {value!r}, expected {GREETING!r}.")
    if ttl_ms == -1:
        problems.append("the key never expires: give it a time to live (SET ... EX 60, or r.set(key, v, ex=60)).")
    elif ttl_ms > GREETING_TTL_S * 1000:
        problems.append(
            f"it expires in {ttl_ms / 1000:,.0f} s, more than {GREETING_TTL_S} s: EX takes seconds, PX milliseconds."
        )
    return verdict(problems, f"{key} = {value!r}, expiring in {ttl_ms / 1000:.1f} s.")
