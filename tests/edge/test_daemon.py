"""`soundwarden-edge run` end to end: a real daemon process, a real Mosquitto, real recordings.

What a user would notice: a cry becomes `start` and `end` events a subscriber receives, speech
and music raise nothing, and no event is lost or duplicated when the broker goes away for half
a minute or the daemon is killed outright.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from edge.config import DetectionConfig
from edge.detector import Detector
from models.audio import load_mono
from models.bundle import DEFAULT_TRUSTED_KEYS, PRETRAINED_DIR, load_bundle
from models.contract import EventPayload, StatusPayload
from models.inference import BundleModel
from models.signing import TrustedKeys
from tests import alsa
from tests.conftest import CRY_FULL_BAND, MUSIC, REPO, SPEECH
from tests.mosquitto import Mosquitto, Subscriber, wait_for

RATE = 16000


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    (tmp_path / "broker").mkdir()
    server = Mosquitto(tmp_path / "broker", persistence=True)
    server.start()
    yield server
    server.stop()


def room(seconds: float, seed: int = 0) -> np.ndarray:
    """A quiet room: noise at about -60 dBFS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 0.001).astype(np.float32)


def write_wav(path: Path, *parts: np.ndarray) -> Path:
    sf.write(path, np.concatenate(parts), RATE, subtype="PCM_16")
    return path


def write_config(tmp_path: Path, port: int, source: str, extra: str = "") -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(
        f'device = "nursery"\ndata_dir = "{tmp_path / "data"}"\nlog_level = "debug"\n'
        f"[audio.source]\n{source}\n"
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\nreconnect_max_s = 2\n'
        f"status_interval_s = 1.0\n{extra}"
    )
    return path


def start_daemon(
    config: Path, env: dict[str, str] | None = None, stdin: int | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdin=stdin,
        stderr=subprocess.PIPE,
    )


def finish(daemon: subprocess.Popen[bytes], timeout_s: float = 60) -> str:
    _, stderr = daemon.communicate(timeout=timeout_s)
    log = stderr.decode()
    assert daemon.returncode == 0, log
    return log


def events(subscriber: Subscriber) -> list[EventPayload]:
    return [
        EventPayload.model_validate_json(p)
        for p in subscriber.payloads("soundwarden/nursery/events")
    ]


def expected_steps(audio: np.ndarray) -> list[str]:
    """The episode steps the same bundle and rules give offline, for comparison."""
    model = BundleModel(load_bundle(PRETRAINED_DIR / "cry-detector", TrustedKeys.from_paths(
        [DEFAULT_TRUSTED_KEYS])))  # fmt: skip
    detector = Detector(model, device="nursery", rules=DetectionConfig())
    found = detector.push(audio) + detector.flush()
    return [e.type for e in found]


def test_a_replayed_cry_is_one_episode_and_speech_and_music_raise_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cry = write_wav(tmp_path / "cry.wav", room(2), load_mono(CRY_FULL_BAND), room(3, 1))
    subscriber = Subscriber(broker.port, topic="#")
    try:
        config = write_config(
            tmp_path, broker.port, f'type = "file"\npath = "{cry}"\nrealtime = false'
        )
        finish(start_daemon(config))
        wait_for(
            lambda: subscriber.payloads("soundwarden/nursery/availability")[-1:] == [b"offline"]
        )
        received = events(subscriber)
        steps = [e.type for e in received]
        assert steps[0] == "start" and steps[-1] == "end" and set(steps[1:-1]) <= {"update"}
        assert {e.label for e in received} == {"cry"} and len({e.id for e in received}) == 1
        assert received[-1].clip == received[0].id  # its clip is waiting for upload
        clip = sf.info(tmp_path / "data" / "clips" / "pending" / f"{received[0].id}.flac")
        episode = received[-1].ended_at - received[0].started_at  # type: ignore[operator]
        # Pre-roll (2 s, less where the recording starts) + episode + post-roll (3 s, less where
        # the recording ends: the clip is finished at shutdown with what there is).
        assert episode.total_seconds() + 2 < clip.duration <= episode.total_seconds() + 5.01
        assert subscriber.payloads("soundwarden/nursery/state/cry") == [b"OFF", b"ON", b"OFF"]
        status = StatusPayload.model_validate_json(
            subscriber.payloads("soundwarden/nursery/status")[-1]
        )
        assert status.model.name == "cry-detector" and status.windows.processed > 20
        assert status.source.type == "file" and status.spool.depth >= 0
        discovery = json.loads(subscriber.payloads("homeassistant/device/nursery/config")[0])
        assert discovery  # its content is frozen by tests/edge/test_homeassistant.py

        quiet = write_wav(tmp_path / "quiet.wav", load_mono(SPEECH), room(1), load_mono(MUSIC))
        before = len(received)
        config = write_config(
            tmp_path, broker.port, f'type = "file"\npath = "{quiet}"\nrealtime = false'
        )
        finish(start_daemon(config))
        time.sleep(0.5)
        assert len(events(subscriber)) == before
    finally:
        subscriber.close()


def _spooled_keys(tmp_path: Path) -> list[str]:
    database = tmp_path / "data" / "spool.sqlite"
    if not database.exists():
        return []
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT key FROM outbox WHERE kind = 'event' ORDER BY seq")
            return [key for (key,) in rows.fetchall()]
    except sqlite3.OperationalError:  # the daemon is still creating it
        return []


@pytest.mark.slow
def test_a_broker_outage_of_30_s_loses_and_duplicates_nothing(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cry = load_mono(CRY_FULL_BAND)
    audio = np.concatenate([room(2)] + [np.concatenate([cry, room(4, i)]) for i in range(4)])
    path = write_wav(tmp_path / "cries.wav", audio)
    subscriber = Subscriber(broker.port, client_id="integration")
    daemon = start_daemon(
        write_config(tmp_path, broker.port, f'type = "file"\npath = "{path}"\nrealtime = true')
    )
    try:
        wait_for(lambda: len(events(subscriber)) > 0, timeout_s=30)
        broker.stop()  # the broker dies mid-stream...
        outage_started = time.monotonic()
        wait_for(lambda: len(_spooled_keys(tmp_path)) > 0, timeout_s=30)  # ...events keep coming
        time.sleep(max(0.0, 30 - (time.monotonic() - outage_started)))
        broker.start()  # the same persistence: the subscriber's session survives
        finish(daemon, timeout_s=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    wait_for(lambda: [e.type for e in events(subscriber)] == expected_steps(audio), timeout_s=30)
    received = events(subscriber)
    keys = [(e.id, e.type, e.score, e.max_score) for e in received]
    assert len(keys) == len(set(keys))  # nothing twice
    starts = [e for e in received if e.type == "start"]
    assert len(starts) == 4 and starts == sorted(starts, key=lambda e: e.started_at)
    subscriber.close()


def test_sigkill_with_events_spooled_then_restart_delivers_each_once(
    broker: Mosquitto, tmp_path: Path
) -> None:
    cry = load_mono(CRY_FULL_BAND)
    path = write_wav(tmp_path / "cries.wav", room(1), cry, room(3), cry, room(3, 1))
    broker.stop()  # the network is down from the start
    config = write_config(tmp_path, broker.port, f'type = "file"\npath = "{path}"\nrealtime = true')
    daemon = start_daemon(config)
    try:
        wait_for(lambda: "end" in {k.split(":")[1] for k in _spooled_keys(tmp_path)}, timeout_s=60)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    spooled = _spooled_keys(tmp_path)
    assert spooled, "the killed daemon left its events in the spool"
    broker.start()
    subscriber = Subscriber(broker.port)
    try:
        silent = write_wav(tmp_path / "silent.wav", room(2))
        config = write_config(
            tmp_path, broker.port, f'type = "file"\npath = "{silent}"\nrealtime = false'
        )
        finish(start_daemon(config))
        wait_for(lambda: len(events(subscriber)) >= len(spooled))
        time.sleep(0.5)
        received = [f"{e.id}:{e.type}" for e in events(subscriber)]
        assert [k for k in received if ":update" not in k] == [
            k for k in spooled if ":update" not in k
        ]
        assert len(received) == len(spooled)
        assert _spooled_keys(tmp_path) == []
    finally:
        subscriber.close()


def test_pcm_on_stdin_at_44k_stereo_is_heard(broker: Mosquitto, tmp_path: Path) -> None:
    """`arecord -r 44100 -c 2 -t raw | soundwarden-edge run`: resampled and downmixed."""
    from models.audio import float_to_int16, resample

    mono = np.concatenate([room(1), load_mono(CRY_FULL_BAND), room(3)])
    high = resample(mono, RATE, 44100)
    stereo = np.stack([high, 0.5 * high], axis=1)
    subscriber = Subscriber(broker.port)
    try:
        config = write_config(
            tmp_path, broker.port, 'type = "stdin"\nsample_rate = 44100\nchannels = 2'
        )
        daemon = start_daemon(config, stdin=subprocess.PIPE)
        assert daemon.stdin is not None
        daemon.stdin.write(float_to_int16(stereo).tobytes())
        daemon.stdin.close()
        daemon.stdin = None  # closed: communicate() must not flush it
        finish(daemon)
        steps = [e.type for e in events(subscriber)]
        assert steps[0] == "start" and steps[-1] == "end"
    finally:
        subscriber.close()


def test_a_tampered_bundle_refuses_to_start(tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(PRETRAINED_DIR / "cry-detector", bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["thresholds"]["cry"] = 0.1  # an attacker's "more sensitive" model
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    config = write_config(tmp_path, 1, 'type = "stdin"', extra=f'[model]\nbundle = "{bundle}"\n')
    daemon = start_daemon(config, stdin=subprocess.DEVNULL)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 1
    assert "signature" in stderr.decode().lower()


class NotifyListener:
    """systemd's side of the notify protocol: a datagram socket, messages with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[tuple[float, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._socket.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode()))

    def times(self, prefix: str) -> list[float]:
        return [at for at, text in list(self.messages) if text.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._socket.close()


def _cry_on_the_microphone() -> alsa.Signal:
    """The cry between quiet stretches, at the device's 44.1 kHz on two channels, looped."""
    from models.audio import float_to_int16, resample

    mono = resample(np.concatenate([room(2), load_mono(CRY_FULL_BAND), room(4)]), RATE, 44100)
    frames = float_to_int16(np.stack([mono, 0.8 * mono], axis=1))

    def signal(start: int, count: int) -> np.ndarray:
        return frames[(start + np.arange(count)) % len(frames)]

    return signal


def test_the_microphone_path_with_systemd_readiness_and_a_watchdog_that_follows_audio(
    broker: Mosquitto, tmp_path: Path
) -> None:
    pytest.importorskip("pyaudio", reason="the mic extra (PyAudio) is part of the test install")
    microphone = alsa.install(tmp_path, _cry_on_the_microphone())
    listener = NotifyListener(tmp_path / "notify.sock")
    subscriber = Subscriber(broker.port)
    env = {"HOME": str(tmp_path), "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
    tuning = "[audio]\nstall_timeout_s = 1.5\nreopen_max_s = 1.0\n"
    try:
        wrong = start_daemon(
            write_config(tmp_path, broker.port, 'type = "microphone"\ndevice = "no such mic"'),
            env=env,
        )
        time.sleep(3)
        wrong.send_signal(signal.SIGTERM)
        log = finish(wrong)
        assert "'no such mic': no such input" in log and alsa.DEVICE_NAME in log
        assert listener.times("READY=1") == []  # never ready without audio

        config = write_config(
            tmp_path,
            broker.port,
            # One FIFO write per PortAudio period (see tests/alsa.py).
            f'type = "microphone"\ndevice = "{alsa.DEVICE_NAME}"\nchunk_s = {alsa.PERIOD_S}\n'
            + tuning,
        )
        daemon = start_daemon(config, env=env)
        wait_for(lambda: len(listener.times("READY=1")) == 1, timeout_s=30)
        wait_for(lambda: "start" in [e.type for e in events(subscriber)], timeout_s=30)
        assert len(listener.times("WATCHDOG=1")) >= 2

        microphone.pause()  # the microphone goes dead: pings stop, systemd would restart us
        paused = time.monotonic()
        wait_for(lambda: time.monotonic() - max(listener.times("WATCHDOG=1")) > 3, timeout_s=20)
        assert max(listener.times("WATCHDOG=1")) < paused + 2.0

        microphone.resume()  # it comes back: reopened, pinging again
        resumed = time.monotonic()
        wait_for(lambda: max(listener.times("WATCHDOG=1")) > resumed, timeout_s=90)
        statuses = [
            StatusPayload.model_validate_json(p)
            for p in subscriber.payloads("soundwarden/nursery/status")
        ]
        assert {"stalled", "reopening"} & {s.source.state for s in statuses}

        stopped = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        finish(daemon)
        assert [at for at in listener.times("STOPPING=1") if at > stopped]
        wait_for(
            lambda: subscriber.payloads("soundwarden/nursery/availability")[-1:] == [b"offline"]
        )
    finally:
        microphone.stop()
        listener.close()
        subscriber.close()
