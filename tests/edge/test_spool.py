from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edge.spool import Spool
from tests.conftest import REPO


def test_entries_leave_only_when_acknowledged_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "outbox.db")
    for i in range(3):
        assert spool.put(f"ep{i}:start", "event", f"payload {i}".encode())
    first = spool.peek(2)
    assert [e.key for e in first] == ["ep0:start", "ep1:start"]
    assert spool.peek(2) == first  # unacknowledged entries are handed out again
    spool.ack(first[0].seq)
    assert [e.payload for e in spool.peek()] == [b"payload 1", b"payload 2"]
    assert spool.depth() == 2


def test_a_key_already_queued_is_not_queued_twice(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "outbox.db")
    assert spool.put("ep:start", "event", b"first")
    assert not spool.put("ep:start", "event", b"replayed")
    assert [e.payload for e in spool.peek()] == [b"first"]


def test_queued_entries_survive_a_killed_process(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    writer = (
        "import os, sys\n"
        "from edge.spool import Spool\n"
        f"spool = Spool({str(db)!r})\n"
        "for i in range(50):\n"
        "    spool.put(f'ep{i}:start', 'event', b'x' * 100)\n"
        "print('written', flush=True)\n"
        "sys.stdin.read()\n"  # hold the database open until killed
    )
    process = subprocess.Popen(
        [sys.executable, "-c", writer],
        cwd=REPO,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "written"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    reopened = Spool(db)
    assert reopened.depth() == 50
    assert reopened.peek(1)[0].key == "ep0:start"


def test_a_full_spool_drops_the_oldest_counts_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "outbox.db", max_entries=3)
    with caplog.at_level(logging.WARNING, logger="edge.spool"):
        for i in range(5):
            spool.put(f"ep{i}:start", "event", b"")
    assert [e.key for e in spool.peek()] == ["ep2:start", "ep3:start", "ep4:start"]
    assert spool.dropped == 2
    assert "spool full (3 entries): dropped the 1 oldest" in caplog.text
    assert Spool(tmp_path / "outbox.db", max_entries=3).dropped == 2  # kept across restarts


def test_threads_can_share_a_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "outbox.db")

    def writer(name: str) -> None:
        for i in range(200):
            spool.put(f"{name}{i}:start", "event", b"")

    threads = [threading.Thread(target=writer, args=(n,)) for n in "abc"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert spool.depth() == 600
