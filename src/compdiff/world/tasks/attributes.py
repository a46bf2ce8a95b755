"""The ``attributes`` task (the paper's face attributes, in this world).

Scenes use the ``"centered"`` layout: one main object, drawn large. A concept
is one attribute value, text one word from ``VOCAB = SHAPES + COLORS + SIZES
+ MATERIALS`` (case-insensitive; surrounding spaces ignored) or one of CLEVR's
own words for a value (``SYNONYMS``: ball, block, tiny, big, shiny, metallic,
matte), read as that value; ``format`` prints the ``VOCAB`` word. Tensor: int64
``(K, 1)``, the 1-based index into ``VOCAB``; the null row is 0.
``holds(word, scene)``: the main object (``scene.objects[0]``) has that value.
This is where ``red AND cube AND NOT metal`` is asked of one object; a
negated word joins a set only if no positive word is of its kind (NOT blue
beside red would be trivially true).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from compdiff.world.batch import SceneBatch
from compdiff.world.scene import COLORS, MATERIALS, SHAPES, SIZES, Scene
from compdiff.world.tasks.base import Task, parse_error

VOCAB = SHAPES + COLORS + SIZES + MATERIALS
#: where each attribute kind's words start in VOCAB (1-based rows add 1), in the order of
#: SceneBatch's attribute fields (shape, color, size, material)
_VOCAB_START = tuple(VOCAB.index(v[0]) for v in (SHAPES, COLORS, SIZES, MATERIALS))
assert all(VOCAB[i:i + len(v)] == v for i, v in zip(_VOCAB_START, (SHAPES, COLORS, SIZES, MATERIALS))), \
    "VOCAB layout"
_KIND_VOCAB = {"shape": SHAPES, "color": COLORS, "size": SIZES, "material": MATERIALS}
KIND = {w: kind for kind, words in _KIND_VOCAB.items() for w in words}
#: CLEVR's questions use these words too (its synonyms.json); each names one VOCAB value.
#: Shared with the relations task, so both languages read the same words.
SYNONYMS = {"ball": "sphere", "block": "cube", "tiny": "small", "big": "large",
            "shiny": "metal", "metallic": "metal", "matte": "rubber"}


def canonical(word: str, synonyms: dict[str, str] = SYNONYMS) -> str:
    """The canonical word for ``word`` (itself when it has no synonym entry)."""
    return synonyms.get(word, word)


def with_synonyms(words: Sequence[str], synonyms: dict[str, str] = SYNONYMS) -> str:
    """``words`` listed for an "accepted:" line, each with the synonyms read as it."""
    def entry(w: str) -> str:
        alts = [s for s, c in synonyms.items() if c == w]
        return f"{w} (also {', '.join(alts)})" if alts else w
    return ", ".join(map(entry, words))


_ACCEPTED = ("one word: shape " + with_synonyms(SHAPES) + "; color " + with_synonyms(COLORS)
             + "; size " + with_synonyms(SIZES) + "; material " + with_synonyms(MATERIALS))


@dataclass(frozen=True)
class Attribute:
    """One attribute value, e.g. Attribute("red"); ``kind`` is its category."""

    word: str

    @property
    def kind(self) -> str:
        return KIND[self.word]


class AttributesTask(Task[Attribute]):
    name = "attributes"
    help = "one word (shape, color, size or material) of the one centered object, e.g. 'red'"
    max_k = 3
    layout = "centered"
    min_objects, max_objects = 1, 1
    row_dim = 1

    def parse(self, text: str) -> Attribute:
        word = canonical(text.strip().lower())
        if word not in KIND:
            col = len(text) - len(text.lstrip())
            what = "empty attribute" if not word else f"unknown attribute {text.strip()!r}"
            raise parse_error(text, col, what, _ACCEPTED)
        return Attribute(word)

    def format(self, concept: Attribute) -> str:
        return concept.word

    def holds(self, concept: Attribute, scene: Scene) -> bool:
        """False for a scene with no object (a judged blank image)."""
        return bool(scene.objects) and getattr(scene.main, concept.kind) == concept.word

    def true_concepts(self, scene: Scene) -> list[Attribute]:
        o = scene.main
        return [Attribute(o.shape), Attribute(o.color), Attribute(o.size), Attribute(o.material)]

    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> Attribute:
        c = self.true_concepts(scene)
        return c[int(rng.integers(len(c)))]

    def sample_rows(self, scenes: SceneBatch, generator: torch.Generator) -> Tensor:
        """(B, 1) int64 VOCAB index + 1 of a uniform one of the main object's four attributes."""
        words = torch.stack([t[:, 0] + i + 1 for t, i in zip(scenes[:4], _VOCAB_START)], 1)  # (B, 4)
        kind = torch.randint(0, 4, (scenes.valid.shape[0], 1), generator=generator, device=generator.device)
        return words.gather(1, kind)

    def max_true(self, max_objects: int | None = None) -> int:
        return 4

    def false_concept(self, concept: Attribute, scene: Scene,
                      rng: np.random.Generator) -> Attribute | None:
        """Another value of the same kind (another color for a color)."""
        vocab = _KIND_VOCAB[concept.kind]
        start = vocab.index(concept.word)
        return self.first_false(
            lambda: Attribute(vocab[(start + rng.integers(1, len(vocab))) % len(vocab)]), scene)

    def negation_compatible(self, candidate: Attribute, positives: Sequence[Attribute]) -> bool:
        return candidate.kind not in {c.kind for c in positives}

    def condition_spec(self) -> dict[str, Any]:
        return {"cond_kind": "tokens", "vocab_sizes": (len(VOCAB) + 1,)}

    def concept_row(self, concept: Attribute) -> list[int]:
        return [VOCAB.index(concept.word) + 1]

    def row_concept(self, row) -> Attribute:
        v = int(row[0])
        if not 1 <= v <= len(VOCAB):
            raise ValueError(f"attribute index {v} not in 1..{len(VOCAB)}")
        return Attribute(VOCAB[v - 1])
