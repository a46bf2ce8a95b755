"""Fréchet distance between two image sets, over the judge's features.

This is **FD-judge**, not Inception FID: the features are the penultimate
layer of compdiff's own scene-reading network (`compdiff.eval.Judge`),
trained on this project's rendered world. Inception weights cannot be
fetched here, and Inception features would mean little on 32×32 renders
anyway. Numbers are therefore comparable with each other (same judge
weights, same resolution) and never with FID values in papers.

The distance between Gaussians N(mu_a, S_a) and N(mu_b, S_b) is

    FD = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)

(the last trace equals tr((S_a S_b)^1/2), written in its symmetric form so
that only symmetric eigendecompositions are needed). Everything is done in
float64; tiny negative eigenvalues from rounding are clipped to zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from compdiff.eval.judge import Judge


class FeatureStats(NamedTuple):
    """Mean (F,) and unbiased covariance (F, F) of a feature set, float64."""

    mean: Tensor
    cov: Tensor
    n: int


def feature_stats(features: Tensor) -> FeatureStats:
    """Mean and covariance of `features: (N, F)` in float64 (N >= 2)."""
    if features.ndim != 2:
        raise ValueError(f"features must be (N, F), got shape {tuple(features.shape)}")
    n = features.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got {n}")
    f = features.detach().to(torch.float64)
    mean = f.mean(dim=0)
    centred = f - mean
    cov = centred.T @ centred / (n - 1)
    return FeatureStats(mean, 0.5 * (cov + cov.T), n)


def _sqrt_psd(mat: Tensor) -> Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    evals, evecs = torch.linalg.eigh(0.5 * (mat + mat.T))
    return (evecs * evals.clamp_min(0.0).sqrt()) @ evecs.T


def frechet_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between N(a.mean, a.cov) and N(b.mean, b.cov)."""
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"feature sizes differ: {tuple(a.mean.shape)} vs {tuple(b.mean.shape)}")
    mu_a, mu_b = a.mean.to(torch.float64), b.mean.to(torch.float64)
    cov_a, cov_b = a.cov.to(torch.float64), b.cov.to(torch.float64)
    root_a = _sqrt_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    # tr(M^1/2) for symmetric PSD M is the sum of the roots of its eigenvalues.
    tr_covmean = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0.0).sqrt().sum()
    diff = mu_a - mu_b
    fd = diff @ diff + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * tr_covmean
    return max(float(fd), 0.0)


def frechet_from_features(features_a: Tensor, features_b: Tensor) -> float:
    """FD between two cached feature sets `(N_a, F)` and `(N_b, F)`."""
    return frechet_from_stats(feature_stats(features_a), feature_stats(features_b))


@torch.no_grad()
def judge_features(images: Tensor, judge: "Judge", batch_size: int = 256) -> Tensor:
    """Penultimate judge features of `images: (N, 3, R, R)` in [-1, 1] -> (N, F)."""
    chunks = [judge.features(images[i : i + batch_size]) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(chunks).to(torch.float64)


def frechet_distance(
    images_a: Tensor, images_b: Tensor, judge: "Judge | None" = None, batch_size: int = 256
) -> float:
    """FD-judge between two image sets `(N, 3, R, R)` in [-1, 1].

    Not Inception FID: the features are the judge's penultimate layer (see the
    module docstring). `judge` defaults to `load_judge(R)` for the images'
    resolution. Use a few thousand images per side: with F features the
    covariance needs N >> F rows, and the estimate is biased upwards for
    small N (two samples of one distribution give FD > 0).
    """
    if images_a.ndim != 4 or images_b.ndim != 4:
        raise ValueError("images must be (N, 3, R, R)")
    if judge is None:
        from compdiff.eval.judge import load_judge

        judge = load_judge(images_a.shape[-1])
    return frechet_from_features(
        judge_features(images_a, judge, batch_size), judge_features(images_b, judge, batch_size)
    )
