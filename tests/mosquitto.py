"""A real Mosquitto broker for tests, on a free loopback port, that a test can stop and
restart (the machine's own broker on 1883 is never touched)."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """`listener` holds the listener's own options (TLS files, ...); `extra` is appended to
    the configuration (password_file, acl_file, ...). With `persistence`, retained messages
    and queued QoS 1 messages survive a restart, as on a production broker."""

    def __init__(
        self,
        workdir: Path,
        *,
        persistence: bool = False,
        anonymous: bool = True,
        listener: str = "",
        extra: str = "",
    ) -> None:
        self.port = free_port()
        self.config = workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            listener,
            f"allow_anonymous {str(anonymous).lower()}",
            f"persistence {str(persistence).lower()}",
            f"persistence_location {workdir}/" if persistence else "",
            extra,
            # Started as root, Mosquitto would drop to its own user, which cannot read the
            # test's private temporary folder (keys, password file, persistence).
            "user root" if os.geteuid() == 0 else "",
        ]
        self.config.write_text("\n".join(line for line in lines if line) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(
            ["mosquitto", "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None


class Subscriber:
    """Collects what arrives under `topic` (QoS 1). With a `client_id` the session is
    persistent: a broker with persistence keeps queueing for it across its own restart, as it
    would for an integration that must not miss events."""

    def __init__(
        self, port: int, topic: str = "soundwarden/#", client_id: str | None = None
    ) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or "",
            clean_session=client_id is None,
        )
        self._client.reconnect_delay_set(min_delay=1, max_delay=2)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        # Subscribing happens on paho's thread: until the broker's SUBACK, a device started
        # next could publish events this subscriber never sees.
        assert subscribed.wait(10), f"no SUBACK from the broker on port {port}"

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def payloads(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def tls_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 (openssl, as an admin would)."""
    ca_key, ca, key, csr, cert = (
        tmp_path / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    )
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-days", "2",
        "-subj", "/CN=soundwarden test CA")  # fmt: skip
    run("req", *new_key, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext)  # fmt: skip
    return ca, cert, key
