"""The page's input checks: the server's limits, the expression under them, and the settings of
one Generate click, each refused with an InputError whose message the page shows.

* :class:`Limits`: what one request may ask for (``compdiff serve`` flags).
* :func:`parse_limited`: ``parse`` under the limits (length, number of concepts; no masks).
* :func:`check_concepts`: each concept read by the world task of the model.
* :class:`Settings` -> :func:`check_settings` -> :class:`Checked`: a Generate click, every value
  checked and resolved against the model's defaults.
* :func:`check_number`: a number the API sent, before Gradio converts it (so that ``n="abc"``
  is a message, not Gradio's bare failure).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from compdiff.errors import InputError, ParseError
from compdiff.expr import Expr, concept_leaves, parse, quote
from compdiff.expr.display import excerpt

if TYPE_CHECKING:
    from compdiff.web.store import ModelStore

#: the corrector choice meaning "no corrector"
CORRECTOR_OFF = "off"
#: how overlapping regions combine (``compose(region_mode=...)``, ``--region-mode``)
REGION_MODES = ("sum", "normalize")
#: guidance scales the page accepts (the CLI accepts |s| <= 100 too)
MAX_SCALE = 100.0
#: largest seed: image i uses seed + i, which torch takes below 2**63
MAX_SEED = 2**63 - 1
#: the selection choice meaning "no selection" (plain sampling); the others are compdiff.generate's
SELECT_OFF = "off"
SELECT_CHOICES = (SELECT_OFF, "lift", "cached-lift")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is a ``compdiff serve`` flag."""

    max_n: int = 16
    max_steps: int = 200
    max_concepts: int = 16
    max_length: int = 2000
    #: most jobs waiting in the queue (``demo.queue(max_size=...)``); more get "busy, try again"
    queue_size: int = 8
    #: most candidates per image with selection (each costs a whole sample)
    max_candidates: int = 8

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_concepts", "max_length", "queue_size", "max_candidates"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")


def check_length(text: str, limits: Limits) -> None:
    if not isinstance(text, str):
        raise InputError("the expression must be text")
    if len(text) > limits.max_length:
        raise InputError(f"the expression is {len(text)} characters long; this server accepts at most "
                         f"{limits.max_length}")


_NO_MASK = re.compile(r"^(no mask named .* at column \d+): [^\n]*")


def parse_limited(text: str, limits: Limits) -> Expr:
    """``parse`` under the server's limits (length, number of concepts); InputError otherwise.
    The page takes no mask images, so a ``mask:NAME`` region is a ParseError at its '@'."""
    check_length(text, limits)
    try:
        return parse(text, max_concepts=limits.max_concepts, masks=())
    except ParseError as err:
        message = str(err)
        if _NO_MASK.match(message):  # the parser's hint names the CLI's --mask; say what works here
            raise ParseError(_NO_MASK.sub(r"\1: this page takes no mask images; drag a box on the regions "
                                          "canvas, or write a box (x0, y0, x1, y1) or a named region such "
                                          "as left", message, count=1)) from None
        raise


def check_concepts(expr: Expr, task: str | None) -> None:
    """Each concept read by the world task (InputError naming the bad one); nothing for other models."""
    if task is None:
        return
    from compdiff.world.tasks import get_task

    try:
        t = get_task(task)
    except InputError:
        return
    seen = set()
    for leaf in concept_leaves(expr):
        if leaf.concept in seen:
            continue
        seen.add(leaf.concept)
        try:
            t.parse(leaf.concept)
        except InputError as err:
            raise type(err)(f"concept {excerpt(quote(leaf.concept), 60)} is not a {task} concept: {err}") from None


@dataclass(frozen=True)
class Settings:
    """One Generate click. ``sampler``/``steps``/``guidance_scale`` None: the model's own."""

    model: str
    expr: str
    n: int = 4
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    corrector: str = CORRECTOR_OFF
    negation: str = "plain"
    mode: str = "sum"
    #: regions' soft edge, a fraction of the image (``compose(feather=...)``, ``--feather``)
    feather: float = 0.0
    #: where regions overlap: "sum" or "normalize" (``--region-mode``)
    region_mode: str = "sum"
    #: selection while sampling: "off", "lift" or "cached-lift" (``--select``)
    select: str = SELECT_OFF
    #: candidates per image with selection (``--candidates``; None: compdiff.generate's default); ignored
    #: when select is off
    candidates: int | None = None


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {excerpt(repr(value), 40)}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {excerpt(repr(value), 40)}")
    return int(f)


@dataclass(frozen=True)
class Checked:
    """Settings after :func:`check_settings`: every value resolved and in range."""

    settings: Settings
    expr: Expr
    sampler: str
    steps: int
    guidance_scale: float
    corrector: Any  # Corrector | None
    feather: float = 0.0
    #: whether some concept of the expression has a region
    has_regions: bool = False
    #: selection: None (off), "lift" or "cached-lift", and the candidates per image (1 when off)
    select: str | None = None
    candidates: int = 1


def check_settings(s: Settings, store: "ModelStore", limits: Limits) -> Checked:
    """Every setting checked against the limits and resolved against the model's defaults;
    InputError with a message for the page otherwise. Opens (or reuses) the model."""
    from compdiff.compose import check_options, effective_weights
    from compdiff.correctors import KERNELS, Corrector
    from compdiff.generate import DEFAULT_CANDIDATES, timesteps
    from compdiff.sampling import SAMPLERS

    store.entry(s.model)
    n = _int(s.n, "n")
    if not 1 <= n <= limits.max_n:
        raise InputError(f"n must lie in 1..{limits.max_n} on this server, got {n}")
    seed = _int(s.seed, "seed")
    if not 0 <= seed or seed + n - 1 > MAX_SEED:
        raise InputError(f"seed must lie in 0..{MAX_SEED - n + 1} (image i uses seed + i), got {seed}")
    steps = None if s.steps is None else _int(s.steps, "steps")
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise InputError(f"steps must lie in 1..{limits.max_steps} on this server, got {steps}")
    if s.sampler is not None and (not isinstance(s.sampler, str) or s.sampler not in SAMPLERS):
        raise InputError(f"unknown sampler {excerpt(repr(s.sampler), 40)}; accepted: {', '.join(SAMPLERS)}")
    if s.corrector != CORRECTOR_OFF and (not isinstance(s.corrector, str) or s.corrector not in KERNELS):
        raise InputError(f"unknown corrector {excerpt(repr(s.corrector), 40)}; accepted: "
                         f"{', '.join((CORRECTOR_OFF, *KERNELS))}")
    if s.mode not in ("sum", "mean"):
        raise InputError(f"mode must be sum or mean, got {excerpt(repr(s.mode), 40)}")
    if s.region_mode not in REGION_MODES:
        raise InputError(f"region mode must be sum or normalize, got {excerpt(repr(s.region_mode), 40)}")
    try:
        feather = float(s.feather)
    except (TypeError, ValueError):
        feather = float("nan")
    if isinstance(s.feather, bool) or not (math.isfinite(feather) and 0.0 <= feather <= 1.0):
        raise InputError(f"feather must be a number in [0, 1] (a fraction of the image), "
                         f"got {excerpt(repr(s.feather), 40)}")
    if not isinstance(s.select, str) or s.select not in SELECT_CHOICES:
        raise InputError(f"select must be one of {', '.join(SELECT_CHOICES)}, got {excerpt(repr(s.select), 40)}")
    select = None if s.select == SELECT_OFF else s.select
    candidates = 1
    if select is not None:
        candidates = DEFAULT_CANDIDATES if s.candidates is None else _int(s.candidates, "candidates")
        if not 1 <= candidates <= limits.max_candidates:
            raise InputError(f"candidates must lie in 1..{limits.max_candidates} on this server, got {candidates}")
    check_options(0.0, None, s.negation)
    if s.guidance_scale is not None:
        try:
            scale = float(s.guidance_scale)
        except (TypeError, ValueError):
            shown = excerpt(repr(s.guidance_scale), 40)
            raise InputError(f"the guidance scale must be a number, got {shown}") from None
        if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
            raise InputError(f"the guidance scale must lie in [-{MAX_SCALE:g}, {MAX_SCALE:g}], got {scale}")
    expr = parse_limited(s.expr, limits)
    clauses = expr.clauses()
    m = store.get(s.model)
    check_concepts(expr, m.task)
    scale = float(m.default_scale) if s.guidance_scale is None else float(s.guidance_scale)
    for clause in clauses:
        if not all(math.isfinite(e) for e in effective_weights(list(clause.terms), scale, s.mode)):
            raise InputError(f"the effective weights (weight x guidance scale {scale:g}) overflow; "
                             "use smaller weights")
    sampler = s.sampler or m.sampling.get("sampler", "ddim")
    if steps is None:
        steps = min(int(m.sampling.get("steps", 50)), limits.max_steps)
    try:  # the model's own spacing (and steps_offset), as generation runs it
        timesteps(m, steps)
    except InputError as err:
        raise InputError(f"steps: {str(err).removeprefix('steps/spacing: ')}") from None
    corrector = None if s.corrector == CORRECTOR_OFF else Corrector(s.corrector)
    s = replace(s, n=n, seed=seed, steps=steps, sampler=sampler, guidance_scale=scale, feather=feather,
                candidates=candidates)
    has_regions = any(leaf.region is not None for leaf in concept_leaves(expr))
    return Checked(s, expr, sampler, steps, scale, corrector, feather, has_regions, select, candidates)


def check_number(value: Any, what: str) -> None:
    """InputError unless ``value`` is a finite number (not a bool): what a number field of the
    API must send. Gradio's own conversion fails on "abc", None or NaN without a message."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, got {excerpt(repr(value), 40)}")
