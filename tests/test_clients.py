"""labkit.clients: the stated timeouts and retry policy, and what another process needs to connect."""

import pickle

import redis

from labkit.clients import PROBE_TIMEOUT_S, connection_spec, options, probe_options


def test_options_state_timeouts_and_no_retry():
    stated = options()
    assert (stated["socket_timeout"], stated["socket_connect_timeout"], stated["retry"].get_retries()) == (5.0, 3.0, 0)
    probe = probe_options()
    assert probe["socket_timeout"] == probe["socket_connect_timeout"] == PROBE_TIMEOUT_S <= 1
    assert probe["retry"].get_retries() == 0


def test_connection_spec_carries_the_policy_to_another_process(r):
    spec = pickle.loads(pickle.dumps(connection_spec(r)))  # what a spawned process receives
    other = redis.Redis(**spec, decode_responses=True)
    try:
        assert other.ping() and other.connection_pool.connection_kwargs["retry"].get_retries() == 0
        assert other.connection_pool.connection_kwargs["socket_timeout"] == 5.0
    finally:
        other.close()
