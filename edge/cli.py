"""`soundwarden-edge`: the device side."""

from __future__ import annotations

import argparse
import sys

from models.cliutil import command_parser, run_command


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


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("soundwarden-edge", __doc__)
    p = sub.add_parser("devices", help="list audio inputs (index, channels, native rate, name)")
    p.set_defaults(func=_devices)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
