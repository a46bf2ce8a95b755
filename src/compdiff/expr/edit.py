"""Edits of an expression tree, leaf by leaf: what a front end does when a slider moves, a box
is drawn or a click adds a concept. Pure Python.

Concept leaves are numbered 0, 1, ... in text order (left to right, OR included), the order of
:func:`concept_leaves`. Each edit returns a new tree and leaves every other node as it was; the
edited tree prints (``str`` or ``format_expr``) to text that parses back to it. Write the text
back from the tree, never by rewriting ``str(expr)``: quoted concept text may look like any
syntax (``"x @ (0.1, 0.2, 0.3, 0.4)"``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Union

from compdiff.expr.region import Region, as_region
from compdiff.expr.tree import And, Concept, Expr, Not, Or


@dataclass(frozen=True)
class Leaf:
    """One concept leaf of a tree: its text, its own ``:w``, whether it counts against the image
    (an odd number of NOTs above it, or a negative product of weights) and its region (None: the
    whole image)."""

    concept: str
    weight: float
    negated: bool
    region: Region | None = None


def concept_leaves(expr: Expr) -> list[Leaf]:
    """The concept leaves of ``expr`` in text order. Unlike ``Expr.leaves()`` this works on
    trees with OR, and gives each leaf's own weight (not the product through its groups)."""
    out: list[Leaf] = []

    def walk(e: Expr, sign: float) -> None:
        if isinstance(e, Concept):
            out.append(Leaf(e.text, e.weight, sign * e.weight < 0, e.region))
        elif isinstance(e, Not):
            walk(e.child, -sign)
        else:  # And / Or: a negative group weight flips its children
            assert isinstance(e, (And, Or))
            for c in e.children:
                walk(c, -sign if e.weight < 0 else sign)

    _check_expr(expr)
    walk(expr, 1.0)
    return out


def replace_leaf(expr: Expr, index: int, new: Union[Expr, Callable[[Concept], Expr]]) -> Expr:
    """``expr`` with concept leaf ``index`` replaced by ``new``, or by ``new(leaf)`` when ``new``
    is a function of the old leaf. The new node must fit where the leaf was (the node
    constructors check it: e.g. an unweighted And cannot be the one child of a weighted group).
    IndexError unless 0 <= index < the number of leaves; TypeError for an index not an int."""
    _check_index(expr, index)
    counter = [0]

    def walk(e: Expr) -> Expr:
        if isinstance(e, Concept):
            i = counter[0]
            counter[0] += 1
            if i != index:
                return e
            node = new(e) if callable(new) else new
            if not isinstance(node, Expr):
                raise TypeError(f"a leaf is replaced by an Expr node, got {node!r}")
            return node
        if isinstance(e, Not):
            child = walk(e.child)
            return e if child is e.child else Not(child)
        assert isinstance(e, (And, Or))
        children = tuple(walk(c) for c in e.children)
        if all(a is b for a, b in zip(children, e.children)):
            return e  # untouched subtrees stay the same objects
        return type(e)(children, e.weight)

    return walk(expr)


def set_weight(expr: Expr, index: int, weight: float) -> Expr:
    """``expr`` with concept leaf ``index``'s own weight set to ``weight`` (its region kept).
    A weight is checked as ``Concept`` checks it (finite, at most ``MAX_WEIGHT``)."""
    return replace_leaf(expr, index, lambda c: replace(c, weight=weight))


def set_region(expr: Expr, index: int, region: "Region | str | tuple | None") -> Expr:
    """``expr`` with concept leaf ``index``'s region set to ``region`` (a Region, a name or a
    box, as ``as_region`` reads it), replacing the region it had; None removes it. The leaf's
    weight is kept."""
    r = as_region(region)
    return replace_leaf(expr, index, lambda c: replace(c, region=r))


def conjoin(expr: Expr, other: Expr) -> Expr:
    """``expr AND other``: ``other`` joins a top-level unweighted And as its last child, and is
    ANDed with anything else as a whole (an OR then keeps its clauses: ``(a OR b) AND c``). This
    is the tree of the text ``(expr) AND other`` (parentheses where ``expr`` is an OR)."""
    _check_expr(expr)
    _check_expr(other)
    if isinstance(expr, And) and expr.weight == 1.0:
        return And((*expr.children, other))
    return And((expr, other))


def _check_expr(expr: object) -> None:
    if not isinstance(expr, Expr):
        raise TypeError(f"expected an Expr node, got {expr!r}")


def _check_index(expr: Expr, index: object) -> None:
    if isinstance(index, bool) or not isinstance(index, int):
        raise TypeError(f"a leaf index is an int, got {index!r}")
    n = len(concept_leaves(expr))
    if not 0 <= index < n:
        raise IndexError(f"no concept leaf {index}: the expression has {n} (numbered 0..{n - 1})")


__all__ = ["Leaf", "concept_leaves", "conjoin", "replace_leaf", "set_region", "set_weight"]
