"""The systemd units of deploy/systemd, read as systemd would see their directives."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.conftest import REPO

UNITS = REPO / "deploy" / "systemd"
NAMES = [
    "soundwarden-edge.service",
    "soundwarden-cloud.service",
    "soundwarden-cloud-worker.service",
]
VENV_BIN = Path(sys.executable).parent
# Where the units expect the programs: the Pi installer's virtualenv, the cloud checkout's.
INSTALLED_BINS = ("/opt/soundwarden/venv/bin/", "/opt/soundwarden/.venv/bin/")


def directives(name: str) -> dict[str, list[str]]:
    """`Key` -> every value it is given, over all sections (keys repeat, e.g. Environment)."""
    found: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found
