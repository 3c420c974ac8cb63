import pytest

import labkit
from labkit import scripts


def test_every_script_states_keys_argv_and_return():
    from importlib.resources import files

    names = [p.name.removesuffix(".lua") for p in (files("labkit") / "lua").iterdir() if p.name.endswith(".lua")]
    assert names
    for name in names:
        head = scripts.source(name).split("\n\n")[0]
        assert "KEYS[1]" in head and "Returns" in head, name


def test_capped_incr_stops_at_the_cap(r, ns):
    capped = scripts.register(r, "capped_incr")
    key = ns.key("counter")
    assert [capped(keys=[key], args=[3]) for _ in range(5)] == [1, 2, 3, -1, -1]
    assert r.get(key) == "3"


def test_unknown_script_names_the_known_ones():
    with pytest.raises(labkit.ConfigError, match="capped_incr"):
        scripts.source("nope")
