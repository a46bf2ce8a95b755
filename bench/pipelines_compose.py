"""compdiff's one batched call against the per-concept loop, for every pipeline family.

    .venv/bin/python bench/pipelines_compose.py                  # CPU, tiny random pipelines, K = 1..4
    .venv/bin/python bench/pipelines_compose.py --device cuda     # the same on a GPU

Per denoising step, one image, K ANDed concepts: compdiff's ``compose`` (ONE network call of K + 1
rows) against what the community pipelines do (K + 1 calls of one row each, then the same rule).
Both run interleaved after a warm-up; the median of --reps is reported, as a ratio (loop / ours).

Tiny pipelines: the tests' builders (tests/sd_tiny.py, tests/sdxl_tiny.py, tests/flow_tiny.py),
a few MB each, opened through ``compdiff.open_model`` like any folder. Real layer sizes (SDXL's
UNet, SD3's transformer) need a GPU; bench/sd_compose.py times SD 1.x's full-size UNet the same way.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import compdiff as cd  # noqa: E402
from compdiff.condition import cond_index_select  # noqa: E402

CONCEPTS = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone"]


def _tiny(family: str, root: Path) -> Path:
    folder = root / family
    if family == "stable-diffusion":
        import sd_tiny
        sd_tiny.save_pipeline(folder)
    elif family == "sdxl":
        import sdxl_tiny
        sdxl_tiny.save_pipeline(folder)
    elif family == "sd3":
        import flow_tiny
        flow_tiny.save_sd3(folder)
    else:
        import flow_tiny
        flow_tiny.save_flux(folder)
    return folder


def _step_times(m: cd.backends.OpenedModel, k: int, reps: int, device: str) -> tuple[float, float]:
    expr = " AND ".join(f'"{c}"' for c in CONCEPTS[:k])
    fn = cd.compose(m.denoiser, m.encoder, expr, guidance_scale=m.default_scale)
    x = cd.randn((1, *m.latent_shape), cd.generators([0]), device=device)
    t0 = m.schedule.run(4)[1]
    t = m.schedule.t_batch(t0, 1, device)
    rows = fn.cond  # (K + 1) rows: the null first

    def loop() -> torch.Tensor:  # the community strategy: one call per condition, batch 1
        outs = [m.denoiser(x, t, cond_index_select(rows, torch.tensor([j]))) for j in range(k + 1)]
        return outs[0] + sum(m.default_scale * (o - outs[0]) for o in outs[1:])

    ours, theirs = [], []
    for fn_, out in ((loop, theirs), (lambda: fn(x, t), ours)):
        fn_()  # warm-up
    for _ in range(reps):
        for fn_, out in ((loop, theirs), (lambda: fn(x, t), ours)):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn_()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            out.append(time.perf_counter() - start)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["stable-diffusion", "sdxl", "sd3", "flux"])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| family | K | compdiff step (ms) | per-concept loop (ms) | loop / compdiff |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            m = cd.open_model(_tiny(family, Path(tmp)), device=args.device)
            assert m.family == family, (m.family, family)
            for k in range(1, 5):
                ours, theirs = _step_times(m, k, args.reps, args.device)
                print(f"| {family} | {k} | {1000 * ours:.2f} | {1000 * theirs:.2f} | {theirs / ours:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
