"""What every lesson module shares (`labkit.lessons`): running one experiment on each installed engine."""

from __future__ import annotations

import pytest
import redis

from labkit import lessons
from labkit.lessons import engines_not_installed, on_each_engine, on_each_engine_named
from labkit.server import available_engines, spawn
from labkit.server.binaries import ENGINES


def test_each_installed_engine_gets_a_fresh_server_of_its_own_in_turn():
    def experiment(r, caps):
        fresh = r.dbsize() == 0
        r.set("mark", caps.version)  # a server shared between engines would show it to the next one
        return caps.engine, caps.version, fresh, r.connection_pool.connection_kwargs["port"]

    rows = on_each_engine(experiment)
    versions = [engine.version for engine in available_engines().values()]
    assert [version for _, version, _, _ in rows] == versions
    assert all(fresh for _, _, fresh, _ in rows)


def test_the_server_is_stopped_even_when_the_experiment_fails():
    ports = []

    def failing(r, caps):
        ports.append(r.connection_pool.connection_kwargs["port"])
        raise RuntimeError("the experiment broke")

    with pytest.raises(RuntimeError, match="the experiment broke"):
        on_each_engine(failing)
    late = redis.Redis(port=ports[0], socket_connect_timeout=1)
    with pytest.raises(redis.ConnectionError):
        late.ping()


def test_engines_not_installed_are_the_known_ones_missing_here(monkeypatch):
    assert set(engines_not_installed()) == set(ENGINES) - set(available_engines())
    only = next(iter(available_engines().items()))
    monkeypatch.setattr(lessons, "available_engines", lambda: dict([only]))
    assert engines_not_installed() == [name for name in ENGINES if name != only[0]]
    assert len(on_each_engine(lambda r, caps: caps.version)) == 1


def test_two_engines_that_report_the_same_name_and_version_stay_two_rows_told_apart_by_the_lab_name(monkeypatch):
    installed = next(iter(available_engines().items()))  # the same engine under two names, as a system
    monkeypatch.setattr(lessons, "available_engines", lambda: {"first": installed[1], "second": installed[1]})
    monkeypatch.setattr(lessons, "spawn", lambda engine, modules: spawn(installed[0], modules=modules))

    def reported(r, caps):  # redis-server beside redis8 of the same version would do the same
        return f"{caps.engine} {caps.version}", r.config_get("maxmemory-policy")

    rows = on_each_engine_named(reported)
    assert [name for name, _ in rows] == ["first", "second"] and rows[0][1] == rows[1][1]
    assert len(on_each_engine(reported)) == 2 and len(dict(on_each_engine(reported))) == 1  # why no dict()


def test_each_row_is_named_as_labkit_names_the_engine():
    rows = on_each_engine_named(lambda r, caps: caps.version)
    assert rows == [(name, engine.version) for name, engine in available_engines().items()]
