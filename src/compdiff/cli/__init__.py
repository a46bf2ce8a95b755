"""The ``compdiff`` command line: thin; parse arguments, build, call.

Exit codes: 0 ok, 2 usage or parse error (bad input), 1 runtime error.

Errors go to stderr. The FIRST line is always the complete message,
``compdiff: error: <what is wrong>``, naming the flag (``argument --eta: must be a
number in [0, 1], got 'nan'``) or the column (``dangling AND at column 9: expected a
concept after it``), so a script that reads one line gets everything. A parse error
of an expression or of a concept adds two lines, a window of the text and a caret
under the bad character. Nothing is echoed raw: non-printable characters are
escaped (``\\x1b``) and every line and the whole message are capped in length.

Each sub-command lives in its own module with two functions:
``add_parser(subparsers)`` registers it (and sets ``func=run`` as default) and
``run(args) -> int`` does the work. Raise ``UsageError`` for bad input. Numeric
options are range-checked while arguments are parsed (``int_in``, ``float_in``).
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
from typing import Callable, Sequence

from compdiff.errors import InputError

#: sub-command modules, in the order ``--help`` lists them
COMMANDS = ("explain", "sample", "train", "eval", "world", "serve")
#: caps on what an error prints: characters per line, lines, characters in all
MAX_ERROR_LINE = 1000
MAX_ERROR_LINES = 8
MAX_ERROR_CHARS = 2000


class UsageError(InputError):
    """Bad command-line input: exit code 2, one-line message."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are ``UsageError`` (printed as ``compdiff: error: ...``,
    exit 2) instead of a usage block and an exit from inside argparse."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _show(value: str) -> str:
    from compdiff.expr.display import excerpt

    return excerpt(value, 40)


def int_in(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in [lo, hi] (hi None: no upper bound)."""
    span = f"{lo}..{hi}" if hi is not None else f">= {lo}"

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got '{_show(text)}'") from None
        if value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {_show(text.strip())}")
        return value

    parse.__name__ = "int"
    return parse


def float_in(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite number in the interval [lo, hi] (``lo_open``/``hi_open``: excluded)."""
    span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got '{_show(text)}'") from None
        inside = (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
        if not (math.isfinite(value) and inside):
            raise argparse.ArgumentTypeError(f"must be a finite number in {span}, got {_show(text.strip())}")
        return value

    parse.__name__ = "float"
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="compdiff",
        description="Compositional image generation with diffusion models "
        '(e.g. \'"a red cube" AND "a blue sphere" AND NOT "metal"\').',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"compdiff.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)  # bad arguments: UsageError (ArgumentParser.error)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
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


def error_text(e: BaseException) -> str:
    """``e``'s message as printed: non-printables escaped (line breaks kept), each line capped
    to MAX_ERROR_LINE characters, at most MAX_ERROR_LINES lines and MAX_ERROR_CHARS in all."""
    from compdiff.expr.display import escape, excerpt

    msg = str(e).rstrip() or type(e).__name__
    lines = msg.split("\n")
    shown = [excerpt(line, MAX_ERROR_LINE) if len(line) > MAX_ERROR_LINE else escape(line)
             for line in lines[:MAX_ERROR_LINES]]
    if len(lines) > MAX_ERROR_LINES:
        shown.append(f"... ({len(lines) - MAX_ERROR_LINES} more lines)")
    text = "\n".join(shown)
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + " ..."
    return text


def _print_error(e: BaseException) -> None:
    print(f"compdiff: error: {error_text(e)}", file=sys.stderr)
