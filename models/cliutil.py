"""The shape all three `soundwarden-*` commands share: `--version`, subcommands, and known
errors printed as one line on stderr with exit status 1 instead of a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from models import __version__


def command_parser(prog: str, description: str | None) -> tuple[argparse.ArgumentParser, Any]:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser, parser.add_subparsers(dest="command", required=True)


def run_command(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    expected_errors: tuple[type[Exception], ...] = (),
) -> int:
    """Parse `argv` and call the chosen subcommand's `func`; report `expected_errors` tidily."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except expected_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
