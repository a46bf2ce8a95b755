"""The world models compdiff trains (``compdiff.json`` directories) as a backend family."""
from __future__ import annotations

from pathlib import Path

import torch

from compdiff.backends.registry import OpenedModel, register_backend
from compdiff.errors import InputError

#: guidance scale of world models unless told otherwise, chosen on the shipped objects model (BENCHMARKS.md)
WORLD_SCALE = 3.0


def _detect(path: Path) -> bool:
    return (path / "compdiff.json").is_file()


def _open(path: Path, *, device: torch.device, dtype: str = "auto", bf16: bool = False,
          cpu_offload: bool = False) -> OpenedModel:
    from compdiff.models import _read_meta, load_model, recommended_sampling

    if cpu_offload:
        raise InputError(f"{path} is a compdiff world model: cpu_offload applies to diffusers pipelines (text "
                         "encoders, UNet/transformer and VAE offloaded one at a time); a world model is one small "
                         "network, run it on the device directly")
    loaded = load_model(path, bf16=bf16, dtype=dtype)  # --dtype float16/bfloat16 refused: world models are float32
    training = _read_meta(path / "compdiff.json").get("training", {})
    loaded.denoiser.net.to(device)
    cfg = loaded.config
    return OpenedModel(loaded.denoiser, loaded.encoder, loaded.schedule, (3, cfg.resolution, cfg.resolution),
                       lambda x: x.clamp(-1, 1), "compdiff-world", str(path), WORLD_SCALE, clip_x0=1.0,
                       sampling=recommended_sampling(path), task=cfg.task, info={"config": cfg, "training": training})


register_backend("compdiff-world", _detect, _open)
