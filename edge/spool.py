"""The durable outbox: nothing leaves it until the receiver has acknowledged it.

Events (and, later, clip uploads) are written here before any attempt to send them, in an
SQLite database in WAL mode with `synchronous=FULL`, so a power cut loses nothing that `put`
returned for. Senders take the oldest entries with `peek`, and `ack` removes an entry only once
the broker's PUBACK (or the cloud's 2xx) came back; after a reconnect or a restart `peek` hands
out the same entries again, in the same order.

Every entry has a key (an event's is `<episode id>:<type>`): putting a key that is already queued
is a no-op, and the key travels with the payload, so a replay is recognisably a duplicate
downstream. The spool is bounded: when full, the oldest entries are dropped, logged and counted,
because on a device that was offline for days the newest events matter most.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Entry:
    seq: int
    key: str
    kind: str
    payload: bytes


class Spool:
    def __init__(self, path: str | Path, *, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._lock = threading.Lock()  # capture, sender and status threads share one spool
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def put(self, key: str, kind: str, payload: bytes) -> bool:
        """Queue `payload` durably; False when `key` is already queued (nothing changes)."""
        with self._lock, self._db:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO outbox (key, kind, payload) VALUES (?, ?, ?)",
                (key, kind, payload),
            )
            if cursor.rowcount == 0:
                return False
            overflow = self._count() - self.max_entries
            if overflow > 0:
                self._db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                    (overflow,),
                )
                self._db.execute(
                    "INSERT INTO counters VALUES ('dropped', ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                    (overflow,),
                )
                log.warning(
                    "spool full (%d entries): dropped the %d oldest", self.max_entries, overflow
                )
            return True

    def peek(self, limit: int = 100, *, kind: str | None = None) -> list[Entry]:
        """The oldest queued entries (of `kind`, when given), oldest first; they stay queued
        until acknowledged. Each sender (MQTT events, clip uploads) peeks its own kind."""
        query = "SELECT seq, key, kind, payload FROM outbox"
        params: tuple[object, ...] = (limit,)
        if kind is not None:
            query += " WHERE kind = ?"
            params = (kind, limit)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq LIMIT ?", params).fetchall()
        return [Entry(seq, key, kind, bytes(payload)) for seq, key, kind, payload in rows]

    def has(self, key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone()
        return row is not None

    def ack(self, seq: int) -> None:
        """The receiver has it: remove the entry for good."""
        with self._lock, self._db:
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def depth(self, *, kind: str | None = None) -> int:
        with self._lock:
            if kind is None:
                return self._count()
            row = self._db.execute("SELECT COUNT(*) FROM outbox WHERE kind = ?", (kind,))
            return int(row.fetchone()[0])

    @property
    def dropped(self) -> int:
        """Entries dropped by the overflow policy since the spool was created."""
        with self._lock:
            row = self._db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
