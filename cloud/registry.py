"""The model registry: every bundle the cloud knows, signed, packed and ready to download.

The cloud signs what it trains with its own Ed25519 key, made on first run under
`data_dir/keys` (the private half never leaves that folder; only the `.pub` is served). Devices
trust that key next to the release key the shipped bundles are signed with. The shipped
bundles are registered on start, as the fleet's current models until something is promoted.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as Db

from cloud.core.config import Settings
from cloud.tables import ModelVersion, utcnow
from models.bundle import (
    MANIFEST_NAME,
    Bundle,
    BundleError,
    Manifest,
    load_bundle,
    pack_bundle,
    sha256_file,
    sign_bundle,
)
from models.signing import TrustedKeys, generate_keypair, load_private_key

PRETRAINED = Path(__file__).resolve().parents[1] / "models" / "pretrained"
RELEASE_KEYS = PRETRAINED / "keys"
CLOUD_KEY_NAME = "cloud-signing"


class RegistryError(ValueError):
    """A registry request that cannot be carried out; the message says why."""


def _keys_dir(settings: Settings) -> Path:
    return settings.data_dir / "keys"


def cloud_public_key_path(settings: Settings) -> Path:
    return _keys_dir(settings) / f"{CLOUD_KEY_NAME}.pub"


def cloud_signing_key(settings: Settings) -> Ed25519PrivateKey:
    """The cloud's signing key, created on first use."""
    private = _keys_dir(settings) / f"{CLOUD_KEY_NAME}.key"
    if not private.exists():
        # FileExistsError: another worker process of this service made it first.
        with contextlib.suppress(FileExistsError):
            generate_keypair(_keys_dir(settings), CLOUD_KEY_NAME)
    return load_private_key(private)


def trusted_keys(settings: Settings) -> TrustedKeys:
    cloud_signing_key(settings)
    return TrustedKeys.from_paths([RELEASE_KEYS, cloud_public_key_path(settings)])


def _store(settings: Settings) -> Path:
    return settings.data_dir / "registry"


def archive_path(settings: Settings, row: ModelVersion) -> Path:
    return _store(settings) / row.name / f"{row.name}-{row.version}.tar.gz"


def archive_size(settings: Settings, row: ModelVersion) -> int:
    """Bytes of the .tar.gz a device downloads."""
    return archive_path(settings, row).stat().st_size


def register(
    db: Db, settings: Settings, source: Path, *, sign: bool, job_id: int | None = None
) -> ModelVersion:
    """Copy a bundle folder or `.tar.gz` into the registry (signing it with the cloud key
    first when `sign`), verify it as a device would, pack it, and record it."""
    trusted = trusted_keys(settings)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "bundle"
        try:
            if source.is_dir():
                shutil.copytree(source, work)
            else:
                load_bundle(source, trusted, extract_to=work)
            if sign:
                sign_bundle(work, cloud_signing_key(settings))
            manifest = load_bundle(work, trusted).manifest
        except BundleError as exc:
            raise RegistryError(f"not registered: {exc}") from exc
        name, version = manifest.name, manifest.version
        if find(db, name, version) is not None:
            raise RegistryError(f"{name} {version} is in the registry already")
        target = _store(settings) / name / version
        if target.exists():  # left by a registration that crashed before its row was written
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(work, target)
    row = ModelVersion(
        name=name,
        version=version,
        path=str(target),
        sha256="",
        labels=list(manifest.labels),
        metrics=manifest.metrics,
        job_id=job_id,
    )
    archive = archive_path(settings, row)
    pack_bundle(target, archive)
    row.sha256 = sha256_file(archive)
    db.add(row)
    db.flush()
    return row


def seed_pretrained(db: Db, settings: Settings) -> None:
    """Register the shipped bundles once; they are current until something is promoted."""
    for folder in sorted(p for p in PRETRAINED.iterdir() if (p / MANIFEST_NAME).is_file()):
        # Only the name and version, to look it up: `register` verifies what it registers, so
        # a start with the bundles registered already hashes nothing.
        manifest = Manifest.model_validate_json((folder / MANIFEST_NAME).read_bytes())
        if find(db, manifest.name, manifest.version) is None:
            try:
                row = register(db, settings, folder, sign=False)
                row.promoted_at = utcnow()
                db.commit()
            except IntegrityError:  # another process of this service seeded it first
                db.rollback()


def find(db: Db, name: str, version: str) -> ModelVersion | None:
    """`name` `version` if the registry has it."""
    return db.scalar(
        select(ModelVersion).where(ModelVersion.name == name, ModelVersion.version == version)
    )


def get(db: Db, name: str, version: str) -> ModelVersion:
    row = find(db, name, version)
    if row is None:
        raise RegistryError(f"no model {name} {version}")
    return row


def current(db: Db, name: str) -> ModelVersion | None:
    """The most recently promoted version of `name`."""
    return db.scalar(
        select(ModelVersion)
        .where(ModelVersion.name == name, ModelVersion.promoted_at.is_not(None))
        .order_by(ModelVersion.promoted_at.desc())
        .limit(1)
    )


def promote(db: Db, name: str, version: str) -> ModelVersion:
    row = get(db, name, version)
    row.promoted_at = utcnow()
    return row


def open_bundle(settings: Settings, row: ModelVersion) -> Bundle:
    """The registered bundle, verified again (a file changed on disk is caught here)."""
    return load_bundle(Path(row.path), trusted_keys(settings))
