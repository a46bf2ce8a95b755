"""The ``described`` task: a concept is ONE object's description (regional composition's world).

Text: ``a small red metal cube``, the wording of one side of a relation
(relations.py): ``[a|an|the] [size] [color] [material] [noun]``, attribute words
in any order, each kind at most once, each optional (omitted = "any"); the noun
is a shape or, for "any shape", ``thing`` (also ``object``), and may be left
out. CLEVR's own words read as the same concept (``attributes.SYNONYMS``: ball,
block, tiny, big, shiny, metallic, matte): ``the big shiny ball`` is ``a large
metal sphere``. A description must name at least one attribute (``a thing``
alone is refused: its row would be the null row). ``format`` prints the
canonical ``a <size> <color> <material> <shape|thing>``.

Tensor: int64 rows ``[shape, color, size, material]``, 0 = any, else (index in
the vocab tuple) + 1, as one side of a relations row; never all zero (the null
row). The model reads a row as ONE cross-attention token (the four slots
summed), as relations reads each of its objects.

``holds(desc, scene)``: some object of the scene matches every attribute the
description names. Scenes: "free" layout, 1 to 3 objects.

Labels: ``true_concepts`` is the full description of every object (duplicates
once), sorted by row; ``sample_concept`` (the training label) is the full
description of a uniform object with each attribute word omitted with prob.
``OMIT_PROB`` = 0.3, conditioned on keeping at least one: an all-omitted draw
is redrawn, so each of the 15 non-empty patterns of kept words has prob.
proportional to 0.7^kept · 0.3^omitted (a word is omitted with prob.
(0.3 - 0.3^4) / (1 - 0.3^4) ~ 0.294).

Evaluation: a K-set holds K distinct full descriptions of objects of one scene,
so its scene has at least K objects (``min_objects_for``). Each concept is one
object, so ``region_center`` gives the object it describes (the first of the
scene's objects it matches), and the composition tables can confine each
concept to a box around it (method ``composed-regions``, see eval/composition.py).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from compdiff.world.batch import SceneBatch, uniform_choice
from compdiff.world.scene import COLORS, MATERIALS, SHAPES, SIZES, Scene
from compdiff.world.tasks.attributes import with_synonyms
from compdiff.world.tasks.base import Task, parse_error
from compdiff.world.tasks.relations import (_ARTICLES, _KIND_VOCAB, _REL_PHRASES, OMIT_PROB,
                                            Desc, _desc_row, _fmt_desc, _row_desc, _tokens,
                                            perturb_desc, read_desc_words)

_ACCEPTED = ("'[a|an|the] [size] [color] [material] [shape]' naming at least one attribute, with size in "
             + with_synonyms(SIZES) + "; color in " + with_synonyms(COLORS) + "; material in "
             + with_synonyms(MATERIALS) + "; shape in " + with_synonyms(SHAPES)
             + " (or 'thing'/'object' for any shape)")
_NAMES = tuple(f.name for f in fields(Desc))  # shape, color, size, material: the row order
#: words of the relations task's relation phrases (left, of, behind, ...): a pointed error here
_REL_WORDS = {w for phrase, _ in _REL_PHRASES for w in phrase} - _ARTICLES


class DescribedTask(Task[Desc]):
    name = "described"
    help = "one object's description '[size] [color] [material] [shape]', e.g. 'a small red metal cube'"
    max_k = 3
    layout = "free"
    min_objects, max_objects = 1, 3
    row_dim = 4
    omit_prob = OMIT_PROB

    # --- text ---------------------------------------------------------------
    def parse(self, text: str) -> Desc:
        toks = _tokens(text)
        attrs = read_desc_words(text, toks, _ACCEPTED, refuse=lambda tok: (
            f"{tok!r} starts a relation, but a described concept is one object (relations between "
            "objects are the relations task)" if tok in _REL_WORDS else None))
        if not attrs:
            what = (f"{text.strip()!r} names no attribute" if toks else "empty description")
            col = toks[-1][1] if toks else len(text)
            raise parse_error(text, col, what, _ACCEPTED)
        return Desc(**attrs)

    def format(self, concept: Desc) -> str:
        return _fmt_desc(concept)

    # --- truth --------------------------------------------------------------
    def holds(self, concept: Desc, scene: Scene) -> bool:
        return any(concept.matches(o) for o in scene.objects)

    def true_concepts(self, scene: Scene) -> list[Desc]:
        """The full description of every object, each once, sorted by condition row."""
        return sorted({Desc.of(o) for o in scene.objects}, key=_desc_row)

    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> Desc:
        """A uniform object's full description, each word omitted with prob. ``omit_prob``; a draw
        that omits all four is redrawn (the label always names something; see the module docstring)."""
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        return self.leave_out_words(Desc.of(o), rng)

    def leave_out_words(self, full: Desc, rng: np.random.Generator) -> Desc:
        """``full`` with each word left out with prob. ``omit_prob``, redrawn until one stays."""
        while True:
            keep = rng.random(4) >= self.omit_prob
            if keep.any():
                break
        return Desc(**{n: getattr(full, n) if k else None for n, k in zip(_NAMES, keep)})

    def sample_rows(self, scenes: SceneBatch, generator: torch.Generator) -> Tensor:
        """(B, 4) int64 rows [shape, color, size, material] (index + 1) of a uniform object of each
        scene, times a draw of the kept words (0 = omitted) among the 15 patterns that keep at least
        one, each with its probability under independent omission with ``omit_prob``, on the device."""
        s, gen = scenes, generator
        B = s.valid.shape[0]
        j = uniform_choice(s.valid, gen)[:, None]
        words = torch.cat([t.gather(1, j) for t in s[:4]], 1) + 1               # (B, 4)
        bits, cdf = _keep_patterns(4, self.omit_prob, gen.device)
        u = torch.rand(B, generator=gen, device=gen.device)
        pick = torch.searchsorted(cdf, u, right=True).clamp_(max=len(cdf) - 1)  # inverse CDF
        return words * bits[pick]

    def max_true(self, max_objects: int | None = None) -> int:
        return max_objects or self.max_objects

    def false_concept(self, concept: Desc, scene: Scene, rng: np.random.Generator) -> Desc | None:
        """One attribute set to another value (a value, if the description omitted it)."""
        return self.first_false(lambda: perturb_desc(concept, rng), scene)

    # --- evaluation -----------------------------------------------------------
    def min_objects_for(self, k: int) -> int:
        """K distinct descriptions need K objects."""
        return max(self.min_objects, min(k, self.max_objects))

    def region_center(self, concept: Desc, scene: Scene) -> tuple[float, float] | None:
        """The center of the first object of ``scene`` that ``concept`` describes (None: none does)."""
        return next(((o.x, o.y) for o in scene.objects if concept.matches(o)), None)

    # --- tensors ------------------------------------------------------------
    def condition_spec(self) -> dict[str, Any]:
        return {"cond_kind": "tokens", "vocab_sizes": tuple(len(_KIND_VOCAB[n]) + 1 for n in _NAMES),
                "token_groups": (tuple(range(len(_NAMES))),)}

    def concept_row(self, concept: Desc) -> list[int]:
        row = _desc_row(concept)
        if not any(row):
            raise ValueError("a description must name at least one attribute (an all-zero row is the null row)")
        return row

    def row_concept(self, row) -> Desc:
        vals = [int(v) for v in row]
        if not any(vals):
            raise ValueError("an all-zero row is the null row, not a description")
        return _row_desc(vals)


def _keep_patterns(n_words: int, omit_prob: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """Every pattern of kept words but keep-none, (P, n_words) bool (pattern i keeps word w where
    bit w of i + 1 is set), and the cumulative probabilities (P,) float32 of drawing each: every
    word kept with prob. 1 - omit_prob, independently, conditioned on keeping at least one (the
    redraw of ``leave_out_words``). The probabilities are computed on the host in float64."""
    patterns = range(1, 2**n_words)
    p = [float(np.prod([1.0 - omit_prob if i >> w & 1 else omit_prob for w in range(n_words)])) for i in patterns]
    cdf = np.cumsum(p) / sum(p)
    bits = [[bool(i >> w & 1) for w in range(n_words)] for i in patterns]
    return (torch.tensor(bits, dtype=torch.bool, device=device),
            torch.tensor(cdf, dtype=torch.float32, device=device))
