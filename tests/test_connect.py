"""labkit.connect(): LABKIT_REDIS_URL, then this checkout's lab server, then an embedded server."""

import time

import pytest

import labkit
from labkit.server import lab
from labkit.server.lab import URL_ENV


def _port(r) -> int:
    return r.connection_pool.connection_kwargs["port"]


def test_env_url_wins(r, monkeypatch, lab_home):
    state = lab.start()
    assert _port(labkit.connect()) != state["port"]  # LABKIT_REDIS_URL (the session server) wins
    monkeypatch.delenv(URL_ENV)
    assert _port(labkit.connect()) == state["port"]


def test_lab_server_is_reused_and_survives_its_starter(monkeypatch, lab_home):
    monkeypatch.delenv(URL_ENV)
    first = lab.start()
    assert lab.start()["pid"] == first["pid"]
    status = lab.status()
    assert status["running"] and first["password"] not in str(status)
    assert (lab_home / ".labkit" / "server.json").stat().st_mode & 0o077 == 0
    assert lab.stop() is True
    assert not lab._running(first["pid"])  # gone, not only silent: it writes its last log lines before it exits
    assert lab.status()["running"] is False
    assert lab.stop() is False


def test_running_tells_a_live_process_from_an_exited_one():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while lab._running(child.pid) and time.monotonic() < deadline:  # exited, not yet reaped: a zombie
        time.sleep(0.01)
    assert not lab._running(child.pid) and lab._running(__import__("os").getpid())
    child.wait()
    assert not lab._running(child.pid)


def test_lab_server_keeps_its_password_and_data_across_restarts(monkeypatch, lab_home):
    monkeypatch.delenv(URL_ENV)
    first = lab.start()
    labkit.connect().set("lab:test:kept", "1")
    lab.stop()
    (lab_home / ".labkit" / "server.json").write_text(__import__("json").dumps(first))  # stale record
    second = lab.start()
    assert second["pid"] != first["pid"] and second["password"] == first["password"]
    assert labkit.connect().get("lab:test:kept") == "1"


def test_embedded_server_when_nothing_else(monkeypatch, lab_home, capsys):
    monkeypatch.delenv(URL_ENV)
    r = labkit.connect()
    assert r.ping()
    assert "started an embedded" in capsys.readouterr().out
    assert _port(labkit.connect()) == _port(r)  # one per process
    lab.embedded().stop()


def test_server_down_names_the_masked_url_and_what_to_do(monkeypatch):
    monkeypatch.setenv(URL_ENV, "redis://:hunter2@127.0.0.1:1/0")
    started = time.perf_counter()
    with pytest.raises(labkit.ServerUnavailable) as err:
        labkit.connect()
    message = str(err.value)
    assert "redis://:****@127.0.0.1:1/0" in message and "hunter2" not in message
    assert "make lab" in message and URL_ENV in message
    assert time.perf_counter() - started < 5
    assert isinstance(err.value, ConnectionError)


def test_wrong_password_is_reported_as_such(r, monkeypatch):
    port = _port(r)
    monkeypatch.setenv(URL_ENV, f"redis://:nope@127.0.0.1:{port}/0")
    with pytest.raises(labkit.ServerUnavailable, match="rejected the password") as err:
        labkit.connect()
    assert "nope" not in str(err.value)


def test_malformed_url_is_a_config_error(monkeypatch):
    monkeypatch.setenv(URL_ENV, "http://:pw@127.0.0.1:6379")
    with pytest.raises(labkit.ConfigError, match="not a usable server URL") as err:
        labkit.connect()
    assert "pw@" not in str(err.value)
