"""`soundwarden-edge`: the device side."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.config import ConfigError, DetectionConfig, load_config
from edge.detector import Detector, DetectorConfigError, load_model
from edge.sources.base import SourceError
from edge.systemd import configure_logging
from models.audio import AudioError, load_mono
from models.bundle import DEFAULT_TRUSTED_KEYS, BundleError, load_bundle
from models.cliutil import command_parser, run_command
from models.inference import BundleModel, InferenceError
from models.runtimes import RuntimeUnavailableError, runtime_kinds
from models.signing import SigningKeyError, TrustedKeys


def _devices(_: argparse.Namespace) -> int:
    try:
        import pyaudio
    except ImportError:
        print(
            "error: listing microphones needs PyAudio: pip install 'soundwarden[mic]' "
            "(and apt install portaudio19-dev first)",
            file=sys.stderr,
        )
        return 1
    audio = pyaudio.PyAudio()
    try:
        inputs = []
        for index in range(audio.get_device_count()):
            info = audio.get_device_info_by_index(index)
            if int(info["maxInputChannels"]) > 0:
                inputs.append(info)
        if not inputs:
            print("no audio input devices found", file=sys.stderr)
            return 1
        print(f"{'index':>5}  {'channels':>8}  {'rate_hz':>7}  name")
        for info in inputs:
            print(
                f"{info['index']:>5}  {info['maxInputChannels']:>8}  "
                f"{int(info['defaultSampleRate']):>7}  {info['name']}"
            )
    finally:
        audio.terminate()
    return 0


def _threshold(text: str) -> tuple[str, float]:
    label, _, value = text.partition("=")
    try:
        return label, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {text!r}") from None


def _detect(args: argparse.Namespace) -> int:
    bundle = load_bundle(
        args.bundle, TrustedKeys.from_paths(args.trusted or [DEFAULT_TRUSTED_KEYS])
    )
    model = BundleModel(bundle, runtime=args.runtime, precision=args.precision)
    rate = bundle.manifest.features.sample_rate
    rules = DetectionConfig(thresholds=dict(args.threshold or []))
    for path in args.files:
        detector = Detector(model, device=args.device, rules=rules)
        samples = load_mono(path, rate)
        for start in range(0, len(samples), rate):  # one second at a time, as a stream
            for event in detector.push(samples[start : start + rate]):
                print(event.model_dump_json(), flush=True)
        for event in detector.flush():
            print(event.model_dump_json(), flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    configure_logging(config.log_level)
    from edge.daemon import Daemon  # imports the MQTT and capture stack only when running

    return Daemon(config).run()


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    bundle, model = load_model(config.model)
    detector = Detector(model, device=config.device, rules=config.detection)
    source = config.audio.source
    where = getattr(source, "path", None) or getattr(source, "device", None) or "default"
    print(f"{args.config}: OK")
    print(f"  device      {config.device}")
    print(f"  model       {bundle.manifest.name} {bundle.manifest.version} ({model.runtime_kind}), "
          f"signed by {bundle.signed_by}")  # fmt: skip
    print(f"  thresholds  {detector.thresholds}")
    print(f"  audio       {source.type} {where}")
    print(f"  mqtt        {config.mqtt.host}:{config.mqtt.port} prefix {config.mqtt.prefix}"
          f"{' TLS' if config.mqtt.tls else ''}")  # fmt: skip
    print(f"  data        {config.data_dir}")
    clips = config.clips
    upload = f"uploaded to {clips.upload_url}" if clips.upload_url else "kept on the device only"
    print(f"  clips       {f'on, {upload}' if clips.enabled else 'off'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("soundwarden-edge", __doc__)
    p = sub.add_parser("devices", help="list audio inputs (index, channels, native rate, name)")
    p.set_defaults(func=_devices)

    p = sub.add_parser("run", help="the daemon: audio source to MQTT events (see --config)")
    p.add_argument("--config", type=Path, required=True, help="TOML configuration file")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "check-config", help="validate a configuration, its bundle and runtime, then exit"
    )
    p.add_argument("config", type=Path, help="TOML configuration file")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("detect", help="run a bundle over audio files; events as JSON lines")
    p.add_argument("files", nargs="+", type=Path, help="WAV, FLAC or OGG files")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder or .tar.gz")
    p.add_argument(
        "--trusted",
        type=Path,
        action="append",
        help=f"trusted public key(s) (default: {DEFAULT_TRUSTED_KEYS})",
    )
    p.add_argument("--runtime", default="onnx", choices=runtime_kinds())
    p.add_argument("--precision", default="int8", choices=["int8", "float"])
    p.add_argument(
        "--threshold",
        type=_threshold,
        action="append",
        help="override a label's threshold, e.g. cry=0.999 (repeatable)",
    )
    p.add_argument("--device", default="file", help="device id in the events (default: file)")
    p.set_defaults(func=_detect)
    return parser


def main(argv: list[str] | None = None) -> int:
    errors = (
        ConfigError,
        SourceError,
        AudioError,
        BundleError,
        SigningKeyError,
        DetectorConfigError,
        InferenceError,
        RuntimeUnavailableError,
    )
    return run_command(build_parser(), argv, errors)


if __name__ == "__main__":
    sys.exit(main())
