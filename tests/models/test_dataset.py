from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from models.dataset import DatasetError, format_summary, read_dataset, summarize
from tests.conftest import CRY_FULL_BAND, FIXTURE_AUDIO

# Counts from ../shared/datasets/README.md.
SHARED = {
    "cry": {"hungry": 306, "belly_pain": 14, "burping": 6, "discomfort": 22, "tired": 19},
    "background": {"speech": 1157, "noise": 3, "music": 36},
    "machine": {"normal": 60, "abnormal": 1},
    "events": {"glass_break": 170, "background": 164, "crying_baby": 32},
}


@pytest.mark.parametrize("name", sorted(SHARED))
def test_every_development_dataset_reads(shared_datasets: Path, name: str) -> None:
    dataset = read_dataset(shared_datasets / name)
    summary = summarize(dataset, durations=False)
    assert summary["labels"] == dict(sorted(SHARED[name].items()))
    assert set(summary["splits"]) == {"train", "val", "test"}
    if name == "machine":
        # One machine recorded alone: the leak is real and must be visible.
        assert dataset.warnings == [
            "group 'id_00' appears in splits ['test', 'train', 'val']; "
            "a group must stay on one side"
        ]
        with pytest.raises(DatasetError, match="id_00"):
            dataset.require_disjoint_groups()
    else:
        assert dataset.warnings == []
        dataset.require_disjoint_groups()


def test_fixture_folder_summary_counts_labels_splits_groups_and_minutes() -> None:
    summary = summarize(read_dataset(FIXTURE_AUDIO))
    assert summary["labels"] == {"cry": 2, "other": 3}
    assert summary["splits"] == {"test": {"cry": 1, "other": 2}, "train": {"cry": 1, "other": 1}}
    assert summary["groups"] == {"test": 3, "train": 2}
    assert summary["duration_s"]["cry"] == pytest.approx(13.96, abs=0.05)
    table = format_summary(summary)
    assert "cry" in table and "groups" in table


def _folder(tmp_path: Path, files: list[str], manifest: str | None = None) -> Path:
    root = tmp_path / "data"
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(CRY_FULL_BAND, root / rel)
    if manifest is not None:
        (root / "manifest.csv").write_text(manifest)
    return root


def test_without_a_manifest_labels_come_from_folders(tmp_path: Path) -> None:
    dataset = read_dataset(_folder(tmp_path, ["cry/a.wav", "cry/b.wav", "other/c.wav"]))
    assert dataset.labels == ["cry", "other"]
    assert all(c.split is None for c in dataset.clips)


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    root = _folder(
        tmp_path,
        ["cry/a.wav", "cry/b.wav", "other/c.wav", "other/unlisted.wav", "stray.wav"],
        "path,label,split,group\n"
        "cry/a.wav,cry,train,g1\n"
        "cry/b.wav,other,train,g2\n"
        "other/c.wav,other,holdout,g3\n"
        "other/c.wav,other,test,g3\n"
        "other/gone.wav,other,test,g4\n",
    )
    with pytest.raises(DatasetError) as caught:
        read_dataset(root)
    problems = "\n".join(caught.value.problems)
    assert "stray.wav: audio must sit in a label folder" in problems
    assert "line 3 (cry/b.wav): label 'other' but the file is in folder 'cry'" in problems
    assert "line 4 (other/c.wav): split 'holdout' is not one of" in problems
    assert "line 5 (other/c.wav): listed twice" in problems
    assert "line 6 (other/gone.wav): no such audio file" in problems
    assert "other/unlisted.wav: audio file not listed in manifest.csv" in problems
    assert len(caught.value.problems) == 6


def test_manifest_without_required_columns_is_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path, ["cry/a.wav"], "file,class\ncry/a.wav,cry\n")
    with pytest.raises(DatasetError, match=r"missing column\(s\) \['path', 'label'\]"):
        read_dataset(root)


def test_group_on_two_sides_is_a_warning_and_an_error_on_request(tmp_path: Path) -> None:
    root = _folder(
        tmp_path,
        ["cry/a.wav", "cry/b.wav"],
        "path,label,split,group\ncry/a.wav,cry,train,phone1\ncry/b.wav,cry,test,phone1\n",
    )
    dataset = read_dataset(root)
    assert dataset.warnings == [
        "group 'phone1' appears in splits ['test', 'train']; a group must stay on one side"
    ]
    with pytest.raises(DatasetError, match="phone1"):
        dataset.require_disjoint_groups()


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DatasetError, match="no audio files"):
        read_dataset(tmp_path / "nothing")
