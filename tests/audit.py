"""The key audit: a server of its own with keyspace events on, and a listener recording every key written."""

from __future__ import annotations

import threading
import time

from labkit.server import Server, spawn


class KeyAudit:
    """Start with `KeyAudit()`, point a client (or a notebook kernel) at `.url`, then `finish()`."""

    NAME = "labkit-audit"
    MARKER = "labkit-audit:flush"  # a channel: published on at the end, heard after every earlier event

    def __init__(self) -> None:
        self.server: Server = spawn(notify_keyspace_events="KEA")
        self.url = self.server.url
        self.written: set[str] = set()
        self.errors: list[BaseException] = []
        self._flushed = threading.Event()
        self._pubsub = self.server.client(client_name=self.NAME).pubsub()
        self._pubsub.psubscribe(**{"__keyevent@*__:*": lambda message: self.written.add(message["data"])})
        self._pubsub.subscribe(**{self.MARKER: lambda message: self._flushed.set()})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True,
                                                  exception_handler=self._on_error)

    def _on_error(self, err: BaseException, *_: object) -> None:
        self.errors.append(err)
        self._thread.stop()

    def lingering_clients(self, settle_s: float = 0.0) -> list[str]:
        """Connections still subscribed or blocked (other than the audit's own), while the kernel still runs.

        With `settle_s`, asks again until there are none or that many seconds have passed: a connection
        its client has just closed is dropped once the server reads the close, not necessarily at once."""
        deadline = time.monotonic() + settle_s
        while True:
            found = []
            for client in self.server.client().client_list():
                subscribed = any(int(client.get(kind, 0) or 0) for kind in ("sub", "psub", "ssub"))
                if client.get("name") != self.NAME and (subscribed or "b" in client.get("flags", "")):
                    found.append(f"{client.get('name') or 'unnamed'} ({client.get('cmd')})")
            if not found or time.monotonic() >= deadline:
                return found
            time.sleep(0.02)

    def finish(self, ignore: tuple[str, ...] = ()) -> tuple[set[str], int]:
        """Stop listening; return (keys written, keys still on the server but those starting with one of
        `ignore`) and stop the server."""
        # The events of every write so far are queued on the audit's connection before a message published
        # now: once that arrives, nothing is still on its way (no guessed sleep). 0 receivers: not yet
        # subscribed, ask again.
        deadline = time.monotonic() + 10
        while not self.server.client().publish(self.MARKER, "end") and time.monotonic() < deadline:
            time.sleep(0.01)
        self._flushed.wait(max(0.0, deadline - time.monotonic()))
        self._thread.stop()
        self._thread.join()
        client = self.server.client()
        remaining = sum(1 for k in client.scan_iter(count=1000) if not k.startswith(ignore))
        self.server.stop()
        return self.written, remaining

    def problems(self, prefix: str, ignore: tuple[str, ...] = ()) -> list[str]:
        """Everything wrong with what a lesson did, given the key prefix it owns (keys starting with one of
        `ignore` are not the lesson's: a workshop's own, on a workshop server)."""
        written, remaining = self.finish(ignore)
        written = {k for k in written if not k.startswith(ignore)}
        found = []
        if self.errors:
            found.append(f"the audit lost its subscription, so it cannot vouch for the lesson: {self.errors}")
        if not written:
            found.append("the audit saw no key written at all")
        outside = sorted(k for k in written if not k.startswith(prefix))
        if outside:
            found.append(f"keys outside {prefix}*: {outside[:10]}")
        if remaining:
            found.append(f"{remaining} key(s) left behind: the Cleanup section must delete the lesson's keys")
        return found
