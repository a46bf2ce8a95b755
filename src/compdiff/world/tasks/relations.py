"""The ``relations`` task (the paper's CLEVR Relations).

Text: ``a small red metal cube left of a large blue rubber sphere``. Each side
is ``[a|an|the] [size] [color] [material] [noun]``: attribute words in any
order, each kind at most once, every one optional (omitted = "any"). The noun
is a shape or, for "any shape", ``thing`` (also accepted: ``object``); it may
be left out. Relations: ``left of``, ``right of``, ``in front of``, ``behind``.
CLEVR's own wording (its synonyms.json) reads as the same concept: the
attribute words of ``attributes.SYNONYMS`` (ball, block, tiny, big, shiny,
metallic, matte) and ``to the left of``, ``on the left side of`` (likewise for
right). ``format`` prints the canonical form
``a <size> <color> <material> <shape|thing> <rel> a ...``.

Tensor: int64 rows ``[shape1, color1, size1, material1, rel, shape2, color2,
size2, material2]``; attribute 0 = any, else (index in the vocab tuple) + 1;
rel 1..4 in ``RELATIONS`` order. The null row is all zeros (rel 0 only there).

``holds(rel, scene)``: some ordered pair of DISTINCT objects (a, b) with a
matching the first description and b the second, and, with ``MARGIN = 0.05``:
left of: a.x < b.x - MARGIN; right of: a.x > b.x + MARGIN;
in front of (nearer the camera): a.y > b.y + MARGIN; behind: a.y < b.y - MARGIN.
Near-ties (|dx| or |dy| <= MARGIN) count for neither side.

A ``world render`` tile is labelled with one sampled relation (the kind of
label a training image gets), not the up to 40 true ones. The model reads a
row as three cross-attention tokens: first object, relation, second object.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from itertools import permutations
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from compdiff.errors import ParseError
from compdiff.world.batch import SceneBatch, uniform_choice
from compdiff.world.scene import COLORS, MATERIALS, SHAPES, SIZES, Obj, Scene
from compdiff.world.tasks.attributes import SYNONYMS, canonical, with_synonyms
from compdiff.world.tasks.base import Task, parse_error

RELATIONS = ("left of", "right of", "in front of", "behind")
MARGIN = 0.05
#: probability that the training label omits each attribute word
OMIT_PROB = 0.3
ANY_NOUN = "thing"
#: what ``false_concept`` turns each relation into when it flips one
_FLIP = {"left of": "right of", "right of": "left of", "in front of": "behind",
        "behind": "in front of"}

_KIND_VOCAB = {"shape": SHAPES, "color": COLORS, "size": SIZES, "material": MATERIALS}
_WORD_KIND = {w: k for k, vocab in _KIND_VOCAB.items() for w in vocab}
_NOUNS = {ANY_NOUN, "object"}
_ARTICLES = {"a", "an", "the"}
#: CLEVR's other phrasings of a relation (its synonyms.json); front/behind have none
_REL_SYNONYMS = {"to the left of": "left of", "on the left side of": "left of",
                 "to the right of": "right of", "on the right side of": "right of"}
# relation phrases (token tuples), longest first
_REL_PHRASES = sorted(
    [(tuple(phrase.split()), canonical(phrase, _REL_SYNONYMS))
     for phrase in (*RELATIONS, *_REL_SYNONYMS)],
    key=lambda p: -len(p[0]))
_KNOWN = (_ARTICLES | _NOUNS | set(_WORD_KIND) | set(SYNONYMS)
          | {w for p, _ in _REL_PHRASES for w in p})
_ACCEPTED = ("'[a|an|the] [size] [color] [material] [shape] RELATION [a|an|the] [size] "
             "[color] [material] [shape]' with size in " + with_synonyms(SIZES)
             + "; color in " + with_synonyms(COLORS) + "; material in "
             + with_synonyms(MATERIALS) + "; shape in " + with_synonyms(SHAPES)
             + " (or 'thing'/'object' for any shape); RELATION in "
             + with_synonyms(RELATIONS, _REL_SYNONYMS))


@dataclass(frozen=True)
class Desc:
    """An object description; None = any value."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    material: str | None = None

    def matches(self, o: Obj) -> bool:
        return all(getattr(self, f.name) in (None, getattr(o, f.name)) for f in fields(self))

    @staticmethod
    def of(o: Obj) -> "Desc":
        return Desc(o.shape, o.color, o.size, o.material)


@dataclass(frozen=True)
class Relation:
    """``first rel second``, e.g. Desc(cube) "left of" Desc(sphere)."""

    first: Desc
    rel: str
    second: Desc


def relation_holds(rel: str, a: Obj, b: Obj) -> bool:
    """Does ``a rel b`` hold by positions, with the near-tie margin?"""
    if rel == "left of":
        return a.x < b.x - MARGIN
    if rel == "right of":
        return a.x > b.x + MARGIN
    if rel == "in front of":
        return a.y > b.y + MARGIN
    if rel == "behind":
        return a.y < b.y - MARGIN
    raise ValueError(f"unknown relation {rel!r}")


def _tokens(text: str) -> list[tuple[str, int]]:
    out, i = [], 0
    for part in text.split():
        i = text.index(part, i)
        out.append((part.lower(), i))
        i += len(part)
    return out


def _broken_relation(text: str, toks: list[tuple[str, int]]) -> ParseError:
    """The ParseError for known words without a whole relation phrase: the caret goes
    where the longest started phrase breaks off (``to the left a`` -> under ``a``),
    else at the end."""
    words = [t for t, _ in toks]
    best_len, best_at = 0, 0
    for i in range(len(words)):
        for phrase, _ in _REL_PHRASES:
            n = _common_prefix(words[i:], phrase)
            if n > best_len:
                best_len, best_at = n, i
    if not best_len:
        return parse_error(text, len(text), f"no relation in {text.strip()!r}", _ACCEPTED)
    started = tuple(words[best_at:best_at + best_len])
    nexts = sorted({p[best_len] for p, _ in _REL_PHRASES if p[:best_len] == started})
    end = best_at + best_len
    col = toks[end][1] if end < len(toks) else len(text)
    return parse_error(text, col, f"expected {' or '.join(map(repr, nexts))} after "
                       f"{' '.join(started)!r}", _ACCEPTED)


def _common_prefix(words: list[str], phrase: tuple[str, ...]) -> int:
    """How many leading words of ``words`` follow ``phrase``."""
    n = 0
    for w, p in zip(words, phrase):
        if w != p:
            break
        n += 1
    return n


def perturb_desc(d: Desc, rng: np.random.Generator) -> Desc:
    """``d`` with one of its four attributes set to another value (any value where it was omitted)."""
    name = [f.name for f in fields(Desc)][rng.integers(4)]
    vocab = _KIND_VOCAB[name]
    current = getattr(d, name)
    if current is None:
        value = vocab[rng.integers(len(vocab))]
    else:
        value = vocab[(vocab.index(current) + rng.integers(1, len(vocab))) % len(vocab)]
    return replace(d, **{name: value})


def read_desc_words(text: str, toks: list[tuple[str, int]], accepted: str,
                    refuse: Callable[[str], str | None] = lambda tok: None) -> dict[str, str]:
    """The attributes named by one object's words ``toks`` ((word, column) pairs of ``text``):
    ``[a|an|the] [size] [color] [material] [noun]`` in any order, each kind at most once,
    nothing after the noun. ``refuse(tok)`` may give a reason to reject a word before it is read.
    A word that breaks these rules is a parse error at its column, listing ``accepted``."""
    attrs: dict[str, str] = {}
    noun_seen = False
    for j, (tok, col) in enumerate(toks):
        if j == 0 and tok in _ARTICLES:
            continue
        why = refuse(tok)
        if why is not None:
            raise parse_error(text, col, why, accepted)
        if noun_seen:
            raise parse_error(text, col, f"unexpected word {tok!r} after the noun", accepted)
        if tok in _NOUNS:
            noun_seen = True
            continue
        word = canonical(tok)
        kind = _WORD_KIND.get(word)
        if kind is None:
            raise parse_error(text, col, f"unknown word {tok!r}", accepted)
        if kind in attrs:
            raise parse_error(text, col, f"a second {kind} {tok!r} (already {attrs[kind]!r})", accepted)
        attrs[kind] = word
        noun_seen = kind == "shape"
    return attrs


class RelationsTask(Task[Relation]):
    name = "relations"
    help = ("'[size] [color] [material] [shape] RELATION [size] [color] [material] [shape]', "
            "e.g. 'a red cube left of a blue sphere'")
    max_k = 8
    layout = "free"
    min_objects, max_objects = 2, 5
    row_dim = 9
    omit_prob = OMIT_PROB
    margin = MARGIN

    # --- text ---------------------------------------------------------------
    def parse(self, text: str) -> Relation:
        toks = _tokens(text)
        words = [t for t, _ in toks]
        for i in range(len(toks)):
            for phrase, rel in _REL_PHRASES:
                if tuple(words[i:i + len(phrase)]) == phrase:
                    first = self._desc(text, toks[:i], "first")
                    second = self._desc(text, toks[i + len(phrase):], "second")
                    return Relation(first, rel, second)
        for tok, col in toks:
            if tok not in _KNOWN:
                raise parse_error(text, col, f"unknown word {tok!r}", _ACCEPTED)
        raise _broken_relation(text, toks)

    def _desc(self, text: str, toks: list[tuple[str, int]], side: str) -> Desc:
        if not toks:
            pos = len(text) if side == "second" else 0
            raise parse_error(text, pos, f"missing the {side} object", _ACCEPTED)
        return Desc(**read_desc_words(text, toks, _ACCEPTED))

    def format(self, concept: Relation) -> str:
        return f"{_fmt_desc(concept.first)} {concept.rel} {_fmt_desc(concept.second)}"

    # --- truth --------------------------------------------------------------
    def holds(self, concept: Relation, scene: Scene) -> bool:
        return any(concept.first.matches(a) and concept.second.matches(b)
                   and relation_holds(concept.rel, a, b)
                   for a, b in permutations(scene.objects, 2))

    def true_concepts(self, scene: Scene) -> list[Relation]:
        """All fully specified true relations: every ordered pair, every relation."""
        return [Relation(Desc.of(a), rel, Desc.of(b))
                for a, b in permutations(scene.objects, 2)
                for rel in RELATIONS if relation_holds(rel, a, b)]

    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> Relation:
        """One true relation, each attribute word omitted with prob ``omit_prob``.

        Omitting only widens a description, so the label stays true. Scenes
        with no true relation (all pairs near-ties, which sampling makes
        impossible: centers are >= 0.18 apart) raise ValueError.
        """
        full = self.true_concepts(scene)
        if not full:
            raise ValueError("scene has no true relation")
        return self.leave_out_words(full[int(rng.integers(len(full)))], rng)

    def sample_rows(self, scenes: SceneBatch, generator: torch.Generator) -> Tensor:
        """(B, 9) int64 rows: a uniform (a, b, relation) among all true ones of each scene, then
        each of the 8 attribute words dropped (0 = any) with ``omit_prob``, on the device.
        Row: [shape1, color1, size1, material1, rel, shape2, ...], value = index + 1."""
        s, gen, margin = scenes, generator, self.margin
        B, K = s.valid.shape
        xa, xb, ya, yb = s.x[:, :, None], s.x[:, None, :], s.y[:, :, None], s.y[:, None, :]
        # relation_holds, written the same way; (B, K, K): first object a, second b
        holds = {"left of": xa < xb - margin, "right of": xa > xb + margin,
                 "in front of": ya > yb + margin, "behind": ya < yb - margin}
        true = torch.stack([holds[r] for r in RELATIONS], -1)            # (B, K, K, n_rel)
        distinct = ~torch.eye(K, dtype=torch.bool, device=s.valid.device)
        pair = s.valid[:, :, None] & s.valid[:, None, :] & distinct      # (B, K, K)
        pick = uniform_choice((true & pair[..., None]).flatten(1), gen)
        n_rel = len(RELATIONS)
        a, b, rel = pick // (K * n_rel), pick // n_rel % K, pick % n_rel
        desc = torch.stack([s.shape, s.color, s.size, s.material], -1) + 1   # (B, K, 4)
        first = desc.gather(1, a.view(B, 1, 1).expand(B, 1, 4))[:, 0]
        second = desc.gather(1, b.view(B, 1, 1).expand(B, 1, 4))[:, 0]
        keep = torch.rand(B, 8, generator=gen, device=gen.device) >= self.omit_prob
        words = torch.cat([first, second], 1) * keep
        return torch.cat([words[:, :4], rel[:, None] + 1, words[:, 4:]], 1)

    def leave_out_words(self, c: Relation, rng: np.random.Generator) -> Relation:
        """``c`` with each of its 8 attribute words left out with prob ``omit_prob`` (one draw
        of 8 uniforms from ``rng``); a true relation stays true."""
        keep = rng.random(8) >= self.omit_prob
        names = [f.name for f in fields(Desc)]
        first = Desc(**{n: getattr(c.first, n) if keep[i] else None for i, n in enumerate(names)})
        second = Desc(**{n: getattr(c.second, n) if keep[4 + i] else None
                         for i, n in enumerate(names)})
        return Relation(first, c.rel, second)

    def max_true(self, max_objects: int | None = None) -> int:
        n = max_objects or self.max_objects
        return n * (n - 1) * 2  # per ordered pair: one horizontal, one vertical

    def false_concept(self, concept: Relation, scene: Scene,
                      rng: np.random.Generator) -> Relation | None:
        """Flip the relation (prob. 0.3) or change one attribute of either side."""
        return self.first_false(lambda: _perturb(concept, rng), scene)

    # --- evaluation -----------------------------------------------------------
    def grid_label(self, scene: Scene, rng: np.random.Generator) -> list[str]:
        """One sampled training label: all true relations would not fit under a tile."""
        return [self.format(self.sample_concept(scene, rng))]

    # --- tensors ------------------------------------------------------------
    def condition_spec(self) -> dict[str, Any]:
        desc = tuple(len(vocab) + 1 for _, vocab in _ROW_ORDER)
        return {"cond_kind": "tokens", "vocab_sizes": desc + (len(RELATIONS) + 1,) + desc,
                "token_groups": ((0, 1, 2, 3), (4,), (5, 6, 7, 8))}

    def concept_row(self, concept: Relation) -> list[int]:
        return (_desc_row(concept.first) + [RELATIONS.index(concept.rel) + 1]
                + _desc_row(concept.second))

    def row_concept(self, row) -> Relation:
        row = [int(v) for v in row]
        if not 1 <= row[4] <= len(RELATIONS):
            raise ValueError(f"relation index {row[4]} not in 1..{len(RELATIONS)}")
        return Relation(_row_desc(row[:4]), RELATIONS[row[4] - 1], _row_desc(row[5:]))


_ROW_ORDER = (("shape", SHAPES), ("color", COLORS), ("size", SIZES), ("material", MATERIALS))


def _desc_row(d: Desc) -> list[int]:
    return [0 if getattr(d, k) is None else vocab.index(getattr(d, k)) + 1
            for k, vocab in _ROW_ORDER]


def _row_desc(vals: list[int]) -> Desc:
    out = {}
    for v, (k, vocab) in zip(vals, _ROW_ORDER):
        if not 0 <= v <= len(vocab):
            raise ValueError(f"{k} index {v} not in 0..{len(vocab)}")
        out[k] = None if v == 0 else vocab[v - 1]
    return Desc(**out)


def _perturb(c: Relation, rng: np.random.Generator) -> Relation:
    """``c`` with the relation flipped or one attribute of one side set to another value."""
    if rng.random() < 0.3:
        return replace(c, rel=_FLIP[c.rel])
    side = "first" if rng.random() < 0.5 else "second"
    desc: Desc = getattr(c, side)
    return replace(c, **{side: perturb_desc(desc, rng)})


def _fmt_desc(d: Desc) -> str:
    words = [w for w in (d.size, d.color, d.material) if w is not None]
    return " ".join(["a", *words, d.shape or ANY_NOUN])
