"""User text shown in messages, safely: non-printables escaped, length capped, caret windows.

Pure Python. Every piece of user input that an error message echoes goes through
:func:`escape` (or :func:`excerpt`, which also caps it), so control characters
(ESC, BEL, ...) never reach a terminal raw, and a megabyte of input never becomes
a megabyte of error. :func:`caret_lines` is the two-line display under a message:
a window of the text around the bad place and a caret under it, aligned in
terminal columns (wide characters count 2, combining marks 0, an escape its length).
"""
from __future__ import annotations

import unicodedata

#: characters of text shown around the bad place (about half before, half after)
CARET_WINDOW = 72
#: marks text left out at either end of an excerpt or a caret window
ELLIPSIS = "..."

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def forbidden_char(ch: str) -> bool:
    """A control character other than whitespace, or a lone surrogate (bytes that were not
    UTF-8): never part of a concept (the parser and ``Concept`` refuse them)."""
    return (unicodedata.category(ch) == "Cc" and not ch.isspace()) or "\ud800" <= ch <= "\udfff"


def escape_char(ch: str) -> str:
    """``ch`` itself when printable, else a Python-style escape (``\\x1b``, ``\\u200b``, ``\\t``)."""
    if ch.isprintable():
        return ch
    if ch in _NAMED:
        return _NAMED[ch]
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def escape(text: str) -> str:
    """``text`` with every non-printable character escaped (newlines too: the result is one line)."""
    if text.isprintable():
        return text
    return "".join(escape_char(c) for c in text)


def excerpt(text: str, limit: int = 60) -> str:
    """``escape(text)`` capped to about ``limit`` characters: the head, ``...``, and the tail."""
    shown = escape(str(text))
    if len(shown) <= limit:
        return shown
    keep = max(2, limit - len(ELLIPSIS))
    head = keep * 2 // 3
    return shown[:head] + ELLIPSIS + shown[len(shown) - (keep - head):]


def _width(ch: str) -> int:
    """Terminal columns of one displayed character (after escaping)."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def caret_lines(text: str, pos: int, span: int = CARET_WINDOW) -> str:
    """Two lines, each indented by two spaces: a window of at most ``span`` characters
    of ``text`` around index ``pos`` (``...`` where text is left out; non-printables
    escaped) and a caret under the character at ``pos`` (after the text when
    ``pos == len(text)``)."""
    pos = max(0, min(pos, len(text)))
    start = 0 if len(text) <= span else max(0, min(pos - span // 2, len(text) - span))
    end = min(len(text), start + span)
    head = ELLIPSIS if start > 0 else ""
    tail = ELLIPSIS if end < len(text) else ""
    shown = [escape_char(c) for c in text[start:end]]
    offset = len(head) + sum(_width(c) if len(s) == 1 else len(s)
                             for c, s in zip(text[start:pos], shown))
    return f"  {head}{''.join(shown)}{tail}\n  {' ' * offset}^"
