"""Where a relations model fails: objects, attributes or the relation itself.

    OMP_NUM_THREADS=1 python bench/relations_diagnose.py --model runs/gpu2/relations32/model --n 64

Draws the eval's K = 1 relation sets (same seed as `compdiff eval`), samples one image per
set (DDPM 100 steps, guidance scale 3), judges it, and reports the fraction of images in
which: the first described object is present (all four of its attributes), the second is
present, both are, and the relation holds (the eval's accuracy). Also each attribute word
of the description, read on the judged object nearest to matching it (best attribute
overlap), and the same numbers for real renders of the sets' scenes as a check of the judge.
"""
from __future__ import annotations

import argparse
from dataclasses import fields

from compdiff.eval import load_judge
from compdiff.eval.composition import EvalSpec, Method, generate
from compdiff.eval.concept_sets import concept_sets
from compdiff.models import load_model
from compdiff.world import get_task
from compdiff.world.tasks import Desc
from compdiff.world.render import render

ATTRS = [f.name for f in fields(Desc)]


def diagnose(task, scenes, rels) -> dict[str, float]:
    n = len(rels)
    first = sum(any(r.first.matches(o) for o in s.objects) for r, s in zip(rels, scenes))
    second = sum(any(r.second.matches(o) for o in s.objects) for r, s in zip(rels, scenes))
    both = sum(any(r.first.matches(o) for o in s.objects) and any(r.second.matches(o) for o in s.objects)
               for r, s in zip(rels, scenes))
    holds = sum(task.holds(r, s) for r, s in zip(rels, scenes))
    attr_hits = {a: [0, 0] for a in ATTRS}
    for r, s in zip(rels, scenes):
        for d in (r.first, r.second):
            want = {a: getattr(d, a) for a in ATTRS if getattr(d, a) is not None}
            if not s.objects or not want:
                continue
            best = max(s.objects, key=lambda o: sum(getattr(o, a) == v for a, v in want.items()))
            for a, v in want.items():
                attr_hits[a][0] += getattr(best, a) == v
                attr_hits[a][1] += 1
    out = {"first present": first / n, "second present": second / n, "both present": both / n,
           "relation holds (accuracy)": holds / n}
    out.update({f"{a} of nearest object": h / max(1, t) for a, (h, t) in attr_hits.items()})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args()
    task, judge = get_task("relations"), load_judge(32)
    loaded = load_model(args.model, bf16=True)
    sets = concept_sets(task, 1, args.n, seed=args.seed)
    rels = [s.positives[0] for s in sets]
    method = Method("model", loaded.denoiser, loaded.encoder, joint=loaded.config.joint, schedule=loaded.schedule)
    spec = EvalSpec(task="relations", components=(1,), n=args.n, sampler="ddpm", steps=args.steps,
                    guidance_scale=args.guidance_scale, seed=args.seed)
    images = generate(method, task, sets, spec, (3, 32, 32))  # exactly what `compdiff eval` draws
    generated = judge.read(images, layout=task.layout)
    real = judge.read(render([s.scene for s in sets], 32), layout=task.layout)
    gen_d, real_d = diagnose(task, generated, rels), diagnose(task, real, rels)
    print(f"model {args.model}, n = {args.n} K = 1 relation sets, DDPM {args.steps}, scale {args.guidance_scale:g}\n")
    print("| fraction of images | generated | real renders of the sets' scenes |")
    print("|---|---|---|")
    for key in gen_d:
        print(f"| {key} | {100 * gen_d[key]:.1f}% | {100 * real_d[key]:.1f}% |")


if __name__ == "__main__":
    main()
