"""Leadership: a lock that only one of the processes serving a database can hold, so that what
must run once (the MQTT bridge) runs in exactly one of them, and moves to another within
seconds when its holder dies, however it dies.

- SQLite: an exclusive `flock` on a file beside the database. Only processes on one machine
  can share a SQLite file, and the kernel drops the lock with the last descriptor of the
  process that held it, SIGKILL and out-of-memory kills included.
- PostgreSQL: a session-level advisory lock held on a connection of its own, so it works across
  machines. The server drops it when that session ends: the holder's process died, closed it,
  or was cut off from the server. The holder checks its connection (`held`) and must stop what
  it leads once it is gone, since another process may hold the lock by then. It needs a
  session of its own on the server: PgBouncer in transaction mode would break it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from sqlalchemy import Connection, create_engine, make_url, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool


class LeaderLock(Protocol):
    def acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another process does. May raise
        SQLAlchemyError while the database is unreachable."""

    def held(self) -> bool:
        """Whether this process still holds the lock it acquired."""

    def release(self) -> None:
        """Give the lock up (nothing if not held)."""


def leader_lock(db_url: str, name: str, data_dir: Path) -> LeaderLock:
    """The lock called `name` among the processes serving the database at `db_url`."""
    url = make_url(db_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:"):  # a database no other process can open
            return FileLock(data_dir / f"{quote(name, safe='')}.lock")
        database = Path(url.database)
        return FileLock(database.with_name(f"{database.name}.{quote(name, safe='')}.lock"))
    if backend == "postgresql":
        return AdvisoryLock(db_url, lock_key(name))
    raise ValueError(f"no leadership lock for {backend} databases: use SQLite or PostgreSQL")


def lock_key(name: str) -> int:
    """The bigint `pg_try_advisory_lock` takes for `name`: the same in every process and on
    every machine, which Python's hash() is not."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


class FileLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        # For whoever wonders which process leads; the lock, not the content, decides.
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        # Closing drops the lock. The file stays: deleting it would let a newcomer lock a new
        # file of that name while another process still holds the old one.
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# Client side: notice a server gone silent within about 15 s instead of hanging in `held`.
_CLIENT_KEEPALIVES = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
# Server side: end the session (so free the lock) of a holder cut off from it within about 30 s,
# not after the operating system's default two hours. By then the holder has found its
# connection dead (10-15 s, above) and stopped leading.
_SERVER_KEEPALIVES = (
    "SET tcp_keepalives_idle = 15",
    "SET tcp_keepalives_interval = 5",
    "SET tcp_keepalives_count = 3",
)


class AdvisoryLock:
    def __init__(self, db_url: str, key: int) -> None:
        # NullPool: closing the connection really ends the session, the lock with it.
        self._engine = create_engine(db_url, poolclass=NullPool, connect_args=_CLIENT_KEEPALIVES)
        self._key = key
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        if self._conn is not None:
            return True
        # Autocommit: the session must not sit idle in a transaction for as long as it leads.
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            locked = conn.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": self._key})
            if not locked.scalar_one():
                conn.close()
                return False
            for statement in _SERVER_KEEPALIVES:
                conn.execute(text(statement))
        except SQLAlchemyError:
            conn.close()  # the lock too, if it was taken
            raise
        self._conn = conn
        return True

    def held(self) -> bool:
        """Whether the session holding the lock is still there: a session-level lock lasts as
        long as its session, which a lost connection has ended."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            self.release()
            return False
        return True

    def release(self) -> None:
        # Ending the session unlocks; on a connection already lost closing just tidies up.
        if self._conn is not None:
            self._conn.close()
            self._conn = None
