"""The conditional eps-prediction network: diffusers' UNet2DModel as the backbone, the
condition embedding added to its timestep embedding (class_embed_type="identity", as in
the paper's CLEVR models), and for positions an optional spatial path: a Gaussian bump
at the position as an extra input channel.

The network knows nothing of noise schedules; it maps (x_t, t, cond) to eps.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import UNet2DModel
from torch import Tensor, nn

from compdiff.nn.conditioning import build_embedding, position_bump, set_bump


@dataclass(frozen=True)
class ModelConfig:
    """Typed constructor arguments, saved as JSON next to the weights."""

    task: str
    resolution: int = 32
    cond_kind: str = "position"  # "position" | "tokens"
    vocab_sizes: tuple[int, ...] = ()  # for "tokens": the table size of each slot
    spatial: bool = True  # positions only: the bump channel
    bump_sigma: float = 0.06
    channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 2
    attention: bool = False  # self-attention at the lowest resolution
    norm_groups: int = 8
    joint: bool = False  # cond is a set of rows (B, Kmax, D): the joint-conditioning baseline

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["vocab_sizes"] = tuple(d.get("vocab_sizes", ()))
        d["channels"] = tuple(d["channels"])
        return cls(**d)

    @property
    def uses_bump(self) -> bool:
        return self.cond_kind == "position" and self.spatial


def build_unet(cfg: ModelConfig) -> UNet2DModel:
    n = len(cfg.channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.resolution, in_channels=3 + int(cfg.uses_bump), out_channels=3,
        block_out_channels=cfg.channels, layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down), up_block_types=tuple(up), class_embed_type="identity",
        norm_num_groups=cfg.norm_groups, attention_head_dim=8,
    )


class ConditionalUNet(nn.Module):
    """A Denoiser: forward(x (B,3,R,R), t (B,) int, cond (B, D) or, joint, (B, Kmax, D)) -> eps (B,3,R,R)."""

    def __init__(self, cfg: ModelConfig, unet: UNet2DModel | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.unet = unet if unet is not None else build_unet(cfg)
        temb_dim = self.unet.config.block_out_channels[0] * 4
        self.cond_embed = build_embedding(cfg.cond_kind, temb_dim, cfg.vocab_sizes, cfg.joint)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if self.cfg.uses_bump:
            bump = (set_bump if self.cfg.joint else position_bump)(cond, x.shape[-1], self.cfg.bump_sigma)
            x = torch.cat([x, bump.to(x.dtype)], dim=1)
        return self.unet(x, t, class_labels=self.cond_embed(cond)).sample

