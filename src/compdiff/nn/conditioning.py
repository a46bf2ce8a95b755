"""Condition embeddings: a task's condition rows -> one vector added to the timestep embedding,
and (for positions) a spatial map given to the network as an extra input channel.

Row formats are the world tasks' tensor forms (compdiff.world.tasks); an all-zero row is
the null condition and maps to a learned null embedding.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn


def fourier(xy: Tensor, freqs: Tensor) -> Tensor:
    """(B, 2) positions -> (B, 4F): sin and cos of each coordinate times each frequency."""
    ang = xy[:, :, None] * freqs  # (B, 2, F)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(1)


#: frequencies (times pi) of the pixel-coordinate channels: periods 2, 1, 1/2 and 1/4 of the image
COORD_FREQS = (1.0, 2.0, 4.0, 8.0)


def coord_channels(resolution: int, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tensor:
    """(1, 2 + 4F, R, R): where each pixel is, the same for every image and every condition. Channels:
    x and y of the pixel centre in [0, 1] (the positions' own frame: x across, y down), then sin and
    cos of each times each frequency in COORD_FREQS. A convolutional network cannot tell where it is
    in the image except near the borders (Liu et al. 2018, "CoordConv"); with these a position token
    can be matched to the pixels it names, as the patch position embeddings of DiT, SD3 and Flux do."""
    c = (torch.arange(resolution, dtype=torch.float32, device=device) + 0.5) / resolution
    y, x = torch.meshgrid(c, c, indexing="ij")
    xy = torch.stack([x, y])  # (2, R, R)
    freqs = torch.tensor(COORD_FREQS, device=device) * math.pi
    ang = xy[:, None] * freqs[None, :, None, None]  # (2, F, R, R)
    return torch.cat([xy, ang.sin().flatten(0, 1), ang.cos().flatten(0, 1)])[None].to(dtype)


def n_coord_channels() -> int:
    return 2 + 4 * len(COORD_FREQS)


class PositionEmbedding(nn.Module):
    """Rows [x, y, flag] (B, 3) -> (B, dim): Fourier features of (x, y) through an MLP;
    flag 0 (the null row) gives the learned null embedding."""

    def __init__(self, dim: int, n_freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freqs)) * math.pi, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, cond: Tensor) -> Tensor:
        flag = cond[:, 2:3].float()
        return flag * self.mlp(fourier(cond[:, :2].float(), self.freqs)) + (1 - flag) * self.null


class TokenEmbedding(nn.Module):
    """Integer rows (B, S) -> (B, dim): one embedding table per slot, summed, through an MLP.
    Index 0 in a slot is "any"/absent; the all-zero row is the null condition."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.zeros(dim))

    def forward(self, cond: Tensor) -> Tensor:
        cond = cond.long()
        e = sum(table(cond[:, i]) for i, table in enumerate(self.tables))
        is_null = (cond == 0).all(dim=1, keepdim=True).to(e.dtype)
        return (1 - is_null) * self.mlp(e) + is_null * self.null


class SetEmbedding(nn.Module):
    """A set of condition rows (B, K, D) -> (B, dim): the sum of the per-row embeddings of the
    non-null rows (a masked sum, order-free); an all-null set gives the learned null embedding.
    The joint-conditioning baseline reads a whole concept set this way."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, cond: Tensor) -> Tensor:
        B, K = cond.shape[:2]
        e = self.inner(cond.flatten(0, 1)).view(B, K, -1)
        real = (cond != 0).any(dim=2, keepdim=True).to(e.dtype)  # (B, K, 1)
        empty = (real.sum(1) == 0).to(e.dtype)  # (B, 1)
        return (e * real).sum(1) + empty * self.inner.null


class TokenSequence(nn.Module):
    """Integer rows (B, S) -> a token sequence (B, G, dim) for cross-attention: token g is the
    sum of the slot embeddings in ``groups[g]`` (e.g. a relation's first object, its relation,
    its second object) plus a learned embedding of g. The all-zero (null) row gives G learned
    null tokens. ``groups`` empty: one token per slot."""

    def __init__(self, vocab_sizes: Sequence[int], dim: int, groups: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        self.groups = [list(g) for g in groups] or [[i] for i in range(len(vocab_sizes))]
        slots = sorted(i for g in self.groups for i in g)
        if slots != list(range(len(vocab_sizes))):
            raise ValueError(f"token groups {groups} must cover the {len(vocab_sizes)} slots once each")
        self.tables = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)
        self.group_pos = nn.Parameter(torch.randn(len(self.groups), dim) * 0.02)
        self.null = nn.Parameter(torch.randn(len(self.groups), dim) * 0.02)

    @property
    def n_tokens(self) -> int:
        return len(self.groups)

    def forward(self, cond: Tensor) -> Tensor:
        cond = cond.long()
        tokens = torch.stack([sum(self.tables[i](cond[:, i]) for i in g) for g in self.groups], dim=1)
        tokens = tokens + self.group_pos
        is_null = (cond == 0).all(dim=1)[:, None, None].to(tokens.dtype)
        return (1 - is_null) * tokens + is_null * self.null


class PositionTokens(nn.Module):
    """Position rows [x, y, flag] (B, 3) -> one token (B, 1, dim) for cross-attention: Fourier
    features of (x, y) through an MLP, as PositionEmbedding; flag 0 (the null row) gives a
    learned null token. A position reaches the network the way a word does, with no map of
    where it is: the objects task's token path (the joint baseline without a layout oracle)."""

    n_tokens = 1

    def __init__(self, dim: int, n_freqs: int = 8) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freqs)) * math.pi, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.null = nn.Parameter(torch.randn(1, dim) * 0.02)

    def forward(self, cond: Tensor) -> Tensor:
        flag = cond[:, 2:3].float()
        return (flag * self.mlp(fourier(cond[:, :2].float(), self.freqs)) + (1 - flag) * self.null)[:, None, :]


class SetSequence(nn.Module):
    """Sets of rows (B, K, S) -> (tokens (B, K*G, dim), mask (B, K*G) bool): the token sequences of
    all rows side by side, the null rows masked out; an all-null set keeps its first row's null
    tokens. The joint-conditioning baseline reads a whole concept set this way."""

    def __init__(self, inner: TokenSequence) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        B, K = cond.shape[:2]
        G = self.inner.n_tokens
        tokens = self.inner(cond.flatten(0, 1)).view(B, K * G, -1)
        real = (cond != 0).any(dim=2)  # (B, K)
        real[:, 0] |= ~real.any(dim=1)
        return tokens, real.repeat_interleave(G, dim=1)


def position_bump(cond: Tensor, resolution: int, sigma: float) -> Tensor:
    """Rows [x, y, flag] (B, 3) -> (B, 1, R, R): a Gaussian bump of width sigma (image units)
    at (x, y), zero for the null row. Pixel centres at (i + 0.5) / R."""
    c = (torch.arange(resolution, device=cond.device, dtype=torch.float32) + 0.5) / resolution
    dx = c[None, :] - cond[:, 0:1].float()  # (B, R) along x (columns)
    dy = c[None, :] - cond[:, 1:2].float()  # (B, R) along y (rows)
    g = torch.exp(-(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * sigma**2))
    return (g * cond[:, 2].float()[:, None, None]).unsqueeze(1)


def set_bump(cond: Tensor, resolution: int, sigma: float) -> Tensor:
    """Sets of position rows (B, K, 3) -> (B, 1, R, R): the bumps of all positions, capped at 1."""
    B, K = cond.shape[:2]
    bumps = position_bump(cond.flatten(0, 1), resolution, sigma).view(B, K, resolution, resolution)
    return bumps.sum(1, keepdim=True).clamp(max=1.0)


class WithSink(nn.Module):
    """A token sequence with one learned token put in front of every sequence, never masked.

    Softmax attention over a single key gives that key weight 1 at every place in the image, so a
    condition of one token (a position) reaches cross-attention as the same vector everywhere:
    attention cannot say *where* it applies. With a second key that the concept's token competes
    with, the weight on the concept becomes sigmoid(q.k_concept - q.k_sink), which can be high in
    one place and low elsewhere. Text encoders get this for free (a start token, padding); this is
    that start token."""

    def __init__(self, inner: nn.Module, dim: int) -> None:
        super().__init__()
        self.inner = inner
        self.sink = nn.Parameter(torch.randn(1, 1, dim) * 0.02)

    def forward(self, cond: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out = self.inner(cond)
        tokens, mask = out if isinstance(out, tuple) else (out, None)
        sink = self.sink.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        tokens = torch.cat([sink, tokens], dim=1)
        if mask is None:
            return tokens
        return tokens, torch.cat([torch.ones_like(mask[:, :1]), mask], dim=1)


def build_token_sequence(dim: int, vocab_sizes: Sequence[int], groups: Sequence[Sequence[int]] = (),
                         joint: bool = False, kind: str = "tokens", sink: bool = False) -> nn.Module:
    """The cross-attention context: TokenSequence (kind "tokens") or PositionTokens (kind
    "position"), or SetSequence over it for the joint baseline; sink: WithSink around it."""
    inner = PositionTokens(dim) if kind == "position" else TokenSequence(vocab_sizes, dim, groups)
    seq = SetSequence(inner) if joint else inner
    return WithSink(seq, dim) if sink else seq


def build_embedding(kind: str, dim: int, vocab_sizes: Sequence[int] = (), joint: bool = False) -> nn.Module:
    """kind "position" (objects) or "tokens" (relations, attributes); joint: over sets of rows."""
    if kind == "position":
        inner: nn.Module = PositionEmbedding(dim)
    elif kind == "tokens":
        inner = TokenEmbedding(vocab_sizes, dim)
    else:
        raise ValueError(f"unknown condition kind {kind!r}")
    return SetEmbedding(inner) if joint else inner
