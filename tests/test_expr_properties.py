"""Property tests: printing round-trips, and no string makes parse() fail with
anything but ParseError."""
import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from compdiff.errors import ParseError
from compdiff.expr import And, Concept, Expr, Not, Or, normalize_text, parse, weighted

SETTINGS = settings(max_examples=300, deadline=None)

# concept texts that stress quoting: quotes, backslashes, keywords, colons,
# parentheses, unicode, odd whitespace
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from(list('"\\:() \t\nANDORTa1.,-é日\u0301')),
        st.characters(blacklist_categories=("Cs", "Cc")),  # control characters are refused
    ),
    min_size=1,
    max_size=12,
).filter(lambda s: normalize_text(s) != "")

weights = st.one_of(
    st.just(1.0),
    st.sampled_from([0.0, -0.0, -1.0, 0.5, 2.0, -0.5, 1e-3, 1e6, -1e6, 1.5e-300]),  # |w| <= MAX_WEIGHT
    st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
)

concepts = st.builds(Concept, texts, weights)


def _extend(children: st.SearchStrategy[Expr], with_or: bool = True) -> st.SearchStrategy[Expr]:
    many = st.lists(children, min_size=2, max_size=4).map(tuple)
    options = [
        st.builds(Not, children),
        st.builds(And, many, weights),
        st.builds(weighted, children, weights),  # (e):w groups
    ]
    if with_or:
        options.append(st.builds(Or, many, weights))
    return st.one_of(options)


trees = st.recursive(concepts, _extend, max_leaves=12)
and_not_trees = st.recursive(concepts, lambda c: _extend(c, with_or=False), max_leaves=12)


@SETTINGS
@given(trees)
def test_str_parses_back_to_an_equal_tree(e):
    text = str(e)
    back = parse(text, max_concepts=100)
    assert back == e
    assert str(back) == text


@SETTINGS
@given(and_not_trees)
def test_terms_survive_printing_and_merge_leaves(e):
    terms = parse(str(e), max_concepts=100).terms()
    assert terms == e.terms()
    assert [t.concept for t in terms] == list(dict.fromkeys(t.concept for t in e.leaves()))
    for t in terms:  # merged with an exactly rounded sum
        assert t.weight == math.fsum(x.weight for x in e.leaves() if x.concept == t.concept)


def _check_parse(text: str) -> None:
    try:
        e = parse(text)
    except ParseError as err:
        msg = str(err)
        if not msg.startswith("empty expression"):
            col = int(re.search(r"at column (\d+)", msg).group(1))
            assert 1 <= col <= len(text) + 1
            assert msg.splitlines()[-1].rstrip().endswith("^")
        return
    assert isinstance(e, Expr)
    assert parse(str(e)) == e  # whatever parses also round-trips


@SETTINGS
@given(st.text(max_size=40))
def test_any_text_gives_expr_or_parse_error(text):
    _check_parse(text)


grammar_tokens = st.sampled_from(
    ["AND", "NOT", "OR", "(", ")", ":", '"', "\\", " ", " ", "a", "red cube",
     "1.5", "-2", "e3", ".", ",", "16:9", ":1.2", '"x"', "é", "\n", "inf",
     "nan", "ANDROID", "and", "&", "'", ":-", "1e999"]
)


@SETTINGS
@given(st.lists(grammar_tokens, max_size=14).map("".join))
def test_grammar_soup_gives_expr_or_parse_error(text):
    _check_parse(text)


@SETTINGS
@given(st.lists(grammar_tokens, max_size=14).map(" ".join))
def test_spaced_grammar_soup_gives_expr_or_parse_error(text):
    _check_parse(text)
