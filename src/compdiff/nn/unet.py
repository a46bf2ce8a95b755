"""The conditional eps-prediction network: diffusers' UNet2DModel as the backbone, the
condition embedding added to its timestep embedding (class_embed_type="identity", as in
the paper's CLEVR models), and for positions an optional spatial path: a Gaussian bump
at the position as an extra input channel.

``cross_attention=True`` adds a second path: the condition as a short token sequence (token
conditions: one token per slot group, e.g. a relation's first object, relation, second
object; a position: one token of its Fourier features) that the lowest-resolution blocks read
by cross-attention, so that each place in the image can attend to the description of the
object it draws. The backbone is then diffusers' UNet2DConditionModel, with self- and
cross-attention at the lowest resolution (and in the middle block). With ``joint`` the tokens
of all the set's rows are read side by side, as a text model reads a sentence.

``pixel_coords=True`` appends fixed channels that say where each pixel is (x, y and their Fourier
features), the same for every image: without them a position read as a token has nothing in the
image to be matched against (BENCHMARKS, "Beyond training", objects). ``token_sink=True`` puts a
learned token before the condition's tokens (``conditioning.WithSink``): softmax attention over a
single token weighs it 1 everywhere, so a one-token condition could not be placed without it.

The network knows nothing of noise schedules; it maps (x_t, t, cond) to eps, or to v when
``prediction="v_prediction"`` (``compdiff.models.InferenceDenoiser`` turns v into eps with the
model's schedule, so samplers and composition always see eps).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from diffusers import UNet2DConditionModel, UNet2DModel
from torch import Tensor, nn

from compdiff.nn.conditioning import (build_embedding, build_token_sequence, coord_channels, n_coord_channels,
                                      position_bump, set_bump)

#: what a world network may output (the schedule turns either into eps)
PREDICTIONS = ("epsilon", "v_prediction")


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
    cross_attention: bool = False  # cross-attention to the condition's tokens (a position: one token)
    token_groups: tuple[tuple[int, ...], ...] = ()  # slots summed into each token (empty: one per slot)
    attention_levels: int = 1  # cross_attention: at the lowest this many resolutions (1: 8x8 for 32x32)
    prediction: str = "epsilon"  # what the network outputs: "epsilon" or "v_prediction" (samplers get eps)
    pixel_coords: bool = False  # input channels saying where each pixel is (conditioning.coord_channels)
    token_sink: bool = False  # cross_attention: a learned token before the condition's (conditioning.WithSink)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        d = dict(d)
        d["vocab_sizes"] = tuple(d.get("vocab_sizes", ()))
        d["channels"] = tuple(d["channels"])
        d["token_groups"] = tuple(tuple(g) for g in d.get("token_groups", ()))
        return cls(**d)


    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}")
        if not 1 <= self.attention_levels <= len(self.channels):
            raise ValueError(f"attention_levels must be 1..{len(self.channels)} (the UNet's levels), "
                             f"got {self.attention_levels}")
        if self.attention_levels > 1 and not self.cross_attention:
            raise ValueError("attention_levels > 1 needs cross_attention")
        if self.token_sink and not self.cross_attention:
            raise ValueError("token_sink needs cross_attention")

    @property
    def uses_bump(self) -> bool:
        return self.cond_kind == "position" and self.spatial

    @property
    def in_channels(self) -> int:
        """The image, the bump channel if any, the pixel coordinates if any."""
        return 3 + int(self.uses_bump) + (n_coord_channels() if self.pixel_coords else 0)


def build_unet(cfg: ModelConfig) -> UNet2DModel | UNet2DConditionModel:
    n = len(cfg.channels)
    if cfg.cross_attention:
        # self- and cross-attention at the lowest `attention_levels` resolutions (default 1: 8x8 for
        # 32x32 images; 16x16 as well took 2.1x as long per training step on the 2-core CPU: a
        # one-off timing of 4 steps, batch 64, bf16, not kept as a benchmark)
        levels = cfg.attention_levels
        down = ["DownBlock2D"] * (n - levels) + ["CrossAttnDownBlock2D"] * levels
        up = [b.replace("Down", "Up") for b in reversed(down)]
        return UNet2DConditionModel(
            sample_size=cfg.resolution, in_channels=cfg.in_channels, out_channels=3,
            block_out_channels=cfg.channels, layers_per_block=cfg.layers_per_block,
            down_block_types=tuple(down), up_block_types=tuple(up),
            mid_block_type="UNetMidBlock2DCrossAttn", class_embed_type="identity",
            cross_attention_dim=cfg.channels[-1], attention_head_dim=8,
            norm_num_groups=cfg.norm_groups,
        )
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if cfg.attention:
        down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=cfg.resolution, in_channels=cfg.in_channels, out_channels=3,
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
        self.cond_tokens = build_token_sequence(cfg.channels[-1], cfg.vocab_sizes, cfg.token_groups,
                                                cfg.joint, cfg.cond_kind, cfg.token_sink) if cfg.cross_attention else None

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        if self.cfg.uses_bump:
            bump = (set_bump if self.cfg.joint else position_bump)(cond, x.shape[-1], self.cfg.bump_sigma)
            x = torch.cat([x, bump.to(x.dtype)], dim=1)
        if self.cfg.pixel_coords:
            grid = coord_channels(x.shape[-1], x.dtype, x.device)
            x = torch.cat([x, grid.expand(x.shape[0], -1, -1, -1)], dim=1)
        if self.cond_tokens is None:
            return self.unet(x, t, class_labels=self.cond_embed(cond)).sample
        tokens = self.cond_tokens(cond)
        tokens, mask = tokens if self.cfg.joint else (tokens, None)
        return self.unet(x, t, encoder_hidden_states=tokens.to(x.dtype), class_labels=self.cond_embed(cond),
                         encoder_attention_mask=mask).sample

