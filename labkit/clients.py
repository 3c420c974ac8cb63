"""Client helpers: the timeouts and retry policy every client labkit makes states (`options`,
`probe_options`), a sibling client with other options, what another process needs to connect, and text
from a reply that may be bytes."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

TIMEOUT_S, CONNECT_TIMEOUT_S = 5.0, 3.0  # a client labkit makes: a command may take a while, a connect not
PROBE_TIMEOUT_S = 1.0  # a probe of a topology member or a recorded server: a paused one must not hang the caller


def options(*, timeout: float = TIMEOUT_S, connect_timeout: float = CONNECT_TIMEOUT_S,
            retries: int = 0) -> dict[str, Any]:
    """The timeouts and retry policy of a client labkit makes, stated rather than left to redis-py, whose
    defaults differ by constructor (`Redis(host=)` retries 10 times, `from_url` none). No retry by default:
    a command that timed out is not sent again (an INCR would count twice).

    Example:
        >>> redis.Redis(host="127.0.0.1", port=6379, **options())
    """
    return {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout, "retry": Retry(NoBackoff(), retries)}


def probe_options() -> dict[str, Any]:
    """Short timeouts and no retry: a probe of a paused or dead server answers within about a second."""
    return options(timeout=PROBE_TIMEOUT_S, connect_timeout=PROBE_TIMEOUT_S, retries=0)


def derive(r: redis.Redis, *, retries: int | None = None, **options: Any) -> redis.Redis:
    """A new client of the same server as `r`, with its own connections and `options` changed
    (`client_name=`, `socket_timeout=`...); `retries=0` makes a dropped connection raise at once.

    Example:
        >>> probe = derive(r, retries=0, socket_timeout=0.2)
    """
    pool = r.connection_pool
    kwargs = {**pool.connection_kwargs, **options}
    if retries is not None:
        kwargs["retry"] = Retry(NoBackoff(), retries)
        kwargs.pop("retry_on_error", None)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs))


def connection_spec(r: redis.Redis) -> dict[str, Any]:
    """What another process needs to open its own client of `r`'s server, with the stated timeouts and
    retry policy of `options()`: `redis.Redis(**spec)` (picklable, for a spawned process)."""
    kw = r.connection_pool.connection_kwargs
    return {k: kw.get(k) for k in ("host", "port", "username", "password", "db")} | options()


def text(value: Any) -> Any:
    """`value` decoded if it is bytes (a client without `decode_responses`), else unchanged."""
    return value.decode() if isinstance(value, bytes) else value
