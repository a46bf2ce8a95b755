"""The ``compdiff`` command: the CLI's sub-commands (compdiff.cli) and the web app's ``serve``
(compdiff.web.serve). The one module above both: cli and web never import each other."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from compdiff import cli
from compdiff.web import serve

#: sub-commands that are not the CLI's own, listed after its COMMANDS in --help
EXTRA = (serve,)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``compdiff`` parser: every sub-command, ``serve`` included."""
    return cli.build_parser(EXTRA)


def main(argv: Sequence[str] | None = None) -> int:
    """``compdiff ...``: the exit code (0 ok, 2 bad input, 1 runtime error; see compdiff.cli)."""
    return cli.main(argv, EXTRA)


if __name__ == "__main__":
    sys.exit(main())
