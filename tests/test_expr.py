"""Concrete cases for the concept-expression grammar, its tree and its terms."""
import re

import pytest

from compdiff.errors import InputError, ParseError
from compdiff.expr import (
    MAX_DEPTH,
    And,
    Concept,
    Not,
    Or,
    Term,
    parse,
    quote,
    weighted,
)

A, B, C = Concept("a"), Concept("b"), Concept("c")


def perr(text, **kw) -> str:
    with pytest.raises(ParseError) as info:
        parse(text, **kw)
    return str(info.value)


def column(msg: str) -> int:
    return int(re.search(r"at column (\d+)", msg).group(1))


def caret_col(msg: str) -> int:
    """1-based column the caret points at (text line and caret line both
    indented by two spaces)."""
    return msg.splitlines()[-1].index("^") - 2 + 1


# ----------------------------------------------------------------- concepts


def test_quoted_and_bare_concepts():
    assert parse('"a red cube"') == Concept("a red cube")
    assert parse("a red cube") == Concept("a red cube")
    assert parse("  a \t red\n cube  ") == Concept("a red cube")
    assert parse('"  a   red cube "') == Concept("a red cube")  # same identity


def test_bare_text_characters():
    assert parse("x-ray, 3.5 mm_lens") == Concept("x-ray, 3.5 mm_lens")
    assert parse("Straße café 日本") == Concept("Straße café 日本")
    for bad, ch in [("salt & pepper", "&"), ("it's", "'"), ("wow!", "!"), ("a/b", "/")]:
        msg = perr(bad)
        assert repr(ch) in msg and "quote the concept" in msg
        assert column(msg) == bad.index(ch) + 1 == caret_col(msg)
    assert '"salt & pepper"' in perr("salt & pepper")


def test_quoted_escapes_and_any_character():
    assert parse(r'"say \"hi\""') == Concept('say "hi"')
    assert parse(r'"back\\slash"') == Concept("back\\slash")
    assert parse(r'"C:\dir"') == Concept("C:\\dir")  # other escapes kept as is
    assert parse('"(0.3, 0.5) & AND : OR!"') == Concept("(0.3, 0.5) & AND : OR!")


def test_keywords_are_upper_case_whole_words():
    assert parse("ANDROID") == Concept("ANDROID")
    assert parse("salt and pepper") == Concept("salt and pepper")
    assert parse("NOTE OR ORANGE") == Or((Concept("NOTE"), Concept("ORANGE")))
    assert parse("ANDROID AND salt and pepper") == And(
        (Concept("ANDROID"), Concept("salt and pepper"))
    )
    msg = perr("a AND, b")
    assert "AND," in msg and column(msg) == 3


# ----------------------------------------------------------------- operators


def test_and_not_or_and_precedence():
    assert parse("a AND b AND c") == And((A, B, C))
    assert parse("NOT a") == Not(A)
    assert parse("NOT NOT a") == Not(Not(A))
    assert parse("a AND NOT b") == And((A, Not(B)))
    # AND binds tighter than OR
    assert parse("a AND b OR c") == Or((And((A, B)), C))
    assert parse("a OR b AND c") == Or((A, And((B, C))))
    # NOT binds tighter than AND
    assert parse("NOT a AND b") == And((Not(A), B))


def test_parentheses_keep_grouping_but_leave_no_trace_when_redundant():
    assert parse("a AND (b AND c)") == And((A, And((B, C))))
    assert parse("(a AND b) AND c") == And((And((A, B)), C))
    assert parse("(a OR b) AND c") == And((Or((A, B)), C))
    assert parse("((a))") == A
    assert parse("((a AND b))") == And((A, B))
    assert parse("NOT (a AND b)") == Not(And((A, B)))


# ----------------------------------------------------------------- weights


def test_weights_after_quoted_concepts_and_groups():
    assert parse('"a":1.5') == Concept("a", 1.5)
    assert parse('"a" :1.5') == Concept("a", 1.5)
    assert parse('"a":-0.5') == Concept("a", -0.5)
    assert parse('"a":+2') == Concept("a", 2.0)
    assert parse('"a":.5') == Concept("a", 0.5)
    assert parse('"a":1e-3') == Concept("a", 1e-3)
    assert parse('"a":2.') == Concept("a", 2.0)
    assert parse('"a":1') == A
    assert parse("(a AND b):2") == And((A, B), 2.0)
    assert parse("(a AND b) :2") == And((A, B), 2.0)
    assert parse("(a OR b):2") == Or((A, B), 2.0)


def test_group_weight_representation():
    # a weight after ')' on anything but an unweighted And/Or: a one-child And
    assert parse("(a):2") == And((A,), 2.0)
    assert parse("(NOT a):2") == And((Not(A),), 2.0)
    assert parse('("a":3):2') == And((Concept("a", 3.0),), 2.0)
    assert parse("((a AND b):3):2") == And((And((A, B), 3.0),), 2.0)
    assert parse("(a):1") == A
    assert weighted(And((A, B)), 2) == And((A, B), 2.0)
    assert weighted(Not(A), 2) == And((Not(A),), 2.0)
    assert weighted(A, 1.0) is A


def test_weight_after_not_operand_belongs_to_the_operand():
    assert parse('NOT "a":2') == Not(Concept("a", 2.0))
    assert parse("NOT a :2") == Not(Concept("a", 2.0))
    assert parse("NOT (a AND b):2") == Not(And((A, B), 2.0))


def test_bare_text_weight_needs_a_space_and_glued_colons_are_errors():
    assert parse("castle :1.2") == Concept("castle", 1.2)
    assert parse("a red castle :1.2 AND b") == And((Concept("a red castle", 1.2), B))
    msg = perr("castle:1.2")
    assert column(msg) == 7 == caret_col(msg)
    assert '"castle:1.2"' in msg and "castle :1.2" in msg
    msg = perr("a photo 16:9")
    assert column(msg) == 11 == caret_col(msg)
    assert '"a photo 16:9"' in msg
    perr("castle:")
    assert parse('"a photo 16:9"') == Concept("a photo 16:9")


@pytest.mark.parametrize("text", ['"a":', '"a": 2', '"a":x', '"a":1.5x', "(a):", ":2", "a AND :2"])
def test_bad_or_missing_weight(text):
    msg = perr(text)
    assert "weight" in msg


@pytest.mark.parametrize("text", ['"a":inf', '"a":-inf', '"a":nan', '"a":1e999', "(a):Infinity"])
def test_non_finite_weight(text):
    assert "non-finite weight" in perr(text)


def test_second_weight_is_an_error():
    assert "second weight" in perr('"a":2:3')
    assert "second weight" in perr('"a":2 :3')


# ----------------------------------------------------------------- errors


def test_error_message_shape_and_caret():
    msg = perr('"a red" AND')
    assert msg == (
        "dangling AND at column 9: expected a concept after it\n"
        '  "a red" AND\n'
        "          ^"
    )


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_input(text):
    assert "empty expression" in perr(text)


@pytest.mark.parametrize(
    "text, what, col",
    [
        ("a AND", "dangling AND", 3),
        ("AND a", "dangling AND", 1),
        ("NOT", "dangling NOT", 1),
        ("a OR", "dangling OR", 3),
        ("(a AND)", "dangling AND", 4),
        ("a AND OR b", "OR right after AND", 7),
        ('"a" "b"', "no operator", 5),
        ('"a" b', "no operator", 5),
        ("a (b)", "no operator", 3),
        ("(a) (b)", "no operator", 5),
        ("a NOT b", "NOT cannot join", 3),
        ("(a", "unclosed '('", 1),
        ("a AND (b AND (c)", "unclosed '('", 7),
        ("a)", "unmatched ')'", 2),
        (")", "unmatched ')'", 1),
        ("()", "empty parentheses", 1),
        ('""', "empty quoted concept", 1),
        ('a AND " \t "', "empty quoted concept", 7),
        ('a AND "abc', "unterminated quote", 7),
        ('"abc\\"', "unterminated quote", 1),
    ],
)
def test_errors_name_the_column(text, what, col):
    msg = perr(text)
    assert what in msg
    assert column(msg) == col == caret_col(msg)


def test_max_concepts():
    parse(" AND ".join(f'"c{i}"' for i in range(32)))
    msg = perr(" AND ".join(f'"c{i}"' for i in range(33)))
    assert "at most 32 concepts" in msg and "parse(text, max_concepts=N)" in msg
    # --max-concepts exists only on `compdiff explain`; the hint must not
    # suggest it for every command (sample has no such option)
    assert "--max-concepts N to 'compdiff explain'" in msg
    assert "'compdiff sample' has no such option" in msg
    assert "on the command line" not in msg
    # counted before merging
    assert "max_concepts" in perr("a AND a AND a", max_concepts=2)
    assert parse("a AND a", max_concepts=2).terms() == [Term("a", 2.0)]
    with pytest.raises(InputError):
        parse("a", max_concepts=0)


def test_deep_nesting_is_a_parse_error():
    ok = "(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH
    assert parse(ok) == A
    assert "nesting too deep" in perr("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    assert "nesting too deep" in perr("(" * 5000)
    assert "nesting too deep" in perr("NOT " * 5000 + "a")
    assert "nesting too deep" in perr("(NOT " * 60 + "a" + ")" * 60)


def test_long_text_is_windowed_around_the_error():
    text = "a AND " * 20 + "b & c" + " AND d" * 20
    msg = perr(text, max_concepts=100)
    lines = msg.splitlines()
    assert len(lines[1]) < 90 and lines[1].strip().startswith("...")
    assert lines[1][lines[2].index("^")] == "&"


# ----------------------------------------------------------------- terms


def test_terms_multiply_negate_and_merge():
    e = parse('"a red cube" AND "a blue sphere":1.5 AND NOT "metal"')
    assert e.terms() == [Term("a red cube", 1.0), Term("a blue sphere", 1.5), Term("metal", -1.0)]
    assert parse("(a AND NOT b :2):3").terms() == [Term("a", 3.0), Term("b", -6.0)]
    assert parse("NOT (a AND NOT b)").terms() == [Term("a", -1.0), Term("b", 1.0)]
    assert parse("(NOT a):2").terms() == [Term("a", -2.0)]
    assert parse("NOT NOT a :0.5").terms() == [Term("a", 0.5)]
    # merging in order of first appearance, by exact normalised text
    assert parse('b AND a AND NOT "b":0.25 AND "a  "').terms() == [
        Term("b", 0.75),
        Term("a", 2.0),
    ]
    assert parse("A AND a").terms() == [Term("A", 1.0), Term("a", 1.0)]
    # a merged weight of 0 stays a term
    t = parse("a AND NOT a").terms()
    assert t == [Term("a", 0.0)] and str(t[0].weight) == "0.0"
    assert parse("a AND NOT a AND b").leaves() == [Term("a", 1.0), Term("a", -1.0), Term("b", 1.0)]


def test_weights_are_bounded_and_terms_overflow_is_an_input_error():
    # one weight: |w| <= MAX_WEIGHT, in the grammar and in the nodes
    for text, col in [('("a":1e200):1e200', 6), ('"a":1e308 OR "b":1e308', 5), ('"a":-1000000.5', 5)]:
        msg = perr(text)
        assert "out of range" in msg and "[-1e6, 1e6]" in msg and column(msg) == col == caret_col(msg)
    assert parse('"a":1e6 AND "b":-1e6').terms() == [Term("a", 1e6), Term("b", -1e6)]
    with pytest.raises(InputError, match="1000000"):
        Concept("a", 1e7)
    with pytest.raises(InputError, match="1000000"):
        weighted(A, -2e6)
    # products through nested groups can still overflow: an InputError when merged
    deep = '"a"' + "".join(":1e6)" for _ in range(60))
    with pytest.raises(InputError, match="non-finite"):
        parse("(" * 60 + deep).terms()
    # merging is exactly rounded: 1 + 1e16 - 1e16 is 1, not 0
    big = '(("a":1e6):1e6):1e4'
    assert parse(f'a AND {big} AND NOT {big}').terms() == [Term("a", 1.0)]


def test_or_parses_but_terms_raise():
    e = parse("a OR b AND NOT c")
    assert e == Or((A, And((B, Not(C)))))
    assert e.has_or() and not parse("a AND NOT b").has_or()
    assert parse("NOT (a OR b)").has_or()
    with pytest.raises(InputError, match="use expr.clauses") as info:
        e.terms()
    assert "not supported" not in str(info.value) and "mixture of AND clauses" in str(info.value)
    with pytest.raises(InputError, match="use expr.clauses"):
        e.leaves()


# ----------------------------------------------------------------- printing


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("a red cube", '"a red cube"'),
        ('"a":1.0 AND b :2', '"a" AND "b":2.0'),
        ("a AND (b AND c)", '"a" AND ("b" AND "c")'),
        ("((a AND b)) AND c", '("a" AND "b") AND "c"'),
        ("a AND b OR c", '"a" AND "b" OR "c"'),
        ("(a OR b) AND c", '("a" OR "b") AND "c"'),
        ("a OR (b OR c)", '"a" OR ("b" OR "c")'),
        ("NOT (a AND b)", 'NOT ("a" AND "b")'),
        ("NOT (a AND b):2", 'NOT ("a" AND "b"):2.0'),
        ("(NOT a):2", '(NOT "a"):2.0'),
        ("(a):-0.5", '("a"):-0.5'),
        ("NOT NOT a :1e-5", 'NOT NOT "a":1e-05'),
        (r'"q\"\\"', r'"q\"\\"'),
    ],
)
def test_canonical_str(text, canonical):
    e = parse(text)
    assert str(e) == canonical
    assert parse(str(e)) == e


def test_quote():
    assert quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'


def test_pretty():
    e = parse('"a red cube" AND ("a blue sphere" AND NOT metal):1.5 AND (NOT b):2')
    assert e.pretty() == "\n".join(
        [
            "AND",
            '  "a red cube"',
            "  AND (weight 1.5)",
            '    "a blue sphere"',
            "    NOT",
            '      "metal"',
            "  GROUP (weight 2.0)",
            "    NOT",
            '      "b"',
        ]
    )


# ----------------------------------------------------------------- nodes


def test_nodes_are_frozen_hashable_and_validated():
    assert Concept(" a  b ") == Concept("a b") and hash(Concept("a")) == hash(A)
    with pytest.raises(Exception):
        A.text = "b"  # frozen
    assert And([A, B]).children == (A, B)
    assert And((A, B)) != Or((A, B))
    with pytest.raises(InputError):
        Concept("  ")
    with pytest.raises(InputError):
        Concept("a", float("nan"))
    with pytest.raises(TypeError):
        Concept("a", "2")
    with pytest.raises(InputError):
        And(())
    with pytest.raises(InputError):
        And((A,))  # a one-child And needs a weight
    with pytest.raises(InputError):
        Or((A,), 2.0)
    with pytest.raises(InputError):
        And((And((A, B)),), 2.0)  # use weighted()
    with pytest.raises(TypeError):
        Not("a")


def test_parse_rejects_non_strings():
    with pytest.raises(TypeError):
        parse(None)  # type: ignore[arg-type]


# ----------------------------------------------------------------- clauses (DNF of OR)

from compdiff.expr import Clause  # noqa: E402


def _cl(text):
    return [(round(c.weight, 12), list(c.terms)) for c in parse(text).clauses()]


def test_clauses_of_an_and_not_expression_is_its_terms():
    e = parse('a AND "b":2 AND NOT (c AND a :0.5)')
    assert e.clauses() == [Clause(1.0, tuple(e.terms()))]


def test_clauses_distributivity_and_mixture_weights():
    assert _cl("a OR b") == [(0.5, [Term("a", 1.0)]), (0.5, [Term("b", 1.0)])]
    # a weight on an OR operand is its mixture weight, not a guidance weight
    assert _cl('"a":3 OR b') == [(0.75, [Term("a", 1.0)]), (0.25, [Term("b", 1.0)])]
    # AND distributes over OR, pi multiply
    assert _cl("(a OR b :3) AND c") == [(0.25, [Term("a", 1.0), Term("c", 1.0)]),
                                         (0.75, [Term("b", 1.0), Term("c", 1.0)])]
    assert parse("(a OR b) AND (c OR d)").clauses() == parse(
        "(a AND c) OR (a AND d) OR (b AND c) OR (b AND d)").clauses()
    assert parse("a AND (b OR c)").clauses() == parse("(a AND b) OR (a AND c)").clauses()
    # nested OR is a mixture of mixtures
    assert [c.weight for c in parse("a OR (b OR c)").clauses()] == [0.5, 0.25, 0.25]
    # a group weight outside OR scales guidance in every clause
    assert _cl("(a OR b):2 AND NOT c") == [(0.5, [Term("a", 2.0), Term("c", -1.0)]),
                                           (0.5, [Term("b", 2.0), Term("c", -1.0)])]


def test_clauses_push_not_onto_concepts_and_merge():
    assert _cl("(a OR b) AND NOT (c AND d :2)") == [
        (0.5, [Term("a", 1.0), Term("c", -1.0), Term("d", -2.0)]),
        (0.5, [Term("b", 1.0), Term("c", -1.0), Term("d", -2.0)])]
    assert _cl("(a OR b) AND NOT a") == [(0.5, [Term("a", 0.0)]), (0.5, [Term("b", 1.0), Term("a", -1.0)])]
    assert _cl("a OR a") == [(1.0, [Term("a", 1.0)])]  # equal clauses merge, pi added
    assert _cl("(a AND b) OR (b AND a) OR c") == [(round(2 / 3, 12), [Term("a", 1.0), Term("b", 1.0)]),
                                                 (round(1 / 3, 12), [Term("c", 1.0)])]


@pytest.mark.parametrize("text, message", [
    ("NOT (a OR b)", "NOT of an expression with OR"),
    ("NOT (a AND (b OR c))", "NOT of an expression with OR"),
    ('"a":-1 OR b', "mixture weights"),
    ('"a":0 OR "b":0', "mixture weights"),
])
def test_clauses_refusals(text, message):
    with pytest.raises(InputError, match=message):
        parse(text).clauses()


def test_clauses_limit():
    e = parse(" AND ".join(f"(x{i} OR y{i})" for i in range(9)), max_concepts=100)
    with pytest.raises(InputError, match="more than 256"):
        e.clauses()
    assert len(e.clauses(max_clauses=512)) == 512
