"""Clip ingestion over SQLite and PostgreSQL: what a device's upload leaves behind, what a bad
upload is told, and how people list and play clips. Real recordings, real decoding, and for S3
a real S3-compatible HTTP server (moto_server)."""

from __future__ import annotations

import io
import json
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
import soundfile as sf
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import select, update

from cloud import accounts
from cloud import ingest as ingest_module
from cloud.core.config import Settings
from cloud.main import create_app
from cloud.tables import Clip, Device, Label
from models.audio import float_to_int16, load_mono
from tests.cloud.conftest import enrol, signed_in
from tests.cloud.server import running
from tests.conftest import CRY_FULL_BAND, MUSIC, SPEECH
from tests.mosquitto import free_port

DEVICE = "pi-nursery"
STARTED = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def metadata(clip_id: str, *, device: str = DEVICE, **changes: Any) -> dict[str, Any]:
    """ClipMetadata as the edge sends it, as JSON-ready data."""
    return {
        "id": clip_id,
        "device": device,
        "event_id": clip_id,
        "label": "cry",
        "score": 0.9,
        "model": {"name": "cry-detector", "version": "1.1.0"},
        "started_at": STARTED.isoformat(),
        "ended_at": (STARTED + timedelta(seconds=7)).isoformat(),
        "episode_started_at": (STARTED + timedelta(seconds=2)).isoformat(),
        "episode_ended_at": (STARTED + timedelta(seconds=4)).isoformat(),
        "sample_rate": 16000,
        "truncated": False,
    } | changes


def upload(
    client: TestClient,
    token: str | None,
    meta: dict[str, Any] | str,
    data: bytes,
    filename: str = "clip.wav",
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post(
        "/api/v1/clips",
        headers=headers,
        data={"metadata": meta if isinstance(meta, str) else json.dumps(meta)},
        files={"audio": (filename, data, "application/octet-stream")},
    )


def encode(samples: np.ndarray[Any, Any], rate: int, fmt: str, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def edge_flac(seconds: float = 3.0) -> bytes:
    """What the edge sends: 16 kHz mono 16-bit FLAC."""
    audio = load_mono(CRY_FULL_BAND)[: round(seconds * 16000)]
    return encode(float_to_int16(audio), 16000, "FLAC")


def stereo_44k(tmp_path: Path) -> bytes:
    """A real recording as a 44.1 kHz stereo WAV: the music fixture left, the cry right."""
    left, right = load_mono(MUSIC, 44100), load_mono(CRY_FULL_BAND, 44100)
    frames = min(left.shape[0], right.shape[0])
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left[:frames], right[:frames]], axis=1), 44100, subtype="PCM_16")
    return path.read_bytes()


def stored_files(app: FastAPI) -> list[str]:
    root: Path = app.state.settings.data_dir / "clips"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def rows(app: FastAPI) -> list[Clip]:
    with app.state.sessions() as db:
        return list(db.scalars(select(Clip).order_by(Clip.id)))


def clips_counted(result: str) -> float:
    return REGISTRY.get_sample_value("soundwarden_clips_total", {"result": result}) or 0.0


@pytest.fixture
def token(app: FastAPI) -> str:
    return enrol(app, DEVICE)


def test_a_wav_upload_is_kept_as_received_and_as_16k_mono_flac(
    app: FastAPI, client: TestClient, token: str
) -> None:
    wav = CRY_FULL_BAND.read_bytes()
    created = clips_counted("created")
    response = upload(client, token, metadata("c1"), wav, "c1.wav")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == "c1" and body["device_id"] == DEVICE and body["group_id"] == DEVICE
    assert (body["sample_rate"], body["channels"], body["original_format"]) == (16000, 1, "wav")
    assert body["duration_s"] == pytest.approx(7.0, abs=1e-3)
    assert body["device_label"] == "cry" and body["label"] is None
    assert clips_counted("created") == created + 1

    (clip,) = rows(app)
    storage = app.state.storage
    assert storage.get(clip.original_key) == wav
    assert clip.original_key.endswith(".original.wav") and clip.audio_key.endswith(".16k.flac")
    info = sf.info(io.BytesIO(storage.get(clip.audio_key)))
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
    assert info.duration == pytest.approx(7.0, abs=1e-3)
    assert clip.metadata_json is not None and clip.metadata_json["event_id"] == "c1"
    with app.state.sessions() as db:
        device = db.get(Device, DEVICE)
        assert device is not None and device.last_upload_at is not None


def test_a_devices_last_upload_is_kept_to_the_minute(
    app: FastAPI, client: TestClient, admin: TestClient, token: str
) -> None:
    def last_upload() -> datetime:
        [device] = [d for d in admin.get("/api/v1/devices").json() if d["id"] == DEVICE]
        return datetime.fromisoformat(device["last_upload_at"])

    assert upload(client, token, metadata("c1"), edge_flac(), "c1.flac").status_code == 201
    first = last_upload()
    assert upload(client, token, metadata("c2"), edge_flac(), "c2.flac").status_code == 201
    assert last_upload() == first  # seconds later: not written again
    with app.state.sessions() as db:  # a minute passes
        db.execute(
            update(Device)
            .where(Device.id == DEVICE)
            .values(last_upload_at=first - timedelta(minutes=1))
        )
        db.commit()
    assert upload(client, token, metadata("c3"), edge_flac(), "c3.flac").status_code == 201
    assert last_upload() > first


def test_a_44k_stereo_upload_gets_a_16k_mono_copy_of_the_same_length(
    app: FastAPI, client: TestClient, token: str, tmp_path: Path
) -> None:
    wav = stereo_44k(tmp_path)
    response = upload(client, token, metadata("s1", sample_rate=44100), wav, "s1.wav")
    assert response.status_code == 201, response.text
    assert (response.json()["sample_rate"], response.json()["channels"]) == (44100, 2)
    (clip,) = rows(app)
    original, rate = sf.read(io.BytesIO(app.state.storage.get(clip.original_key)))
    assert rate == 44100 and original.shape[1] == 2
    mono, rate = sf.read(io.BytesIO(app.state.storage.get(clip.audio_key)))
    assert rate == 16000 and mono.ndim == 1
    assert mono.shape[0] / 16000 == pytest.approx(original.shape[0] / 44100, abs=1e-3)
    # The downmix is the average of the channels, resampled: the cry on the right is in it.
    assert np.sqrt(np.mean(mono**2)) > 0.01


def test_an_ogg_vorbis_upload_is_served_back_as_ogg_and_as_flac(
    client: TestClient, token: str, labeller: TestClient
) -> None:
    ogg = encode(load_mono(CRY_FULL_BAND), 16000, "OGG", "VORBIS")
    response = upload(client, token, metadata("o1"), ogg, "o1.ogg")
    assert response.status_code == 201, response.text
    assert response.json()["original_format"] == "ogg"
    original = labeller.get("/api/v1/clips/o1/audio", params={"original": True})
    assert original.headers["content-type"] == "audio/ogg" and original.content == ogg
    flac = sf.info(io.BytesIO(labeller.get("/api/v1/clips/o1/audio").content))
    assert (flac.format, flac.samplerate, flac.channels) == ("FLAC", 16000, 1)
    assert flac.duration == pytest.approx(7.0, abs=0.01)


def test_what_the_edge_sends_is_stored_once_and_a_retry_stores_nothing(
    app: FastAPI, client: TestClient, token: str
) -> None:
    flac = edge_flac()
    first = upload(client, token, metadata("e1", ended_at=STARTED.isoformat()), flac, "e1.flac")
    assert first.status_code == 201, first.text
    files = stored_files(app)
    # 16 kHz mono 16-bit FLAC already is the copy everything reads: one file, not two.
    assert len(files) == 1 and files[0].endswith(".original.flac")
    (clip,) = rows(app)
    assert clip.audio_key == clip.original_key

    duplicates = clips_counted("duplicate")
    again = upload(client, token, metadata("e1", ended_at=STARTED.isoformat()), flac, "e1.flac")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert stored_files(app) == files and len(rows(app)) == 1
    assert clips_counted("duplicate") == duplicates + 1


def test_other_audio_under_a_stored_id_is_a_conflict_and_the_original_stays(
    app: FastAPI, client: TestClient, token: str
) -> None:
    wav = CRY_FULL_BAND.read_bytes()
    assert upload(client, token, metadata("c1"), wav).status_code == 201
    files = stored_files(app)
    other = SPEECH.read_bytes()
    response = upload(client, token, metadata("c1"), other, "c1.wav")
    assert response.status_code == 409
    assert "stored already with other audio" in response.json()["detail"]
    assert stored_files(app) == files
    (clip,) = rows(app)
    assert app.state.storage.get(clip.original_key) == wav


def test_uploads_need_a_valid_token_for_the_device_the_metadata_names(
    app: FastAPI, client: TestClient, token: str
) -> None:
    wav = CRY_FULL_BAND.read_bytes()
    assert upload(client, None, metadata("c1"), wav).status_code == 401
    assert upload(client, "not-a-token", metadata("c1"), wav).status_code == 401
    enrol(app, "pi-kitchen")
    wrong = upload(client, token, metadata("c1", device="pi-kitchen"), wav)
    assert wrong.status_code == 403
    assert "'pi-kitchen' but the token belongs to 'pi-nursery'" in wrong.json()["detail"]
    with app.state.sessions() as db:
        accounts.revoke_device(db, DEVICE)
        db.commit()
    assert upload(client, token, metadata("c1"), wav).status_code == 401
    assert stored_files(app) == [] and rows(app) == []


@dataclass(frozen=True)
class Bad:
    name: str
    status: int
    reason: str
    data: bytes
    meta: dict[str, Any] | str
    settings: dict[str, Any] | None = None


def bad_uploads(tmp_path: Path) -> list[Bad]:
    wav = CRY_FULL_BAND.read_bytes()
    noisy = np.zeros((16000, 1), dtype=np.float32)
    noisy[100] = np.nan
    missing_score = metadata("b1")
    del missing_score["score"]
    aiff = encode(float_to_int16(load_mono(SPEECH)), 16000, "AIFF")
    return [
        Bad("not audio", 415, "not a readable audio file", b"MZ this is no audio " * 50, {}),
        Bad("empty file", 422, "empty (0 bytes)", b"", {}),
        Bad("truncated WAV", 422, "header declares", wav[: len(wav) // 2], {}),
        Bad("truncated FLAC", 422, "decoding failed part-way", edge_flac()[:-2000], {}),
        Bad("AIFF", 415, "AIFF audio; send WAV, FLAC or OGG", aiff, {}),
        Bad("NaN samples", 422, "NaN", encode(noisy, 16000, "WAV", "FLOAT"), {}),
        Bad("too long", 422, "over the 5 s limit", wav, {}, {"max_clip_s": 5.0}),
        Bad(
            "too short",
            422,
            "under the 0.5 s minimum",
            SPEECH.read_bytes(),
            {},
            {"min_clip_s": 0.5},
        ),
        Bad("too big (declared)", 413, "clips up to 100000", wav, {}, {"max_clip_bytes": 100_000}),
        Bad("too big (read)", 413, "over the", wav, {}, {"max_clip_bytes": len(wav) - 1}),
        Bad("metadata not JSON", 422, "Invalid JSON", wav, "{not json"),
        Bad("metadata lacks score", 422, "score: Field required", wav, json.dumps(missing_score)),
        Bad("rate mismatch", 422, "8000 Hz but the file is 16000 Hz", wav, {"sample_rate": 8000}),
        Bad(
            "naive time",
            422,
            "started_at has no UTC offset",
            wav,
            {"started_at": "2024-05-01T12:00:00"},
        ),
        Bad("unsafe id", 422, "metadata.id '../etc'", wav, {"id": "../etc"}),
    ]


def test_bad_uploads_are_refused_with_the_reason_and_leave_nothing_behind(
    app: FastAPI, client: TestClient, token: str, tmp_path: Path
) -> None:
    settings: Settings = app.state.settings
    rejected = clips_counted("rejected")
    cases = bad_uploads(tmp_path)
    for case in cases:
        app.state.settings = settings.model_copy(update=case.settings or {})
        meta = case.meta if isinstance(case.meta, str) else metadata("b1") | case.meta
        response = upload(client, token, meta, case.data, "b1.wav")
        assert response.status_code == case.status, (case.name, response.text)
        assert case.reason in response.json()["detail"], (case.name, response.text)
        assert stored_files(app) == [] and rows(app) == [], case.name
    app.state.settings = settings
    assert clips_counted("rejected") == rejected + len(cases)

    wav = CRY_FULL_BAND.read_bytes()
    no_audio = client.post(
        "/api/v1/clips",
        headers={"Authorization": f"Bearer {token}"},
        data={"metadata": json.dumps(metadata("b1"))},
        files={"recording": ("b1.wav", wav, "audio/wav")},
    )
    assert no_audio.status_code == 400 and "no `audio` file field" in no_audio.json()["detail"]
    no_metadata = client.post(
        "/api/v1/clips",
        headers={"Authorization": f"Bearer {token}"},
        files={"audio": ("b1.wav", wav, "audio/wav")},
    )
    assert no_metadata.status_code == 400 and "no `metadata` field" in no_metadata.json()["detail"]
    not_multipart = client.post(
        "/api/v1/clips", headers={"Authorization": f"Bearer {token}"}, json=metadata("b1")
    )
    assert not_multipart.status_code == 415
    chunked = client.post(  # a generator body goes out chunked, without Content-Length
        "/api/v1/clips",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "multipart/form-data; boundary=x",
        },
        content=iter([wav]),
    )
    assert chunked.status_code == 411 and "Content-Length" in chunked.json()["detail"]
    assert stored_files(app) == [] and rows(app) == []
    with app.state.sessions() as db:
        device = db.get(Device, DEVICE)
        assert device is not None and device.last_upload_at is None


@pytest.mark.parametrize("same_audio", [True, False], ids=["same audio", "other audio"])
def test_concurrent_uploads_of_one_id_leave_one_row_and_one_set_of_files(
    app: FastAPI,
    client: TestClient,
    token: str,
    monkeypatch: pytest.MonkeyPatch,
    same_audio: bool,
) -> None:
    """Every upload finds the id free before any of them inserts, so all but one lose the race
    at the insert (the database's primary key), not before it."""
    uploads = 4
    everyone_checked = threading.Barrier(uploads, timeout=30)
    utcnow = ingest_module.utcnow

    def now_once_all_checked() -> datetime:  # ingest asks the time between `get` and insert
        everyone_checked.wait()
        return utcnow()

    monkeypatch.setattr(ingest_module, "utcnow", now_once_all_checked)
    wav = CRY_FULL_BAND.read_bytes()
    datas = [wav if same_audio or i == 0 else wav[: -2 * i] + bytes(2 * i) for i in range(uploads)]
    statuses: list[int] = []

    def send(data: bytes) -> None:
        statuses.append(upload(client, token, metadata("race"), data).status_code)

    threads = [threading.Thread(target=send, args=(data,)) for data in datas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert statuses.count(201) == 1
    assert sorted(statuses) == sorted([201] + [200 if same_audio else 409] * (uploads - 1))
    (clip,) = rows(app)
    assert stored_files(app) == sorted({clip.original_key, clip.audio_key})


def test_people_list_clips_newest_first_with_filters_and_pages(
    app: FastAPI, client: TestClient, token: str, labeller: TestClient
) -> None:
    kitchen = enrol(app, "pi-kitchen")
    scores = {"n1": 0.95, "n2": 0.7, "n3": 0.8, "k1": 0.6}
    for seconds, (clip_id, score) in enumerate(scores.items(), start=1):
        owner = (kitchen, "pi-kitchen") if clip_id.startswith("k") else (token, DEVICE)
        meta = metadata(clip_id, device=owner[1], score=score)
        flac = edge_flac(seconds)
        assert upload(client, owner[0], meta, flac, f"{clip_id}.flac").status_code == 201
    with app.state.sessions() as db:
        db.add(Label(name="cry", key=1))
        db.flush()
        clip = db.get(Clip, "n2")
        assert clip is not None
        clip.label = "cry"
        db.commit()

    def ids(**params: Any) -> list[str]:
        response = labeller.get("/api/v1/clips", params=params)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert ids() == ["k1", "n3", "n2", "n1"]
    assert ids(device="pi-kitchen") == ["k1"]
    assert ids(label="cry") == ["n2"]
    assert ids(label="none") == ["k1", "n3", "n1"]
    assert ids(min_score=0.75) == ["n3", "n1"]
    assert ids(max_score=0.75, device=DEVICE) == ["n2"]
    with app.state.sessions() as db:
        received = {c.id: c.received_at for c in db.scalars(select(Clip))}
    assert ids(received_after=received["n2"].isoformat()) == ["k1", "n3", "n2"]
    assert ids(received_before=received["n2"].isoformat()) == ["n1"]
    # Times without an offset are UTC.
    naive = received["n3"].replace(tzinfo=None).isoformat()
    assert ids(received_after=naive) == ["k1", "n3"]

    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = labeller.get("/api/v1/clips", params=params).json()
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [["k1", "n3", "n2"], ["n1"]]
    assert labeller.get("/api/v1/clips", params={"cursor": "garbage!"}).status_code == 400

    detail = labeller.get("/api/v1/clips/n2").json()
    assert detail["label"] == "cry" and detail["metadata"]["score"] == 0.7
    assert labeller.get("/api/v1/clips/nope").status_code == 404
    assert client.get("/api/v1/clips").status_code == 401


def test_audio_downloads_the_16k_flac_or_the_file_as_received(
    app: FastAPI, client: TestClient, token: str, labeller: TestClient, tmp_path: Path
) -> None:
    wav = stereo_44k(tmp_path)
    assert upload(client, token, metadata("s1", sample_rate=44100), wav).status_code == 201

    flac = labeller.get("/api/v1/clips/s1/audio")
    assert flac.status_code == 200
    assert flac.headers["content-type"] == "audio/flac"
    assert 'filename="s1.flac"' in flac.headers["content-disposition"]
    info = sf.info(io.BytesIO(flac.content))
    assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)

    original = labeller.get("/api/v1/clips/s1/audio", params={"original": "true"})
    assert original.status_code == 200
    assert original.headers["content-type"] == "audio/wav"
    assert original.content == wav

    assert labeller.get("/api/v1/clips/nope/audio").status_code == 404
    assert client.get("/api/v1/clips/s1/audio").status_code == 401


# --- S3 ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3-compatible HTTP server on a loopback port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with running(command, env=dict(os.environ), log=log, probe=url):
        yield url


def test_clips_go_to_an_s3_bucket_and_come_back(
    s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="soundwarden-clips")
    settings = Settings(
        data_dir=tmp_path / "data",
        storage="s3",
        s3_bucket="soundwarden-clips",
        s3_endpoint_url=s3_endpoint,
        s3_prefix="test/",
    )
    app = create_app(settings)
    token = enrol(app, DEVICE)

    wav = stereo_44k(tmp_path)
    with TestClient(app) as client, signed_in(app, "lee", "labeller") as labeller:
        assert upload(client, token, metadata("s1"), wav).status_code == 422  # 44.1 kHz
        assert s3.list_objects_v2(Bucket="soundwarden-clips").get("KeyCount") == 0
        response = upload(client, token, metadata("s1", sample_rate=44100), wav)
        assert response.status_code == 201, response.text
        listed = s3.list_objects_v2(Bucket="soundwarden-clips")["Contents"]
        keys = sorted(item["Key"] for item in listed)
        assert len(keys) == 2 and all(key.startswith("test/clips/s1/") for key in keys)
        assert labeller.get("/api/v1/clips/s1/audio", params={"original": True}).content == wav
        mono = sf.info(io.BytesIO(labeller.get("/api/v1/clips/s1/audio").content))
        assert (mono.samplerate, mono.channels) == (16000, 1)
    app.state.engine.dispose()
