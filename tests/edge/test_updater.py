"""Remote model updates on a real daemon, a real Mosquitto and real HTTP downloads.

What a user would notice: an update the cloud asks for is downloaded, checked, shadowed,
switched to and reported, and events then carry the new version; a bad bundle is refused with
its reason while the old model keeps listening; a model that misbehaves after the switch is
rolled back; and killing the daemon at any step leaves it, after a restart, with a working
model and a state that makes sense.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge.modelstore import POINTER_NAME, Pointer
from models.bundle import sha256_file
from models.contract import EventPayload, ModelSetPayload, ModelStatePayload, StatusPayload
from models.frontend import FrontendConfig
from tests.bundles import (
    SHIPPED_KEYS,
    SHIPPED_VERSION,
    BundleServer,
    make_bundle,
    pack,
    signing_key,
)
from tests.conftest import CRY_FULL_BAND
from tests.edge.test_daemon import finish, room, start_daemon, write_config, write_wav
from tests.mosquitto import Mosquitto, Subscriber, wait_for

pytest.importorskip("onnx")
TOKEN = "device-token-for-tests"
STATE = "soundwarden/nursery/model/state"
NARROWBAND = FrontendConfig(sample_rate=8000, fmax=4000, window_samples=8000)


@pytest.fixture()
def server() -> Iterator[BundleServer]:
    running = BundleServer(token=TOKEN)
    yield running
    running.close()


@pytest.fixture()
def subscriber(broker: Mosquitto) -> Iterator[Subscriber]:
    listening = Subscriber(broker.port, topic="soundwarden/#")
    yield listening
    listening.close()


def _config(tmp_path: Path, broker: Mosquitto, audio: Path, **updates: float) -> Path:
    _, public = signing_key(tmp_path / "keys")
    rules = {"shadow_s": 2.0, "probation_s": 2.0, "retry_max_s": 1.0, **updates}
    return write_config(
        tmp_path,
        broker.port,
        f'type = "file"\npath = "{audio}"\nloop = true',
        f'[model]\ntrusted_keys = ["{SHIPPED_KEYS}", "{public}"]\n'
        f'[clips]\ntoken = "{TOKEN}"\n'
        "[updates]\n" + "".join(f"{key} = {value}\n" for key, value in rules.items()),
    )


def _bundle(tmp_path: Path, version: str, **kwargs: object) -> Path:
    private, _ = signing_key(tmp_path / "keys")
    return pack(make_bundle(tmp_path / "bundles" / version, key=private, version=version, **kwargs))  # type: ignore[arg-type]


def _announce(broker: Mosquitto, archive: Path, url: str, **changes: object) -> ModelSetPayload:
    version = archive.name.removesuffix(".tar.gz")
    target = ModelSetPayload(
        name="cry-detector",
        version=version,
        url=url,
        sha256=sha256_file(archive),
        size=archive.stat().st_size,
        rollout="r1",
    ).model_copy(update=changes)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish("soundwarden/nursery/model/set", target.model_dump_json(), qos=1, retain=True)
    client.disconnect()
    client.loop_stop()
    return target


def _states(subscriber: Subscriber) -> list[ModelStatePayload]:
    return [ModelStatePayload.model_validate_json(p) for p in subscriber.payloads(STATE)]


def _latest(subscriber: Subscriber) -> ModelStatePayload | None:
    states = _states(subscriber)
    return states[-1] if states else None


def _reached(subscriber: Subscriber, state: str, version: str) -> bool:
    latest = _latest(subscriber)
    return bool(
        latest and latest.state == state and latest.target and latest.target.version == version
    )


def _running_version(subscriber: Subscriber) -> str | None:
    status = subscriber.payloads("soundwarden/nursery/status")
    return StatusPayload.model_validate_json(status[-1]).model.version if status else None


def _pointer(tmp_path: Path) -> Pointer:
    return Pointer.model_validate_json((tmp_path / "data" / "models" / POINTER_NAME).read_bytes())


def _stop(daemon: subprocess.Popen[bytes]) -> str:
    """SIGTERM, and the daemon's log (printed: pytest shows it when the test fails)."""
    daemon.send_signal(signal.SIGTERM)
    log = finish(daemon)
    print(log)
    return log


def test_an_update_is_checked_shadowed_switched_and_events_carry_the_new_version(
    broker: Mosquitto, server: BundleServer, subscriber: Subscriber, tmp_path: Path
) -> None:
    from models.audio import load_mono

    audio = write_wav(tmp_path / "cry.wav", room(2), load_mono(CRY_FULL_BAND), room(2, 1))
    config = _config(tmp_path, broker, audio)
    archive = _bundle(tmp_path, "9.2.0")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: _latest(subscriber) is not None)
        assert _latest(subscriber).state == "idle"  # type: ignore[union-attr]
        assert _latest(subscriber).installed_version == SHIPPED_VERSION  # type: ignore[union-attr]
        _announce(broker, archive, server.add(archive))
        wait_for(lambda: _reached(subscriber, "installed", "9.2.0"), timeout_s=90)
        seen = [s.state for s in _states(subscriber)]
        steps = ["downloading", "verifying", "shadowing", "probation", "installed"]
        assert [s for s in dict.fromkeys(seen) if s in steps] == steps
        final = _latest(subscriber)
        assert final and final.installed.version == "9.2.0" and final.previous
        assert final.previous.version == SHIPPED_VERSION and final.rollout == "r1"
        assert final.shadow and final.shadow.agreement == 1.0 and final.shadow.windows >= 8
        assert (final.installed_version, final.latest_version) == ("9.2.0", "9.2.0")
        assert not final.in_progress and final.error is None
        assert server.requests[0]["Authorization"] == f"Bearer {TOKEN}"

        def new_version_event() -> bool:
            events = subscriber.payloads("soundwarden/nursery/events")
            versions = [EventPayload.model_validate_json(e).model.version for e in events]
            return "9.2.0" in versions

        wait_for(new_version_event, timeout_s=60)
        assert "9.2.0" in (_pointer(tmp_path).current or "")
    finally:
        _stop(daemon)
    # The installed model survives a restart.
    subscriber.messages.clear()
    daemon = start_daemon(config)
    try:
        wait_for(lambda: _running_version(subscriber) == "9.2.0" and daemon.poll() is None)
    finally:
        _stop(daemon)


def test_bad_bundles_are_refused_with_their_reason_and_the_old_model_keeps_running(
    broker: Mosquitto, server: BundleServer, subscriber: Subscriber, tmp_path: Path
) -> None:
    quiet = write_wav(tmp_path / "quiet.wav", room(6))
    daemon = start_daemon(_config(tmp_path, broker, quiet))
    private, _ = signing_key(tmp_path / "keys")
    other_key, _ = signing_key(tmp_path / "other-keys", "stranger")
    good = _bundle(tmp_path, "9.3.0")
    altered = make_bundle(tmp_path / "bundles" / "9.3.1", key=private, version="9.3.1")
    manifest = json.loads((altered / "manifest.json").read_text())
    manifest["thresholds"]["cry"] = 0.01  # changed after signing
    (altered / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    bad_signature = pack(altered)
    unknown_key = pack(make_bundle(tmp_path / "bundles" / "9.3.2", key=other_key, version="9.3.2"))
    cases = [
        (good, {"sha256": "0" * 64}, "differs from the announced"),
        (bad_signature, {}, "does not match manifest.json"),
        (unknown_key, {}, "which is not trusted here"),
        (
            _bundle(tmp_path, "9.3.3", behaviour="mean", features=NARROWBAND),
            {},
            "incompatible front end: 8000 Hz audio, the device captures 16000 Hz",
        ),
        (_bundle(tmp_path, "9.3.4", behaviour="nan"), {}, "NaN"),
        (_bundle(tmp_path, "9.3.5", behaviour="always_cry"), {}, "agreed with the running model"),
    ]
    try:
        wait_for(lambda: _latest(subscriber) is not None)
        for archive, changes, reason in cases:
            version = _announce(broker, archive, server.add(archive), **changes).version
            wait_for(lambda v=version: _reached(subscriber, "rejected", v), timeout_s=60)
            latest = _latest(subscriber)
            assert latest and reason in (latest.error or ""), (reason, latest)
            assert latest.installed_version == SHIPPED_VERSION and not latest.in_progress
            assert latest.release_summary and reason[:20] in latest.release_summary
            wait_for(lambda: _running_version(subscriber) == SHIPPED_VERSION)
        assert daemon.poll() is None
        assert not list((tmp_path / "data" / "models" / "bundles").iterdir())
    finally:
        log = _stop(daemon)
    assert "rejected" in log


def test_a_model_that_misbehaves_on_probation_is_rolled_back_and_not_retried(
    broker: Mosquitto, server: BundleServer, subscriber: Subscriber, tmp_path: Path
) -> None:
    quiet = write_wav(tmp_path / "quiet.wav", room(6))
    # No shadowing, so only probation stands between this model and the fleet.
    config = _config(tmp_path, broker, quiet, shadow_s=0, probation_s=60, event_slack=0)
    archive = _bundle(tmp_path, "9.4.0", behaviour="always_cry")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: _latest(subscriber) is not None)
        _announce(broker, archive, server.add(archive))
        wait_for(lambda: _reached(subscriber, "rolled_back", "9.4.0"), timeout_s=60)
        latest = _latest(subscriber)
        assert latest and latest.installed.version == SHIPPED_VERSION
        assert "on probation" in (latest.error or "")
        assert "probation" in [s.state for s in _states(subscriber)]
        events = [
            EventPayload.model_validate_json(e)
            for e in subscriber.payloads("soundwarden/nursery/events")
        ]
        assert [e.model.version for e in events] == ["9.4.0", "9.4.0"]  # its episode, then ended
        wait_for(lambda: _running_version(subscriber) == SHIPPED_VERSION)
    finally:
        _stop(daemon)
    pointer = _pointer(tmp_path)
    assert pointer.current is None and pointer.probation is None
    assert sha256_file(archive) in pointer.rejected
    daemon = start_daemon(config)  # the retained model/set still names 9.4.0
    try:
        wait_for(lambda: _reached(subscriber, "rejected", "9.4.0"))
        assert _running_version(subscriber) == SHIPPED_VERSION
    finally:
        _stop(daemon)


@pytest.mark.parametrize("step", ["downloading", "shadowing", "probation"])
def test_sigkill_at_each_step_comes_back_with_a_working_model(
    broker: Mosquitto, subscriber: Subscriber, tmp_path: Path, step: str
) -> None:
    server = BundleServer(token=TOKEN, bytes_per_s=150_000 if step == "downloading" else None)
    quiet = write_wav(tmp_path / "quiet.wav", room(6))
    config = _config(
        tmp_path, broker, quiet, shadow_s=4, probation_s=20 if step == "probation" else 2
    )
    archive = _bundle(tmp_path, "9.5.0")
    daemon = start_daemon(config)
    try:
        wait_for(lambda: _latest(subscriber) is not None)
        _announce(broker, archive, server.add(archive))
        wait_for(
            lambda: (
                _latest(subscriber) is not None
                and _latest(subscriber).state == step  # type: ignore[union-attr]
                and (step != "downloading" or (_latest(subscriber).progress or 0) > 0)
            ),  # type: ignore[union-attr]
            timeout_s=60,
        )
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        subscriber.messages.clear()
        daemon = start_daemon(config)
        if step == "probation":  # an unclean stop on probation counts against the new model
            wait_for(lambda: _reached(subscriber, "rolled_back", "9.5.0"), timeout_s=60)
            assert "uncleanly" in (_latest(subscriber).error or "")  # type: ignore[union-attr]
            wait_for(lambda: bool(subscriber.payloads("soundwarden/nursery/status")))
            assert _running_version(subscriber) == SHIPPED_VERSION
            assert _pointer(tmp_path).current is None
        else:  # the update resumes and completes
            wait_for(lambda: _reached(subscriber, "installed", "9.5.0"), timeout_s=90)
            wait_for(lambda: _running_version(subscriber) == "9.5.0")
            assert "9.5.0" in (_pointer(tmp_path).current or "")
        if step == "downloading":  # resumed where it stopped, not from the start
            ranges = [r.get("Range") for r in server.requests]
            assert ranges[0] is None and any(r and r != "bytes=0-" for r in ranges[1:])
    finally:
        server.close()
        _stop(daemon)
