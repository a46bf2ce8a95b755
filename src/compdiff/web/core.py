"""The web app's logic, without Gradio: what each control of the page computes.

Everything here is plain Python over the library (parse, the expression edits, compose, the
samplers, open_model), so it is tested without a browser and without Gradio (tests/test_web.py).
``compdiff.web.app`` only lays these functions out as a page. By concern:

* ``compdiff.web.validate``: the limits, :func:`parse_limited`, the Generate settings
  (:class:`Settings` -> :func:`check_settings` -> :class:`Checked`).
* ``compdiff.web.canvas``: the objects canvas (a click -> ``AND "x,y"``) and the regions canvas
  (a drag -> a box region; the expression's regions drawn as SVG).
* ``compdiff.web.store``: :class:`ModelStore`, the models named when the server started, each
  opened ONCE, one lock per model; no path from the page ever reaches ``open_model``.
* ``compdiff.expr.edit``: the tree edits behind the sliders and the drawn boxes.

This module is the glue, and re-exports those names (``core.X``):

* :func:`analyze`: the live parse display (tree, effective weights, or the error with its
  column marked), the slider rows and the canvas markers of an expression. Never raises.
* :func:`leaf_weights` / :func:`set_leaf_weight`: one slider per concept leaf, holding that
  leaf's own ``:w``; moving a slider edits the tree and writes back its canonical text.
* :func:`set_leaf_region`: the box drawn for the chosen concept leaf becomes its region (the
  expression text stays the only state: regions typed by hand show too).
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

from compdiff.errors import InputError, ParseError
from compdiff.expr import And, Concept, Expr, Not, Or, parse, quote
from compdiff.expr.display import escape, excerpt
from compdiff.expr.region import Region
# the page by concern (compdiff.web.canvas / .store / .validate); imported here, so that
# ``core.X`` keeps naming them for compdiff.web.app and the tests
from compdiff.expr import Leaf, concept_leaves, format_expr, set_region, set_weight  # noqa: F401
from compdiff.web.canvas import (CANVAS_PX, MIN_BOX, NOT_COLOUR, PALETTE, REGION_PX, RegionBox,  # noqa: F401
                                 add_concept, canvas_image, click_to_concept, concept_choices, drag_to_box,
                                 leaf_label, region_boxes, region_text, regions_svg)
from compdiff.web.canvas import markers as _markers  # noqa: F401
from compdiff.web.store import EXAMPLES, GENERIC_EXAMPLE, ModelEntry, ModelStore  # noqa: F401
from compdiff.web.validate import (CORRECTOR_OFF, MAX_SCALE, MAX_SEED, REGION_MODES, SELECT_CHOICES,  # noqa: F401
                                   SELECT_OFF, Checked, Limits, Settings, check_concepts, check_length,
                                   check_settings, parse_limited)

#: largest feather the page's slider offers (a fraction of the image; the library accepts up to 1)
MAX_FEATHER = 0.25
#: generated images are shown (and downloaded) nearest-upscaled to at least this many pixels,
#: like the tiles of ``compdiff sample``'s grid
MIN_CELL = 128


class Cancelled(Exception):
    """Raised inside a generation when its stop check says stop."""


# --------------------------------------------------------------------------
# expressions: the live display, sliders, regions set from the canvas (as tree edits, compdiff.expr)


def leaf_weights(text: str, limits: Limits) -> list[Leaf]:
    """The slider rows of ``text``: one per concept leaf ([] when it does not parse)."""
    try:
        return concept_leaves(parse_limited(text, limits))
    except InputError:
        return []


def canonical(expr: Expr) -> str:
    """``str(expr)`` (the canonical text the sliders and boxes write back), with each region box
    in 3 decimals where that is exact, as boxes are drawn: it parses back to the same tree."""
    return format_expr(expr, box_decimals=3)


def set_leaf_weight(text: str, index: int, weight: float, limits: Limits) -> str:
    """``text`` with concept leaf ``index``'s own weight set to ``weight`` (rounded to 3
    decimals), written back as the expression's canonical text. Text that does not parse, or an
    index out of range, comes back unchanged."""
    try:
        expr = parse_limited(text, limits)
        w = round(float(weight), 3) + 0.0
        if not 0 <= int(index) < len(concept_leaves(expr)) or not math.isfinite(w):
            return text
        return canonical(set_weight(expr, int(index), w))
    except (InputError, TypeError, ValueError):
        return text


def set_leaf_region(text: str, index: int, region: Region | None, limits: Limits) -> str:
    """``text`` with concept leaf ``index``'s region set to ``region`` (None: removed), replacing
    the region it had, written back as canonical text (:func:`canonical`). InputError, with a
    message for the page, when ``text`` does not parse or has no leaf ``index``."""
    expr = parse_limited(text, limits)
    n = len(concept_leaves(expr))
    if isinstance(index, bool) or not isinstance(index, (int, float)) or not 0 <= index < n or index != int(index):
        if n == 0:
            raise InputError("type a concept first")
        raise InputError(f"choose one of the {n} concept{'s' if n != 1 else ''} for the region, "
                         f"got {excerpt(repr(index), 40)}")
    return canonical(set_region(expr, int(index), region))


def _num(x: float) -> str:
    s = f"{x:.4g}"
    return s if any(c in s for c in ".en") else s + ".0"


def format_clause(terms: Sequence[Any]) -> str:
    """An AND clause's terms as expression text: ``"a" @ left AND NOT "b":0.5``."""
    parts = []
    for t in terms:
        w = abs(t.weight)
        region = getattr(t, "region", None)
        body = quote(t.concept) + ("" if w == 1.0 else ":" + _num(w)) + (f" @ {region_text(region)}" if region else "")
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
    canvas markers ((x, y, negative) for each position concept), the parsed tree and the
    regions to draw (:func:`region_boxes`)."""

    ok: bool
    markdown: str
    leaves: list[Leaf] = field(default_factory=list)
    markers: list[tuple[float, float, bool]] = field(default_factory=list)
    expr: Expr | None = None
    column: int | None = None
    regions: list["RegionBox"] = field(default_factory=list)


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
    rows = concept_leaves(expr)
    markers = _markers(rows) if task == "objects" else []
    boxes = region_boxes(rows)
    try:
        check_concepts(expr, task)
        clauses = expr.clauses()
    except InputError as err:
        return Analysis(False, error_markdown(err, "Error"), rows, markers, expr, regions=boxes)
    rule = "w·s" if mode == "sum" else "w·s/P"
    parts = [f"**Parsed** ({len(rows)} concept{'s' if len(rows) != 1 else ''}), canonical text and tree:",
             _code_block(escape(canonical(expr)) + "\n\n" + expr.pretty())]
    for i, clause in enumerate(clauses):
        if len(clauses) > 1:
            parts.append(f"clause {i + 1} of {len(clauses)}, pi = {clause.weight:.4g}:")
        eff = effective_weights(list(clause.terms), scale, mode)
        if any(t.region is not None for t in clause.terms):  # a region column only where there are regions
            table = [f"| concept | region | weight | effective ({rule}, s = {_num(scale)}) |", "|---|---|---:|---:|"]
            table += [f"| {_md_escape(quote(t.concept))} | {_md_escape(region_text(t.region) or 'whole image')} | "
                      f"{_num(t.weight)} | {_num(e)} |" for t, e in zip(clause.terms, eff)]
        else:
            table = [f"| concept | weight | effective ({rule}, s = {_num(scale)}) |", "|---|---:|---:|"]
            table += [f"| {_md_escape(quote(t.concept))} | {_num(t.weight)} | {_num(e)} |"
                      for t, e in zip(clause.terms, eff)]
        parts.append("\n".join(table))
    if len(clauses) > 1:
        parts.append("OR is a mixture: each image follows one clause, drawn with probability pi.")
    if boxes:
        parts.append("A concept with a region guides only inside it (box: x0, y0, x1, y1, fractions of the "
                     "image, origin top left).")
    return Analysis(True, "\n\n".join(parts), rows, markers, expr, regions=boxes)


# --------------------------------------------------------------------------
# one generation


@dataclass
class Generation:
    """The images (uint8 (H, W, 3), upscaled like the CLI grid's tiles), their seeds, the clause
    each followed (None without OR), captions, and the reproducing command. With selection:
    ``records`` (per image, ``compdiff.Generated.record``: kept seed, candidate, lift table, margin,
    satisfied; what the CLI writes as JSON) and ``table`` (them as Markdown); [] and "" without."""

    images: list[Any]
    seeds: list[int]
    clauses: list[int | None]
    captions: list[str]
    command: str
    raw: Any = None  # (n, h, w, 3) uint8 at the model's resolution
    records: list[dict] = field(default_factory=list)
    table: str = ""


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
    from compdiff.generate import prepare

    c = check_settings(s, store, limits)
    s = c.settings
    with store.lock(s.model):
        m = store.get(s.model)
        done = [0]

        def callback(info) -> None:
            done[0] += 1
            if should_stop is not None and should_stop():
                raise Cancelled()
            if progress is not None:
                progress(done[0], info.num_steps)

        if should_stop is not None and should_stop():
            raise Cancelled()
        run = prepare(m, c.expr, sampler=c.sampler, steps=c.steps, guidance_scale=c.guidance_scale,
                      corrector=c.corrector, negation=s.negation, mode=s.mode, feather=c.feather,
                      region_mode=s.region_mode, callback=callback, select=c.select,
                      candidates=c.candidates if c.select else None)
        if progress is not None:
            progress(0, run.plan.steps)
        seeds = [s.seed + i for i in range(s.n)]
        out = next(run.batches(seeds))  # one batch of n, as the command's --batch-size n
        raw = out.uint8().permute(0, 2, 3, 1).numpy()
    clauses = out.clauses
    which: list[int | None] = list(out.assignment) if len(clauses) > 1 else [None] * s.n
    records = [out.record(i) for i in range(s.n)] if c.select else []
    captions = []
    for i, (seed, k) in enumerate(zip(seeds, which)):
        cap = f"seed {seed}"
        if records:
            cap = selection_caption(records[i])
        if k is not None:
            cap += f" · clause {k + 1}: {excerpt(format_clause(clauses[k].terms), 80)}"
        captions.append(cap)
    return Generation([upscale(im) for im in raw], seeds, which, captions, reproduce_command(c, store), raw,
                      records, selection_table(records))


def _lift_text(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3g}"


def selection_caption(record: dict) -> str:
    """A kept image's caption: its seed and candidate, each term's lift (NOT for a term that must be
    absent) and whether the keep rule holds: ``seed 123 (candidate 2/4) · "a" +3.1 · NOT "b" −0.4 · ✓``."""
    terms = " · ".join(("NOT " if t["want"] == "absent" else "") + excerpt(quote(t["concept"]), 40) + " "
                       + _lift_text(t["lift"]) for t in record["lift"])
    mark = "✓ holds" if record["satisfied"] else "✗ fails"
    return (f"seed {record['seed']} (image seed {record['image_seed']}, candidate {record['candidate'] + 1}/"
            f"{record['candidates']}) · {terms} · {mark}")


def selection_table(records: list[dict]) -> str:
    """The kept images' lift tables as one Markdown table: image, kept seed, candidate, each term's lift,
    margin, whether the keep rule holds ("" without selection)."""
    if not records:
        return ""
    names = [("NOT " if t["want"] == "absent" else "") + quote(t["concept"]) for t in records[0]["lift"]]
    same = all([t["concept"] for t in r["lift"]] == [t["concept"] for t in records[0]["lift"]] for r in records)
    head = names if same else ["lifts"]
    lines = [f"**Selection** ({records[0]['select']}, {records[0]['candidates']} candidates per image; lift in "
             "nats, > 0: the model sees the concept):", "",
             "| image | seed | candidate | " + " | ".join(_md_escape(excerpt(h, 40)) for h in head)
             + " | margin | rule |", "|---:|---:|---:|" + "---:|" * len(head) + "---:|---|"]
    for i, r in enumerate(records):
        cells = [_lift_text(t["lift"]) for t in r["lift"]] if same else \
            ["; ".join(f"{_md_escape(excerpt(quote(t['concept']), 30))} {_lift_text(t['lift'])}" for t in r["lift"])]
        lines.append(f"| {i + 1} | {r['seed']} | {r['candidate'] + 1}/{r['candidates']} | " + " | ".join(cells)
                     + f" | {_lift_text(r['margin'])} | {'holds' if r['satisfied'] else 'fails'} |")
    return "\n".join(lines)


def reproduce_command(c: Checked, store: ModelStore) -> str:
    """The ``compdiff sample`` line that writes the same images (as a grid) as the checked
    settings ``c`` (from :func:`check_settings`): every setting spelled out, none left to defaults
    (feather and region mode only where the expression has a region: elsewhere they change nothing),
    ``--batch-size n`` (the page samples its images in one batch: the CLI's default 16 would batch
    n > 16 otherwise) and, with selection, ``--select``/``--candidates`` (whose grid JSON holds the
    gallery's lift tables)."""
    s = c.settings
    args = ["compdiff", "sample", s.expr.strip(), *store.entry(s.model).cli, "--n", str(s.n), "--seed", str(s.seed),
            "--sampler", c.sampler, "--steps", str(c.steps), "--guidance-scale", repr(float(c.guidance_scale)),
            "--batch-size", str(s.n)]  # the page samples its n images in one batch
    if c.select is not None:
        args += ["--select", c.select, "--candidates", str(c.candidates)]
    if s.mode != "sum":
        args += ["--mode", s.mode]
    if s.negation != "plain":
        args += ["--negation", s.negation]
    if c.corrector is not None:
        args += ["--correct", c.corrector.kind]
    if c.has_regions and c.feather != 0.0:
        args += ["--feather", repr(c.feather)]
    if c.has_regions and s.region_mode != "sum":
        args += ["--region-mode", s.region_mode]
    if store.device_flag:
        args += ["--device", store.device_flag]
    args += ["--out", "composed.png"]
    return " ".join(shlex.quote(a) for a in args)
