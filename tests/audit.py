"""The key audit: a server of its own with keyspace events on, and a listener recording every key written."""

from __future__ import annotations

from labkit.server import Server, spawn


class KeyAudit:
    """Start with `KeyAudit()`, point a client (or a notebook kernel) at `.url`, then `finish()`."""

    NAME = "labkit-audit"

    def __init__(self) -> None:
        self.server: Server = spawn(notify_keyspace_events="KEA")
        self.url = self.server.url
        self.written: set[str] = set()
        self.errors: list[BaseException] = []
        self._pubsub = self.server.client(client_name=self.NAME).pubsub()
        self._pubsub.psubscribe(**{"__keyevent@*__:*": lambda message: self.written.add(message["data"])})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.01, daemon=True,
                                                  exception_handler=self._on_error)

    def _on_error(self, err: BaseException, *_: object) -> None:
        self.errors.append(err)
        self._thread.stop()

    def lingering_clients(self) -> list[str]:
        """Connections still subscribed or blocked (other than the audit's own), while the kernel still runs."""
        found = []
        for client in self.server.client().client_list():
            subscribed = any(int(client.get(kind, 0) or 0) for kind in ("sub", "psub", "ssub"))
            if client.get("name") != self.NAME and (subscribed or "b" in client.get("flags", "")):
                found.append(f"{client.get('name') or 'unnamed'} ({client.get('cmd')})")
        return found

    def finish(self) -> tuple[set[str], int]:
        """Stop listening; return (keys written, keys still on the server) and stop the server."""
        import time

        time.sleep(0.1)  # the last events are on their way
        self._thread.stop()
        self._thread.join()
        remaining = self.server.client().dbsize()
        self.server.stop()
        return self.written, remaining

    def problems(self, prefix: str) -> list[str]:
        """Everything wrong with what a lesson did, given the key prefix it owns."""
        written, remaining = self.finish()
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
