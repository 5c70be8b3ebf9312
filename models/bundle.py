"""Signed model bundles: what training produces and the only thing a device will run.

A bundle is a folder (or a `.tar.gz` of one) holding `manifest.json`, the runtime files it lists
with their SHA-256, and `manifest.sig`: an Ed25519 signature over the exact manifest bytes, naming
the signing key. One signature covers every file through the hashes.

Loading checks, in this order, and stops at the first failure with its own error type: the
manifest and signature are present, the key is trusted, the signature matches the manifest
bytes, the manifest is well formed, every listed file is present with its hash, and nothing
unlisted rides along. There is no way to load a bundle without these checks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from models.atomic import atomic_write_bytes
from models.frontend import FrontendConfig
from models.signing import TrustedKeys, key_id, verify_signature

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_TRUSTED_KEYS = PRETRAINED_DIR / "keys"  # the public key the default bundles carry
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
MAX_ARCHIVE_BYTES = 512 * 1024 * 1024

FileRole = Literal["onnx", "onnx_float", "tflite", "tflite_float", "reference", "docs"]


class BundleError(Exception):
    """A bundle that must not be used. Subclasses say which check failed."""


class ManifestMissingError(BundleError):
    pass


class ManifestInvalidError(BundleError):
    pass


class SignatureMissingError(BundleError):
    pass


class UnknownKeyError(BundleError):
    pass


class BadSignatureError(BundleError):
    """The signature does not match the manifest: it was altered after signing, or forged."""


class MissingFileError(BundleError):
    pass


class FileHashMismatchError(BundleError):
    """A file differs from the one the manifest (and so the signature) vouches for."""


class UnexpectedFileError(BundleError):
    """A file the manifest does not list, so no signature covers it."""


class UnsafeArchiveError(BundleError):
    pass


class BundleFile(BaseModel):
    """One file of the bundle, pinned by its hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: FileRole = Field(description="What the file is for; runtimes look files up by role.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Lower-case hex SHA-256.")
    size: int = Field(ge=0, description="Size in bytes.")


class Manifest(BaseModel):
    """`manifest.json`: everything needed to run, check and explain a model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = Field(1, description="Bundle format version.")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$", description="Model name, a slug.")
    version: str = Field(
        pattern=r"^[0-9A-Za-z][0-9A-Za-z.+-]{0,63}$", description="Model version, e.g. 1.2.0."
    )
    task: Literal["classification", "anomaly"] = Field(
        description="'classification': softmax over labels; 'anomaly': one score, higher is "
        "more abnormal."
    )
    labels: list[str] = Field(min_length=1, description="Output labels in model output order.")
    thresholds: dict[str, float] = Field(
        description="Per-label decision threshold on the model's score for that label."
    )
    features: FrontendConfig = Field(description="The exact front end the model was trained on.")
    input_shape: list[int] = Field(description="Model input shape (batch, 1, frames, mel bands).")
    files: dict[str, BundleFile] = Field(description="Every file in the bundle, by name.")
    training: dict[str, Any] = Field(
        default_factory=dict, description="Training summary: data, seed, epochs, augmentation."
    )
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Held-out metrics, as reported by evaluate."
    )
    created: datetime = Field(description="When the bundle was written (UTC).")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels repeat: {self.labels}")
        unknown = sorted(set(self.thresholds) - set(self.labels))
        if unknown:
            raise ValueError(f"thresholds for unknown labels {unknown}; labels are {self.labels}")
        if not self.thresholds:
            raise ValueError("no thresholds: at least one label must raise events")
        if tuple(self.input_shape) != self.features.input_shape:
            raise ValueError(
                f"input_shape {self.input_shape} does not match the front end's "
                f"{list(self.features.input_shape)}"
            )
        for name in self.files:
            if name in (MANIFEST_NAME, SIGNATURE_NAME) or "/" in name or name.startswith("."):
                raise ValueError(f"file name {name!r} is not allowed in a bundle")
        return self

    def to_bytes(self) -> bytes:
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class Bundle:
    """A verified bundle on disk. Only `load_bundle` makes one."""

    root: Path
    manifest: Manifest
    signed_by: str

    def path(self, role: FileRole) -> Path:
        """The file playing `role`; a clear error when the bundle has none."""
        for name, entry in sorted(self.manifest.files.items()):
            if entry.role == role:
                return self.root / name
        have = sorted({e.role for e in self.manifest.files.values()})
        raise MissingFileError(f"bundle {self.root} has no {role} file (it has {have})")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bundle(
    out_dir: str | Path,
    *,
    name: str,
    version: str,
    task: Literal["classification", "anomaly"],
    labels: list[str],
    thresholds: dict[str, float],
    features: FrontendConfig,
    files: Mapping[str, tuple[FileRole, Path]],
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Manifest:
    """Copy `files` ({name: (role, source)}) into a new bundle folder and write its manifest.

    The result is unsigned; `sign_bundle` makes it loadable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=False)
    entries = {}
    for file_name, (role, source) in files.items():
        shutil.copyfile(source, out / file_name)
        entries[file_name] = BundleFile(
            role=role, sha256=sha256_file(out / file_name), size=(out / file_name).stat().st_size
        )
    try:
        manifest = Manifest(
            name=name,
            version=version,
            task=task,
            labels=labels,
            thresholds=thresholds,
            features=features,
            input_shape=list(features.input_shape),
            files=entries,
            training=training or {},
            metrics=metrics or {},
            created=datetime.now(UTC).replace(microsecond=0),
        )
    except ValidationError as exc:
        shutil.rmtree(out)
        raise ManifestInvalidError(f"cannot write bundle {name}: {exc}") from exc
    atomic_write_bytes(out / MANIFEST_NAME, manifest.to_bytes())
    return manifest


def sign_bundle(bundle_dir: str | Path, private_key: Ed25519PrivateKey) -> str:
    """Sign a bundle folder's manifest; returns the key id.

    Refuses to sign a bundle whose files do not match its manifest: a signature vouches for
    what is on disk, so the signer checks it first.
    """
    root = Path(bundle_dir)
    manifest_bytes = _read_manifest_bytes(root)
    _check_files(root, _parse_manifest(root, manifest_bytes))
    kid = key_id(private_key.public_key())
    signature = {
        "algorithm": "ed25519",
        "key_id": kid,
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    atomic_write_bytes(root / SIGNATURE_NAME, (json.dumps(signature, indent=2) + "\n").encode())
    return kid


def update_manifest(bundle_dir: str | Path, **changes: Any) -> Manifest:
    """Rewrite fields of an existing bundle's manifest (e.g. add test metrics). The old
    signature no longer matches, so it is removed: sign again afterwards."""
    root = Path(bundle_dir)
    current = _parse_manifest(root, _read_manifest_bytes(root))
    try:
        updated = Manifest.model_validate({**current.model_dump(), **changes})
    except ValidationError as exc:
        raise ManifestInvalidError(f"{root}: invalid manifest update: {exc}") from exc
    (root / SIGNATURE_NAME).unlink(missing_ok=True)
    atomic_write_bytes(root / MANIFEST_NAME, updated.to_bytes())
    return updated


def load_bundle(
    path: str | Path, trusted: TrustedKeys, *, extract_to: str | Path | None = None
) -> Bundle:
    """Verify and open a bundle folder or `.tar.gz` (extracted into `extract_to`, or a new
    temporary folder the caller owns)."""
    path = Path(path)
    if path.is_file():
        target = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="bundle-"))
        _extract_archive(path, target)
        path = target
    if not path.is_dir():
        raise ManifestMissingError(f"{path}: no such bundle folder or archive")
    manifest_bytes = _read_manifest_bytes(path)
    signed_by = _check_signature(path, manifest_bytes, trusted)
    manifest = _parse_manifest(path, manifest_bytes)
    _check_files(path, manifest)
    return Bundle(root=path, manifest=manifest, signed_by=signed_by)


def pack_bundle(bundle_dir: str | Path, archive: str | Path) -> None:
    """Write a reproducible `.tar.gz` of a bundle folder (sorted, zeroed owners and times)."""
    root = Path(bundle_dir)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for file in sorted(p for p in root.iterdir() if p.is_file()):
            info = tarfile.TarInfo(file.name)
            info.size = file.stat().st_size
            info.mode = 0o644
            with file.open("rb") as f:
                tar.addfile(info, f)
    atomic_write_bytes(archive, buffer.getvalue())


def _read_manifest_bytes(root: Path) -> bytes:
    try:
        return (root / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        raise ManifestMissingError(f"{root}: no {MANIFEST_NAME}; this is not a bundle") from None


def _parse_manifest(root: Path, manifest_bytes: bytes) -> Manifest:
    try:
        return Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise ManifestInvalidError(
            f"{root / MANIFEST_NAME} is not a valid manifest: {exc}"
        ) from exc


def _check_signature(root: Path, manifest_bytes: bytes, trusted: TrustedKeys) -> str:
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        raise SignatureMissingError(
            f"{root}: unsigned bundle (no {SIGNATURE_NAME}); sign it with `soundwarden-models sign`"
        )
    try:
        record = json.loads(sig_path.read_bytes())
        kid, algorithm = str(record["key_id"]), record["algorithm"]
        signature = base64.b64decode(record["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadSignatureError(f"{sig_path}: malformed signature file ({exc})") from exc
    if algorithm != "ed25519":
        raise BadSignatureError(f"{sig_path}: unsupported algorithm {algorithm!r}")
    public_key = trusted.get(kid)
    if public_key is None:
        raise UnknownKeyError(
            f"{root}: signed by key {kid}, which is not trusted here (trusted: "
            f"{', '.join(trusted.ids)})"
        )
    if not verify_signature(public_key, signature, manifest_bytes):
        raise BadSignatureError(
            f"{root}: signature by key {kid} does not match {MANIFEST_NAME}; the manifest was "
            "altered after signing"
        )
    return kid


def _check_files(root: Path, manifest: Manifest) -> None:
    for name, entry in sorted(manifest.files.items()):
        file = root / name
        if not file.is_file():
            raise MissingFileError(f"{root}: {name} is listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != entry.sha256:
            raise FileHashMismatchError(
                f"{file}: sha256 {actual} differs from the signed manifest's {entry.sha256}; "
                "the file was altered or replaced"
            )
    expected = set(manifest.files) | {MANIFEST_NAME, SIGNATURE_NAME}
    extra = sorted(p.name for p in root.iterdir() if p.name not in expected)
    if extra:
        raise UnexpectedFileError(f"{root}: {extra} not listed in the manifest, so not signed")


def _extract_archive(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            members = tar.getmembers()
            for member in members:
                if not member.isfile() or "/" in member.name or member.name.startswith("."):
                    raise UnsafeArchiveError(
                        f"{archive}: member {member.name!r} is not a plain top-level file"
                    )
            if sum(m.size for m in members) > MAX_ARCHIVE_BYTES:
                raise UnsafeArchiveError(f"{archive}: unpacks to more than {MAX_ARCHIVE_BYTES} B")
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchiveError(f"{archive}: not a readable .tar.gz bundle ({exc})") from exc
