"""A real database to cache: SQLite (standard library) with an added delay per query that stands in for
the network and load of a remote database. The delay is labelled as such everywhere it is reported."""

from __future__ import annotations

import random
import sqlite3
import threading
import time

from labkit.errors import ConfigError

CATEGORIES = ("books", "games", "garden", "kitchen", "music", "outdoor", "toys", "tools")


class SlowDatabase:
    """A products table of `rows` rows in SQLite; every query also waits `latency_ms` (simulated network)."""

    def __init__(self, rows: int = 10_000, latency_ms: float = 30.0, seed: int = 7) -> None:
        if rows < 1 or latency_ms < 0:
            raise ConfigError(f"need rows >= 1 and latency_ms >= 0, got {rows} and {latency_ms}.")
        self.rows, self.latency_ms = rows, latency_ms
        self.queries = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        rng = random.Random(seed)
        self._db.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL)")
        self._db.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            [(i, f"product {i}", rng.choice(CATEGORIES), round(rng.uniform(2, 200), 2)) for i in range(1, rows + 1)],
        )

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        time.sleep(self.latency_ms / 1000)
        with self._lock:
            self.queries += 1
            return self._db.execute(sql, params).fetchall()

    def product(self, pid: int) -> dict | None:
        """The product with id `pid`, or None."""
        found = self._query("SELECT id, name, category, price FROM products WHERE id = ?", (pid,))
        return dict(zip(("id", "name", "category", "price"), found[0], strict=True)) if found else None

    def update_price(self, pid: int, price: float) -> None:
        self._query("UPDATE products SET price = ? WHERE id = ?", (price, pid))
        with self._lock:
            self._db.commit()
