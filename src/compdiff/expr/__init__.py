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
    *Quoted*: ``"a red cube"``; any character but the control characters
    below, ``\\"`` is a quote and ``\\\\``
    a backslash (a backslash before any other character is kept as it is).
    *Bare*: a run of words made of letters (any script), digits, ``_``,
    ``,``, ``.``, ``-``, separated by whitespace and ending at a keyword, a
    parenthesis, a quote or a weight: ``a red cube AND NOT metal``. Any other
    character in bare text is an error that says to quote the concept.
    Concept text is normalised (whitespace runs collapse to one space, ends
    stripped), quoted or not; that normalised text is the concept's identity,
    so ``"a  red cube"`` and ``a red cube`` are the same concept. Control
    characters (other than whitespace) and lone surrogates (bytes that were not
    UTF-8) are errors anywhere, quoted or not.

Keywords
    ``AND``, ``NOT``, ``OR``: upper case, whole words only. ``ANDROID`` and
    ``salt and pepper`` are concepts; ``AND,`` (a keyword glued to
    punctuation) is an error rather than a guess.

Weights
    ``:1.5`` (signed, optional exponent: ``:-0.5``, ``:+2``, ``:.5``,
    ``:1e-3``; finite, ``|w| <= MAX_WEIGHT`` = 1e6, also for nodes built in
    Python) directly after a quoted concept or a ``)``, with or
    without whitespace before the colon. After *bare* text the weight must be
    separated by whitespace (``castle :1.2``): a colon glued to bare text
    (``castle:1.2``, ``a photo 16:9``) is an error, never a weight, because
    silently reading ``16:9`` as "a photo 16" with weight 9 is exactly the
    misparse other prompt syntaxes make.

Errors
    ``parse`` raises ``ParseError`` (only that, for any string): three lines,
    the complete message first (``dangling AND at column 9: expected a concept
    after it``), then a window of at most 72 characters of the text (``...``
    where cut; non-printable characters escaped, e.g. ``\\x1b``) and a caret
    under the bad character. Messages echo user text only escaped and capped
    (``compdiff.expr.display``), so no input reaches a terminal raw.

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
same signed weights before merging. An expression with OR is a mixture of AND
clauses, not one list of terms: ``terms()`` and ``leaves()`` raise ``InputError``
when ``has_or()``; ``clauses()`` gives its disjunctive normal form instead, and
``compose()`` samples it (each sample follows one clause, drawn with
probability pi).

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

Edits
-----
``compdiff.expr.edit``: leaf-by-leaf edits of a tree (``concept_leaves``, ``replace_leaf``,
``set_weight``, ``set_region``, ``conjoin``), leaves numbered in text order; and
``format_expr(expr, box_decimals=3)``, the canonical text with region boxes in fixed decimals.
Front ends edit the tree and print it; they never rewrite ``str(expr)``.
"""
from compdiff.expr.edit import Leaf, concept_leaves, conjoin, replace_leaf, set_region, set_weight
from compdiff.expr.parser import parse
from compdiff.expr.region import format_region
from compdiff.expr.tree import (DEFAULT_MAX_CONCEPTS, KEYWORDS, MAX_CLAUSES, MAX_DEPTH, MAX_WEIGHT, And, Clause,
                                Concept, Expr, Not, Or, Term, format_expr, normalize_text, quote, weighted)

__all__ = ["DEFAULT_MAX_CONCEPTS", "KEYWORDS", "MAX_DEPTH", "MAX_CLAUSES", "MAX_WEIGHT", "And", "Clause", "Concept",
           "Expr", "Leaf", "Not", "Or", "Term", "concept_leaves", "conjoin", "format_expr", "format_region",
           "normalize_text", "parse", "quote", "replace_leaf", "set_region", "set_weight", "weighted"]
