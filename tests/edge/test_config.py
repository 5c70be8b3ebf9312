"""The edge configuration: the shipped template is valid and complete, and every mistake is
reported with the key that holds it and what belongs there."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from edge.config import ConfigError, EdgeConfig, FileSourceConfig, load_config
from tests.bundles import SHIPPED_VERSION
from tests.conftest import REPO

TEMPLATE = REPO / "deploy" / "edge.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def _sections(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for info in model.model_fields.values():
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found += _sections(arg)
    return found


def test_the_template_is_valid_and_mentions_every_key() -> None:
    config = load_config(TEMPLATE, environ={})
    assert config.device == "nursery" and config.audio.source.type == "microphone"
    text = TEMPLATE.read_text()
    for section in _sections(EdgeConfig):
        for name, info in section.model_fields.items():
            assert info.description, f"{section.__name__}.{name} has no description"
            assert re.search(rf"\b{name}\b", text), f"the template does not mention {name}"


def test_every_mistake_names_its_key_and_the_fix(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'device = "Nursery"\n'
        '[audio.source]\ntype = "file"\npth = "x.wav"\n'
        '[mqtt]\nhots = "broker"\nport = "abc"\n'
        "[detection]\nk = 4\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert "device: String should match pattern" in message and "lowercase letters" in message
    assert "audio.source.path: required; The audio file to replay." in message
    assert "audio.source.pth: unknown key" in message and "known here: type, path," in message
    assert "mqtt.hots: unknown key" in message and "host, port" in message
    assert "mqtt.port: Input should be a valid integer" in message and "(got 'abc')" in message
    assert "k (4) cannot exceed n (3)" in message


def test_unreadable_files_are_errors_not_defaults(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "device = \n"))
    with pytest.raises(ConfigError, match="audio: required"):
        load_config(_write(tmp_path, 'device = "a"\n'))


def test_secrets_come_from_the_environment(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        'device = "a"\n[audio.source]\ntype = "stdin"\n'
        '[mqtt]\nusername = "a"\npassword = "in-file"\n'
        '[clips]\nupload_url = "http://cloud:8000"\n',
    )
    with pytest.raises(ConfigError, match="SOUNDWARDEN_DEVICE_TOKEN"):
        load_config(path, environ={})
    config = load_config(
        path,
        environ={"SOUNDWARDEN_MQTT_PASSWORD": "from-env", "SOUNDWARDEN_DEVICE_TOKEN": "tok"},
    )
    assert config.mqtt.password == "from-env" and config.clips.token == "tok"


def test_relative_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "edge.toml"
    path.write_text(
        'device = "a"\ndata_dir = "state"\n[audio.source]\ntype = "file"\npath = "cry.wav"\n'
        '[model]\nbundle = "/abs/bundle"\n'
    )
    config = load_config(path)
    assert config.data_dir == tmp_path / "etc" / "state"
    assert config.spool_path == tmp_path / "etc" / "state" / "spool.sqlite"
    assert isinstance(config.audio.source, FileSourceConfig)
    assert config.audio.source.path == tmp_path / "etc" / "cry.wav"
    assert config.model.bundle == Path("/abs/bundle")


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )


def test_check_config_accepts_the_template_and_shows_what_it_will_run() -> None:
    result = _check(TEMPLATE)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and f"cry-detector {SHIPPED_VERSION} (onnx)" in result.stdout
    assert "thresholds  {'cry': 0.996966}" in result.stdout


def test_check_config_refuses_a_tampered_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "models" / "pretrained" / "cry-detector", bundle)
    with (bundle / "model.onnx").open("ab") as model:
        model.write(b"\0")
    path = _write(
        tmp_path, f'device = "a"\n[audio.source]\ntype = "stdin"\n[model]\nbundle = "{bundle}"\n'
    )
    result = _check(path)
    assert result.returncode == 1
    assert "model.onnx" in result.stderr and "sha256" in result.stderr.lower()
    bad = _check(_write(tmp_path, 'device = "a"\n[audio.source]\ntype = "mic"\n'))
    assert bad.returncode == 1 and "audio.source" in bad.stderr and "microphone" in bad.stderr
