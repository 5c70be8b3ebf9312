"""Bulk import: recordings become clips in a background job (cloud/jobs/imports.py).

Uploads are decoded in full before anything is stored or queued, so a file that is not usable
audio is refused with the reason and no job; a folder import (admin) reads the server's files
where they are, skipping (and logging) any it cannot decode.
"""

from __future__ import annotations

import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status
from pydantic import BaseModel, ConfigDict, Field

from cloud.api.deps import AdminDep, DbDep, SettingsDep, StorageDep, UserDep
from cloud.api.routes.jobs import JobOut, JobsDep, queue
from cloud.ingest import IngestError
from cloud.jobs import create_job
from cloud.jobs.imports import (
    GROUP_MAX_LENGTH,
    ImportFile,
    ImportParams,
    check_recording,
    check_segmenting,
    spool_upload,
    upload_key,
)
from models.audio import is_audio_file

router = APIRouter(prefix="/imports", tags=["imports"])
_REFUSED: dict[int | str, dict[str, Any]] = {
    413: {"description": "A file is over max_import_bytes"},
    415: {"description": "A file is not WAV, FLAC or OGG audio"},
    422: {"description": "Unusable audio or segmenting; `detail` says why"},
    503: {"description": "The job queue cannot be reached"},
}
SegmentS = Annotated[float, Form(description="Clip length, seconds.")]
OverlapS = Annotated[float, Form(description="Seconds each clip shares with the previous one.")]
Group = Annotated[
    str | None,
    Form(
        min_length=1,
        max_length=GROUP_MAX_LENGTH,
        description="Split group for every clip; default: each recording's file name.",
    ),
]


class FolderImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        min_length=1,
        pattern=r"^[^\x00]+$",  # no file system takes a NUL in a name; os calls raise on one
        description="A folder on the server; read recursively.",
    )
    segment_s: float = Field(5.0, description="Clip length, seconds.")
    overlap_s: float = Field(0.0, description="Seconds each clip shares with the previous one.")
    group: str | None = Field(
        None,
        min_length=1,
        max_length=GROUP_MAX_LENGTH,
        description="Split group for every clip; default: each file's path in the folder.",
    )


def _refuse(exc: IngestError) -> HTTPException:
    return HTTPException(exc.status, exc.detail)


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=_REFUSED)
def import_recordings(
    files: Annotated[list[UploadFile], File(description="WAV, FLAC or OGG recordings.")],
    user: UserDep,
    db: DbDep,
    storage: StorageDep,
    settings: SettingsDep,
    jobs: JobsDep,
    segment_s: SegmentS = 5.0,
    overlap_s: OverlapS = 0.0,
    group: Group = None,
) -> JobOut:
    """Cut recordings into clips of `segment_s` (the last one kept if at least 1 s long)."""
    names = [
        PurePosixPath((f.filename or "").replace("\\", "/")).name or f"recording-{i}"
        for i, f in enumerate(files)
    ]
    try:
        check_segmenting(segment_s, overlap_s, settings)
        with tempfile.TemporaryDirectory(prefix="soundwarden-import-") as tmp:
            paths = [Path(tmp) / str(i) for i in range(len(files))]
            for upload, name, path in zip(files, names, paths, strict=True):
                spool_upload(upload.file, path, name=name, limit=settings.max_import_bytes)
                check_recording(path, name=name, settings=settings)
            row = create_job(db, "import", {}, user)
            stored = []
            for i, (name, path) in enumerate(zip(names, paths, strict=True)):
                stored.append(ImportFile(name=name, key=upload_key(row.id, i, name)))
                storage.put(stored[-1].key, path.read_bytes())
    except IngestError as exc:
        raise _refuse(exc) from None
    params = ImportParams(segment_s=segment_s, overlap_s=overlap_s, group=group, files=stored)
    row.params = params.model_dump()
    return queue(db, jobs, row)


@router.post("/folder", status_code=status.HTTP_202_ACCEPTED, responses=_REFUSED)
def import_folder(
    body: FolderImport, user: AdminDep, db: DbDep, settings: SettingsDep, jobs: JobsDep
) -> JobOut:
    """Import every WAV, FLAC and OGG file under a folder on the server (admin only: it reads
    the server's disk)."""
    try:
        check_segmenting(body.segment_s, body.overlap_s, settings)
    except IngestError as exc:
        raise _refuse(exc) from None
    folder = Path(body.path).expanduser().resolve()
    if not folder.is_dir():
        raise HTTPException(422, f"{body.path}: no such folder on the server")
    if not any(is_audio_file(p) for p in folder.rglob("*")):
        raise HTTPException(422, f"{body.path}: no WAV, FLAC or OGG files in it")
    params = ImportParams(
        segment_s=body.segment_s, overlap_s=body.overlap_s, group=body.group, folder=str(folder)
    )
    return queue(db, jobs, create_job(db, "import", params.model_dump(), user))
