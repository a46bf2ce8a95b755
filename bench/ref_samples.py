"""Samples of the shipped models for fixed seeds, saved for a before/after comparison of a refactor.

    .venv/bin/python bench/ref_samples.py new.pt
    .venv/bin/python bench/ref_samples.py --compare old.pt new.pt     # torch.equal per case

At commit 0280ae0 (before the sampler registry) the same script ran with ``correct="ula"`` in
place of ``corrector=cd.Corrector("ula")``.
"""
import sys

import torch

import compdiff as cd
from compdiff.compose_each import compose_each


def _run(task: str, expr: str, sampler: str, steps: int, **kw) -> torch.Tensor:
    d, e, s = cd.load_pretrained(task)
    fn = cd.compose(d, e, expr, guidance_scale=3.0)
    g = cd.generators([0, 1, 2])
    x = cd.randn((3, 3, 32, 32), g)
    f = cd.sample_ddim if sampler == "ddim" else cd.sample_ddpm
    return f(fn, x, s, s.timesteps(steps, "trailing"), generator=g, clip_x0=1.0, **kw)


def samples() -> dict[str, torch.Tensor]:
    out = {"objects_ddim50": _run("objects", '"0.3,0.3" AND "0.7,0.7" AND NOT "0.7,0.3"', "ddim", 50),
           "objects_ddpm20": _run("objects", '"0.3,0.3" AND "0.7,0.7"', "ddpm", 20),
           "objects_ddim20_ula": _run("objects", '"0.3,0.3" AND "0.7,0.7"', "ddim", 20, corrector=cd.Corrector("ula")),
           "attributes_ddpm20": _run("attributes", "red AND cube AND NOT metal", "ddpm", 20),
           "relations_ddpm10": _run("relations", '"a red cube left of a blue sphere"', "ddpm", 10)}
    d, e, s = cd.load_pretrained("attributes")
    fn = compose_each(d, e, ["red AND cube", "blue", "sphere AND NOT rubber"], guidance_scale=3.0)
    g = cd.generators([5, 6, 7])
    out["attributes_each_ddim10"] = cd.sample_ddim(fn, cd.randn((3, 3, 32, 32), g), s, s.timesteps(10, "trailing"),
                                                   generator=g, clip_x0=1.0)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "--compare":
        a, b = torch.load(sys.argv[2]), torch.load(sys.argv[3])
        for k in a:
            print(k, "identical" if torch.equal(a[k], b[k]) else f"max |diff| {float((a[k] - b[k]).abs().max()):.3g}")
    else:
        torch.save(samples(), sys.argv[1])
