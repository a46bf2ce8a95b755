"""Composition: bind an expression to a Denoiser + ConceptEncoder, get an ``(x, t) -> eps``.

The rule (Liu et al., ECCV 2022, eq. 11 with the NOT of sec. 4.2), for terms (c_i, w_i)
and guidance scale s:

    eps*(x, t) = eps(x, t | ∅) + Σ_i k · w_i · s · (eps(x, t | c_i) − eps(x, t | ∅))

with k = 1 for ``mode="sum"`` (the paper's equation) and k = 1 / (number of terms with
positive weight) for ``mode="mean"`` (the official code's older behaviour, which keeps
the total positive guidance at s however many concepts are ANDed). A negative weight is
NOT. Terms whose weight is exactly 0 are not evaluated (their contribution is 0).

Everything a step needs goes through the model in ONE batched forward of B·(K+1) rows
(K unique concepts after merging duplicates, plus the null condition), split into chunks
of at most ``max_batch`` rows only when asked. Conditions are encoded once, here, not
per step.

``rescale`` is guidance rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and
Sample Steps are Flawed", eq. 15-16), per sample:
    eps_r = eps* · std(eps_ref) / std(eps*),  out = rescale · eps_r + (1 − rescale) · eps*
where eps_ref is the unguided conditional prediction: the mean of the positive concepts'
predictions (for one concept that is eps(c), exactly what diffusers' rescale_noise_cfg
uses; with no positive term, eps(∅)). std is over all non-batch dimensions.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from compdiff.denoiser import ConceptEncoder, Denoiser
from compdiff.errors import InputError
from compdiff.expr import Expr, Term, parse

Mode = Literal["sum", "mean"]


class ComposedEps:
    """``(x (B, ...), t (B,) or scalar) -> eps (B, ...)``, built by :func:`compose`.

    Attributes: terms (the evaluated terms), weights (K,) float64 = k·w_i·s,
    cond ((K+1), ...) with row 0 the null condition, rows_evaluated (running count of
    rows sent through the denoiser, for tests and benchmarks).
    """

    def __init__(self, denoiser: Denoiser, cond: Tensor, terms: list[Term], weights: Tensor,
                 rescale: float, max_batch: int | None, ref_mask: Tensor) -> None:
        self.denoiser = denoiser
        self.cond = cond
        self.terms = terms
        self.weights = weights
        self.rescale = rescale
        self.max_batch = max_batch
        self.ref_mask = ref_mask  # (K,) bool: positive terms, averaged into eps_ref for rescale
        self.rows_evaluated = 0
        self._rows_cache: dict[tuple[int, torch.device], Tensor] = {}

    def _cond_rows(self, B: int, device: torch.device) -> Tensor:
        """cond repeated to (K+1)·B rows, condition-major: rows [j·B, (j+1)·B) hold condition j."""
        key = (B, device)
        if key not in self._rows_cache:
            self._rows_cache = {key: self.cond.to(device).repeat_interleave(B, dim=0)}
        return self._rows_cache[key]

    def _forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        n = x.shape[0]
        self.rows_evaluated += n
        if self.max_batch is None or n <= self.max_batch:
            return self.denoiser(x, t, cond)
        m = self.max_batch
        return torch.cat([self.denoiser(x[i:i + m], t[i:i + m], cond[i:i + m]) for i in range(0, n, m)])

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(B) if t.ndim == 0 else t
        G = self.cond.shape[0]  # K + 1
        x_in = x.unsqueeze(0).expand(G, *x.shape).reshape(G * B, *x.shape[1:])
        t_in = t.unsqueeze(0).expand(G, B).reshape(G * B)
        out = self._forward(x_in, t_in, self._cond_rows(B, x.device)).reshape(G, B, *x.shape[1:])
        eps_null, eps_c = out[0], out[1:]
        if G == 1:
            return eps_null
        w = self.weights.to(x.device, out.dtype).reshape(-1, *([1] * x.ndim))
        eps = eps_null + (w * (eps_c - eps_null)).sum(0)
        if self.rescale:
            eps = self._rescaled(eps, eps_null, eps_c)
        return eps

    def _rescaled(self, eps: Tensor, eps_null: Tensor, eps_c: Tensor) -> Tensor:
        ref = eps_c[self.ref_mask.to(eps_c.device)].mean(0) if bool(self.ref_mask.any()) else eps_null
        dims = list(range(1, eps.ndim))
        eps_r = eps * (ref.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
        return self.rescale * eps_r + (1 - self.rescale) * eps


def effective_weights(terms: list[Term], guidance_scale: float, mode: Mode) -> list[float]:
    """k·w_i·s for each term: k = 1 ("sum"), or 1/P with P the number of positive terms
    ("mean"; no division when P = 0)."""
    if mode not in ("sum", "mean"):
        raise InputError(f"mode must be 'sum' or 'mean', got {mode!r}")
    positives = sum(1 for term in terms if term.weight > 0)
    k = 1.0 / positives if mode == "mean" and positives else 1.0
    return [term.weight * guidance_scale * k for term in terms]


def compose(denoiser: Denoiser, encoder: ConceptEncoder, expr: Expr | str, guidance_scale: float = 1.0,
            mode: Mode = "sum", rescale: float = 0.0, max_batch: int | None = None) -> ComposedEps:
    """Compose ``expr`` over ``denoiser`` with conditions from ``encoder``; see the module docstring.

    expr: an Expr or its text (parsed with :func:`compdiff.parse`). Raises InputError for OR
    (not supported yet), an unknown mode, rescale outside [0, 1] or max_batch < 1.
    """
    if isinstance(expr, str):
        expr = parse(expr)
    if expr.has_or():
        raise InputError("OR is not supported yet: compose() handles AND, NOT and weights; "
                         f"rewrite {str(expr)!r} without OR")
    if not 0.0 <= rescale <= 1.0:
        raise InputError(f"rescale must lie in [0, 1], got {rescale}")
    if max_batch is not None and max_batch < 1:
        raise InputError(f"max_batch must be >= 1, got {max_batch}")
    terms = [term for term in expr.terms() if term.weight != 0.0]
    w = torch.tensor(effective_weights(terms, float(guidance_scale), mode), dtype=torch.float64)
    null = encoder.null()
    cond = torch.cat([null, encoder.encode([term.concept for term in terms])]) if terms else null
    ref_mask = torch.tensor([term.weight > 0 for term in terms], dtype=torch.bool)
    return ComposedEps(denoiser, cond, terms, w, rescale, max_batch, ref_mask)

