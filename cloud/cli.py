"""`soundwarden-cloud`: run the service."""

from __future__ import annotations

import argparse
import sys

from models.cliutil import command_parser, run_command


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cloud.main import create_app

    uvicorn.run(create_app(), host=args.host, port=args.port, log_level="info")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser, sub = command_parser("soundwarden-cloud", __doc__)
    p = sub.add_parser("serve", help="run the HTTP API (data folder: SOUNDWARDEN_DATA_DIR)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="listen port (default 8000)")
    p.set_defaults(func=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
