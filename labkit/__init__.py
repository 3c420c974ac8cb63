"""labkit: the helper package of the Redis/Valkey Production Patterns Lab."""

from labkit.errors import ConfigError, DockerUnavailable, LabkitError, MissingModule, ServerUnavailable
from labkit.keys import Namespace
from labkit.server.lab import connect
from labkit.tracing import trace

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "DockerUnavailable", "LabkitError", "MissingModule", "Namespace", "ServerUnavailable",
    "connect", "trace",
]
