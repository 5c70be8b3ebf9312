"""The production Mosquitto (deploy/mosquitto/) started for a test, and an MQTT 5 client that
waits for each answer, so tests see reason codes directly."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from tests.conftest import REPO
from tests.mosquitto import Mosquitto, free_port, tls_files, wait_for

CONFIG = REPO / "deploy" / "mosquitto" / "soundwarden.conf"
ACL = REPO / "deploy" / "mosquitto" / "acl"
KITCHEN, NURSERY = "kitchen", "nursery"  # two devices
BRIDGE, HA = "cloud.bridge", "home.assistant"
ACCOUNTS = (KITCHEN, NURSERY, BRIDGE, HA)


def password(user: str) -> str:
    return f"{user}-s3cret"


@dataclass(frozen=True)
class Broker:
    port: int  # the loopback plain listener
    tls_port: int
    ca: Path


@contextmanager
def production_broker(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto running deploy/mosquitto/soundwarden.conf with only its file paths and ports
    swapped for the test's own, and an account for each of ACCOUNTS."""
    ca, cert, key = tls_files(tmp_path)
    passwd = tmp_path / "passwd"
    for user in ACCOUNTS:
        create = ["-c"] if user == ACCOUNTS[0] else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(passwd), user, password(user)], check=True
        )
    port, tls_port = free_port(), free_port()
    config = CONFIG.read_text()
    for production, test in {
        "/etc/mosquitto/soundwarden/passwd": str(passwd),
        "/etc/mosquitto/soundwarden/acl": str(ACL),
        "/etc/mosquitto/certs/server.crt": str(cert),
        "/etc/mosquitto/certs/server.key": str(key),
        "listener 1883 127.0.0.1": f"listener {port} 127.0.0.1",
        "listener 8883": f"listener {tls_port} 127.0.0.1",
    }.items():
        assert production in config, f"{CONFIG} no longer says {production!r}: update this test"
        config = config.replace(production, test)
    server = Mosquitto(tmp_path, anonymous=False, extra=config)
    server.start()
    try:
        wait_for(lambda: _listens(port) and _listens(tls_port), timeout_s=10)
        yield Broker(port, tls_port, ca)
    finally:
        server.stop()


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


class Peer:
    """An MQTT 5 client that waits for each answer, so a test sees reason codes directly."""

    def __init__(
        self, broker: Broker, user: str | None, secret: str | None = None, *, tls: bool = False
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._answers: dict[int, list[ReasonCode]] = {}
        self._answered = threading.Condition(self._lock)
        self.connack: ReasonCode | None = None
        connected = threading.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"{user or 'anonymous'}-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        if user is not None:
            client.username_pw_set(user, password(user) if secret is None else secret)
        if tls:
            client.tls_set(ca_certs=str(broker.ca), cert_reqs=ssl.CERT_REQUIRED)

        def on_connect(_c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
            self.connack = rc
            connected.set()

        def on_message(_c: object, _u: object, message: mqtt.MQTTMessage) -> None:
            with self._lock:
                self.messages.append((message.topic, bytes(message.payload)))

        client.on_connect = on_connect
        client.on_message = on_message
        client.on_publish = lambda _c, _u, mid, rc, _p: self._answer(mid, [rc])
        client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._answer(mid, list(rcs))
        client.connect("127.0.0.1", broker.tls_port if tls else broker.port)
        client.loop_start()
        assert connected.wait(10), "no CONNACK"
        self.client = client

    @property
    def accepted(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def _answer(self, mid: int, codes: list[ReasonCode]) -> None:
        with self._lock:
            self._answers[mid] = codes
            self._answered.notify_all()

    def _wait(self, mid: int) -> list[ReasonCode]:
        with self._lock:
            assert self._answered.wait_for(lambda: mid in self._answers, timeout=10)
            return self._answers.pop(mid)

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> ReasonCode:
        """Publish with QoS 1 and return the PUBACK's reason code."""
        with self._lock:  # the answer must not be handled before its mid is known
            info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(info.mid)[0]

    def subscribe(self, topic: str) -> ReasonCode:
        with self._lock:
            _, mid = self.client.subscribe(topic, qos=1)
        assert mid is not None
        return self._wait(mid)[0]

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
