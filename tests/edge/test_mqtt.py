"""The MQTT link against a real Mosquitto: delivery, outages, restarts, last will."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.mqtt import MqttLink
from edge.spool import Spool
from tests.conftest import REPO
from tests.mosquitto import Mosquitto, Subscriber, tls_files, wait_for


def _config(broker: Mosquitto, **overrides: object) -> MqttConfig:
    return MqttConfig.model_validate({"host": "127.0.0.1", "port": broker.port, **overrides})


def _queue(spool: Spool, first: int, count: int) -> None:
    for i in range(first, first + count):
        spool.put(f"ep{i}:start", "event", f'{{"id": "ep{i}"}}'.encode())


def test_queued_events_reach_subscribers_and_leave_the_spool(
    broker: Mosquitto, tmp_path: Path
) -> None:
    subscriber = Subscriber(broker.port)
    spool = Spool(tmp_path / "outbox.db")
    link = MqttLink(spool, device="nursery", config=_config(broker))
    link.start()
    try:
        wait_for(lambda: link.connected)
        _queue(spool, 0, 30)
        link.notify()
        wait_for(lambda: len(subscriber.payloads("soundwarden/nursery/events")) >= 30)
        wait_for(lambda: spool.depth() == 0)
        received = subscriber.payloads("soundwarden/nursery/events")
        assert received[:30] == [f'{{"id": "ep{i}"}}'.encode() for i in range(30)]
        assert subscriber.payloads("soundwarden/nursery/availability")[-1] == b"online"
    finally:
        link.stop()
        subscriber.close()


def test_a_broker_outage_loses_nothing(broker: Mosquitto, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "outbox.db")
    link = MqttLink(spool, device="nursery", config=_config(broker, reconnect_max_s=2))
    link.start()
    try:
        wait_for(lambda: link.connected)
        broker.stop()
        wait_for(lambda: not link.connected)
        _queue(spool, 0, 25)  # events raised while the broker is down
        link.notify()
        time.sleep(1.0)
        assert spool.depth() == 25
        broker.start()
        subscriber = Subscriber(broker.port)
        try:
            wait_for(lambda: spool.depth() == 0, timeout_s=30)
            wait_for(lambda: len(subscriber.payloads("soundwarden/nursery/events")) >= 25)
            time.sleep(0.5)
            expected = [f'{{"id": "ep{i}"}}'.encode() for i in range(25)]
            assert subscriber.payloads("soundwarden/nursery/events") == expected  # once, in order
        finally:
            subscriber.close()
    finally:
        link.stop()


def test_stop_says_offline_and_a_killed_device_is_declared_offline_by_its_will(
    broker: Mosquitto, tmp_path: Path
) -> None:
    subscriber = Subscriber(broker.port)
    try:
        link = MqttLink(Spool(tmp_path / "a.db"), device="kitchen", config=_config(broker))
        link.start()
        wait_for(lambda: subscriber.payloads("soundwarden/kitchen/availability") == [b"online"])
        link.stop()
        wait_for(
            lambda: subscriber.payloads("soundwarden/kitchen/availability")[-1:] == [b"offline"]
        )

        device = (
            "import sys\n"
            "from edge.config import MqttConfig\n"
            "from edge.mqtt import MqttLink\n"
            "from edge.spool import Spool\n"
            f"s = MqttLink(Spool({str(tmp_path / 'b.db')!r}), device='garage',"
            f" config=MqttConfig(host='127.0.0.1', port={broker.port}))\n"
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


def test_retained_state_is_restored_after_a_broker_restart_without_persistence(
    broker: Mosquitto, tmp_path: Path
) -> None:
    link = MqttLink(
        Spool(tmp_path / "o.db"), device="nursery", config=_config(broker, reconnect_max_s=1)
    )
    link.start()
    try:
        wait_for(lambda: link.connected)
        link.publish_retained("soundwarden/nursery/state/cry", "ON")
        link.publish_retained("soundwarden/nursery/state/cry", "OFF")
        broker.stop()  # this broker keeps nothing: the retained values are gone
        broker.start()
        wait_for(lambda: link.connected, timeout_s=30)
        late = Subscriber(broker.port)  # subscribes after the restart: sees retained only
        try:
            wait_for(lambda: late.payloads("soundwarden/nursery/state/cry") == [b"OFF"])
            assert late.payloads("soundwarden/nursery/availability") == [b"online"]
        finally:
            late.close()
    finally:
        link.stop()


def test_a_state_change_racing_the_connect_replay_still_ends_as_the_latest_value(
    broker: Mosquitto, tmp_path: Path
) -> None:
    """A short file replay raises and ends an episode while the link is still connecting: the
    remembered `ON` goes out on connect, and `OFF` is set just then (forced here at the moment
    `ON` is handed to paho). The broker must keep `OFF`, not a cry that never ends."""
    topic = "soundwarden/nursery/state/cry"
    link = MqttLink(Spool(tmp_path / "o.db"), device="nursery", config=_config(broker))
    link.publish_retained(topic, "ON")  # before the first connect: remembered only
    send = link._client.publish

    def send_then_end_the_cry(to: str, payload: str, **options: Any) -> mqtt.MQTTMessageInfo:
        info = send(to, payload, **options)
        if to == topic and payload == "ON":
            link.publish_retained(topic, "OFF")
        return info

    link._client.publish = send_then_end_the_cry  # type: ignore[method-assign]
    link.start()
    try:
        wait_for(lambda: link.connected)
        late = Subscriber(broker.port)
        try:
            wait_for(lambda: late.payloads(topic)[-1:] == [b"OFF"])
        finally:
            late.close()
    finally:
        link.stop()


def test_discovery_is_sent_again_when_home_assistant_comes_online(
    broker: Mosquitto, tmp_path: Path
) -> None:
    seen: list[bytes] = []
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_connect = lambda c, *_: c.subscribe("homeassistant/device/#", qos=1)
    watcher.on_message = lambda _c, _u, m: seen.append(m.payload)
    watcher.connect("127.0.0.1", broker.port)
    watcher.loop_start()
    link = MqttLink(
        Spool(tmp_path / "o.db"),
        device="nursery",
        config=_config(broker),
        ha_status_topic="homeassistant/status",
    )
    link.set_discovery([("homeassistant/device/nursery/config", '{"dev": {}}')])
    link.start()
    try:
        wait_for(lambda: len(seen) == 1)
        watcher.publish("homeassistant/status", "offline", qos=1)
        watcher.publish("homeassistant/status", "online", qos=1)  # HA restarted
        wait_for(lambda: len(seen) == 2)
        assert seen == [b'{"dev": {}}'] * 2
    finally:
        link.stop()
        watcher.disconnect()
        watcher.loop_stop()


def test_tls_with_username_and_password(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path)
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "nursery", "s3cret"], check=True
    )
    secure = Mosquitto(
        tmp_path,
        anonymous=False,
        listener=f"cafile {ca}\ncertfile {cert}\nkeyfile {key}",
        extra=f"password_file {passwords}",
    )
    secure.start()
    try:
        tls = {"ca_file": str(ca)}
        good = MqttLink(
            Spool(tmp_path / "a.db"),
            device="nursery",
            config=_config(secure, tls=tls, username="nursery", password="s3cret"),
        )
        bad = MqttLink(
            Spool(tmp_path / "b.db"),
            device="intruder",
            config=_config(secure, tls=tls, username="nursery", password="guess"),
        )
        untrusted = MqttLink(  # right password, but the broker's CA is not trusted
            Spool(tmp_path / "c.db"),
            device="nursery",
            config=_config(secure, username="nursery", password="s3cret", tls={}),
        )
        for link in (good, bad, untrusted):
            link.start()
        try:
            wait_for(lambda: good.connected)
            time.sleep(1.0)
            assert not bad.connected and not untrusted.connected
        finally:
            for link in (good, bad, untrusted):
                link.stop(timeout_s=1)
    finally:
        secure.stop()
