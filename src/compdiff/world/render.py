"""A vectorised CLEVR-like renderer: ``render(scenes, resolution)``.

Look: a light floor with a soft gradient, a soft shadow to the lower right of
each object (light from the upper left), and three shapes shaded so they read
apart even at 32x32: a lit sphere (radial shading), a cube showing its front,
top and right faces (flat shades), a cylinder with an elliptical lit top and a
horizontally shaded body. Metal objects are darker with a sharp white
specular highlight and a floor reflection; rubber is matte. Objects are
painted far-to-near (ascending y) with premultiplied alpha.

Anti-aliasing is analytic: every face is a (sheared) box, disc or ellipse
whose signed distance d (in pixels) gives coverage clamp(0.5 - d, 0, 1).
No supersampling, no per-pixel Python: the only Python loop runs over object
slots (<= max objects per scene) and the three shapes.

``render_packed(Packed, resolution)`` is the core: it renders per-slot tensors
on whatever device they are on. ``render(scenes, resolution)`` packs Scene
objects on the CPU and calls it; world/batch.py packs scenes drawn as tensors.
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from compdiff.world.scene import COLORS, EXTENT, MATERIALS, SHAPES, ZOOM, Scene

#: CLEVR's eight colors (sRGB, 0..255), in COLORS order
RGB = {
    "gray": (87, 87, 87), "red": (173, 35, 35), "blue": (42, 75, 215),
    "green": (29, 105, 20), "brown": (129, 74, 25), "purple": (129, 38, 192),
    "cyan": (41, 208, 208), "yellow": (255, 238, 51),
}
_RGB = np.array([RGB[c] for c in COLORS], dtype=np.float32) / 255.0

# light from the upper left, a little in front; viewer along +z
_L = np.array([-0.5, -0.6, 0.62]); _L /= np.linalg.norm(_L)
_H = _L + np.array([0.0, 0.0, 1.0]); _H /= np.linalg.norm(_H)
LX, LY, LZ = (float(v) for v in _L)
_HXC, _HZC = (float(v) for v in _H[[0, 2]] / np.linalg.norm(_H[[0, 2]]))
HX, HY, HZ = (float(v) for v in _H)

# material parameters: ambient, diffuse gain, specular gain, specular power
_MAT = {
    "rubber": (0.30, 0.80, 0.10, 8.0),
    "metal": (0.16, 0.78, 1.00, 40.0),
}
_MAT_T = np.array([_MAT[m] for m in MATERIALS], dtype=np.float32)


class Packed(NamedTuple):
    """What the renderer reads: per object slot, (B, K) tensors on any one device.

    Within a scene the valid slots come first, sorted far-to-near (ascending y);
    invalid slots are all zeros. Positions and extents are in drawn (zoomed)
    image units.
    """

    valid: Tensor  # (B, K) bool
    cx: Tensor     # (B, K) float32 center x after the layout's zoom
    cy: Tensor     # (B, K) float32 center y after the layout's zoom
    ext: Tensor    # (B, K) float32 half-extent after the zoom
    shape: Tensor  # (B, K) int64 index into SHAPES
    color: Tensor  # (B, K) int64 index into COLORS
    mat: Tensor    # (B, K) int64 index into MATERIALS


def _pack(scenes: Sequence[Scene]) -> Packed:
    """Scenes -> CPU Packed, K = the most objects in a scene (at least 1)."""
    B = len(scenes)
    K = max([len(s.objects) for s in scenes] + [1])
    valid = np.zeros((B, K), bool)
    cx = np.zeros((B, K), np.float32); cy = np.zeros((B, K), np.float32)
    ext = np.zeros((B, K), np.float32)
    shape = np.zeros((B, K), np.int64); color = np.zeros((B, K), np.int64)
    mat = np.zeros((B, K), np.int64)
    shape_i = {s: i for i, s in enumerate(SHAPES)}
    color_i = {c: i for i, c in enumerate(COLORS)}
    mat_i = {m: i for i, m in enumerate(MATERIALS)}
    for b, sc in enumerate(scenes):
        zoom = ZOOM if sc.layout == "centered" else 1.0
        for k, o in enumerate(sorted(sc.objects, key=lambda o: o.y)):
            valid[b, k] = True
            cx[b, k] = 0.5 + (o.x - 0.5) * zoom
            cy[b, k] = 0.5 + (o.y - 0.5) * zoom
            ext[b, k] = EXTENT[o.size] * zoom
            shape[b, k] = shape_i[o.shape]; color[b, k] = color_i[o.color]
            mat[b, k] = mat_i[o.material]
    return Packed(*(torch.from_numpy(a) for a in (valid, cx, cy, ext, shape, color, mat)))


@functools.lru_cache(maxsize=None)
def _tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(colors (8, 3), materials (2, 4), floor tint (1, 3, 1, 1)) on ``device``, copied once:
    a host-to-device copy per call would wait for the device each time."""
    tint = torch.tensor([1.0, 0.98, 0.95], device=device).view(1, 3, 1, 1)
    return torch.from_numpy(_RGB).to(device), torch.from_numpy(_MAT_T).to(device), tint


def _cov(d: Tensor) -> Tensor:
    """Coverage of a pixel from the signed distance d (pixels) to an edge."""
    return (0.5 - d).clamp_(0.0, 1.0)


def _floor(B: int, R: int, u: Tensor, v: Tensor, tint: Tensor) -> Tensor:
    """(B, 3, R, R): a light warm-gray floor, darker far away and at the sides."""
    lum = 0.44 + 0.20 * v - 0.16 * (u - 0.5) ** 2  # (1, R, R) by broadcasting
    return (lum.unsqueeze(1) * tint).expand(B, 3, R, R).contiguous()


def _shadows(p: Packed, u: Tensor, v: Tensor, R: int) -> Tensor:
    """(B, 1, R, R) floor darkening factor from all objects' soft shadows."""
    e = p.ext[:, :, None, None]                            # (B, K, 1, 1)
    sx = p.cx[:, :, None, None] + 0.50 * e
    sy = p.cy[:, :, None, None] + 0.55 * e
    q = ((u.unsqueeze(1) - sx) / (1.25 * e)) ** 2 + ((v.unsqueeze(1) - sy) / (0.60 * e)) ** 2
    a = ((1.25 - q) * 0.9).clamp_(0.0, 1.0) * p.valid[:, :, None, None]
    return 1.0 - 0.45 * a.amax(dim=1, keepdim=True)


def _sphere(du: Tensor, dv: Tensor, s: Tensor, R: int, mp: Tensor):
    nx, ny = du / s, dv / s
    r2 = nx * nx + ny * ny
    nz = (1.0 - r2).clamp_(min=0.0).sqrt_()
    alpha = _cov((r2.sqrt() - 1.0) * (s * R))
    diff = (nx * LX + ny * LY + nz * LZ).clamp_(min=0.0)
    amb, kd, ks, pw = (mp[:, i, None, None] for i in range(4))
    spec = (nx * HX + ny * HY + nz * HZ).clamp_(min=0.0).pow(pw) * ks
    # metal (low ambient) reflects the light floor in its lower half
    refl = (0.30 - amb) * ny.clamp(min=0.0) * 1.2
    shade = amb + kd * diff
    return alpha, alpha * shade, alpha * (spec + refl)


def _cube(du: Tensor, dv: Tensor, s: Tensor, R: int, mp: Tensor):
    a = 0.8 * s
    ox, oy = 0.4 * a, 0.55 * a            # depth offset: right and up
    fx, fy = du + 0.2 * a, dv - 0.275 * a  # relative to the front face center
    front = _cov(torch.maximum(fx.abs() - a, fy.abs() - a) * R)
    t_top = (-a - fy) / oy                 # 0 at the top edge of the front face
    top = _cov(torch.maximum((fx - ox * t_top).abs() - a,
                             (fy + a + 0.5 * oy).abs() - 0.5 * oy) * R)
    t_side = (fx - a) / ox
    side = _cov(torch.maximum((fx - a - 0.5 * ox).abs() - 0.5 * ox,
                              (fy + oy * t_side).abs() - a) * R)
    amb, kd, ks, _ = (mp[:, i, None, None] for i in range(4))
    # flat face shades from the face normals: top (0,-1,0), front (0,0,1), side (1,0,0)
    sh_top, sh_front, sh_side = amb + kd * -LY, amb + kd * LZ * 0.8, amb + kd * 0.15
    # metal: a sheen across the top face and a vertical gradient on the front
    gx = (fx / a).clamp(-1.0, 1.0)
    spec_top = ks * 0.55 * (1.0 - (gx + 0.4).abs()).clamp_(min=0.0)
    spec_front = ks * 0.30 * ((fy / a) * 0.5 + 0.5).clamp_(0.0, 1.0) * (0.3 - amb) / 0.2
    alpha = (front + top + side).clamp_(max=1.0)
    shade = front * sh_front + top * sh_top + side * sh_side
    spec = top * spec_top + front * spec_front.clamp(min=0.0)
    return alpha, shade, spec


def _cylinder(du: Tensor, dv: Tensor, s: Tensor, R: int, mp: Tensor):
    a = 0.85 * s
    e, h = 0.32 * a, 1.35 * a              # ellipse semi-minor axis, body height
    nx = du / a
    # top ellipse (centre dv = -h/2) and body = rectangle U bottom ellipse
    def ell(dy: Tensor) -> Tensor:        # approx. signed distance to an ellipse
        f = nx * nx + (dy / e) ** 2 - 1.0
        g = 2.0 * ((du / (a * a)) ** 2 + (dy / (e * e)) ** 2).sqrt() + 1e-6
        return f / g
    top = _cov(ell(dv + 0.5 * h) * R)
    rect = torch.maximum(du.abs() - a, (dv).abs() - 0.5 * h)
    body = _cov(torch.minimum(rect, ell(dv - 0.5 * h)) * R)
    amb, kd, ks, pw = (mp[:, i, None, None] for i in range(4))
    nxc = nx.clamp(-1.0, 1.0)
    nz = (1.0 - nxc * nxc).clamp_(min=0.0).sqrt_()
    diff = (nxc * LX + nz * LZ).clamp_(min=0.0)
    # the half vector projected onto the body's horizontal normals: a vertical stripe
    spec_body = (nxc * _HXC + nz * _HZC).clamp_(min=0.0).pow(pw * 0.5) * ks
    sh_body, sh_top = amb + kd * diff, amb + kd * -LY * 1.1
    spec_top = ks * 0.35
    alpha = top + body * (1.0 - top)
    shade = top * sh_top + body * (1.0 - top) * sh_body
    spec = top * spec_top + body * (1.0 - top) * spec_body
    return alpha, shade, spec


_SHAPE_FNS = {"cube": _cube, "sphere": _sphere, "cylinder": _cylinder}


def _groups(p: Packed) -> list[tuple[int, int, Tensor]]:
    """(slot k, shape index, scene indices (n,) ascending) of every non-empty group, in
    painting order. Sorting by shape keeps the device busy; reading the group sizes is
    the one wait for the device in a render (one nonzero per group would be 3K waits)."""
    n_shapes = len(SHAPES)
    key = torch.where(p.valid, p.shape, n_shapes)                  # (B, K), invalid last
    order = torch.sort(key, dim=0, stable=True).indices           # (B, K)
    kinds = torch.arange(n_shapes + 1, device=key.device)
    counts = (key.unsqueeze(-1) == kinds).sum(0).tolist()          # (K, n_shapes + 1)
    groups = []
    for k, row in enumerate(counts):
        start = 0
        for si, n in enumerate(row[:n_shapes]):
            if n:
                groups.append((k, si, order[start:start + n, k]))
            start += n
    return groups


def _check_resolution(resolution: int) -> int:
    R = int(resolution)
    if R < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    return R


def render_packed(p: Packed, resolution: int) -> Tensor:
    """Render packed scenes on their device. Returns (B, 3, R, R) float32 in [-1, 1]."""
    R = _check_resolution(resolution)
    B, dev = p.valid.shape[0], p.valid.device
    rgb, mats, tint = _tables(dev)
    pix = (torch.arange(R, dtype=torch.float32, device=dev) + 0.5) / R
    u, v = pix.view(1, 1, R), pix.view(1, R, 1)
    img = _floor(B, R, u, v, tint) * _shadows(p, u, v, R)
    for k, si, idx in _groups(p):
        n = idx.numel()
        cx = p.cx[idx, k].view(n, 1, 1); cy = p.cy[idx, k].view(n, 1, 1)
        s = p.ext[idx, k].view(n, 1, 1)
        alpha, shade, spec = _SHAPE_FNS[SHAPES[si]](u - cx, v - cy, s, R, mats[p.mat[idx, k]])
        base = rgb[p.color[idx, k]].view(n, 3, 1, 1)
        col = base * shade.unsqueeze(1) + spec.unsqueeze(1)
        img[idx] = img[idx] * (1.0 - alpha.unsqueeze(1)) + col
    return img.clamp_(0.0, 1.0).mul_(2.0).sub_(1.0)


def render(scenes: Sequence[Scene], resolution: int) -> Tensor:
    """Render scenes (packed on the CPU). Returns (N, 3, R, R) float32 in [-1, 1]."""
    R = _check_resolution(resolution)
    if len(scenes) == 0:
        return torch.zeros(0, 3, R, R)
    return render_packed(_pack(scenes), R)


def to_uint8(images: Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


__all__ = ["render", "render_packed", "Packed", "to_uint8", "RGB"]
