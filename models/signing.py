"""Ed25519 keys for signing model bundles.

A key is named by its id: the first 16 hex digits of the SHA-256 of the raw public key. A
signature names the key that made it, so a device can tell "signed by a key I do not trust"
from "signed by a trusted key, but the content was altered".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from models.atomic import atomic_write_bytes

PUBLIC_KEY_SUFFIX = ".pub"


class SigningKeyError(ValueError):
    """A key file that cannot be used."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write `<name>.key` (private, mode 0600) and `<name>.pub` into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}{PUBLIC_KEY_SUFFIX}"
    for existing in (private_path, public_path):
        if existing.exists():
            raise FileExistsError(f"{existing} exists; refusing to overwrite a key")
    private = Ed25519PrivateKey.generate()
    atomic_write_bytes(
        private_path,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    atomic_write_bytes(public_path, public_pem(private.public_key()))
    return private_path, public_path


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{path}: not a readable unencrypted PEM private key ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SigningKeyError(f"{path}: not a readable PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path}: not an Ed25519 public key")
    return key


class TrustedKeys:
    """The public keys whose signatures a device or the cloud accepts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._by_id = {key_id(k): k for k in keys}

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> TrustedKeys:
        """Load `.pub` files; a directory contributes every `*.pub` inside it."""
        keys: list[Ed25519PublicKey] = []
        for path in map(Path, paths):
            files = sorted(path.glob(f"*{PUBLIC_KEY_SUFFIX}")) if path.is_dir() else [path]
            keys.extend(load_public_key(f) for f in files)
        if not keys:
            raise SigningKeyError("no trusted public keys found in " + ", ".join(map(str, paths)))
        return cls(keys)

    @property
    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self._by_id.get(kid)


def verify_signature(public_key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True
