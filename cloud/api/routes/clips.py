"""Clips: devices upload them (device token); people list, inspect and play them (sign-in)."""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session as Db
from sqlalchemy.orm import sessionmaker
from starlette.datastructures import UploadFile

from cloud.api.deps import (
    DbDep,
    StorageDep,
    UserDep,
    current_device,
    get_settings,
    get_storage,
    refused_value,
)
from cloud.core.metrics import CLIPS
from cloud.ingest import MEDIA_TYPES, IngestError, ingest, read_limited
from cloud.labelling import ClipFilter
from cloud.tables import Clip

router = APIRouter(prefix="/clips", tags=["clips"])

# Room in a request for the metadata JSON and the multipart framing around the audio file.
FORM_OVERHEAD_BYTES = 64 * 1024
UNLABELLED = "none"

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["metadata", "audio"],
                    "properties": {
                        "metadata": {
                            "type": "string",
                            "description": "ClipMetadata as JSON (schema: ClipMetadata).",
                        },
                        "audio": {
                            "type": "string",
                            "format": "binary",
                            "description": "The clip: WAV, FLAC or OGG, any rate and channels.",
                        },
                    },
                }
            }
        },
    }
}


class ClipOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Clip id; for device uploads the episode id.")
    source: str = Field(description="`device` (uploaded) or `import` (cut from a recording).")
    device_id: str | None = Field(description="The device that uploaded it.")
    group_id: str = Field(description="What dataset splits keep together (device or recording).")
    event_id: str | None = Field(description="Episode id of the event it was recorded for.")
    device_label: str | None = Field(description="What the device's model heard.")
    device_score: float | None = Field(description="The episode's highest window score.")
    model_name: str | None = Field(description="The bundle that raised the episode.")
    model_version: str | None
    started_at: datetime | None = Field(description="Time of the first sample (UTC).")
    ended_at: datetime | None = Field(description="Time just after the last sample (UTC).")
    received_at: datetime = Field(description="When the cloud stored it (UTC).")
    sample_rate: int = Field(description="Sample rate of the file as received, Hz.")
    channels: int = Field(description="Channels of the file as received.")
    duration_s: float = Field(description="Length, seconds.")
    original_format: str = Field(description="Container as received: wav, flac or ogg.")
    sha256: str = Field(description="SHA-256 of the file as received.")
    label: str | None = Field(description="The label people gave it; null while unlabelled.")
    labelled_at: datetime | None
    false_positive: bool = Field(description="People found the device's detection wrong.")


class ClipDetail(ClipOut):
    metadata: dict[str, Any] | None = Field(
        validation_alias="metadata_json", description="The ClipMetadata the device sent."
    )
    suggestion: str | None = Field(description="The latest model suggestion, if scored.")
    suggestion_score: float | None
    suggestion_model: str | None


class ClipPage(BaseModel):
    items: list[ClipOut] = Field(description="Clips, newest first.")
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


def _count(result: str) -> None:
    CLIPS.labels(result=result).inc()


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=UPLOAD_BODY,
    responses={
        200: {"description": "This clip (same id and audio) is stored already", "model": ClipOut},
        400: {"description": "Not a well-formed upload (fields missing)"},
        401: {"description": "No valid device token"},
        403: {"description": "metadata.device is not the token's device"},
        409: {"description": "The clip id is stored already with other audio"},
        411: {"description": "No Content-Length"},
        413: {"description": "Larger than the clip size limit"},
        415: {"description": "Not multipart, or not WAV/FLAC/OGG audio"},
        422: {"description": "Invalid metadata, or audio unfit as a clip; `detail` says why"},
    },
)
async def upload_clip(
    request: Request,
    response: Response,
    authorization: Annotated[
        str | None, Header(description="`Bearer <device token>` (`soundwarden-cloud add-device`)")
    ] = None,
) -> ClipOut:
    """Upload a clip (multipart: `metadata` as ClipMetadata JSON, `audio` as the file).

    Idempotent on the clip id: a retry of a stored clip answers 200 and stores nothing again.
    Nothing is stored unless the whole upload is valid."""
    try:
        out, created = await _receive(request, authorization)
    except IngestError as exc:
        _count("conflict" if exc.status == status.HTTP_409_CONFLICT else "rejected")
        raise HTTPException(exc.status, exc.detail) from None
    except HTTPException:  # no valid token
        _count("rejected")
        raise
    except DataError as exc:  # its sessions are its own, not get_db's
        _count("rejected")
        raise refused_value(exc) from None
    except Exception:
        _count("failed")
        raise
    _count("created" if created else "duplicate")
    if not created:
        response.status_code = status.HTTP_200_OK
    return out


async def _receive(request: Request, authorization: str | None) -> tuple[ClipOut, bool]:
    # The hot path of the service, so its dependencies are resolved here by hand: FastAPI would
    # give each sync dependency a thread hop of its own and keep a session, and with it a pooled
    # connection, for the whole request. Here it is two hops and two short sessions: the token
    # (before a byte of the body is read), then everything blocking. The body is parsed here
    # too, so that its size is checked before it is read.
    sessions: sessionmaker[Db] = request.app.state.sessions
    settings, storage = get_settings(request), get_storage(request)

    def authenticate() -> tuple[str, datetime | None]:
        with sessions() as db:
            device = current_device(db, authorization)
            return device.id, device.last_upload_at

    device_id, last_upload_at = await run_in_threadpool(authenticate)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise IngestError(
            415, "send multipart/form-data with fields `metadata` (ClipMetadata JSON) and `audio`"
        )
    length = request.headers.get("content-length")
    if length is None:
        raise IngestError(411, "send a Content-Length with the upload")
    if int(length) > settings.max_clip_bytes + FORM_OVERHEAD_BYTES:
        raise IngestError(
            413, f"the upload is {length} bytes; clips up to {settings.max_clip_bytes} are accepted"
        )
    async with request.form(max_files=2, max_fields=2, max_part_size=FORM_OVERHEAD_BYTES) as form:
        audio, metadata = form.get("audio"), form.get("metadata")
        if not isinstance(audio, UploadFile):
            raise IngestError(400, "the upload has no `audio` file field")
        if metadata is None:
            raise IngestError(400, "the upload has no `metadata` field (ClipMetadata JSON)")

        def store() -> tuple[ClipOut, bool]:
            data = read_limited(audio.file, settings.max_clip_bytes)
            meta = (
                metadata.file.read(FORM_OVERHEAD_BYTES)
                if isinstance(metadata, UploadFile)
                else metadata
            )
            with sessions() as db:
                ingested = ingest(
                    db,
                    storage,
                    settings,
                    device_id,
                    last_upload_at=last_upload_at,
                    metadata=meta,
                    audio=data,
                    filename=audio.filename or "audio",
                )
                return ClipOut.model_validate(ingested.clip), ingested.created

        return await run_in_threadpool(store)


def _encode_cursor(clip: Clip) -> str:
    raw = f"{clip.received_at.isoformat()}|{clip.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, clip_id = raw.split("|", 1)
        return as_utc(datetime.fromisoformat(at)), clip_id
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a cursor from this list") from None


def as_utc(at: datetime) -> datetime:
    """Times without an offset in a query mean UTC."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at


@router.get("", responses={400: {"description": "A bad cursor"}})
def list_clips(
    _: UserDep,
    db: DbDep,
    device: Annotated[str | None, Query(description="Only this device's clips.")] = None,
    label: Annotated[
        str | None, Query(description=f"Only clips people labelled so; `{UNLABELLED}`: unlabelled.")
    ] = None,
    min_score: Annotated[float | None, Query(description="Device score at least this.")] = None,
    max_score: Annotated[float | None, Query(description="Device score at most this.")] = None,
    received_after: Annotated[
        datetime | None, Query(description="Received at or after (ISO 8601; no offset: UTC).")
    ] = None,
    received_before: Annotated[
        datetime | None, Query(description="Received before (ISO 8601; no offset: UTC).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Clips per page.")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> ClipPage:
    """Clips, newest first, a page at a time."""
    query = select(Clip).where(
        *ClipFilter(
            device=device,
            min_score=min_score,
            max_score=max_score,
            since=as_utc(received_after) if received_after else None,
            until=as_utc(received_before) if received_before else None,
        ).conditions()
    )
    if label == UNLABELLED:
        query = query.where(Clip.label.is_(None))
    elif label is not None:
        query = query.where(Clip.label == label)
    if cursor is not None:
        at, clip_id = _decode_cursor(cursor)
        query = query.where(
            or_(Clip.received_at < at, and_(Clip.received_at == at, Clip.id < clip_id))
        )
    query = query.order_by(Clip.received_at.desc(), Clip.id.desc()).limit(limit + 1)
    clips = list(db.scalars(query))
    more = len(clips) > limit
    clips = clips[:limit]
    return ClipPage(
        items=[ClipOut.model_validate(clip) for clip in clips],
        next_cursor=_encode_cursor(clips[-1]) if more else None,
    )


def get_clip_or_404(db: DbDep, clip_id: str) -> Clip:
    clip = db.get(Clip, clip_id)
    if clip is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no clip {clip_id!r}")
    return clip


@router.get("/{clip_id}", responses={404: {"description": "No such clip"}})
def get_clip(clip_id: str, _: UserDep, db: DbDep) -> ClipDetail:
    return ClipDetail.model_validate(get_clip_or_404(db, clip_id))


@router.get(
    "/{clip_id}/audio",
    response_class=Response,
    responses={
        200: {
            "description": "The audio file",
            "content": {media: {} for media in MEDIA_TYPES.values()},
        },
        404: {"description": "No such clip"},
    },
)
def get_audio(
    clip_id: str,
    _: UserDep,
    db: DbDep,
    storage: StorageDep,
    original: Annotated[
        bool, Query(description="The file as received instead of the 16 kHz mono FLAC.")
    ] = False,
) -> Response:
    """The clip's 16 kHz mono FLAC, or with `original=true` the file as the device sent it."""
    clip = get_clip_or_404(db, clip_id)
    key, extension = (
        (clip.original_key, clip.original_format) if original else (clip.audio_key, "flac")
    )
    name = f"{clip.id}.original.{extension}" if original else f"{clip.id}.flac"
    return Response(
        storage.get(key),
        media_type=MEDIA_TYPES[extension],
        headers={"Content-Disposition": f'inline; filename="{name}"'},
    )
