"""Client helpers the pattern modules share: a sibling client with other options, what another process
needs to connect, and text from a reply that may be bytes."""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


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
    """What another process needs to open its own client of `r`'s server: `redis.Redis(**spec)`."""
    kw = r.connection_pool.connection_kwargs
    return {k: kw.get(k) for k in ("host", "port", "username", "password", "db")}


def text(value: Any) -> Any:
    """`value` decoded if it is bytes (a client without `decode_responses`), else unchanged."""
    return value.decode() if isinstance(value, bytes) else value
