"""A validation view that asks whether a cry detector mistakes phone-quality sound for a cry.

    python scripts/telephone_view.py --view out/cry-view --extra out/train-data/debian_sounds \
        --out out/telephone-view
    soundwarden-models evaluate --bundle B --data out/telephone-view --split val

The development sets' cries are mostly 8 kHz-origin phone uploads, and their validation split
holds one music track; the test split's music is 8 kHz hold music. A model that learned
"narrowband means cry" passes validation and then raises alarms on that music (the
extra-negatives candidate of 2026-11-21 did: 71.5 per hour). This view lets validation see it:
`cry/` is every validation cry of the binary view (symlinks), `other/` is every validation clip
of the extra negatives (`scripts/extra_negatives.py`) twice, as it is (`bandwidth` full-band)
and sent through an 8 kHz channel (`8k-origin`: down to 8 kHz and back, soxr's anti-alias
filter being the channel), so `evaluate` reports false alarms and scores per bandwidth.
Only `val` clips are written; `test` is never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from models.audio import TARGET_SAMPLE_RATE, load_mono, low_pass
from models.dataset import read_dataset, write_manifest

TELEPHONE_RATE = 8000


def build(view: Path, extra: Path, out: Path) -> list[dict[str, str]]:
    rows = []
    (out / "cry").mkdir(parents=True, exist_ok=True)
    (out / "other").mkdir(parents=True, exist_ok=True)
    for clip in read_dataset(view).clips:
        if clip.label != "cry" or clip.split != "val":
            continue
        link = out / "cry" / clip.path.name
        link.unlink(missing_ok=True)
        link.symlink_to(clip.path.resolve())
        rows.append(
            {
                "path": f"cry/{link.name}",
                "label": "cry",
                "split": "val",
                "group": clip.group or "",
                "source": clip.extra.get("source", "cry"),
                "bandwidth": clip.extra.get("bandwidth", "unknown"),
            }
        )
    negatives = [c for c in read_dataset(extra).clips if c.split == "val"]
    for clip in tqdm(negatives, desc="telephone channel", unit="clip"):
        samples = load_mono(clip.path, TARGET_SAMPLE_RATE)
        narrow = low_pass(samples, TARGET_SAMPLE_RATE, TELEPHONE_RATE / 2)
        for bandwidth, audio in (("full-band", samples), ("8k-origin", narrow)):
            name = f"{clip.label}__{bandwidth}__{clip.path.stem}.wav"
            sf.write(out / "other" / name, audio, TARGET_SAMPLE_RATE, "PCM_16")
            rows.append(
                {
                    "path": f"other/{name}",
                    "label": "other",
                    "split": "val",
                    "group": f"{clip.group}:{bandwidth}",
                    "source": f"debian/{clip.label}",
                    "bandwidth": bandwidth,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--view", type=Path, required=True, help="binary view (binary_view.py)")
    parser.add_argument("--extra", type=Path, required=True, help="extra_negatives.py's folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = build(args.view, args.extra, args.out)
    write_manifest(args.out, rows, list(rows[0]))
    print(f"{len(rows)} clips under {args.out}")


if __name__ == "__main__":
    main()
