"""The web app's logic, without Gradio: what each control of the page computes.

Everything here is plain Python over the library (parse, compose, the samplers, open_model),
so it is tested without a browser and without Gradio (tests/test_web.py). ``compdiff.web.app``
only lays these functions out as a page.

* :func:`analyze`: the live parse display (tree, effective weights, or the error with its
  column marked), the slider rows and the canvas markers of an expression. Never raises.
* :func:`leaf_weights` / :func:`set_leaf_weight`: one slider per concept leaf, holding that
  leaf's own ``:w``; moving a slider rewrites the expression (in its canonical text).
* :func:`click_to_concept` / :func:`add_concept`: a click on the canvas -> ``"x,y"`` -> the
  expression gains ``AND "x,y"`` (or ``AND NOT "x,y"``).
* :class:`ModelStore`: the models named when the server started, each opened ONCE (cached),
  with one lock per model so that one job at a time runs on it. The page names models only by
  these names: no path from the page ever reaches ``open_model``.
* :func:`generate`: one generation, step for step what ``compdiff sample`` does (same seeds,
  same images), with a per-step progress callback and a stop check.
* :func:`reproduce_command`: the ``compdiff sample ...`` line that writes the same images.
"""
from __future__ import annotations

import math
import re
import shlex
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from compdiff.errors import InputError
from compdiff.expr import And, Concept, Expr, Not, Or, parse, quote
from compdiff.expr.display import escape, excerpt

#: the corrector choice meaning "no corrector"
CORRECTOR_OFF = "off"
#: display size of the objects canvas (pixels); the world is 32x32
CANVAS_PX = 256
#: generated images are shown (and downloaded) nearest-upscaled to at least this many pixels,
#: like the tiles of ``compdiff sample``'s grid
MIN_CELL = 128
#: guidance scales the page accepts (the CLI accepts |s| <= 100 too)
MAX_SCALE = 100.0
#: largest seed: image i uses seed + i, which torch takes below 2**63
MAX_SEED = 2**63 - 1
#: an example expression per world task, shown when its model is chosen
EXAMPLES = {
    "objects": '"0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"',
    "relations": '"a red cube left of a blue sphere"',
    "attributes": "red AND cube AND NOT metal",
}
GENERIC_EXAMPLE = '"a stone castle" AND NOT "black and white"'


class Cancelled(Exception):
    """Raised inside a generation when its stop check says stop."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; each is a ``compdiff serve`` flag."""

    max_n: int = 16
    max_steps: int = 200
    max_concepts: int = 16
    max_length: int = 2000
    #: most jobs waiting in the queue (``demo.queue(max_size=...)``); more get "busy, try again"
    queue_size: int = 8

    def __post_init__(self) -> None:
        for name in ("max_n", "max_steps", "max_concepts", "max_length", "queue_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InputError(f"{name.replace('_', '-')} must be an integer >= 1, got {v!r}")


# --------------------------------------------------------------------------
# expressions: checking, the live display, sliders


def check_length(text: str, limits: Limits) -> None:
    if not isinstance(text, str):
        raise InputError("the expression must be text")
    if len(text) > limits.max_length:
        raise InputError(f"the expression is {len(text)} characters long; this server accepts at most "
                         f"{limits.max_length}")


def parse_limited(text: str, limits: Limits) -> Expr:
    """``parse`` under the server's limits (length, number of concepts); InputError otherwise."""
    check_length(text, limits)
    return parse(text, max_concepts=limits.max_concepts)


@dataclass(frozen=True)
class Leaf:
    """One concept leaf of the tree, left to right: its text, its own ``:w`` and whether it
    counts against the image (an odd number of NOTs above it, or a negative product of weights)."""

    concept: str
    weight: float
    negated: bool


def leaves(expr: Expr) -> list[Leaf]:
    """The concept leaves of ``expr`` in text order (the order the sliders show)."""
    out: list[Leaf] = []

    def walk(e: Expr, sign: float) -> None:
        if isinstance(e, Concept):
            out.append(Leaf(e.text, e.weight, sign * e.weight < 0))
        elif isinstance(e, Not):
            walk(e.child, -sign)
        else:  # And / Or: a negative group weight flips its children
            for c in e.children:
                walk(c, -sign if e.weight < 0 else sign)

    walk(expr, 1.0)
    return out


def leaf_weights(text: str, limits: Limits) -> list[Leaf]:
    """The slider rows of ``text``: one per concept leaf ([] when it does not parse)."""
    try:
        return leaves(parse_limited(text, limits))
    except InputError:
        return []


def _replace_leaf(e: Expr, index: int, weight: float, counter: list[int]) -> Expr:
    if isinstance(e, Concept):
        i = counter[0]
        counter[0] += 1
        return replace(e, weight=weight) if i == index else e
    if isinstance(e, Not):
        return Not(_replace_leaf(e.child, index, weight, counter))
    assert isinstance(e, (And, Or))
    return type(e)(tuple(_replace_leaf(c, index, weight, counter) for c in e.children), e.weight)


def set_leaf_weight(text: str, index: int, weight: float, limits: Limits) -> str:
    """``text`` with concept leaf ``index``'s own weight set to ``weight`` (rounded to 3
    decimals), written back as the expression's canonical text. Text that does not parse, or an
    index out of range, comes back unchanged."""
    try:
        expr = parse_limited(text, limits)
        w = round(float(weight), 3) + 0.0
        if not 0 <= int(index) < len(leaves(expr)) or not math.isfinite(w):
            return text
        return str(_replace_leaf(expr, int(index), w, [0]))
    except (InputError, TypeError, ValueError):
        return text


def _num(x: float) -> str:
    s = f"{x:.4g}"
    return s if any(c in s for c in ".en") else s + ".0"


def format_clause(terms: Sequence[Any]) -> str:
    """An AND clause's terms as expression text: ``"a" AND NOT "b":0.5``."""
    parts = []
    for t in terms:
        w = abs(t.weight)
        body = quote(t.concept) + ("" if w == 1.0 else ":" + _num(w))
        parts.append(("NOT " if t.weight < 0 else "") + body)
    return " AND ".join(parts) if parts else "(no concept)"


def _md_escape(text: str) -> str:
    """User text inside Markdown table cells and prose: escaped, no markup."""
    text = escape(text)
    return re.sub(r"([\\`*_{}\[\]<>()#+\-!|~$])", r"\\\1", text)


def _code_block(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def error_markdown(err: BaseException, title: str = "Error") -> str:
    """A message for the page: the first line in bold, the caret window (if any) as code."""
    lines = str(err).rstrip().split("\n")
    head = _md_escape(lines[0]) if lines and lines[0] else type(err).__name__
    out = f"**{title}:** {head}"
    if len(lines) > 1:
        out += "\n\n" + _code_block("\n".join(lines[1:]))
    return out


def error_column(err: BaseException) -> int | None:
    """The 1-based column a ParseError names (``... at column 9: ...``), if any."""
    m = re.search(r"at column (\d+)", str(err).split("\n")[0])
    return int(m.group(1)) if m else None


@dataclass
class Analysis:
    """What the page shows for an expression: ``ok``, the Markdown, the slider rows, the
    canvas markers ((x, y, negative) for each position concept) and the parsed tree."""

    ok: bool
    markdown: str
    leaves: list[Leaf] = field(default_factory=list)
    markers: list[tuple[float, float, bool]] = field(default_factory=list)
    expr: Expr | None = None
    column: int | None = None


def check_concepts(expr: Expr, task: str | None) -> None:
    """Each concept read by the world task (InputError naming the bad one); nothing for other models."""
    if task is None:
        return
    from compdiff.world.tasks import get_task

    try:
        t = get_task(task)
    except InputError:
        return
    seen = set()
    for leaf in leaves(expr):
        if leaf.concept in seen:
            continue
        seen.add(leaf.concept)
        try:
            t.parse(leaf.concept)
        except InputError as err:
            raise type(err)(f"concept {excerpt(quote(leaf.concept), 60)} is not a {task} concept: {err}") from None


def analyze(text: str, limits: Limits, *, task: str | None = None, guidance_scale: float = 1.0,
            mode: str = "sum") -> Analysis:
    """The live display of ``text``: the tree and one table of effective weights per clause
    (pi for OR), or the parse error with its column. Never raises."""
    from compdiff.compose import effective_weights

    try:
        scale = float(guidance_scale)
        if not math.isfinite(scale):
            scale = 1.0
    except (TypeError, ValueError):
        scale = 1.0
    mode = mode if mode in ("sum", "mean") else "sum"
    try:
        expr = parse_limited(text, limits)
    except InputError as err:
        col = error_column(err)
        return Analysis(False, error_markdown(err, "Parse error"), column=col)
    rows = leaves(expr)
    markers = _markers(rows) if task == "objects" else []
    try:
        check_concepts(expr, task)
        clauses = expr.clauses()
    except InputError as err:
        return Analysis(False, error_markdown(err, "Error"), rows, markers, expr)
    rule = "w·s" if mode == "sum" else "w·s/P"
    parts = [f"**Parsed** ({len(rows)} concept{'s' if len(rows) != 1 else ''}), canonical text and tree:",
             _code_block(escape(str(expr)) + "\n\n" + expr.pretty())]
    for i, clause in enumerate(clauses):
        if len(clauses) > 1:
            parts.append(f"clause {i + 1} of {len(clauses)}, pi = {clause.weight:.4g}:")
        eff = effective_weights(list(clause.terms), scale, mode)
        table = [f"| concept | weight | effective ({rule}, s = {_num(scale)}) |", "|---|---:|---:|"]
        table += [f"| {_md_escape(quote(t.concept))} | {_num(t.weight)} | {_num(e)} |"
                  for t, e in zip(clause.terms, eff)]
        parts.append("\n".join(table))
    if len(clauses) > 1:
        parts.append("OR is a mixture: each image follows one clause, drawn with probability pi.")
    return Analysis(True, "\n\n".join(parts), rows, markers, expr)


def _markers(rows: list[Leaf]) -> list[tuple[float, float, bool]]:
    from compdiff.world.tasks import get_task

    task = get_task("objects")
    out = []
    for leaf in rows:
        try:
            p = task.parse(leaf.concept)
        except InputError:
            continue
        out.append((p.x, p.y, leaf.negated))
    return out


# --------------------------------------------------------------------------
# the canvas (objects task)


def click_to_concept(index: Sequence[float], size: int = CANVAS_PX) -> str:
    """A click at pixel ``index`` = (x, y) of a ``size``-pixel canvas -> ``"x,y"`` in [0, 1]²
    (the pixel's centre, 2 decimals: the objects task's format)."""
    try:
        px, py = float(index[0]), float(index[1])
    except (TypeError, ValueError, IndexError):
        raise InputError(f"a canvas click must give two pixel coordinates, got {excerpt(repr(index), 60)}") from None
    if not (math.isfinite(px) and math.isfinite(py)):
        raise InputError("a canvas click must give finite pixel coordinates")
    x = min(max((px + 0.5) / size, 0.0), 1.0)
    y = min(max((py + 0.5) / size, 0.0), 1.0)
    return f"{x:.2f},{y:.2f}"


def add_concept(text: str, concept: str, negate: bool = False) -> str:
    """``text`` AND the concept (AND NOT with ``negate``). An expression whose top is OR is put
    in parentheses first, so the new concept joins every clause."""
    term = ("NOT " if negate else "") + quote(concept)
    text = (text or "").rstrip()
    if not text.strip():
        return term
    try:
        if isinstance(parse(text), Or):
            text = f"({text})"
    except InputError:
        pass
    return f"{text} AND {term}"


def canvas_image(markers: Sequence[tuple[float, float, bool]], size: int = CANVAS_PX):
    """The objects canvas: a ``size``-pixel square (a 32×32 world) with a light grid, each
    position concept a circle of the task's radius (green: AND, red with a cross: NOT)."""
    from PIL import Image, ImageDraw

    from compdiff.world.tasks import RADIUS

    img = Image.new("RGB", (size, size), (246, 246, 246))
    d = ImageDraw.Draw(img)
    for k in range(1, 8):
        c = round(k * size / 8)
        colour = (200, 200, 200) if k != 4 else (170, 170, 170)
        d.line([(c, 0), (c, size)], fill=colour)
        d.line([(0, c), (size, c)], fill=colour)
    r = RADIUS * size
    for x, y, negative in markers:
        cx, cy = x * size, y * size
        box = [cx - r, cy - r, cx + r, cy + r]
        if negative:
            d.ellipse(box, outline=(200, 30, 30), width=3)
            d.line([(cx - r * 0.6, cy - r * 0.6), (cx + r * 0.6, cy + r * 0.6)], fill=(200, 30, 30), width=3)
            d.line([(cx - r * 0.6, cy + r * 0.6), (cx + r * 0.6, cy - r * 0.6)], fill=(200, 30, 30), width=3)
        else:
            d.ellipse(box, fill=(60, 170, 80), outline=(20, 110, 40), width=2)
    return img


# --------------------------------------------------------------------------
# models


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

    def defaults(self, name: str, limits: Limits) -> dict[str, Any]:
        """The page's settings for model ``name``: its recommended sampler and steps (capped by
        the limits), its guidance scale, its task and an example expression."""
        m = self.get(name)
        steps = int(m.sampling.get("steps", 50))
        return {"sampler": m.sampling.get("sampler", "ddim"), "steps": max(1, min(steps, limits.max_steps)),
                "guidance_scale": float(m.default_scale), "task": m.task,
                "example": EXAMPLES.get(m.task or "", GENERIC_EXAMPLE)}


# --------------------------------------------------------------------------
# one generation


@dataclass(frozen=True)
class Settings:
    """One Generate click. ``sampler``/``steps``/``guidance_scale`` None: the model's own."""

    model: str
    expr: str
    n: int = 4
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    corrector: str = CORRECTOR_OFF
    negation: str = "plain"
    mode: str = "sum"


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {excerpt(repr(value), 40)}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {excerpt(repr(value), 40)}")
    return int(f)


@dataclass(frozen=True)
class Checked:
    """Settings after :func:`check_settings`: every value resolved and in range."""

    settings: Settings
    expr: Expr
    sampler: str
    steps: int
    guidance_scale: float
    corrector: Any  # Corrector | None


def check_settings(s: Settings, store: ModelStore, limits: Limits) -> Checked:
    """Every setting checked against the limits and resolved against the model's defaults;
    InputError with a message for the page otherwise. Opens (or reuses) the model."""
    from compdiff.compose import check_options, effective_weights
    from compdiff.correctors import KERNELS, Corrector
    from compdiff.sampling import SAMPLERS

    store.entry(s.model)
    n = _int(s.n, "n")
    if not 1 <= n <= limits.max_n:
        raise InputError(f"n must lie in 1..{limits.max_n} on this server, got {n}")
    seed = _int(s.seed, "seed")
    if not 0 <= seed or seed + n - 1 > MAX_SEED:
        raise InputError(f"seed must lie in 0..{MAX_SEED - n + 1} (image i uses seed + i), got {seed}")
    steps = None if s.steps is None else _int(s.steps, "steps")
    if steps is not None and not 1 <= steps <= limits.max_steps:
        raise InputError(f"steps must lie in 1..{limits.max_steps} on this server, got {steps}")
    if s.sampler is not None and (not isinstance(s.sampler, str) or s.sampler not in SAMPLERS):
        raise InputError(f"unknown sampler {excerpt(repr(s.sampler), 40)}; accepted: {', '.join(SAMPLERS)}")
    if s.corrector != CORRECTOR_OFF and (not isinstance(s.corrector, str) or s.corrector not in KERNELS):
        raise InputError(f"unknown corrector {excerpt(repr(s.corrector), 40)}; accepted: "
                         f"{', '.join((CORRECTOR_OFF, *KERNELS))}")
    if s.mode not in ("sum", "mean"):
        raise InputError(f"mode must be sum or mean, got {excerpt(repr(s.mode), 40)}")
    check_options(0.0, None, s.negation)
    if s.guidance_scale is not None:
        try:
            scale = float(s.guidance_scale)
        except (TypeError, ValueError):
            shown = excerpt(repr(s.guidance_scale), 40)
            raise InputError(f"the guidance scale must be a number, got {shown}") from None
        if not (math.isfinite(scale) and abs(scale) <= MAX_SCALE):
            raise InputError(f"the guidance scale must lie in [-{MAX_SCALE:g}, {MAX_SCALE:g}], got {scale}")
    expr = parse_limited(s.expr, limits)
    clauses = expr.clauses()
    m = store.get(s.model)
    check_concepts(expr, m.task)
    scale = float(m.default_scale) if s.guidance_scale is None else float(s.guidance_scale)
    for clause in clauses:
        if not all(math.isfinite(e) for e in effective_weights(list(clause.terms), scale, s.mode)):
            raise InputError(f"the effective weights (weight x guidance scale {scale:g}) overflow; "
                             "use smaller weights")
    sampler = s.sampler or m.sampling.get("sampler", "ddim")
    if steps is None:
        steps = min(int(m.sampling.get("steps", 50)), limits.max_steps)
    try:
        m.schedule.timesteps(steps, "trailing")
    except ValueError as err:
        raise InputError(f"steps: {err}") from None
    corrector = None if s.corrector == CORRECTOR_OFF else Corrector(s.corrector)
    s = replace(s, n=n, seed=seed, steps=steps, sampler=sampler, guidance_scale=scale)
    return Checked(s, expr, sampler, steps, scale, corrector)


@dataclass
class Generation:
    """The images (uint8 (H, W, 3), upscaled like the CLI grid's tiles), their seeds, the clause
    each followed (None without OR), captions, and the reproducing command."""

    images: list[Any]
    seeds: list[int]
    clauses: list[int | None]
    captions: list[str]
    command: str
    raw: Any = None  # (n, h, w, 3) uint8 at the model's resolution


def to_uint8(images):
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8 numpy, as ``compdiff sample`` quantises."""
    import torch

    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8) \
        .permute(0, 2, 3, 1).numpy()


def upscale(u8, min_cell: int = MIN_CELL):
    """(H, W, 3) uint8 -> nearest-upscaled by k = max(1, min_cell // H), as the CLI grid's tiles."""
    import numpy as np

    k = max(1, min_cell // u8.shape[0])
    return np.ascontiguousarray(u8.repeat(k, axis=0).repeat(k, axis=1)) if k > 1 else u8


def generate(s: Settings, store: ModelStore, limits: Limits, *,
             progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Generation:
    """One generation: what ``compdiff sample`` does for the same settings (same seeds, same
    clause draws, same sampler call), so the images are the CLI's. ``progress(done, total)``
    after each step; ``should_stop()`` checked at each step (True: :class:`Cancelled`)."""
    import torch

    from compdiff.cli.sample import sampler_kwargs
    from compdiff.compose import compose
    from compdiff.sampling import generators, get_sampler, randn

    c = check_settings(s, store, limits)
    s = c.settings
    with store.lock(s.model):
        m = store.get(s.model)
        ts = m.schedule.timesteps(c.steps, "trailing")
        total = len(ts)
        done = [0]

        def callback(info) -> None:
            done[0] += 1
            if should_stop is not None and should_stop():
                raise Cancelled()
            if progress is not None:
                progress(done[0], total)

        if should_stop is not None and should_stop():
            raise Cancelled()
        if progress is not None:
            progress(0, total)
        with torch.no_grad():
            eps_fn = compose(m.denoiser, m.encoder, c.expr, guidance_scale=c.guidance_scale, mode=s.mode,
                             negation=s.negation)
            seeds = [s.seed + i for i in range(s.n)]
            gens = generators(seeds)
            assignment = eps_fn.draw_clauses(s.n, gens)  # OR: each image draws its clause, from its seed
            fn = eps_fn.with_clauses(assignment)
            x_T = randn((s.n, *m.latent_shape), gens, device=store.device)
            x0 = get_sampler(c.sampler)(fn, x_T, m.schedule, ts, generator=gens, callback=callback,
                                        clip_x0=m.clip_x0, corrector=c.corrector, **sampler_kwargs(c.sampler, 0.0))
            raw = to_uint8(m.decode(x0))
    clauses = eps_fn.clauses
    which: list[int | None] = [int(a) for a in assignment.tolist()] if len(clauses) > 1 else [None] * s.n
    captions = []
    for seed, k in zip(seeds, which):
        cap = f"seed {seed}"
        if k is not None:
            cap += f" · clause {k + 1}: {excerpt(format_clause(clauses[k].terms), 80)}"
        captions.append(cap)
    return Generation([upscale(im) for im in raw], seeds, which, captions, reproduce_command(c, store), raw)


def reproduce_command(c: Checked, store: ModelStore) -> str:
    """The ``compdiff sample`` line that writes the same images (as a grid) as the checked
    settings ``c`` (from :func:`check_settings`): every setting spelled out, none left to defaults."""
    s = c.settings
    args = ["compdiff", "sample", s.expr.strip(), *store.entry(s.model).cli, "--n", str(s.n), "--seed", str(s.seed),
            "--sampler", c.sampler, "--steps", str(c.steps), "--guidance-scale", repr(float(c.guidance_scale))]
    if s.mode != "sum":
        args += ["--mode", s.mode]
    if s.negation != "plain":
        args += ["--negation", s.negation]
    if c.corrector is not None:
        args += ["--correct", c.corrector.kind]
    if store.device_flag:
        args += ["--device", store.device_flag]
    args += ["--out", "composed.png"]
    return " ".join(shlex.quote(a) for a in args)
