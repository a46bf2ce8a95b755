"""Checks that compdiff's paths run on a CUDA GPU and agree with the CPU (tests run on CPUs only).

    PYTHONPATH=src python bench/cuda_check.py [OUT_DIR]      # on a machine with a GPU

1. A tiny random Stable Diffusion pipeline (tests/sd_tiny.py) on cuda, float32, TF32 off:
   one concept through compdiff (a diffusers scheduler, and compdiff's DDIM) equals
   diffusers' own StableDiffusionPipeline latents; an AND/NOT expression samples finite
   images through ``DiffusersBackend.generate``.
2. ``compdiff sample --device cuda`` with that pipeline folder and with the shipped objects
   model; the objects sample equals the CPU's within float tolerance.
Prints one PASS/FAIL line per check; exit status 1 if any failed.
"""
from __future__ import annotations

import os
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import sd_tiny  # noqa: E402

from compdiff import compose  # noqa: E402
from compdiff.backends.diffusers import DiffusersBackend  # noqa: E402
from compdiff.backends.scheduler_loop import sample_with_scheduler  # noqa: E402
from compdiff.cli import main  # noqa: E402
from compdiff.models import load_pretrained  # noqa: E402
from compdiff.sampling import generators, randn, sample_ddim  # noqa: E402

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
FAILED: list[str] = []
DEV = os.environ.get("CHECK_DEVICE", "cuda")  # cpu: a dry run of this script on a machine without a GPU


def check(name: str):
    def wrap(fn):
        try:
            detail = fn()
            print(f"PASS {name}: {detail}", flush=True)
        except Exception:  # noqa: BLE001 - report every failure, keep going
            FAILED.append(name)
            print(f"FAIL {name}:\n{traceback.format_exc()}", flush=True)
        return fn
    return wrap


def main_(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp())
    folder = tmp / "pipe"
    pipe = sd_tiny.save_pipeline(folder).to(DEV)
    sd = DiffusersBackend.from_pretrained(folder, device=DEV)
    steps, n = 4, 2

    @check("SD one concept == diffusers pipeline (cuda, float32)")
    def _():
        expected = pipe("a red cat", guidance_scale=3.0, num_inference_steps=steps, num_images_per_prompt=n,
                        generator=generators([10, 11]), output_type="latent").images
        eps_fn = compose(sd.denoiser, sd.encoder, "a red cat", guidance_scale=3.0)
        x_T = randn((n, *sd.latent_shape), generators([10, 11]), device=DEV)
        a = sample_with_scheduler(eps_fn, x_T, pipe.scheduler, steps)
        b = sample_ddim(eps_fn, x_T, sd.schedule, sd.timesteps(steps))
        da, db = (a - expected).abs().max().item(), (b - expected).abs().max().item()
        assert a.device.type == torch.device(DEV).type and max(da, db) < 1e-4, (da, db)
        return f"max |Δ| scheduler {da:.1e}, compdiff DDIM {db:.1e}"

    @check("SD AND/NOT generate (cuda)")
    def _():
        images = sd.generate('a red cat AND "the stone" :0.5 AND NOT blue', n=n, steps=steps,
                             guidance_scale=2.5, seeds=[0, 1])
        assert images.shape[0] == n and torch.isfinite(images).all()
        return f"images {tuple(images.shape)}"

    @check("compdiff sample --device cuda, diffusers pipeline folder")
    def _():
        png = out / "sd_tiny_cuda.png"
        rc = main(["sample", "--model", str(folder), 'a castle AND NOT "black and white"', "--n", "2",
                   "--steps", "4", "--device", DEV, "--out", str(png), "--no-progress"])
        assert rc == 0 and png.is_file(), rc
        return str(png)

    @check("compdiff sample --device cuda, shipped objects model")
    def _():
        png = out / "objects_cuda.png"
        rc = main(["sample", '"0.3,0.3" AND "0.7,0.7" AND NOT "0.7,0.3"', "--n", "4", "--device", DEV,
                   "--out", str(png), "--no-progress"])
        assert rc == 0 and png.is_file(), rc
        return str(png)

    @check("objects model: cuda sample == cpu sample")
    def _():
        loaded = load_pretrained("objects")
        expr = '"0.3,0.3" AND "0.7,0.7"'
        xs = []
        for device in ("cpu", DEV):
            loaded.denoiser.net.to(device)
            eps_fn = compose(loaded.denoiser, loaded.encoder, expr, guidance_scale=3.0)
            x_T = randn((4, 3, 32, 32), generators([0, 1, 2, 3]), device=device)
            xs.append(sample_ddim(eps_fn, x_T, loaded.schedule, 20, clip_x0=1.0).cpu())
        d = (xs[0] - xs[1]).abs().max().item()
        assert d < 1e-2, d
        return f"max |Δ| over 20 DDIM steps {d:.1e}"

    print(f"{len(FAILED)} failed" if FAILED else "all passed")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main_(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("cuda_check")))
