"""Regions on the model's grid: the masks M_i of regional composition (see docs/operators.md).

    eps* = eps(∅) + Σ_i w_i · s · M_i ⊙ (eps(c_i) − eps(∅))

M_i is term i's region (``compdiff.expr.region``) drawn on the latent grid (h, w) of the
samples, values in [0, 1]; a term without a region has M_i = 1. ``region_masks`` builds them:

* a box (or named region) covers the pixels whose centres ((j + ½)/w, (i + ½)/h) lie inside it.
  With ``feather`` f > 0 (a fraction of the image) the edge is a linear ramp of width f centred
  on the box edge: M = clamp(½ + d/f, 0, 1), d the signed distance to the nearest box edge
  (positive inside). With f = 0 the ramp is a step (M = 1 inside, 0 outside, ½ on the edge
  itself), so nothing leaks outside the box. Box edges on the image border are not feathered,
  so the full image (0, 0, 1, 1) gives M = 1 everywhere, the same as no region; complementary
  regions (left and right) sum to exactly 1 at every pixel for every f.
* a mask (``mask:NAME``) is the caller's (H, W) or per-sample (B, H, W) tensor of values in
  [0, 1] (or a grey PNG, ``load_mask``), resized to (h, w) by area averaging (each cell holds
  the mean of the mask over the part of the image it covers; a 64-pixel mask cut at pixel 32
  gives exact 0s and 1s on an 8-cell grid), then, with f > 0, blurred by a box of f·w by f·h
  cells (what turns a step edge into the ramp above).

``mode="normalize"`` (``--region-mode normalize``) divides, per sample and pixel, the masks
of the positive terms that have a region by their sum where it exceeds 1: overlapping
positive regions then share the guidance of one concept instead of adding up, and outside
overlaps nothing changes. Negative terms and terms without a region are left as they are.
``mode="sum"`` (the default) uses the masks as drawn: two regions that overlap both guide
there, as two ANDed concepts do everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from compdiff.errors import InputError
from compdiff.expr.region import Region

#: the most pixels a mask image may hold (4096 x 4096, any aspect): checked from the file's header,
#: before anything is decoded, so a decompression bomb (20000 x 20000 zeros in a few kB) costs nothing
MAX_MASK_PIXELS = 4096 * 4096

RegionMode = Literal["sum", "normalize"]
REGION_MODES = ("sum", "normalize")
Masks = Mapping[str, Tensor]


def check_region_options(feather: float, mode: str) -> None:
    """InputError for a feather outside [0, 1] or an unknown region mode."""
    if not 0.0 <= float(feather) <= 1.0:
        raise InputError(f"feather is a fraction of the image in [0, 1], got {feather}")
    if mode not in REGION_MODES:
        raise InputError(f"region_mode must be 'sum' or 'normalize', got {mode!r}")


def check_masks(masks: Masks | None, needed: Sequence[Region | None]) -> dict[str, Tensor]:
    """The masks the expression's regions need, validated: float values in [0, 1], shape (H, W) or
    (N, H, W). InputError naming the mask for anything else or for a name that is missing."""
    masks = dict(masks or {})
    out = {}
    for region in needed:
        if region is None or region.kind != "mask" or region.name in out:
            continue
        if region.name not in masks:
            given = ", ".join(sorted(masks)) or "none"
            raise InputError(f"the expression uses mask:{region.name} but no mask of that name was given "
                             f"(masks given: {given}); pass masks={{'{region.name}': tensor}}")
        m = torch.as_tensor(masks[region.name])
        if m.ndim not in (2, 3) or m.shape[-1] < 1 or m.shape[-2] < 1:
            raise InputError(f"mask {region.name!r} must be (H, W) or (N, H, W), got {tuple(m.shape)}")
        m = m.float()
        if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
            raise InputError(f"mask {region.name!r} must hold values in [0, 1]")
        out[region.name] = m if m.ndim == 3 else m[None]
    return out


def load_mask(path: str | Path) -> Tensor:
    """A mask image (any format PIL reads; colour is turned grey) -> (H, W) float32 in [0, 1].
    InputError for a file that is not an image or holds more than MAX_MASK_PIXELS pixels."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    side = int(MAX_MASK_PIXELS ** 0.5)

    def too_big(size: str) -> InputError:
        return InputError(f"mask file {str(path)!r} holds {size} pixels; a mask may hold at most "
                          f"{MAX_MASK_PIXELS:,} ({side} x {side}); it is resized to the model's grid anyway: "
                          "save it smaller")

    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: the size is checked below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
        with im:
            width, height = im.size
            if width * height > MAX_MASK_PIXELS:
                raise too_big(f"{width} x {height} = {width * height:,}")
            grey = im.convert("L")
            data = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
            return data.reshape(grey.height, grey.width).float() / 255.0
    except FileNotFoundError:
        raise InputError(f"mask file {str(path)!r} does not exist") from None
    except Image.DecompressionBombError:  # beyond twice PIL's own limit: refused while the header is read
        raise too_big(f"more than {2 * Image.MAX_IMAGE_PIXELS:,}" if Image.MAX_IMAGE_PIXELS else "too many") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"mask file {str(path)!r} is not an image PIL can read ({e})") from None


def box_mask(box: Sequence[float], height: int, width: int, feather: float = 0.0) -> Tensor:
    """(height, width) float32 mask of the box (x0, y0, x1, y1); see the module docstring."""
    x0, y0, x1, y1 = (float(v) for v in box)
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / width
    v = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    inf = torch.tensor(float("inf"), dtype=torch.float64)
    dx = torch.minimum(u - x0 if x0 > 0 else inf.expand_as(u), x1 - u if x1 < 1 else inf.expand_as(u))
    dy = torch.minimum(v - y0 if y0 > 0 else inf.expand_as(v), y1 - v if y1 < 1 else inf.expand_as(v))
    d = torch.minimum(dy[:, None], dx[None, :])
    if feather > 0:
        m = (0.5 + d / feather).clamp(0.0, 1.0)
    else:
        m = torch.where(d > 0, 1.0, torch.where(d == 0, 0.5, 0.0)).to(torch.float64)
    return m.float()


def _image_mask(m: Tensor, height: int, width: int, feather: float) -> Tensor:
    """(N, H, W) in [0, 1] -> (N, height, width): resized, then box-blurred by the feather."""
    m = m.float()[:, None]
    if m.shape[-2:] != (height, width):
        m = F.interpolate(m, size=(height, width), mode="area")  # each cell: the mean of the mask over it
    if feather > 0:
        ky, kx = (max(1, round(feather * n)) for n in (height, width))
        if ky > 1 or kx > 1:
            m = F.pad(m, ((kx - 1) // 2, kx // 2, (ky - 1) // 2, ky // 2), mode="replicate")
            m = F.avg_pool2d(m, (ky, kx), stride=1)
    return m[:, 0].clamp(0.0, 1.0)


def region_masks(regions: Sequence[Region | None], height: int, width: int, feather: float = 0.0,
                 masks: Masks | None = None, batch: int = 1) -> Tensor | None:
    """(T, N, height, width) float32 masks of T regions (None: all ones), N = 1, or ``batch`` when a
    caller mask is per sample. None when no region is set at all. InputError for a missing mask or
    a per-sample mask whose N is neither 1 nor ``batch``."""
    if all(r is None for r in regions):
        return None
    given = check_masks(masks, regions)
    n = max([1] + [m.shape[0] for m in given.values()])
    for name, m in given.items():
        if m.shape[0] not in (1, batch):
            raise InputError(f"mask {name!r} holds {m.shape[0]} per-sample masks but the batch has {batch} samples")
    out = torch.ones(len(regions), n if n == batch else 1, height, width)
    for i, r in enumerate(regions):
        if r is None:
            continue
        if r.kind == "mask":
            out[i] = _image_mask(given[r.name], height, width, feather)
        else:
            out[i] = box_mask(r.coords, height, width, feather)  # type: ignore[arg-type]
    return out


def normalize_overlaps(maps: Tensor, weights: Tensor, has_region: Tensor) -> Tensor:
    """``mode="normalize"``: maps (T, B, 1, h, w) of T terms for B samples, weights (T, B) and
    has_region (T,) or (T, B) bool -> the maps with each sample's positive regional terms divided,
    per pixel, by their sum where it exceeds 1."""
    regional = has_region if has_region.ndim == 2 else has_region[:, None]
    sel = ((weights > 0) & regional).to(maps.dtype).reshape(*weights.shape, 1, 1, 1)
    total = (sel * maps).sum(0, keepdim=True).clamp(min=1.0)
    return torch.where(sel > 0, maps / total, maps)


def spatial_shape(x: Tensor) -> tuple[int, int]:
    """(h, w) of samples laid out (B, C, h, w); InputError for any other layout."""
    if x.ndim != 4:
        raise InputError(f"regions need samples laid out (B, C, H, W); this model's samples are {tuple(x.shape)}")
    return int(x.shape[-2]), int(x.shape[-1])


__all__ = ["MAX_MASK_PIXELS", "REGION_MODES", "RegionMode", "box_mask", "check_masks", "check_region_options",
           "load_mask",
           "normalize_overlaps", "region_masks", "spatial_shape"]
