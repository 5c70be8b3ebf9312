"""Build the binary "baby cry" view of the development datasets as a dataset folder.

    python scripts/binary_view.py --data ../shared/datasets --out out/cry-view

`cry/` holds every `cry/*` clip and `events/crying_baby`; `other/` holds `background/*`,
`events/background`, `events/glass_break` and `machine/normal` (symlinks, nothing copied). The
manifest keeps split and group and adds `source` (dataset/label) and `bandwidth`
(`8k-origin`, `full-band` or `unknown`), so `evaluate` reports those subgroups.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from models.dataset import read_dataset, write_manifest

POSITIVE = {("cry", None), ("events", "crying_baby")}
NEGATIVE = {
    ("background", None),
    ("events", "background"),
    ("events", "glass_break"),
    ("machine", "normal"),
}


# Original bandwidth of each background source, from ../shared/datasets/background/README.md.
BACKGROUND_BANDWIDTH = {
    "fsdd": "8k-origin",
    "asterisk_prompts": "8k-origin",
    "asterisk_moh": "8k-origin",
    "speech_commands": "full-band",
    "speech_commands_bg": "full-band",
    "alsa_utils": "full-band",
}


def _bandwidth(dataset: str, extra: dict[str, str]) -> str:
    if extra.get("orig_sample_rate"):
        return "8k-origin" if extra["orig_sample_rate"] == "8000" else "full-band"
    if dataset == "background":
        return BACKGROUND_BANDWIDTH.get(extra.get("source", ""), "unknown")
    # ESC-50 (44.1 kHz), the glass-break set and the DCASE machines are full-band recordings.
    return "full-band"


def build(data: Path, out: Path) -> int:
    rows = []
    for target, selection in (("cry", POSITIVE), ("other", NEGATIVE)):
        (out / target).mkdir(parents=True, exist_ok=True)
        for dataset_name, label in sorted(selection, key=str):
            dataset = read_dataset(data / dataset_name)
            for clip in dataset.clips:
                if label is not None and clip.label != label:
                    continue
                name = f"{dataset_name}__{clip.label}__{clip.path.name}"
                link = out / target / name
                if not link.exists():
                    link.symlink_to(clip.path.resolve())
                rows.append(
                    {
                        "path": f"{target}/{name}",
                        "label": target,
                        "split": clip.split,
                        "group": f"{dataset_name}:{clip.group}",
                        "source": f"{dataset_name}/{clip.label}",
                        "bandwidth": _bandwidth(dataset_name, clip.extra),
                    }
                )
    write_manifest(out, rows, list(rows[0]))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with cry/, events/ ...")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    print(f"{build(args.data, args.out)} clips linked under {args.out}")


if __name__ == "__main__":
    main()
