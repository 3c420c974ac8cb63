import uuid

import pytest

import labkit
from labkit.keys import USER_ENV, key, reset


def test_key_joins_parts_and_rejects_separators():
    assert key("user", 42, "name") == "user:42:name"
    with pytest.raises(labkit.ConfigError, match="contain no ':'"):
        key("a:b")
    with pytest.raises(ValueError):  # ConfigError is also a ValueError
        key()


def test_namespace_prefix_and_validation(monkeypatch):
    monkeypatch.delenv(USER_ENV, raising=False)  # a learner's prefix: tests/test_workshop.py
    space = labkit.Namespace("l00")
    assert space.key("greeting") == "lab:l00:greeting"
    assert space.pattern == "lab:l00:*"
    for bad in ["", "L00", "a*b", "a:b", "a b"]:
        with pytest.raises(labkit.ConfigError, match="Namespace names"):
            labkit.Namespace(bad)


def test_cleanup_deletes_only_its_own_prefix(r, ns):
    other = labkit.Namespace(ns.name + "x")  # shares a textual prefix, must survive (LABKIT_USER: both a learner's)
    outside = "test-outside-" + ns.name
    r.mset({ns.key("a"): 1, ns.key("b", 2): 2, other.key("a"): 3, outside: 4})
    r.sadd(ns.key("set"), *range(2000))
    try:
        assert ns.cleanup(r) == 3
        assert ns.keys(r) == []
        assert r.get(other.key("a")) == "3" and r.get(outside) == "4"
    finally:
        other.cleanup(r)
        r.delete(outside)


def test_cleanup_handles_more_keys_than_one_batch(r, ns):
    r.mset({ns.key("k", i): i for i in range(1234)})
    assert ns.cleanup(r) == 1234


def test_reset_deletes_lab_keys_only(r):
    with labkit.server.spawn(modules=False) as srv:
        c = srv.client()
        c.mset({"lab:l01:a": 1, "lab:l02:b": 2, "app:data": 3, "labx": 4})
        assert reset(c) == 2
        assert sorted(c.keys("*")) == ["app:data", "labx"]


def test_a_learners_keys_the_lessons_and_other_learners_never_overlap(r, monkeypatch):
    """`lab:<lesson>:*`, `lab:ada:<lesson>:*` and `lab:adam:<lesson>:*`: each cleanup deletes its own only."""
    monkeypatch.delenv(USER_ENV, raising=False)
    lesson = f"t{uuid.uuid4().hex[:8]}"
    plain, ada, adam = (labkit.Namespace(lesson, learner=name) if name else labkit.Namespace(lesson)
                        for name in (None, "ada", "adam"))
    try:
        for space in (plain, ada, adam):
            r.set(space.key("greeting"), 1)
        assert ada.cleanup(r) == 1 and plain.keys(r) == [plain.key("greeting")]
        assert plain.cleanup(r) == 1 and adam.keys(r) == [f"lab:adam:{lesson}:greeting"]
    finally:
        for space in (plain, ada, adam):
            space.cleanup(r)
