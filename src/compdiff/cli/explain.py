"""``compdiff explain``: show how an expression parses and how it will be weighted.

Pure text work (no model, no torch): parse, print the tree, print the flat
terms with their effective weights under the two compose rules; with OR, one
terms table per AND clause, with its mixture probability pi. The whole output
is computed before anything is printed: an error prints nothing but itself.
Every line is printed through ``compdiff.expr.display.escape``: a concept holding a control or
format character (a right-to-left override, U+202E, would reorder the rest of the line on a
terminal) shows it escaped, ``\\u202e``.
"""
from __future__ import annotations

import argparse
import math
import textwrap

from compdiff.cli import UsageError, float_in, int_in
from compdiff.compose import effective_weights
from compdiff.expr import DEFAULT_MAX_CONCEPTS, Or, parse, quote

MAX_SCALE = 100.0  # |--guidance-scale|, as in compdiff sample
MAX_CONCEPTS = 10_000  # --max-concepts

DESCRIPTION = """\
Parse a concept expression and show how it would be composed: the tree, then
one row per distinct concept with its weight w_i (weights multiplied through
groups, negated by NOT, repeats merged by adding) and its effective weight.

Grammar: concepts in double quotes ("a red cube") or as bare words (a red
cube); operators AND, NOT, OR (upper case) and parentheses; a weight :1.5
right after a quoted concept or ')', or after bare words with a space before
the colon (castle :1.2). A weight is a finite number with |w| <= 1e6
(weights multiplied through nested groups must stay finite); control
characters are refused.

OR is a mixture: the expression is expanded into AND clauses (AND
distributes over OR: ("a" OR "b") AND "c" is ("a" AND "c") OR ("b" AND "c")),
and each image follows one clause, drawn with probability pi. A weight on an
operand of OR is its mixture weight, not a guidance weight: "a":3 OR "b" gives
pi = 3/4, 1/4 (operands without a weight count 1; mixture weights must be >= 0,
not all 0); nested OR is a mixture of mixtures (a OR (b OR c): 1/2, 1/4, 1/4).
Under AND, pi ignores the clauses' normalising constants (an approximation;
explain says so). NOT of an expression with OR is an error. explain prints pi
and the terms table of each clause.

The two composition rules (--mode), with guidance scale s:
  sum   the paper's equation (Liu et al. 2022):
          eps = eps(null) + sum_i w_i * s * (eps(c_i) - eps(null))
        effective weight = w_i * s
  mean  the official code's older rule: the same sum divided by the number
        of terms with a positive weight, P:
          effective weight = w_i * s / P   (no division when P = 0)
"""

EPILOG = """\
example:
  compdiff explain '"a red cube" AND "a blue sphere":1.5 AND NOT "metal"' \\
      --guidance-scale 3
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "explain",
        help="show how an expression parses and the weight of each concept",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "expr", metavar="EXPR",
        help="the expression; quote it for the shell, e.g. '\"a\" AND NOT \"b\"'",
    )
    p.add_argument(
        "--guidance-scale", type=float_in(-MAX_SCALE, MAX_SCALE), default=1.0, metavar="S",
        help="guidance scale s that multiplies every weight, |s| <= 100 (default: 1.0 here, "
        "so effective weights equal the expression's own)",
    )
    p.add_argument(
        "--mode", choices=("sum", "mean"), default="sum",
        help="composition rule: sum (the paper's, default) or mean (divide by "
        "the number of positive terms)",
    )
    p.add_argument(
        "--max-concepts", type=int_in(1, MAX_CONCEPTS), default=DEFAULT_MAX_CONCEPTS, metavar="N",
        help=f"most concepts an expression may hold, 1..{MAX_CONCEPTS} (default: {DEFAULT_MAX_CONCEPTS})",
    )
    p.set_defaults(func=run)
    return p


def _num(x: float) -> str:
    s = f"{x:.6g}"
    return s if any(c in s for c in ".en") else s + ".0"


def _terms_table(terms: list, args: argparse.Namespace) -> list[str]:
    effective = effective_weights(terms, args.guidance_scale, args.mode)
    for t, e in zip(terms, effective):
        if not math.isfinite(e):
            raise UsageError(f"the effective weight of {_short(quote(t.concept))} overflows: weight "
                             f"{_num(t.weight)} x --guidance-scale {_num(args.guidance_scale)}; use smaller weights")
    rule = "w * s" if args.mode == "sum" else "w * s / P"
    out = [f"terms (mode {args.mode}, guidance scale s = {_num(args.guidance_scale)}, effective = {rule}):"]
    rows = [("concept", "weight", "effective")]
    rows += [(quote(t.concept), _num(t.weight), _num(e)) for t, e in zip(terms, effective)]
    widths = [max(len(r[k]) for r in rows) for k in range(3)]
    lines = [f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}" for r in rows]
    if any(t.region is not None for t in terms):  # a region column: where each term's guidance applies
        regions = ["region"] + [_region_text(t.region) for t in terms]
        lines = [f"{line}  {r}" for line, r in zip(lines, regions)]
    return out + lines


def _region_text(region) -> str:
    """A term's region for the table: the whole image, a name with its box, a box, or a mask."""
    if region is None:
        return "whole image"
    if region.kind == "named":
        return f"{region.name} {tuple(region.coords)}"
    if region.kind == "box":
        return f"box {region}"
    return f"mask {region.name!r} (supplied by the caller)"


def _short(text: str) -> str:
    from compdiff.expr.display import excerpt

    return excerpt(text, 60)


def _top_level_or(expr) -> bool:
    """An OR of plain AND-clauses at the top: the mixture is then exact."""
    return isinstance(expr, Or) and not any(child.has_or() for child in expr.children)


def run(args: argparse.Namespace) -> int:
    from compdiff.expr.display import escape

    # nothing reaches the terminal raw: control and format characters, bidi overrides (U+202E) among
    # them, which would reorder what is shown after them, are printed escaped (\u202e)
    text = "\n".join(explain_lines(args))
    print("\n".join(escape(line) for line in text.split("\n")))
    return 0


def explain_lines(args: argparse.Namespace) -> list[str]:
    """Everything explain prints, computed whole (so an error prints nothing else)."""
    expr = parse(args.expr, max_concepts=args.max_concepts)  # ParseError -> exit 2
    clauses = expr.clauses()  # NOT of an OR etc. -> InputError, exit 2
    out = [f"expression: {expr}", "tree:", textwrap.indent(expr.pretty(), "  ")]
    for i, clause in enumerate(clauses):
        if len(clauses) > 1:
            out.append(f"clause {i + 1} of {len(clauses)}, pi = {clause.weight:.6g}:")
        out += _terms_table(list(clause.terms), args)
    if len(clauses) > 1:
        out.append("note: OR is a mixture; each image follows one clause, drawn with probability pi"
                   + ("; pi ignores the clauses' normalising constants (OR under AND)"
                      if not _top_level_or(expr) else ""))
        return out
    terms = list(clauses[0].terms)
    positives = sum(1 for t in terms if t.weight > 0)
    if args.mode == "mean":
        note = f"P = {positives}" if positives else "P = 0: no division"
        out.append(f"note: {note} (terms with a positive weight)")
    if len(expr.leaves()) > len(terms):
        out.append("note: repeated concepts were merged by adding their weights")
    if any(t.weight == 0 for t in terms):
        out.append("note: a weight of 0 means the concept has no effect")
    return out
