"""The three concept languages: holds on hand-built scenes, parse/format
round-trips, tensor forms, ParseError messages, encoders, the registry."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compdiff.denoiser import ConceptEncoder
from compdiff.errors import InputError, ParseError
from compdiff.world import COLORS, MATERIALS, SHAPES, SIZES, Obj, Scene, get_task, sample_scenes
from compdiff.world.tasks import (MARGIN, RADIUS, RELATIONS, VOCAB, Attribute, Desc, Position,
                                  Relation)

OBJ, REL, ATT = get_task("objects"), get_task("relations"), get_task("attributes")


def o(shape="cube", color="red", size="small", material="rubber", x=0.5, y=0.5):
    return Obj(shape, color, size, material, x, y)


# ---- objects -----------------------------------------------------------------
def test_objects_holds_within_radius():
    sc = Scene((o(x=0.30, y=0.60), o(x=0.70, y=0.20)))
    assert OBJ.holds(Position(0.30, 0.60), sc)
    assert OBJ.holds(Position(0.30 + RADIUS * 0.99, 0.60), sc)
    assert not OBJ.holds(Position(0.30 + RADIUS * 1.01, 0.60), sc)
    assert not OBJ.holds(Position(0.5, 0.4), sc)
    assert OBJ.holds(OBJ.parse("(0.70, 0.20)"), sc)


def test_objects_radius_separates_sampled_neighbours():
    for sc in sample_scenes(200, seed=5):
        for a in sc.objects:
            near = [b for b in sc.objects if (a.x - b.x) ** 2 + (a.y - b.y) ** 2 <= (2 * RADIUS) ** 2]
            assert near == [a]
        for c in OBJ.true_concepts(sc):   # printed to 2 decimals, still true
            assert OBJ.holds(OBJ.parse(OBJ.format(c)), sc)


@pytest.mark.parametrize("text", ["0.30,0.62", "(0.30, 0.62)", "object at 0.30,0.62",
                                  " Object at ( 0.3 ,0.62 ) "])
def test_objects_accepted_forms(text):
    assert OBJ.parse(text) == Position(0.30, 0.62)


@settings(max_examples=60, deadline=None)
@given(st.floats(0, 1), st.floats(0, 1))
def test_objects_round_trip(x, y):
    text = OBJ.format(Position(x, y))
    c = OBJ.parse(text)
    assert OBJ.format(c) == text and abs(c.x - x) <= 0.005 + 1e-9 and abs(c.y - y) <= 0.005 + 1e-9
    back = OBJ.from_tensor(OBJ.to_tensor([c]))[0]
    assert OBJ.format(back) == text


@pytest.mark.parametrize("text,needle", [
    ("1.2,0.5", "x = 1.2 is out of range"), ("0.5,-0.1", "y = -0.1 is out of range"),
    ("0.3;0.5", "malformed position"), ("(0.3,0.5", "malformed"), ("", "malformed"),
    ("object near 0.3,0.5", "malformed")])
def test_objects_parse_errors(text, needle):
    with pytest.raises(ParseError) as e:
        OBJ.parse(text)
    assert needle in str(e.value) and "0.30,0.62" in str(e.value)


# ---- relations ---------------------------------------------------------------
A = o("cube", "red", "small", "metal", 0.30, 0.50)
B = o("sphere", "blue", "large", "rubber", 0.70, 0.80)
SC = Scene((A, B))


@pytest.mark.parametrize("rel,truth", [("left of", True), ("right of", False),
                                       ("in front of", False), ("behind", True)])
def test_relations_each_relation(rel, truth):
    c = Relation(Desc.of(A), rel, Desc.of(B))
    assert REL.holds(c, SC) is truth
    assert REL.holds(Relation(Desc.of(B), rel, Desc.of(A)), SC) is (not truth)


@pytest.mark.parametrize("dx,dy,expect", [
    (MARGIN * 0.9, 0.3, {"in front of"}), (MARGIN * 1.1, 0.3, {"in front of", "right of"}),
    (-0.3, MARGIN * 0.5, {"left of"}), (0.0, 0.0 + MARGIN * 1.2, {"in front of"})])
def test_relations_near_ties_count_for_neither(dx, dy, expect):
    a, b = o("cube", x=0.4 + dx, y=0.3 + dy), o("sphere", x=0.4, y=0.3)
    sc = Scene((a, b))
    got = {r for r in RELATIONS if REL.holds(Relation(Desc("cube"), r, Desc("sphere")), sc)}
    assert got == expect


def test_relations_omitted_attributes_and_distinct_objects():
    assert REL.holds(REL.parse("a red thing left of a sphere"), SC)
    assert REL.holds(REL.parse("a thing left of a thing"), SC)
    assert REL.holds(REL.parse("metal behind large"), SC)
    assert not REL.holds(REL.parse("a blue thing left of a thing"), SC)
    assert not REL.holds(REL.parse("a rubber cube left of a sphere"), SC)
    # one object can't be both sides: a lone object is never left of "a thing"
    assert not any(REL.holds(Relation(Desc(), r, Desc()), Scene((A,))) for r in RELATIONS)
    # two identical objects are distinct objects
    twin = Scene((o(x=0.2), o(x=0.8)))
    assert REL.holds(REL.parse("a small red rubber cube left of a small red rubber cube"), twin)


def test_relations_true_concepts_and_labels_hold():
    rng = np.random.default_rng(0)
    for sc in sample_scenes(60, seed=7, min_objects=2):
        true = REL.true_concepts(sc)
        assert true and all(REL.holds(c, sc) for c in true)
        assert len(true) <= REL.max_true()
        for _ in range(3):
            assert REL.holds(REL.sample_concept(sc, rng), sc)


def test_relations_labels_omit_attributes_sometimes():
    rng = np.random.default_rng(1)
    sc = sample_scenes(1, seed=0, min_objects=3)[0]
    rows = REL.to_tensor([REL.sample_concept(sc, rng) for _ in range(200)])
    omitted = (rows[:, [0, 1, 2, 3, 5, 6, 7, 8]] == 0).float().mean().item()
    assert 0.2 < omitted < 0.4


_desc = st.builds(Desc, st.sampled_from((None,) + SHAPES), st.sampled_from((None,) + COLORS),
                  st.sampled_from((None,) + SIZES), st.sampled_from((None,) + MATERIALS))


@settings(max_examples=80, deadline=None)
@given(_desc, st.sampled_from(RELATIONS), _desc)
def test_relations_round_trip(first, rel, second):
    c = Relation(first, rel, second)
    assert REL.parse(REL.format(c)) == c
    row = REL.to_tensor([c])
    assert row.shape == (1, 9) and row.dtype == torch.int64 and 1 <= row[0, 4] <= 4
    assert REL.from_tensor(row) == [c]


def test_relations_text_forms():
    c = REL.parse("a small red metal cube left of a large blue rubber sphere")
    assert REL.to_tensor([c]).tolist() == [[1, 2, 1, 2, 1, 2, 3, 2, 1]]
    assert REL.format(REL.parse("Red to the LEFT of the object")) == "a red thing left of a thing"
    assert REL.parse("an metal sphere behind a cube").rel == "behind"


@pytest.mark.parametrize("text,needle,col", [
    ("a redd cube left of a sphere", "unknown word 'redd'", 3),
    ("a red cube near a sphere", "unknown word 'near'", 12),
    ("a red red cube left of a sphere", "a second color", 7),
    ("a cube sphere left of a cube", "after the noun", 8),
    ("a cube left of", "missing the second object", None),
    ("left of a cube", "missing the first object", 1),
    ("a red cube", "no relation", None)])
def test_relations_parse_errors(text, needle, col):
    with pytest.raises(ParseError) as e:
        REL.parse(text)
    msg = str(e.value)
    assert needle in msg and "cylinder" in msg and "in front of" in msg and "purple" in msg
    if col is not None:
        assert f"column {col}\n" in msg


# ---- attributes --------------------------------------------------------------
def test_attributes_holds_on_main_object():
    sc = Scene((o("cube", "red", "large", "metal"),), "centered")
    assert [w for w in VOCAB if ATT.holds(Attribute(w), sc)] == ["cube", "red", "large", "metal"]
    assert {ATT.format(c) for c in ATT.true_concepts(sc)} == {"cube", "red", "large", "metal"}
    assert ATT.holds(ATT.parse(" Metal "), sc)


@pytest.mark.parametrize("word", VOCAB)
def test_attributes_round_trip(word):
    c = ATT.parse(word)
    assert ATT.format(c) == word
    row = ATT.to_tensor([c])
    assert row.tolist() == [[VOCAB.index(word) + 1]] and ATT.from_tensor(row) == [c]


@pytest.mark.parametrize("text", ["bluee", "", "red cube", "huge"])
def test_attributes_parse_errors(text):
    with pytest.raises(ParseError) as e:
        ATT.parse(text)
    assert "yellow" in str(e.value) and "cylinder" in str(e.value) and "rubber" in str(e.value)


# ---- encoders and registry ---------------------------------------------------
@pytest.mark.parametrize("name,texts,shape,dtype", [
    ("objects", ["0.3,0.4", "(0.5, 0.5)"], (2, 3), torch.float32),
    ("relations", ["a cube left of a sphere"], (1, 9), torch.int64),
    ("attributes", ["red", "cube", "metal"], (3, 1), torch.int64)])
def test_encoders(name, texts, shape, dtype):
    task = get_task(name)
    enc = task.encoder()
    assert isinstance(enc, ConceptEncoder)
    cond, null = enc.encode(texts), enc.null()
    assert cond.shape == shape and cond.dtype == dtype
    assert null.shape == (1, shape[1]) and null.dtype == dtype and not null.any()
    assert torch.cat([cond, null]).shape == (shape[0] + 1, shape[1])
    assert task.from_tensor(null) == [None]
    assert all(r.any() for r in cond)  # no concept encodes to the null row


def test_registry():
    assert get_task("objects").layout == "free" and get_task("attributes").layout == "centered"
    assert get_task(REL) is REL
    with pytest.raises(InputError, match="objects, relations, attributes"):
        get_task("colours")
