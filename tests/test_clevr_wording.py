"""CLEVR's own wording (its synonyms.json) in the relations and attributes tasks:
each synonym reads as exactly the canonical concept, ``format`` prints the
canonical text, and wrong words still get a caret and an "accepted:" list that
names the synonyms."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compdiff.errors import ParseError
from compdiff.world import COLORS, MATERIALS, SHAPES, SIZES, get_task
from compdiff.world.tasks import RELATIONS, Attribute, Desc, Relation

REL, ATT = get_task("relations"), get_task("attributes")

#: the table this feature promises, written out so a change to it shows here
WORDS = {"ball": "sphere", "block": "cube", "tiny": "small", "big": "large",
         "shiny": "metal", "metallic": "metal", "matte": "rubber"}
PHRASES = {"left of": ("left of", "to the left of", "on the left side of"),
           "right of": ("right of", "to the right of", "on the right side of"),
           "in front of": ("in front of",), "behind": ("behind",)}
KIND = {w: k for k, vocab in (("shape", SHAPES), ("color", COLORS), ("size", SIZES),
                              ("material", MATERIALS)) for w in vocab}


def caret_at(text: str, err: pytest.ExceptionInfo) -> int:
    """The 1-based column the ParseError's caret marks, after checking it quotes ``text``."""
    lines = str(err.value).split("\n")
    assert lines[1] == f"  {text}" and lines[2].strip() == "^"
    col = len(lines[2]) - 2
    assert f"at column {col}\n" in str(err.value)
    return col


# ---- attributes --------------------------------------------------------------
@pytest.mark.parametrize("word,canon", WORDS.items())
def test_attribute_synonym_is_the_canonical_concept(word, canon):
    for text in (word, f" {word.upper()} "):
        assert ATT.parse(text) == Attribute(canon) == ATT.parse(canon)
    assert ATT.format(ATT.parse(word)) == canon


@pytest.mark.parametrize("text", ["balls", "huge", "shiny cube"])
def test_attribute_unknown_words_list_the_synonyms(text):
    with pytest.raises(ParseError) as e:
        ATT.parse(text)
    assert caret_at(text, e) == 1
    for entry in ("cube (also block)", "sphere (also ball)", "small (also tiny)",
                  "large (also big)", "rubber (also matte)", "metal (also shiny, metallic)"):
        assert entry in str(e.value)


# ---- relations: words, phrasings, articles -----------------------------------
@pytest.mark.parametrize("word,canon", WORDS.items())
def test_relation_attribute_synonym_is_the_canonical_concept(word, canon):
    side = Desc(**{KIND[canon]: canon})
    got = REL.parse(f"a {word} left of the {word}")
    assert got == Relation(side, "left of", side) == REL.parse(f"a {canon} left of the {canon}")
    assert REL.format(got) == REL.format(Relation(side, "left of", side))


@pytest.mark.parametrize("rel,phrase", [(r, p) for r, ps in PHRASES.items() for p in ps])
def test_relation_phrasing_is_the_canonical_relation(rel, phrase):
    want = Relation(Desc("cube", "red"), rel, Desc("sphere", "blue"))
    text = f"a red cube {phrase} a blue sphere"
    assert REL.parse(text) == want == REL.parse(text.upper())
    assert REL.format(REL.parse(text)) == f"a red cube {rel} a blue sphere"


@pytest.mark.parametrize("first", ["a", "an", "the", ""])
@pytest.mark.parametrize("second", ["a", "an", "the", ""])
def test_relation_articles(first, second):
    text = f"{first} metal cube behind {second} sphere".strip()
    assert REL.parse(text) == Relation(Desc("cube", material="metal"), "behind", Desc("sphere"))


@pytest.mark.parametrize("text,canon", [
    ("the big shiny block to the left of the tiny matte ball",
     "a large metal cube left of a small rubber sphere"),
    ("The Tiny Metallic Ball on the right side of a big red matte block",
     "a small metal sphere right of a large red rubber cube"),
    ("a matte thing in front of the shiny object", "a rubber thing in front of a metal thing"),
    ("the gray tiny ball behind an big block", "a small gray sphere behind a large cube")])
def test_relation_combined_wording(text, canon):
    assert REL.parse(text) == REL.parse(canon)
    assert REL.format(REL.parse(text)) == canon


def _worded(d: Desc, draw) -> str:
    """``d`` in randomly chosen wording: an article or none, canonical words or synonyms."""
    words = [w for w in (d.size, d.color, d.material, d.shape) if w is not None]
    spelled = [draw(st.sampled_from([w] + [s for s, c in WORDS.items() if c == w])) for w in words]
    return " ".join([draw(st.sampled_from(["", "a", "an", "the"])), *spelled]).strip() or "thing"


_desc = st.builds(Desc, st.sampled_from((None,) + SHAPES), st.sampled_from((None,) + COLORS),
                  st.sampled_from((None,) + SIZES), st.sampled_from((None,) + MATERIALS))


@settings(max_examples=100, deadline=None)
@given(_desc, st.sampled_from(RELATIONS), _desc, st.data())
def test_relation_any_clevr_wording_parses_to_the_concept(first, rel, second, data):
    c = Relation(first, rel, second)
    phrase = data.draw(st.sampled_from(PHRASES[rel]))
    text = f"{_worded(first, data.draw)} {phrase} {_worded(second, data.draw)}"
    assert REL.parse(text) == c
    assert REL.format(REL.parse(text)) == REL.format(c)


# ---- relations: errors -------------------------------------------------------
@pytest.mark.parametrize("text,needle,col", [
    ("a huge cube left of a ball", "unknown word 'huge'", 3),
    ("a cube to the left a ball", "expected 'of' after 'to the left'", 20),
    ("a cube on the right side a ball", "expected 'of' after 'on the right side'", 26),
    ("a cube to the a ball", "expected 'left' or 'right' after 'to the'", 15),
    ("a cube in a ball", "expected 'front' after 'in'", 11),
    ("a balls left of a cube", "unknown word 'balls'", 3),
    ("a big tiny cube left of a ball", "a second size 'tiny'", 7),
    ("a shiny matte block left of a ball", "a second material 'matte'", 9),
    ("a ball block left of a cube", "'block' after the noun", 8)])
def test_relation_wrong_wording_marks_the_bad_word(text, needle, col):
    with pytest.raises(ParseError) as e:
        REL.parse(text)
    msg = str(e.value)
    assert needle in msg and caret_at(text, e) == col
    for entry in ("sphere (also ball)", "metal (also shiny, metallic)",
                  "left of (also to the left of, on the left side of)",
                  "right of (also to the right of, on the right side of)", "[a|an|the]"):
        assert entry in msg
