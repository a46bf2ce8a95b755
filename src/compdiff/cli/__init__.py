"""The ``compdiff`` command line: thin; parse arguments, build, call.

Exit codes: 0 ok, 2 usage or parse error (bad input), 1 runtime error.

Errors go to stderr. The FIRST line is always the complete message,
``compdiff: error: <what is wrong>``, naming the flag (``argument --eta: must be a
number in [0, 1], got 'nan'``) or the column (``dangling AND at column 9: expected a
concept after it``), so a script that reads one line gets everything. A parse error
of an expression or of a concept adds two lines, a window of the text and a caret
under the bad character. Nothing is echoed raw: non-printable characters are
escaped (``\\x1b``) and every line and the whole message are capped in length.
Nothing comes before that line: the log lines of diffusers and transformers are silenced
below errors (``DIFFUSERS_VERBOSITY`` / ``TRANSFORMERS_VERBOSITY`` set by the user win), and
a progress bar still drawn is ended (its line closed) before the error is printed.

Outputs: a folder of outputs (``train --out``, ``eval --out``, ``sample --out-dir``) is checked
before any model loads, by a real try (a path under /sys, a read-only or immutable folder: exit 2
naming the flag); an empty ``--out`` is refused, never read as the current folder. A FILE named by
``--out`` (``sample --out x.png``, ``world render --out x.png``) is replaced if it exists, whole
(written beside it, then renamed), as ``cp`` and image tools do: naming it is the consent. A
folder is never replaced: only its own earlier run or report, and only with --resume/--overwrite.
``--device cpu:N`` (N >= 1) is refused: there is one CPU device, and torch would ignore the index.

Each sub-command lives in its own module with two functions:
``add_parser(subparsers)`` registers it (and sets ``func=run`` as default) and
``run(args) -> int`` does the work. Raise ``UsageError`` for bad input. Numeric
options are range-checked while arguments are parsed (``int_in``, ``float_in``).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
from typing import Any, Callable, Sequence

from compdiff.errors import InputError

#: sub-command modules, in the order ``--help`` lists them
#: (``compdiff serve`` is the web app's own command, compdiff.web.serve: cli and web never import each
#: other, and ``compdiff.__main__`` puts both under one ``compdiff`` command)
COMMANDS = ("explain", "sample", "score", "train", "eval", "world")
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


PRECISION_HELP = ("fp32 (default: the images are the same on every CPU), bf16 (autocast in a world model; "
                  "--bf16 says the same), or auto: time one model call of this run's batch each way and "
                  "keep bf16 only if at least 5%% faster (printed). bf16 is 50-90x slower on CPUs that "
                  "emulate it and about 2x faster per convolution on CPUs with AMX: measure, don't guess")


def add_precision_options(p: argparse.ArgumentParser) -> None:
    """--precision {fp32,bf16,auto} and its alias --bf16 (= --precision bf16), for sample and eval."""
    p.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None, help=PRECISION_HELP)
    p.add_argument("--bf16", action="store_true", help="the same as --precision bf16")


def requested_precision(args: argparse.Namespace) -> str:
    """fp32, bf16 or auto from --precision / --bf16 (both given and different: UsageError)."""
    if args.bf16 and args.precision not in (None, "bf16"):
        raise UsageError(f"--bf16 and --precision {args.precision} disagree; give one")
    return "bf16" if args.bf16 else (args.precision or "fp32")


def apply_precision(models: Sequence[Any], precision: str, rows: int) -> str | None:
    """Set bf16 autocast on opened world models: as asked, or (auto) by timing one call of the first
    model's denoiser on ``rows`` rows of noise (compdiff.precision). Returns the line to print for auto
    (None otherwise). Pipelines take --dtype instead: bf16/auto with one is a UsageError."""
    import torch

    from compdiff.precision import resolve

    if precision == "fp32":
        return None
    for m in models:
        if not hasattr(m.denoiser, "bf16"):
            raise UsageError(f"--precision {precision} applies to compdiff world models; {m.name} is a "
                             f"{m.family} pipeline: choose its weights' type with --dtype")
    first = models[0]
    x = torch.randn((rows, *first.latent_shape), generator=torch.Generator().manual_seed(0)).to(first.device)
    t = first.schedule.timesteps(1, "trailing")[:1].repeat(rows).to(first.device)  # pure noise: t = T - 1
    null = first.encoder.null()
    cond = null.expand(rows, *null.shape[1:]) if torch.is_tensor(null) else null

    def step(bf16: bool) -> None:
        first.denoiser.bf16 = bf16
        first.denoiser(x, t, cond)

    choice = resolve(precision, first.device, step)
    for m in models:
        m.denoiser.bf16 = choice.bf16
    return choice.describe() if choice.reason == "measured" else None


#: third-party loggers that would print before ``compdiff: error:`` (warnings about configs, hub lookups)
QUIET_LOGGERS = ("diffusers", "transformers", "huggingface_hub", "accelerate")


_VERBOSITY = {"diffusers": "DIFFUSERS_VERBOSITY", "transformers": "TRANSFORMERS_VERBOSITY",
              "huggingface_hub": "HF_HUB_VERBOSITY"}
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


def quiet_third_party() -> Callable[[], None]:
    """Only errors from diffusers, transformers, huggingface_hub and accelerate reach stderr (their
    own environment variables, when the user set them, decide instead). Returns the function that
    puts the levels and variables back (``main`` called from Python leaves no trace)."""
    env = {var: os.environ.get(var) for var in _VERBOSITY.values()}
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    # their load bars ("Loading weights ...") would come before an error too; compdiff draws its own
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read by a library imported later
    bars = _library_bars(enable=False)  # a library imported already
    for var in _VERBOSITY.values():
        os.environ.setdefault(var, "error")  # read by a library imported later
    for name in QUIET_LOGGERS:
        var = _VERBOSITY.get(name)
        level = _LEVELS.get(os.environ[var].lower(), logging.ERROR) if var else logging.ERROR
        logging.getLogger(name).setLevel(level)  # a library imported already

    def restore() -> None:
        for var, value in env.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for module in bars:
            module.enable_progress_bar()

    return restore


def _library_bars(enable: bool) -> list[Any]:
    """diffusers' and transformers' logging modules (those imported) whose progress bars were on and are
    now switched to ``enable``."""
    changed = []
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = sys.modules.get(name)
        if module is None or not hasattr(module, "is_progress_bar_enabled"):
            continue
        if module.is_progress_bar_enabled() != enable:
            (module.enable_progress_bar if enable else module.disable_progress_bar)()
            changed.append(module)
    return changed


def end_progress_bars() -> None:
    """Close the tqdm bars still open (an error raised inside a loop that drew one): each ends its
    line, so what follows starts on a line of its own."""
    tqdm_module = sys.modules.get("tqdm.std")
    if tqdm_module is None:
        return
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the error
            pass
    sys.stderr.flush()


def build_parser(extra: Sequence[Any] = ()) -> argparse.ArgumentParser:
    """The parser of COMMANDS, then of each module in ``extra`` (one with ``add_parser(subparsers)``:
    compdiff.__main__ passes the web app's ``serve``)."""
    parser = ArgumentParser(
        prog="compdiff",
        description="Compositional image generation with diffusion models "
        '(e.g. \'"a red cube" AND "a blue sphere" AND NOT "metal"\').',
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"compdiff.cli.{name}").add_parser(sub)
    for module in extra:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None, extra: Sequence[Any] = ()) -> int:
    """Run one command (COMMANDS, plus the modules in ``extra``: see build_parser); the exit code."""
    restore = quiet_third_party()
    try:
        return _main(argv, extra)
    finally:
        restore()


def _main(argv: Sequence[str] | None, extra: Sequence[Any]) -> int:
    try:
        parser = build_parser(extra)
        args = parser.parse_args(argv)  # bad arguments: UsageError (ArgumentParser.error)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        end_progress_bars()
        print("compdiff: interrupted", file=sys.stderr)
        return 130
    except InputError as e:  # ParseError, UsageError and other bad input
        end_progress_bars()
        _print_error(e)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        end_progress_bars()
        _print_error(_one_line_state_dict_error(e))
        return 1


def _one_line_state_dict_error(e: BaseException) -> BaseException:
    """torch's ``Error(s) in loading state_dict for X:`` then a tab-indented line per problem, as one
    first line that says what does not fit (the rest follows, capped as every message)."""
    text = str(e)
    if not (isinstance(e, RuntimeError) and text.startswith("Error(s) in loading state_dict")):
        return e
    head, _, rest = text.partition("\n")
    problems = [line.strip() for line in rest.split("\n") if line.strip()]
    module = head.removeprefix("Error(s) in loading state_dict for ").rstrip(":")
    return RuntimeError(f"the weights do not fit the network {module}: " + "; ".join(problems))


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
