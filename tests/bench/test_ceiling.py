import json

import pytest

from labkit import bench
from labkit.bench import ceiling
from labkit.server import find_engine
from labkit.server.process import Server

from . import assert_spread_printed, baselines, values


def test_the_ceiling_names_the_engine_its_version_and_the_tool():
    rows = ceiling.run(requests=2000, rounds=3)
    engine = find_engine()
    table = values(rows)
    get, set_ = (next(row for row in rows if row.contender.startswith(command)) for command in ("GET,", "SET,"))
    tool = ceiling.find_tool(engine)
    tool = tool.name if tool else "redis-py, pipeline"
    for row in (get, set_):
        assert f"{engine.name} {engine.version} ({tool}" in row.contender and row.value > 0
    assert baselines(rows) == {ceiling.METRIC: get.contender}
    # redis-py's loop is read against the tool's GET (on a quiet machine about a quarter of it; a busy one
    # slows either, so no order is asserted)
    assert table[(ceiling.METRIC, "GET, redis-py loop")] > 0
    assert_spread_printed(rows, ceiling.METRIC)


def test_the_fallback_is_a_pipelined_redis_py_loop():
    rows = ceiling.run(requests=2000, rounds=2, use_tool=False)
    assert all(row.value > 0 for row in rows)
    assert f"(redis-py, pipeline of {ceiling.PIPELINE}: no benchmark tool)" in rows[0].contender


def test_the_tool_never_sees_the_password_and_its_user_is_gone_afterwards():
    with Server(modules=False) as server:
        tool = ceiling.find_tool(server.engine)
        if tool is None:
            pytest.skip("no valkey-benchmark or redis-benchmark installed")
        assert server.password not in " ".join(ceiling.tool_command(server, tool, 100))
        r = server.client()
        rates = ceiling._with_tool(server, r, tool, 500)
        assert set(rates) == {"GET", "SET"} and ceiling.USER not in r.acl_users()
        r.close()


def test_results_json_has_the_ceiling_row_with_the_engine_and_version(tmp_path):
    path = tmp_path / "results.json"
    bench.run(["ceiling"], results=path)
    document = json.loads(path.read_text())
    engine = find_engine()
    [row] = [row for row in document["rows"] if row["suite"] == "ceiling" and row["baseline"]]
    assert row["contender"].startswith(f"GET, {engine.name} {engine.version} (") and row["value"] > 0
    assert (document["engine"], document["engine_version"]) == (engine.name, engine.version)
