"""The systemd units in deploy/systemd: systemd itself verifies them (`systemd-analyze verify`,
with ExecStart pointing at this checkout's virtualenv so the binaries exist), rates their
sandboxing (`systemd-analyze security --offline`), and their command lines and paths agree
with the CLIs, the edge configuration and the installer."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cloud.cli import build_parser as cloud_parser
from cloud.core.config import Settings
from edge.cli import build_parser as edge_parser
from edge.config import SECRET_ENV, EdgeConfig
from tests.conftest import REPO
from tests.deploy.units import INSTALLED_BINS, NAMES, UNITS, VENV_BIN, directives


def runnable_copy(name: str, tmp_path: Path) -> Path:
    text = (UNITS / name).read_text()
    for installed in INSTALLED_BINS:
        text = text.replace(installed, f"{VENV_BIN}/")
    copy = tmp_path / name
    copy.write_text(text)
    return copy


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip(
            "systemd-analyze NOT AVAILABLE: the units are NOT VERIFIED (apt install systemd; "
            "make system-packages does)"
        )
    return tool


def test_every_unit_is_in_the_list() -> None:
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_systemd_verifies_the_unit_without_a_warning(name: str, tmp_path: Path) -> None:
    tool = systemd_analyze()
    done = subprocess.run(
        [tool, "verify", str(runnable_copy(name, tmp_path))], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_verify_does_catch_a_misspelt_key(tmp_path: Path) -> None:
    """Guards the test above: a typo in a unit is reported on stderr (with exit code 0)."""
    tool = systemd_analyze()
    unit = runnable_copy(NAMES[0], tmp_path)
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    done = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True)
    assert "Unknown key 'WatchdogSecs'" in done.stderr


@pytest.mark.parametrize("name", NAMES)
def test_the_sandbox_rates_ok(name: str, tmp_path: Path) -> None:
    """systemd's exposure score (0 best, 10 worst) stays at most 4.0: a unit that loses its
    hardening fails here."""
    tool = systemd_analyze()
    done = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=40", str(runnable_copy(name, tmp_path))],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


def test_the_edge_unit_is_a_hardened_notify_service_with_a_watchdog() -> None:
    unit = directives("soundwarden-edge.service")
    single = {key: values[-1] for key, values in unit.items()}
    expected = {
        "Type": "notify",
        "Restart": "on-failure",
        "User": "soundwarden",
        "SupplementaryGroups": "audio",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "EnvironmentFile": "-/etc/soundwarden/edge.env",
    }
    assert {key: single.get(key) for key in expected} == expected
    assert int(single["StartLimitBurst"]) >= 1 and int(single["StartLimitIntervalSec"]) > 0
    assert single["MemoryMax"].endswith("M") and int(single["MemoryMax"][:-1]) >= 150
    # The daemon pings at half WatchdogSec, only while audio flows; the source's own stall
    # detection must fire well before systemd's.
    watchdog_s = int(single["WatchdogSec"])
    audio = EdgeConfig.model_fields["audio"].annotation
    assert audio is not None
    assert watchdog_s > 3 * audio.model_fields["stall_timeout_s"].default
    # Writable: the data directory only, which is the daemon's default data_dir.
    default_data_dir = str(EdgeConfig.model_fields["data_dir"].default)
    assert unit["ReadWritePaths"] == [default_data_dir]
    assert single["StateDirectory"] == Path(default_data_dir).name


def test_the_edge_unit_runs_what_the_installer_installs() -> None:
    command = shlex.split(directives("soundwarden-edge.service")["ExecStart"][0])
    assert command[0] == "/opt/soundwarden/venv/bin/soundwarden-edge"
    args = edge_parser().parse_args(command[1:])
    assert args.func.__name__ == "_run" and str(args.config) == "/etc/soundwarden/edge.toml"
    installer = (REPO / "deploy" / "pi" / "install.sh").read_text()
    assert "VENV=/opt/soundwarden/venv" in installer and "CONF_DIR=/etc/soundwarden" in installer
    # The secrets file the unit reads holds exactly the variables the daemon takes.
    names = re.findall(r"^#?(SOUNDWARDEN_\w+)=", (REPO / "deploy/pi/edge.env").read_text(), re.M)
    assert sorted(names) == sorted(SECRET_ENV)


@pytest.mark.parametrize(
    ("name", "subcommand"),
    [("soundwarden-cloud.service", "_serve"), ("soundwarden-cloud-worker.service", "_worker")],
)
def test_the_cloud_units_run_real_subcommands_with_real_settings(
    name: str, subcommand: str
) -> None:
    unit = directives(name)
    command = shlex.split(unit["ExecStart"][0])
    assert command[0] == "/opt/soundwarden/.venv/bin/soundwarden-cloud"
    assert cloud_parser().parse_args(command[1:]).func.__name__ == subcommand
    environment = [value.split("=", 1)[0] for value in unit["Environment"]]
    settings = {f"SOUNDWARDEN_{field.upper()}" for field in Settings.model_fields}
    assert {n for n in environment if n.startswith("SOUNDWARDEN_")} <= settings
    data_dir = dict(value.split("=", 1) for value in unit["Environment"])["SOUNDWARDEN_DATA_DIR"]
    assert unit["ReadWritePaths"] == [data_dir]
    assert unit["EnvironmentFile"] == ["/etc/soundwarden/cloud.env"]
