"""The expression tree: nodes, flat terms, DNF clauses, canonical printing (see compdiff.expr)."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple

from compdiff.errors import InputError
from compdiff.expr.display import escape, excerpt, forbidden_char
from compdiff.expr.region import Region, as_region, format_region

KEYWORDS = ("AND", "NOT", "OR")
#: most parentheses + NOTs enclosing any concept (guards the recursion)
MAX_DEPTH = 100
DEFAULT_MAX_CONCEPTS = 32
#: most clauses the disjunctive normal form of one expression may have
MAX_CLAUSES = 256
#: largest |weight| of one concept or group (the parser and the nodes refuse more); products
#: through nested groups can still exceed it and are checked when terms are merged
MAX_WEIGHT = 1e6
#: characters of an expression an error message echoes
_SHOWN = 100


class Term(NamedTuple):
    """One flat weighted concept: the unit compose batches through the model. ``region``: where
    on the image its guidance applies (None: everywhere); see ``compdiff.expr.region``."""

    concept: str
    weight: float
    region: Region | None = None

    def sort_key(self) -> tuple:
        return (self.concept, self.weight, () if self.region is None else self.region.sort_key())


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
                out.append(Term(e.text, factor * e.weight, e.region))
            elif isinstance(e, Not):
                stack.append((e.child, -factor))
            else:  # And (Or excluded above)
                f = factor * e.weight
                stack.extend((c, f) for c in reversed(e.children))
        return out

    def terms(self) -> list[Term]:
        """The flat weighted terms; repeated (concept, region) pairs merged by adding their
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
            key = tuple(sorted(terms, key=Term.sort_key))
            merged[key] = merged.get(key, 0.0) + pi
        out: list[Clause] = []
        seen: set[tuple[Term, ...]] = set()
        for pi, leaves in raw:  # first-appearance order
            terms = tuple(_merge(leaves))
            key = tuple(sorted(terms, key=Term.sort_key))
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
        return _fmt(self, str)

    def _check_no_or(self) -> None:
        if self.has_or():
            raise InputError(
                "terms() and leaves() need an expression without OR: an expression "
                "with OR is a mixture of AND clauses (each sample follows one clause, "
                "drawn with probability pi), not one list of terms; use "
                "expr.clauses() for the clauses and their pi (compose() samples it)"
            )


def _merge(leaves: list[Term]) -> list[Term]:
    """Repeated concepts (the same text and region) merged by adding their weights (exactly
    rounded), in order of first appearance."""
    merged: dict[tuple[str, Region | None], list[float]] = {}
    for term in leaves:
        merged.setdefault((term.concept, term.region), []).append(term.weight)
    out = []
    for (text, region), ws in merged.items():
        try:  # fsum: exactly rounded, so a + 1e16 - 1e16 stays a
            w = math.fsum(ws)
        except (OverflowError, ValueError):
            w = math.inf
        if not math.isfinite(w):
            raise InputError(
                f"the weights of concept {excerpt(quote(text), 60)} multiply out to a "
                "non-finite value; use smaller weights"
            )
        out.append(Term(text, w + 0.0, region))  # + 0.0 turns -0.0 into 0.0
    return out


_RawClause = tuple[float, list[Term]]  # (unnormalised pi, leaves before merging)


def _dnf(e: Expr, factor: float, operand_of_or: bool, max_clauses: int) -> list[_RawClause]:
    """Clauses of ``e`` with every guidance weight multiplied by ``factor``. When
    ``e`` is an operand of OR its own weight is its mixture weight (applied by
    the caller), so it is not multiplied into the guidance weights here."""
    own = 1.0 if operand_of_or else getattr(e, "weight", 1.0)
    if isinstance(e, Concept):
        return [(1.0, [Term(e.text, factor * own, e.region)])]
    if isinstance(e, Not):
        if e.child.has_or():
            raise InputError(
                f"NOT of an expression with OR is not defined: {excerpt(str(e), _SHOWN)}; put NOT on "
                "each concept instead, e.g. NOT \"a\" AND NOT \"b\""
            )
        return [(1.0, [Term(t.concept, -factor * t.weight, t.region) for t in e.child.leaves()])]
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
            f">= 0, not all 0; got {excerpt(str(mix), 60)} in {excerpt(str(e), _SHOWN)}"
        )
    total = math.fsum(mix)  # finite: every weight is at most MAX_WEIGHT
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
        f"{excerpt(str(e), _SHOWN)} expands to more than {max_clauses} AND clauses (disjunctive normal "
        "form); simplify it or raise max_clauses"
    )


def _check_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"a weight must be a number, got {weight!r}")
    w = float(weight)
    if not math.isfinite(w):
        raise InputError(f"a weight must be finite, got {w}")
    if abs(w) > MAX_WEIGHT:
        raise InputError(f"a weight must lie in [-{MAX_WEIGHT:.0f}, {MAX_WEIGHT:.0f}], got {w!r}")
    return w


@dataclass(frozen=True)
class Concept(Expr):
    """A concept with its weight and, optionally, its region (a ``Region``, or a name or box
    that ``as_region`` reads). ``text`` is normalised on construction."""

    text: str
    weight: float = 1.0
    region: Region | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"a concept's text must be a str, got {self.text!r}")
        text = normalize_text(self.text)
        if not text:
            raise InputError("a concept's text is empty")
        bad = next((c for c in text if forbidden_char(c)), None)
        if bad is not None:
            raise InputError(f"a concept's text cannot hold the control character {escape(bad)}")
        object.__setattr__(self, "text", text)
        object.__setattr__(self, "weight", _check_weight(self.weight))
        object.__setattr__(self, "region", as_region(self.region))


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


def format_expr(expr: Expr, *, box_decimals: int | None = None) -> str:
    """The canonical text of ``expr``: ``str(expr)``, except that with ``box_decimals`` each
    region box is written with that many fixed decimals where they hold it exactly
    (``format_region``; boxes drawn on a canvas are rounded so), e.g. ``@ (0.100, 0.200, 0.500,
    0.900)``. Either way the text parses back to an equal tree."""
    if box_decimals is None:
        return _fmt(expr, str)
    return _fmt(expr, lambda r: format_region(r, box_decimals))


def _fmt(e: Expr, region: Callable[[Region], str]) -> str:
    if isinstance(e, Concept):
        return quote(e.text) + _wsuffix(e.weight) + ("" if e.region is None else f" @ {region(e.region)}")
    if isinstance(e, Not):
        return "NOT " + _operand(e.child, (And, Or), region)
    assert isinstance(e, (And, Or))
    if len(e.children) == 1:  # weighted group
        return "(" + _fmt(e.children[0], region) + ")" + _wsuffix(e.weight)
    if isinstance(e, And):
        body = " AND ".join(_operand(c, (And, Or), region) for c in e.children)
    else:
        body = " OR ".join(_operand(c, (Or,), region) for c in e.children)
    return body if e.weight == 1.0 else f"({body}){_wsuffix(e.weight)}"


def _operand(e: Expr, wrap: tuple[type, ...], region: Callable[[Region], str]) -> str:
    """``e`` printed as an operand; an unweighted And/Or of a type in ``wrap``
    gets parentheses (weighted ones print their own)."""
    s = _fmt(e, region)
    if isinstance(e, wrap) and e.weight == 1.0:  # type: ignore[union-attr]
        return f"({s})"
    return s


def _pretty(e: Expr, indent: int, lines: list[str]) -> None:
    pad = "  " * indent
    w = getattr(e, "weight", 1.0)
    suffix = "" if w == 1.0 else f" (weight {w!r})"
    if isinstance(e, Concept):
        lines.append(pad + quote(e.text) + suffix + ("" if e.region is None else f" @ {e.region}"))
    elif isinstance(e, Not):
        lines.append(pad + "NOT")
        _pretty(e.child, indent + 1, lines)
    else:
        assert isinstance(e, (And, Or))
        label = "GROUP" if len(e.children) == 1 else type(e).__name__.upper()
        lines.append(pad + label + suffix)
        for c in e.children:
            _pretty(c, indent + 1, lines)
