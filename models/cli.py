"""`soundwarden-models`: inspect audio and datasets, manage signing keys, sign and check bundles."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.audio import AudioError, level_dbfs, load_mono
from models.bundle import (
    DEFAULT_TRUSTED_KEYS,
    BundleError,
    load_bundle,
    pack_bundle,
    sign_bundle,
    update_manifest,
)
from models.cliutil import command_parser, run_command
from models.dataset import DatasetError, format_summary, read_dataset, summarize
from models.evaluate import EvaluationError, calibrate, evaluate, format_report
from models.frontend import FrontendConfig, LogMel, mel_filterbank
from models.inference import InferenceError
from models.runtimes import RuntimeUnavailableError, runtime_kinds
from models.signing import SigningKeyError, TrustedKeys, generate_keypair, load_private_key

WINDOW_HOP_S = 0.25
DEFAULT_TFLITE_PYTHON = Path(__file__).resolve().parents[1] / ".venv-tflite" / "bin" / "python"


def _features(args: argparse.Namespace) -> int:
    config = FrontendConfig()
    samples = load_mono(args.file, config.sample_rate)
    hop = int(WINDOW_HOP_S * config.sample_rate)
    logmel = LogMel(config)
    windows = logmel.windows(samples, hop)
    print(
        f"{args.file}: {samples.shape[0] / config.sample_rate:.2f} s at {config.sample_rate} Hz,"
        f" {windows.shape[0]} windows of {config.n_frames} frames x {config.n_mels} mel bands"
    )
    print(f"{'start_s':>8} {'level_dbfs':>10} {'mean_db':>8} {'peak_band_hz':>12}")
    centres = _band_centres_hz(config)
    for i, window in enumerate(windows):
        start = i * hop
        level = level_dbfs(samples[start : start + config.window_samples])
        peak = centres[int(window.mean(axis=0).argmax())]
        print(f"{start / config.sample_rate:8.2f} {level:10.1f} {window.mean():8.1f} {peak:12.0f}")
    if args.png:
        _save_spectrogram(logmel.frames(samples), config, Path(args.png), title=str(args.file))
        print(f"spectrogram written to {args.png}")
    return 0


def _band_centres_hz(config: FrontendConfig) -> list[float]:
    basis = mel_filterbank(config)
    freqs = np.fft.rfftfreq(config.n_fft, 1.0 / config.sample_rate)
    return [float(freqs[basis[:, b].argmax()]) for b in range(config.n_mels)]


def _save_spectrogram(frames: np.ndarray, config: FrontendConfig, out: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--png needs matplotlib: install soundwarden[train] or [dev]") from None
    seconds = frames.shape[0] * config.hop_length / config.sample_rate
    fig, ax = plt.subplots(figsize=(10, 3.5))
    image = ax.imshow(
        frames.T,
        origin="lower",
        aspect="auto",
        cmap="magma",
        extent=(0.0, seconds, 0, config.n_mels),
    )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="dB")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _dataset(args: argparse.Namespace) -> int:
    summary = summarize(read_dataset(args.root))
    print(format_summary(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    private, public = generate_keypair(args.out, args.name)
    print(f"private key: {private} (keep it secret; sign with it)")
    print(f"public key:  {public} (give it to devices as a trusted key)")
    return 0


def _sign(args: argparse.Namespace) -> int:
    kid = sign_bundle(args.bundle, load_private_key(args.key))
    print(f"{args.bundle}: signed with key {kid}")
    if args.pack:
        pack_bundle(args.bundle, args.pack)
        print(f"packed to {args.pack}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.bundle, TrustedKeys.from_paths(args.trusted))
    m = bundle.manifest
    print(
        f"OK {m.name} {m.version} ({m.task}, labels {m.labels}) signed by {bundle.signed_by};"
        f" {len(m.files)} file(s) match their hashes"
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from models.training.anomaly import train_anomaly
    from models.training.recipes import RECIPES, YOLO_CONFIGS
    from models.training.trainer import train_recipe
    from models.training.yolo import train_yolo

    private_key = load_private_key(args.key)
    trusted = TrustedKeys([private_key.public_key()])
    recipe = RECIPES[args.recipe]
    trainer = {
        "conv_autoencoder": train_anomaly,
        **dict.fromkeys(YOLO_CONFIGS, train_yolo),
    }.get(recipe.architecture, train_recipe)
    bundle_dir, manifest = trainer(
        recipe,
        args.data,
        args.out,
        version=args.version,
        epochs=args.epochs,
        max_train_windows=args.max_train_windows,
        threads=args.threads,
        tflite_python=None if args.no_tflite else args.tflite_python,
    )
    sign_bundle(bundle_dir, private_key)
    print(
        f"trained {manifest.name} {manifest.version}: {bundle_dir} (run details in "
        f"{args.out / 'run'})"
    )
    if args.eval_data:
        # The one look at the test split, after every choice was made on val.
        result = evaluate(load_bundle(bundle_dir, trusted), args.eval_data, split="test")
        print(format_report(result))
        (args.out / "run" / "test_metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        update_manifest(bundle_dir, metrics={**manifest.metrics, "test": _headline(result)})
        sign_bundle(bundle_dir, private_key)
    return 0


def _headline(result: dict[str, Any]) -> dict[str, Any]:
    """The part of an evaluation a manifest carries: no per-clip detail."""
    keep = (
        "data",
        "split",
        "runtime",
        "precision",
        "threshold",
        "window",
        "clip",
        "false_alarms",
        "subgroups",
    )
    return {k: result[k] for k in keep}


def _calibrate(args: argparse.Namespace) -> int:
    private_key = load_private_key(args.key)
    bundle = load_bundle(args.bundle, TrustedKeys([private_key.public_key()]))
    result = calibrate(bundle, args.data, split=args.split)
    chosen = result["chosen"]
    print(f"{'threshold':>10} {'recall':>7} {'precision':>9} {'F1':>6} {'false alarms/h':>15}")
    shown = [*result["tradeoff"][:: max(1, len(result["tradeoff"]) // 12)], chosen]
    for row in sorted({r["threshold"]: r for r in shown}.values(), key=lambda r: r["threshold"]):
        mark = "  <- chosen" if row is chosen else ""
        print(
            f"{row['threshold']:>10.6f} {row['recall']:>7.3f} {row['precision']:>9.3f} "
            f"{row['f1']:>6.3f} {row['false_alarms_per_hour']:>15.1f}{mark}"
        )
    manifest = bundle.manifest
    update_manifest(
        args.bundle,
        # 9 decimals: a saturated threshold such as 0.9999995 keeps its place.
        thresholds={result["label"]: round(chosen["threshold"], 9)},
        training={
            **manifest.training,
            "threshold_selection": f"soundwarden-models calibrate on {args.data} "
            f"[{args.split}]: best clip-level F1 (clip score = highest window)",
        },
        metrics={
            **manifest.metrics,
            "calibration": {
                "split": args.split,
                "chosen": chosen,
                "negative_hours": round(result["negative_hours"], 4),
            },
        },
    )
    sign_bundle(args.bundle, private_key)
    print(f"{args.bundle}: threshold {chosen['threshold']:.6f} recorded and signed")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    bundle = load_bundle(
        args.bundle, TrustedKeys.from_paths(args.trusted or [DEFAULT_TRUSTED_KEYS])
    )
    split = None if args.split == "all" else args.split
    result = evaluate(
        bundle, args.data, split=split, runtime=args.runtime, precision=args.precision
    )
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("soundwarden-models", __doc__)

    p = sub.add_parser("features", help="run the log-mel front end over an audio file")
    p.add_argument("file", type=Path)
    p.add_argument("--png", type=Path, help="also save a spectrogram image here")
    p.set_defaults(func=_features)

    p = sub.add_parser("dataset", help="validate a dataset folder and count labels/splits/groups")
    p.add_argument("root", type=Path)
    p.add_argument("--json", type=Path, help="also write the counts as JSON here")
    p.set_defaults(func=_dataset)

    p = sub.add_parser("keygen", help="create an Ed25519 signing key pair")
    p.add_argument("--out", type=Path, required=True, help="folder for NAME.key and NAME.pub")
    p.add_argument("--name", default="signing", help="file name stem (default: signing)")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("sign", help="sign a bundle folder after checking its file hashes")
    p.add_argument("bundle", type=Path)
    p.add_argument("--key", type=Path, required=True, help="PEM private key from keygen")
    p.add_argument("--pack", type=Path, help="also write a .tar.gz of the signed bundle")
    p.set_defaults(func=_sign)

    p = sub.add_parser("verify", help="check a bundle's signature and every file's hash")
    p.add_argument("bundle", type=Path, help="bundle folder or .tar.gz")
    p.add_argument(
        "--trusted",
        type=Path,
        action="append",
        required=True,
        help="trusted public key file or folder of *.pub (repeatable)",
    )
    p.set_defaults(func=_verify)

    p = sub.add_parser("evaluate", help="score a bundle on a labelled dataset folder")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder or .tar.gz")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="dataset folder with one label folder per bundle label",
    )
    p.add_argument(
        "--trusted",
        type=Path,
        action="append",
        default=None,
        help=f"trusted public key(s) (default: {DEFAULT_TRUSTED_KEYS})",
    )
    p.add_argument("--split", default="test", help="train, val, test or all (default: test)")
    p.add_argument("--runtime", default="onnx", choices=runtime_kinds())
    p.add_argument("--precision", default="int8", choices=["int8", "float"])
    p.add_argument("--json", type=Path, help="also write the full report as JSON here")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "calibrate", help="choose a bundle's threshold on labelled audio and re-sign it"
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder")
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="dataset folder with one label folder per bundle label",
    )
    p.add_argument("--split", default="val", help="split to calibrate on (default: val)")
    p.add_argument("--key", type=Path, required=True, help="private key to re-sign with")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("train", help="train a recipe into a signed bundle (needs [train])")
    p.add_argument(
        "--recipe",
        default="cry-detector",
        help="cry-detector (compact CNN), cry-detector-attention (1D-CNN + attention), "
        "cry-detector-yolo (YOLOv8n-cls) or machine-anomaly (autoencoder)",
    )
    p.add_argument("--data", type=Path, required=True, help="root holding the dataset folders")
    p.add_argument("--out", type=Path, required=True, help="output folder (bundle + run/)")
    p.add_argument("--key", type=Path, required=True, help="private key to sign with")
    p.add_argument("--version", required=True, help="bundle version, e.g. 1.0.0")
    p.add_argument(
        "--eval-data",
        type=Path,
        help="dataset folder with the bundle's labels (the binary view for cry-detector, "
        "the machine folder for machine-anomaly): evaluate its test split once, record it",
    )
    p.add_argument("--epochs", type=int, help="override the recipe's maximum epochs")
    p.add_argument("--max-train-windows", type=int, help="subsample training windows (smoke runs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--tflite-python",
        type=Path,
        default=DEFAULT_TFLITE_PYTHON,
        help="interpreter of the litert-torch environment (default: .venv-tflite)",
    )
    p.add_argument("--no-tflite", action="store_true", help="bundle ONNX only")
    p.set_defaults(func=_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    errors = (
        AudioError,
        BundleError,
        DatasetError,
        SigningKeyError,
        FileExistsError,
        EvaluationError,
        InferenceError,
        RuntimeUnavailableError,
    )
    return run_command(build_parser(), argv, errors)


if __name__ == "__main__":
    sys.exit(main())
