"""systemd's notify protocol over a real datagram socket, and where logs go."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.systemd import Notifier, configure_logging


@pytest.fixture()
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    yield server, path
    server.close()


def test_messages_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    server, path = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"})
    assert notifier.enabled and notifier.watchdog_interval_s == 5.0
    notifier.ready("listening")
    notifier.watchdog()
    notifier.stopping("bye")
    assert server.recv(4096) == b"READY=1\nSTATUS=listening"
    assert server.recv(4096) == b"WATCHDOG=1"
    assert server.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_abstract_socket_names_work() -> None:
    name = f"soundwarden-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert server.recv(4096) == b"STATUS=hello"
    finally:
        server.close()


def test_outside_systemd_and_with_a_vanished_socket_nothing_breaks(tmp_path: Path) -> None:
    quiet = Notifier({})
    assert not quiet.enabled and quiet.watchdog_interval_s is None
    quiet.ready("x")  # no socket: nothing to do
    gone = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    gone.watchdog()  # logged, not raised: listening matters more than telling systemd


def test_a_watchdog_meant_for_another_process_is_ignored() -> None:
    other = Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.watchdog_interval_s is None


@pytest.fixture()
def root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_logs_go_to_stderr_unless_systemd_gave_us_the_journal(root_logger: logging.Logger) -> None:
    configure_logging("warning", environ={})
    handlers = root_logger.handlers
    assert len(handlers) == 1 and type(handlers[0]) is logging.StreamHandler
    assert root_logger.level == logging.WARNING
    configure_logging("info", environ={"JOURNAL_STREAM": "1:2"})  # not our stderr
    assert type(root_logger.handlers[0]) is logging.StreamHandler
