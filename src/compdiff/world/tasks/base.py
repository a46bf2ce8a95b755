"""What every task provides, and the shared ParseError helper.

A task is a concept language over scenes: a concept type with a text form
(``parse``/``format``) and a tensor form (``to_tensor``/``from_tensor``, a
fixed row shape ``(D,)`` and dtype, the null row for "no condition"), the
ground-truth predicate ``holds(concept, scene)``, and the labels used for
training (``sample_concept``: one true concept) and evaluation
(``true_concepts``: the full set).
"""
from __future__ import annotations

from typing import Any, Generic, Literal, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from compdiff.errors import ParseError
from compdiff.world.scene import Scene, scene_at

C = TypeVar("C")


def parse_error(text: str, start: int, what: str, accepted: str) -> ParseError:
    """A ParseError naming the bad part (with a caret under it) and the vocabulary."""
    start = max(0, min(start, len(text)))
    return ParseError(f"{what} at column {start + 1}\n  {text}\n  {' ' * start}^\n"
                      f"accepted: {accepted}")


class Task(Generic[C]):
    """Base class of the three tasks (see objects.py, relations.py, attributes.py)."""

    name: str = ""
    layout: Literal["free", "centered"] = "free"
    min_objects: int = 1
    max_objects: int = 5
    row_dim: int = 1
    dtype: torch.dtype = torch.int64

    # --- text ---------------------------------------------------------------
    def parse(self, text: str) -> C:
        raise NotImplementedError

    def format(self, concept: C) -> str:
        raise NotImplementedError

    # --- truth --------------------------------------------------------------
    def holds(self, concept: C, scene: Scene) -> bool:
        raise NotImplementedError

    def true_concepts(self, scene: Scene) -> list[C]:
        """Every concept of the joint label set true in ``scene`` (canonical order)."""
        raise NotImplementedError

    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> C:
        """One true concept of ``scene``: the training label."""
        raise NotImplementedError

    def max_true(self, max_objects: int | None = None) -> int:
        """An upper bound on ``len(true_concepts(scene))``."""
        raise NotImplementedError

    # --- tensors ------------------------------------------------------------
    def concept_row(self, concept: C) -> list[Any]:
        raise NotImplementedError

    def row_concept(self, row: Sequence[Any]) -> C:
        raise NotImplementedError

    def null_row(self) -> Tensor:
        """(1, D) the unconditional row (all zeros)."""
        return torch.zeros(1, self.row_dim, dtype=self.dtype)

    def to_tensor(self, concepts: Sequence[C]) -> Tensor:
        """concepts -> (K, D) tensor of ``dtype``."""
        rows = [self.concept_row(c) for c in concepts]
        return torch.tensor(rows, dtype=self.dtype).reshape(len(rows), self.row_dim)

    def from_tensor(self, rows: Tensor) -> list[C | None]:
        """(K, D) -> concepts; a null (all-zero) row gives None."""
        if rows.ndim != 2 or rows.shape[1] != self.row_dim:
            raise ValueError(f"expected (K, {self.row_dim}), got {tuple(rows.shape)}")
        return [None if not bool(r.any()) else self.row_concept(r.tolist()) for r in rows]

    # --- model side ---------------------------------------------------------
    def encoder(self) -> "TaskEncoder":
        return TaskEncoder(self)

    def scene(self, seed: int, index: int) -> Scene:
        """Scene ``index`` of this task's stream for ``seed``."""
        return scene_at(seed, index, self.min_objects, self.max_objects, self.layout)

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class TaskEncoder:
    """The ConceptEncoder of a task: text concepts -> condition rows.

    ``encode(texts)`` -> (K, D) (parse errors raise ParseError);
    ``null()`` -> (1, D), all zeros; same dtype.
    """

    def __init__(self, task: Task) -> None:
        self.task = task

    def encode(self, concepts: Sequence[str]) -> Tensor:
        return self.task.to_tensor([self.task.parse(c) for c in concepts])

    def null(self) -> Tensor:
        return self.task.null_row()
