"""The models a ``compdiff serve`` page serves: named when the server starts, each opened ONCE
(cached) and kept, with one lock per model so that one job at a time runs on it. The page names
models only by these names: no path from the page ever reaches ``open_model``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from compdiff.errors import InputError
from compdiff.expr.display import excerpt

if TYPE_CHECKING:
    from compdiff.web.validate import Limits

#: an example expression per world task, shown when its model is chosen
EXAMPLES = {
    "objects": '"0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"',
    "relations": '"a red cube left of a blue sphere"',
    "attributes": "red AND cube AND NOT metal",
}
GENERIC_EXAMPLE = '"a stone castle" AND NOT "black and white"'


@dataclass(frozen=True)
class ModelEntry:
    """A model the server serves: its page name, what ``open_model`` gets, and the
    ``compdiff sample`` options that name it (``--task objects`` or ``--model DIR``)."""

    name: str
    source: str
    cli: tuple[str, ...]


class ModelStore:
    """The models named at start; each opened once (on first use, or all by :meth:`load_all`)
    and kept. ``lock(name)``: one job at a time per model."""

    def __init__(self, models: Sequence[str] = (), *, shipped: bool = True, device: Any = "cpu",
                 device_flag: str | None = None, opener: Callable[..., Any] | None = None) -> None:
        import torch

        from compdiff.models import shipped_models

        self.device = torch.device(device)
        #: ``--device`` for the reproduce command (None: the CLI's auto picks the same)
        self.device_flag = device_flag
        self._opener = opener
        self.entries: dict[str, ModelEntry] = {}
        have = shipped_models()
        if shipped:
            from compdiff.world.tasks import task_names

            order = {t: i for i, t in enumerate(task_names())}
            for task in sorted(have, key=lambda t: (order.get(t, len(order)), t)):
                self.entries[task] = ModelEntry(task, task, ("--task", task))
        for spec in models:
            spec = str(spec)
            if spec in have and not Path(spec).expanduser().exists():
                if spec not in self.entries:
                    self.entries[spec] = ModelEntry(spec, spec, ("--task", spec))
                continue
            path = Path(spec).expanduser()
            if not path.is_dir():
                raise InputError(f"--model {excerpt(spec, 100)}: neither a shipped model ({', '.join(have)}) "
                                 "nor a model directory")
            path = path.resolve()
            base = path.name or "model"
            name, k = base, 2
            while name in self.entries:
                name, k = f"{base}-{k}", k + 1
            self.entries[name] = ModelEntry(name, str(path), ("--model", str(path)))
        if not self.entries:
            raise InputError("no model to serve: name one with --model")
        self._opened: dict[str, Any] = {}
        self._locks = {name: threading.Lock() for name in self.entries}
        self._open_lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self.entries)

    def entry(self, name: str) -> ModelEntry:
        if not isinstance(name, str) or name not in self.entries:
            raise InputError(f"unknown model {excerpt(repr(name), 60)}; this server serves: "
                             f"{', '.join(self.entries)}")
        return self.entries[name]

    def get(self, name: str):
        """The OpenedModel called ``name``, opened on first use and then kept."""
        entry = self.entry(name)
        with self._open_lock:
            if name not in self._opened:
                opener = self._opener
                if opener is None:
                    from compdiff.backends import open_model as opener
                self._opened[name] = opener(entry.source, device=self.device)
            return self._opened[name]

    def is_open(self, name: str) -> bool:
        return name in self._opened

    def load_all(self) -> None:
        for name in self.entries:
            self.get(name)

    def lock(self, name: str) -> threading.Lock:
        self.entry(name)
        return self._locks[name]

    def task(self, name: str) -> str | None:
        return getattr(self.get(name), "task", None)

    def defaults(self, name: str, limits: "Limits") -> dict[str, Any]:
        """The page's settings for model ``name``: its recommended sampler and steps (capped by
        the limits), its guidance scale, its task and an example expression."""
        m = self.get(name)
        steps = int(m.sampling.get("steps", 50))
        return {"sampler": m.sampling.get("sampler", "ddim"), "steps": max(1, min(steps, limits.max_steps)),
                "guidance_scale": float(m.default_scale), "task": m.task,
                "example": EXAMPLES.get(m.task or "", GENERIC_EXAMPLE)}
