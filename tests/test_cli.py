"""`python -m labkit ...` as a user runs it: in a subprocess, against real servers."""

import json
import os
import re
import subprocess
import sys

import pytest

from labkit.server import available_engines, find_engine, spawn
from labkit.server.binaries import DEFAULT_ENGINE
from labkit.server.lab import URL_ENV


def labkit_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "labkit", *args], capture_output=True, text=True, timeout=120, env=env)


def _env_without_url(lab_home):
    import os

    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    return env | {"LABKIT_HOME": str(lab_home)}


def test_server_start_status_stop(lab_home):
    env = _env_without_url(lab_home)
    started = labkit_cli("server", "start", env=env)
    engine = find_engine()  # LABKIT_ENGINE's, else valkey9
    assert started.returncode == 0 and f"lab server: {engine.name} {engine.version}" in started.stdout
    assert "****" in started.stdout
    assert labkit_cli("server", "status", env=env).returncode == 0
    url = labkit_cli("url", env=env).stdout.strip()
    assert url.startswith("redis://:") and "****" not in url
    assert labkit_cli("server", "stop", env=env).stdout.strip() == "lab server stopped."
    assert labkit_cli("server", "status", env=env).returncode == 3


def test_server_start_honours_labkit_engine_and_keeps_each_engines_data_apart(lab_home):
    others = sorted(set(available_engines()) - {DEFAULT_ENGINE})
    if not others:
        pytest.skip("only the default engine is installed here")
    other = others[0]
    env = _env_without_url(lab_home) | {"LABKIT_ENGINE": other}
    try:
        started = labkit_cli("server", "start", env=env)
        assert f"lab server: {other} " in started.stdout and "was asked for" not in started.stdout
        assert json.loads((lab_home / ".labkit" / "server.json").read_text())["dir"] == str(
            lab_home / ".labkit" / f"data-{other}")
        again = labkit_cli("server", "start", env=env | {"LABKIT_ENGINE": DEFAULT_ENGINE})
        assert f"lab server: {other} " in again.stdout  # reused, and it says how to switch
        assert f"note: {DEFAULT_ENGINE} was asked for" in again.stdout and "server stop" in again.stdout
    finally:
        labkit_cli("server", "stop", env=env)


@pytest.mark.parametrize("password", ["recorded", "stale"])
def test_server_stop_signals_nothing_but_the_recorded_lab_server(lab_home, password):
    """The recorded server is gone: its pid now belongs to another process, and another server listens on
    its port (with the recorded password, or another one). `stop` must signal neither of them."""
    with spawn(modules=False) as other:
        bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        try:
            recorded = other.password if password == "recorded" else "a-stale-password"
            state = {"url": f"redis://:{recorded}@127.0.0.1:{other.port}/0", "port": other.port,
                     "password": recorded, "pid": bystander.pid, "engine": "valkey9", "dir": str(lab_home)}
            (lab_home / ".labkit").mkdir()
            (lab_home / ".labkit" / "server.json").write_text(json.dumps(state))
            out = labkit_cli("server", "stop", env=_env_without_url(lab_home))
            assert out.returncode == 0 and out.stdout.strip() == "no lab server was running."
            assert bystander.poll() is None and other.is_running() and other.client().ping()
            assert not (lab_home / ".labkit" / "server.json").exists()  # the stale record is gone
        finally:
            bystander.kill()
            bystander.wait()


def test_reset_deletes_lab_keys_on_the_lab_server_only():
    """On a server of its own: reset deletes every lab:* key, which would disturb lessons running meanwhile."""
    import os

    with spawn(modules=False) as srv:
        r = srv.client()
        r.mset({"lab:cli-test:a": 1, "lab:cli-test:b": 2, "cli-test-outside": 3})
        env = {k: v for k, v in os.environ.items() if k != "LABKIT_USER"}  # a learner's reset: test_workshop.py
        out = labkit_cli("reset", env=env | {URL_ENV: srv.url})
        assert out.returncode == 0 and "deleted 2 lab key(s)" in out.stdout
        assert r.exists("lab:cli-test:a", "lab:cli-test:b") == 0
        assert r.get("cli-test-outside") == "3"


def test_reset_without_a_lab_server_touches_nothing(lab_home):
    out = labkit_cli("reset", env=_env_without_url(lab_home))
    assert out.returncode == 0 and "nothing to reset" in out.stdout


def test_doctor_reports_every_requirement():
    out = labkit_cli("doctor")
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ["python", "packages", "server binary", "search and JSON modules", "embedded server starts"]:
        assert f"[OK]   {name}:" in out.stdout
    assert "All requirements met." in out.stdout
    assert "embedding model (optional):" in out.stdout


def test_doctor_lists_every_engine_with_its_version_and_modules():
    from labkit.server import available_engines
    from labkit.server.binaries import ENGINES

    out = labkit_cli("doctor", env=dict(os.environ) | {"LABKIT_ENGINE": "valkey8"})
    lines = {m[1]: m[0] for m in re.finditer(r"^\[\w+\]\s+engine (\w+): .*$", out.stdout, re.M)}
    assert set(lines) == set(ENGINES)
    for name, engine in available_engines().items():
        assert lines[name].startswith(f"[OK]   engine {name}: ") and f" {engine.version}, modules: " in lines[name]
    assert "(in use: LABKIT_ENGINE)" in lines["valkey8"]
    for name in set(ENGINES) - set(available_engines()):
        assert lines[name].startswith(f"[INFO] engine {name}: not installed")


def test_doctor_fails_with_a_fix_when_the_url_is_wrong(tmp_path):
    import os

    env = dict(os.environ) | {URL_ENV: "redis://:pw@127.0.0.1:1/0"}
    out = labkit_cli("doctor", env=env)
    assert out.returncode == 1
    assert f"[FAIL] {URL_ENV}" in out.stdout and "fix:" in out.stdout and "pw@" not in out.stdout


def test_doctor_reports_an_unusable_temp_directory_and_an_unknown_engine_with_their_fixes(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    out = labkit_cli("doctor", env=dict(os.environ) | {"LABKIT_TMP": str(not_a_dir)})
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"[FAIL] temp directory: LABKIT_TMP={not_a_dir} is not a directory" in out.stdout
    assert "pip install" not in out.stdout.split("[FAIL] embedded server starts")[1].splitlines()[1]
    out = labkit_cli("doctor", env=dict(os.environ) | {"LABKIT_ENGINE": "nosuch"})
    assert out.returncode == 1 and "[FAIL] server binary: Unknown engine 'nosuch'" in out.stdout
    fixes = [line for line in out.stdout.splitlines() if "fix:" in line][:2]
    assert all("set LABKIT_ENGINE to one of valkey9" in line for line in fixes), fixes


def test_errors_are_one_line_not_a_traceback(lab_home):
    env = _env_without_url(lab_home) | {"LABKIT_ENGINE": "memcached"}
    out = labkit_cli("server", "start", env=env)
    assert out.returncode == 2 and out.stderr.startswith("error: Unknown engine") and "Traceback" not in out.stderr


def test_bench_rejects_an_unknown_suite_and_lists_the_valid_ones():
    out = labkit_cli("bench", "server", "nope")
    assert out.returncode == 2 and "unknown suite 'nope'" in out.stderr
    assert "server, ceiling, ratelimit, cache, streams, locks, vectors" in out.stderr


def test_bench_runs_every_suite_without_arguments_or_the_named_ones():
    from labkit.__main__ import parser

    assert parser().parse_args(["bench"]).suites == []
    assert parser().parse_args(["bench", "locks", "server"]).suites == ["locks", "server"]


def test_bench_prints_ratios_and_writes_the_results_file_under_the_checkout(lab_home, monkeypatch, capsys):
    """In process, with a stand-in `server` suite (canned rows; the suites are tested in tests/bench)."""
    from labkit import bench
    from labkit.__main__ import main

    rows = [bench.Row("server", "spawn", "a", 40, "ms", baseline=True), bench.Row("server", "spawn", "b", 10, "ms")]
    monkeypatch.setitem(bench.SUITES, "server", lambda: rows)
    assert main(["bench", "server"]) == 0
    assert "server: spawn (ms, ratio to a)" in capsys.readouterr().out
    document = json.loads((lab_home / "build" / "bench" / "results.json").read_text())
    assert document["suites"] == ["server"] and [bench.Row(**row) for row in document["rows"]] == rows
