"""The ``compdiff serve`` page: Gradio components wired to the functions of ``compdiff.web.core``
(and its modules by concern: ``canvas``, ``store``, ``validate``).

Importing this module imports Gradio (the optional extra ``compdiff[web]``); ``import compdiff``
never does. Analytics are off and nothing is fetched from the network: no share link, the
theme's fonts are the ones Gradio ships (no CDN), and the page works offline.
"""
from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no version check, no telemetry
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import gradio as gr  # noqa: E402

from compdiff.correctors import KERNELS  # noqa: E402
from compdiff.errors import InputError  # noqa: E402
from compdiff.sampling import SAMPLERS  # noqa: E402
from compdiff.web import core  # noqa: E402
from compdiff.web.canvas import CANVAS_PX, REGION_PX  # noqa: E402
from compdiff.web.core import MAX_FEATHER, Cancelled  # noqa: E402
from compdiff.web.store import ModelStore  # noqa: E402
from compdiff.web.validate import (CORRECTOR_OFF, REGION_MODES, SELECT_CHOICES, SELECT_OFF, Limits,  # noqa: E402
                                   Settings, check_number)

TITLE = "compdiff: compose concepts"
#: slider range of a concept's own weight (wider weights typed in the text widen it)
SLIDER_MIN, SLIDER_MAX = 0.0, 4.0

CSS = f"""
#canvas img {{ cursor: crosshair; image-rendering: pixelated; }}
#gallery img {{ image-rendering: pixelated; }}
#analysis table {{ font-size: 0.9em; }}
#regions svg.regions {{ display: block; width: {REGION_PX}px; height: {REGION_PX}px; cursor: crosshair;
  touch-action: none; user-select: none; -webkit-user-select: none; border: 1px solid #bbb; }}
#regions .region-masks {{ font-size: 0.85em; }}
"""

#: the regions canvas's script (gr.HTML's js_on_load: ``element`` is the component's root, which
#: outlives re-renders of its SVG, so the listeners sit on it). A drag with the primary button
#: moves the dashed ``rubber`` rectangle; on release, the two corners (fractions of the square,
#: x right, y down, clamped into [0, 1]) go to the server as a ``select`` event whose index is
#: [x0, y0, x1, y1]; ``core.drag_to_box`` sorts, rounds and checks them. A click without a drag
#: sends nothing. Once the listeners are on, the root carries ``data-drag-ready``.
DRAG_JS = """
const svg = () => element.querySelector('svg.regions');
const clamp = (v) => Math.min(1, Math.max(0, v));
const at = (ev) => {
  const r = svg().getBoundingClientRect();
  return [clamp((ev.clientX - r.left) / r.width), clamp((ev.clientY - r.top) / r.height)];
};
const band = (a, b) => {
  const s = svg();
  const rb = s && s.querySelector('rect.rubber');
  if (!rb) return;
  if (!a) { rb.setAttribute('visibility', 'hidden'); return; }
  const w = s.viewBox.baseVal.width, h = s.viewBox.baseVal.height;
  rb.setAttribute('x', Math.min(a[0], b[0]) * w);
  rb.setAttribute('y', Math.min(a[1], b[1]) * h);
  rb.setAttribute('width', Math.abs(b[0] - a[0]) * w);
  rb.setAttribute('height', Math.abs(b[1] - a[1]) * h);
  rb.setAttribute('visibility', 'visible');
};
let start = null;
element.addEventListener('pointerdown', (ev) => {
  const s = svg();
  if (!s || !s.contains(ev.target) || ev.button !== 0) return;
  ev.preventDefault();
  start = at(ev);
  try { element.setPointerCapture(ev.pointerId); } catch (e) {}
  band(start, start);
});
element.addEventListener('pointermove', (ev) => { if (start) band(start, at(ev)); });
const finish = (ev, send) => {
  if (!start) return;
  const a = start, b = at(ev);
  start = null;
  band(null);
  if (send && (Math.abs(b[0] - a[0]) > 0.002 || Math.abs(b[1] - a[1]) > 0.002)) {
    const box = [a[0], a[1], b[0], b[1]];
    trigger('select', {index: box, value: box});
  }
};
element.addEventListener('pointerup', (ev) => finish(ev, true));
element.addEventListener('pointercancel', (ev) => finish(ev, false));
element.dataset.dragReady = '1';  // the listeners are on: a drag from now on draws a box
"""

INTRO = """\
# compdiff: compose concepts
Type an expression: concepts in double quotes (or bare words) joined by **AND**, **NOT**, **OR**,
with weights (`"a":1.5`) and parentheses. For the objects model a concept is a position `"x,y"` in
[0, 1]² (y downward): click the canvas to add one. A concept can be confined to a region of the
image: `"a red cube" @ left`, or drag a box on the regions square."""


def _slider_label(i: int, leaf: core.Leaf) -> str:
    return core.leaf_label(i, leaf)


def _chosen(value, rows) -> int | None:
    """The region chooser's value after an edit: kept while its concept exists, else the first."""
    if not rows:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(rows) else 0


def _converted(component, payload, what: str):
    """One input of an event that runs with ``preprocess=False``: a number field's payload checked
    first (``n="abc"``, None or NaN from the API is a message naming the field: Gradio's own
    conversion fails there without one, ``{"error": null}``), then Gradio's conversion
    (``component.preprocess``: its bounds, rounding and choices), as the event would have run it."""
    if isinstance(component, gr.Slider) or (isinstance(component, gr.Number) and payload is not None):
        try:
            check_number(payload, what)
        except InputError as err:
            raise gr.Error(str(err), title="Invalid input") from None
    return component.preprocess(payload)  # its failures are gr.Error, with a message


class _Stops:
    """One stop flag per browser session, set by the Stop button, read at every sampler step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flags: dict[str, threading.Event] = {}

    def start(self, session: str) -> threading.Event:
        with self._lock:
            self._flags[session] = flag = threading.Event()
            return flag

    def stop(self, session: str) -> bool:
        """Ask the session's running generation to stop; False when none runs."""
        with self._lock:
            flag = self._flags.get(session)
        if flag is not None:
            flag.set()
        return flag is not None

    def done(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            if self._flags.get(session) is flag:
                del self._flags[session]


def build_app(store: ModelStore, limits: Limits = Limits()) -> gr.Blocks:
    """The page over the models of ``store`` under ``limits`` (not launched; see :func:`launch`)."""
    stops = _Stops()
    names = store.names()
    first = names[0]
    d0 = store.defaults(first, limits)
    a0 = core.analyze(d0["example"], limits, task=d0["task"], guidance_scale=d0["guidance_scale"])

    def task_of(model: str) -> str | None:
        try:
            return store.task(model)
        except InputError:
            return None

    # delete_cache: the gallery's PNGs are temporary files; drop those older than an hour, hourly
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=3):
                expr = gr.Textbox(value=d0["example"], label="Expression", lines=2, max_lines=8,
                                  max_length=limits.max_length, elem_id="expr",
                                  placeholder='"0.30,0.30" AND NOT "0.70,0.30"')
                analysis = gr.Markdown(a0.markdown, elem_id="analysis")
                with gr.Accordion("Concept weights (each concept's own :w)", open=True):
                    sliders = []
                    for i in range(limits.max_concepts):
                        leaf = a0.leaves[i] if i < len(a0.leaves) else None
                        sliders.append(gr.Slider(
                            minimum=min(SLIDER_MIN, leaf.weight) if leaf else SLIDER_MIN,
                            maximum=max(SLIDER_MAX, leaf.weight) if leaf else SLIDER_MAX,
                            value=leaf.weight if leaf else 1.0, step=0.05,
                            label=_slider_label(i, leaf) if leaf else f"{i + 1}.",
                            visible=leaf is not None, elem_id=f"weight-{i}"))
            with gr.Column(scale=2):
                model = gr.Dropdown(names, value=first, label="Model", elem_id="model")
                with gr.Column(visible=d0["task"] == "objects") as canvas_box:
                    gr.Markdown("**Canvas** (the world; x right, y down): click to add a position. "
                                "Green: AND, red: NOT.")
                    canvas = gr.Image(core.canvas_image(a0.markers), label="Canvas", show_label=False,
                                      interactive=False, type="pil", format="png", height=CANVAS_PX,
                                      width=CANVAS_PX, buttons=[], elem_id="canvas")
                    negate = gr.Checkbox(False, label="clicks add NOT (a position to avoid)", elem_id="negate")
                with gr.Column(elem_id="regions-box"):
                    gr.Markdown("**Regions** (the square is the image; x right, y down): drag a box to confine "
                                "the chosen concept to it; it becomes `@ (x0, y0, x1, y1)` in the expression. "
                                "Regions typed by hand (`@ left`, `@ (0.1, 0.2, 0.5, 0.9)`) show here too.")
                    with gr.Row(equal_height=False):
                        region_concept = gr.Dropdown(core.concept_choices(a0.leaves),
                                                     value=_chosen(0, a0.leaves), label="Box for concept",
                                                     elem_id="region-concept", scale=3)
                        region_clear = gr.Button("Clear its region", size="sm", elem_id="region-clear", scale=1,
                                                 min_width=100)
                    regions = gr.HTML(core.regions_svg(a0.regions, _chosen(0, a0.leaves)), html_template="${value}",
                                      js_on_load=DRAG_JS, apply_default_css=False, elem_id="regions")
                    region_note = gr.Markdown("", elem_id="region-note")
                    with gr.Row():
                        feather = gr.Slider(0, MAX_FEATHER, value=0.0, step=0.01, elem_id="feather", label="Feather",
                                            info="soft region edge, a fraction of the image")
                        region_mode = gr.Radio(list(REGION_MODES), value="sum", label="Where regions overlap",
                                               elem_id="region-mode")
        with gr.Row():
            sampler = gr.Dropdown(sorted(SAMPLERS), value=d0["sampler"], label="Sampler", elem_id="sampler")
            steps = gr.Slider(1, limits.max_steps, value=d0["steps"], step=1, label="Steps", elem_id="steps")
            scale = gr.Slider(0, 20, value=d0["guidance_scale"], step=0.1, label="Guidance scale",
                              elem_id="scale")
            n = gr.Slider(1, limits.max_n, value=min(4, limits.max_n), step=1, label="Images (n)", elem_id="n")
            seed = gr.Number(0, label="Seed (image i uses seed + i)", precision=0, minimum=0, elem_id="seed")
        with gr.Row():
            corrector = gr.Radio([CORRECTOR_OFF, *KERNELS], value=CORRECTOR_OFF, label="Corrector",
                                 elem_id="corrector")
            negation = gr.Radio(["plain", "perp"], value="plain", label="Negation", elem_id="negation")
            mode = gr.Radio(["sum", "mean"], value="sum", label="Weight rule", elem_id="mode")
        with gr.Row():
            select = gr.Radio(list(SELECT_CHOICES), value=SELECT_OFF, elem_id="select",
                              label="Selection (keep the best of several candidates by the model's own lift)",
                              info="lift: re-noise each candidate (10 extra evaluations per term); cached-lift: "
                                   "score the sampling trajectory (no extra evaluation)")
            candidates = gr.Slider(1, limits.max_candidates, value=min(4, limits.max_candidates), step=1,
                                   label="Candidates per image", elem_id="candidates",
                                   info="candidate 0 is the plain image of its seed")
        with gr.Row():
            generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
        status = gr.Markdown("", elem_id="status")
        gallery = gr.Gallery(label="Images", columns=8, format="png", buttons=["download", "fullscreen"],
                             object_fit="contain", elem_id="gallery")
        selection = gr.Markdown("", elem_id="selection")
        command = gr.Textbox(label="Command that reproduces the gallery", interactive=False,
                             buttons=["copy"], elem_id="command")

        # ---- live parsing: analysis, sliders, canvases --------------------------------
        def refresh(text, model_name, s, m, chosen):
            task = task_of(model_name)
            a = core.analyze(text if isinstance(text, str) else "", limits, task=task, guidance_scale=s, mode=m)
            if a.expr is None:  # mid-typing: keep the sliders and the canvases as they are
                return [a.markdown, gr.update(), gr.update(), gr.update(), ""] + [gr.update() for _ in sliders]
            ups = []
            for i in range(len(sliders)):
                if i < len(a.leaves):
                    leaf = a.leaves[i]
                    ups.append(gr.update(visible=True, value=leaf.weight, label=_slider_label(i, leaf),
                                         minimum=min(SLIDER_MIN, leaf.weight), maximum=max(SLIDER_MAX, leaf.weight)))
                else:
                    ups.append(gr.update(visible=False))
            pic = core.canvas_image(a.markers) if task == "objects" else gr.update()
            chosen = _chosen(chosen, a.leaves)
            choices = gr.update(choices=core.concept_choices(a.leaves), value=chosen)
            return [a.markdown, pic, core.regions_svg(a.regions, chosen), choices, ""] + ups

        live = [analysis, canvas, regions, region_concept, region_note, *sliders]
        live_inputs = [expr, model, scale, mode, region_concept]
        for trigger in (expr.change, scale.change, mode.change):
            trigger(refresh, live_inputs, live, queue=False, show_progress="hidden")

        def slider_moved(i):
            def fn(text, value):
                return core.set_leaf_weight(text, i, value, limits)
            return fn

        for i, sl in enumerate(sliders):
            sl.input(slider_moved(i), [expr, sl], [expr], queue=False, show_progress="hidden",
                     trigger_mode="always_last")

        def canvas_click(text, neg, evt: gr.SelectData):
            try:
                concept = core.click_to_concept(evt.index, CANVAS_PX)
            except InputError:
                return gr.update()
            return core.add_concept(text if isinstance(text, str) else "", concept, bool(neg))

        canvas.select(canvas_click, [expr, negate], [expr], queue=False, show_progress="hidden")

        # ---- regions: a box dragged on the square -> "@ (x0, y0, x1, y1)" on the chosen concept ----
        def set_region(text, chosen, region):
            try:
                return core.set_leaf_region(text if isinstance(text, str) else "", chosen, region, limits), ""
            except InputError as err:
                return gr.update(), core.error_markdown(err, "Region not set")

        def region_drawn(text, chosen, evt: gr.SelectData):
            try:
                region = core.drag_to_box(evt.index)
            except InputError as err:
                return gr.update(), core.error_markdown(err, "Region not set")
            return set_region(text, chosen, region)

        regions.select(region_drawn, [expr, region_concept], [expr, region_note], queue=False,
                       show_progress="hidden")
        region_clear.click(lambda text, chosen: set_region(text, chosen, None), [expr, region_concept],
                           [expr, region_note], queue=False, show_progress="hidden")

        def concept_chosen(text, chosen):
            rows = core.leaf_weights(text if isinstance(text, str) else "", limits)
            return core.regions_svg(core.region_boxes(rows), _chosen(chosen, rows)) if rows else gr.update()

        region_concept.input(concept_chosen, [expr, region_concept], [regions], queue=False, show_progress="hidden")

        def model_changed(model_name):
            try:
                d = store.defaults(model_name, limits)
            except InputError as err:
                return [gr.update()] * 5 + [core.error_markdown(err)]
            return [d["example"], d["sampler"], d["steps"], d["guidance_scale"],
                    gr.update(visible=d["task"] == "objects"), ""]

        model.change(model_changed, [model], [expr, sampler, steps, scale, canvas_box, status], queue=False,
                     show_progress="hidden").then(refresh, live_inputs, live, queue=False, show_progress="hidden")

        # ---- generation ---------------------------------------------------------------
        #: its inputs and the names their messages use; the event converts them itself (_converted)
        gen_inputs = [(model, "model"), (expr, "expression"), (n, "n"), (seed, "seed"), (sampler, "sampler"),
                      (steps, "steps"), (scale, "the guidance scale"), (corrector, "corrector"),
                      (negation, "negation"), (mode, "mode"), (feather, "feather"), (region_mode, "region mode"),
                      (select, "select"), (candidates, "candidates")]

        def on_generate(model_name, text, n_, seed_, sampler_, steps_, scale_, corrector_, negation_, mode_,
                        feather_, region_mode_, select_, candidates_, request: gr.Request, progress=gr.Progress()):
            payloads = (model_name, text, n_, seed_, sampler_, steps_, scale_, corrector_, negation_, mode_,
                        feather_, region_mode_, select_, candidates_)
            (model_name, text, n_, seed_, sampler_, steps_, scale_, corrector_, negation_, mode_, feather_,
             region_mode_, select_, candidates_) = [_converted(c, v, what)
                                                    for (c, what), v in zip(gen_inputs, payloads, strict=True)]
            session = getattr(request, "session_hash", None) or "anonymous"
            flag = stops.start(session)
            t0 = time.perf_counter()
            try:
                s = Settings(model=model_name, expr=text if isinstance(text, str) else "", n=n_, seed=seed_,
                             sampler=sampler_, steps=steps_, guidance_scale=scale_, corrector=corrector_,
                             negation=negation_, mode=mode_, feather=feather_, region_mode=region_mode_,
                             select=select_, candidates=candidates_)
                g = core.generate(s, store, limits, should_stop=flag.is_set,
                                  progress=lambda done, total: progress((done, total), desc="sampling", unit="steps"))
            except Cancelled:
                return gr.update(), gr.update(), "**Stopped.**", gr.update()
            except InputError as err:
                return gr.update(), gr.update(), core.error_markdown(err), gr.update()
            except Exception as err:  # noqa: BLE001 - the server keeps serving; the page says what failed
                traceback.print_exc(file=sys.stderr)
                return gr.update(), gr.update(), core.error_markdown(err, "Generation failed"), gr.update()
            finally:
                stops.done(session, flag)
            took = time.perf_counter() - t0
            items = list(zip(g.images, g.captions))
            return (items, g.command, f"{len(items)} image{'s' if len(items) != 1 else ''} in {took:.1f} s",
                    g.table)

        gen_event = generate_btn.click(
            on_generate, [c for c, _ in gen_inputs], [gallery, command, status, selection], concurrency_limit=1,
            concurrency_id="generate", api_name="generate", show_progress_on=[gallery], preprocess=False)

        def on_stop(request: gr.Request):
            running = stops.stop(getattr(request, "session_hash", None) or "anonymous")
            message = "**Stopped.**" if running else "Nothing was running (a waiting job, if any, was cancelled)."
            return message, gr.update(), gr.update(), gr.update()  # also clears the cancelled job's marks

        stop_btn.click(on_stop, None, [status, gallery, command, selection], cancels=[gen_event], queue=False,
                       api_visibility="private")
    return demo


def launch(demo: gr.Blocks, limits: Limits = Limits(), host: str = "127.0.0.1", port: int = 7860) -> str:
    """Start serving ``demo`` on ``host:port`` in the background, with a bounded queue
    (``limits.queue_size`` waiting jobs, one generation at a time); returns the page's URL.
    ``demo.block_thread()`` then waits, ``demo.close()`` stops."""
    demo.queue(max_size=limits.queue_size, api_open=False, default_concurrency_limit=1)
    demo.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=True, quiet=True,
                show_error=False, inbrowser=False, ssr_mode=False, pwa=False, mcp_server=False,
                enable_monitoring=False, max_file_size="1mb", css=CSS, footer_links=[],
                run_history=False)
    url = demo.local_url or f"http://{host}:{port}/"
    return url
