"""The concept algebra: text -> expression tree -> flat weighted terms.

Pure Python (layer 1): no torch, no numpy.

Grammar
-------
::

    expr    := and_expr ("OR" and_expr)*
    and_expr:= unary ("AND" unary)*
    unary   := "NOT" unary | primary
    primary := (QUOTED | BARE | "(" expr ")") [WEIGHT]

Precedence, tightest first: weight (postfix) > NOT > AND > OR. So
``NOT "a":2`` is ``NOT ("a":2)``, and ``"a" AND "b" OR "c"`` is
``("a" AND "b") OR "c"``. ``NOT NOT "a"`` is allowed (double negation).

Concepts
    *Quoted*: ``"a red cube"``; any character, ``\\"`` is a quote and ``\\\\``
    a backslash (a backslash before any other character is kept as it is).
    *Bare*: a run of words made of letters (any script), digits, ``_``,
    ``,``, ``.``, ``-``, separated by whitespace and ending at a keyword, a
    parenthesis, a quote or a weight: ``a red cube AND NOT metal``. Any other
    character in bare text is an error that says to quote the concept.
    Concept text is normalised (whitespace runs collapse to one space, ends
    stripped), quoted or not; that normalised text is the concept's identity,
    so ``"a  red cube"`` and ``a red cube`` are the same concept.

Keywords
    ``AND``, ``NOT``, ``OR``: upper case, whole words only. ``ANDROID`` and
    ``salt and pepper`` are concepts; ``AND,`` (a keyword glued to
    punctuation) is an error rather than a guess.

Weights
    ``:1.5`` (signed, optional exponent: ``:-0.5``, ``:+2``, ``:.5``,
    ``:1e-3``; finite) directly after a quoted concept or a ``)``, with or
    without whitespace before the colon. After *bare* text the weight must be
    separated by whitespace (``castle :1.2``): a colon glued to bare text
    (``castle:1.2``, ``a photo 16:9``) is an error, never a weight, because
    silently reading ``16:9`` as "a photo 16" with weight 9 is exactly the
    misparse other prompt syntaxes make.

Tree
----
Frozen dataclasses with structural equality: ``Concept(text, weight)``,
``And(children, weight)``, ``Or(children, weight)``, ``Not(child)``.

* ``a AND b AND c`` is one ``And`` with three children; parentheses keep their
  grouping (``a AND (b AND c)`` is an ``And`` inside an ``And``), so printing is
  faithful. Redundant parentheses (``(a)``, ``((a AND b))``) leave no trace.
* A weight after a concept lives on the ``Concept``. A weight after NOT's
  operand belongs to the operand: ``NOT "a":2`` is ``Not(Concept("a", 2.0))``.
* A weight after ``)`` is a *group weight* (see ``weighted``): on an
  unweighted multi-child ``And``/``Or`` it becomes that node's weight
  (``("a" AND "b"):2`` is ``And((a, b), 2.0)``); anything else (a concept, a
  ``Not``, an already weighted group) is wrapped in a one-child ``And`` that
  carries the weight: ``(NOT "a"):2`` is ``And((Not(Concept("a")),), 2.0)``
  and prints back as ``(NOT "a"):2.0``. ``Not`` has no weight of its own.
  A weight of exactly 1 is the same as no weight.
* ``str(expr)`` is a canonical text that parses back to an equal tree:
  concepts always quoted, weights (``repr(float)``) only when != 1,
  parentheses exactly where the tree needs them.

Terms
-----
``expr.terms()`` flattens the tree to ``[Term(concept, weight), ...]``:
weights multiply through groups, NOT negates (NOT of a group negates every
term inside it), and repeated concepts are merged by adding their weights (an
exactly rounded sum, ``math.fsum``), in order of first appearance. ``"a" AND "b" AND NOT "a":0.5`` gives
``[Term("a", 0.5), Term("b", 1.0)]``; a merged weight of 0 stays a term with
weight 0.0 (compose decides what to do with it). ``expr.leaves()`` gives the
same signed weights before merging. OR is parsed into the tree but cannot be
flattened to one list of terms: ``terms()`` raises ``InputError`` when ``has_or()``;
``clauses()`` gives its disjunctive normal form instead.

OR and clauses
--------------
``A OR B`` is the mixture p ∝ π_A·p(x|A) + π_B·p(x|B). ``expr.clauses()`` is
the disjunctive normal form: ``[Clause(pi, terms), ...]``, each clause an AND
(flat merged terms, exactly as ``terms()`` builds them) with its mixture
probability pi (the clauses' pi sum to 1). Rules:

* A weight on an *operand of OR* is its mixture weight, not a guidance
  weight: ``"a":3 OR "b"`` gives pi = 3/4, 1/4 and clauses ``[a:1]``, ``[b:1]``.
  Operands without a weight count 1 (equal pi). Mixture weights must be >= 0,
  not all 0. Everywhere else a weight scales guidance as in ``terms()``:
  ``("a" OR "b"):2`` at top level or under AND gives clauses ``[a:2]``, ``[b:2]``.
* Nested OR is a mixture of mixtures: ``a OR (b OR c)`` gives 1/2, 1/4, 1/4
  (while ``a OR b OR c`` gives 1/3 each).
* AND distributes over OR: ``(a OR b) AND c`` = ``(a AND c) OR (b AND c)``
  with pi multiplied: (Σ π_i p_i)(Σ π_j q_j) = Σ π_i π_j p_i q_j. The exact
  mixture weight of clause ij is π_i π_j Z_ij / Σ (Z_ij = ∫ p_i q_j, the
  clause's normalising constant); clauses() IGNORES Z_ij, an approximation.
* NOT is pushed onto concepts as in ``terms()`` (negated weights). NOT of an
  expression that contains OR is refused with ``InputError``.
* Clauses with the same merged terms are merged by adding their pi; at most
  ``MAX_CLAUSES`` clauses (the expansion is exponential in nested ORs).
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, replace
from typing import Iterator, NamedTuple

from compdiff.errors import InputError, ParseError

__all__ = [
    "DEFAULT_MAX_CONCEPTS",
    "KEYWORDS",
    "MAX_DEPTH",
    "And",
    "MAX_CLAUSES",
    "Clause",
    "Concept",
    "Expr",
    "Not",
    "Or",
    "Term",
    "normalize_text",
    "parse",
    "quote",
    "weighted",
]

KEYWORDS = ("AND", "NOT", "OR")
#: most parentheses + NOTs enclosing any concept (guards the recursion)
MAX_DEPTH = 100
DEFAULT_MAX_CONCEPTS = 32
#: most clauses the disjunctive normal form of one expression may have
MAX_CLAUSES = 256

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BARE_PUNCT = "_,.-"
_STOP = '()":'  # characters that end a bare word (besides whitespace)


class Term(NamedTuple):
    """One flat weighted concept: the unit compose batches through the model."""

    concept: str
    weight: float


class Clause(NamedTuple):
    """One AND clause of an expression's disjunctive normal form (see ``Expr.clauses``).

    weight: its mixture probability pi (the clauses of an expression sum to 1);
    terms: its flat weighted terms, merged as ``Expr.terms()`` merges them."""

    weight: float
    terms: tuple[Term, ...]


def normalize_text(text: str) -> str:
    """Concept identity: whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.split())


def quote(text: str) -> str:
    """``text`` as a quoted concept: ``a "b" \\ c`` -> ``"a \\"b\\" \\\\ c"``."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --------------------------------------------------------------------------
# the tree


class Expr:
    """Base of the expression nodes. ``str()`` is the canonical text form."""

    def has_or(self) -> bool:
        """Whether an ``Or`` node occurs anywhere in the tree."""
        stack: list[Expr] = [self]
        while stack:
            e = stack.pop()
            if isinstance(e, Or):
                return True
            if isinstance(e, And):
                stack.extend(e.children)
            elif isinstance(e, Not):
                stack.append(e.child)
        return False

    def leaves(self) -> list[Term]:
        """Every concept leaf, left to right, with its signed effective weight
        (weights multiplied through groups, negated by each enclosing NOT),
        before merging repeats. Raises ``InputError`` if the tree has OR."""
        self._check_no_or()
        out: list[Term] = []
        stack: list[tuple[Expr, float]] = [(self, 1.0)]
        while stack:
            e, factor = stack.pop()
            if isinstance(e, Concept):
                out.append(Term(e.text, factor * e.weight))
            elif isinstance(e, Not):
                stack.append((e.child, -factor))
            else:  # And (Or excluded above)
                f = factor * e.weight
                stack.extend((c, f) for c in reversed(e.children))
        return out

    def terms(self) -> list[Term]:
        """The flat weighted terms; repeated concepts merged by adding their
        weights, in order of first appearance (see the module docstring)."""
        return _merge(self.leaves())

    def clauses(self, max_clauses: int = MAX_CLAUSES) -> list[Clause]:
        """The disjunctive normal form: AND clauses with mixture probabilities
        pi summing to 1 (see "OR and clauses" in the module docstring). An
        expression without OR is one clause, ``Clause(1.0, tuple(terms()))``.
        Raises ``InputError`` for NOT of an OR, negative or all-zero mixture
        weights, or more than ``max_clauses`` clauses."""
        raw = _dnf(self, 1.0, False, max_clauses)
        total = math.fsum(pi for pi, _ in raw)
        merged: dict[tuple[Term, ...], float] = {}
        for pi, leaves in raw:
            terms = tuple(_merge(leaves))
            key = tuple(sorted(terms))
            merged[key] = merged.get(key, 0.0) + pi
        out: list[Clause] = []
        seen: set[tuple[Term, ...]] = set()
        for pi, leaves in raw:  # first-appearance order
            terms = tuple(_merge(leaves))
            key = tuple(sorted(terms))
            if key not in seen:
                seen.add(key)
                out.append(Clause(merged[key] / total, terms))
        return out

    def pretty(self) -> str:
        """An indented tree, one node per line (for ``compdiff explain``)."""
        lines: list[str] = []
        _pretty(self, 0, lines)
        return "\n".join(lines)

    def __str__(self) -> str:
        return _fmt(self)

    def _check_no_or(self) -> None:
        if self.has_or():
            raise InputError(
                "OR is not supported yet by terms() and leaves(): an expression "
                "with OR is a mixture of AND clauses, not one list of terms; use "
                "expr.clauses() (compose() samples it)"
            )


def _merge(leaves: list[Term]) -> list[Term]:
    """Repeated concepts merged by adding their weights (exactly rounded), in
    order of first appearance."""
    merged: dict[str, list[float]] = {}
    for text, w in leaves:
        merged.setdefault(text, []).append(w)
    out = []
    for text, ws in merged.items():
        try:  # fsum: exactly rounded, so a + 1e16 - 1e16 stays a
            w = math.fsum(ws)
        except (OverflowError, ValueError):
            w = math.inf
        if not math.isfinite(w):
            raise InputError(
                f"the weights of concept {quote(text)} multiply out to a "
                "non-finite value; use smaller weights"
            )
        out.append(Term(text, w + 0.0))  # + 0.0 turns -0.0 into 0.0
    return out


_RawClause = tuple[float, list[Term]]  # (unnormalised pi, leaves before merging)


def _dnf(e: Expr, factor: float, operand_of_or: bool, max_clauses: int) -> list[_RawClause]:
    """Clauses of ``e`` with every guidance weight multiplied by ``factor``. When
    ``e`` is an operand of OR its own weight is its mixture weight (applied by
    the caller), so it is not multiplied into the guidance weights here."""
    own = 1.0 if operand_of_or else getattr(e, "weight", 1.0)
    if isinstance(e, Concept):
        return [(1.0, [Term(e.text, factor * own)])]
    if isinstance(e, Not):
        if e.child.has_or():
            raise InputError(
                f"NOT of an expression with OR is not defined: {e}; put NOT on "
                "each concept instead, e.g. NOT \"a\" AND NOT \"b\""
            )
        return [(1.0, [Term(t, -factor * w) for t, w in e.child.leaves()])]
    f = factor * own
    if isinstance(e, And):
        out: list[_RawClause] = [(1.0, [])]
        for c in e.children:
            sub = _dnf(c, f, False, max_clauses)
            if len(out) * len(sub) > max_clauses:
                raise _too_many(e, max_clauses)
            out = [(p * q, a + b) for p, a in out for q, b in sub]
        return out
    assert isinstance(e, Or)
    mix = [getattr(c, "weight", 1.0) for c in e.children]
    if any(m < 0 for m in mix) or not any(m > 0 for m in mix):
        raise InputError(
            f"the weights on the operands of OR are mixture weights and must be "
            f">= 0, not all 0; got {mix} in {e}"
        )
    total = math.fsum(mix)
    out = []
    for c, m in zip(e.children, mix):
        if m == 0:
            continue
        out += [(p * m / total, leaves) for p, leaves in _dnf(c, f, True, max_clauses)]
        if len(out) > max_clauses:
            raise _too_many(e, max_clauses)
    return out


def _too_many(e: Expr, max_clauses: int) -> InputError:
    return InputError(
        f"{e} expands to more than {max_clauses} AND clauses (disjunctive normal "
        "form); simplify it or raise max_clauses"
    )


def _check_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"a weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w):
        raise InputError(f"a weight must be finite, got {w}")
    return w


@dataclass(frozen=True)
class Concept(Expr):
    """A concept with its weight. ``text`` is normalised on construction."""

    text: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"a concept's text must be a str, got {self.text!r}")
        text = normalize_text(self.text)
        if not text:
            raise InputError("a concept's text is empty")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "weight", _check_weight(self.weight))


def _check_children(node: And | Or) -> None:
    children = tuple(node.children)
    object.__setattr__(node, "children", children)
    object.__setattr__(node, "weight", _check_weight(node.weight))
    for c in children:
        if not isinstance(c, Expr):
            raise TypeError(f"children must be Expr nodes, got {c!r}")
    name = type(node).__name__
    if not children:
        raise InputError(f"{name} needs at least one child")
    if len(children) == 1:
        # A one-child And is a weighted group; these rules keep the tree in the
        # single form the parser builds, so that str() parses back to it.
        if isinstance(node, Or):
            raise InputError("Or needs at least two children")
        if node.weight == 1.0:
            raise InputError("a one-child And (a group) needs a weight != 1")
        child = children[0]
        if isinstance(child, (And, Or)) and child.weight == 1.0:
            raise InputError(
                "a group weight on an unweighted And/Or belongs on that node "
                "itself: use weighted(child, w)"
            )


@dataclass(frozen=True)
class And(Expr):
    """Conjunction (``a AND b``), or with one child a weighted group."""

    children: tuple[Expr, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_children(self)


@dataclass(frozen=True)
class Or(Expr):
    """Disjunction (``a OR b``): a mixture; see ``Expr.clauses``."""

    children: tuple[Expr, ...]
    weight: float = 1.0

    def __post_init__(self) -> None:
        _check_children(self)


@dataclass(frozen=True)
class Not(Expr):
    """Negation. It has no weight: ``(NOT a):2`` is ``And((Not(a),), 2.0)``."""

    child: Expr

    def __post_init__(self) -> None:
        if not isinstance(self.child, Expr):
            raise TypeError(f"Not's child must be an Expr node, got {self.child!r}")


def weighted(expr: Expr, weight: float) -> Expr:
    """``expr`` as a parenthesised group with a weight, i.e. ``(expr):weight``,
    in the one form the parser builds: no change for weight 1; the weight set
    on an unweighted multi-child And/Or; otherwise a one-child And."""
    w = _check_weight(weight)
    if w == 1.0:
        return expr
    if isinstance(expr, (And, Or)) and expr.weight == 1.0:
        return replace(expr, weight=w)
    return And((expr,), w)


# --------------------------------------------------------------------------
# printing


def _wsuffix(w: float) -> str:
    return "" if w == 1.0 else ":" + repr(w)


def _fmt(e: Expr) -> str:
    if isinstance(e, Concept):
        return quote(e.text) + _wsuffix(e.weight)
    if isinstance(e, Not):
        return "NOT " + _operand(e.child, (And, Or))
    assert isinstance(e, (And, Or))
    if len(e.children) == 1:  # weighted group
        return "(" + _fmt(e.children[0]) + ")" + _wsuffix(e.weight)
    if isinstance(e, And):
        body = " AND ".join(_operand(c, (And, Or)) for c in e.children)
    else:
        body = " OR ".join(_operand(c, (Or,)) for c in e.children)
    return body if e.weight == 1.0 else f"({body}){_wsuffix(e.weight)}"


def _operand(e: Expr, wrap: tuple[type, ...]) -> str:
    """``e`` printed as an operand; an unweighted And/Or of a type in ``wrap``
    gets parentheses (weighted ones print their own)."""
    s = _fmt(e)
    if isinstance(e, wrap) and e.weight == 1.0:  # type: ignore[union-attr]
        return f"({s})"
    return s


def _pretty(e: Expr, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    w = getattr(e, "weight", 1.0)
    suffix = "" if w == 1.0 else f" (weight {w!r})"
    if isinstance(e, Concept):
        lines.append(pad + quote(e.text) + suffix)
    elif isinstance(e, Not):
        lines.append(pad + "NOT")
        _pretty(e.child, indent + 1, lines)
    else:
        assert isinstance(e, (And, Or))
        label = "GROUP" if len(e.children) == 1 else type(e).__name__.upper()
        lines.append(pad + label + suffix)
        for c in e.children:
            _pretty(c, indent + 1, lines)


# --------------------------------------------------------------------------
# errors with a caret


def _width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in "WF" else 1


def _caret(text: str, pos: int, span: int = 72) -> str:
    """Two lines: (a window of) ``text`` and a caret under index ``pos``."""
    start = 0 if len(text) <= span else max(0, min(pos - span // 2, len(text) - span))
    end = min(len(text), start + span)
    shown = "".join(c if c.isprintable() else " " for c in text[start:end])
    head = "..." if start > 0 else ""
    tail = "..." if end < len(text) else ""
    offset = len(head) + sum(_width(c) for c in shown[: pos - start])
    return f"  {head}{shown}{tail}\n  {' ' * offset}^"


def _error(text: str, pos: int, what: str, hint: str) -> ParseError:
    return ParseError(f"{what} at column {pos + 1}: {hint}\n{_caret(text, pos)}")


# --------------------------------------------------------------------------
# lexer


class _Tok(NamedTuple):
    kind: str  # "(", ")", "quoted", "word", "AND", "NOT", "OR", "weight", "end"
    pos: int  # index of the first character
    end: int  # index after the last character
    value: object  # str for quoted/word, float for weight


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
        j = _word_end(text, k, stop='()"')
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
    if _NUMBER.fullmatch(raw):
        w = float(raw)
        if math.isfinite(w):
            return _Tok("weight", i, j, w)
    elif raw.lower().lstrip("+-") not in ("inf", "infinity", "nan"):
        raise _error(
            text, i + 1, f"weight ':{raw}' is not a number",
            "write a number like :1.5, :-0.5 or :1e-3 (if ':' belongs to the "
            "concept, put the concept in double quotes)",
        )
    raise _error(text, i + 1, f"non-finite weight ':{raw}'",
                 "a weight must be a finite number")


def _check_word(text: str, i: int, j: int, run_start: int) -> None:
    word = text[i:j]
    core = word.strip(_BARE_PUNCT)
    if core in KEYWORDS:
        raise _error(
            text, i, f"'{word}' is the keyword {core} glued to punctuation",
            f"put spaces around {core}, or quote the concept",
        )
    for k in range(i, j):
        if not _bare_ok(text[k]):
            example = quote(_bare_run(text, run_start))
            raise _error(
                text, k, f"character {text[k]!r} in unquoted text",
                "unquoted concepts may only hold letters, digits, spaces and "
                f"_ , . - ; quote the concept, e.g. {example}",
            )


def _glued_colon(text: str, i: int, run_start: int) -> ParseError:
    before = normalize_text(text[run_start:i])
    after = text[i + 1:_word_end(text, i + 1)]
    return _error(
        text, i, "':' glued to unquoted text",
        f"quote the concept ({quote(_bare_run(text, run_start))}), or put a "
        f"space before a weight ({before} :{after})",
    )


# --------------------------------------------------------------------------
# parser (recursive descent; depth-limited)


class _Parser:
    def __init__(self, text: str, max_concepts: int) -> None:
        self.text = text
        self.max_concepts = max_concepts
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
            return self.weight_on_concept(self.concept(t, str(t.value)))
        if t.kind == "word":
            words = []
            while self.tok.kind == "word":
                words.append(str(self.tok.value))
                self.advance()
            return self.weight_on_concept(self.concept(t, " ".join(words)))
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
                return weighted(inner, w)
            return inner
        raise self.expected_concept()

    def concept(self, tok: _Tok, text: str) -> Concept:
        self.count += 1
        if self.count > self.max_concepts:
            raise self.error(
                tok, "too many concepts",
                f"at most {self.max_concepts} are allowed (max_concepts="
                f"{self.max_concepts}); raise it with parse(..., max_concepts=N) "
                "or --max-concepts N on the command line",
            )
        return Concept(text)

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
        assert t.kind == "weight", t
        return self.error(
            t, "second weight",
            "a concept or group takes one weight; to scale a weighted one, "
            "use parentheses, e.g. (\"a\":2):1.5",
        )


def parse(text: str, max_concepts: int = DEFAULT_MAX_CONCEPTS) -> Expr:
    """Parse a concept expression such as ``"a red cube" AND NOT "metal":0.5``.

    Raises ``ParseError`` (and only that, for any string) naming the column,
    with the text and a caret under the bad place. ``max_concepts`` limits the
    number of concept leaves (counted before merging repeats).
    """
    if not isinstance(text, str):
        raise TypeError(f"parse() takes a str, got {type(text).__name__}")
    if isinstance(max_concepts, bool) or not isinstance(max_concepts, int) or max_concepts < 1:
        raise InputError(f"max_concepts must be a positive integer, got {max_concepts!r}")
    if not text.strip():
        raise ParseError('empty expression: write at least one concept, e.g. "a red cube"')
    p = _Parser(text, max_concepts)
    e = p.parse_or(0)
    if p.tok.kind != "end":
        raise p.unexpected()
    return e
