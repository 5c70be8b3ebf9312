"""The outbox sender against a real Mosquitto: delivery, outages, restarts, last will."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.mqtt import OutboxSender
from edge.spool import Spool
from tests.conftest import REPO
from tests.mosquitto import Mosquitto


class Subscriber:
    """Collects what arrives under soundwarden/# (QoS 1)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_connect = lambda c, *_: c.subscribe("soundwarden/#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

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


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    server = Mosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


def _queue(spool: Spool, first: int, count: int) -> None:
    for i in range(first, first + count):
        spool.put(f"ep{i}:start", "event", f'{{"id": "ep{i}"}}'.encode())


def test_queued_events_reach_subscribers_and_leave_the_spool(
    broker: Mosquitto, tmp_path: Path
) -> None:
    subscriber = Subscriber(broker.port)
    spool = Spool(tmp_path / "outbox.db")
    sender = OutboxSender(spool, device="nursery", host="127.0.0.1", port=broker.port)
    sender.start()
    try:
        wait_for(lambda: sender.connected)
        _queue(spool, 0, 30)
        sender.notify()
        wait_for(lambda: len(subscriber.payloads("soundwarden/nursery/events")) >= 30)
        wait_for(lambda: spool.depth() == 0)
        received = subscriber.payloads("soundwarden/nursery/events")
        assert received[:30] == [f'{{"id": "ep{i}"}}'.encode() for i in range(30)]
        assert subscriber.payloads("soundwarden/nursery/availability")[-1] == b"online"
    finally:
        sender.stop()
        subscriber.close()


def test_a_broker_outage_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "outbox.db")
    sender = OutboxSender(
        spool, device="nursery", host="127.0.0.1", port=broker.port, reconnect_max_s=2
    )
    sender.start()
    try:
        wait_for(lambda: sender.connected)
        broker.stop()
        wait_for(lambda: not sender.connected)
        _queue(spool, 0, 25)  # events raised while the broker is down
        sender.notify()
        time.sleep(1.0)
        assert spool.depth() == 25
        broker.start()
        subscriber = Subscriber(broker.port)
        try:
            wait_for(lambda: spool.depth() == 0, timeout_s=30)
            wait_for(lambda: len(set(subscriber.payloads("soundwarden/nursery/events"))) == 25)
        finally:
            subscriber.close()
    finally:
        sender.stop()


def test_stop_says_offline_and_a_killed_device_is_declared_offline_by_its_will(
    broker: Mosquitto, tmp_path: Path
) -> None:
    subscriber = Subscriber(broker.port)
    try:
        sender = OutboxSender(
            Spool(tmp_path / "a.db"), device="kitchen", host="127.0.0.1", port=broker.port
        )
        sender.start()
        wait_for(lambda: subscriber.payloads("soundwarden/kitchen/availability") == [b"online"])
        sender.stop()
        wait_for(
            lambda: subscriber.payloads("soundwarden/kitchen/availability")[-1:] == [b"offline"]
        )

        device = (
            "import sys\n"
            "from edge.mqtt import OutboxSender\n"
            "from edge.spool import Spool\n"
            f"s = OutboxSender(Spool({str(tmp_path / 'b.db')!r}), device='garage',"
            f" host='127.0.0.1', port={broker.port})\n"
            "s.start()\n"
            "sys.stdin.read()\n"
        )
        process = subprocess.Popen([sys.executable, "-c", device], cwd=REPO, stdin=subprocess.PIPE)
        wait_for(lambda: subscriber.payloads("soundwarden/garage/availability") == [b"online"])
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        wait_for(
            lambda: subscriber.payloads("soundwarden/garage/availability")[-1:] == [b"offline"]
        )
    finally:
        subscriber.close()
