"""Dataset folders: `ROOT/<label>/<file>.<wav|flac|ogg>` plus an optional `ROOT/manifest.csv`.

The manifest has at least `path,label`, and where known `split` (train/val/test) and `group`
(the recorder, speaker or app install a clip came from). Validation collects every problem
before failing, so one run shows everything to fix; a group on two sides of a split is one of
them. A group on two sides of a split leaks the recorder into the test set: it is reported as a
warning (some sets, like one machine recorded alone, cannot avoid it) and `require_disjoint_groups`
turns it into an error for whoever needs honest splits, such as training.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from models.atomic import atomic_write_bytes
from models.audio import is_audio_file

MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "val", "test")
_MAX_REPORTED_PROBLEMS = 20


class DatasetError(ValueError):
    """A dataset folder that does not follow the format. Lists every problem found."""

    def __init__(self, root: Path, problems: list[str]) -> None:
        self.root = root
        self.problems = problems
        shown = problems[:_MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        lines = [f"{root}: {len(problems)} problem(s) in this dataset folder:"]
        lines += [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Clip:
    path: Path
    label: str
    split: str | None = None
    group: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    root: Path
    clips: list[Clip]
    has_manifest: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted({c.label for c in self.clips})

    def split(self, name: str) -> list[Clip]:
        return [c for c in self.clips if c.split == name]

    def require_disjoint_groups(self) -> None:
        """Fail unless every group stays inside one split."""
        leaks = _split_leaks(self.clips)
        if leaks:
            raise DatasetError(self.root, leaks)


def read_dataset(root: str | Path) -> Dataset:
    """Read and validate a dataset folder; raises `DatasetError` listing all problems."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, ["not a folder"])
    problems: list[str] = []
    on_disk = _audio_files_by_label(root, problems)
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        clips = _clips_from_manifest(root, manifest, on_disk, problems)
    else:
        clips = [Clip(path=root / rel, label=rel.split("/")[0]) for rel in sorted(on_disk)]
    if not clips and not problems:
        problems.append("no audio files: expected <label>/<name>.wav|flac|ogg")
    if problems:
        raise DatasetError(root, problems)
    return Dataset(
        root=root, clips=clips, has_manifest=manifest.is_file(), warnings=_split_leaks(clips)
    )


def write_manifest(root: Path, rows: list[dict[str, str]], columns: list[str]) -> None:
    """`root/manifest.csv` with `columns` and one row per clip, written atomically."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(root / MANIFEST_NAME, text.getvalue().encode("utf-8"))


def _audio_files_by_label(root: Path, problems: list[str]) -> set[str]:
    found = set()
    for entry in sorted(root.iterdir()):
        if is_audio_file(entry):
            problems.append(f"{entry.name}: audio must sit in a label folder, not at the top")
        elif entry.is_dir() and not entry.name.startswith("."):
            for file in sorted(entry.rglob("*")):
                if is_audio_file(file):
                    found.add(file.relative_to(root).as_posix())
    return found


def _clips_from_manifest(
    root: Path, manifest: Path, on_disk: set[str], problems: list[str]
) -> list[Clip]:
    with manifest.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            problems.append(f"{MANIFEST_NAME}: missing column(s) {missing} (has {columns})")
            return []
        rows = list(reader)
    clips, seen = [], set()
    for line, row in enumerate(rows, start=2):
        rel, label = row["path"].strip(), row["label"].strip()
        split = (row.get("split") or "").strip() or None
        group = (row.get("group") or "").strip() or None
        where = f"{MANIFEST_NAME} line {line} ({rel})"
        if rel in seen:
            problems.append(f"{where}: listed twice")
            continue
        seen.add(rel)
        if rel not in on_disk:
            problems.append(f"{where}: no such audio file")
        elif rel.split("/")[0] != label:
            problems.append(
                f"{where}: label {label!r} but the file is in folder {rel.split('/')[0]!r}"
            )
        if split is not None and split not in SPLITS:
            problems.append(f"{where}: split {split!r} is not one of {SPLITS}")
        extra = {k: v for k, v in row.items() if k not in ("path", "label", "split", "group")}
        clips.append(Clip(path=root / rel, label=label, split=split, group=group, extra=extra))
    for rel in sorted(on_disk - seen):
        problems.append(f"{rel}: audio file not listed in {MANIFEST_NAME}")
    return clips


def _split_leaks(clips: list[Clip]) -> list[str]:
    splits_of_group: dict[str, set[str]] = defaultdict(set)
    for clip in clips:
        if clip.group is not None and clip.split is not None:
            splits_of_group[clip.group].add(clip.split)
    return [
        f"group {group!r} appears in splits {sorted(splits)}; a group must stay on one side"
        for group, splits in sorted(splits_of_group.items())
        if len(splits) > 1
    ]


def summarize(dataset: Dataset, *, durations: bool = True) -> dict[str, Any]:
    """Counts per label, per split and label, groups per split, and (from headers) duration."""
    by_label = Counter(c.label for c in dataset.clips)
    by_split: dict[str, Counter[str]] = defaultdict(Counter)
    groups: dict[str, set[str]] = defaultdict(set)
    seconds: Counter[str] = Counter()
    for clip in dataset.clips:
        split = clip.split or "unassigned"
        by_split[split][clip.label] += 1
        if clip.group is not None:
            groups[split].add(clip.group)
        if durations:
            info = sf.info(str(clip.path))
            seconds[clip.label] += info.frames / info.samplerate
    summary: dict[str, Any] = {
        "root": str(dataset.root),
        "clips": len(dataset.clips),
        "has_manifest": dataset.has_manifest,
        "labels": dict(sorted(by_label.items())),
        "splits": {s: dict(sorted(c.items())) for s, c in sorted(by_split.items())},
        "groups": {s: len(g) for s, g in sorted(groups.items())},
        "warnings": dataset.warnings,
    }
    if durations:
        summary["duration_s"] = {k: round(v, 1) for k, v in sorted(seconds.items())}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per label, one column per split."""
    splits = list(summary["splits"])
    header = ["label", *splits, "total"] + (["minutes"] if "duration_s" in summary else [])
    rows = []
    for label, total in summary["labels"].items():
        row = [label, *(str(summary["splits"][s].get(label, 0)) for s in splits), str(total)]
        if "duration_s" in summary:
            row.append(f"{summary['duration_s'].get(label, 0.0) / 60:.1f}")
        rows.append(row)
    groups = ["groups", *(str(summary["groups"].get(s, "-")) for s in splits), ""]
    if "duration_s" in summary:
        groups.append("")
    rows.append(groups)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"{summary['root']}: {summary['clips']} clips"]
    for row in [header, *rows]:
        lines.append(
            "  ".join(
                cell.rjust(w) if i else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    lines += [f"WARNING: {w}" for w in summary["warnings"]]
    return "\n".join(lines)
