import math

import pytest

from labkit import validate
from labkit.errors import ConfigError

BAD_NUMBERS = [True, None, "5", math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", [*BAD_NUMBERS, 0, -1, 0.0009])
def test_seconds_refuses_what_is_not_at_least_a_millisecond(value):
    with pytest.raises(ConfigError, match=r"ttl is a number of seconds, at least 0\.001"):
        validate.seconds(value, "ttl")


def test_seconds_accepts_a_millisecond_and_zero_only_when_allowed():
    assert validate.seconds(0.001, "ttl") == 0.001 and validate.seconds(2, "ttl") == 2.0
    assert validate.seconds(0, "timeout", allow_zero=True) == 0
    with pytest.raises(ConfigError, match=r"0 or at least 0\.001"):
        validate.seconds(-1, "timeout", allow_zero=True)


def test_milliseconds_from_seconds_wants_whole_milliseconds():
    assert validate.milliseconds_from_seconds(1.5, "window") == 1500
    assert validate.milliseconds_from_seconds(0.001, "window") == 1
    with pytest.raises(ConfigError, match="whole number of milliseconds"):
        validate.milliseconds_from_seconds(0.0015, "window")


@pytest.mark.parametrize("value", [*BAD_NUMBERS, 0, 1.0, 2.5])
def test_milliseconds_refuses_non_integers_and_zero(value):
    with pytest.raises(ConfigError, match="ttl_ms is a whole number of milliseconds, at least 1"):
        validate.milliseconds(value, "ttl_ms")


@pytest.mark.parametrize("value", [*BAD_NUMBERS, 2.0, 0])
def test_integer_refuses_floats_bools_and_small_values(value):
    with pytest.raises(ConfigError, match="limit must be an integer of at least 1"):
        validate.integer(value, "limit")


def test_integer_minimum():
    assert validate.integer(0, "retries", minimum=0) == 0


@pytest.mark.parametrize(("kwargs", "value", "says"), [
    ({"low": 0, "low_open": True}, 0, "> 0"), ({"low": 0, "high": 1, "high_open": True}, 1, ">= 0 and < 1"),
    ({"low": 0}, math.nan, ">= 0"), ({"high": 2}, "1", "<= 2"),
])
def test_number_bounds(kwargs, value, says):
    with pytest.raises(ConfigError, match=says):
        validate.number(value, "beta", **kwargs)
    assert validate.number(0.5, "beta", **kwargs) == 0.5


@pytest.mark.parametrize("value", ["", None, 7, b"name"])
def test_name_wants_a_non_empty_string(value):
    with pytest.raises(ConfigError, match="user_id must be a non-empty string"):
        validate.name(value, "user_id")


@pytest.mark.parametrize("value", ["", "lab:", None])
def test_prefix_refuses_empty_and_a_trailing_separator(value):
    with pytest.raises(ConfigError, match="not ending with ':'"):
        validate.prefix(value)
    assert validate.prefix("lab:l03") == "lab:l03"


def test_one_of_lists_the_options():
    with pytest.raises(ConfigError, match="none, lock, xfetch"):
        validate.one_of("fast", "strategy", ("none", "lock", "xfetch"))


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        validate.integer("x", "n")
