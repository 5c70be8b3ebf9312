"""The MQTT bridge: what the fleet publishes, into the database, and rollouts out to it.

It subscribes (QoS 1) to every device's `events`, `status`, `availability` and `model/state`
topics and records events as `Event` rows and the rest on the `Device` row the devices pages
show; a model/state also moves the device's rollouts on (cloud/rollout.py).

It is also the one publisher of `model/set`: what rollouts owe devices waits in the database
until the bridge has published it, retained at QoS 1, and the broker has acknowledged it. It
looks after each model/state it stores and every second, so a rollout started, resumed or
aborted while the bridge was down or disconnected reaches the devices once it is back.

Nothing a device publishes while the cloud is down is lost: the bridge keeps a persistent session
(`clean_session=False` under a stable client id), so the broker queues QoS 1 messages for it, and
it acknowledges each message only after the database has it (paho's manual acks). A message the
bridge had not finished when it stopped is therefore sent again, and an event that had in fact
been stored is recognised as a duplicate (a replay is identical, field for field) and kept once.

Database writes run on a worker thread, not on paho's network thread: a slow or unreachable
database then only delays acknowledgements (and the broker, with its in-flight window full, holds
back the rest) instead of stalling keepalives. While the database is unreachable the worker
retries the message in hand with backoff; one the database refuses for good (or that breaks the
contract) is logged, counted and skipped. One worker keeps the acknowledgements in arrival order,
as MQTT wants.

There is one bridge per fleet, whatever the number of processes serving its database
(`serve --workers N`, services on several machines): two would share the client id and kick
each other off the broker. The processes elect it with a lock (cloud/leadership.py); the others
stand by and one of them takes over within seconds of the leader's death.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import ssl
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from sqlalchemy import select
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import sessionmaker

from cloud import rollout
from cloud.core.config import Settings
from cloud.core.metrics import MQTT_MESSAGES
from cloud.leadership import LeaderLock, leader_lock
from cloud.tables import Device, Event
from models.contract import (
    OFFLINE,
    ONLINE,
    EventPayload,
    ModelStatePayload,
    StatusPayload,
    model_set_topic,
)

log = logging.getLogger(__name__)

Result = Literal["ok", "duplicate", "unknown_device", "malformed", "error"]
KINDS = ("events", "status", "availability", "model/state")
PUBLISH_EVERY_S = 1.0  # how often owed model/set messages are looked for
PUBLISH_TIMEOUT_S = 10.0  # for the broker's acknowledgement of one
LEAD_CHECK_S = 2.0  # how often a process standing by tries for the lead, and the leader checks it


class MalformedMessageError(ValueError):
    """A message breaking the contract in a way its pydantic model does not check."""


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """`mqtt://[user:password@]host[:port]`, or `mqtts://` for TLS (percent-encode `@`, `:`
        and `/` in the password). The broker's certificate must chain to a CA the system trusts,
        or to the bundle named by `SSL_CERT_FILE`."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"not an mqtt:// or mqtts:// broker URL: {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


def broker_url(settings: Settings) -> str | None:
    """The fleet's broker, else the embedded demo broker, else none."""
    if settings.mqtt_url:
        return settings.mqtt_url
    if settings.embedded_broker_port is not None:
        return f"mqtt://127.0.0.1:{settings.embedded_broker_port}"
    return None


class MqttBridge:
    def __init__(self, settings: Settings, sessions: sessionmaker[Db]) -> None:
        url = broker_url(settings)
        if url is None:
            raise ValueError("no broker: set mqtt_url (or embedded_broker_port for a demo)")
        self._address = BrokerAddress.parse(url)
        self._prefix = settings.mqtt_prefix
        self._sessions = sessions
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue()
        self._warned: set[str] = set()  # unknown devices already logged; worker thread only
        self._connected = False
        self._stopping = threading.Event()
        # One bridge per fleet prefix: the broker keeps the session (subscriptions and queued
        # messages) under this id while the cloud is down.
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"soundwarden-cloud-{settings.mqtt_prefix}",
            clean_session=False,
            manual_ack=True,
        )
        if self._address.username:
            client.username_pw_set(self._address.username, self._address.password)
        if self._address.tls:
            client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._worker = threading.Thread(target=self._work, name="mqtt-bridge", daemon=True)

    def start(self) -> None:
        """Connect in the background (retrying with backoff while the broker is away)."""
        log.info("MQTT bridge connecting to %s:%d", self._address.host, self._address.port)
        self._worker.start()
        self._client.connect_async(self._address.host, self._address.port, keepalive=30)
        self._client.loop_start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Store and acknowledge what has arrived, then disconnect. Messages still arriving
        meanwhile stay unacknowledged, so the broker sends them again on the next start, and so
        does a message waiting for the database to come back."""
        self._stopping.set()
        self._queue.put(None)
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            log.warning("MQTT bridge stopped with %d messages unstored", self._queue.qsize())
        self._client.disconnect()
        self._client.loop_stop()
        log.info("MQTT bridge stopped")

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "MQTT broker %s:%d refused the bridge: %s",
                self._address.host,
                self._address.port,
                reason_code,
            )
            return
        self._connected = True
        log.info(
            "MQTT bridge connected to %s:%d (session %s)",
            self._address.host,
            self._address.port,
            "resumed" if flags.session_present else "new",
        )
        # Also on a resumed session: a broker restarted without persistence forgot it.
        client.subscribe([(f"{self._prefix}/+/{kind}", 1) for kind in KINDS])

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: object,
        _flags: object,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if self._connected and reason_code.is_failure:
            log.warning("MQTT bridge disconnected (%s); reconnecting", reason_code)
        self._connected = False

    def _on_message(self, _client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(msg)

    def _work(self) -> None:
        due = time.monotonic()
        while True:
            try:
                msg = self._queue.get(timeout=max(0.0, due - time.monotonic()))
            except queue.Empty:
                pass
            else:
                if msg is None:
                    return
                if self._handle(msg.topic, bytes(msg.payload)):
                    self._client.ack(msg.mid, msg.qos)
                # A model/state may have moved a rollout on: publish that at once.
                if not msg.topic.endswith("/model/state") and time.monotonic() < due:
                    continue
            self._publish_owed()
            due = time.monotonic() + PUBLISH_EVERY_S

    def _publish_owed(self) -> None:
        """Publish the model/set messages rollouts owe, in order, each marked sent only once
        the broker has it; the first that fails leaves itself and the rest for the next try."""
        if not self._connected:
            return
        try:
            with self._sessions() as db:
                owed = rollout.owed(db)
                db.commit()
            for message in owed:
                with self._sessions() as db:
                    rollout.sending(db, message)
                    db.commit()
                if not self._publish(model_set_topic(message.device_id, self._prefix), message):
                    return
                with self._sessions() as db:
                    rollout.settle(db, message)
                    db.commit()
        except SQLAlchemyError as exc:
            log.warning("model/set messages not published: database error (%s)", exc)

    def _publish(self, topic: str, message: rollout.Owed) -> bool:
        info = self._client.publish(topic, message.payload, qos=1, retain=True)
        try:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as exc:  # not connected, or paho's queue is full
            log.warning("model/set to %s not published (%s); trying again", topic, exc)
            return False
        if not info.is_published():
            log.warning("the broker did not acknowledge the model/set to %s; trying again", topic)
            return False
        log.info(
            "published model/set to %s for rollout %d",
            message.device_id,
            message.rollout_id,
            extra={"device": message.device_id, "rollout": message.rollout_id},
        )
        return True

    def _handle(self, topic: str, payload: bytes) -> bool:
        """Store one message, count it, and say whether it may be acknowledged: not when the
        database stayed unreachable until the bridge stopped, so that it comes again."""
        # Device ids hold no "/" (cloud.accounts.NAME_PATTERN); kinds may (model/state).
        device, _, kind = topic.removeprefix(f"{self._prefix}/").partition("/")
        retry_s = 1.0
        while True:
            try:
                result = self._store(kind, device, payload)
                break
            except ValueError as exc:  # pydantic's errors and MalformedMessageError
                log.warning(
                    "malformed MQTT message on %s: %s",
                    topic,
                    exc,
                    extra={"topic": topic, "payload": payload[:200].decode(errors="replace")},
                )
                result = "malformed"
                break
            except OperationalError as exc:
                # Unreachable or locked (a restart, a failover): wait for it rather than lose
                # the message; meanwhile the broker holds back what follows.
                log.warning(
                    "database unavailable (%s); retrying the MQTT message on %s in %.0f s",
                    exc.orig,
                    topic,
                    retry_s,
                    extra={"topic": topic},
                )
                if self._stopping.wait(retry_s):
                    return False
                retry_s = min(2 * retry_s, 30.0)
            except SQLAlchemyError:
                # Anything else (a value too long for its column...) would fail again: skip it.
                log.exception("database error storing the MQTT message on %s", topic)
                result = "error"
                break
        if result == "unknown_device" and device not in self._warned:
            self._warned.add(device)
            log.warning(
                "MQTT messages from %r, which is not enrolled: its events are recorded; "
                "enrol it with `soundwarden-cloud add-device %s`",
                device,
                device,
                extra={"device": device},
            )
        MQTT_MESSAGES.labels(kind, result).inc()
        return True

    def _store(self, kind: str, device: str, payload: bytes) -> Result:
        with self._sessions() as db:
            if kind == "events":
                result = self._store_event(db, device, payload)
            elif kind == "status":
                result = self._store_status(db, device, payload)
            elif kind == "model/state":
                result = self._store_model_state(db, device, payload)
            else:
                result = self._store_availability(db, device, payload)
            db.commit()
        return result

    def _store_event(self, db: Db, device_id: str, payload: bytes) -> Result:
        event = EventPayload.model_validate_json(payload)
        _check_device(event.device, device_id)
        _check_utc(event.started_at, event.ended_at)
        data = event.model_dump(mode="json")
        same_step = select(Event.payload).where(
            Event.device_id == device_id, Event.episode_id == event.id, Event.type == event.type
        )
        if data in db.scalars(same_step).all():
            return "duplicate"
        at = event.ended_at or event.started_at
        db.add(
            Event(
                device_id=device_id,
                episode_id=event.id,
                type=event.type,
                label=event.label,
                score=event.score,
                at=at,
                clip_id=event.clip,
                payload=data,
            )
        )
        device = db.get(Device, device_id)
        if device is None:
            return "unknown_device"
        # A backlog replayed after an outage must not move "last event" back in time.
        if device.last_event_at is None or at >= device.last_event_at:
            device.last_event_at, device.last_event_label = at, event.label
        return "ok"

    def _store_status(self, db: Db, device_id: str, payload: bytes) -> Result:
        status = StatusPayload.model_validate_json(payload)
        device = _reporting_device(db, device_id, status.device, status.at)
        if device is None:
            return "unknown_device"
        device.status = status.model_dump(mode="json")
        device.status_at = status.at
        device.model_name, device.model_version = status.model.name, status.model.version
        device.spool_depth = status.spool.depth
        return "ok"

    def _store_model_state(self, db: Db, device_id: str, payload: bytes) -> Result:
        report = ModelStatePayload.model_validate_json(payload)
        device = _reporting_device(db, device_id, report.device, report.at)
        if device is None:
            return "unknown_device"
        device.model_state = report.model_dump(mode="json")
        device.model_state_at = report.at
        device.model_name, device.model_version = report.installed.name, report.installed.version
        rollout.on_model_state(db, device_id, report)
        return "ok"

    def _store_availability(self, db: Db, device_id: str, payload: bytes) -> Result:
        if payload not in (ONLINE.encode(), OFFLINE.encode()):
            raise MalformedMessageError(f"availability must be {ONLINE!r} or {OFFLINE!r}")
        device = db.get(Device, device_id)
        if device is None:
            return "unknown_device"
        device.online = payload == ONLINE.encode()
        device.availability_at = datetime.now(UTC)
        return "ok"


def _reporting_device(db: Db, topic_device: str, named: str, at: datetime) -> Device | None:
    """The enrolled device a retained report (status, model state) is from, once the payload
    is checked to name it and to carry a UTC time; None for a device not enrolled."""
    _check_device(named, topic_device)
    _check_utc(at)
    return db.get(Device, topic_device)


def _check_device(named: str, topic_device: str) -> None:
    # Broker ACLs tie a device's credentials to its own topics, not to what the payload says.
    if named != topic_device:
        raise MalformedMessageError(f"payload names device {named!r}, topic {topic_device!r}")


def _check_utc(*times: datetime | None) -> None:
    # The contract's times are UTC; a naive one could be any zone, and the database refuses it.
    if any(t is not None and t.utcoffset() is None for t in times):
        raise MalformedMessageError("times must carry their UTC offset")


def bridge_lock(settings: Settings) -> LeaderLock:
    """The lock that elects the bridge: one per database and fleet prefix, as the prefix makes
    the bridge's MQTT client id."""
    name = f"soundwarden-mqtt-bridge-{settings.mqtt_prefix}"
    return leader_lock(settings.db_url, name, settings.data_dir)


class ElectedBridge:
    """The bridge of a fleet whose broker several processes share (`serve --workers N`, services
    on several machines, all serving one database): whichever holds the leadership lock runs it,
    the others stand by and try for the lock every LEAD_CHECK_S, so within seconds of the
    leader's death (however it died) another one leads. All on a thread of its own: taking the
    lock and stopping the bridge block."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Db]) -> None:
        if settings.mqtt_url is None:
            raise ValueError("no broker: set mqtt_url")
        BrokerAddress.parse(settings.mqtt_url)  # a bad URL fails the start, not just a thread
        self._settings = settings
        self._sessions = sessions
        self._lock = bridge_lock(settings)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-leadership", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop the bridge if this process leads, and give the lock up."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        pid = os.getpid()
        standing_by = unreachable = False
        while not self._stopping.is_set():
            try:
                acquired = self._lock.acquire()
            except SQLAlchemyError as exc:
                if not unreachable:
                    log.warning("MQTT bridge: no database to take the lead from (%s)", exc)
                unreachable, acquired = True, False
            else:
                unreachable = False
            if acquired:
                log.info("MQTT bridge: this process (pid %d) leads", pid)
                self._lead(pid)
                standing_by = False
            elif not standing_by and not unreachable:
                log.info("MQTT bridge: this process (pid %d) is standing by; another leads", pid)
                standing_by = True
            self._stopping.wait(LEAD_CHECK_S)

    def _lead(self, pid: int) -> None:
        """Run the bridge until told to stop or the lock is lost (PostgreSQL: the connection
        holding it broke, and another process may lead already)."""
        try:
            bridge = MqttBridge(self._settings, self._sessions)
            bridge.start()
        except Exception:
            # Holding the lock without a bridge would leave the fleet with none at all.
            log.exception("MQTT bridge did not start; giving the lead up")
            self._lock.release()
            return
        try:
            while not self._stopping.wait(LEAD_CHECK_S):
                if not self._lock.held():
                    log.error("MQTT bridge: this process (pid %d) lost its lock; stopping it", pid)
                    break
        finally:
            bridge.stop()
            self._lock.release()


@asynccontextmanager
async def mqtt_service(settings: Settings, sessions: sessionmaker[Db]) -> AsyncIterator[None]:
    """For the app's lifetime: the embedded demo broker when asked for, and the bridge when
    there is a broker to bridge: for the fleet's broker in whichever process is elected, for
    the embedded one (a one-process demo) in this one. Stopped in reverse order."""
    async with AsyncExitStack() as stack:
        if settings.embedded_broker_port is not None:
            from amqtt.broker import Broker  # only the demo pays for importing it

            bind = f"127.0.0.1:{settings.embedded_broker_port}"
            broker = Broker(
                {
                    "listeners": {"default": {"type": "tcp", "bind": bind}},
                    # Loopback only, for a one-machine demo: no accounts.
                    "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {}},
                }
            )
            await broker.start()
            stack.push_async_callback(broker.shutdown)
            log.info("embedded MQTT broker listening on %s", bind)
        bridge: MqttBridge | ElectedBridge | None = None
        if settings.mqtt_url:
            bridge = ElectedBridge(settings, sessions)
        elif settings.embedded_broker_port is not None:
            bridge = MqttBridge(settings, sessions)
        if bridge is not None:
            bridge.start()
            # Off the event loop: stopping blocks while the queue drains, and the embedded
            # broker the bridge may be talking to runs on this loop.
            stack.push_async_callback(asyncio.to_thread, bridge.stop)
        yield
