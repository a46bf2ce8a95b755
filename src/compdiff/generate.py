"""The one generation path: seeds -> OR clauses -> x_T -> timesteps -> sampler or scheduler -> decode.

    import compdiff as cd
    model = cd.open_model("objects")                     # or a diffusers pipeline folder
    out = cd.generate(model, '"0.3,0.5" AND NOT "0.7,0.5"', seeds=range(4))
    out.images                                           # (4, 3, H, W) float32 in [-1, 1], on the CPU
    out.uint8()                                          # (4, 3, H, W) uint8, as every front end writes it

``compdiff sample``, the web app, ``compdiff eval``, every backend's ``generate`` / ``sample_latents``
and Python users all come through :func:`prepare` (which :func:`generate` wraps), so the same
expression, seeds and settings give the same images whichever door they come in by. This module is
the only place that draws OR clauses, makes x_T, chooses timesteps, runs a sampler or a diffusers
scheduler, and decodes.

Seeds: image i uses ``seeds[i]`` alone (one CPU generator per image: its OR clause is drawn first,
then its noise), whatever the batch size. Batches of ``batch_size`` images (default: all) are
sampled one after the other; within a batch the model sees all its rows in one call (compose).

Defaults come from the opened model (:class:`OpenedModel`), stated once there: its sampler and steps
(``sampling``), its guidance scale (``default_scale``) and its timestep spacing (``spacing``):
"trailing" for VP tables (the first step starts at pure noise, t = T − 1), the pipeline's own for
flow models (SD3: "linspace"; Flux: "trailing"), see docs/pipelines.md.

Selection (``select="lift" | "cached-lift"``, ``candidates=M``): image i draws M candidates, candidate j
from the seed ``compdiff.select.candidate_seed(seeds[i], 0, j)`` (j = 0: seeds[i] itself, so M = 1 is
plain sampling bit for bit; j >= 1: splitmix64(seeds[i]·2^32 + j) mod 2^63), all b·M candidates of a
batch of b images in one sampler run (b·M·(K+1) rows per model call). Each candidate is scored per term:
"lift" by :func:`compdiff.lift.lift_x0` on its final latents (no VAE round trip; noises from
``select.lift_seed(candidate seed)``; ``lift_options`` times, draws, weighting; cost
b·M·(K+1)·times·draws rows), "cached-lift" by :class:`compdiff.lift.CachedLift` from the sampler's own
calls (zero extra model evaluations; ``lift_options`` weighting). The kept candidate is the one with
the largest keep-rule margin (``compdiff.select.select``: every positive term's lift > 0 and every NOT
term's < 0; with OR, one clause), the lowest j among ties, satisfying or not: exactly n images come
back, with their candidate index, seed, lift table, margin and satisfied flag (:class:`Generated`).

This module knows no model family: the model is any :class:`OpenedModel`, whose ``run_scheduler``
(pipelines only) runs a diffusers scheduler. It imports only expr, schedule, compose, sampling and
correctors (and lift and select, beside them), so every layer above (backends, eval, cli, web) may call it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Callable, Iterator, Literal, Mapping, NamedTuple, Sequence

import torch
from torch import Tensor

from compdiff.compose import compose
from compdiff.compose_each import compose_each
from compdiff.correctors import Corrector
from compdiff.denoiser import ConceptEncoder, Denoiser
from compdiff.errors import InputError
from compdiff.expr import Expr, parse
from compdiff.lift import CachedLift, check_times, expression_concepts, lift_x0
from compdiff.regions import Masks
from compdiff.select import candidate_seed, lift_seed, select as keep_best, signs
from compdiff.sampling import SAMPLERS, Callback, generators, get_sampler, randn, sampler_options
from compdiff.schedule import NoiseSchedule, Schedule

Spacing = Literal["trailing", "leading", "linspace"]
SPACINGS = ("trailing", "leading", "linspace")
MAX_SEED = 2**63 - 1
#: the fallbacks when a model recommends no sampler / steps (world models without a 'sampling' block)
FALLBACK_SAMPLER, FALLBACK_STEPS = "ddim", 50
#: selection while sampling: the scorers, the candidates per image (1..MAX_CANDIDATES; DEFAULT_CANDIDATES
#: when select is given without candidates), and the lift options each scorer takes
SELECTS = ("lift", "cached-lift")
MAX_CANDIDATES = 64
DEFAULT_CANDIDATES = 4
LIFT_OPTIONS = {"lift": ("times", "draws", "weighting"), "cached-lift": ("weighting",)}
MAX_LIFT_DRAWS = 64


@dataclass
class OpenedModel:
    """What generation needs from a model (``compdiff.open_model`` returns one).

    latent_shape: (C, h, w) of one sample; decode: samples (N, *latent_shape) -> images (N, 3, H, W) in
    [-1, 1]; clip_x0: the sampler's x̂_0 clamp (world images lie in [-1, 1]; latents are not clipped);
    family: the backend's name; task: the world task, for world models; info: extra facts.
    The model's defaults, stated once: ``sampling`` {"sampler", "steps"} (its recommendation; {} falls
    back to ddim, 50: :attr:`default_sampler`, :attr:`default_steps`), ``default_scale`` (guidance
    scale), ``spacing`` (timestep spacing) and ``steps_offset`` ("leading" spacing's offset: the
    pipeline scheduler's steps_offset). device: where x_T goes (the denoiser's execution device).
    scheduler: the pipeline's own diffusers scheduler (None for world models); run_scheduler:
    ``(fn, x_T, scheduler, steps, generator=, callback=, eta=) -> latents``, how this family runs a
    diffusers scheduler (None: it cannot).
    """

    denoiser: Denoiser
    encoder: ConceptEncoder
    schedule: Schedule
    latent_shape: tuple[int, ...]
    decode: Callable[[Tensor], Tensor]
    family: str
    name: str
    default_scale: float
    clip_x0: float | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    info: dict[str, Any] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    spacing: Spacing = "trailing"
    steps_offset: int = 0
    scheduler: Any = None
    run_scheduler: Callable[..., Tensor] | None = None

    @property
    def default_sampler(self) -> str:
        return str(self.sampling.get("sampler", FALLBACK_SAMPLER))

    @property
    def default_steps(self) -> int:
        return int(self.sampling.get("steps", FALLBACK_STEPS))


@dataclass(frozen=True)
class Generated:
    """images: (N, 3, H, W) float32 on the CPU, in [-1, 1]; seeds: image i's seed; assignment: the OR
    clause image i followed (0 for all without OR); clauses: the expression's clauses (its DNF;
    () for one expression per image); model_evals: denoiser rows evaluated to make them (sampling, and
    the lift scores of selection: ``lift_evals`` of them).

    With selection (``select`` "lift" | "cached-lift", ``candidates`` M per image), per image: ``kept``
    the kept candidate j, ``kept_seeds`` its seed (``select.candidate_seed(seeds[i], 0, j)``), ``lifts``
    its lift table, one (concept, want, lift) per term (want "present" for a positive term, "absent"
    for a NOT term, "either" for a concept positive in one OR clause and negated in another; lift in
    nats, NaN where cached-lift never evaluated it), ``margins`` its keep-rule margin and ``satisfied``
    whether the margin is > 0. All () without selection."""

    images: Tensor
    seeds: tuple[int, ...]
    assignment: tuple[int, ...]
    clauses: tuple = ()
    model_evals: int = 0
    select: str | None = None
    candidates: int = 1
    kept: tuple[int, ...] = ()
    kept_seeds: tuple[int, ...] = ()
    lifts: tuple[tuple[tuple[str, str, float], ...], ...] = ()
    margins: tuple[float, ...] = ()
    satisfied: tuple[bool, ...] = ()
    lift_evals: int = 0

    def uint8(self) -> Tensor:
        """(N, 3, H, W) uint8: round((x + 1)·127.5), as every front end writes images."""
        return to_uint8(self.images)

    def record(self, i: int) -> dict[str, Any]:
        """Image i's selection as plain JSON values (what ``compdiff sample --select`` writes beside it):
        {"seed": the kept candidate's seed, "image_seed": seeds[i], "candidate": j, "candidates": M,
        "select", "lift": [{"concept", "want", "lift"}, ...], "margin", "satisfied"} (+ "clause" with
        OR); a non-finite lift or margin is null."""
        if self.select is None:
            raise ValueError("this generation made no selection (select=None)")

        def num(v: float) -> float | None:
            return float(v) if math.isfinite(v) else None

        out: dict[str, Any] = {"seed": int(self.kept_seeds[i]), "image_seed": int(self.seeds[i]),
                               "candidate": int(self.kept[i]), "candidates": int(self.candidates),
                               "select": self.select,
                               "lift": [{"concept": c, "want": w, "lift": num(v)} for c, w, v in self.lifts[i]],
                               "margin": num(self.margins[i]), "satisfied": bool(self.satisfied[i])}
        if len(self.clauses) > 1:
            out["clause"] = int(self.assignment[i])
        return out


def _concat(parts: Sequence[Generated]) -> Generated:
    """Batches of one run as one Generated, in order."""
    first = parts[0]

    def cat(name: str) -> tuple:
        return tuple(v for p in parts for v in getattr(p, name))

    return Generated(torch.cat([p.images for p in parts]), cat("seeds"), cat("assignment"), first.clauses,
                     sum(p.model_evals for p in parts), first.select, first.candidates, cat("kept"),
                     cat("kept_seeds"), cat("lifts"), cat("margins"), cat("satisfied"),
                     sum(p.lift_evals for p in parts))


def to_uint8(images: Tensor) -> Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, 3, H, W) uint8 on the CPU, round((x + 1)·127.5)."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# ---- argument checks: a wrong type or value is an InputError naming the argument -------------------------
def _real(name: str, value: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not lo <= float(value) <= hi:
        raise InputError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"{name} must be a whole number in [{lo}, {hi}], got {value!r}")
    return int(value)


def _one_of(name: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_seeds(seeds: Any) -> list[int]:
    """A non-empty sequence of whole numbers in [0, 2**63); InputError naming ``seeds`` otherwise."""
    if isinstance(seeds, (str, bytes, int, Tensor)) or not isinstance(seeds, (Sequence, range)):
        raise InputError(f"seeds must be a sequence of whole numbers (e.g. range(4)), got {type(seeds).__name__}")
    out = [_int("each seed", s, 0, MAX_SEED) for s in seeds]
    if not out:
        raise InputError("seeds must hold at least one seed (one image per seed)")
    return out


def _check_model(model: Any) -> None:
    if not isinstance(model, OpenedModel):
        raise InputError(f"model must be an opened model (compdiff.open_model(name_or_path)), got "
                         f"{type(model).__name__}")


def _expressions(expr: Any, n: int) -> Expr | list[Expr]:
    """One Expr, or one per image (a list whose expressions are all the same is that one expression)."""
    if isinstance(expr, (str, Expr)):
        return parse(expr) if isinstance(expr, str) else expr
    if not isinstance(expr, Sequence) or not all(isinstance(e, (str, Expr)) for e in expr):
        raise InputError(f"expr must be an expression (text or compdiff.Expr) or a list of them, got "
                         f"{type(expr).__name__}")
    if len(expr) != n:
        raise InputError(f"expr: got {len(expr)} expressions for {n} seeds (one per image)")
    parsed = [parse(e) if isinstance(e, str) else e for e in expr]
    return parsed[0] if all(str(e) == str(parsed[0]) for e in parsed) else parsed


def _scheduler(model: OpenedModel, scheduler: Any) -> Any:
    """None, or the diffusers scheduler object to run: ``"pipeline"`` = the model's own, a class name
    (e.g. "EulerDiscreteScheduler") = that class built from the model's scheduler config, or an object."""
    if scheduler is None:
        return None
    if model.run_scheduler is None or model.scheduler is None:
        raise InputError(f"scheduler applies to diffusers pipelines, not to a {model.family} model; use sampler")
    if isinstance(scheduler, str):
        if scheduler == "pipeline":
            return model.scheduler
        import diffusers

        cls = getattr(diffusers, scheduler, None)
        if not (isinstance(cls, type) and scheduler.endswith("Scheduler") and hasattr(cls, "from_config")):
            raise InputError(f"scheduler {scheduler!r}: not 'pipeline' nor a diffusers scheduler class name (e.g. "
                             "EulerDiscreteScheduler, DPMSolverMultistepScheduler)")
        try:
            return cls.from_config(model.scheduler.config)
        except Exception as err:  # noqa: BLE001 - whatever the scheduler refuses in this config
            raise InputError(f"scheduler {scheduler}: cannot be built from this pipeline's scheduler config "
                             f"({err})") from None
    if not all(hasattr(scheduler, a) for a in ("config", "set_timesteps", "step")):
        raise InputError(f"scheduler must be None, 'pipeline', a diffusers scheduler class name or a diffusers "
                         f"scheduler object, got {type(scheduler).__name__}")
    return scheduler


@dataclass(frozen=True)
class Plan:
    """How a run samples: ``sampler`` (None when a diffusers ``scheduler`` runs instead), ``steps``,
    ``timesteps`` (the sampler's times; None with a scheduler), sampler ``options`` (eta), corrector."""

    sampler: str | None
    steps: int
    timesteps: Tensor | None
    scheduler: Any
    options: dict[str, Any]
    corrector: Corrector | None
    eta: float


def plan(model: OpenedModel, *, sampler: str | None = None, steps: int | None = None,
         spacing: Spacing | None = None, scheduler: Any = None, corrector: Corrector | None = None,
         eta: float = 0.0) -> Plan:
    """The sampler or scheduler, steps and timesteps of a run, the model's defaults filling the gaps."""
    _check_model(model)
    steps = model.default_steps if steps is None else _int("steps", steps, 1, 100_000)
    eta = _real("eta", eta, 0.0, 1.0)
    if corrector is not None and not isinstance(corrector, Corrector):
        raise InputError(f"corrector must be a compdiff.Corrector or None, got {type(corrector).__name__}")
    sched = _scheduler(model, scheduler)
    if sched is not None:
        if sampler is not None or corrector is not None:
            raise InputError("scheduler runs a diffusers scheduler instead of compdiff's samplers: it cannot be "
                             "combined with sampler or corrector")
        return Plan(None, steps, None, sched, {}, None, eta)
    sampler = model.default_sampler if sampler is None else _one_of("sampler", sampler, tuple(SAMPLERS))
    get_sampler(sampler)
    options = {"eta": eta} if "eta" in sampler_options(sampler) else {}
    if eta != 0 and not options:
        takers = ", ".join(n for n in SAMPLERS if "eta" in sampler_options(n))
        raise InputError(f"eta applies to {takers}, not to the sampler {sampler!r}")
    return Plan(sampler, steps, timesteps(model, steps, spacing), None, options, corrector, eta)


def timesteps(model: OpenedModel, steps: int, spacing: Spacing | None = None) -> Tensor:
    """The run's descending times: ``spacing`` (default the model's) over the model's schedule;
    "leading" adds the pipeline's steps_offset on VP tables, as diffusers does."""
    spacing = model.spacing if spacing is None else _one_of("spacing", spacing, SPACINGS)
    offset = model.steps_offset if spacing == "leading" and isinstance(model.schedule, NoiseSchedule) else 0
    try:
        return model.schedule.timesteps(steps, spacing, offset)
    except ValueError as err:
        raise InputError(f"steps/spacing: {err}") from None


# ---- selection ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selecting:
    """How a run selects: ``how`` ("lift" | "cached-lift"), ``candidates`` M per image, the lift ``options``
    (checked: times, draws, weighting for "lift"; weighting for "cached-lift")."""

    how: str
    candidates: int
    options: dict[str, Any]


def selecting(model: OpenedModel, select: str | None, candidates: int | None,
              lift_options: Mapping[str, Any] | None) -> Selecting | None:
    """The checked selection settings (None: plain sampling); InputError naming the bad argument."""
    if select is None:
        if candidates is not None and candidates != 1:
            raise InputError(f"candidates ({candidates!r}) needs select='lift' or 'cached-lift': without a score "
                             "there is nothing to choose by")
        if lift_options:
            raise InputError("lift_options apply with select='lift' or 'cached-lift'")
        return None
    how = _one_of("select", select, SELECTS)
    m = DEFAULT_CANDIDATES if candidates is None else _int("candidates", candidates, 1, MAX_CANDIDATES)
    if lift_options is not None and not isinstance(lift_options, Mapping):
        raise InputError(f"lift_options must be a mapping (e.g. {{'draws': 2}}) or None, got "
                         f"{type(lift_options).__name__}")
    given = dict(lift_options or {})
    unknown = sorted(set(given) - set(LIFT_OPTIONS[how]), key=str)
    if unknown:
        raise InputError(f"lift_options: {unknown[0]!r} does not apply to select={how!r}, which takes "
                         f"{', '.join(LIFT_OPTIONS[how])}")
    options: dict[str, Any] = {}
    if "times" in given:
        try:
            options["times"] = check_times(model.schedule, given["times"])
        except (InputError, TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"lift_options['times']: {err}") from None
    if "draws" in given:
        options["draws"] = _int("lift_options['draws']", given["draws"], 1, MAX_LIFT_DRAWS)
    if "weighting" in given:
        options["weighting"] = _one_of("lift_options['weighting']", given["weighting"], ("elbo", "simple"))
    return Selecting(how, m, options)


def _check_scorable(exprs: Sequence[Expr]) -> None:
    for e in exprs:
        if not expression_concepts(e):
            raise InputError(f"select: the expression {str(e)!r} has no concept with a non-zero weight to score")


def _wants(expr: Expr, concepts: Sequence[str]) -> tuple[str, ...]:
    """Per concept what the keep rule asks of its lift: "present" (> 0), "absent" (< 0) or "either"."""
    sign = signs(expr, concepts)
    out = []
    for k in range(len(concepts)):
        col = {float(v) for v in sign[:, k].tolist() if v != 0}
        out.append("present" if col == {1.0} else "absent" if col == {-1.0} else "either")
    return tuple(out)


class Sampled(NamedTuple):
    """latents (b, *latent_shape); assignment (b,) each sample's OR clause; model_evals: denoiser rows the
    run evaluated; cached: the CachedLift that wrapped the run (None unless asked for)."""

    latents: Tensor
    assignment: Tensor
    model_evals: int
    cached: CachedLift | None


# ---- the run ---------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A composed expression and a plan, ready to sample batches of seeds (see :func:`prepare`).
    fn: the composition (``ComposedEps``; None for one expression per image, composed per batch);
    expr: the shared expression (None for one per image, ``exprs``); selecting: the selection (None:
    plain sampling)."""

    model: OpenedModel
    fn: Any
    exprs: list[Expr] | None
    plan: Plan
    compose_options: dict[str, Any]
    callback: Callback | None
    expr: Expr | None = None
    selecting: Selecting | None = None

    def batches(self, seeds: Sequence[int], batch_size: int | None = None) -> Iterator[Generated]:
        """One :class:`Generated` per batch of ``batch_size`` seeds (default: all at once), in order.
        With selection a batch samples batch_size × candidates candidates at once."""
        seeds = check_seeds(seeds)
        if self.exprs is not None and len(self.exprs) != len(seeds):
            raise InputError(f"expr: got {len(self.exprs)} expressions for {len(seeds)} seeds (one per image)")
        size = len(seeds) if batch_size is None else _int("batch_size", batch_size, 1, 1 << 30)
        for start in range(0, len(seeds), size):
            yield self._batch(seeds[start:start + size], start)

    def _batch(self, seeds: list[int], start: int) -> Generated:
        if self.selecting is not None:
            return self._selected(seeds, start)
        fn = self.fn
        if fn is None:
            fn = _checked(compose_each(self.model.denoiser, self.model.encoder,
                                       self.exprs[start:start + len(seeds)], **self.compose_options))
        run = self.latents_of(fn, seeds)
        images = self.model.decode(run.latents).detach().float().cpu()
        clauses = tuple(getattr(self.fn, "clauses", ()))
        return Generated(images, tuple(seeds), tuple(int(a) for a in run.assignment.tolist()), clauses,
                         run.model_evals)

    def _selected(self, seeds: list[int], start: int) -> Generated:
        """M candidates per seed in one run, scored, the best kept (module docstring)."""
        sel, m = self.selecting, self.model
        M, b = sel.candidates, len(seeds)
        table = [[candidate_seed(s, 0, j) for j in range(M)] for s in seeds]
        flat = [c for row in table for c in row]
        image_exprs = [self.expr] * b if self.exprs is None else self.exprs[start:start + b]
        fn, terms = self.fn, None
        if self.exprs is not None:  # one expression per image: its M candidates follow it
            each = [e for e in image_exprs for _ in range(M)]
            fn = _checked(compose_each(m.denoiser, m.encoder, each, **self.compose_options))
            terms = [[t.concept for t in e.terms() if t.weight != 0.0] for e in each]
        run = self.latents_of(fn, flat, cached=sel.how == "cached-lift", terms=terms)
        concepts = [expression_concepts(e) for e in image_exprs]
        scores, lift_evals = self._scores(run, flat, concepts, M)
        kept, kept_seeds, lifts, margins, satisfied = [], [], [], [], []
        for i, e in enumerate(image_exprs):
            got = keep_best(scores[i].unsqueeze(0), e, concepts[i], [table[i]])
            j = int(got.index[0])
            kept.append(j)
            kept_seeds.append(int(got.seed[0]))
            lifts.append(tuple((c, w, float(v)) for c, w, v in zip(concepts[i], _wants(e, concepts[i]),
                                                                     got.scores[0].tolist())))
            margins.append(float(got.margin[0]))
            satisfied.append(bool(got.satisfied[0]))
        rows = torch.tensor([i * M + j for i, j in enumerate(kept)], dtype=torch.long)
        images = m.decode(run.latents[rows.to(run.latents.device)]).detach().float().cpu()
        clauses = tuple(getattr(self.fn, "clauses", ()))
        return Generated(images, tuple(seeds), tuple(int(a) for a in run.assignment[rows].tolist()), clauses,
                         run.model_evals + lift_evals, sel.how, M, tuple(kept), tuple(kept_seeds), tuple(lifts),
                         tuple(margins), tuple(satisfied), lift_evals)

    def _scores(self, run: Sampled, flat: list[int], concepts: list[tuple[str, ...]],
                M: int) -> tuple[list[Tensor], int]:
        """Per image (M, K_i) float64 lifts of its candidates over its concepts, and the rows the scoring
        evaluated (0 for cached-lift)."""
        m, sel = self.model, self.selecting
        per_row = [concepts[r // M] for r in range(len(flat))]
        values = [torch.empty(len(c), dtype=torch.float64) for c in per_row]
        evals = 0
        if sel.how == "cached-lift":
            raw = run.cached.scores(run.latents)  # (R, K or groups)
            for r, want in enumerate(per_row):
                names = run.cached.concepts if run.cached.terms == () else run.cached.terms[r]
                at = {}
                for g, c in enumerate(names):
                    if c is not None:
                        at.setdefault(c, g)
                values[r] = torch.stack([raw[r, at[c]] if c in at else torch.tensor(math.nan, dtype=torch.float64)
                                         for c in want])
        else:  # images with the same concepts are scored in one call (per-image noises: batch-independent)
            for group in dict.fromkeys(per_row):
                idx = [r for r, c in enumerate(per_row) if c == group]
                got = lift_x0(m.denoiser, m.encoder, m.schedule, run.latents[idx], [list(group)] * len(idx),
                              seeds=[lift_seed(flat[r]) for r in idx], max_batch=self.compose_options["max_batch"],
                              **sel.options)
                evals += got.model_evals
                for r, row in zip(idx, got.scores):
                    values[r] = row.double()
        return [torch.stack(values[i * M:(i + 1) * M]) for i in range(len(concepts))], evals

    @torch.no_grad()
    def latents_of(self, fn: Any, seeds: list[int], cached: bool = False,
                   terms: list[list[str]] | None = None) -> Sampled:
        """The run of ``seeds``: clauses then x_T from each seed, the sampler or scheduler, its cost; with
        ``cached`` the (bound) composition runs wrapped as a CachedLift (``terms``: per sample, for one
        expression per sample)."""
        m, p = self.model, self.plan
        gens = generators(seeds)
        assignment = torch.zeros(len(seeds), dtype=torch.long)
        if hasattr(fn, "draw_clauses"):  # OR: each image draws its clause by its own seed, before its noise
            assignment = fn.draw_clauses(len(seeds), gens)
            fn = fn.with_clauses(assignment)
        if cached:
            weighting = self.selecting.options.get("weighting", "elbo") if self.selecting else "elbo"
            fn = CachedLift(fn, m.schedule, weighting, terms=terms)
        before = int(getattr(fn, "rows_evaluated", 0))
        x_T = randn((len(seeds), *m.latent_shape), gens, dtype=torch.float32, device=m.device)
        if p.scheduler is not None:
            out = m.run_scheduler(fn, x_T, p.scheduler, p.steps, generator=gens, callback=self.callback, eta=p.eta)
        else:
            out = get_sampler(p.sampler)(fn, x_T, m.schedule, p.timesteps, generator=gens, callback=self.callback,
                                         clip_x0=m.clip_x0, corrector=p.corrector, **p.options)
        evals = int(getattr(fn, "rows_evaluated", 0)) - before
        return Sampled(out, assignment, evals, fn if cached else None)


def _checked(fn: Any) -> Any:
    """InputError when an effective weight (weight x guidance scale) is not finite."""
    weights = getattr(fn, "weight_matrix", getattr(fn, "weights", None))
    if weights is not None and not bool(torch.isfinite(weights).all()):
        raise InputError("the effective weights (weight x guidance scale) overflow; use smaller weights")
    return fn


def prepare(model: OpenedModel, expr: Expr | str | Sequence[Expr | str], *, n: int | None = None,
            sampler: str | None = None, steps: int | None = None, spacing: Spacing | None = None,
            guidance_scale: float | None = None, corrector: Corrector | None = None, negation: str = "plain",
            mode: str = "sum", rescale: float = 0.0, eta: float = 0.0, masks: Masks | None = None,
            feather: float = 0.0, region_mode: str = "sum", scheduler: Any = None, max_batch: int | None = None,
            callback: Callback | None = None, select: str | None = None, candidates: int | None = None,
            lift_options: Mapping[str, Any] | None = None) -> Prepared:
    """Check every argument, compose ``expr`` (prompts encoded once) and plan the run; see :func:`generate`.
    n: the number of images when ``expr`` is a list (one expression per image)."""
    _check_model(model)
    sel = selecting(model, select, candidates, lift_options)
    if callback is not None and not callable(callback):
        raise InputError(f"callback must be callable or None, got {type(callback).__name__}")
    if masks is not None and not isinstance(masks, Mapping):
        raise InputError(f"masks must be a mapping of mask names to tensors, got {type(masks).__name__}")
    scale = model.default_scale if guidance_scale is None else _real("guidance_scale", guidance_scale)
    options = dict(guidance_scale=scale, mode=mode, rescale=_real("rescale", rescale, 0.0, 1.0), max_batch=max_batch,
                   negation=negation, masks=masks, feather=_real("feather", feather, 0.0, 1.0),
                   region_mode=region_mode)
    run = plan(model, sampler=sampler, steps=steps, spacing=spacing, scheduler=scheduler, corrector=corrector,
               eta=eta)
    exprs = _expressions(expr, len(expr) if n is None and not isinstance(expr, (str, Expr)) else (n or 0))
    if isinstance(exprs, list):
        _checked(compose_each(model.denoiser, model.encoder, exprs[:1], **options))  # options checked up front
        if sel is not None:
            _check_scorable(exprs)
        return Prepared(model, None, exprs, run, options, callback, None, sel)
    fn = _checked(compose(model.denoiser, model.encoder, exprs, **options))
    if sel is not None:
        _check_scorable([exprs])
    return Prepared(model, fn, None, run, options, callback, exprs, sel)


def generate(model: OpenedModel, expr: Expr | str | Sequence[Expr | str], seeds: Sequence[int], *,
             sampler: str | None = None, steps: int | None = None, spacing: Spacing | None = None,
             guidance_scale: float | None = None, corrector: Corrector | None = None, negation: str = "plain",
             mode: str = "sum", rescale: float = 0.0, eta: float = 0.0, masks: Masks | None = None,
             feather: float = 0.0, region_mode: str = "sum", scheduler: Any = None, batch_size: int | None = None,
             max_batch: int | None = None, callback: Callback | None = None, select: str | None = None,
             candidates: int | None = None, lift_options: Mapping[str, Any] | None = None) -> Generated:
    """Images of ``expr`` for ``seeds`` (image i from seeds[i] alone), as a :class:`Generated`.

    model: an OpenedModel (``compdiff.open_model``). expr: an expression (text or Expr), or one per seed.
    sampler / steps / spacing / guidance_scale: None = the model's defaults. corrector: a
    ``compdiff.Corrector`` (MCMC steps at each level) or None. negation "plain" | "perp", mode "sum" |
    "mean", rescale in [0, 1], masks / feather / region_mode for regions: as :func:`compdiff.compose`.
    eta: DDIM's (samplers that take it, and diffusers schedulers). scheduler: None (compdiff's
    sampler), "pipeline" (the pipeline's own diffusers scheduler), a diffusers scheduler class name
    built from its config, or a scheduler object; it excludes sampler and corrector. batch_size: images
    sampled at a time (default all; the images do not depend on it up to float round-off of batched
    kernels). max_batch: cap on rows per model call. callback: gets a StepInfo after every step of every
    batch. select: None (plain sampling), "lift" or "cached-lift": draw ``candidates`` M (1..64, default
    4) per image and keep the best by the keep rule (module docstring; batch_size counts kept images, a
    batch samples batch_size × M candidates); lift_options: "lift" takes times (the lift's t-grid,
    default 10 centred times), draws (noise draws per time, default 1) and weighting ("elbo" |
    "simple"); "cached-lift" takes weighting. Raises InputError for any bad argument (naming it) before
    any sampling.
    """
    if batch_size is not None:
        _int("batch_size", batch_size, 1, 1 << 30)
    prepared = prepare(model, expr, n=len(check_seeds(seeds)), sampler=sampler, steps=steps, spacing=spacing,
                       guidance_scale=guidance_scale, corrector=corrector, negation=negation, mode=mode,
                       rescale=rescale, eta=eta, masks=masks, feather=feather, region_mode=region_mode,
                       scheduler=scheduler, max_batch=max_batch, callback=callback, select=select,
                       candidates=candidates, lift_options=lift_options)
    return _concat(list(prepared.batches(seeds, batch_size)))


def sample_latents(model: OpenedModel, expr: Expr | str, seeds: Sequence[int], **options: Any) -> Tensor:
    """The undecoded latents (N, *latent_shape) of :func:`generate` (same arguments, one batch; no
    selection: it returns every image it samples)."""
    if options.get("select") is not None or options.get("candidates") not in (None, 1):
        raise InputError("select: sample_latents returns plain samples; selection is compdiff.generate's")
    prepared = prepare(model, expr, **options)
    seeds = check_seeds(seeds)
    return prepared.latents_of(prepared.fn, seeds)[0]


__all__ = ["OpenedModel", "Generated", "Plan", "Prepared", "Selecting", "generate", "prepare", "plan", "timesteps",
           "sample_latents", "selecting", "to_uint8", "check_seeds", "SPACINGS", "SELECTS", "MAX_CANDIDATES",
           "DEFAULT_CANDIDATES"]
