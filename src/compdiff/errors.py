"""Error types shared by every layer (pure Python, imports nothing)."""


class InputError(ValueError):
    """Bad input from the user (an expression, a concept, a CLI argument).

    The CLI maps it to exit code 2 and prints its message; everything else
    that goes wrong is a runtime error (exit code 1).
    """


class ParseError(InputError):
    """Text that cannot be parsed. The message names the column and shows the
    text with a caret under the bad place."""
