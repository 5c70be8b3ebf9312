from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from edge.config import DetectionConfig
from edge.detector import Detector, DetectorConfigError
from models.audio import load_mono
from models.bundle import DEFAULT_TRUSTED_KEYS, PRETRAINED_DIR, load_bundle
from models.contract import EventPayload
from models.inference import BundleModel
from models.signing import TrustedKeys
from tests.conftest import CRY_FULL_BAND, SPEECH

RATE = 16000
ORIGIN = datetime(2026, 11, 21, 3, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cry_model() -> BundleModel:
    trusted = TrustedKeys.from_paths([DEFAULT_TRUSTED_KEYS])
    return BundleModel(load_bundle(PRETRAINED_DIR / "cry-detector", trusted))


def _room(seconds: float, seed: int = 0) -> np.ndarray:
    """A quiet room: noise at about -60 dBFS."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * 0.001).astype(np.float32)


def _run(detector: Detector, audio: np.ndarray, chunk: int = RATE) -> list[EventPayload]:
    events = []
    for start in range(0, len(audio), chunk):
        events += detector.push(audio[start : start + chunk])
    return events + detector.flush()


def test_a_cry_in_a_quiet_room_is_one_episode(cry_model: BundleModel) -> None:
    audio = np.concatenate([_room(3), load_mono(CRY_FULL_BAND), _room(4, seed=1)])
    events = _run(Detector(cry_model, device="nursery", origin=ORIGIN), audio)
    assert events[0].type == "start" and events[-1].type == "end"
    assert {e.type for e in events[1:-1]} <= {"update"}
    assert len({e.id for e in events}) == 1
    start, end = events[0], events[-1]
    onset = (start.started_at - ORIGIN).total_seconds()
    assert 2.0 <= onset <= 4.0  # the cry begins at 3 s; windows are 1 s long
    assert end.ended_at is not None
    assert 5.0 <= (end.ended_at - start.started_at).total_seconds() <= 10.0
    assert end.max_score >= cry_model.manifest.thresholds["cry"]
    assert start.level_dbfs > -30 and start.device == "nursery"
    assert start.model.name == "cry-detector"


def test_speech_and_silence_raise_nothing(cry_model: BundleModel) -> None:
    speech = load_mono(SPEECH)
    audio = np.concatenate([_room(2), speech, _room(2, 1), speech, _room(2, 2)])
    assert _run(Detector(cry_model, device="nursery", origin=ORIGIN), audio) == []


def test_events_do_not_depend_on_how_audio_is_chunked(cry_model: BundleModel) -> None:
    audio = np.concatenate([_room(1), load_mono(CRY_FULL_BAND), _room(3, seed=2)])
    whole = _run(Detector(cry_model, device="d", origin=ORIGIN), audio, chunk=RATE)
    ragged = _run(Detector(cry_model, device="d", origin=ORIGIN), audio, chunk=1234)
    key = [(e.type, e.score, e.max_score, e.started_at, e.ended_at) for e in whole]
    assert key == [(e.type, e.score, e.max_score, e.started_at, e.ended_at) for e in ragged]


def test_a_threshold_override_applies(cry_model: BundleModel) -> None:
    detector = Detector(
        cry_model, device="d", rules=DetectionConfig(thresholds={"cry": 1.01}), origin=ORIGIN
    )
    assert detector.thresholds == {"cry": 1.01}
    assert _run(detector, load_mono(CRY_FULL_BAND)) == []


def test_bad_configuration_is_refused_with_the_reason(cry_model: BundleModel) -> None:
    with pytest.raises(DetectorConfigError, match=r"unknown label\(s\) \['glass'\]"):
        Detector(cry_model, device="d", rules=DetectionConfig(thresholds={"glass": 0.5}))
    with pytest.raises(DetectorConfigError, match="multiple of the front end's 10 ms"):
        Detector(cry_model, device="d", rules=DetectionConfig(hop_s=0.123))


def _two_cries(gap_s: float) -> np.ndarray:
    cry = load_mono(CRY_FULL_BAND)
    return np.concatenate([_room(2), cry, _room(gap_s, seed=3), cry, _room(5, seed=4)])


def test_a_cry_returning_within_the_cooldown_stays_one_episode(cry_model: BundleModel) -> None:
    audio = _two_cries(gap_s=4)
    separate = _run(Detector(cry_model, device="d", origin=ORIGIN), audio)
    assert [e.type for e in separate if e.type != "update"] == ["start", "end", "start", "end"]
    merged = _run(
        Detector(cry_model, device="d", rules=DetectionConfig(cooldown_s=6), origin=ORIGIN), audio
    )
    assert [e.type for e in merged if e.type != "update"] == ["start", "end"]
    assert len({e.id for e in merged}) == 1
    # The end is the second cry's, reported once the cooldown passed without a third.
    assert merged[-1].ended_at == separate[-1].ended_at


def test_episodes_shorter_than_min_duration_are_not_reported(cry_model: BundleModel) -> None:
    audio = _two_cries(gap_s=4)
    events = _run(Detector(cry_model, device="d", origin=ORIGIN), audio)
    starts = [e for e in events if e.type == "start"]
    ends = {e.id: e for e in events if e.type == "end"}
    durations = [(ends[s.id].ended_at - s.started_at).total_seconds() for s in starts]  # type: ignore[operator]
    longest = max(durations)
    rules = DetectionConfig(min_duration_s=longest + 1)
    assert _run(Detector(cry_model, device="d", rules=rules, origin=ORIGIN), audio) == []
    held = _run(
        Detector(cry_model, device="d", rules=DetectionConfig(min_duration_s=2), origin=ORIGIN),
        audio,
    )
    first = next(e for e in held if e.type == "start")
    assert first.started_at == starts[0].started_at  # held back, not re-timed


def test_lost_audio_is_counted_and_keeps_the_clock_true(cry_model: BundleModel) -> None:
    detector = Detector(cry_model, device="d", origin=ORIGIN)
    detector.push(_room(2))
    scored = detector.windows
    lost = detector.skip(RATE)  # one second of audio never arrived
    assert lost == 4 + 3  # four hops lost, three more while the next window fills
    events = _run(detector, np.concatenate([load_mono(CRY_FULL_BAND), _room(4)]))
    assert detector.windows > scored
    onset = (events[0].started_at - ORIGIN).total_seconds()
    assert 2.5 <= onset <= 4.5  # the cry begins at 3 s on the true clock


def test_an_anomaly_bundle_raises_abnormal_episodes_from_its_score(shared_datasets: Path) -> None:
    """The machine monitor: a held-out normal recording stays quiet; the same machine with a
    knocking fault (impulses 8 times a second, as in scripts/bench_anomaly.py), and the one
    real abnormal recording, are `abnormal` episodes."""
    trusted = TrustedKeys.from_paths([DEFAULT_TRUSTED_KEYS])
    model = BundleModel(load_bundle(PRETRAINED_DIR / "machine-anomaly", trusted))
    machine = shared_datasets / "machine"
    normal = load_mono(machine / "normal" / "normal_id_00_00000052.wav")  # test split
    assert _run(Detector(model, device="shop", origin=ORIGIN), normal) == []
    real = _run(
        Detector(model, device="shop", origin=ORIGIN),
        load_mono(machine / "abnormal" / "anomaly_id_00_00000000.wav"),
    )
    assert [e.type for e in real][:1] == ["start"] and {e.label for e in real} == {"abnormal"}
    rng = np.random.default_rng(0)
    knock = np.zeros_like(normal)
    for start in range(0, len(normal) - 64, RATE // 8):
        knock[start : start + 64] = rng.standard_normal(64) * np.exp(-np.linspace(0, 5, 64))
    faulty = np.clip(normal + knock, -1, 1).astype(np.float32)
    events = _run(Detector(model, device="shop", origin=ORIGIN), faulty)
    assert events and {e.label for e in events} == {"abnormal"}
    assert events[0].type == "start" and events[-1].type == "end"
