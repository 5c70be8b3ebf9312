"""The model registry: list, compare, download and promote signed bundles."""

from __future__ import annotations

import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, File, HTTPException, Query, Request, UploadFile, status
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from cloud import registry, rollout
from cloud.api.deps import AdminDep, DbDep, DeviceOrUserDep, SettingsDep, UserDep
from cloud.api.routes.rollouts import RolloutDetail, RolloutRequest, detail, http_error
from cloud.bridge import broker_url
from cloud.tables import ModelVersion

router = APIRouter(prefix="/models", tags=["models"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such model version"}}
MAX_BUNDLE_BYTES = 64 * 1024 * 1024


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    version: str
    labels: list[str]
    sha256: str = Field(description="SHA-256 of the .tar.gz a device downloads.")
    metrics: dict[str, Any] | None = Field(description="Held-out metrics from the manifest.")
    job_id: int | None = Field(description="The training job that made it, if any.")
    created_at: datetime
    promoted_at: datetime | None = Field(description="When it was last promoted, if ever.")
    current: bool = Field(False, description="The fleet's current version of this model.")


class Comparison(BaseModel):
    name: str
    a: str
    b: str
    metrics: dict[str, tuple[float | None, float | None]] = Field(
        description="Every numeric metric either version reports: (a, b)."
    )


def _out(db: DbDep, row: ModelVersion) -> ModelOut:
    now = registry.current(db, row.name)
    return ModelOut.model_validate(row).model_copy(
        update={"current": now is not None and now.id == row.id}
    )


def _get(db: DbDep, name: str, version: str) -> ModelVersion:
    try:
        return registry.get(db, name, version)
    except registry.RegistryError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(exc)) from None


def _flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        out[prefix] = float(value)


@router.get("")
def list_models(_: UserDep, db: DbDep) -> list[ModelOut]:
    rows = db.scalars(
        select(ModelVersion).order_by(ModelVersion.name, ModelVersion.created_at.desc())
    )
    return [_out(db, row) for row in rows]


@router.get("/signing-key.pub", response_class=Response)
def signing_key(settings: SettingsDep) -> Response:
    """The cloud's public signing key, for a device's trusted keys folder."""
    registry.cloud_signing_key(settings)
    return Response(
        registry.cloud_public_key_path(settings).read_bytes(), media_type="application/x-pem-file"
    )


@router.get("/compare", responses=_NOT_FOUND)
def compare(
    name: str, a: Annotated[str, Query()], b: Annotated[str, Query()], _: UserDep, db: DbDep
) -> Comparison:
    flat_a: dict[str, float] = {}
    flat_b: dict[str, float] = {}
    _flatten("", _get(db, name, a).metrics or {}, flat_a)
    _flatten("", _get(db, name, b).metrics or {}, flat_b)
    keys = sorted(set(flat_a) | set(flat_b))
    return Comparison(
        name=name, a=a, b=b, metrics={k: (flat_a.get(k), flat_b.get(k)) for k in keys}
    )


@router.get("/{name}/{version}", responses=_NOT_FOUND)
def get_model(name: str, version: str, _: UserDep, db: DbDep) -> ModelOut:
    return _out(db, _get(db, name, version))


@router.get(
    "/{name}/{version}/bundle.tar.gz",
    response_class=FileResponse,
    responses={
        **_NOT_FOUND,
        200: {"content": {"application/gzip": {}}},
        206: {
            "description": "The part a `Range` header asked for",
            "content": {"application/gzip": {}},
        },
        416: {"description": "The range is past the end of the file"},
    },
)
def download(
    name: str, version: str, _: DeviceOrUserDep, db: DbDep, settings: SettingsDep
) -> FileResponse:
    """The signed bundle; devices use their token, people their session. A download cut
    short resumes with `Range: bytes=<bytes so far>-`."""
    row = _get(db, name, version)
    return FileResponse(
        registry.archive_path(settings, row),
        media_type="application/gzip",
        filename=f"{name}-{version}.tar.gz",
        headers={"X-Checksum-SHA256": row.sha256},
    )


@router.post(
    "/{name}/{version}/promote",
    status_code=status.HTTP_201_CREATED,
    responses={
        **_NOT_FOUND,
        400: {"description": "Unknown, revoked or listed-twice devices; stages too short"},
        409: {"description": "A rollout of this model is running or paused; no MQTT broker"},
    },
)
def promote(
    name: str,
    version: str,
    user: AdminDep,
    db: DbDep,
    settings: SettingsDep,
    request: Request,
    body: Annotated[RolloutRequest | None, Body()] = None,
) -> RolloutDetail:
    """Make this version the fleet's current one and roll it out (see /api/v1/rollouts): the
    first stage is told at once over MQTT (`<prefix>/<device>/model/set`), with a bundle URL
    under `public_url` (default: this request's base URL)."""
    row = _get(db, name, version)
    if broker_url(settings) is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            "no MQTT broker to tell the devices through: set SOUNDWARDEN_MQTT_URL",
        )
    asked = body or RolloutRequest()
    try:
        created = rollout.create(
            db,
            settings,
            row,
            stages=asked.stages,
            group=asked.group,
            device_ids=asked.devices,
            base_url=settings.public_url or str(request.base_url),
            created_by=user.id,
        )
    except rollout.RolloutError as exc:
        raise http_error(exc) from None
    registry.promote(db, name, version)
    db.commit()
    return detail(db, created)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        400: {"description": "Not a bundle, untrusted signature or a known version"},
        413: {"description": "Too large"},
    },
)
def upload(
    bundle: Annotated[UploadFile, File(description="A signed bundle .tar.gz")],
    _: AdminDep,
    db: DbDep,
    settings: SettingsDep,
) -> ModelOut:
    """Add a bundle made elsewhere; it must be signed by a key the cloud trusts."""
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "upload.tar.gz"
        size = 0
        with archive.open("wb") as out:
            while chunk := bundle.file.read(1 << 20):
                size += len(chunk)
                if size > MAX_BUNDLE_BYTES:
                    raise HTTPException(
                        status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                        f"bundles are at most {MAX_BUNDLE_BYTES} bytes",
                    )
                out.write(chunk)
        try:
            row = registry.register(db, settings, archive, sign=False)
        except registry.RegistryError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
    db.commit()
    return _out(db, row)
