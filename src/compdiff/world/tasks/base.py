"""What every task provides (the abstract ``Task``), and the shared ParseError helper.

A task is a concept language over scenes: a concept type with a text form
(``parse``/``format``) and a tensor form (``to_tensor``/``from_tensor``, a
fixed row shape ``(D,)`` and dtype, the null row for "no condition"), the
ground-truth predicate ``holds(concept, scene)``, and the labels used for
training (``sample_concept``: one true concept; ``sample_rows``: the same for a
whole batch of tensor scenes, world/batch.py) and evaluation (``true_concepts``:
the full set). Everything the model, the data, the evaluation and the CLI ask
of a task is declared here, so a new task is one subclass plus
``register_task`` (see __init__.py); a subclass that leaves out a required
hook fails when it is instantiated, not deep inside a run.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Generic, Literal, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from compdiff.errors import ParseError
from compdiff.world.batch import SceneBatch, scenes_from_tensors
from compdiff.world.scene import Scene, scene_at

if TYPE_CHECKING:
    from compdiff.world.concept_sets import ConceptSet

C = TypeVar("C")

#: perturbations ``false_concept`` tries before giving up
FALSE_TRIES = 50
#: the hooks that draw a training label: a subclass redefining one gets the generic sample_rows
_LABEL_HOOKS = ("sample_concept", "leave_out_words")


def parse_error(text: str, start: int, what: str, accepted: str) -> ParseError:
    """A ParseError of three lines: first the complete message, which ends with the column
    (``unknown word 'near' in the concept 'a cube near a ball' (accepted: ...) at column 8``), then a
    window of the concept and a caret under the bad part. User text is shown escaped
    (no raw control characters) and capped, whatever its length."""
    from compdiff.expr.display import caret_lines, excerpt

    start = max(0, min(start, len(text)))
    what, shown = excerpt(what, 200), f"'{excerpt(text.strip(), 80)}'"
    where = "" if shown in what else f" in the concept {shown}"
    return ParseError(f"{what}{where} (accepted: {accepted}) at column {start + 1}\n{caret_lines(text, start)}")


class Task(ABC, Generic[C]):
    """A concept language over scenes (see objects.py, relations.py, attributes.py, described.py).

    Required hooks are abstract; ``name``, ``help`` and ``max_k`` may be plain
    class attributes in a subclass. The scene stream is set by ``layout``,
    ``min_objects`` and ``max_objects``; condition rows by ``row_dim``, ``dtype``.
    """

    layout: Literal["free", "centered"] = "free"
    min_objects: int = 1
    max_objects: int = 5
    row_dim: int = 1
    dtype: torch.dtype = torch.int64

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Batched labels must follow the Python ones. A subclass that draws its labels its own
        # way (its own sample_concept or leave_out_words) without its own sample_rows gets the
        # generic sample_rows below, not a parent's tensor kernel that draws the parent's labels.
        if "sample_rows" not in vars(cls) and any(m in vars(cls) for m in _LABEL_HOOKS):
            cls.sample_rows = Task.sample_rows

    # --- identity -----------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        """The registry key, used by ``--task`` and stored in model configs."""

    @property
    @abstractmethod
    def help(self) -> str:
        """One line for CLI help: the concept language with an example."""

    @property
    @abstractmethod
    def max_k(self) -> int:
        """The largest concept-set size the evaluation draws: K sets must exist in
        real scenes, or drawing them would never end."""

    # --- text ---------------------------------------------------------------
    @abstractmethod
    def parse(self, text: str) -> C:
        """Text -> concept; bad text raises ParseError (see ``parse_error``)."""

    @abstractmethod
    def format(self, concept: C) -> str:
        """Concept -> the canonical text that ``parse`` reads back."""

    # --- truth --------------------------------------------------------------
    @abstractmethod
    def holds(self, concept: C, scene: Scene) -> bool:
        """The ground truth: is ``concept`` true in ``scene`` (also a judged one)?"""

    @abstractmethod
    def true_concepts(self, scene: Scene) -> list[C]:
        """Every concept of the joint label set true in ``scene`` (canonical order)."""

    @abstractmethod
    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> C:
        """One true concept of ``scene``: the training label."""

    def sample_rows(self, scenes: SceneBatch, generator: torch.Generator) -> Tensor:
        """(B, D) condition rows: one true concept per scene of ``scenes`` (B tensor scenes,
        world/batch.py), drawn from ``generator`` with ``sample_concept``'s probabilities; the
        labels of ``WorldDataset.device_batch`` (training on the device).

        This default is right for every task: it copies the scenes to the host, seeds one numpy
        generator from ``generator`` and calls ``sample_concept`` per scene. A built-in task
        overrides it with a tensor kernel that stays on the device (the same distribution, not
        the same stream); a subclass that redefines ``sample_concept`` or ``leave_out_words``
        without ``sample_rows`` falls back to this default (``__init_subclass__``)."""
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        rng = np.random.default_rng(int(seed.item()))
        concepts = [self.sample_concept(scene, rng) for scene in scenes_from_tensors(scenes)]
        return self.to_tensor(concepts).to(generator.device)

    @abstractmethod
    def max_true(self, max_objects: int | None = None) -> int:
        """An upper bound on ``len(true_concepts(scene))``: the joint baseline's set size."""

    @abstractmethod
    def false_concept(self, concept: C, scene: Scene, rng: np.random.Generator) -> C | None:
        """A concept of the same kind near ``concept`` but false on ``scene`` (None if
        none is found): the judge-accuracy check's negatives. Implement it with
        ``first_false`` so every task retries the same number of times."""

    def first_false(self, perturb: Callable[[], C], scene: Scene) -> C | None:
        """The first of ``FALSE_TRIES`` calls of ``perturb()`` that is false on ``scene``."""
        for _ in range(FALSE_TRIES):
            cand = perturb()
            if not self.holds(cand, scene):
                return cand
        return None

    # --- evaluation -----------------------------------------------------------
    def min_objects_for(self, k: int) -> int:
        """The fewest objects a scene needs to be drawn for a K-concept set; more
        than ``min_objects`` where each concept needs an object of its own."""
        return self.min_objects

    def negation_compatible(self, candidate: C, positives: Sequence[C]) -> bool:
        """May ``candidate`` join ``positives`` under NOT? False where the pair would
        be trivial (e.g. NOT blue next to red on one object)."""
        return True

    def region_center(self, concept: C, scene: Scene) -> tuple[float, float] | None:
        """Where in ``scene`` the one object that ``concept`` describes is centred, (x, y): the
        centre of a concept's box under regional composition (eval method ``composed-regions``).
        None (the default) for a task whose concepts are not single objects."""
        return None

    def extra_metrics(self, sets: Sequence[ConceptSet], judged: Sequence[Scene]) -> dict[str, float]:
        """Task-specific scores of the judged images of ``sets`` (one scene per set),
        reported beside the accuracy."""
        return {}

    def grid_label(self, scene: Scene, rng: np.random.Generator) -> list[str]:
        """The text under a tile of ``compdiff world render``: every true concept."""
        return [self.format(c) for c in self.true_concepts(scene)]

    # --- tensors ------------------------------------------------------------
    @abstractmethod
    def condition_spec(self) -> dict[str, Any]:
        """ModelConfig fields of the condition: ``cond_kind`` ("position" or "tokens"),
        ``vocab_sizes`` (a token table size per row slot) and, optionally,
        ``token_groups`` (the slots summed into each cross-attention token)."""

    @abstractmethod
    def concept_row(self, concept: C) -> list[Any]:
        """Concept -> one condition row of ``row_dim`` values, never all zero."""

    @abstractmethod
    def row_concept(self, row: Sequence[Any]) -> C:
        """The inverse of ``concept_row``; an out-of-range row raises ValueError."""

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
