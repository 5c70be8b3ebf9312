"""End to end: the edge's own recorder and uploader deliver clips to a real
`soundwarden-cloud serve` process, enrolled with `soundwarden-cloud add-device`, over SQLite and
PostgreSQL; each clip lands in the database exactly once, a re-sent one included."""

from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud.core.db import make_engine, make_sessionmaker
from cloud.tables import Clip
from edge.clips import ClipUploader
from models.audio import load_mono
from tests.cloud.server import SOUNDWARDEN_CLOUD, cloud_server
from tests.conftest import CRY_FULL_BAND
from tests.edge.test_clips import Rig, clips_config, episode, wait_for
from tests.mosquitto import free_port

DEVICE = "nursery"  # the device the edge test rig records as


@pytest.mark.parametrize(
    ("fmt", "workers"),
    [("flac", 1), ("wav", 1), ("flac", 2)],
    ids=["flac", "wav", "flac-2-workers"],
)
def test_edge_clips_reach_a_real_cloud_once_each_a_resent_one_too(
    tmp_path: Path, database_url: str, fmt: str, workers: int
) -> None:
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(tmp_path / "cloud"),
        "SOUNDWARDEN_DATABASE_URL": database_url,
    }
    enrolled = subprocess.run(
        [str(SOUNDWARDEN_CLOUD), "add-device", DEVICE],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert enrolled.returncode == 0, enrolled.stderr
    token = enrolled.stdout.strip().splitlines()[-1]

    rig = Rig(tmp_path / "edge", clips_config(format=fmt))
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    rig.play(load_mono(CRY_FULL_BAND), episode(first, 1.0, 2.5) + episode(second, 3.5, 5.0))
    uploaded = tmp_path / "edge" / "clips" / "uploaded"
    with cloud_server(env, tmp_path / "serve.log", "--workers", str(workers)) as url:
        uploader: ClipUploader = rig.uploader(url, token=token)
        uploader.start()
        try:
            wait_for(lambda: uploader.uploaded == 2, timeout_s=30)
        finally:
            uploader.stop()
        assert (uploader.rejected, uploader.failures) == (0, 0)

        # The acknowledgement lost (a crash before the move): the clip goes again at restart.
        (uploaded / f"{first}.{fmt}").replace(rig.store.pending / f"{first}.{fmt}")
        rig.spool.close()
        restarted = Rig(tmp_path / "edge", clips_config(format=fmt))
        again = restarted.uploader(url, token=token)
        again.start()
        try:
            wait_for(lambda: again.uploaded == 1, timeout_s=30)
        finally:
            again.stop()
        assert again.rejected == 0

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as db:
            clips = {clip.id: clip for clip in db.scalars(select(Clip))}
    finally:
        engine.dispose()
    assert sorted(clips) == sorted([first, second])
    for clip_id, clip in clips.items():
        sent = (uploaded / f"{clip_id}.{fmt}").read_bytes()
        assert clip.sha256 == hashlib.sha256(sent).hexdigest()
        assert (clip.device_id, clip.source, clip.original_format) == (DEVICE, "device", fmt)
        assert clip.metadata_json is not None and clip.metadata_json["event_id"] == clip_id
    log = (tmp_path / "serve.log").read_text()
    assert log.count('"POST /api/v1/clips HTTP/1.1" 201') == 2
    assert log.count('"POST /api/v1/clips HTTP/1.1" 200') == 1
    stored = [p for p in (tmp_path / "cloud" / "clips").rglob("*") if p.is_file()]
    assert len(stored) == (2 if fmt == "flac" else 4)  # WAV: as received + the 16 kHz FLAC


def test_serve_refuses_workers_that_would_each_run_the_mqtt_bridge(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SOUNDWARDEN_DATA_DIR": str(tmp_path / "cloud"),
        "SOUNDWARDEN_EMBEDDED_BROKER_PORT": str(free_port()),
    }
    refused = subprocess.run(
        [str(SOUNDWARDEN_CLOUD), "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "--workers would run the MQTT bridge once per worker" in refused.stderr
