"""systemd integration: the notify protocol and journald logging, both optional.

`Type=notify` units hand the daemon a datagram socket in `$NOTIFY_SOCKET`; `READY=1` says the
service is up (we send it only once the model is loaded and audio flows), `STATUS=` is the line
`systemctl status` shows, and `WATCHDOG=1` pings prove liveness within `WatchdogSec`. The
daemon pings only while audio keeps arriving, so a dead microphone gets the service restarted.
The protocol is one `sendto` per message, written here rather than taken from systemd-python
because that one raises when the socket is missing; outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        # A leading '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        if self._address:
            self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        watchdog_usec = int(env.get("WATCHDOG_USEC", "0") or 0)
        watchdog_pid = env.get("WATCHDOG_PID")
        if watchdog_pid and int(watchdog_pid) != os.getpid():
            watchdog_usec = 0  # meant for another process (we were started by a wrapper)
        # Ping at half the deadline, as sd_watchdog_enabled(3) recommends.
        self.watchdog_interval_s = watchdog_usec / 2e6 if watchdog_usec else None

    @property
    def enabled(self) -> bool:
        return self._socket is not None

    def ready(self, status: str) -> None:
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")

    def _send(self, message: str) -> None:
        if self._socket is None:
            return
        try:
            self._socket.sendto(message.encode(), self._address)
        except OSError as exc:  # systemd gone or socket removed: never fatal to listening
            log.warning("systemd notify failed (%s): %s", message.split("=")[0], exc)


def configure_logging(level: str, environ: Mapping[str, str] | None = None) -> None:
    """Log to journald when systemd connected our stderr to it, else plain lines on stderr."""
    env = os.environ if environ is None else environ
    root = logging.getLogger()
    root.setLevel(level.upper())
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_journal_handler() if _stderr_is_journal(env) else _stderr_handler())


def _journal_handler() -> logging.Handler:
    try:
        from systemd.journal import JournalHandler
    except ImportError:  # systemd-python missing: stderr reaches the journal anyway
        return _stderr_handler()
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="soundwarden-edge")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def _stderr_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return handler


def _stderr_is_journal(env: Mapping[str, str]) -> bool:
    """systemd sets JOURNAL_STREAM=<dev>:<inode> of the stream it gave us (systemd.exec(5))."""
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not inode:
        return False
    try:
        stat = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{stat.st_dev}:{stat.st_ino}" == f"{device}:{inode}"
