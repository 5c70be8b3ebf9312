"""Build a training root: the development datasets plus `debian_sounds/` and `debian_music/`,
extra negatives.

    python scripts/extra_negatives.py --data ../shared/datasets --out out/train-data

The development sets hold three minutes of training music (two tracks) and one household noise
recording, and the detector's validation false alarms are all music and a man imitating a cat.
This adds what Debian ships under free licences (nothing is committed to the repository; the
packages are downloaded with `apt-get download` and unpacked, not installed):

- `music/`: game soundtracks (hyperrogue, planetblupi, asc, colobot), up to three 5 s excerpts
  per track, evenly spaced;
- `animals/`: Tux Paint's animal stamp sounds (birds, cats, dogs, cattle, insects...);
- `effects/`: Tux Paint's other stamp sounds (household objects, instruments, vehicles) and the
  hyperrogue and colobot sound effects.

`debian_music/music/` is an hour more of game soundtracks from fifteen other packages (up to
twelve 5 s excerpts a track, never overlapping), for `--recipe cry-detector-more-music`; a
folder of its own so the recipes trained on `debian_sounds/` keep their data.

Nothing whose name says baby, child, infant, giggle or cry is taken. Splits are by `group` (a
music track, a stamp folder, a package's effects), hashed, about 70/15/15, so a recording never
sits on two sides. OUT also gets a symlink to every dataset folder of `--data`, so
`soundwarden-models train --recipe cry-detector-extra-negatives --data OUT` sees them all.

The model that recipe trained (2026-11-21) was not shipped: better on validation, it raised
false alarms on the test split's hold music (models/pretrained/README-cry-detector.md). Full-band
game soundtracks are not 8 kHz telephone music; more negatives have to look like the rooms the
detector listens in.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from models.audio import TARGET_SAMPLE_RATE, level_dbfs, resample, to_mono
from models.dataset import write_manifest

EXCERPT_S = 5.0
MUSIC_EXCERPTS = 3
DEEP_MUSIC_EXCERPTS = 12
SILENT_DBFS = -50.0
EXCLUDED_WORDS = ("baby", "child", "infant", "giggle", "cry", "_desc")


@dataclass(frozen=True)
class Selection:
    """Files of one package that become clips of one label."""

    package: str
    label: str
    pattern: str  # glob under the unpacked package
    licence: str  # from the package's debian/copyright
    # "file": each file its own group; "folder": its stamp folder; "package": one group
    group_by: str
    excerpts: int = 1
    skip: tuple[str, ...] = ()  # folders under the pattern's root to leave out


STAMPS = "usr/share/tuxpaint/stamps"
SELECTIONS = (
    Selection(
        "hyperrogue-music",
        "music",
        "usr/share/hyperrogue/music/*.ogg",
        "GPL-2+",
        "file",
        MUSIC_EXCERPTS,
    ),
    Selection(
        "planetblupi-music-ogg",
        "music",
        "usr/share/planetblupi/music/*.ogg",
        "GPL-3+",
        "file",
        MUSIC_EXCERPTS,
    ),
    Selection(
        "asc-music", "music", "usr/share/games/asc/music/*.mp3", "GPL-2+", "file", MUSIC_EXCERPTS
    ),
    Selection(
        "colobot-common-sounds",
        "music",
        "usr/share/games/colobot/music/**/*.ogg",
        "GPL-3+",
        "file",
        MUSIC_EXCERPTS,
    ),
    Selection(
        "tuxpaint-stamps-default", "animals", f"{STAMPS}/animals/**/*.ogg", "GPL-2", "folder"
    ),
    # Every other stamp sound: the symbols are spoken letters and numbers, not effects.
    Selection(
        "tuxpaint-stamps-default",
        "effects",
        f"{STAMPS}/**/*.ogg",
        "GPL-2",
        "folder",
        skip=(f"{STAMPS}/animals/", f"{STAMPS}/symbols/"),
    ),
    Selection(
        "hyperrogue-music", "effects", "usr/share/hyperrogue/sounds/*.ogg", "GPL-2+", "package"
    ),
    Selection(
        "colobot-common-sounds",
        "effects",
        "usr/share/games/colobot/sounds/*.wav",
        "GPL-3+",
        "package",
    ),
)


# More music, in its own folder so the recipes trained on debian_sounds keep their data: the
# 1.2.0 candidates lost on hold music after seeing under nine minutes of extra music. Every game
# soundtrack here is a training negative; flare-game, warmux-data and btanks-data are left for
# scripts/bench_background.py's third held-out set and must not appear below.
MUSIC_SELECTIONS = tuple(
    Selection(package, "music", pattern, licence, "file", DEEP_MUSIC_EXCERPTS)
    for package, pattern, licence in (
        ("ardentryst", "usr/share/games/ardentryst/Music/*.ogg", "CC-BY-SA-3.0"),
        ("enigma-data", "usr/share/games/enigma/music/**/*.ogg", "GPL-2+"),
        ("lincity-ng-data", "usr/share/games/lincity-ng/music/**/*.ogg", "GPL-2+"),
        ("openclonk-data", "usr/share/games/openclonk/Music.ocg/*.ogg", "CC-BY-3.0 / ISC"),
        (
            "powermanga-data",
            "usr/share/games/powermanga/sound/handheld_console/music_*.ogg",
            "GPL-3+",
        ),
        (
            "scorched3d-data",
            "usr/share/games/scorched3d/data/globalmods/none/data/music/*.ogg",
            "GPL-2+",
        ),
        ("lugaru-data", "usr/share/games/lugaru/Sounds/Music*.ogg", "CC-BY-SA-3.0"),
        ("caveexpress-data", "usr/share/games/caveexpress/sounds/music-*.ogg", "CC-BY-SA-4.0"),
        ("pink-pony-data", "usr/share/games/pink-pony/music/*.mp3", "CC-BY-SA-3.0"),
        ("tuxfootball", "usr/share/games/tuxfootball/sound/titlemusic.ogg", "GPL-2+"),
        ("a7xpg-data", "usr/share/games/a7xpg/sounds/bgm*.ogg", "BSD-2-Clause"),
        ("gunroar-data", "usr/share/games/gunroar/sounds/musics/*.ogg", "BSD-2-Clause"),
        ("mu-cade-data", "usr/share/games/mu-cade/sounds/musics/*.ogg", "BSD-2-Clause"),
        ("titanion-data", "usr/share/games/titanion/sounds/musics/*.ogg", "BSD-2-Clause"),
        ("torus-trooper-data", "usr/share/games/torus-trooper/sounds/musics/*.ogg", "BSD-2-Clause"),
    )
)
FOLDERS = {"debian_sounds": SELECTIONS, "debian_music": MUSIC_SELECTIONS}


def split_of(group: str) -> str:
    """A stable split for a group: about 70% train, 15% val, 15% test."""
    bucket = int(hashlib.sha1(group.encode()).hexdigest(), 16) % 20
    return "train" if bucket < 14 else "val" if bucket < 17 else "test"


def excerpts(samples: np.ndarray, count: int) -> list[tuple[float, np.ndarray]]:
    """Up to `count` evenly spaced excerpts of EXCERPT_S (or the whole clip if shorter),
    as (start in seconds, samples); silent ones are left out."""
    length = int(EXCERPT_S * TARGET_SAMPLE_RATE)
    count = min(count, len(samples) // length)  # excerpts of one track never overlap
    if count <= 1:
        starts = [0]
    else:
        spread = np.linspace(0, len(samples) - length, count + 2)[1:-1]  # off the ends
        if spread[1] - spread[0] < length:  # no room for that: from end to end
            spread = np.linspace(0, len(samples) - length, count)
        starts = spread.astype(int).tolist()
    out = []
    for start in starts:
        piece = samples[start : start + length]
        if level_dbfs(piece) > SILENT_DBFS:
            out.append((start / TARGET_SAMPLE_RATE, piece))
    return out


def group_of(sel: Selection, relative: Path) -> str:
    """The recording a file belongs to, for the split."""
    if sel.group_by == "file":
        return f"{sel.package}:{relative.stem}"
    if sel.group_by == "folder":
        return f"{sel.package}:{relative.parent.relative_to(STAMPS)}"
    return sel.package


def unpack(packages: set[str], work: Path) -> dict[str, tuple[Path, str]]:
    """Download and unpack each package: {package: (root, version)}."""
    subprocess.run(["apt-get", "download", *sorted(packages)], cwd=work, check=True)
    roots = {}
    for deb in sorted(work.glob("*.deb")):
        package, version = deb.name.split("_")[:2]
        root = work / package
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        roots[package] = (root, version)
    return roots


def build(data: Path, out: Path) -> dict[str, list[dict[str, str]]]:
    """Link the development sets into OUT and write each folder of FOLDERS: {folder: rows}."""
    out.mkdir(parents=True, exist_ok=True)
    for dataset in sorted(p for p in data.iterdir() if (p / "manifest.csv").is_file()):
        link = out / dataset.name
        if not link.exists():
            link.symlink_to(dataset.resolve())
    written = {}
    with tempfile.TemporaryDirectory() as tmp:
        packages = {s.package for selections in FOLDERS.values() for s in selections}
        roots = unpack(packages, Path(tmp))
        for folder, selections in FOLDERS.items():
            written[folder] = write_folder(out / folder, selections, roots)
    return written


def write_folder(
    target: Path, selections: tuple[Selection, ...], roots: dict[str, tuple[Path, str]]
) -> list[dict[str, str]]:
    """Excerpts of every selected file as clips of `target`, with its manifest."""
    rows: list[dict[str, str]] = []
    for sel in selections:
        root, version = roots[sel.package]
        files = sorted(root.glob(sel.pattern))
        files = [
            f
            for f in files
            if not any(w in f.name.lower() for w in EXCLUDED_WORDS)
            and not f.relative_to(root).as_posix().startswith(sel.skip)
        ]
        if not files:
            raise ValueError(f"{sel.package}: nothing matches {sel.pattern}")
        for file in tqdm(files, desc=f"{sel.package} -> {sel.label}", unit="file"):
            # Not load_mono: its check that every declared frame decodes refuses some of
            # these packaged oggs over a hundred frames, which do not matter here.
            samples, rate = sf.read(file, dtype="float32", always_2d=True)
            mono = resample(to_mono(samples), rate, TARGET_SAMPLE_RATE)
            relative = file.relative_to(root)
            group = group_of(sel, relative)
            for start, piece in excerpts(mono, sel.excerpts):
                name = f"{sel.package}__{relative.stem}_{int(start):04d}s.wav"
                (target / sel.label).mkdir(parents=True, exist_ok=True)
                sf.write(target / sel.label / name, piece, TARGET_SAMPLE_RATE, "PCM_16")
                rows.append(
                    {
                        "path": f"{sel.label}/{name}",
                        "label": sel.label,
                        "source_file": f"debian:{sel.package}:{version}:/{relative}",
                        "duration_s": f"{len(piece) / TARGET_SAMPLE_RATE:.3f}",
                        "split": split_of(group),
                        "group": group,
                        "licence": sel.licence,
                    }
                )
    write_manifest(target, rows, list(rows[0]))
    (target / "README.md").write_text(
        f"# {target.name}\n\nExtra negatives built by soundwarden's `scripts/extra_negatives.py` "
        "from Debian packages (licence per clip in manifest.csv, from each package's "
        "debian/copyright).\n"
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with cry/, events/ ...")
    parser.add_argument("--out", type=Path, required=True, help="training root to create")
    args = parser.parse_args()
    print(f"{'folder':13} {'label':8} {'split':6} {'clips':>5} {'minutes':>7}")
    for folder, rows in build(args.data, args.out).items():
        for label in sorted({r["label"] for r in rows}):
            for split in ("train", "val", "test"):
                chosen = [r for r in rows if r["label"] == label and r["split"] == split]
                minutes = sum(float(r["duration_s"]) for r in chosen) / 60
                print(f"{folder:13} {label:8} {split:6} {len(chosen):5d} {minutes:7.1f}")


if __name__ == "__main__":
    main()
