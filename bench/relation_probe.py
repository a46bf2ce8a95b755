"""Does a relations model read the relation word? A denoising-loss probe on real renders.

    OMP_NUM_THREADS=1 .venv/bin/python bench/relation_probe.py runs/relations32xcs-ho/model \
        runs/relations32xcs-ho-joint/model --n 256

For n training-distribution scenes of the model's held-out split (a seed training never used),
one true relation between two objects is drawn, written complete. Each image is noised at the
timesteps ``--times`` with ``--draws`` noises each (the same noises for every label: compdiff.lift's
common random numbers, image i's from seed + i), and the model's mean squared epsilon error
(``Lift.loss``) is measured under three labels:

* true: the relation as it holds;
* relation flipped: ``left of`` <-> ``right of``, ``in front of`` <-> ``behind`` (false);
* color changed: the first object's color replaced by one no object of the scene has (false).

Scenes where every true relation's flip holds too (two objects of one description on both
sides of a third) are skipped. A model that uses a word predicts the noise better under the
true label than under the false one. The probe reports, per timestep and over all of them, the fraction of images whose true
label gives the lower error (50% = the word is not read; an exact tie counts half), and the mean
relative gap (false - true) / true. This is the "diffusion classifier" reading of a conditional
model: it asks the network directly, without sampling or the judge.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from compdiff.eval.stats import wilson
from compdiff.lift import lift_x0
from compdiff.models import load_model
from compdiff.world.dataset import WorldDataset
from compdiff.world.holdout import get_split
from compdiff.world.scene import COLORS
from compdiff.world.tasks.relations import _FLIP, Relation

PROBES = ("relation flipped", "color changed")


def labels(task, scene, rng: np.random.Generator) -> tuple[Relation, Relation, Relation] | None:
    """(true, flipped, recolored) for one scene, both false labels false in it; None where every
    true relation's flip holds too (two objects of one description on both sides of a third)."""
    pairs = [(c, Relation(c.first, _FLIP[c.rel], c.second)) for c in task.true_concepts(scene)]
    pairs = [(c, flipped) for c, flipped in pairs if not task.holds(flipped, scene)]
    if not pairs:
        return None
    c, flipped = pairs[int(rng.integers(len(pairs)))]
    absent = [k for k in COLORS if all(o.color != k for o in scene.objects)]
    recolored = Relation(replace(c.first, color=absent[int(rng.integers(len(absent)))]), c.rel, c.second)
    return c, flipped, recolored


def probe(model: str, n: int, times: list[int], draws: int, seed: int, batch: int) -> dict:
    """Load ``model`` and probe it on scenes of its own training world (split, object count)."""
    loaded = load_model(model)
    training = json.loads((Path(model) / "compdiff.json").read_text()).get("training", {})
    split = (training.get("hold_out") or {}).get("name")
    ds = WorldDataset("relations", 32, seed=seed, hold_out=get_split("relations", split) if split else None,
                      max_objects=training.get("max_objects"))
    out = measure(loaded.denoiser, loaded.encoder, loaded.schedule, ds, n, times, draws, seed, batch)
    return {"model": model, **out}


@torch.inference_mode()
def measure(den, enc, sched, ds: WorldDataset, n: int, times: list[int], draws: int, seed: int,
            batch: int) -> dict:
    """The probe on the first n scenes of ``ds``, through ``compdiff.lift``: ``den(x_t, t, cond)`` predicts
    epsilon, ``enc`` encodes the labels, ``sched`` noises. Image i (of the kept scenes) draws its noises
    from seed + i, the same for its three labels (and the null, which lift also evaluates: 4 rows per
    image and noise, one batched forward per time and draw)."""
    task = ds.task
    rng = np.random.default_rng(seed)
    index, texts = [], []  # the first n scenes of ds that have a true relation whose flip is false
    for i in range(len(ds)):
        if len(index) == n:
            break
        got = labels(task, ds.scene(i), rng)
        if got is not None:
            index.append(i)
            texts.append([task.format(c) for c in got])
    images = ds.batch(index).image
    # err[label, time, image]: mean over draws of the per-image epsilon MSE; one noise for all labels
    err = torch.zeros(3, len(times), n, dtype=torch.float64)
    for lo in range(0, n, batch):
        got = lift_x0(den, enc, sched, images[lo:lo + batch], texts[lo:lo + batch], times=times, draws=draws,
                      seeds=[seed + i for i in range(lo, min(lo + batch, n))])
        err[:, :, lo:lo + batch] = got.loss[:, 1:].permute(1, 2, 0)
    out = {"n": n, "scenes skipped": index[-1] + 1 - n, "times": times, "draws": draws, "seed": seed, "probes": {}}
    for pi, name in enumerate(PROBES, start=1):
        per_t = {str(t): _read(err[0, ti], err[pi, ti]) for ti, t in enumerate(times)}
        per_t["all"] = _read(err[0].mean(0), err[pi].mean(0))
        out["probes"][name] = per_t
    return out


def _read(true: torch.Tensor, wrong: torch.Tensor) -> dict:
    wins = float((true < wrong).sum() + 0.5 * (true == wrong).sum())
    n = len(true)
    lo, hi = wilson(round(wins), n)
    return {"true lower": wins / n, "lo": lo, "hi": hi, "gap": float(((wrong - true) / true).mean())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--times", default="100,300,500,700,900", help="timesteps, comma-separated (of T = 1000)")
    p.add_argument("--draws", type=int, default=4, help="noises per image and timestep")
    p.add_argument("--seed", type=int, default=20261206, help="scenes and noises (not a training seed)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--out", help="also write the results as JSON here")
    args = p.parse_args(argv)
    times = [int(t) for t in args.times.split(",")]
    results = []
    print("| model | probe | " + " | ".join(f"t = {t}" for t in times) + " | all t | mean gap |")
    print("|---|---|" + "---|" * (len(times) + 2))
    for m in args.models:
        r = probe(m, args.n, times, args.draws, args.seed, args.batch)
        results.append(r)
        for name, per_t in r["probes"].items():
            cells = [f"{100 * per_t[str(t)]['true lower']:.1f}%" for t in times]
            a = per_t["all"]
            print(f"| {m} | {name} | " + " | ".join(cells)
                  + f" | {100 * a['true lower']:.1f}% ({100 * a['lo']:.1f}–{100 * a['hi']:.1f}) | "
                  f"{100 * a['gap']:+.2f}% |", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
