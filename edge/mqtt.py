"""MQTT: drains the outbox to the broker and keeps the device's retained topics true.

The broker holds `<prefix>/<device>/availability`, retained: `online` once connected, `offline`
on a clean stop, and (as the last will) `offline` when the device vanishes. Events are published
with QoS 1 straight from the spool; an entry is removed only when its PUBACK arrives, so a broker
or network outage just lets the spool grow, and after the reconnect (with backoff) it drains in
order. Within one process paho itself re-sends, after a reconnect, every message still waiting
for its PUBACK, so the outbox never hands paho an entry twice; after a restart the spool replays
what was never acknowledged. Delivery is at least once: only an entry whose PUBACK was lost to a
crash goes again, and its episode id and type let subscribers recognise the duplicate.

Retained topics (`state/<label>`, `status`, Home Assistant discovery) carry the latest value
only, so they bypass the spool: the link remembers each one and publishes it again after every
(re)connect, in case the broker restarted without persistence. Only the outbox thread sends
them, always the latest value, so a state that changes while a connect replays the old one
still ends as the latest on the broker. Discovery also goes out again
whenever Home Assistant announces itself `online` on its status topic.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.config import MqttConfig
from edge.spool import Spool
from models.contract import (
    OFFLINE,
    ONLINE,
    availability_topic,
    events_topic,
    model_set_topic,
)

log = logging.getLogger(__name__)


class MqttLink:
    def __init__(
        self,
        spool: Spool,
        *,
        device: str,
        config: MqttConfig,
        ha_status_topic: str | None = None,
        on_model_set: Callable[[bytes], None] | None = None,
        max_inflight: int = 20,
    ) -> None:
        self._spool = spool
        self._topics = {"event": events_topic(device, config.prefix)}  # spool kind -> topic
        self._availability = availability_topic(device, config.prefix)
        self._ha_status_topic = ha_status_topic
        self._model_set_topic = model_set_topic(device, config.prefix)
        self._on_model_set = on_model_set
        self._retained: dict[str, str] = {}  # topic -> latest payload, replayed on connect
        self._unsent: set[str] = set()  # retained topics whose latest value is not sent yet
        self._discovery: list[tuple[str, str]] = []
        self._max_inflight = max_inflight
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the retained values and discovery
        # Spool seq -> paho's handle; only the pump thread touches it. Polling the handles,
        # rather than mapping message ids in on_publish, has no race with a PUBACK that
        # arrives before `publish` returns, and no confusion when message ids wrap around.
        self._inflight: dict[int, mqtt.MQTTMessageInfo] = {}
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soundwarden-{device}", clean_session=True
        )
        if config.username:
            client.username_pw_set(config.username, config.password)
        if config.tls is not None:
            client.tls_set(
                ca_certs=str(config.tls.ca_file) if config.tls.ca_file else None,
                certfile=str(config.tls.cert_file) if config.tls.cert_file else None,
                keyfile=str(config.tls.key_file) if config.tls.key_file else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            client.tls_insecure_set(config.tls.insecure)
        client.will_set(self._availability, OFFLINE, qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=config.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        self._host, self._port, self._keepalive = config.host, config.port, config.keepalive_s
        self._drain_deadline = 0.0
        self._pump_thread = threading.Thread(target=self._pump, name="outbox", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=self._keepalive)
        self._client.loop_start()
        self._pump_thread.start()

    def notify(self) -> None:
        """Something was queued: send without waiting for the next poll."""
        self._wake.set()

    def publish_retained(self, topic: str, payload: str) -> None:
        """Set a retained topic's value: sent as soon as connected, and again after reconnects."""
        with self._lock:
            if self._retained.get(topic) == payload:
                return
            self._retained[topic] = payload
            self._unsent.add(topic)
        self._wake.set()

    def set_discovery(self, messages: list[tuple[str, str]]) -> None:
        """Home Assistant discovery messages (topic, payload), retained."""
        with self._lock:
            self._discovery = list(messages)
        if self._connected.is_set():
            self._publish_discovery()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Give queued events `timeout_s` to reach the broker (connecting first if need be:
        a short file replay can end before the first connect), publish `offline`, disconnect.
        Whatever is still queued stays in the spool for the next start."""
        self._drain_deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        self._pump_thread.join(timeout_s + 1)
        if self._connected.is_set():
            self._client.publish(self._availability, OFFLINE, qos=1, retain=True).wait_for_publish(
                timeout_s
            )
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "MQTT broker %s:%d refused the connection: %s", self._host, self._port, reason_code
            )
            return
        log.info("MQTT connected to %s:%d", self._host, self._port)
        client.publish(self._availability, ONLINE, qos=1, retain=True)
        if self._ha_status_topic:
            client.subscribe(self._ha_status_topic, qos=1)
        if self._on_model_set:
            # Retained: the cloud's latest word arrives on every (re)connect.
            client.subscribe(self._model_set_topic, qos=1)
        self._publish_discovery()
        with self._lock:
            self._unsent.update(self._retained)
        self._connected.set()
        self._wake.set()

    def _publish_discovery(self) -> None:
        with self._lock:
            messages = list(self._discovery)
        for topic, payload in messages:
            self._client.publish(topic, payload, qos=1, retain=True)

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._ha_status_topic and msg.payload == ONLINE.encode():
            log.info("Home Assistant came online: discovery sent again")
            self._publish_discovery()
        elif msg.topic == self._model_set_topic and self._on_model_set:
            self._on_model_set(bytes(msg.payload))

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if self._connected.is_set() and not self._stop.is_set():
            log.warning("MQTT disconnected (%s); events wait in the spool", reason_code)
        self._connected.clear()

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _mid: int,
        _reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        self._wake.set()  # the pump collects the acknowledgement

    def _pump(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            self._collect_acks()
            if self._connected.is_set():
                self._send_retained()
                self._send_batch()
            # On stop: leave once everything is sent and acknowledged or the drain time is up.
            if self._stop.is_set() and (
                (self._spool.depth(kind="event") == 0 and not self._unsent)
                or time.monotonic() > self._drain_deadline
            ):
                return

    def _send_retained(self) -> None:
        """The latest value of every retained topic not sent since it changed or since the
        connect. Taken under the lock, sent outside it: a change meanwhile is sent next round."""
        with self._lock:
            pending = [(topic, self._retained[topic]) for topic in self._unsent]
            self._unsent.clear()
        for topic, payload in pending:
            self._client.publish(topic, payload, qos=1, retain=True)

    def _collect_acks(self) -> None:
        for seq, info in list(self._inflight.items()):
            if info.is_published():
                self._spool.ack(seq)
                del self._inflight[seq]

    def _send_batch(self) -> None:
        room = self._max_inflight - len(self._inflight)
        if room <= 0:
            return
        for entry in self._spool.peek(room + len(self._inflight), kind="event"):
            if entry.seq in self._inflight:
                continue
            if room <= 0 or not self._connected.is_set():
                return
            info = self._client.publish(self._topics[entry.kind], entry.payload, qos=1)
            # Queued by paho even when the connection dropped meanwhile: it goes on reconnect.
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("MQTT publish refused (%s); retrying shortly", info.rc)
                return
            self._inflight[entry.seq] = info
            room -= 1
