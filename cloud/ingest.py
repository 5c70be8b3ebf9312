"""Clip ingestion: an upload is decoded and validated in full before anything is stored.

A device sends its clip (WAV, FLAC or OGG, any rate and channel count) with its `ClipMetadata`.
The cloud keeps the file exactly as received and, beside it, the 16 kHz mono 16-bit FLAC every
later step (labelling, model assistance, training) reads; when the upload already is that file
(the edge's FLAC clips are), it is stored once and both keys name it. The keys carry the content
hash, so a conflicting re-upload under the same id can never overwrite what is stored, and a
per-attempt nonce: two uploads of the same clip racing each other each write their own files,
and the loser removes exactly its own without touching the winner's.

The clip id is the idempotency key. An upload whose id is stored already is settled against
the stored clip and leaves nothing behind: the same bytes are a retry (accepted again), other
bytes are a conflict. Files are written first, then the row; when the row fails, the files go.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO

import numpy as np
import soundfile as sf
from pydantic import ValidationError
from sqlalchemy import String, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from cloud.accounts import NAME_PATTERN
from cloud.core.config import Settings
from cloud.storage import ClipStorage
from cloud.tables import Clip, Device, utcnow
from models.audio import (
    TARGET_SAMPLE_RATE,
    AudioError,
    FloatArray,
    UnreadableAudioError,
    float_to_int16,
    read_audio,
    resample,
    to_mono,
)
from models.contract import ClipMetadata

log = logging.getLogger(__name__)

# libsndfile's container name -> the extension kept in storage keys and served back.
FORMATS = {"WAV": "wav", "WAVEX": "wav", "FLAC": "flac", "OGG": "ogg"}
MEDIA_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "ogg": "audio/ogg"}
_READ_CHUNK = 1 << 20
# A device's `last_upload_at` is kept to the minute: writing it on every upload would cost a
# busy device's every upload a statement of its own (~5 % of PostgreSQL ingestion, measured).
LAST_UPLOAD_RESOLUTION = timedelta(minutes=1)


class IngestError(Exception):
    """An upload refused: the HTTP status to answer and, for the device's log, why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class DecodedClip:
    """A validated upload: the file as received and its 16 kHz mono FLAC version."""

    original: bytes
    original_format: str  # wav | flac | ogg
    sample_rate: int
    channels: int
    duration_s: float
    audio_16k: bytes | None  # None: the original already is 16 kHz mono 16-bit FLAC


@dataclass(frozen=True)
class Ingested:
    clip: Clip
    created: bool  # False: the clip was stored already (a retry); nothing of this upload is kept


def read_limited(file: BinaryIO, limit: int) -> bytes:
    """The whole file, read in chunks; 413 as soon as it holds more than `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := file.read(min(_READ_CHUNK, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise IngestError(413, f"the audio file is over the {limit}-byte limit for a clip")
    return b"".join(chunks)


def _column_length(column: str) -> int:
    kind = Clip.__table__.c[column].type
    assert isinstance(kind, String) and kind.length is not None
    return kind.length


def parse_metadata(raw: str | bytes, device_id: str) -> ClipMetadata:
    """The upload's `metadata` field as `ClipMetadata`, checked against what the table holds."""
    try:
        metadata = ClipMetadata.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'metadata'}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise IngestError(422, f"metadata is not a valid ClipMetadata: {problems}") from None
    if metadata.device != device_id:
        raise IngestError(
            403, f"metadata.device is {metadata.device!r} but the token belongs to {device_id!r}"
        )
    if not NAME_PATTERN.fullmatch(metadata.id):
        raise IngestError(
            422, f"metadata.id {metadata.id!r}: use 1-64 letters, digits, '_', '.' or '-'"
        )
    limits = {
        "event_id": (metadata.event_id, "event_id"),
        "label": (metadata.label, "device_label"),
        "model.name": (metadata.model.name, "model_name"),
        "model.version": (metadata.model.version, "model_version"),
    }
    for name, (value, column) in limits.items():
        if len(value) > _column_length(column):
            raise IngestError(422, f"metadata.{name} is over {_column_length(column)} characters")
    times: dict[str, datetime] = {
        "started_at": metadata.started_at,
        "ended_at": metadata.ended_at,
        "episode_started_at": metadata.episode_started_at,
        "episode_ended_at": metadata.episode_ended_at,
    }
    for name, at in times.items():
        if at.tzinfo is None:
            raise IngestError(422, f"metadata.{name} has no UTC offset (send e.g. ...Z)")
    if not math.isfinite(metadata.score):
        raise IngestError(422, "metadata.score is not a finite number")
    return metadata


def decode_clip(data: bytes, *, name: str, declared_rate: int, settings: Settings) -> DecodedClip:
    """Decode once, refuse what is not a usable clip, and make the 16 kHz mono FLAC."""
    if not data:
        raise IngestError(422, f"{name}: the audio file is empty (0 bytes)")
    # `read_audio` (the checks every component applies: truncation, absurd parameters, NaN)
    # reads from a path; an unsynced temporary file is page cache only, and libsndfile then
    # decodes without calling back into Python, so concurrent uploads decode in parallel.
    with tempfile.NamedTemporaryFile(prefix="soundwarden-upload-") as tmp:
        tmp.write(data)
        tmp.flush()
        try:
            audio = read_audio(tmp.name, max_duration_s=settings.max_clip_s)
        except AudioError as exc:
            reason = exc.reason.replace(tmp.name, name)
            status = 415 if isinstance(exc, UnreadableAudioError) else 422
            raise IngestError(status, f"{name}: {reason}") from None
    extension = FORMATS.get(audio.format)
    if extension is None:
        raise IngestError(415, f"{name}: {audio.format} audio; send WAV, FLAC or OGG")
    if audio.duration_s < settings.min_clip_s:
        raise IngestError(
            422, f"{name}: {audio.duration_s:.3f} s long, under the {settings.min_clip_s} s minimum"
        )
    if declared_rate != audio.sample_rate:
        raise IngestError(
            422,
            f"{name}: metadata.sample_rate is {declared_rate} Hz but the file is "
            f"{audio.sample_rate} Hz: the metadata does not describe this file",
        )
    channels = audio.samples.shape[1]
    # What the edge sends already is the 16 kHz copy: re-encoding it would change nothing.
    ready = (audio.format, audio.subtype, audio.sample_rate, channels) == (
        "FLAC",
        "PCM_16",
        TARGET_SAMPLE_RATE,
        1,
    )
    audio_16k = None
    if not ready:
        audio_16k = encode_flac_16k(
            resample(to_mono(audio.samples), audio.sample_rate, TARGET_SAMPLE_RATE)
        )
    return DecodedClip(data, extension, audio.sample_rate, channels, audio.duration_s, audio_16k)


def encode_flac_16k(mono: FloatArray) -> bytes:
    """The form every clip's audio is kept in for listening, scoring and training: 16 kHz
    mono 16-bit FLAC."""
    buffer = io.BytesIO()
    sf.write(buffer, float_to_int16(mono), TARGET_SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def read_clip_audio(storage: ClipStorage, clip: Clip) -> FloatArray:
    """A clip's kept 16 kHz mono audio, as float samples."""
    samples, _rate = sf.read(io.BytesIO(storage.get(clip.audio_key)), dtype="float32")
    return np.asarray(samples, dtype=np.float32)


def _settle(stored: Clip, sha256: str, device_id: str) -> Clip:
    """An upload under an id that is taken: the same clip again, or a conflict."""
    if stored.device_id != device_id or stored.source != "device":
        raise IngestError(409, f"clip id {stored.id!r} is taken by another clip")
    if stored.sha256 != sha256:
        raise IngestError(
            409,
            f"clip {stored.id!r} is stored already with other audio (sha256 "
            f"{stored.sha256[:16]}..., this upload {sha256[:16]}...); the stored clip is kept",
        )
    return stored


def _remove(storage: ClipStorage, keys: list[str]) -> None:
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # the failure being handled matters more; an orphan file is harmless
            log.exception("could not remove %s after a failed upload", key)


def _device_clip(
    meta: ClipMetadata,
    device_id: str,
    decoded: DecodedClip,
    sha256: str,
    keys: tuple[str, str],
    now: datetime,
) -> Clip:
    original_key, audio_key = keys
    return Clip(
        id=meta.id,
        source="device",
        device_id=device_id,
        group_id=device_id,
        event_id=meta.event_id,
        device_label=meta.label,
        device_score=meta.score,
        model_name=meta.model.name,
        model_version=meta.model.version,
        started_at=meta.started_at,
        ended_at=meta.ended_at,
        received_at=now,
        sample_rate=decoded.sample_rate,
        channels=decoded.channels,
        duration_s=decoded.duration_s,
        original_key=original_key,
        original_format=decoded.original_format,
        audio_key=audio_key,
        sha256=sha256,
        metadata_json=meta.model_dump(mode="json"),
        false_positive=False,
    )


def ingest(
    db: Db,
    storage: ClipStorage,
    settings: Settings,
    device_id: str,
    *,
    last_upload_at: datetime | None,
    metadata: str | bytes,
    audio: bytes,
    filename: str,
) -> Ingested:
    """Validate, store and record one device upload (IngestError says why it was refused).
    `last_upload_at` is the device's as read when its token was checked."""
    meta = parse_metadata(metadata, device_id)
    sha256 = hashlib.sha256(audio).hexdigest()
    decoded = decode_clip(audio, name=filename, declared_rate=meta.sample_rate, settings=settings)
    stem = f"clips/{meta.id}/{sha256[:16]}-{uuid.uuid4().hex[:8]}"
    original_key = f"{stem}.original.{decoded.original_format}"
    audio_key = original_key if decoded.audio_16k is None else f"{stem}.16k.flac"
    files = {original_key: decoded.original}
    if decoded.audio_16k is not None:
        files[audio_key] = decoded.audio_16k
    written: list[str] = []
    # Whether the id is taken is not asked: the insert finds out (the primary key refuses a
    # second row), one statement fewer on the service's busiest write. A retry of a stored
    # clip (rare) pays for it with a decode and files that are removed again.
    try:
        for key, data in files.items():
            storage.put(key, data)
            written.append(key)
        now = utcnow()
        clip = _device_clip(meta, device_id, decoded, sha256, (original_key, audio_key), now)
        # Two Core statements instead of the unit of work (`db.add`): on the service's busiest
        # write the ORM's flush costs more than the statements themselves (~0.4 ms an upload).
        # `clip` never joins the session; it is the answer's copy of the row.
        row = {column.key: getattr(clip, column.key) for column in Clip.__table__.columns}
        connection = db.connection()
        connection.execute(insert(Clip), row)
        if last_upload_at is None or now - last_upload_at >= LAST_UPLOAD_RESOLUTION:
            connection.execute(
                update(Device).where(Device.id == device_id).values(last_upload_at=now)
            )
        db.commit()
        return Ingested(clip, created=True)
    except IntegrityError:
        # The id is taken, by this clip (a retry) or another: only the stored clip's files stay.
        db.rollback()
        _remove(storage, written)
        stored = db.get(Clip, meta.id)
        if stored is None:  # the insert broke some other rule
            raise
        return Ingested(_settle(stored, sha256, device_id), created=False)
    except BaseException:
        db.rollback()
        _remove(storage, written)
        raise
