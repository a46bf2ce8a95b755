"""The judge: a small CNN that reads a rendered image back into a `Scene`.

CenterNet-style (Zhou et al. 2019, "Objects as Points") on a coarse grid:

    image (N, 3, R, R) in [-1, 1]
      -> encoder  R -> R/2 -> R/4 (conv + BatchNorm + ReLU), one skip back to R/2
      -> neck     (N, C, G, G), G = R/2 (16×16 at R = 32)
      -> heads    per cell: center logit (1), sub-cell offset (2), shape (3),
                  color (8), size (2 per layout), material (2)

Decoding: sigmoid of the center map, 3×3 max-pool non-maximum suppression,
peaks above `threshold` become objects at (cell + offset) / G, each reading
its attributes from the heads at its peak cell. Task concepts are then
checked on the decoded scene with the task's own `holds` predicate.

One network reads both layouts ("free" scenes and "centered" attribute
scenes); only the size head is per layout, because "large" is drawn at a
different pixel size when the scene is centred on one main object (the
renderer zooms in by `world.scene.ZOOM`). The `layout` argument of `read`
picks that head and is set on the returned Scene. A centered scene has
exactly one object, so there `read` returns the single strongest peak (no
threshold), with its position mapped back through the zoom.

`features` returns the neck pooled over the grid (mean and max, 2C values):
the representation behind FD-judge (`compdiff.eval.frechet`).

Weights ship as safetensors + config.json in compdiff/weights/judge{R}/;
pickles are never loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compdiff.world.scene import COLORS, MATERIALS, SHAPES, SIZES, ZOOM, Obj, Scene

Layout = Literal["free", "centered"]
LAYOUTS: tuple[str, ...] = ("free", "centered")

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"


#: images the judge reads per forward pass in ``Judge.read``
READ_BATCH = 256


@dataclass(frozen=True)
class JudgeConfig:
    """Everything needed to rebuild the network and decode its output."""

    resolution: int = 32
    widths: tuple[int, int, int] = (32, 48, 96)
    threshold: float = 0.3
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = COLORS
    sizes: tuple[str, ...] = SIZES
    materials: tuple[str, ...] = MATERIALS
    layouts: tuple[str, ...] = LAYOUTS
    train: dict = field(default_factory=dict)  # provenance only; not read by the network

    @property
    def grid(self) -> int:
        return self.resolution // 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> "JudgeConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, value in known.items():
            if isinstance(value, list):
                known[key] = tuple(value)
        return cls(**known)


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class HeadOutputs(dict):
    """Raw per-cell outputs, each (N, C_k, G, G): keys center, offset, shape,
    color, size (2·len(layouts) channels), material."""


class Judge(nn.Module):
    """Scene reader. `read` decodes images into Scenes; `features` gives (N, F)."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config or JudgeConfig()
        c1, c2, c3 = self.config.widths
        self.stem = _conv(3, c1)  # R
        self.down1 = nn.Sequential(_conv(c1, c2, stride=2), _conv(c2, c2))  # R/2
        self.down2 = nn.Sequential(_conv(c2, c3, stride=2), _conv(c3, c3), _conv(c3, c3))  # R/4
        self.neck = nn.Sequential(_conv(c3 + c2, c2), _conv(c2, c2))  # R/2 = G
        cfg = self.config
        self.splits = {
            "center": 1,
            "offset": 2,
            "shape": len(cfg.shapes),
            "color": len(cfg.colors),
            "size": len(cfg.sizes) * len(cfg.layouts),
            "material": len(cfg.materials),
        }
        self.head = nn.Sequential(
            nn.Conv2d(c2, c2, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(c2, sum(self.splits.values()), 1)
        )
        with torch.no_grad():  # CenterNet's prior: start with few confident centers.
            self.head[-1].bias[0].fill_(-2.19)

    @property
    def feature_dim(self) -> int:
        return 2 * self.config.widths[1]

    def _check(self, images: Tensor) -> None:
        r = self.config.resolution
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-2:] != (r, r):
            raise ValueError(f"judge{r} expects images (N, 3, {r}, {r}), got {tuple(images.shape)}")

    def trunk(self, images: Tensor) -> Tensor:
        """(N, 3, R, R) -> neck features (N, C, G, G)."""
        self._check(images)
        x1 = self.down1(self.stem(images))
        x2 = self.down2(x1)
        up = F.interpolate(x2, scale_factor=2, mode="nearest")
        return self.neck(torch.cat([up, x1], dim=1))

    def forward(self, images: Tensor) -> HeadOutputs:
        out = self.head(self.trunk(images))
        return HeadOutputs(zip(self.splits, out.split(list(self.splits.values()), dim=1)))

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Penultimate features (N, 2C): grid mean and grid max of the neck."""
        h = self.trunk(images.to(self._dtype()))
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @torch.no_grad()
    def read(self, images: Tensor, layout: Layout = "free", threshold: float | None = None,
             batch_size: int = READ_BATCH) -> list[Scene]:
        """Decode `images: (N, 3, R, R)` in [-1, 1] into one Scene each, `batch_size` images at a time
        (the network's activations are the memory; a whole n = 2048 set at once doubled eval's peak)."""
        if layout not in self.config.layouts:
            raise ValueError(f"layout must be one of {self.config.layouts}, got {layout!r}")
        scenes: list[Scene] = []
        for i in range(0, images.shape[0], batch_size):
            chunk = images[i:i + batch_size].to(self._dtype())
            scenes += decode(self(chunk), self.config, layout, threshold)
        return scenes


def decode(out: HeadOutputs, cfg: JudgeConfig, layout: Layout, threshold: float | None = None) -> list[Scene]:
    """Peaks of the center map -> objects, as a list of N Scenes."""
    thr = cfg.threshold if threshold is None else threshold
    grid = out["center"].shape[-1]
    heat = out["center"].detach().sigmoid()[:, 0]  # (N, G, G)
    peaks = (heat == F.max_pool2d(heat, 3, stride=1, padding=1)) & (heat > thr)
    n_sizes = len(cfg.sizes)
    li = cfg.layouts.index(layout)
    size_logits = out["size"][:, li * n_sizes : (li + 1) * n_sizes]
    labels = {
        "shape": out["shape"].argmax(1),
        "color": out["color"].argmax(1),
        "size": size_logits.argmax(1),
        "material": out["material"].argmax(1),
    }
    offset = out["offset"].clamp(0.0, 1.0)
    scenes = []
    for b in range(heat.shape[0]):
        if layout == "centered":  # at most one object: the strongest peak, if it passes the threshold
            flat = int(heat[b].argmax())
            ij = [[flat // grid, flat % grid]] if float(heat[b].max()) > thr else []
        else:
            ij = sorted(peaks[b].nonzero().tolist(), key=lambda p: -float(heat[b, p[0], p[1]]))
        objs = []
        for i, j in ij:
            x, y = (j + float(offset[b, 0, i, j])) / grid, (i + float(offset[b, 1, i, j])) / grid
            if layout == "centered":  # undo the renderer's zoom about the image center
                x, y = 0.5 + (x - 0.5) / ZOOM, 0.5 + (y - 0.5) / ZOOM
            objs.append(
                Obj(
                    shape=cfg.shapes[int(labels["shape"][b, i, j])],
                    color=cfg.colors[int(labels["color"][b, i, j])],
                    size=cfg.sizes[int(labels["size"][b, i, j])],
                    material=cfg.materials[int(labels["material"][b, i, j])],
                    x=min(max(x, 0.0), 1.0),
                    y=min(max(y, 0.0), 1.0),
                )
            )
        scenes.append(Scene(objects=tuple(objs), layout=layout))
    return scenes


class JudgeWeightsError(RuntimeError):
    """Shipped judge weights are missing, not safetensors, or do not fit the config."""


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise JudgeWeightsError(f"judge weights not found: {path} (train them with bench/train_judge.py)")
    head = path.read_bytes()[:2]
    if head in (b"PK", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        raise JudgeWeightsError(
            f"{path} is a pickle/torch.save file, not safetensors; compdiff never loads pickles "
            "(they can run arbitrary code). Convert it with safetensors.torch.save_file."
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise JudgeWeightsError(f"{path} is not a valid safetensors file: {err}") from err


def load_judge(resolution: int = 32, weights_dir: str | Path | None = None) -> Judge:
    """The shipped judge for `resolution` (weights/judge{R}/), in eval mode.

    `weights_dir` overrides the location (a folder with model.safetensors and
    config.json). Raises JudgeWeightsError for missing, pickled or mismatched
    weights.
    """
    folder = Path(weights_dir) if weights_dir is not None else WEIGHTS_ROOT / f"judge{resolution}"
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise JudgeWeightsError(f"no judge for resolution {resolution}: {cfg_path} missing")
    cfg = JudgeConfig.from_dict(json.loads(cfg_path.read_text()))
    if cfg.resolution != resolution:
        raise JudgeWeightsError(f"{cfg_path} is for resolution {cfg.resolution}, asked for {resolution}")
    world_vocab = (SHAPES, COLORS, SIZES, MATERIALS)
    if (cfg.shapes, cfg.colors, cfg.sizes, cfg.materials) != world_vocab:
        raise JudgeWeightsError(f"{cfg_path}: vocabulary differs from compdiff.world.scene; retrain the judge")
    judge = Judge(cfg)
    state = _load_safetensors(folder / "model.safetensors")
    try:
        judge.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise JudgeWeightsError(f"{folder}: weights do not match config.json: {err}") from err
    return judge.eval()


def save_judge(judge: Judge, folder: str | Path) -> None:
    """Write model.safetensors + config.json (used by bench/train_judge.py)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in judge.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "model.safetensors").chmod(0o644)  # safetensors writes 0600
    (folder / "config.json").write_text(judge.config.to_json() + "\n")
