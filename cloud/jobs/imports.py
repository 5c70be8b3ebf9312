"""Bulk import (job kind `import`): recordings cut into fixed-length segments, each a clip.

Uploaded recordings are checked and stored under `imports/<job id>/` before the job is queued;
a server-side folder (admin) is read in place. Every segment becomes a 16 kHz mono FLAC clip
(`source='import'`, `group_id` the recording's name or the given group, so one recording never
lands in two dataset splits). The recording itself stays in storage, so the clip's
`original_key` is its own 16 kHz FLAC and `metadata_json` says where in which recording it was
cut. Clip ids come from the job id, the recording and the offset: running the job again (after
a shutdown interrupted it) skips what is stored and adds only what is missing.
"""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict

from cloud.core.config import Settings
from cloud.ingest import IngestError, encode_flac_16k
from cloud.jobs.core import JobContext, job
from cloud.tables import Clip
from models.audio import (
    TARGET_SAMPLE_RATE,
    Audio,
    AudioError,
    UnreadableAudioError,
    is_audio_file,
    read_audio,
    resample,
    to_mono,
)

# A tail shorter than this after the last full segment is dropped: the model listens in 1 s
# windows, and a sliver of audio mostly padded with silence teaches it nothing.
MIN_TAIL_S = 1.0
MIN_STEP_S = 0.25
GROUP_MAX_LENGTH = 128  # the width of clips.group_id
_CLIP_IDS = uuid.UUID("6f0e4a52-3c1b-4d8e-9a57-2b1f9d0c7e31")  # namespace of import clip ids
_COPY_CHUNK = 1 << 20


class ImportFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # as uploaded: the recording's name
    key: str  # where it is stored


class ImportParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segment_s: float
    overlap_s: float
    group: str | None = None
    files: list[ImportFile] = []  # uploads, stored before the job was queued
    folder: str | None = None  # or every audio file under this server-side folder


def check_segmenting(segment_s: float, overlap_s: float, settings: Settings) -> None:
    """Refuse segment lengths no clip could have (IngestError 422 saying why)."""
    if not MIN_TAIL_S <= segment_s <= settings.max_clip_s:
        raise IngestError(
            422, f"segment_s must be {MIN_TAIL_S}-{settings.max_clip_s} s (got {segment_s})"
        )
    if not 0 <= overlap_s <= segment_s - MIN_STEP_S:
        # Clips starting closer together than the edge's hop would repeat the same windows.
        raise IngestError(
            422, f"overlap_s must be 0 to segment_s - {MIN_STEP_S} s (got {overlap_s})"
        )


def segments(
    n_samples: int, rate: int, segment_s: float, overlap_s: float
) -> list[tuple[int, int]]:
    """[start, end) sample spans: every full segment, `segment_s - overlap_s` apart, then the
    rest if it is at least MIN_TAIL_S long. A recording no longer than one segment is one clip
    whatever its length (dropping it would lose the whole upload)."""
    length = round(segment_s * rate)
    step = round((segment_s - overlap_s) * rate)
    if n_samples <= length:
        return [(0, n_samples)]
    spans = []
    start = 0
    while start + length <= n_samples:
        spans.append((start, start + length))
        start += step
    if spans[-1][1] < n_samples and n_samples - start >= MIN_TAIL_S * rate:
        spans.append((start, n_samples))
    return spans


def spool_upload(source: BinaryIO, target: Path, *, name: str, limit: int) -> None:
    """Copy an upload to a file, refusing it (413) as soon as it passes `limit` bytes."""
    size = 0
    with target.open("wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            size += len(chunk)
            if size > limit:
                raise IngestError(413, f"{name}: over the {limit}-byte limit for an imported file")
            out.write(chunk)


def check_recording(path: Path, *, name: str, settings: Settings) -> Audio:
    """Decode a recording fully, as the job will; IngestError (415/422) says why it cannot be
    imported."""
    try:
        audio = read_audio(path)
    except AudioError as exc:
        status = 415 if isinstance(exc, UnreadableAudioError) else 422
        raise IngestError(status, f"{name}: {exc.reason}") from None
    if audio.duration_s < settings.min_clip_s:
        raise IngestError(
            422, f"{name}: {audio.duration_s:.3f} s long, under the {settings.min_clip_s} s minimum"
        )
    return audio


def upload_key(job_id: int, index: int, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-100:]
    return f"imports/{job_id}/{index:04d}-{safe}"


@dataclass(frozen=True)
class _Source:
    name: str  # the recording's name: the default group, and what the log says
    ref: str  # unique within the job: the storage key, or the path inside the folder
    path: Path | None  # a folder file, read in place; None: an upload, read from storage


def _sources(params: ImportParams) -> list[_Source]:
    if params.folder is None:
        return [_Source(f.name, f.key, None) for f in params.files]
    folder = Path(params.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"the folder {folder} is not there any more")
    files = sorted(p for p in folder.rglob("*") if is_audio_file(p))
    return [_Source(p.relative_to(folder).as_posix(), str(p), p) for p in files]


@contextmanager
def _local_file(ctx: JobContext, source: _Source) -> Iterator[Path]:
    if source.path is not None:
        yield source.path
        return
    # read_audio (the checks every component applies) reads paths; storage may be S3.
    with tempfile.NamedTemporaryFile(prefix="soundwarden-import-") as tmp:
        tmp.write(ctx.storage.get(source.ref))
        tmp.flush()
        yield Path(tmp.name)


@dataclass
class _Tally:
    created: int = 0
    existing: int = 0


def _import_recording(
    ctx: JobContext,
    params: ImportParams,
    source: _Source,
    audio: Audio,
    tally: _Tally,
    *,
    done: int,
    total: int,
) -> bool:
    """Store every segment of one recording; False when the job was cancelled part-way."""
    mono = resample(to_mono(audio.samples), audio.sample_rate, TARGET_SAMPLE_RATE)
    spans = segments(len(mono), TARGET_SAMPLE_RATE, params.segment_s, params.overlap_s)
    group = (params.group or source.name)[:GROUP_MAX_LENGTH]
    for number, (start, end) in enumerate(spans, 1):
        if ctx.cancelled():
            return False
        clip_id = uuid.uuid5(_CLIP_IDS, f"{ctx.job_id}/{source.ref}/{start}").hex
        with ctx.sessions() as db:
            if db.get(Clip, clip_id) is not None:
                tally.existing += 1
            else:
                data = encode_flac_16k(mono[start:end])
                sha256 = hashlib.sha256(data).hexdigest()
                key = f"clips/{clip_id}/{sha256[:16]}.16k.flac"
                ctx.storage.put(key, data)
                db.add(
                    Clip(
                        id=clip_id,
                        source="import",
                        group_id=group,
                        sample_rate=TARGET_SAMPLE_RATE,
                        channels=1,
                        duration_s=(end - start) / TARGET_SAMPLE_RATE,
                        original_key=key,
                        original_format="flac",
                        audio_key=key,
                        sha256=sha256,
                        metadata_json={
                            "import_job": ctx.job_id,
                            "recording": source.name,
                            "recording_ref": source.ref,
                            "recording_sample_rate": audio.sample_rate,
                            "recording_channels": audio.samples.shape[1],
                            "offset_s": start / TARGET_SAMPLE_RATE,
                        },
                    )
                )
                db.commit()
                tally.created += 1
        ctx.progress(
            (done + number / len(spans)) / total,
            f"{source.name}: segment {number} of {len(spans)}",
        )
    ctx.log(f"{source.name}: {audio.duration_s:.1f} s cut into {len(spans)} clip(s)")
    return True


@job("import")
def run_import(ctx: JobContext) -> dict[str, Any]:
    params = ImportParams.model_validate(ctx.params)
    sources = _sources(params)
    tally = _Tally()
    skipped: list[dict[str, str]] = []
    stopped = False
    for done, source in enumerate(sources):
        try:
            with _local_file(ctx, source) as path:
                audio = check_recording(path, name=source.name, settings=ctx.settings)
        except IngestError as exc:
            # Uploads were checked before queuing; a folder may hold anything.
            skipped.append({"file": source.name, "reason": exc.detail})
            ctx.log(f"skipped {exc.detail}")
            continue
        if not _import_recording(ctx, params, source, audio, tally, done=done, total=len(sources)):
            stopped = True
            break
    summary = (
        f"{tally.created} clip(s) from {len(sources) - len(skipped)} recording(s)"
        + (f", {tally.existing} stored already" if tally.existing else "")
        + (f"; {len(skipped)} file(s) skipped (see the log)" if skipped else "")
    )
    ctx.progress(ctx.fraction if stopped else 1.0, summary)
    return {
        "clips": tally.created,
        "existing": tally.existing,
        "recordings": len(sources) - len(skipped),
        "skipped": skipped,
    }
