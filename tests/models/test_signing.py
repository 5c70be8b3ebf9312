from __future__ import annotations

import stat
from pathlib import Path

import pytest

from models.signing import (
    SigningKeyError,
    TrustedKeys,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)


def test_keygen_writes_a_private_key_only_its_owner_can_read(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path, "release")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert key_id(load_private_key(private).public_key()) == key_id(load_public_key(public))


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path, "release")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        generate_keypair(tmp_path, "release")


def test_trusted_keys_from_a_folder(tmp_path: Path) -> None:
    generate_keypair(tmp_path, "a")
    generate_keypair(tmp_path, "b")
    assert len(TrustedKeys.from_paths([tmp_path]).ids) == 2


def test_a_folder_without_keys_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="no trusted public keys"):
        TrustedKeys.from_paths([tmp_path])


def test_a_private_key_is_not_a_public_key(tmp_path: Path) -> None:
    private, _ = generate_keypair(tmp_path, "a")
    with pytest.raises(SigningKeyError, match="not a readable PEM public key"):
        load_public_key(private)
