"""The ``compdiff`` command line: thin; parse arguments, build, call.

Exit codes: 0 ok, 2 usage or parse error (bad input), 1 runtime error.
Errors are one line on stderr: ``compdiff: error: <what is wrong>``.

Each sub-command lives in its own module with two functions:
``add_parser(subparsers)`` registers it (and sets ``func=run`` as default) and
``run(args) -> int`` does the work. Raise ``UsageError`` for bad input.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from compdiff.errors import InputError

#: sub-command modules, in the order ``--help`` lists them
COMMANDS = ("explain", "sample", "train", "eval", "world")


class UsageError(InputError):
    """Bad command-line input: exit code 2, one-line message."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compdiff",
        description="Compositional image generation with diffusion models "
        '(e.g. \'"a red cube" AND "a blue sphere" AND NOT "metal"\').',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"compdiff.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on usage errors
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("compdiff: interrupted", file=sys.stderr)
        return 130
    except InputError as e:  # ParseError, UsageError and other bad input
        _print_error(e)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        _print_error(e)
        return 1


def _print_error(e: BaseException) -> None:
    msg = str(e).rstrip() or type(e).__name__
    print(f"compdiff: error: {msg}", file=sys.stderr)
