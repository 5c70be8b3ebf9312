from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from models.cli import main
from tests.conftest import CRY_FULL_BAND, FIXTURE_AUDIO, write_test_bundle


def test_features_prints_every_window_and_draws_a_spectrogram(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "spec.png"
    assert main(["features", str(CRY_FULL_BAND), "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "7.00 s at 16000 Hz, 25 windows of 97 frames x 64 mel bands" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_dataset_prints_counts_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "summary.json"
    assert main(["dataset", str(FIXTURE_AUDIO), "--json", str(out_json)]) == 0
    assert "5 clips" in capsys.readouterr().out
    assert json.loads(out_json.read_text())["labels"] == {"cry": 2, "other": 3}


def test_bad_dataset_exits_1_with_the_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["dataset", str(tmp_path / "empty")]) == 1
    assert "no audio files" in capsys.readouterr().err


def test_keygen_sign_verify_and_tamper(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path / "keys"), "--name", "release"]) == 0
    bundle = write_test_bundle(tmp_path)
    archive = tmp_path / "bundle.tar.gz"
    key = str(tmp_path / "keys" / "release.key")
    assert main(["sign", str(bundle), "--key", key, "--pack", str(archive)]) == 0
    trusted = str(tmp_path / "keys")
    assert main(["verify", str(archive), "--trusted", trusted]) == 0
    assert "OK cry-detector 1.0.0" in capsys.readouterr().out
    (bundle / "model.onnx").write_bytes(b"tampered")
    assert main(["verify", str(bundle), "--trusted", trusted]) == 1
    assert "differs from the signed manifest" in capsys.readouterr().err


def test_unreadable_audio_exits_1_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_text("nope")
    assert main(["features", str(bad)]) == 1
    assert "bad.wav: not a readable audio file" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["soundwarden-models", "soundwarden-edge", "soundwarden-cloud"])
def test_console_scripts_are_installed_and_run(script: str) -> None:
    exe = Path(sys.executable).parent / script
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert f"usage: {script}" in result.stdout
