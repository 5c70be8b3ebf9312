"""The model registry: shipped bundles seeded, downloads verified as a device would, promotion,
uploads of foreign bundles refused unless signed by a trusted key."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from cloud import registry
from models.bundle import FileHashMismatchError, load_bundle, update_manifest
from models.signing import TrustedKeys, generate_keypair, load_private_key
from tests.bundles import SHIPPED_VERSION
from tests.cloud.conftest import enrol
from tests.conftest import write_test_bundle


def test_shipped_bundles_are_registered_and_current(labeller: TestClient) -> None:
    models = {(m["name"], m["version"]): m for m in labeller.get("/api/v1/models").json()}
    cry = models[("cry-detector", SHIPPED_VERSION)]
    assert cry["labels"] == ["cry", "other"] and cry["current"]
    assert ("machine-anomaly", "1.0.0") in models
    assert cry["metrics"], "the manifest's metrics are shown"


def test_device_downloads_a_bundle_it_can_verify(app: FastAPI, tmp_path: Path) -> None:
    token = enrol(app, "pi-1")
    with TestClient(app) as device:
        url = f"/api/v1/models/cry-detector/{SHIPPED_VERSION}/bundle.tar.gz"
        assert device.get(url).status_code == 401
        assert device.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        got = device.get(url, headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200
    assert hashlib.sha256(got.content).hexdigest() == got.headers["X-Checksum-SHA256"]
    archive = tmp_path / "b.tar.gz"
    archive.write_bytes(got.content)
    shipped_keys = TrustedKeys.from_paths([registry.RELEASE_KEYS])
    bundle = load_bundle(archive, shipped_keys, extract_to=tmp_path / "x")
    assert bundle.manifest.version == SHIPPED_VERSION


def test_the_private_key_is_never_served_and_the_public_one_is(
    app: FastAPI, labeller: TestClient
) -> None:
    pem = labeller.get("/api/v1/models/signing-key.pub")
    assert pem.status_code == 200 and b"PUBLIC KEY" in pem.content
    settings = app.state.settings
    private = (settings.data_dir / "keys" / "cloud-signing.key").read_bytes()
    for url in ("/api/v1/models", "/api/v1/models/signing-key.pub", "/openapi.json"):
        assert private not in labeller.get(url).content


def test_a_trained_bundle_is_signed_by_the_cloud_and_promoted(
    app: FastAPI, admin: TestClient, labeller: TestClient, tmp_path: Path
) -> None:
    source = write_test_bundle(tmp_path)
    update_manifest(source, version="2.0.0", metrics={"test": {"roc_auc": 0.995}})
    settings = app.state.settings
    with app.state.sessions() as db:
        registry.register(db, settings, source, sign=True)
        db.commit()
    cloud_keys = TrustedKeys.from_paths([registry.cloud_public_key_path(settings)])
    stored = registry.open_bundle(settings, _row(app, "cry-detector", "2.0.0"))
    assert stored.signed_by in cloud_keys.ids

    assert labeller.post("/api/v1/models/cry-detector/2.0.0/promote").status_code == 403
    # Promoting rolls the model out over MQTT (tests/cloud/test_rollouts.py): with no broker
    # to tell the devices through, nothing is promoted.
    refused = admin.post("/api/v1/models/cry-detector/2.0.0/promote")
    assert refused.status_code == 409 and "no MQTT broker" in refused.json()["detail"]
    assert not admin.get("/api/v1/models/cry-detector/2.0.0").json()["current"]
    with app.state.sessions() as db:
        registry.promote(db, "cry-detector", "2.0.0")
        db.commit()
    assert admin.get("/api/v1/models/cry-detector/2.0.0").json()["current"]
    old = admin.get(f"/api/v1/models/cry-detector/{SHIPPED_VERSION}").json()
    assert not old["current"]
    compared = admin.get(
        "/api/v1/models/compare",
        params={"name": "cry-detector", "a": SHIPPED_VERSION, "b": "2.0.0"},
    ).json()
    assert compared["metrics"]["test.roc_auc"][1] == 0.995
    assert admin.post("/api/v1/models/cry-detector/9.9.9/promote").status_code == 404


def test_uploads_must_be_signed_by_a_trusted_key(
    app: FastAPI, admin: TestClient, tmp_path: Path
) -> None:
    from models.bundle import pack_bundle, sign_bundle

    source = write_test_bundle(tmp_path)
    update_manifest(source, version="3.0.0")
    private, _ = generate_keypair(tmp_path / "keys", "stranger")
    sign_bundle(source, load_private_key(private))
    pack_bundle(source, tmp_path / "stranger.tar.gz")
    with (tmp_path / "stranger.tar.gz").open("rb") as f:
        refused = admin.post("/api/v1/models", files={"bundle": ("b.tar.gz", f)})
    assert refused.status_code == 400 and "key" in refused.json()["detail"]
    garbage = admin.post("/api/v1/models", files={"bundle": ("b.tar.gz", b"not a tarball")})
    assert garbage.status_code == 400

    shipped = tmp_path / "shipped.tar.gz"
    pack_bundle(registry.PRETRAINED / "cry-detector", shipped)
    with shipped.open("rb") as f:
        again = admin.post("/api/v1/models", files={"bundle": ("b.tar.gz", f)})
    assert again.status_code == 400 and "already" in again.json()["detail"]


def test_a_bundle_changed_on_disk_no_longer_opens(app: FastAPI, tmp_path: Path) -> None:
    settings = app.state.settings
    row = _row(app, "cry-detector", SHIPPED_VERSION)
    model = Path(row.path) / "model.onnx"
    shutil.copy(model, tmp_path / "saved")
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(FileHashMismatchError, match=r"model\.onnx"):
        registry.open_bundle(settings, row)


def _row(app: FastAPI, name: str, version: str) -> registry.ModelVersion:
    with app.state.sessions() as db:
        return registry.get(db, name, version)
