"""The exceptions labkit raises: one base, each also a matching built-in type."""


class LabkitError(Exception):
    """Base of every error labkit raises on purpose."""


class ServerUnavailable(LabkitError, ConnectionError):
    """A server could not be reached, started or authenticated against."""


class ConfigError(LabkitError, ValueError):
    """An argument or setting is invalid."""


class MissingModule(LabkitError, RuntimeError):
    """A server module (search, JSON) a lesson needs is not loaded."""


class MissingLibrary(LabkitError, RuntimeError):
    """A function library labkit calls with FCALL is not loaded on the server (an administrator loads it)."""


class SearchTimeout(LabkitError, TimeoutError):
    """A search query ran out of time and the server answered with an error instead of results."""


class DockerUnavailable(LabkitError, RuntimeError):
    """The optional Docker path was asked for but cannot work here."""


class LockNotHeld(LabkitError, RuntimeError):
    """A lock was released or extended by a client that does not hold it (never did, or it expired)."""


class LockNotAcquired(LabkitError, TimeoutError):
    """A lock could not be taken in the time or attempts allowed: another client held it, or (Redlock)
    no majority of the servers could be reached."""
