"""Tree edits (compdiff.expr.edit) and the fixed-decimal text form (format_expr): each edit
changes its target leaf only, and its result prints to text that parses back to it."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compdiff.errors import InputError
from compdiff.expr import (And, Concept, Expr, Leaf, Not, Or, concept_leaves, conjoin, format_expr, format_region,
                           parse, replace_leaf, set_region, set_weight, weighted)
from compdiff.expr.region import NAMED, Region

SETTINGS = settings(max_examples=200, deadline=None)

texts = st.text(alphabet=st.sampled_from(list('ab "\\:()@,.ANDORT0.5é')), min_size=1, max_size=8).filter(
    lambda s: s.strip() != "")
weights = st.one_of(st.just(1.0), st.sampled_from([0.0, -1.0, 0.5, 2.0, -0.25, 1e6]),
                    st.floats(min_value=-1e3, max_value=1e3, allow_nan=False))
coords = st.one_of(st.integers(0, 1000).map(lambda k: k / 1000),  # 3 decimals, as drawn
                   st.floats(min_value=0.0, max_value=1.0, allow_nan=False))


@st.composite
def boxes(draw) -> Region:
    x0, x1 = sorted(draw(st.lists(coords, min_size=2, max_size=2, unique=True)))
    y0, y1 = sorted(draw(st.lists(coords, min_size=2, max_size=2, unique=True)))
    return Region.box(x0, y0, x1, y1)


regions = st.one_of(st.none(), st.sampled_from(sorted(NAMED)).map(Region.named), boxes(),
                    st.sampled_from(["face", "a.b-c_1"]).map(Region.mask))
concepts = st.builds(Concept, texts, weights, regions)


def _extend(children):
    many = st.lists(children, min_size=2, max_size=4).map(tuple)
    return st.one_of(st.builds(Not, children), st.builds(And, many, weights), st.builds(Or, many, weights),
                     st.builds(weighted, children, weights))


trees = st.recursive(concepts, _extend, max_leaves=10)


def _leaf_nodes(e: Expr) -> list[Concept]:
    if isinstance(e, Concept):
        return [e]
    if isinstance(e, Not):
        return _leaf_nodes(e.child)
    return [leaf for c in e.children for leaf in _leaf_nodes(c)]


def _skeleton(e: Expr):
    """The tree with every leaf blanked: what an edit of one leaf must not change."""
    if isinstance(e, Concept):
        return "leaf"
    if isinstance(e, Not):
        return ("not", _skeleton(e.child))
    return (type(e).__name__, e.weight, tuple(_skeleton(c) for c in e.children))


def _round_trips(e: Expr) -> None:
    assert parse(str(e), max_concepts=100) == e
    assert parse(format_expr(e, box_decimals=3), max_concepts=100) == e


# ---- the leaves, in text order --------------------------------------------------------------


def test_concept_leaves_in_text_order_with_their_own_weight_and_sign():
    e = parse('"a":2 AND NOT "b" @ left AND ("c" AND NOT "d":0.5):-1 AND ("e" OR "f":3) AND "a"')
    assert concept_leaves(e) == [
        Leaf("a", 2.0, False), Leaf("b", 1.0, True, Region.named("left")), Leaf("c", 1.0, True),
        Leaf("d", 0.5, False), Leaf("e", 1.0, False), Leaf("f", 3.0, False), Leaf("a", 1.0, False)]
    assert concept_leaves(parse('"a":-2')) == [Leaf("a", -2.0, True)]  # a negative own weight counts against
    assert concept_leaves(parse('NOT NOT "x"')) == [Leaf("x", 1.0, False)]
    with pytest.raises(TypeError):
        concept_leaves('"a"')


@SETTINGS
@given(trees)
def test_concept_leaves_match_the_nodes_and_the_flat_terms(e):
    nodes = _leaf_nodes(e)
    rows = concept_leaves(e)
    assert [(r.concept, r.weight, r.region) for r in rows] == [(c.text, c.weight, c.region) for c in nodes]
    if not e.has_or():  # the sign: as Expr.leaves() multiplies weights through NOTs and groups
        signed = e.leaves()
        for row, term in zip(rows, signed):
            if term.weight != 0.0:
                assert row.negated == (term.weight < 0)


# ---- replace a leaf, set its weight, set or clear its region --------------------------------


def test_set_weight_and_region_change_only_the_chosen_leaf():
    e = parse('("a" OR "b") AND NOT "c" AND "a" @ left')
    assert set_weight(e, 1, 2.5) == parse('("a" OR "b":2.5) AND NOT "c" AND "a" @ left')
    assert set_weight(e, 3, 0.5) == parse('("a" OR "b") AND NOT "c" AND "a":0.5 @ left')  # region kept
    box = Region.box(0.1, 0.2, 0.5, 0.9)
    assert set_region(e, 2, box) == parse('("a" OR "b") AND NOT "c" @ (0.1, 0.2, 0.5, 0.9) AND "a" @ left')
    assert set_region(e, 0, "top") == parse('("a" @ top OR "b") AND NOT "c" AND "a" @ left')  # the twin stays
    assert set_region(e, 3, None) == parse('("a" OR "b") AND NOT "c" AND "a"')
    assert set_region(parse('"a":2 @ right'), 0, (0.0, 0.0, 0.5, 0.5)) == parse('"a":2 @ (0, 0, 0.5, 0.5)')
    assert replace_leaf(e, 2, Concept("z", 3.0)) == parse('("a" OR "b") AND NOT "z":3 AND "a" @ left')
    assert replace_leaf(e, 0, lambda c: Or((c, Concept("q")))) == \
        parse('(("a" OR "q") OR "b") AND NOT "c" AND "a" @ left')  # a nested OR keeps its grouping


def test_edits_refuse_bad_indexes_and_values():
    e = parse('"a" AND "b"')
    for bad in (2, -1, 10**9):
        with pytest.raises(IndexError, match="no concept leaf"):
            set_weight(e, bad, 1.0)
    for bad in (True, 0.0, "0", None):
        with pytest.raises(TypeError):
            set_region(e, bad, "left")
    with pytest.raises(InputError):
        set_weight(e, 0, float("nan"))
    with pytest.raises(InputError):
        set_weight(e, 0, 1e7)
    with pytest.raises(InputError):
        set_region(e, 0, (0.5, 0.0, 0.2, 1.0))  # an empty box
    with pytest.raises(TypeError):
        replace_leaf(e, 0, "c")
    with pytest.raises(InputError):  # an unweighted And cannot be the only child of a weighted group
        replace_leaf(And((Concept("a"),), 2.0), 0, And((Concept("x"), Concept("y"))))


@SETTINGS
@given(trees, st.data())
def test_an_edit_touches_only_its_target_and_round_trips(e, data):
    nodes = _leaf_nodes(e)
    i = data.draw(st.integers(0, len(nodes) - 1))
    w = data.draw(weights)
    r = data.draw(regions)
    for edited, expect in [(set_weight(e, i, w), Concept(nodes[i].text, w, nodes[i].region)),
                           (set_region(e, i, r), Concept(nodes[i].text, nodes[i].weight, r)),
                           (replace_leaf(e, i, Concept("new", 2.0)), Concept("new", 2.0))]:
        after = _leaf_nodes(edited)
        assert after[i] == expect
        assert [c for k, c in enumerate(after) if k != i] == [c for k, c in enumerate(nodes) if k != i]
        assert _skeleton(edited) == _skeleton(e)  # the same tree around the leaf
        for k, c in enumerate(after):  # every other leaf is the very same object
            assert k == i or c is nodes[k]
        _round_trips(edited)
    assert set_weight(e, i, nodes[i].weight) == e  # setting what it has changes nothing
    assert set_region(e, i, nodes[i].region) == e


# ---- AND a term to an expression --------------------------------------------------------------


def test_conjoin_appends_to_a_top_and_and_wraps_anything_else():
    c = Concept("c")
    assert conjoin(parse('"a" AND "b"'), c) == parse('"a" AND "b" AND "c"')
    assert conjoin(parse('"a"'), Not(c)) == parse('"a" AND NOT "c"')
    assert conjoin(parse('"a" OR "b"'), c) == parse('("a" OR "b") AND "c"')  # c joins every clause
    assert conjoin(parse('("a" AND "b"):2'), c) == parse('("a" AND "b"):2 AND "c"')
    assert conjoin(parse('NOT "a"'), c) == parse('NOT "a" AND "c"')
    assert conjoin(parse('"a"'), parse('"x" OR "y"')) == parse('"a" AND ("x" OR "y")')
    with pytest.raises(TypeError):
        conjoin(parse('"a"'), "c")


@SETTINGS
@given(trees, concepts, st.booleans())
def test_conjoin_is_the_tree_of_the_joined_text(e, c, negate):
    other = Not(c) if negate else c
    text = str(e)
    joined = f"({text}) AND {other}" if isinstance(e, Or) else f"{text} AND {other}"
    assert parse(joined, max_concepts=100) == conjoin(e, other)
    _round_trips(conjoin(e, other))
    assert _leaf_nodes(conjoin(e, other)) == [*_leaf_nodes(e), c]


# ---- the fixed-decimal text --------------------------------------------------------------------


def test_format_region_uses_fixed_decimals_only_where_exact():
    assert format_region(Region.box(0.1, 0.2, 0.5, 0.9)) == "(0.100, 0.200, 0.500, 0.900)"
    assert format_region(Region.box(0.1234, 0.2, 0.5, 0.9)) == "(0.1234, 0.2, 0.5, 0.9)"  # not exact: its digits
    assert format_region(Region.box(0.1234, 0.2, 0.5, 0.9), 4) == "(0.1234, 0.2000, 0.5000, 0.9000)"
    assert format_region(Region.box(-0.0, 0, 1, 1)) == "(0.000, 0.000, 1.000, 1.000)"
    assert format_region(Region.named("top-left")) == "top-left" and format_region(Region.mask("face")) == "mask:face"
    with pytest.raises(ValueError):
        format_region(Region.named("left"), -1)


def test_format_expr_rewrites_boxes_not_quoted_text():
    e = parse('"x @ (0.1, 0.2, 0.3, 0.4)" @ (0.5, 0, 1, 1) AND NOT "b":2 @ left')
    assert format_expr(e) == str(e)
    assert format_expr(e, box_decimals=3) == \
        '"x @ (0.1, 0.2, 0.3, 0.4)" @ (0.500, 0.000, 1.000, 1.000) AND NOT "b":2.0 @ left'


@SETTINGS
@given(trees)
def test_format_expr_parses_back(e):
    _round_trips(e)
    if not any(c.region is not None and c.region.kind == "box" for c in _leaf_nodes(e)):
        assert format_expr(e, box_decimals=3) == str(e)  # without boxes: the canonical text itself
