"""The Raspberry Pi profile: `pip install soundwarden[edge]` must stay free of the heavy stack."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

HEAVY = ("torch", "librosa", "ultralytics", "tensorflow", "matplotlib")
FORBIDDEN_IN_EDGE = ("torch", "librosa", "ultralytics", "cloud")


@pytest.fixture(scope="session")
def edge_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The edge-only venv `make test` builds, or a fresh one when run outside make."""
    existing = os.environ.get("SOUNDWARDEN_EDGE_VENV")
    if existing:
        return REPO / existing / "bin" / "python"
    root = tmp_path_factory.mktemp("edge-venv")
    venv.create(root, with_pip=True)
    python = root / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--constraint",
            str(REPO / "constraints.txt"),
            f"{REPO}[edge]",
        ],
        check=True,
    )
    return python


def test_edge_install_has_no_heavy_packages(edge_python: Path) -> None:
    code = (
        "import importlib.util, json;"
        f"print(json.dumps([m for m in {HEAVY!r} if importlib.util.find_spec(m)]))"
    )
    out = subprocess.run(
        [str(edge_python), "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_edge_and_the_light_core_import_and_run_in_the_edge_install(edge_python: Path) -> None:
    code = (
        "import edge, edge.cli, models.audio, models.frontend, models.bundle, models.dataset;"
        "import numpy as np;"
        "from models.frontend import LogMel;"
        "print(LogMel().window(np.zeros(16000, dtype=np.float32)).shape)"
    )
    result = subprocess.run(
        [str(edge_python), "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(97, 64)"
    for cli in ("soundwarden-edge", "soundwarden-models"):
        assert (
            subprocess.run(
                [str(edge_python.parent / cli), "--help"], capture_output=True, check=False
            ).returncode
            == 0
        ), cli


def test_light_core_never_imports_the_heavy_stack() -> None:
    code = (
        "import sys, edge.cli, models.cli, models.audio, models.frontend, models.bundle,"
        " models.dataset, models.evaluate, models.inference, models.runtimes.onnx;"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    ).stdout
    assert out.strip() == "[]"


def test_edge_sources_import_nothing_forbidden() -> None:
    offenders = []
    for path in sorted((REPO / "edge").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN_IN_EDGE
            ]
    assert offenders == []
