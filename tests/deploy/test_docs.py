"""The documentation stays true: the MQTT reference is what scripts/mqtt_reference.py writes
from the contract today, every number on the benchmark page is in the results file it cites,
and relative links lead somewhere."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

from tests.conftest import REPO

DOCS = REPO / "docs"
RESULTS = REPO / "scripts" / "results"
# A number standing alone: not part of a version (1.1.0), a word (8k, p50) or a path.
NUMBER = re.compile(r"(?<![\w.\-/])-?\d[\d,]*(?:\.\d+)?(?![\w.])")


def test_the_mqtt_reference_is_what_the_contract_says_today() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "mqtt_reference.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, (
        f"{done.stderr}\nThe wire contract changed: run `.venv/bin/python "
        "scripts/mqtt_reference.py` and commit docs/mqtt.md with it."
    )


def leaves(value: Any, key: str = "") -> list[float]:
    """Every number in a results file, those in its keys (`impulses_-10dB`) included; byte
    counts also in KiB, as the page shows sizes."""
    if isinstance(value, dict):
        named = [float(n) for k in value for n in re.findall(r"-?\d+(?:\.\d+)?", str(k))]
        return named + [n for k, v in value.items() for n in leaves(v, str(k))]
    if isinstance(value, list):
        return [n for v in value for n in leaves(v, key)]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return []
    return [float(value), value / 1024] if key.endswith("bytes") else [float(value)]


def matches(token: str, candidates: list[float]) -> bool:
    decimals = len(token.split(".")[1]) if "." in token else 0
    shown = float(token.replace(",", ""))
    return any(round(c, decimals) == shown for c in candidates)


def test_every_benchmark_number_is_in_the_results_file_it_cites() -> None:
    """Table cells but the header row and the first column, which names the row."""
    candidates: list[float] = []
    unfound, in_table = [], False
    for line in (DOCS / "benchmarks.md").read_text().splitlines():
        if line.startswith("Source:"):
            files = re.findall(r"`scripts/results/([\w.-]+\.json)`", line)
            assert files, line
            candidates = [n for f in files for n in leaves(json.loads((RESULTS / f).read_text()))]
        header, in_table = line.startswith("|") and not in_table, line.startswith("|")
        if not in_table or header or line.startswith("|---"):
            continue
        assert candidates, f"a table with no Source line above it: {line}"
        for cell in line.strip("|").split("|")[1:]:
            unfound += [
                f"{n!r} in: {line}" for n in NUMBER.findall(cell) if not matches(n, candidates)
            ]
    assert not unfound, "numbers not in the cited results file:\n" + "\n".join(unfound)


def test_every_results_file_is_on_the_benchmark_page() -> None:
    page = (DOCS / "benchmarks.md").read_text()
    missing = [p.name for p in RESULTS.glob("*.json") if f"scripts/results/{p.name}" not in page]
    assert not missing, f"docs/benchmarks.md does not report {missing}"


def test_relative_links_in_the_docs_lead_to_files() -> None:
    broken = []
    for page in [REPO / "README.md", REPO / "deploy" / "README.md", *DOCS.glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken, broken


def test_the_readme_gives_the_two_commands_and_the_way_on() -> None:
    readme = (REPO / "README.md").read_text()
    for needed in ("make demo", "make test", "docs/pi-guide.md", "docs/mqtt.md",
                   "docs/operations.md", "docs/benchmarks.md"):  # fmt: skip
        assert needed in readme, needed
