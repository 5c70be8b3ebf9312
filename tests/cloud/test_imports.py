"""Bulk import of real recordings and model assistance over the clips, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cloud.core.config import Settings
from cloud.main import create_app
from cloud.tables import Clip, Job, Label, ModelVersion
from models.audio import load_mono, resample
from tests.cloud.conftest import signed_in
from tests.cloud.jobutil import wait_job
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND, FIXTURE_AUDIO, MUSIC, SPEECH

SPEECH_2 = FIXTURE_AUDIO / "other" / "fsdd_7_yweweler_12.wav"
RATE = 16000
LONG_RATE = 44100
LONG_S = 23.0


@pytest.fixture(scope="module")
def long_stereo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 23 s, 44.1 kHz stereo WAV: the fixtures end to end, then silence."""
    parts = [load_mono(p) for p in (CRY_8K_ORIGIN, MUSIC, CRY_FULL_BAND, SPEECH, SPEECH_2)]
    mono = resample(np.concatenate(parts), RATE, LONG_RATE)
    mono = np.pad(mono, (0, round(LONG_S * LONG_RATE) - len(mono)))
    path = tmp_path_factory.mktemp("long") / "field-recording.wav"
    sf.write(path, np.stack([mono, 0.5 * mono], axis=1), LONG_RATE, subtype="PCM_16")
    return path


def upload(
    client: TestClient, paths: list[Path], **form: str
) -> Any:  # the response, for its status and detail
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return client.post("/api/v1/imports", files=files, data=form)


def imported(client: TestClient, paths: list[Path], **form: str) -> dict[str, Any]:
    response = upload(client, paths, **form)
    assert response.status_code == 202, response.text
    assert response.json()["kind"] == "import" and response.json()["state"] == "queued"
    job = wait_job(client, response.json()["id"])
    assert job["state"] == "succeeded", job
    return job


def clips_by_recording(app: FastAPI) -> dict[str, list[Clip]]:
    with app.state.sessions() as db:
        clips = db.scalars(select(Clip)).all()
    out: dict[str, list[Clip]] = {}
    for clip in clips:
        out.setdefault(clip.metadata_json["recording"], []).append(clip)
    for group in out.values():
        group.sort(key=lambda c: c.metadata_json["offset_s"])
    return out


def spans(clips: list[Clip]) -> list[tuple[float, float]]:
    return [(c.metadata_json["offset_s"], round(c.duration_s, 3)) for c in clips]


@pytest.fixture
def admin(app: FastAPI) -> Iterator[TestClient]:
    with signed_in(app, "ada", "admin") as client:
        yield client


def test_recordings_become_clips_of_segment_length(
    app: FastAPI, admin: TestClient, long_stereo: Path
) -> None:
    recordings = [CRY_8K_ORIGIN, CRY_FULL_BAND, MUSIC, SPEECH, SPEECH_2, long_stereo]
    job = imported(admin, recordings)  # segment_s 5, no overlap
    assert job["progress"] == 1.0
    assert job["result"] == {"clips": 13, "existing": 0, "recordings": 6, "skipped": []}

    clips = clips_by_recording(app)
    assert spans(clips[CRY_8K_ORIGIN.name]) == [(0.0, 5.0), (5.0, 1.96)]  # 6.96 s
    assert spans(clips[CRY_FULL_BAND.name]) == [(0.0, 5.0), (5.0, 2.0)]
    assert spans(clips[MUSIC.name]) == [(0.0, 5.0), (5.0, 1.0)]  # a 1 s tail is kept
    assert spans(clips[SPEECH.name]) == [(0.0, 0.224)]  # shorter than 1 s: kept whole
    assert spans(clips[SPEECH_2.name]) == [(0.0, 0.338)]
    assert spans(clips[long_stereo.name]) == [(t, 5.0) for t in (0, 5, 10, 15)] + [(20.0, 3.0)]

    storage = app.state.storage
    for recording, group in clips.items():
        for clip in group:
            assert clip.source == "import" and clip.group_id == recording
            assert clip.label is None and clip.suggestion is None
            audio, rate = sf.read(io.BytesIO(storage.get(clip.audio_key)), dtype="float32")
            assert (rate, audio.ndim, sf.info(io.BytesIO(storage.get(clip.audio_key))).format) == (
                RATE,
                1,
                "FLAC",
            )
            assert len(audio) == round(clip.duration_s * RATE)
            assert clip.original_key == clip.audio_key and clip.original_format == "flac"
    # The clips hold the recording's own audio, in order.
    second = sf.read(io.BytesIO(storage.get(clips[CRY_8K_ORIGIN.name][1].audio_key)))[0]
    np.testing.assert_allclose(second, load_mono(CRY_8K_ORIGIN)[5 * RATE :], atol=1 / 32768)
    stereo = clips[long_stereo.name][0].metadata_json
    assert (stereo["recording_sample_rate"], stereo["recording_channels"]) == (LONG_RATE, 2)


def test_overlap_tails_and_a_group_name(app: FastAPI, admin: TestClient, long_stereo: Path) -> None:
    imported(admin, [long_stereo], segment_s="5", overlap_s="2.5", group="site-7")
    imported(admin, [CRY_8K_ORIGIN], segment_s="3")
    clips = clips_by_recording(app)
    assert spans(clips[long_stereo.name]) == [(t * 2.5, 5.0) for t in range(8)] + [(20.0, 3.0)]
    assert {c.group_id for c in clips[long_stereo.name]} == {"site-7"}
    # 6.96 s in 3 s segments: the 0.96 s tail is too short to keep.
    assert spans(clips[CRY_8K_ORIGIN.name]) == [(0.0, 3.0), (3.0, 3.0)]


def test_running_an_import_again_adds_nothing_twice(app: FastAPI, admin: TestClient) -> None:
    job = imported(admin, [CRY_FULL_BAND, MUSIC])
    with app.state.sessions() as db:  # as after a shutdown interrupted it: queued again
        row = db.get_one(Job, job["id"])
        row.state = "queued"
        db.commit()
    app.state.jobs.submit(job["id"])
    again = wait_job(admin, job["id"])
    assert again["state"] == "succeeded"
    assert again["result"]["clips"] == 0 and again["result"]["existing"] == 4
    with app.state.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Clip)) == 4


def test_unusable_uploads_are_refused_with_the_reason_and_no_job(
    app: FastAPI, admin: TestClient, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.wav"
    notes.write_text("these are my field notes, not audio")
    refused = upload(admin, [CRY_FULL_BAND, notes])
    assert refused.status_code == 415
    assert refused.json()["detail"].startswith("notes.wav: not a readable audio file")
    bad_overlap = upload(admin, [CRY_FULL_BAND], segment_s="5", overlap_s="5")
    assert bad_overlap.status_code == 422 and "overlap_s" in bad_overlap.json()["detail"]
    assert admin.get("/api/v1/jobs").json() == []
    assert not (app.state.settings.data_dir / "clips" / "imports").exists()


def test_a_file_over_the_import_limit_is_refused(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_import_bytes": 64 * 1024}))
    try:
        with signed_in(app, "ada", "admin") as client:
            refused = upload(client, [CRY_FULL_BAND])  # 224 kB
            assert refused.status_code == 413 and "65536-byte limit" in refused.json()["detail"]
            assert client.get("/api/v1/jobs").json() == []
    finally:
        app.state.engine.dispose()


def test_an_admin_imports_a_server_folder_skipping_what_is_not_audio(
    app: FastAPI, admin: TestClient, tmp_path: Path
) -> None:
    folder = tmp_path / "survey"
    (folder / "night").mkdir(parents=True)
    shutil.copy(CRY_FULL_BAND, folder / "night" / "cry.wav")
    shutil.copy(MUSIC, folder / "music.wav")
    (folder / "broken.wav").write_bytes(b"RIFF not really")
    (folder / "readme.txt").write_text("not an audio suffix: never looked at")

    lee = signed_in(app, "lee", "labeller")
    assert lee.post("/api/v1/imports/folder", json={"path": str(folder)}).status_code == 403
    missing = admin.post("/api/v1/imports/folder", json={"path": str(tmp_path / "nope")})
    assert missing.status_code == 422 and "no such folder" in missing.json()["detail"]

    response = admin.post("/api/v1/imports/folder", json={"path": str(folder)})
    assert response.status_code == 202, response.text
    job = wait_job(admin, response.json()["id"])
    assert job["state"] == "succeeded"
    assert job["result"]["clips"] == 4 and job["result"]["recordings"] == 2
    [skipped] = job["result"]["skipped"]
    assert skipped["file"] == "broken.wav" and "not a readable audio file" in skipped["reason"]
    assert "skipped broken.wav" in job["log_tail"] and "1 file(s) skipped" in job["message"]
    assert set(clips_by_recording(app)) == {"night/cry.wav", "music.wav"}


def _window_count(duration_s: float) -> int:
    """1 s windows every 0.25 s; a clip shorter than a window is scored as one, padded."""
    samples = round(duration_s * RATE)
    return 1 + (samples - RATE) // (RATE // 4) if samples >= RATE else 1


def test_model_assistance_scores_imported_clips(app: FastAPI, admin: TestClient) -> None:
    imported(admin, [CRY_8K_ORIGIN, CRY_FULL_BAND, SPEECH, SPEECH_2, MUSIC])
    with app.state.sessions() as db:  # one clip somebody has labelled already
        if db.get(Label, "other") is None:
            db.add(Label(name="other"))
        labelled = db.scalars(select(Clip).order_by(Clip.id)).first()
        assert labelled is not None
        labelled.label = "other"
        db.commit()
    assert admin.post("/api/v1/jobs/assist", json={"model": "no-such-model"}).status_code == 404
    response = admin.post("/api/v1/jobs/assist", json={"model": "cry-detector"})
    assert response.status_code == 202, response.text
    job = wait_job(admin, response.json()["id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["result"]["scored"] == 7

    manifest = json.loads(
        (Path(__file__).parents[2] / "models/pretrained/cry-detector/manifest.json").read_text()
    )
    threshold = manifest["thresholds"]["cry"]
    clips = clips_by_recording(app)
    for group in clips.values():
        for clip in group:
            if clip.id == labelled.id:
                assert clip.suggestion is None and clip.window_scores is None
                continue
            assert clip.suggestion_model == f"cry-detector@{manifest['version']}"
            assert clip.window_scores is not None
            assert len(clip.window_scores) == _window_count(clip.duration_s)
            assert clip.suggestion_score == pytest.approx(max(clip.window_scores), abs=1e-6)
            assert clip.uncertainty == pytest.approx(abs(clip.suggestion_score - threshold))
            expected = "cry" if clip.suggestion_score >= threshold else "other"
            assert clip.suggestion == expected

    def scored(recordings: list[Path]) -> list[Clip]:
        return [c for r in recordings for c in clips[r.name] if c.id != labelled.id]

    cries, speech = scored([CRY_8K_ORIGIN, CRY_FULL_BAND]), scored([SPEECH, SPEECH_2])
    lowest_cry = min(c.suggestion_score or 0.0 for c in cries)
    assert lowest_cry > max(c.suggestion_score or 1.0 for c in speech)
    assert {c.suggestion for c in speech} == {"other"}
    assert "cry" in {c.suggestion for c in cries}


def test_assistance_refuses_a_tampered_bundle(app: FastAPI, admin: TestClient) -> None:
    imported(admin, [CRY_FULL_BAND])
    with app.state.sessions() as db:
        row = db.scalars(select(ModelVersion).where(ModelVersion.name == "cry-detector")).one()
    manifest = Path(row.path) / "manifest.json"
    # Someone lowers the threshold on disk so that everything looks like a cry.
    manifest.write_bytes(manifest.read_bytes().replace(b'"cry": 0.99', b'"cry": 0.01'))
    job = wait_job(admin, admin.post("/api/v1/jobs/assist", json={}).json()["id"])
    assert job["state"] == "failed"
    assert "manifest was altered after signing" in job["message"], job["message"]
    with app.state.sessions() as db:
        assert db.scalar(select(func.count()).where(Clip.suggestion.is_not(None))) == 0
