"""The composition tables: generate one image per concept set, judge it, report.

For each number of components K and each method, ``n`` concept sets (see concept_sets.py)
are generated in batches (one batched sampler run per batch, every sample with its own
expression via ``compose_each``), read by the judge, and scored:

- accuracy: the fraction of images where every positive concept holds (and the negated
  one does not), by the task's own ``holds`` on the judged scene;
- per-concept accuracy: the fraction of (image, positive concept) pairs that hold;
- the task's own extra metrics (``Task.extra_metrics``), e.g. for objects the judged
  objects farther than the radius from every requested position, per image;
- for a task whose concepts are single objects (``Task.region_center``: described), for every
  method, ``in_region``: the fraction of images where every positive concept holds with its
  object's centre inside the concept's box (the box of side ``EvalSpec.region_size`` around the
  real object it describes, see concept_sets.py), and ``per_concept_in_region``: the fraction of
  (image, concept) pairs. The boxes are the same whether or not the method was given them:
  method ``composed-regions`` (``Method.regions``) confines each concept's guidance to its box,
  ``"a small red metal cube" @ (0.100, 0.200, 0.500, 0.600)``; ``composed`` does not;
- FD-judge: Fréchet distance over judge features between the generated images and the
  real renders of the same sets; ``fd_floor`` is the same distance between those real
  renders and real renders of other sets of the same K (what "as good as real" reads as).

With selection (``EvalSpec.select`` "lift" | "cached-lift", ``candidates`` M; compdiff.generate's), each
set draws M candidates and keeps the best by the model's own lift; every cell records ``model_evals``
(denoiser rows spent, sampling and scoring) and, with selection, ``selection``: per set the kept
candidate, its lift per concept (as ``asked`` names them, the NOT concept last), margin and whether the
keep rule held, beside the judge's per-concept verdicts (``concept_success``, ``negative_success``):
what bench/lift_selection.py reads for lift-as-classifier agreement and ROC AUC.

Results go to ``results.json`` after every cell (atomically), so an interrupted run
resumes without recomputing finished cells; table.md and accuracy.png are rewritten too.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from compdiff.errors import InputError
from compdiff.generate import OpenedModel
from compdiff.eval.concept_sets import (REGION_SIZE, SETS_VERSION, ConceptSet, check_regions, concept_sets,
                                        has_regions)
from compdiff.eval.frechet import frechet_from_features, judge_features
from compdiff.eval.judge import Judge
from compdiff.eval.stats import wilson
from compdiff.expr import quote
from compdiff.atomic import write_json, write_png
from compdiff.correctors import Corrector
from compdiff.schedule import Schedule
from compdiff.world import get_task, render, to_uint8
from compdiff.world.grid import make_grid
from compdiff.world.holdout import get_split
from compdiff.world.tasks import Task


@dataclass(frozen=True)
class EvalSpec:
    task: str
    components: tuple[int, ...] = (1, 2, 3)
    n: int = 256
    negate: bool = False
    sampler: str = "ddim"
    steps: int = 50
    spacing: str = "trailing"
    guidance_scale: float = 3.0
    seed: int = 7
    batch_size: int = 64
    clip_x0: float | None = 1.0  # world images lie in [-1, 1]
    negation: str = "plain"  # "perp": Perp-NOT (compose's negation option)
    correct: str | None = None  # MCMC corrector ("ula" | "uhmc"), see compdiff.correctors
    corrector_steps: int = 2
    methods: tuple[str, ...] = ("composed",)
    eta: float = 0.0  # samplers with an eta option (ddim)
    rescale: float = 0.0  # guidance rescale (compose's option)
    sets: str = "all"  # "seen" | "held-out": only sets of seen / held-out combinations of ``hold_out``
    hold_out: str | None = None  # the held-out split (compdiff.world.holdout) the sets refer to
    region_size: float = REGION_SIZE  # side of a concept's box (composed-regions, in_region), image fraction
    sets_version: int = SETS_VERSION  # how the concept sets were drawn (concept_sets.py); 1 before 2026-12-01
    feather: float = 0.0  # regions: width of the boxes' linear edge ramp, image fraction (compose's feather)
    region_mode: str = "sum"  # regions: "sum" | "normalize" where boxes overlap (compose's region_mode)
    select: str | None = None  # selection while sampling: "lift" | "cached-lift" (compdiff.generate's select)
    candidates: int = 1  # candidates per set with select

    def corrector(self) -> Corrector | None:
        """The corrector of this evaluation: ``correct`` with ``corrector_steps`` and the default range."""
        return None if self.correct is None else Corrector(self.correct, steps=self.corrector_steps)


@dataclass
class Method:
    """How one method turns a concept set into a sample: denoiser, encoder, rule."""

    name: str
    denoiser: Any
    encoder: Any
    mode: str = "sum"
    joint: bool = False  # the whole set is ONE condition (the joint-conditioning baseline)
    schedule: Schedule | None = None
    info: dict[str, Any] = field(default_factory=dict)
    regions: bool = False  # each positive concept confined to its box (task with region_center only)
    device: Any = "cpu"  # where the denoiser runs and the noise goes (the images come back to the CPU)

    def expression(self, task: Task, s: ConceptSet, region_size: float = REGION_SIZE) -> str:
        if self.regions and self.joint:
            raise InputError(f"{self.name}: a joint-conditioning model has no regions")
        if not self.joint:
            return s.expression(task, region_size if self.regions else None)
        if s.negative is not None:
            raise InputError(f"{self.name}: a joint-conditioning model has no NOT")
        return quote("; ".join(task.format(c) for c in s.positives))

    def opened(self, spec: EvalSpec, shape: tuple[int, ...]) -> OpenedModel:
        """This method's model as compdiff.generate sees it: images of ``shape``, the spec's x̂_0 clamp."""
        return OpenedModel(self.denoiser, self.encoder, self.schedule, tuple(shape), lambda x: x.clamp(-1, 1),
                           "eval", self.name, spec.guidance_scale, clip_x0=spec.clip_x0,
                           device=torch.device(self.device))


def generate(method: Method, task: Task, sets: list[ConceptSet], spec: EvalSpec, shape: tuple[int, ...],
             tick: Callable[[], None] = lambda: None, shard: tuple[int, int] = (0, 1),
             generated: list | None = None) -> torch.Tensor:
    """One image per set, (N, *shape) in [-1, 1]: set i follows its own expression and gets the noise of
    seed spec.seed·100000 + i for every method (:func:`sample_images`)."""
    exprs = [method.expression(task, s, spec.region_size) for s in sets]
    return sample_images(method.opened(spec, shape), exprs, spec, tick, shard, mode=method.mode, generated=generated)


def sample_images(model: OpenedModel, exprs: list[str], spec: EvalSpec, tick: Callable[[], None] = lambda: None,
                  shard: tuple[int, int] = (0, 1), mode: str = "sum", generated: list | None = None) -> torch.Tensor:
    """compdiff.generate of ``exprs`` (image i: exprs[i], seed spec.seed·100000 + i) in chunks of
    spec.batch_size, with the spec's sampler, steps, spacing, guidance, corrector, selection and options.
    ``generated``: a list that receives every chunk's compdiff.Generated (images without the tensor:
    seeds, selection, model_evals), in order.

    shard = (rank, world): this process makes the chunks c with c % world == rank and the processes
    exchange them, so every process returns all N images, each from exactly the chunk (same rows,
    same batch) a single process would have run: bit-identical to one process."""
    from dataclasses import replace

    from compdiff.generate import generate as run

    rank, world = shard
    out = {}
    for c, start in enumerate(range(0, len(exprs), spec.batch_size)):
        if c % world != rank:
            continue
        chunk = exprs[start:start + spec.batch_size]
        seeds = [spec.seed * 100_000 + start + j for j in range(len(chunk))]  # same noise per method
        g = run(model, chunk, seeds, sampler=spec.sampler, steps=spec.steps, spacing=spec.spacing,
                guidance_scale=spec.guidance_scale, corrector=spec.corrector(), negation=spec.negation,
                mode=mode, rescale=spec.rescale, eta=spec.eta, feather=spec.feather,
                region_mode=spec.region_mode, callback=lambda _: tick(), select=spec.select,
                candidates=spec.candidates if spec.select else None)
        out[c] = (g.images, replace(g, images=torch.empty(0)))
    if world > 1:
        from accelerate.utils import gather_object

        out = dict(gather_object(list(out.items())))
    if generated is not None:
        generated.extend(out[c][1] for c in sorted(out))
    return torch.cat([out[c][0] for c in sorted(out)])


def selection_record(task: Task, sets: list[ConceptSet], parts: list) -> dict[str, Any]:
    """A cell's ``model_evals`` and, with selection, its ``selection``: per set the kept candidate, its lift
    per concept in the order of ``asked`` (then the NOT concept), margin and whether the keep rule held."""
    rec: dict[str, Any] = {"model_evals": int(sum(g.model_evals for g in parts)),
                           "lift_evals": int(sum(g.lift_evals for g in parts))}
    if not parts or parts[0].select is None:
        return rec
    kept = [k for g in parts for k in g.kept]
    lifts = [dict((c, v) for c, _, v in row) for g in parts for row in g.lifts]
    names = [[task.format(c) for c in s.positives] + ([task.format(s.negative)] if s.negative is not None else [])
             for s in sets]

    def num(v: float | None) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    rec["selection"] = {"select": parts[0].select, "candidates": parts[0].candidates, "kept": kept,
                        "lift": [[num(table.get(c)) for c in row] for table, row in zip(lifts, names)],
                        "margin": [num(m) for g in parts for m in g.margins],
                        "satisfied": [bool(v) for g in parts for v in g.satisfied]}
    return rec


def shard_of_this_process() -> tuple[int, int]:
    """(rank, world) under ``accelerate launch`` (several processes), else (0, 1)."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    from accelerate import PartialState

    # cpu=True where there is no GPU: without it accelerate sees one process per process (distributed
    # type NO) however many were started, and every process would sample and write everything
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.process_index, state.num_processes


def region_metrics(task: Task, sets: list[ConceptSet], judged: list, size: float) -> dict[str, float]:
    """``in_region`` (per image: every positive concept holds inside its box) and
    ``per_concept_in_region`` (per (image, concept) pair) of judged scenes, one per set."""
    per = [s.in_region(task, j, size) for s, j in zip(sets, judged)]
    return {"in_region": float(np.mean([all(p) for p in per])),
            "per_concept_in_region": float(np.mean([v for p in per for v in p]))}


def _score(task: Task, judge: Judge, sets: list[ConceptSet], images: torch.Tensor,
           region_size: float = REGION_SIZE) -> dict[str, Any]:
    judged = judge.read(images, layout=task.layout)
    ok = [s.satisfied_by(task, j) for s, j in zip(sets, judged)]
    per_set = [[bool(task.holds(c, j)) for c in s.positives] for s, j in zip(sets, judged)]
    res: dict[str, Any] = {"accuracy": float(np.mean(ok)),
                           "concept_accuracy": float(np.mean([v for p in per_set for v in p])),
                           "success": [bool(v) for v in ok],
                           # per set, for reading a cell afterwards (bench/eval_breakdown.py): what was
                           # asked, which positive concepts held, and what the judge read in the image
                           "asked": [[task.format(c) for c in s.positives] for s in sets],
                           "concept_success": per_set,
                           "judged": [[o.describe() for o in j.objects] for j in judged]}
    res.update(task.extra_metrics(sets, judged))
    if has_regions(task):
        res.update(region_metrics(task, sets, judged, region_size))
    if any(s.negative is not None for s in sets):
        absent = [None if s.negative is None else not task.holds(s.negative, j) for s, j in zip(sets, judged)]
        res["negated_absent"] = float(np.mean([a for a in absent if a is not None]))
        res["negative_success"] = absent  # per set: the NOT concept is absent (None: the set has none)
    return res


def run_eval(spec: EvalSpec, methods: dict[str, Method], judge: Judge, out: str | Path,
             resolution: int, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the evaluation into ``out``; returns the results dict.

    Under ``accelerate launch --num_processes N`` the processes share each cell's sampling (see
    :func:`generate`); the first process alone writes the files, and they equal one process's."""
    from compdiff.progress import progress_bar

    task = get_task(spec.task)
    for name, m in methods.items():
        if m.regions:
            check_regions(task, name)
    split = get_split(task.name, spec.hold_out) if spec.hold_out else None
    if split is not None and spec.sets != "all":  # before anything is written
        for k in spec.components:
            why = split.why_no_sets(k, spec.sets)
            if why:
                raise InputError(f"--sets {spec.sets} --components {k}: {why}")
    shard = shard_of_this_process()
    main = shard[0] == 0
    out = Path(out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    spec_d = json.loads(json.dumps(asdict(spec)))
    results = {"spec": spec_d, "cells": {}, "methods": {}}
    if path.is_file():  # resume: same settings; methods and K values may be added
        old = json.loads(path.read_text())
        same = ("methods", "components")
        # a setting added after the report was written counts as its default (older reports resume)
        old_spec = {**json.loads(json.dumps(asdict(EvalSpec(task=spec.task)))), "sets_version": 1,
                    **old.get("spec", {})}  # reports without a sets_version drew version 1's sets
        if old_spec["sets_version"] != spec_d["sets_version"]:
            raise InputError(f"{path} holds an evaluation whose concept sets are of sets version "
                             f"{old_spec['sets_version']}, and this compdiff draws version {spec_d['sets_version']} "
                             "(compdiff.eval.concept_sets); its cells would not share sets with new ones: use "
                             "another --out or --overwrite")
        if {k: v for k, v in old_spec.items() if k not in same} != {k: v for k, v in spec_d.items() if k not in same}:
            raise InputError(f"{path} holds an evaluation with other settings; use another --out or --overwrite")
        results = old
        results["spec"].update(methods=sorted(set(old["spec"]["methods"]) | set(spec.methods)),
                               components=sorted(set(old["spec"]["components"]) | set(spec.components)))
    results["methods"].update({name: {"mode": m.mode, "joint": m.joint, **({"regions": True} if m.regions else {}),
                                      **m.info} for name, m in methods.items()})
    todo = [(k, name) for k in spec.components for name in methods if f"{name}/K{k}" not in results["cells"]]
    steps = spec.steps * -(-spec.n // spec.batch_size)
    bar = progress_bar(len(todo) * steps, f"eval {spec.task}", "step", disable=not (progress and main))
    shape = (3, resolution, resolution)
    for k in spec.components:
        names = [name for kk, name in todo if kk == k]
        if not names:
            continue
        sets = concept_sets(task, k, spec.n, spec.seed, spec.negate, spec.sets, split)
        real = _render([s.scene for s in sets], resolution)
        other = _render([s.scene for s in concept_sets(task, k, spec.n, spec.seed + 1, spec.negate, spec.sets, split)],
                        resolution)
        f_real = judge_features(real, judge)
        fd_floor = frechet_from_features(f_real, judge_features(other, judge))
        real_acc = float(np.mean([s.satisfied_by(task, j) for s, j in zip(sets, judge.read(real, task.layout))]))
        for name in names:
            m = methods[name]
            bar.set_postfix(cell=f"{name} K={k}")
            parts: list = []
            images = generate(m, task, sets, spec, shape, lambda: bar.update(1), shard, parts)
            cell = _score(task, judge, sets, images, spec.region_size)
            cell.update(selection_record(task, sets, parts))
            cell.update(k=k, method=name, fd_judge=frechet_from_features(judge_features(images, judge), f_real),
                        fd_floor=fd_floor, real_accuracy=real_acc, device=str(m.device))
            results["cells"][f"{name}/K{k}"] = cell
            if main:
                _save_grid(out / f"grid_{name}_K{k}.png", task, sets[:16], images[:16], cell["success"][:16],
                           spec.region_size if m.regions else None)
                write_json(path, results)
                write_reports(results, out)
    bar.close()
    if main:
        write_reports(results, out)
    return results


def _render(scenes: list, resolution: int, chunk: int = 256) -> torch.Tensor:
    """render() in chunks: the renderer's temporaries, not the images, would set eval's peak memory."""
    return torch.cat([render(scenes[i:i + chunk], resolution) for i in range(0, len(scenes), chunk)])


def _save_grid(path: Path, task: Task, sets: list[ConceptSet], images: torch.Tensor, ok: list[bool],
               region_size: float | None = None) -> None:
    """The first sets' images, labelled; with ``region_size`` (a regions method), each positive
    concept's box drawn on its image in the colour of its label line."""
    labels = [["OK" if g else "miss"] + [task.format(c) for c in s.positives]
              + ([f"NOT {task.format(s.negative)}"] if s.negative is not None else []) for s, g in zip(sets, ok)]
    boxes = [s.boxes(task, region_size) for s in sets] if region_size is not None else None
    write_png(make_grid(to_uint8(images), labels, columns=8, scale=4, boxes=boxes, boxed_lines=1), path)


#: per-cell metrics a task may add (extra_metrics, region_metrics): key, table.md column, format
EXTRA_COLUMNS: tuple[tuple[str, str, Callable[[float], str]], ...] = (
    ("extra_objects", "extra objects", lambda v: f"{v:.2f}"),
    ("in_region", "in region", lambda v: f"{v * 100:.1f}%"),
    ("per_concept_in_region", "per-concept in region", lambda v: f"{v * 100:.1f}%"),
)


def write_reports(results: dict[str, Any], out: Path) -> None:
    """table.md and accuracy.png from results.json's cells."""
    cells = results["cells"]
    ks = sorted({c["k"] for c in cells.values()})
    names = list(dict.fromkeys(c["method"] for c in cells.values()))
    spec = results["spec"]
    neg = " + 1 NOT" if spec["negate"] else ""
    lines = [f"Task `{spec['task']}`, n = {spec['n']} sets per cell, {spec['sampler']} {spec['steps']} steps, "
             f"guidance scale {spec['guidance_scale']}"
             + (f"; {spec['sets']} sets of the held-out split {spec['hold_out']!r}" if spec.get("sets", "all") != "all"
                else "") + ". Accuracy = all concepts of the set hold (judge).", "",
             "| method | " + " | ".join(f"K={k}{neg}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name in names:
        row = [f"{cells[f'{name}/K{k}']['accuracy'] * 100:.1f}%" if f"{name}/K{k}" in cells else "" for k in ks]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    if any("in_region" in c for c in cells.values()):
        about = (f"In region = every concept holds with its object's centre inside its box (side "
                 f"{spec.get('region_size', REGION_SIZE):g}, around the real object; the same boxes for every method).")
        lines += ["", about, "", "| method | " + " | ".join(f"K={k}{neg}" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for name in names:
            row = [f"{cells[f'{name}/K{k}']['in_region'] * 100:.1f}%" if "in_region" in cells.get(f"{name}/K{k}", {})
                   else "" for k in ks]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    extra = [col for col in EXTRA_COLUMNS if any(col[0] in c for c in cells.values())]
    lines += ["", "| method | K | accuracy | 95% interval (Wilson) | per-concept | FD-judge | FD floor (real vs real) "
              "| judge on real renders |" + "".join(f" {title} |" for _, title, _ in extra),
              "|---|---|---|---|---|---|---|---|" + "---|" * len(extra)]
    for name in names:
        for k in ks:
            c = cells.get(f"{name}/K{k}")
            if c:
                lo, hi = wilson(sum(c["success"]), len(c["success"]))
                lines.append(f"| {name} | {k} | {c['accuracy'] * 100:.1f}% | {lo * 100:.1f}–{hi * 100:.1f}% | "
                             f"{c['concept_accuracy'] * 100:.1f}% | "
                             f"{c['fd_judge']:.3f} | {c['fd_floor']:.3f} | {c['real_accuracy'] * 100:.1f}% |"
                             + "".join(f" {show(c[key])} |" if key in c else " |" for key, _, show in extra))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(cells, names, ks, spec, out / "accuracy.png")


def _plot(cells: dict, names: list[str], ks: list[int], spec: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name in names:
        pts = [(k, cells[f"{name}/K{k}"]["accuracy"] * 100) for k in ks if f"{name}/K{k}" in cells]
        line, = ax.plot(*zip(*pts), marker="o", label=name)
        region = [(k, cells[f"{name}/K{k}"]["in_region"] * 100) for k in ks
                  if "in_region" in cells.get(f"{name}/K{k}", {})]
        if region:  # the same method, in its boxes: dashed, same colour
            ax.plot(*zip(*region), marker="x", linestyle="--", color=line.get_color(), label=f"{name} (in region)")
    ax.set(xlabel="number of concepts K" + (" (+1 NOT)" if spec["negate"] else ""), ylabel="accuracy (%)",
           ylim=(0, 102), xticks=ks, title=f"{spec['task']}: composition accuracy (judge)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
