"""The production Mosquitto configuration (deploy/mosquitto/) on a real broker.

Devices log in with their device id as username; the ACL keeps each to its own topics. A denied
publish is acknowledged to MQTT 3.1.1 clients like any other and silently dropped, so every
"refused" here is shown twice: the MQTT 5 reason code, and the message not reaching a
subscriber that did receive a later, allowed message from the same client (the broker keeps a
client's messages in order). The last test runs the real edge daemon under its device account,
proving the ACL covers every topic it publishes.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.reasoncodes import ReasonCode

from models.contract import EventPayload
from tests.conftest import CRY_FULL_BAND, REPO
from tests.deploy.broker import (
    ACCOUNTS,
    BRIDGE,
    HA,
    KITCHEN,
    NURSERY,
    Broker,
    Peer,
    password,
    production_broker,
)
from tests.mosquitto import wait_for


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Broker]:
    with production_broker(tmp_path) as running:
        yield running


@pytest.fixture()
def peers(broker: Broker) -> Iterator[dict[str, Peer]]:
    connected = {user: Peer(broker, user) for user in ACCOUNTS}
    yield connected
    for peer in connected.values():
        peer.close()


def test_the_bridge_receives_a_devices_events_and_a_device_cannot_publish_as_another(
    peers: dict[str, Peer],
) -> None:
    bridge, kitchen = peers[BRIDGE], peers[KITCHEN]
    assert bridge.subscribe("soundwarden/#").value == 1  # granted QoS 1
    own = f"soundwarden/{KITCHEN}"
    for topic in ("events", "status", "availability", "state/cry", "model/state"):
        assert not kitchen.publish(f"{own}/{topic}", f"kitchen {topic}").is_failure, topic

    forged = [
        f"soundwarden/{NURSERY}/events",
        f"soundwarden/{NURSERY}/availability",
        f"soundwarden/{NURSERY}/state/cry",
        f"soundwarden/{NURSERY}/model/state",
        f"soundwarden/{NURSERY}/model/set",
        f"{own}/model/set",  # not even its own update notice: only the cloud sends those
        "soundwarden/kitchen-2/events",
        f"homeassistant/device/{NURSERY}/config",
    ]
    for topic in forged:
        assert kitchen.publish(topic, "forged") == ReasonCode(4, "Not authorized"), topic
    kitchen.publish(f"{own}/events", "marker")  # sent after the forgeries: arrives after them
    wait_for(lambda: b"marker" in bridge.received(f"{own}/events"), timeout_s=10)
    assert bridge.received(f"{own}/events") == [b"kitchen events", b"marker"]
    assert bridge.received(f"{own}/model/state") == [b"kitchen model/state"]
    assert [t for t, p in bridge.messages if p == b"forged"] == []


def test_a_device_reads_its_own_update_notices_and_nothing_else(
    broker: Broker, peers: dict[str, Peer]
) -> None:
    bridge = peers[BRIDGE]
    for device in (KITCHEN, NURSERY):  # retained, as the cloud sends them
        notice = f"update {device}"
        assert not bridge.publish(f"soundwarden/{device}/model/set", notice, retain=True).is_failure
    assert bridge.publish(f"soundwarden/{KITCHEN}/events", "forged").is_failure
    peers[NURSERY].publish(f"soundwarden/{NURSERY}/events", "nursery event")

    kitchen = Peer(broker, KITCHEN)
    try:
        assert kitchen.subscribe(f"soundwarden/{KITCHEN}/model/set").value == 1
        kitchen.subscribe(f"soundwarden/{NURSERY}/model/set")
        kitchen.subscribe("soundwarden/#")
        kitchen.subscribe("homeassistant/status")
        peers[NURSERY].publish(f"soundwarden/{NURSERY}/events", "nursery event")
        peers[HA].publish("homeassistant/status", "online")
        wait_for(lambda: kitchen.received("homeassistant/status") == [b"online"], timeout_s=10)
        topics = {topic for topic, _ in kitchen.messages}
        assert topics == {f"soundwarden/{KITCHEN}/model/set", "homeassistant/status"}
        assert kitchen.received(f"soundwarden/{KITCHEN}/model/set")[0] == b"update kitchen"
    finally:
        kitchen.close()


def test_home_assistant_reads_the_fleet_and_its_discovery(peers: dict[str, Peer]) -> None:
    ha, kitchen = peers[HA], peers[KITCHEN]
    assert ha.subscribe("soundwarden/#").value == 1
    assert ha.subscribe("homeassistant/#").value == 1
    discovery = [
        f"homeassistant/device/{KITCHEN}/config",
        f"homeassistant/binary_sensor/{KITCHEN}/cry/config",  # the per-component form
    ]
    for topic in discovery:
        assert not kitchen.publish(topic, "{}", retain=True).is_failure, topic
    kitchen.publish(f"soundwarden/{KITCHEN}/events", "event")
    wait_for(lambda: ha.received(f"soundwarden/{KITCHEN}/events") == [b"event"], timeout_s=10)
    assert all(ha.received(topic) == [b"{}"] for topic in discovery)
    # Home Assistant reads; it does not send model updates.
    assert ha.publish(f"soundwarden/{KITCHEN}/model/set", "x").is_failure


def test_anonymous_clients_and_wrong_passwords_are_refused(broker: Broker) -> None:
    for user, secret in [(None, None), (KITCHEN, "guess"), ("stranger", "stranger")]:
        peer = Peer(broker, user, secret)
        try:
            assert not peer.accepted, (user, peer.connack)
        finally:
            peer.close()


def test_the_tls_listener_carries_a_devices_events(broker: Broker, peers: dict[str, Peer]) -> None:
    bridge = peers[BRIDGE]  # on the loopback listener: one broker, two listeners
    bridge.subscribe("soundwarden/#")
    kitchen = Peer(broker, KITCHEN, tls=True)
    try:
        assert kitchen.accepted
        assert not kitchen.publish(f"soundwarden/{KITCHEN}/events", "over TLS").is_failure
        assert kitchen.publish(f"soundwarden/{NURSERY}/events", "forged").is_failure
        wait_for(lambda: bridge.received(f"soundwarden/{KITCHEN}/events") == [b"over TLS"])
    finally:
        kitchen.close()
    # The listener really is TLS, with the configured certificate: a client that does not
    # trust the test CA refuses it.
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=5) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")


def test_the_real_edge_daemon_publishes_everything_under_its_device_account(
    broker: Broker, peers: dict[str, Peer], tmp_path: Path
) -> None:
    ha = peers[HA]
    ha.subscribe("soundwarden/#")
    ha.subscribe("homeassistant/#")
    config = tmp_path / "edge.toml"
    config.write_text(
        f'device = "{KITCHEN}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[audio.source]\ntype = "file"\npath = "{CRY_FULL_BAND}"\nrealtime = false\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker.tls_port}\nusername = "{KITCHEN}"\n'
        f'[mqtt.tls]\nca_file = "{broker.ca}"\n'
    )
    env = {**os.environ, "SOUNDWARDEN_MQTT_PASSWORD": password(KITCHEN)}
    daemon = subprocess.run(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert daemon.returncode == 0, daemon.stderr
    own = f"soundwarden/{KITCHEN}"
    wait_for(lambda: ha.received(f"{own}/availability")[-1:] == [b"offline"], timeout_s=10)
    steps = [EventPayload.model_validate_json(p).type for p in ha.received(f"{own}/events")]
    assert steps[0] == "start" and steps[-1] == "end"
    assert ha.received(f"{own}/state/cry")[-1] == b"OFF"
    assert ha.received(f"{own}/status")
    assert json.loads(ha.received(f"homeassistant/device/{KITCHEN}/config")[0])
