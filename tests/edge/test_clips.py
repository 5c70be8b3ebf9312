"""Clips around episodes: cut from real recordings, kept under a quota, uploaded over real HTTP.

The cloud is a real HTTP server on a loopback port that parses the multipart upload the way a
web framework would (with the `email` package), validates the metadata against the contract,
checks the bearer token and decodes the audio; stopping it makes the cloud unreachable.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import soundfile as sf

from edge.clips import ClipRecorder, ClipStore, ClipUploader, clip_key, read_metadata
from edge.config import ClipsConfig
from edge.spool import Spool
from models.audio import FloatArray, load_mono
from models.contract import ClipMetadata, EventPayload, ModelRef
from tests.conftest import CRY_8K_ORIGIN, CRY_FULL_BAND

RATE = 16000
ORIGIN = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MODEL = ModelRef(name="cry-detector", version="1.1.0")
TOKEN = "device-token"
DECISION_DELAY_S = 1.5  # a start event comes this long after the episode began


def at(seconds: float) -> datetime:
    return ORIGIN + timedelta(seconds=seconds)


def sample(seconds: float) -> int:
    return round(seconds * RATE)


def event(
    kind: Literal["start", "update", "end"],
    episode: str,
    *,
    label: str = "cry",
    started_s: float,
    ended_s: float | None = None,
    max_score: float = 0.9,
) -> EventPayload:
    return EventPayload(
        id=episode,
        type=kind,
        label=label,
        score=max_score,
        max_score=max_score,
        started_at=at(started_s),
        ended_at=None if ended_s is None else at(ended_s),
        level_dbfs=-20.0,
        model=MODEL,
        device="nursery",
    )


def episode(
    episode_id: str, start_s: float, end_s: float, label: str = "cry"
) -> list[tuple[float, EventPayload]]:
    """An episode's events, each at the stream time the detector would raise it."""
    return [
        (start_s + DECISION_DELAY_S, event("start", episode_id, label=label, started_s=start_s)),
        (
            start_s + DECISION_DELAY_S + 1,
            event("update", episode_id, label=label, started_s=start_s, max_score=0.95),
        ),
        (
            end_s,
            event("end", episode_id, label=label, started_s=start_s, ended_s=end_s, max_score=0.95),
        ),
    ]


def clips_config(**overrides: Any) -> ClipsConfig:
    settings: dict[str, Any] = {
        "pre_roll_s": 0.5,
        "post_roll_s": 0.5,
        "upload_url": "http://127.0.0.1:9",
        "token": TOKEN,
    } | overrides
    return ClipsConfig(**settings)


class Rig:
    """A recorder with its store and spool under `tmp_path`, driven as the daemon drives it:
    audio in uneven chunks, each event once the stream has reached its time."""

    def __init__(self, tmp_path: Path, config: ClipsConfig) -> None:
        self.store = ClipStore(tmp_path / "clips", 10**9)
        self.spool = Spool(tmp_path / "spool.sqlite")
        self.recorder = ClipRecorder(
            config, self.store, self.spool, rate=RATE, device="nursery", origin=ORIGIN
        )
        self.fed = 0
        self.finished: list[str] = []
        self._rng = np.random.default_rng(7)

    def play(self, audio: FloatArray, events: Sequence[tuple[float, EventPayload]] = ()) -> None:
        pending = sorted(events, key=lambda item: item[0])
        end = self.fed + audio.shape[0]
        offset = 0
        while self.fed < end:
            size = min(int(self._rng.integers(1, 4000)), end - self.fed)
            self.finished += self.recorder.push(audio[offset : offset + size])
            offset += size
            self.fed += size
            while pending and sample(pending[0][0]) <= self.fed:
                self.finished += self.recorder.on_event(pending.pop(0)[1])

    def noise_episode(self) -> str:
        """A short episode of quiet noise, post-roll included; returns its id."""
        episode_id = uuid.uuid4().hex
        now = self.fed / RATE
        noise = (self._rng.standard_normal(sample(2.5)) * 0.05).astype(np.float32)
        self.play(noise, episode(episode_id, now + 0.2, now + 1.9))
        return episode_id

    def uploader(self, url: str, **options: Any) -> ClipUploader:
        settings: dict[str, Any] = {"url": url, "token": TOKEN, "retry_max_s": 0.2} | options
        return ClipUploader(self.store, self.spool, **settings)


@pytest.fixture(scope="module")
def recording() -> FloatArray:
    """21 s of real cries, 16-bit at 16 kHz, so a 16-bit clip holds exactly the same samples."""
    cry, other = load_mono(CRY_FULL_BAND, RATE), load_mono(CRY_8K_ORIGIN, RATE)
    return np.concatenate([cry, other, cry])


def test_a_clip_holds_pre_roll_episode_and_post_roll_of_the_input(
    tmp_path: Path, recording: FloatArray
) -> None:
    rig = Rig(tmp_path, clips_config(pre_roll_s=2.0, post_roll_s=1.0))
    rig.play(recording, episode("ep1", 6.0, 11.3))

    assert rig.finished == ["ep1"]
    assert rig.recorder.clip_id_for(event("end", "ep1", started_s=6.0, ended_s=11.3)) == "ep1"
    path = tmp_path / "clips" / "pending" / "ep1.flac"
    clip, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    assert clip.shape[0] / RATE == pytest.approx(2.0 + 5.3 + 1.0, abs=0.25)
    np.testing.assert_array_equal(clip, recording[sample(4.0) : sample(12.3)])

    [entry] = rig.spool.peek(kind="clip")
    payload = json.loads(entry.payload)
    metadata = ClipMetadata.model_validate(payload["metadata"])
    assert (entry.key, payload["file"]) == (clip_key("ep1"), "ep1.flac")
    assert metadata == read_metadata(path)  # the file describes itself
    assert (metadata.started_at, metadata.ended_at) == (at(4.0), at(12.3))
    assert (metadata.episode_started_at, metadata.episode_ended_at) == (at(6.0), at(11.3))
    assert metadata.ended_at - metadata.started_at == timedelta(seconds=clip.shape[0] / RATE)
    assert (metadata.id, metadata.event_id, metadata.label, metadata.device) == (
        "ep1",
        "ep1",
        "cry",
        "nursery",
    )
    assert (metadata.score, metadata.model, metadata.sample_rate) == (0.95, MODEL, RATE)
    assert not metadata.truncated


def test_a_long_episode_is_cut_at_max_clip_and_saved_when_it_ends(
    tmp_path: Path, recording: FloatArray
) -> None:
    rig = Rig(tmp_path, clips_config(pre_roll_s=2.0, post_roll_s=1.0, max_clip_s=5))
    events = episode("long", 3.0, 15.0)
    rig.play(recording[: sample(14.0)], events[:2])
    assert rig.finished == []  # full, but its metadata needs the episode's end

    rig.play(recording[sample(14.0) :], events[2:])
    assert rig.finished == ["long"]
    path = tmp_path / "clips" / "pending" / "long.flac"
    clip, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(clip, recording[sample(1.0) : sample(6.0)])
    metadata = read_metadata(path)
    assert metadata.truncated
    assert (metadata.started_at, metadata.ended_at) == (at(1.0), at(6.0))
    assert metadata.episode_ended_at == at(15.0)


def test_overlapping_episodes_of_two_labels_make_two_clips(
    tmp_path: Path, recording: FloatArray
) -> None:
    rig = Rig(tmp_path, clips_config(pre_roll_s=2.0, post_roll_s=1.0, format="wav"))
    rig.play(recording, episode("cry1", 0.5, 8.0) + episode("talk", 5.0, 12.0, "speech"))

    assert sorted(rig.finished) == ["cry1", "talk"]
    pending = tmp_path / "clips" / "pending"
    cry, _ = sf.read(pending / "cry1.wav", dtype="float32")
    talk, _ = sf.read(pending / "talk.wav", dtype="float32")
    # The cry began 0.5 s into the stream: its pre-roll holds what there is.
    np.testing.assert_array_equal(cry, recording[: sample(9.0)])
    np.testing.assert_array_equal(talk, recording[sample(3.0) : sample(13.0)])
    assert read_metadata(pending / "talk.wav").label == "speech"
    assert read_metadata(pending / "cry1.wav").started_at == ORIGIN


def test_flush_saves_open_clips_with_what_they_have(tmp_path: Path, recording: FloatArray) -> None:
    rig = Rig(tmp_path, clips_config(pre_roll_s=1.0))
    rig.play(recording[: sample(6.0)], episode("open", 2.0, 99.0)[:1])
    assert rig.recorder.flush() == ["open"]
    path = tmp_path / "clips" / "pending" / "open.flac"
    clip, _ = sf.read(path, dtype="float32")
    np.testing.assert_array_equal(clip, recording[sample(1.0) : sample(6.0)])
    metadata = read_metadata(path)
    assert metadata.episode_ended_at == at(6.0)
    assert not metadata.truncated


def test_audio_dropped_upstream_is_silence_in_the_clip(
    tmp_path: Path, recording: FloatArray
) -> None:
    rig = Rig(tmp_path, clips_config(pre_roll_s=1.0, post_roll_s=1.0))
    events = episode("gap", 2.0, 7.0)
    rig.play(recording[: sample(4.0)], events[:1])
    rig.recorder.skip(sample(1.0))  # the daemon fell behind and dropped a second
    rig.fed += sample(1.0)
    rig.play(recording[sample(5.0) : sample(9.0)], events[1:])

    assert rig.finished == ["gap"]
    clip, _ = sf.read(tmp_path / "clips" / "pending" / "gap.flac", dtype="float32")
    expected = recording[sample(1.0) : sample(8.0)].copy()
    expected[sample(3.0) : sample(4.0)] = 0.0
    np.testing.assert_array_equal(clip, expected)


def test_disabled_clips_record_nothing(tmp_path: Path, recording: FloatArray) -> None:
    rig = Rig(tmp_path, clips_config(enabled=False))
    rig.play(recording[: sample(8.0)], episode("ep", 1.0, 4.0))
    assert rig.finished == [] and rig.recorder.flush() == []
    assert rig.recorder.clip_id_for(event("end", "ep", started_s=1.0, ended_s=4.0)) is None
    assert list((tmp_path / "clips" / "pending").iterdir()) == []


@dataclass
class Upload:
    metadata: ClipMetadata
    filename: str
    content_type: str
    audio: FloatArray


def parse_upload(content_type: str, body: bytes) -> Upload:
    """Read an upload as the cloud must: multipart fields, contract metadata, decodable audio."""
    message = BytesParser(policy=default).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    assert isinstance(message, EmailMessage)
    assert message.get_content_type() == "multipart/form-data"
    parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
    assert parts["metadata"].get_content_type() == "application/json"
    metadata = ClipMetadata.model_validate_json(field_bytes(parts["metadata"]))
    audio, rate = sf.read(io.BytesIO(field_bytes(parts["audio"])), dtype="float32")
    assert rate == metadata.sample_rate
    filename = parts["audio"].get_filename()
    assert filename is not None
    return Upload(metadata, filename, parts["audio"].get_content_type(), audio)


def field_bytes(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)
    return data


class FakeCloud:
    """The cloud's clip endpoint on a loopback port; `answers` are statuses to give (in order)
    before accepting again."""

    def __init__(self) -> None:
        self.uploads: list[Upload] = []
        self.requests = 0
        self.answers: list[int] = []
        self.errors: list[str] = []
        self.port = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = cloud.answer(self.path, self.headers, body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def answer(self, path: str, headers: Any, body: bytes) -> tuple[int, bytes]:
        with self._lock:
            self.requests += 1
            if path != "/api/v1/clips":
                return 404, b"no such endpoint"
            if headers["Authorization"] != f"Bearer {TOKEN}":
                return 401, b"invalid device token"
            if self.answers:
                return self.answers.pop(0), b"metadata.score: not a number"
            try:
                upload = parse_upload(headers["Content-Type"], body)
            except (AssertionError, ValueError) as exc:  # the fixture reports these at teardown
                self.errors.append(repr(exc))
                return 422, repr(exc).encode()
            self.uploads.append(upload)
            return 201, json.dumps({"id": upload.metadata.id}).encode()

    @property
    def uploaded_ids(self) -> list[str]:
        with self._lock:
            return [u.metadata.id for u in self.uploads]


@pytest.fixture
def cloud() -> Iterator[FakeCloud]:
    cloud = FakeCloud()
    cloud.start()
    yield cloud
    if cloud._server is not None:
        cloud.stop()
    assert cloud.errors == []


def wait_for(condition: Callable[[], bool], timeout_s: float = 8.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_clips_wait_while_the_cloud_is_down_then_go_once_each_in_order(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    cloud.stop()  # unreachable: connection refused on its port
    rig = Rig(tmp_path, clips_config())
    uploader = rig.uploader(cloud.url)
    uploader.start()
    try:
        ids = [rig.noise_episode() for _ in range(3)]
        uploader.notify()
        wait_for(lambda: uploader.failures >= 2)
        ids.append(rig.noise_episode())
        assert rig.spool.depth(kind="clip") == 4
        assert uploader.uploaded == 0

        cloud.start()  # back, on the same port
        wait_for(lambda: uploader.uploaded == 4)
        assert cloud.uploaded_ids == ids
        assert rig.spool.depth(kind="clip") == 0
        assert sorted(p.stem for p in (tmp_path / "clips" / "uploaded").iterdir()) == sorted(ids)
        first = cloud.uploads[0]
        assert (first.filename, first.content_type) == (f"{ids[0]}.flac", "audio/flac")
        assert first.audio.shape[0] == round(
            (first.metadata.ended_at - first.metadata.started_at).total_seconds() * RATE
        )
    finally:
        uploader.stop()

    # A restart (new spool object on the same file) resumes with what was queued meanwhile.
    later = [rig.noise_episode() for _ in range(2)]
    rig.spool.close()
    resumed = ClipUploader(
        rig.store, Spool(rig.spool.path), url=cloud.url, token=TOKEN, retry_max_s=0.2
    )
    resumed.start()
    try:
        wait_for(lambda: resumed.uploaded == 2)
        assert cloud.uploaded_ids == ids + later
    finally:
        resumed.stop()


def test_a_400_is_final_and_a_503_is_retried(
    tmp_path: Path, cloud: FakeCloud, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, clips_config(format="wav"))
    uploader = rig.uploader(cloud.url)
    cloud.answers = [400]
    bad = rig.noise_episode()
    with caplog.at_level(logging.ERROR, logger="edge.clips"):
        uploader.start()
        try:
            wait_for(lambda: uploader.rejected == 1)
            cloud.answers = [503, 503]
            good = rig.noise_episode()
            uploader.notify()
            wait_for(lambda: uploader.uploaded == 1)
        finally:
            uploader.stop()
    assert cloud.requests == 4  # the 400 once, the 503s and the success
    assert cloud.uploaded_ids == [good]
    assert cloud.uploads[0].content_type == "audio/wav"
    assert uploader.failures == 2
    assert (tmp_path / "clips" / "rejected" / f"{bad}.wav").exists()
    assert f"rejected clip {bad}.wav with HTTP 400: metadata.score: not a number" in caplog.text


def test_a_wrong_token_is_rejected_and_recovers_once_moved_back(
    tmp_path: Path, cloud: FakeCloud
) -> None:
    rig = Rig(tmp_path, clips_config())
    clip_id = rig.noise_episode()
    uploader = rig.uploader(cloud.url, token="revoked")
    uploader.start()
    try:
        wait_for(lambda: uploader.rejected == 1)
    finally:
        uploader.stop()
    assert cloud.requests == 1 and cloud.uploads == []
    assert rig.spool.depth(kind="clip") == 0

    # With the token fixed, moving the clip back into pending/ re-queues it at the next start.
    clips = tmp_path / "clips"
    (clips / "rejected" / f"{clip_id}.flac").replace(clips / "pending" / f"{clip_id}.flac")
    fixed = Rig(tmp_path, clips_config()).uploader(cloud.url)
    fixed.start()
    try:
        wait_for(lambda: fixed.uploaded == 1)
    finally:
        fixed.stop()
    assert cloud.uploaded_ids == [clip_id]


def test_backoff_holds_while_down_and_stop_is_prompt(tmp_path: Path, cloud: FakeCloud) -> None:
    cloud.stop()
    rig = Rig(tmp_path, clips_config())
    rig.noise_episode()
    uploader = rig.uploader(cloud.url, retry_max_s=30.0)
    uploader.start()
    wait_for(lambda: uploader.failures == 1)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # new clips keep notifying; the backoff (1 s, 2 s) holds
        uploader.notify()
        time.sleep(0.05)
    assert uploader.failures <= 2
    began = time.monotonic()
    uploader.stop()
    assert time.monotonic() - began < 3.0
    assert rig.spool.depth(kind="clip") == 1


def test_a_clip_deleted_before_upload_is_counted_lost(tmp_path: Path, cloud: FakeCloud) -> None:
    rig = Rig(tmp_path, clips_config())
    clip_id = rig.noise_episode()
    (tmp_path / "clips" / "pending" / f"{clip_id}.flac").unlink()
    uploader = rig.uploader(cloud.url)
    uploader.start()
    try:
        wait_for(lambda: uploader.lost == 1)
    finally:
        uploader.stop()
    assert rig.spool.depth(kind="clip") == 0
    assert cloud.requests == 0


def test_the_quota_deletes_uploaded_clips_before_pending_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, clips_config(upload_url=None))
    store = rig.store
    for clip_id in [rig.noise_episode() for _ in range(3)]:
        store.mark_uploaded(f"{clip_id}.flac")
    biggest = max(p.stat().st_size for p in (tmp_path / "clips" / "uploaded").iterdir())
    store.quota_bytes = int(3.5 * biggest)

    with caplog.at_level(logging.WARNING, logger="edge.clips"):
        pending = []
        for _ in range(5):
            pending.append(rig.noise_episode())
            assert store.usage_bytes() <= store.quota_bytes + biggest
            if store.deleted_pending:
                assert list((tmp_path / "clips" / "uploaded").iterdir()) == []
    assert store.deleted_uploaded == 3
    assert store.deleted_pending == 2
    assert [p.stem for p in store.pending_files()] == pending[2:]
    assert caplog.text.count("before it was uploaded") == 2
    assert rig.spool.depth() == 0  # kept locally only: nothing to upload without a URL

    store.quota_bytes = 1  # never the clip just written
    newest = rig.noise_episode()
    assert [p.stem for p in store.pending_files()] == [newest]


def test_startup_requeues_orphan_clips_and_removes_temp_files(tmp_path: Path) -> None:
    rig = Rig(tmp_path, clips_config())
    clip_id = rig.noise_episode()
    [queued] = rig.spool.peek(kind="clip")
    rig.spool.ack(queued.seq)  # as if the daemon died between writing the file and queueing it
    leftover = tmp_path / "clips" / "pending" / f".{clip_id}.flac.x1y2.tmp"
    leftover.write_bytes(b"half a clip")
    rig.spool.close()

    restarted = Rig(tmp_path, clips_config())
    assert not leftover.exists()
    assert [(e.key, e.payload) for e in restarted.spool.peek(kind="clip")] == [
        (clip_key(clip_id), queued.payload)
    ]
    assert Rig(tmp_path, clips_config()).spool.depth() == 1  # not queued twice
