"""The optional Docker path: a container through testcontainers, for people who have a Docker engine."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from typing import Any

import redis

from labkit.errors import ConfigError, DockerUnavailable
from labkit.server.lab import client_for

# The lab's two engines, pinned to the versions the embedded binaries have; both images carry search and JSON.
IMAGES = {"valkey": "valkey/valkey-bundle:9.1.2", "redis": "redis:8.2.3"}
EMBEDDED_HINT = "The lab does not need Docker: labkit.connect() (or `make lab`) starts the embedded server."


def docker_engine() -> tuple[bool, str]:
    """(True, where) if a Docker engine answers on its socket, else (False, why)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True, host
    path = host[len("unix://"):]
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(path)
            s.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            ok = b" 200 " in s.recv(64)
    except OSError as err:
        return False, f"no Docker engine at {path} ({err.strerror or err})"
    return (True, path) if ok else (False, f"{path} did not answer the Docker ping")


@dataclass
class Container:
    """A running server container: `url`, `client()`, `stop()`; a context manager."""

    url: str
    _container: Any

    def client(self, **kwargs: Any) -> redis.Redis:
        return client_for(self.url, **kwargs)

    def stop(self) -> None:
        self._container.stop()

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def container(engine: str = "valkey", image: str | None = None) -> Container:
    """Start `engine`'s image ("valkey" or "redis": Redis 8) on 127.0.0.1 with a generated password.

    Raises:
        DockerUnavailable: no engine runs here, or the `docker` extra is not installed.
    """
    if engine not in IMAGES:
        raise ConfigError(f"Unknown container engine {engine!r}: choose one of {', '.join(IMAGES)}.")
    ok, why = docker_engine()
    if not ok:
        raise DockerUnavailable(f"Cannot start a container: {why}. {EMBEDDED_HINT}")
    try:
        from testcontainers.core.container import DockerContainer
    except ImportError:
        raise DockerUnavailable(f"Install the optional extra: pip install -e '.[docker]'. {EMBEDDED_HINT}") from None
    password = secrets.token_urlsafe(18)
    box = DockerContainer(image or IMAGES[engine])
    if engine == "valkey":
        box = box.with_env("VALKEY_EXTRA_FLAGS", f"--requirepass {password}")
    else:  # the official image loads its modules only when its first argument is redis-server
        box = box.with_command(f"redis-server --requirepass {password}")
    box = box.with_bind_ports(6379, ("127.0.0.1", None)).start()
    url = f"redis://:{password}@127.0.0.1:{box.get_exposed_port(6379)}/0"
    return Container(url, box)
