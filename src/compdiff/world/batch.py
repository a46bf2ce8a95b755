"""Scenes, labels and renders drawn as tensors on any torch device, a whole batch at once.

The Python path (scene.py draws one scene at a time with numpy, render.py packs
Scene objects on the CPU, a task's ``sample_concept`` labels one scene) stays the
reference and the default. This module is the opt-in fast path for training: it
draws B scenes at once on the device the model trains on, with the SAME
distributions as the Python path but NOT the same random stream (scene i here is
not ``scene_at(seed, i)``):

- ``sample_scene_batch``: object count uniform in [min_objects, max_objects],
  attributes uniform, "free" positions by random sequential placement: each
  object's center uniform in [e + BORDER, 1 - e - BORDER] (e = EXTENT[size]),
  the first of ``TRIES`` draws whose disc overlaps no earlier object. A dead end
  redraws the WHOLE scene (attributes and positions, same count), as
  scene._sample_free restarts: the result is the Python sampler's attempt
  conditioned on success. Redrawing only the stuck object would not be: with 8
  objects a quarter of attempts dead-end, mostly on crowded (large) scenes.
  "centered": one object at 0.5 +- 0.03.
- ``label_batch``: one true concept per scene in the task's condition-row
  format, with ``sample_concept``'s probabilities (the task's ``sample_rows``
  hook: a tensor kernel in the task's own file, or Task's generic host path),
  then null dropout.
- ``render_batch``: packs on the device and calls ``render.render_packed``; on
  the CPU equal, bit for bit, to ``render(scenes_from_tensors(batch))`` for
  "free" scenes (zoomed "centered" ones to ~1e-6).

Every tensor is made on the generator's device. The host waits for the device
only where it must know a count: per object slot (the objects still without a
spot after FIRST_TRIES draws) and per placement round (the dead-ended scenes;
usually one round) when sampling, and once per render (the group sizes).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import Tensor

from compdiff.world.holdout import MAX_ATTEMPTS
from compdiff.world.render import Packed, render_packed
from compdiff.world.scene import (BORDER, COLORS, EXTENT, LAYOUTS, MATERIALS, SHAPES, SIZES,
                                  ZOOM, Layout, Obj, Scene)

if TYPE_CHECKING:  # tasks import this module (SceneBatch, uniform_choice); it names no task
    from compdiff.world.tasks import Task

#: position draws per object before a dead end, as in scene._sample_free
TRIES = 200
#: draws every object gets at once; the few still without a spot draw the rest
FIRST_TRIES = 16
#: the attribute vocabularies, in the order of SceneBatch's attribute fields
_VOCABS = (SHAPES, COLORS, SIZES, MATERIALS)


class SceneBatch(NamedTuple):
    """B scenes as tensors on one device; K = the most objects a scene may have.

    A scene's objects are slots 0..n-1 in placement order (``valid``); the
    slots after them are zeros.
    """

    shape: Tensor     # (B, K) int64 index into SHAPES
    color: Tensor     # (B, K) int64 index into COLORS
    size: Tensor      # (B, K) int64 index into SIZES
    material: Tensor  # (B, K) int64 index into MATERIALS
    x: Tensor         # (B, K) float32 center, image units
    y: Tensor         # (B, K) float32 center, image units (down)
    valid: Tensor     # (B, K) bool
    layout: Layout    # of every scene of the batch


def make_generator(seed: int | torch.Generator,
                   device: torch.device | str | None = None) -> torch.Generator:
    """A generator on ``device``: ``seed`` passes through if it is one (on another
    device: ValueError; None: its own), else a new one seeded with it (None: the CPU)."""
    if not isinstance(seed, torch.Generator):
        return torch.Generator(device=torch.device(device or "cpu")).manual_seed(int(seed))
    if device is None:
        return seed
    gd, device = seed.device, torch.device(device)
    other_index = None not in (gd.index, device.index) and gd.index != device.index
    if gd.type != device.type or other_index:
        raise ValueError(f"generator is on {gd}, the batch is asked for on {device}")
    return seed


def sample_scene_batch(generator: int | torch.Generator, batch_size: int,
                       device: torch.device | str | None = None, min_objects: int = 1,
                       max_objects: int = 5, layout: Layout = "free",
                       allows: Callable[[SceneBatch], Tensor] | None = None) -> SceneBatch:
    """``batch_size`` scenes drawn on ``device`` (default: the generator's) like
    ``scene_at(..., min_objects, max_objects, layout)`` draws one (see the module
    docstring); K = max_objects, or 1 for "centered", which ignores the counts as
    scene_at does. ``allows(batch) -> (B,) bool`` (a held-out split's ``allows_batch``):
    scenes it refuses are drawn again, whole, until it allows them (rejection sampling:
    the scenes it allows keep their distribution)."""
    gen = make_generator(generator, device)
    batch = _sample_unfiltered(gen, batch_size, None, min_objects, max_objects, layout)
    if allows is None:
        return batch
    redo = torch.nonzero(~allows(batch)).flatten()
    for _ in range(MAX_ATTEMPTS):
        if redo.numel() == 0:  # reads the count: one wait for the device per round
            return batch
        fresh = _sample_unfiltered(gen, redo.numel(), None, min_objects, max_objects, layout)
        batch = SceneBatch(*(f.index_copy(0, redo, g) for f, g in zip(batch[:7], fresh[:7])), batch.layout)
        redo = redo[~allows(fresh)]
    raise ValueError(f"{redo.numel()} scenes refused {MAX_ATTEMPTS} times in a row by the held-out split")


def _sample_unfiltered(generator: int | torch.Generator, batch_size: int, device: torch.device | str | None,
                       min_objects: int, max_objects: int, layout: Layout) -> SceneBatch:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not 1 <= min_objects <= max_objects <= 8:
        raise ValueError(f"need 1 <= min_objects <= max_objects <= 8, got "
                         f"{min_objects}, {max_objects}")
    gen = make_generator(generator, device)
    B, dev = int(batch_size), gen.device
    if layout == "centered":
        attrs = _draw_attrs(gen, B, 1)
        x, y = (0.5 + 0.06 * (torch.rand(B, 1, generator=gen, device=dev) - 0.5)
                for _ in range(2))
        return SceneBatch(*attrs, x, y, torch.ones(B, 1, dtype=torch.bool, device=dev), layout)
    n = torch.randint(min_objects, max_objects + 1, (B,), generator=gen, device=dev)
    return _sample_free(gen, n, max_objects)


def _draw_attrs(gen: torch.Generator, S: int, K: int) -> list[Tensor]:
    """Uniform attribute indices: [shape, color, size, material], each (S, K) int64."""
    return [torch.randint(0, len(v), (S, K), generator=gen, device=gen.device) for v in _VOCABS]


def _extent(size: Tensor, zoom: float = 1.0) -> Tensor:
    """(S, K) size indices -> float32 disc radii EXTENT[size] * zoom (rounded as numpy
    rounds them into float32, so packing matches render._pack)."""
    ext = torch.zeros(size.shape, dtype=torch.float32, device=size.device)
    for i, name in enumerate(SIZES):
        ext.masked_fill_(size == i, EXTENT[name] * zoom)
    return ext


def _first_free(gen: torch.Generator, lo: Tensor, span: Tensor, need: Tensor, px: Tensor,
                py: Tensor, tries: int) -> tuple[Tensor, Tensor]:
    """Per row, the first of ``tries`` uniform draws in [lo, lo + span]^2 at least ``need``
    from every placed center: lo, span (S,); need, px, py (S, k).
    Returns the draw (S, 2) (meaningless where none was free) and found (S,) bool."""
    S = lo.shape[0]
    cand = torch.rand(S, tries, 2, generator=gen, device=lo.device)
    cand = lo[:, None, None] + span[:, None, None] * cand          # (S, tries, 2)
    dx = cand[..., 0, None] - px[:, None, :]                       # (S, tries, k)
    dy = cand[..., 1, None] - py[:, None, :]
    free = (dx * dx + dy * dy >= (need * need)[:, None, :]).all(2)  # (S, tries)
    first = free.int().argmax(1)[:, None, None].expand(S, 1, 2)
    return cand.gather(1, first)[:, 0], free.any(1)


def _place(gen: torch.Generator, ext: Tensor, n: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Random sequential placement of the first n[s] discs of radii ext (S, K).

    Returns x, y (S, K) float32 (zero in unused slots) and ok (S,) bool: False
    where some object found no free spot in TRIES draws (a dead end). Most objects
    fit within FIRST_TRIES draws; only the others draw the remaining ones (the
    first free of 200 draws either way).
    """
    S, K = ext.shape
    x, y = torch.zeros_like(ext), torch.zeros_like(ext)
    ok = torch.ones(S, dtype=torch.bool, device=ext.device)
    lo = ext + BORDER
    span = 1.0 - 2.0 * lo                                   # hi - lo, hi = 1 - e - BORDER
    for k in range(K):
        args = (lo[:, k], span[:, k], ext[:, k, None] + ext[:, :k], x[:, :k], y[:, :k])
        pick, found = _first_free(gen, *args, FIRST_TRIES)
        active = k < n
        late = torch.nonzero(active & ~found).flatten()     # a wait for the device
        if late.numel():
            pick[late], found[late] = _first_free(gen, *(a[late] for a in args),
                                                  TRIES - FIRST_TRIES)
        x[:, k] = torch.where(active, pick[:, 0], 0.0)
        y[:, k] = torch.where(active, pick[:, 1], 0.0)
        ok &= found | ~active
    return x, y, ok


def _sample_free(gen: torch.Generator, n: Tensor, K: int) -> SceneBatch:
    """Free-layout scenes of n (B,) objects; dead-ended scenes are drawn again whole."""
    B, dev = n.shape[0], n.device
    fields = [torch.zeros(B, K, dtype=torch.int64, device=dev) for _ in _VOCABS]
    fields += [torch.zeros(B, K, dtype=torch.float32, device=dev) for _ in range(2)]
    todo = torch.arange(B, device=dev)
    while todo.numel():
        attrs = _draw_attrs(gen, todo.numel(), K)
        x, y, ok = _place(gen, _extent(attrs[2]), n[todo])
        for dst, src in zip(fields, (*attrs, x, y)):
            # integer indexing: a boolean mask here would wait for the device per field
            dst[todo] = torch.where(ok[:, None], src, dst[todo])
        todo = todo[~ok]  # reads the dead ends' count: the wait for the device
    valid = torch.arange(K, device=dev) < n[:, None]
    attrs = [torch.where(valid, a, 0) for a in fields[:4]]  # unused slots: zeros
    return SceneBatch(*attrs, fields[4], fields[5], valid, "free")


def scenes_from_tensors(batch: SceneBatch) -> list[Scene]:
    """The batch as Scene objects (copied to the host), objects in slot order."""
    cols = [t.tolist() for t in batch[:7]]
    scenes = []
    for shape, color, size, material, xs, ys, valid in zip(*cols):
        objs = tuple(Obj(SHAPES[s], COLORS[c], SIZES[z], MATERIALS[m], x, y)
                     for s, c, z, m, x, y, v in zip(shape, color, size, material, xs, ys, valid)
                     if v)
        scenes.append(Scene(objs, batch.layout))
    return scenes


def pack_batch(batch: SceneBatch) -> Packed:
    """The renderer's input, on the batch's device: slots sorted far-to-near, zoomed."""
    zoom = ZOOM if batch.layout == "centered" else 1.0
    order = torch.sort(batch.y.masked_fill(~batch.valid, float("inf")), dim=1, stable=True).indices
    valid = batch.valid.gather(1, order)

    def take(t: Tensor) -> Tensor:
        return torch.where(valid, t.gather(1, order), 0)

    # float32 throughout (float64 is not on every device): with zoom 1 the centers are
    # exactly render._pack's; zoomed ones may differ from its float64 arithmetic by an ulp
    cx, cy = (take(t if zoom == 1.0 else 0.5 + (t - 0.5) * zoom) for t in (batch.x, batch.y))
    ext = take(_extent(batch.size, zoom))
    return Packed(valid, cx, cy, ext, take(batch.shape), take(batch.color), take(batch.material))


def render_batch(batch: SceneBatch, resolution: int) -> Tensor:
    """Render on the batch's device: (B, 3, R, R) float32 in [-1, 1]."""
    return render_packed(pack_batch(batch), resolution)


def uniform_choice(mask: Tensor, gen: torch.Generator) -> Tensor:
    """(B, N) bool, every row with a True -> (B,) int64, a uniform True column of each row
    (the largest of i.i.d. uniforms over the allowed columns): the tasks' label kernels use it."""
    u = torch.rand(mask.shape, generator=gen, device=mask.device)
    return u.masked_fill_(~mask, -1.0).argmax(1)


def label_rows(task: Task, scenes: SceneBatch, generator: torch.Generator) -> Tensor:
    """(B, D) condition rows of ``task.dtype``: one true concept per scene, drawn with
    ``task.sample_concept``'s probabilities by the task's own hook ``task.sample_rows``."""
    rows = task.sample_rows(scenes, generator)
    B = scenes.valid.shape[0]
    if tuple(rows.shape) != (B, task.row_dim):
        raise ValueError(f"{type(task).__name__}.sample_rows gave rows of shape {tuple(rows.shape)}, "
                         f"expected ({B}, {task.row_dim})")
    return rows.to(task.dtype)


def label_batch(task: Task, scenes: SceneBatch, generator: torch.Generator,
                null_prob: float) -> tuple[Tensor, Tensor]:
    """(cond (B, D), is_null (B,) bool): ``label_rows``, each replaced by the null row
    (zeros) with probability ``null_prob``."""
    rows = label_rows(task, scenes, generator)
    is_null = torch.rand(rows.shape[0], generator=generator, device=rows.device) < null_prob
    return rows.masked_fill(is_null[:, None], 0), is_null


__all__ = ["SceneBatch", "TRIES", "FIRST_TRIES", "make_generator", "sample_scene_batch",
           "scenes_from_tensors", "pack_batch", "render_batch", "uniform_choice", "label_rows",
           "label_batch"]
