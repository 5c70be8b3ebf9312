"""MQTT: drains the outbox to the broker, and keeps the device's availability honest.

The broker holds `<prefix>/<device>/availability`, retained: `online` once connected, `offline`
on a clean stop, and (as the last will) `offline` when the device vanishes. Events are published
with QoS 1 straight from the spool; an entry is removed only when its PUBACK arrives, so a broker
or network outage just lets the spool grow, and after the reconnect (with backoff) it drains in
order. Delivery is at least once: an entry whose acknowledgement was lost is sent again, and its
episode id and type let subscribers recognise the duplicate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from edge.spool import Spool
from models.contract import DEFAULT_PREFIX, events_topic

log = logging.getLogger(__name__)


def availability_topic(device: str, prefix: str = DEFAULT_PREFIX) -> str:
    return f"{prefix}/{device}/availability"


class OutboxSender:
    def __init__(
        self,
        spool: Spool,
        *,
        device: str,
        host: str,
        port: int = 1883,
        prefix: str = DEFAULT_PREFIX,
        username: str | None = None,
        password: str | None = None,
        max_inflight: int = 20,
        reconnect_max_s: int = 30,
    ) -> None:
        self._spool = spool
        self._topics: dict[str, Callable[[], str]] = {
            "event": lambda: events_topic(device, prefix),
        }
        self._availability = availability_topic(device, prefix)
        self._max_inflight = max_inflight
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()  # guards the two maps below, never held across paho calls
        self._inflight: dict[int, int] = {}  # message id -> spool seq
        self._early_acks: set[int] = set()  # PUBACKs that beat `publish` returning its mid
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"soundwarden-{device}", clean_session=True
        )
        if username:
            client.username_pw_set(username, password)
        client.will_set(self._availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        self._host, self._port = host, port
        self._pump_thread = threading.Thread(target=self._pump, name="outbox", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._client.connect_async(self._host, self._port, keepalive=30)
        self._client.loop_start()
        self._pump_thread.start()

    def notify(self) -> None:
        """Something was queued: send without waiting for the next poll."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Publish `offline`, give queued entries `timeout_s` to drain, disconnect."""
        self._stop.set()
        self._wake.set()
        self._pump_thread.join(timeout_s)
        if self._connected.is_set():
            self._client.publish(
                self._availability, "offline", qos=1, retain=True
            ).wait_for_publish(timeout_s)
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
        client.publish(self._availability, "online", qos=1, retain=True)
        self._connected.set()
        self._wake.set()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if self._connected.is_set():
            log.warning("MQTT disconnected (%s); events wait in the spool", reason_code)
        self._connected.clear()
        with self._lock:  # unacknowledged entries are still in the spool: they go again
            self._inflight.clear()
            self._early_acks.clear()

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: object,
        mid: int,
        _reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        with self._lock:
            seq = self._inflight.pop(mid, None)
            if seq is None:
                self._early_acks.add(mid)
                return
        self._spool.ack(seq)
        self._wake.set()

    def _pump(self) -> None:
        while True:
            self._wake.wait(0.5)
            self._wake.clear()
            if self._connected.is_set():
                self._send_batch()
            # On stop: leave once everything is acknowledged, or at once while offline (the
            # spool keeps the rest for the next start).
            if self._stop.is_set() and (not self._connected.is_set() or self._spool.depth() == 0):
                return

    def _send_batch(self) -> None:
        with self._lock:
            busy = set(self._inflight.values())
            room = self._max_inflight - len(self._inflight)
        for entry in self._spool.peek(self._max_inflight + len(busy)):
            if room <= 0 or not self._connected.is_set():
                return
            if entry.seq in busy:
                continue
            topic = self._topics[entry.kind]()
            info = self._client.publish(topic, entry.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            with self._lock:
                if info.mid in self._early_acks:
                    self._early_acks.discard(info.mid)
                    acked = True
                else:
                    self._inflight[info.mid] = entry.seq
                    acked = False
            if acked:
                self._spool.ack(entry.seq)
            room -= 1
