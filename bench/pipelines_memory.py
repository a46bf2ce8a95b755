"""Peak memory of one composed sampling step against K, with and without ``max_batch`` chunking, for
every pipeline family; and an estimate for the real-size models, with and without ``--cpu-offload``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pipelines_memory.py               # CPU: both parts (~15 min on 2 cores)
    OMP_NUM_THREADS=1 .venv/bin/python bench/pipelines_memory.py --part tiny   # only the measured tiny models
    python bench/pipelines_memory.py --device cuda [--real-on-device]          # on a GPU (see below)

Part 1, measured (tiny random pipelines, tests/*_tiny.py, as the tests build them): for each family,
K = 1..4 ANDed concepts and B images, the peak tensor memory allocated during ONE composed step
(``compose(...)(x, t)``: B·(K+1) rows in one denoiser call, or in chunks of ``max_batch`` = B rows),
over what was allocated before it (weights and encoded prompts excluded; printed apart).
How, on the CPU: ``torch.profiler`` with ``profile_memory=True`` records every allocation and free of
torch's CPU allocator during the step; the peak is the maximum of their running sum. Chosen over the
peak resident set of a fresh process (``resource.getrusage``) because a tiny model's step allocates
kilobytes while the resident set of a process that imports torch and diffusers is ~400 MB, moves in
pages and keeps freed memory in the C allocator, so it could not resolve the differences measured here.
On CUDA: ``torch.cuda.max_memory_allocated`` around the step (and the same with ``--cpu-offload``).

Part 2, estimated (real sizes at 1024x1024, B = 1): the denoisers of SDXL base 1.0, SD 3.5 large and
FLUX.1-dev built from their diffusers configs (REAL below, copied from the models' config.json files on
the Hugging Face Hub) with FAKE tensors (``FakeTensorMode``: shapes and dtypes, no data, no compute),
and torch's ``MemTracker`` (torch.distributed._tools) counting the bytes of every tensor alive during
compdiff's own denoiser call over R rows, R = 1..5. The parameter counts of every module (denoiser,
text encoders, VAE) come from the same configs instantiated on the meta device. The peak of one step is
then weights resident + activations of the rows of one call:
    without offload:  all modules' weights + act(rows per call)
    --cpu-offload:    the denoiser's weights + act(rows per call)     (text encoders and VAE wait on the CPU)
with rows per call B·(K+1) in one call, or B with ``--max-batch B``. Part 1 checks the fake-tensor count
against the profiler on the tiny denoisers. What the estimate leaves out: the CUDA caching allocator's
rounding and fragmentation, cuDNN/cuBLAS workspaces and the CUDA context (~0.5 GiB), and kernels that
allocate internally; it is an estimate, not a GPU measurement. ``--device cuda --real-on-device``
measures the same real layouts on a GPU (random weights, ``torch.cuda.max_memory_allocated``).
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import compdiff as cd  # noqa: E402
from compdiff.condition import cond_repeat_interleave  # noqa: E402

CONCEPTS = ["a red cube", "a blue sphere", "a green cylinder", "a yellow cone"]
FAMILIES = ["stable-diffusion", "sdxl", "sd3", "flux", "pixart"]
MiB = 2 ** 20
GiB = 2 ** 30


# =====================================================================================================
# Part 1: tiny pipelines, measured
# =====================================================================================================
def tiny_backend(family: str, tmp: Path, device: str, cpu_offload: bool = False):
    """The tests' tiny random pipeline of ``family`` as a compdiff backend (T5 windows as the tests use)."""
    from compdiff.backends import DiffusersBackend, FluxBackend, PixArtBackend, SD3Backend, SDXLBackend

    kw = {"device": device, "cpu_offload": cpu_offload}
    if family == "stable-diffusion":
        import sd_tiny
        return DiffusersBackend.from_pretrained(sd_tiny.build_pipeline(tmp / family), **kw)
    if family == "sdxl":
        import sdxl_tiny
        return SDXLBackend.from_pretrained(sdxl_tiny.build_pipeline(tmp / family), **kw)
    if family == "pixart":
        import pixart_tiny
        return PixArtBackend.from_pretrained(pixart_tiny.build_pixart(tmp / family),
                                             max_sequence_length=pixart_tiny.T5_LENGTH, **kw)
    import flow_tiny
    if family == "sd3":
        return SD3Backend.from_pretrained(flow_tiny.build_sd3(tmp / family), max_sequence_length=flow_tiny.T5_LENGTH,
                                          **kw)
    return FluxBackend.from_pretrained(flow_tiny.build_flux(tmp / family), max_sequence_length=flow_tiny.T5_LENGTH,
                                       **kw)


def denoiser_module(backend) -> torch.nn.Module:
    return getattr(backend, "unet", None) or backend.transformer


def modules_of(backend) -> list[torch.nn.Module]:
    names = ("text_encoder", "text_encoder_2", "text_encoder_3", "unet", "transformer", "vae")
    return [m for m in (getattr(backend, n, None) for n in names) if isinstance(m, torch.nn.Module)]


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def cpu_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes allocated by torch's CPU allocator while fn() runs, over what was allocated before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        running += e.nbytes()
        peak = max(peak, running)
    return peak


def cuda_peak(fn: Callable[[], Any], device: str) -> tuple[int, int]:
    """(peak bytes allocated during fn() over what was allocated before, peak bytes in all)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return peak - before, peak


def measure_step(backend, k: int, chunk: int | None, batch: int, device: str) -> dict[str, Any]:
    expr = " AND ".join(f'"{c}"' for c in CONCEPTS[:k])
    scale = backend.opened(backend.__class__.__name__).default_scale
    fn = cd.compose(backend.denoiser, backend.encoder, expr, guidance_scale=scale, max_batch=chunk)
    x = cd.randn((batch, *backend.latent_shape), cd.generators(list(range(batch))), device=device)
    t = backend.schedule.t_batch(backend.schedule.run(4)[1], batch, device)
    fn(x, t)  # warm-up: the condition rows are cached, kernels chosen
    rows = batch * (k + 1)
    cell = {"K": k, "B": batch, "max_batch": chunk, "rows_per_call": min(rows, chunk or rows),
            "calls": -(-rows // (chunk or rows))}
    if device == "cpu":
        cell["step_peak_bytes"] = cpu_peak(lambda: fn(x, t))
    else:
        cell["step_peak_bytes"], cell["total_peak_bytes"] = cuda_peak(lambda: fn(x, t), device)
    return cell


def denoiser_call(backend, rows: int, device: str):
    """(a zero-argument callable running compdiff's denoiser over ``rows`` rows, its inputs)."""
    cond = cond_repeat_interleave(backend.encoder.null(), rows)
    x = torch.randn(rows, *backend.latent_shape, device=device)
    t = backend.schedule.t_batch(backend.schedule.run(4)[1], rows, device)
    return lambda: backend.denoiser(x, t, cond)


def fake_denoiser_peak(backend, rows: int) -> int:
    """The same denoiser call over fake tensors (a fresh module from the tiny model's config), counted by
    MemTracker: the estimator of part 2, checked against the profiler on the tiny models."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    module = denoiser_module(backend)
    t0 = backend.schedule.run(4)[1]  # a Python number, taken outside the fake mode
    with FakeTensorMode():
        fake = type(module).from_config(module.config).eval()
        wrapper = _wrap_like(backend.denoiser, fake)
        cond = cond_repeat_interleave(_fake_like(backend.encoder.null()), rows)
        x = torch.empty(rows, *backend.latent_shape)
        t = backend.schedule.t_batch(t0, rows, "cpu")
        return _tracked_activation_peak(fake, lambda: wrapper(x, t, cond))


def _fake_like(cond):
    if isinstance(cond, dict):
        return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in cond.items()}
    return torch.zeros(cond.shape, dtype=cond.dtype)


def _wrap_like(denoiser, module):
    import copy

    out = copy.copy(denoiser)
    for name in ("unet", "transformer"):
        if hasattr(out, name):
            setattr(out, name, module)
    return out


def _tracked_activation_peak(module: torch.nn.Module, fn: Callable[[], Any]) -> int:
    """Peak bytes of the tensors alive during fn() (parameters and buffers of ``module`` excluded)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    tracker.track_external(module)
    with tracker, torch.no_grad():
        fn()
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()))
    return int(peak["Total"] - peak.get("Parameter", 0) - peak.get("Buffer", 0))


def part_tiny(args) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            start = time.perf_counter()
            backend = tiny_backend(family, Path(tmp), args.device)
            entry: dict[str, Any] = {
                "weights_bytes": {type(m).__name__ + (f"#{i}" if i else ""): param_bytes(m)
                                  for i, m in enumerate(modules_of(backend))},
                "latent_shape": list(backend.latent_shape), "cells": []}
            for k in range(1, 5):
                for chunk in (None, args.batch):
                    entry["cells"].append(measure_step(backend, k, chunk, args.batch, args.device))
            if args.device == "cpu":  # the fake-tensor estimator against the profiler, denoiser call only
                entry["check"] = [{"rows": r, "profiler_bytes": cpu_peak(denoiser_call(backend, r, "cpu")),
                                   "fake_bytes": fake_denoiser_peak(backend, r)} for r in (1, 2, 5)]
            else:  # the same steps with the modules offloaded to the CPU between uses
                del backend
                torch.cuda.empty_cache()
                offloaded = tiny_backend(family, Path(tmp), args.device, cpu_offload=True)
                entry["cpu_offload_cells"] = [measure_step(offloaded, k, chunk, args.batch, args.device)
                                              for k in range(1, 5) for chunk in (None, args.batch)]
            entry["seconds"] = round(time.perf_counter() - start, 1)
            results[family] = entry
            print(f"[tiny] {family}: {entry['seconds']} s", file=sys.stderr, flush=True)
    return results


# =====================================================================================================
# Part 2: real sizes, estimated
# =====================================================================================================
#: diffusers / transformers configs of the real models (from their config.json files on the Hugging Face
#: Hub: stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-3.5-large,
#: black-forest-labs/FLUX.1-dev; only the fields that differ from the classes' defaults). The parameter
#: counts printed by this script come from instantiating them; published figures for comparison:
#: SDXL UNet 2.6B (Podell et al. 2023, "SDXL", table 1: 2.6B), SD 3.5 large 8B (Stability AI's model
#: card: "8 billion parameters"), FLUX.1-dev 12B (Black Forest Labs' model card: "12 billion parameter").
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu"}
CLIP_G = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
          "num_attention_heads": 20, "max_position_embeddings": 77, "projection_dim": 1280, "hidden_act": "gelu"}
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "feed_forward_proj": "gated-gelu", "relative_attention_num_buckets": 32, "is_encoder_decoder": False}
VAE_SDXL = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": [128, 256, 512, 512],
            "layers_per_block": 2, "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 1024, "scaling_factor": 0.13025,
            "force_upcast": True}
VAE_16 = {**VAE_SDXL, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
          "force_upcast": True}
REAL: dict[str, dict[str, Any]] = {
    "sdxl": {
        "name": "SDXL base 1.0", "dtype": "float16", "vae_dtype": "float32",  # force_upcast: decodes in float32
        "denoiser": ("UNet2DConditionModel", {
            "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
            "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816}),
        "text": [("CLIPTextModel", CLIP_L), ("CLIPTextModelWithProjection", CLIP_G)], "vae": VAE_SDXL,
        "latent": (4, 128, 128), "tokens": (77, 2048), "pooled": 1280},
    "sd3": {
        "name": "SD 3.5 large", "dtype": "bfloat16", "vae_dtype": "bfloat16",
        "denoiser": ("SD3Transformer2DModel", {
            "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 38,
            "attention_head_dim": 64, "num_attention_heads": 38, "joint_attention_dim": 4096,
            "caption_projection_dim": 2432, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
            "qk_norm": "rms_norm"}),
        "text": [("CLIPTextModelWithProjection", CLIP_L), ("CLIPTextModelWithProjection", CLIP_G),
                 ("T5EncoderModel", T5_XXL)], "vae": VAE_16,
        "latent": (16, 128, 128), "tokens": (77 + 256, 4096), "pooled": 2048},
    "flux": {
        "name": "FLUX.1-dev", "dtype": "bfloat16", "vae_dtype": "bfloat16",
        "denoiser": ("FluxTransformer2DModel", {
            "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
            "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
            "guidance_embeds": True, "axes_dims_rope": [16, 56, 56]}),
        "text": [("CLIPTextModel", CLIP_L), ("T5EncoderModel", T5_XXL)], "vae": VAE_16,
        "latent": (16, 128, 128), "tokens": (512, 4096), "pooled": 768},
}


def _build(class_name: str, config: dict[str, Any]) -> torch.nn.Module:
    import diffusers
    import transformers

    if hasattr(diffusers, class_name):
        return getattr(diffusers, class_name)(**config)
    cls = getattr(transformers, class_name)
    return cls(cls.config_class(**config))


def count_params(class_name: str, config: dict[str, Any]) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in _build(class_name, config).parameters())


def _real_denoiser(spec: dict[str, Any], module: torch.nn.Module):
    from compdiff.backends.flux import FluxDenoiser
    from compdiff.backends.sd3 import SD3Denoiser
    from compdiff.backends.sdxl import SDXLUNetDenoiser

    if spec["denoiser"][0] == "UNet2DConditionModel":
        return SDXLUNetDenoiser(module, None, "epsilon")  # type: ignore[arg-type]  (the schedule is unused for eps)
    return SD3Denoiser(module) if spec["denoiser"][0] == "SD3Transformer2DModel" else FluxDenoiser(module)


def _real_inputs(spec: dict[str, Any], rows: int, dtype: torch.dtype, device: str):
    cond = {"tokens": torch.zeros(rows, *spec["tokens"], dtype=dtype, device=device),
            "pooled": torch.zeros(rows, spec["pooled"], dtype=dtype, device=device)}
    if spec["denoiser"][0] == "UNet2DConditionModel":
        cond["time_ids"] = torch.zeros(rows, 6, dtype=dtype, device=device)
        t = torch.full((rows,), 500, dtype=torch.long, device=device)
    else:
        t = torch.full((rows,), 0.5, dtype=torch.float64, device=device)
    return torch.zeros(rows, *spec["latent"], device=device), t, cond  # x in float32, as the samplers keep it


def real_activations(spec: dict[str, Any], rows_list: list[int], device: str) -> dict[int, int]:
    """Activation bytes of compdiff's denoiser call over R rows at the real layout: fake tensors counted by
    MemTracker (device "fake"), or random weights on a GPU measured by torch.cuda.max_memory_allocated."""
    dtype = getattr(torch, spec["dtype"])
    previous = torch.get_default_dtype()
    out: dict[int, int] = {}
    if device == "fake":
        from torch._subclasses.fake_tensor import FakeTensorMode

        with FakeTensorMode():
            torch.set_default_dtype(dtype)  # built in its dtype (a .to() of fake parameters cannot swap them)
            try:
                module = _build(*spec["denoiser"]).eval()
            finally:
                torch.set_default_dtype(previous)
            denoiser = _real_denoiser(spec, module)
            for rows in rows_list:
                start = time.perf_counter()
                x, t, cond = _real_inputs(spec, rows, dtype, "cpu")
                out[rows] = _tracked_activation_peak(module, functools.partial(denoiser, x, t, cond))
                print(f"[real] {spec['name']} R={rows}: {out[rows] / MiB:.0f} MiB "
                      f"({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        return out
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            module = _build(*spec["denoiser"]).eval()
    finally:
        torch.set_default_dtype(previous)
    denoiser = _real_denoiser(spec, module)
    for rows in rows_list:
        call = functools.partial(denoiser, *_real_inputs(spec, rows, dtype, device))
        with torch.no_grad():
            call()  # warm-up
            out[rows] = cuda_peak(call, device)[0]
        call = None  # the inputs go before the next row count is measured
    module = denoiser = None
    torch.cuda.empty_cache()
    return out


def vae_decode_activations(spec: dict[str, Any]) -> int:
    """Activation bytes of decoding one 1024x1024 image (compdiff decodes one image at a time), fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    dtype = getattr(torch, spec["vae_dtype"])
    previous = torch.get_default_dtype()
    with FakeTensorMode():
        torch.set_default_dtype(dtype)
        try:
            vae = _build("AutoencoderKL", spec["vae"]).eval()
        finally:
            torch.set_default_dtype(previous)
        z = torch.zeros(1, spec["latent"][0], *spec["latent"][1:], dtype=dtype)
        return _tracked_activation_peak(vae, lambda: vae.decode(z, return_dict=False)[0])


def part_real(args) -> dict[str, Any]:
    rows_list = sorted({args.batch * (k + 1) for k in range(1, 5)} | {args.batch})
    results: dict[str, Any] = {}
    for key in args.real:
        spec = REAL[key]
        start = time.perf_counter()
        bytes_per = 2 if spec["dtype"] in ("float16", "bfloat16") else 4
        params = {"denoiser": count_params(*spec["denoiser"]),
                  "text_encoders": [count_params(c, cfg) for c, cfg in spec["text"]],
                  "vae": count_params("AutoencoderKL", spec["vae"])}
        entry = {"name": spec["name"], "dtype": spec["dtype"], "params": params, "bytes_per_param": bytes_per,
                 "activations": real_activations(spec, rows_list, "fake" if args.device == "cpu" else
                                                 (args.device if args.real_on_device else "fake")),
                 "vae_decode_activation": vae_decode_activations(spec)}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results[key] = entry
    return results


# =====================================================================================================
# Tables
# =====================================================================================================
def _kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def print_tiny(results: dict[str, Any], batch: int) -> None:
    print(f"\n### Measured: tiny random pipelines, one composed step, B = {batch}\n")
    print("Peak tensor memory allocated during the step (KiB), over what was allocated before it; "
          f"chunked = `max_batch` {batch} (one chunk of B rows).\n")
    print("| family | weights (KiB) | K = 1 | K = 2 | K = 3 | K = 4 | K = 1, chunked | K = 2, chunked | "
          "K = 3, chunked | K = 4, chunked |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for family, entry in results.items():
        one = [c for c in entry["cells"] if c["max_batch"] is None]
        chunked = [c for c in entry["cells"] if c["max_batch"] is not None]
        weights = sum(entry["weights_bytes"].values())
        print(f"| {family} | {_kib(weights)} | " + " | ".join(_kib(c["step_peak_bytes"]) for c in one) + " | "
              + " | ".join(_kib(c["step_peak_bytes"]) for c in chunked) + " |")
    if all("check" in e for e in results.values()):
        print("\nThe fake-tensor estimator (part 2's) against the profiler, one denoiser call of R rows (KiB):\n")
        print("| family | R = 1: profiler / fake | R = 2 | R = 5 |")
        print("|---|---|---|---|")
        for family, entry in results.items():
            print(f"| {family} | " + " | ".join(f"{_kib(c['profiler_bytes'])} / {_kib(c['fake_bytes'])}"
                                              for c in entry["check"]) + " |")


def print_real(results: dict[str, Any], batch: int) -> None:
    print(f"\n### Estimated: real sizes, 1024x1024, B = {batch}\n")
    print("| model | params: denoiser / text encoders / VAE | weights GiB: all / denoiser | "
          "activations MiB per call of R rows (R = " + ", ".join(str(r) for r in
                                                         sorted(next(iter(results.values()))["activations"]))
          + ") | VAE decode of one image, activations MiB |")
    print("|---|---|---|---|---|")
    for entry in results.values():
        p, b = entry["params"], entry["bytes_per_param"]
        total = p["denoiser"] + sum(p["text_encoders"]) + p["vae"]
        acts = entry["activations"]
        print(f"| {entry['name']} ({entry['dtype']}) | {p['denoiser'] / 1e9:.2f}B / "
              + " + ".join(f"{n / 1e9:.2f}B" for n in p["text_encoders"]) + f" / {p['vae'] / 1e6:.1f}M | "
              f"{total * b / GiB:.1f} / {p['denoiser'] * b / GiB:.1f} | "
              + ", ".join(f"{acts[r] / MiB:.0f}" for r in sorted(acts)) + f" | {entry['vae_decode_activation'] / MiB:.0f} |")
    print("\nPeak of one composed step, GiB (weights resident + activations of one call):\n")
    print("| model | K | rows per call: one call / chunked | no offload, one call | no offload, "
          "`--max-batch B` | `--cpu-offload`, one call | `--cpu-offload --max-batch B` |")
    print("|---|---|---|---|---|---|---|")
    for entry in results.values():
        p, b, acts = entry["params"], entry["bytes_per_param"], entry["activations"]
        w_all = (p["denoiser"] + sum(p["text_encoders"]) + p["vae"]) * b
        w_den = p["denoiser"] * b
        for k in range(1, 5):
            rows = batch * (k + 1)
            one, chunk = acts[rows], acts[batch]
            print(f"| {entry['name']} | {k} | {rows} / {batch} | {(w_all + one) / GiB:.2f} | {(w_all + chunk) / GiB:.2f}"
                  f" | {(w_den + one) / GiB:.2f} | {(w_den + chunk) / GiB:.2f} |")
    print("\nPeak of decoding one image (K does not enter; compdiff decodes one image at a time), GiB: the weights "
          "resident then (the VAE in its decoding dtype: SDXL's float32 upcast) + the decoder's activations:\n")
    print("| model | no offload | `--cpu-offload` |")
    print("|---|---|---|")
    for key, entry in results.items():
        p, b = entry["params"], entry["bytes_per_param"]
        vae = p["vae"] * (4 if REAL[key]["vae_dtype"] == "float32" else 2)
        others = (p["denoiser"] + sum(p["text_encoders"])) * b
        act = entry["vae_decode_activation"]
        print(f"| {entry['name']} | {(others + vae + act) / GiB:.2f} | {(vae + act) / GiB:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["tiny", "real", "all"], default="all")
    ap.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    ap.add_argument("--real", nargs="+", default=list(REAL), choices=list(REAL))
    ap.add_argument("--batch", type=int, default=1, help="B, images per step (default 1)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--real-on-device", action="store_true",
                    help="with --device cuda: part 2 on the GPU with random weights instead of fake tensors")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report: dict[str, Any] = {"machine": {"python": platform.python_version(), "torch": torch.__version__,
                                          "platform": platform.platform(), "device": args.device,
                                          "cuda": torch.cuda.get_device_name(args.device)
                                          if args.device.startswith("cuda") else None},
                              "batch": args.batch}
    if args.part in ("tiny", "all"):
        report["tiny"] = part_tiny(args)
        print_tiny(report["tiny"], args.batch)
    if args.part in ("real", "all"):
        report["real"] = part_real(args)
        print_real(report["real"], args.batch)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()
