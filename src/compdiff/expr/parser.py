"""The parser: text -> expression tree, errors with a caret (see compdiff.expr for the grammar)."""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import replace
from typing import Iterator, NamedTuple

from compdiff.errors import InputError, ParseError
from compdiff.expr.display import caret_lines, escape, excerpt
from compdiff.expr.display import forbidden_char as _forbidden
from compdiff.expr.region import MASK_NAME, NAMED, Region, box_problem
from compdiff.expr.tree import (DEFAULT_MAX_CONCEPTS, KEYWORDS, MAX_DEPTH, MAX_WEIGHT, And, Concept, Expr, Not,
                                Or, normalize_text, quote, weighted)

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BARE_PUNCT = "_,.-"
_MAX_W = f"{MAX_WEIGHT:g}".replace("e+0", "e").replace("e+", "e")  # 1e6
_STOP = '()":@'  # characters that end a bare word (besides whitespace)

# --------------------------------------------------------------------------
# errors with a caret


def _error(text: str, pos: int, what: str, hint: str) -> ParseError:
    """Three lines: the complete message (what, column, hint), then the text and a caret.
    ``what`` and ``hint`` must show user text only through ``excerpt``."""
    return ParseError(f"{what} at column {pos + 1}: {hint}\n{caret_lines(text, pos)}")


def _forbidden_error(text: str, k: int) -> ParseError:
    ch = text[k]
    if "\udc80" <= ch <= "\udcff":  # a byte that was not UTF-8, as Python decodes argv
        return _error(text, k, f"invalid byte \\x{ord(ch) - 0xdc00:02x}", "the text is not valid UTF-8")
    if "\ud800" <= ch <= "\udfff":
        return _error(text, k, f"lone surrogate {escape(ch)}", "the text is not valid Unicode")
    return _error(text, k, f"control character {escape(ch)}",
                  "concepts cannot hold control characters; remove it")


# --------------------------------------------------------------------------
# lexer


class _Tok(NamedTuple):
    kind: str  # "(", ")", "quoted", "word", "AND", "NOT", "OR", "weight", "region", "end"
    pos: int  # index of the first character
    end: int  # index after the last character
    value: object  # str for quoted/word, float for weight, Region for region


def _bare_ok(ch: str) -> bool:
    return ch in _BARE_PUNCT or unicodedata.category(ch)[0] in "LNM"


def _word_end(text: str, i: int, stop: str = _STOP) -> int:
    while i < len(text) and not text[i].isspace() and text[i] not in stop:
        i += 1
    return i


def _bare_run(text: str, start: int) -> str:
    """The bare concept text starting at ``start`` as the user probably meant
    it (colons included), for the 'quote it like this' hints."""
    k = end = start
    while k < len(text):
        while k < len(text) and text[k].isspace():
            k += 1
        j = _word_end(text, k, stop='()"@')
        if j == k or text[k:j] in KEYWORDS:
            break
        end = k = j
    return normalize_text(text[start:end])


def _lex(text: str) -> Iterator[_Tok]:
    """Tokens left to right (lazily, so errors come in reading order)."""
    n = len(text)
    i = 0
    prev: _Tok | None = None
    run_start = 0  # start of the current run of bare words
    while True:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            yield _Tok("end", n, n, None)
            return
        c = text[i]
        if c in "()":
            tok = _Tok(c, i, i + 1, None)
        elif c == '"':
            tok = _lex_quoted(text, i)
        elif c == "@":
            tok = _lex_region(text, i)
        elif c == ":":
            if prev is not None and prev.kind == "word" and prev.end == i:
                raise _glued_colon(text, i, run_start)
            tok = _lex_weight(text, i)
        else:
            j = _word_end(text, i)
            word = text[i:j]
            if word in KEYWORDS:
                tok = _Tok(word, i, j, word)
            else:
                if prev is None or prev.kind != "word":
                    run_start = i
                _check_word(text, i, j, run_start)
                tok = _Tok("word", i, j, word)
        i = tok.end
        prev = tok
        yield tok


def _lex_quoted(text: str, i: int) -> _Tok:
    j = i + 1
    buf: list[str] = []
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text) and text[j + 1] in '"\\':
            buf.append(text[j + 1])
            j += 2
            continue
        if _forbidden(c):
            raise _forbidden_error(text, j)
        if c == '"':
            content = normalize_text("".join(buf))
            if not content:
                raise _error(text, i, "empty quoted concept",
                             "write some text between the quotes")
            return _Tok("quoted", i, j + 1, content)
        buf.append(c)
        j += 1
    raise _error(
        text, i, "unterminated quote",
        "the concept that starts here has no closing '\"' (inside quotes, "
        "write \\\" for a quote and \\\\ for a backslash)",
    )


def _lex_weight(text: str, i: int) -> _Tok:
    j = _word_end(text, i + 1)
    raw = text[i + 1:j]
    if not raw:
        raise _error(text, i, "weight with no number",
                     "expected a number right after ':' (no space), e.g. \"a\":1.5")
    shown = excerpt(raw, 40)
    if _NUMBER.fullmatch(raw):
        w = float(raw)
        if math.isfinite(w):
            if abs(w) > MAX_WEIGHT:
                raise _error(text, i + 1, f"weight ':{shown}' is out of range",
                             f"a weight must lie in [-{_MAX_W}, {_MAX_W}]")
            return _Tok("weight", i, j, w)
    elif raw.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
        for k in range(i + 1, j):
            if _forbidden(text[k]):
                raise _forbidden_error(text, k)
        raise _error(
            text, i + 1, f"weight ':{shown}' is not a number",
            "write a number like :1.5, :-0.5 or :1e-3 (if ':' belongs to the "
            "concept, put the concept in double quotes)",
        )
    raise _error(text, i + 1, f"non-finite weight ':{shown}'",
                 f"a weight must be a finite number in [-{_MAX_W}, {_MAX_W}]")


_REGION_HINT = ("after '@' write a named region (" + ", ".join(NAMED) + "), a box (x0, y0, x1, y1) "
                "of fractions of the image, origin top left, or mask:NAME")


def _lex_region(text: str, i: int) -> _Tok:
    """The region after '@' at ``i``: a name, ``mask:NAME`` or a box ``(x0, y0, x1, y1)``."""
    j = i + 1
    while j < len(text) and text[j].isspace():
        j += 1
    if j >= len(text) or text[j] in '")':
        raise _error(text, i, "'@' with no region after it", _REGION_HINT)
    if text[j] == "(":
        close = text.find(")", j)
        if close < 0:
            raise _error(text, j, "unclosed '(' in a region box", "a box is (x0, y0, x1, y1), closed by ')'")
        parts, k = [], j + 1
        for raw in text[j + 1:close].split(","):
            start = k + len(raw) - len(raw.lstrip())
            parts.append((raw.strip(), start))
            k += len(raw) + 1
        if len(parts) != 4:
            raise _error(text, j, f"a region box takes 4 numbers, got {len(parts)}",
                         "write (x0, y0, x1, y1), fractions of the image in [0, 1], origin top left")
        coords = []
        for raw, start in parts:
            for k in range(start, start + len(raw)):
                if _forbidden(text[k]):
                    raise _forbidden_error(text, k)
            if not _NUMBER.fullmatch(raw) or not math.isfinite(float(raw)):
                raise _error(text, start, f"box coordinate '{excerpt(raw, 20)}' is not a number",
                             "write numbers such as 0.25")
            v = float(raw)
            if not 0.0 <= v <= 1.0:
                raise _error(text, start, f"box coordinate {excerpt(raw, 20)} is out of range",
                             "box coordinates are fractions of the image, in [0, 1]")
            coords.append(v)
        problem = box_problem(tuple(coords))
        if problem:
            raise _error(text, j, "empty region box", "it needs x0 < x1 and y0 < y1 (origin top left, y down)")
        return _Tok("region", i, close + 1, Region.box(*coords))
    if text.startswith("mask:", j):
        end = _word_end(text, j + 5)
        name = text[j + 5:end]
        if not MASK_NAME.fullmatch(name):
            for k in range(j + 5, end):
                if _forbidden(text[k]):
                    raise _forbidden_error(text, k)
            raise _error(text, j + 5, f"bad mask name '{excerpt(name, 40)}'",
                         "a mask name is 1-64 letters, digits, '_', '.' or '-', e.g. mask:face")
        return _Tok("region", i, end, Region.mask(name))
    end = _word_end(text, j)
    word = text[j:end]
    if word in KEYWORDS or not word:
        raise _error(text, i, "'@' with no region after it", _REGION_HINT)
    if word not in NAMED:
        for k in range(j, end):
            if _forbidden(text[k]):
                raise _forbidden_error(text, k)
        raise _error(text, j, f"unknown region '{excerpt(word, 40)}'", _REGION_HINT)
    return _Tok("region", i, end, Region.named(word))


def _check_word(text: str, i: int, j: int, run_start: int) -> None:
    word = text[i:j]
    core = word.strip(_BARE_PUNCT)
    if core in KEYWORDS:
        raise _error(
            text, i, f"'{excerpt(word, 40)}' is the keyword {core} glued to punctuation",
            f"put spaces around {core}, or quote the concept",
        )
    for k in range(i, j):
        if _forbidden(text[k]):
            raise _forbidden_error(text, k)
        if not _bare_ok(text[k]):
            example = excerpt(quote(_bare_run(text, run_start)), 60)
            raise _error(
                text, k, f"character {text[k]!r} in unquoted text",
                "unquoted concepts may only hold letters, digits, spaces and "
                f"_ , . - ; quote the concept, e.g. {example}",
            )


def _glued_colon(text: str, i: int, run_start: int) -> ParseError:
    before = excerpt(normalize_text(text[run_start:i]), 40)
    after = excerpt(text[i + 1:_word_end(text, i + 1)], 20)
    return _error(
        text, i, "':' glued to unquoted text",
        f"quote the concept ({excerpt(quote(_bare_run(text, run_start)), 60)}), or put a "
        f"space before a weight ({before} :{after})",
    )


# --------------------------------------------------------------------------
# parser (recursive descent; depth-limited)


class _Parser:
    def __init__(self, text: str, max_concepts: int, masks: frozenset[str] | None = None) -> None:
        self.text = text
        self.max_concepts = max_concepts
        self.masks = masks
        self.count = 0
        self._toks = _lex(text)
        self.prev: _Tok | None = None
        self.tok = next(self._toks)

    def advance(self) -> None:
        self.prev = self.tok
        self.tok = next(self._toks)

    def error(self, tok: _Tok, what: str, hint: str) -> ParseError:
        return _error(self.text, tok.pos, what, hint)

    def parse_or(self, depth: int) -> Expr:
        children = [self.parse_and(depth)]
        while self.tok.kind == "OR":
            self.advance()
            children.append(self.parse_and(depth))
        return children[0] if len(children) == 1 else Or(tuple(children))

    def parse_and(self, depth: int) -> Expr:
        children = [self.parse_unary(depth)]
        while self.tok.kind == "AND":
            self.advance()
            children.append(self.parse_unary(depth))
        return children[0] if len(children) == 1 else And(tuple(children))

    def parse_unary(self, depth: int) -> Expr:
        nots = 0
        while self.tok.kind == "NOT":  # a loop, not recursion: NOT NOT ... a
            self.check_depth(depth + nots)
            nots += 1
            self.advance()
        e = self.parse_primary(depth + nots)
        for _ in range(nots):
            e = Not(e)
        return e

    def parse_primary(self, depth: int) -> Expr:
        t = self.tok
        if t.kind == "quoted":
            self.advance()
            return self.suffixes(self.concept(t, str(t.value)))
        if t.kind == "word":
            words = []
            while self.tok.kind == "word":
                words.append(str(self.tok.value))
                self.advance()
            return self.suffixes(self.concept(t, " ".join(words)))
        if t.kind == "(":
            self.check_depth(depth)
            self.advance()
            if self.tok.kind == ")":
                raise self.error(t, "empty parentheses", "expected a concept inside")
            inner = self.parse_or(depth + 1)
            if self.tok.kind == "end":
                raise self.error(t, "unclosed '('", "no matching ')'")
            if self.tok.kind != ")":
                raise self.unexpected()
            self.advance()
            if self.tok.kind == "weight":
                w = float(self.tok.value)  # type: ignore[arg-type]
                self.advance()
                inner = weighted(inner, w)
            if self.tok.kind == "region":
                raise self.error(self.tok, "a region on a group",
                                 "a region goes on one concept: put '@ ...' on each concept inside the parentheses")
            return inner
        raise self.expected_concept()

    def concept(self, tok: _Tok, text: str) -> Concept:
        self.count += 1
        if self.count > self.max_concepts:
            raise self.error(
                tok, "too many concepts",
                f"at most {self.max_concepts} concepts are allowed (max_concepts="
                f"{self.max_concepts}); to allow more, call parse(text, max_concepts=N) "
                "in Python (compose() and compose_each() accept the parsed expression) "
                "or pass --max-concepts N to 'compdiff explain'; 'compdiff sample' "
                f"has no such option and always allows {DEFAULT_MAX_CONCEPTS}",
            )
        return Concept(text)

    def suffixes(self, c: Concept) -> Concept:
        """A concept's weight and region, in either order: ``"a":2 @ left`` or ``"a" @ left :2``."""
        c = self.weight_on_concept(c)
        if self.tok.kind == "region":
            region = self.tok.value
            assert isinstance(region, Region)
            if region.kind == "mask" and self.masks is not None and region.name not in self.masks:
                given = ", ".join(sorted(self.masks)) or "none"
                raise self.error(self.tok, f"no mask named '{excerpt(region.name, 40)}'",
                                 f"supply it (CLI: --mask {excerpt(region.name, 40)}=FILE.png; Python: "
                                 f"masks={{'{excerpt(region.name, 40)}': tensor}}); masks given: {given}")
            c = replace(c, region=region)
            self.advance()
            if c.weight == 1.0:
                c = self.weight_on_concept(c)
        return c

    def weight_on_concept(self, c: Concept) -> Concept:
        if self.tok.kind != "weight":
            return c
        w = float(self.tok.value)  # type: ignore[arg-type]
        self.advance()
        return replace(c, weight=w)

    def check_depth(self, depth: int) -> None:
        if depth >= MAX_DEPTH:
            raise self.error(
                self.tok, "nesting too deep",
                f"at most {MAX_DEPTH} levels of parentheses and NOTs",
            )

    def expected_concept(self) -> ParseError:
        """Error for a token where a concept should start."""
        t, p = self.tok, self.prev
        ops = ("AND", "OR", "NOT")
        if t.kind in ("end", ")"):
            if p is not None and p.kind in ops:
                return self.error(p, f"dangling {p.kind}", "expected a concept after it")
            if p is not None and p.kind == "(":
                return self.error(p, "unclosed '('", "no matching ')'")
            return self.error(t, "unmatched ')'", "no '(' before it")
        if t.kind in ("AND", "OR"):
            if p is not None and p.kind in ops:
                return self.error(t, f"{t.kind} right after {p.kind}",
                                  "expected a concept between them")
            return self.error(t, f"dangling {t.kind}", "expected a concept before it")
        if t.kind == "region":
            return self.error(t, "a region with no concept before it",
                              "a region goes right after a concept, e.g. \"a cat\" @ left")
        assert t.kind == "weight", t
        return self.error(
            t, "weight with nothing to weigh",
            "a weight goes right after a concept or ')', e.g. \"a\":1.5 or (\"a\" AND \"b\"):2",
        )

    def unexpected(self) -> ParseError:
        """Error for a token where AND, OR, ')' or the end should come."""
        t = self.tok
        if t.kind in ("quoted", "word", "("):
            return self.error(
                t, "two concepts with no operator between them",
                "put AND (or OR) between them, or quote them as one concept",
            )
        if t.kind == "NOT":
            return self.error(t, "NOT cannot join two concepts", "write AND NOT")
        if t.kind == ")":
            return self.error(t, "unmatched ')'", "no '(' before it")
        if t.kind == "region":
            return self.error(t, "second region", "a concept takes one region")
        assert t.kind == "weight", t
        return self.error(
            t, "second weight",
            "a concept or group takes one weight; to scale a weighted one, "
            "use parentheses, e.g. (\"a\":2):1.5",
        )


def parse(text: str, max_concepts: int = DEFAULT_MAX_CONCEPTS, masks=None) -> Expr:
    """Parse a concept expression such as ``"a red cube" @ left AND NOT "metal":0.5``.

    Raises ``ParseError`` (and only that, for any string) naming the column,
    with the text and a caret under the bad place. ``max_concepts`` limits the
    number of concept leaves (counted before merging repeats). ``masks``: the names
    of the masks the caller has (an iterable of str); when given, a ``mask:NAME``
    region naming another mask is a ParseError at its '@'.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, got {type(text).__name__}")
    if isinstance(max_concepts, bool) or not isinstance(max_concepts, int) or max_concepts < 1:
        raise InputError(f"max_concepts must be a positive integer, got {max_concepts!r}")
    if not text.strip():
        raise ParseError('empty expression: write at least one concept, e.g. "a red cube"')
    p = _Parser(text, max_concepts, None if masks is None else frozenset(masks))
    e = p.parse_or(0)
    if p.tok.kind != "end":
        raise p.unexpected()
    return e
