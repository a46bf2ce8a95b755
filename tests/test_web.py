"""compdiff serve's logic (compdiff.web.core) without a browser: the live display, the sliders,
the canvas, regions (boxes drawn, typed, listed), the limits, the models, and images equal to
the CLI's for the same settings."""
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from compdiff.cli import main
from compdiff.errors import InputError
from compdiff.expr import Concept, Not, conjoin, parse
from compdiff.web import core
from compdiff.web.core import Cancelled, Limits, ModelStore, Settings

LIMITS = Limits()
DEMO = '"0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"'


@pytest.fixture(scope="module")
def tiny_store(tiny_model):
    return ModelStore([tiny_model], shipped=False, device="cpu", device_flag="cpu")


@pytest.fixture(scope="module")
def shipped_store():
    return ModelStore(device="cpu", device_flag="cpu")


# ---- expression -> sliders -> expression ---------------------------------------------------


def test_sliders_follow_the_expression_leaf_by_leaf():
    rows = core.leaf_weights('"a":2 AND NOT "b" AND ("c" AND NOT "d":0.5):-1 AND "a"', LIMITS)
    assert [(r.concept, r.weight, r.negated) for r in rows] == [
        ("a", 2.0, False), ("b", 1.0, True), ("c", 1.0, True), ("d", 0.5, False), ("a", 1.0, False)]
    assert core.leaf_weights('"a" AND', LIMITS) == []  # mid-typing: no rows (the page keeps its sliders)


@pytest.mark.parametrize("text", [DEMO, 'red AND cube :2 AND NOT metal', '("a" OR "b":3) AND NOT "c":0.5',
                                  '(NOT "a"):2 AND "b"', 'NOT NOT "x"'])
def test_slider_round_trip(text):
    expr = parse(text)
    rows = core.leaf_weights(text, LIMITS)
    # each slider at its own value: the expression is the same tree
    for i, row in enumerate(rows):
        assert parse(core.set_leaf_weight(text, i, row.weight, LIMITS)) == expr
    # move slider 0 to 1.75: only that leaf's :w changes, and the new text's sliders show it
    moved = core.set_leaf_weight(text, 0, 1.75, LIMITS)
    new_rows = core.leaf_weights(moved, LIMITS)
    assert new_rows[0].weight == 1.75
    assert [(r.concept, r.weight) for r in new_rows[1:]] == [(r.concept, r.weight) for r in rows[1:]]
    assert core.set_leaf_weight(moved, 0, rows[0].weight, LIMITS) == str(expr)


def test_slider_rewrites_the_weight_text():
    assert core.set_leaf_weight(DEMO, 1, 2.5, LIMITS) == '"0.30,0.30" AND "0.70,0.70":2.5 AND NOT "0.70,0.30"'
    assert core.set_leaf_weight(DEMO, 2, 0.1 + 0.2, LIMITS).endswith('NOT "0.70,0.30":0.3')  # rounded
    assert core.set_leaf_weight(DEMO, 0, 1.0, LIMITS) == DEMO
    for bad in [(7, 1.0), (-1, 1.0), (0, float("nan")), (0, "x")]:
        assert core.set_leaf_weight(DEMO, *bad, LIMITS) == DEMO  # out of range or not a number: unchanged
    assert core.set_leaf_weight('"a" AND', 0, 2.0, LIMITS) == '"a" AND'  # does not parse: unchanged


# ---- the canvas -------------------------------------------------------------------------------


def test_click_to_concept():
    assert core.click_to_concept((0, 0), 256) == "0.00,0.00"
    assert core.click_to_concept((127, 127), 256) == "0.50,0.50"
    assert core.click_to_concept([76, 179], 256) == "0.30,0.70"  # x right, y down
    assert core.click_to_concept((255, 255), 256) == "1.00,1.00"
    assert core.click_to_concept((9999, -5), 256) == "1.00,0.00"  # clamped into the world
    for bad in [None, (1,), ("a", 2), (float("nan"), 1)]:
        with pytest.raises(InputError):
            core.click_to_concept(bad, 256)


def test_click_adds_and_or_and_not():
    assert core.add_concept("", "0.30,0.70") == '"0.30,0.70"'
    assert core.add_concept('"0.30,0.30"', "0.70,0.70") == '"0.30,0.30" AND "0.70,0.70"'
    assert core.add_concept('"0.30,0.30"  ', "0.70,0.30", negate=True) == '"0.30,0.30" AND NOT "0.70,0.30"'
    # an OR at the top is bracketed, so the new position joins every clause
    text = core.add_concept('"0.2,0.2" OR "0.8,0.8"', "0.50,0.50")
    assert text == '("0.2,0.2" OR "0.8,0.8") AND "0.50,0.50"'
    assert all(any(t.concept == "0.50,0.50" for t in c.terms) for c in parse(text).clauses())


@pytest.mark.parametrize("text", [DEMO, '"a" OR "b":3', '("a" AND "b"):2', 'NOT "a"', 'red AND cube :2 @ left',
                                  '("a" OR "b") AND "c"'])
def test_a_click_keeps_the_typed_text_and_is_the_tree_edit_conjoin(text):
    for negate in (False, True):
        added = core.add_concept(text, "0.50,0.50", negate)
        assert added.startswith(text) or added.startswith(f"({text})")  # what was typed stays as typed
        concept = Concept("0.50,0.50")
        assert parse(added) == conjoin(parse(text), Not(concept) if negate else concept)


def test_canvas_shows_the_positions():
    a = core.analyze(DEMO, LIMITS, task="objects")
    assert a.markers == [(0.3, 0.3, False), (0.7, 0.7, False), (0.7, 0.3, True)]
    img = np.asarray(core.canvas_image(a.markers, 256))
    assert img.shape == (256, 256, 3)
    green, red = img[77, 77], img[77, 179]  # at (0.30, 0.30) and at (0.70, 0.30)
    assert green[1] > green[0] and red[0] > red[1] + 100


# ---- the live display ---------------------------------------------------------------------------


def test_analysis_shows_tree_and_effective_weights():
    a = core.analyze(DEMO, LIMITS, task="objects", guidance_scale=3.0)
    assert a.ok and a.column is None
    assert "AND\n" in a.markdown and "NOT" in a.markdown
    assert '| "0.70,0.30" | -1.0 | -3.0 |' in a.markdown
    mean = core.analyze(DEMO, LIMITS, guidance_scale=3.0, mode="mean")
    assert '| "0.30,0.30" | 1.0 | 1.5 |' in mean.markdown  # w·s/P with P = 2
    mix = core.analyze('"a":3 OR "b"', LIMITS)
    assert "pi = 0.75" in mix.markdown and "pi = 0.25" in mix.markdown


@pytest.mark.parametrize("text,column", [('"0.3,0.3" AND', 11), ('"0.3,0.3" AND NOT', 15), ('("a"', 1),
                                         ('castle:1.2', 7), ('"a" "b"', 5), ("", None)])
def test_bad_expression_gives_a_message_with_its_column(text, column):
    a = core.analyze(text, LIMITS)
    assert not a.ok and a.expr is None and "error" in a.markdown.lower()
    if column is not None:
        assert a.column == column and f"column {column}" in a.markdown
        assert "^" in a.markdown  # the caret under the bad place, in a code block


def test_a_concept_the_task_cannot_read_is_a_message():
    a = core.analyze('"0.3,0.3" AND red', LIMITS, task="objects")
    assert not a.ok and "not a objects concept" in a.markdown and "malformed position" in a.markdown
    assert core.analyze('"0.3,0.3" AND red', LIMITS, task=None).ok  # other models: any text


@pytest.mark.parametrize("text", ["\x1b[31m", '"a" AND (' * 300, "NOT " * 500 + '"a"', '"a":1e999',
                                  '"a" OR NOT ("b" OR "c")', "\ud800", "x" * 5000, '"<script>alert(1)</script>"'])
def test_analyze_never_raises(text):
    a = core.analyze(text, LIMITS, task="objects", guidance_scale=float("nan"), mode="bogus")
    prose = re.sub(r"```.*?```", "", a.markdown, flags=re.S)  # code blocks show text, never markup
    assert isinstance(a.markdown, str) and "<script>" not in prose


# ---- limits -----------------------------------------------------------------------------------


def test_limits_are_enforced(tiny_store):
    small = Limits(max_n=4, max_steps=5, max_concepts=3, max_length=60)
    name = tiny_store.names()[0]
    ok = Settings(name, '"0.3,0.3"', n=4, steps=5)
    assert core.check_settings(ok, tiny_store, small).steps == 5
    bad = [(dict(n=5), "n must lie in 1..4"), (dict(n=0), "n must lie"), (dict(steps=6), "steps must lie in 1..5"),
           (dict(n=2.5), "whole number"), (dict(seed=-1), "seed"), (dict(sampler="nope"), "unknown sampler"),
           (dict(corrector="mala"), "unknown corrector"), (dict(guidance_scale=float("inf")), "guidance scale"),
           (dict(guidance_scale=1e9), "guidance scale"), (dict(negation="sideways"), "negation"),
           (dict(mode="median"), "mode"), (dict(sampler=["ddim"]), "unknown sampler"),
           (dict(corrector={}), "unknown corrector"),
           (dict(expr='"0.1,0.1" AND "0.2,0.2" AND "0.3,0.3" AND "0.4,0.4"'), "concepts"),
           (dict(expr='"0.1,0.1"' + " " * 60), "at most 60"), (dict(expr='"0.3,0.3" AND'), "dangling AND"),
           (dict(expr="red"), "malformed position"), (dict(model="/etc"), "unknown model"),
           (dict(model="objects"), "unknown model")]  # not served by this store
    for change, message in bad:
        s = Settings(**{**ok.__dict__, **change})
        with pytest.raises(InputError, match=message):
            core.generate(s, tiny_store, small)
    assert core.analyze('"0.1,0.1" AND "0.2,0.2" AND "0.3,0.3" AND "0.4,0.4"', small).ok is False
    with pytest.raises(InputError):
        Limits(max_n=0)


def test_models_are_only_those_named_and_open_once(tiny_model):
    opened = []

    def opener(source, device):
        opened.append(source)
        from compdiff.backends import open_model

        return open_model(source, device=device)

    store = ModelStore([tiny_model, tiny_model], device="cpu", opener=opener)
    assert store.names()[:3] == ["objects", "relations", "attributes"] and len(store.names()) == 5
    local = store.names()[3]
    assert store.entry(local).cli == ("--model", store.entry(local).source)
    assert store.get(local) is store.get(local) and opened == [store.entry(local).source]
    assert not store.is_open("objects")  # lazily; `compdiff serve` loads all at start
    with pytest.raises(InputError, match="unknown model"):
        store.get(tiny_model)  # a path from the page is not a model name
    with pytest.raises(InputError, match="neither a shipped model"):
        ModelStore(["/no/such/dir"])


# ---- generation --------------------------------------------------------------------------------


def _cli_tiles(command: str, tmp_path, n: int) -> list[np.ndarray]:
    """Run the reproduce command in-process (its --out redirected) and cut the grid into tiles."""
    argv = shlex.split(command)
    assert argv[:2] == ["compdiff", "sample"]
    argv[argv.index("--out") + 1] = str(tmp_path / "cli.png")
    assert main(argv[1:] + ["--no-progress"]) == 0
    grid = np.asarray(Image.open(tmp_path / "cli.png").convert("RGB"))
    pad, cols = 2, min(8, n)  # compdiff sample's grid: 2-pixel gaps, 8 columns
    cell = (grid.shape[1] - pad) // cols - pad
    tiles = []
    for i in range(n):
        y, x = pad + (i // cols) * (cell + pad), pad + (i % cols) * (cell + pad)
        tiles.append(grid[y:y + cell, x:x + cell])
    return tiles


def test_same_images_as_the_cli_shipped_objects_model(shipped_store, tmp_path):
    s = Settings("objects", DEMO, n=3, seed=11, steps=2)
    g = core.generate(s, shipped_store, LIMITS)
    assert g.seeds == [11, 12, 13] and g.captions == ["seed 11", "seed 12", "seed 13"]
    assert g.command == ("compdiff sample '" + DEMO + "' --task objects --n 3 --seed 11 --sampler ddim --steps 2 "
                         "--guidance-scale 3.0 --batch-size 3 --device cpu --out composed.png")
    assert g.raw.shape == (3, 32, 32, 3) and g.images[0].shape == (128, 128, 3)
    for web, cli in zip(g.images, _cli_tiles(g.command, tmp_path, 3)):
        assert np.array_equal(web, cli)


def test_same_images_as_the_cli_with_or_and_every_option(tiny_store, tmp_path):
    name = tiny_store.names()[0]
    s = Settings(name, '("0.2,0.2" OR "0.8,0.8":3) AND NOT "0.5,0.5":0.5', n=5, seed=3, sampler="dpmpp-2m",
                 steps=3, guidance_scale=2.5, corrector="ula", negation="perp", mode="mean")
    steps = []
    g = core.generate(s, tiny_store, LIMITS, progress=lambda done, total: steps.append((done, total)))
    assert steps == [(i, 3) for i in range(4)]
    assert set(g.clauses) <= {0, 1} and len(g.clauses) == 5
    for cap, k, seed in zip(g.captions, g.clauses, g.seeds):
        assert cap.startswith(f"seed {seed} · clause {k + 1}: ")
    assert '"0.8,0.8":3' not in g.captions[0]  # a caption shows the clause's guidance terms
    assert any('NOT "0.5,0.5":0.5' in c for c in g.captions)
    argv = shlex.split(g.command)
    for flag, value in [("--model", tiny_store.entry(name).source), ("--sampler", "dpmpp-2m"), ("--steps", "3"),
                        ("--guidance-scale", "2.5"), ("--correct", "ula"), ("--negation", "perp"),
                        ("--mode", "mean"), ("--seed", "3"), ("--n", "5")]:
        assert argv[argv.index(flag) + 1] == value
    assert g.images[0].shape == (128, 128, 3)  # 16 px, nearest-upscaled 8x like the CLI's tiles
    for web, cli in zip(g.images, _cli_tiles(g.command, tmp_path, 5)):
        assert np.array_equal(web, cli)


def test_stop_cancels_between_steps(tiny_store):
    name = tiny_store.names()[0]
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        core.generate(Settings(name, '"0.3,0.3"', n=1, steps=10), tiny_store, LIMITS, should_stop=should_stop)
    assert len(calls) == 3  # stopped at the second step, not after all ten
    assert not tiny_store.lock(name).locked()  # the model is free for the next job
    g = core.generate(Settings(name, '"0.3,0.3"', n=1, steps=2), tiny_store, LIMITS)
    assert len(g.images) == 1


def test_defaults_follow_the_model(shipped_store):
    d = shipped_store.defaults("relations", Limits(max_steps=50))
    assert d == {"sampler": "ddpm", "steps": 50, "guidance_scale": 3.0, "task": "relations",
                 "example": core.EXAMPLES["relations"]}
    assert shipped_store.defaults("objects", LIMITS)["sampler"] == "ddim"
    assert core.analyze(core.EXAMPLES["attributes"], LIMITS, task="attributes").ok
    assert core.analyze(core.EXAMPLES["relations"], LIMITS, task="relations").ok


# ---- wiring ---------------------------------------------------------------------------------------


def test_import_compdiff_does_not_import_gradio():
    code = ("import sys, compdiff, compdiff.web, compdiff.web.core, compdiff.web.serve, compdiff.cli, compdiff.__main__; "
            "assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_serve_flags():
    import argparse

    from compdiff.web import serve

    p = argparse.ArgumentParser()
    serve.add_parser(p.add_subparsers())
    args = p.parse_args(["serve"])
    assert (args.host, args.port, args.model) == ("127.0.0.1", 7860, [])
    assert (args.max_n, args.max_steps, args.max_concepts, args.max_length, args.queue_size) == (16, 200, 16, 2000, 8)
    assert args.max_candidates == 8
    args = p.parse_args(["serve", "--model", "a", "--model", "b", "--max-n", "2", "--port", "0"])
    assert args.model == ["a", "b"] and args.max_n == 2
    with pytest.raises(SystemExit):
        p.parse_args(["serve", "--max-n", "0"])


def test_the_page_builds(tiny_store):
    gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install 'compdiff[web]')")
    from compdiff.web.app import build_app

    demo = build_app(tiny_store, Limits(max_concepts=4))
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"expr", "analysis", "canvas", "generate", "stop", "gallery", "command", "weight-3", "regions",
            "region-concept", "region-clear", "region-note", "feather", "region-mode", "select", "candidates",
            "selection"} <= ids
    assert "weight-4" not in ids  # one slider per allowed concept


# ---- regions: boxes drawn on the canvas, typed by hand, drawn back ----------------------------


def test_drag_to_box_sorts_clamps_and_rounds():
    assert str(core.drag_to_box([0.1, 0.2, 0.5, 0.9])) == "(0.1, 0.2, 0.5, 0.9)"
    assert core.drag_to_box((0.5, 0.9, 0.1, 0.2)).coords == (0.1, 0.2, 0.5, 0.9)  # dragged from any corner
    assert core.drag_to_box((0.12345, 0.2, 0.56789, -0.3)).coords == (0.123, 0.0, 0.568, 0.2)
    assert core.drag_to_box((-1, -1, 2, 2)).coords == (0.0, 0.0, 1.0, 1.0)  # clamped into the image
    for bad in [None, (0.1, 0.2, 0.3), "0.1,0.2,0.3,0.4", (0.1, "a", 0.3, 0.4), (0.1, float("nan"), 0.3, 0.4),
                (True, 0.2, 0.3, 0.4), (0.5, 0.5, 0.505, 0.9), (0.1, 0.3, 0.9, 0.3)]:
        with pytest.raises(InputError):
            core.drag_to_box(bad)


def test_a_drawn_box_becomes_the_concepts_region():
    box = core.drag_to_box((0.1, 0.2, 0.5, 0.9))
    text = core.set_leaf_region('"a red cube" AND NOT "metal":0.5', 0, box, LIMITS)
    assert text == '"a red cube" @ (0.100, 0.200, 0.500, 0.900) AND NOT "metal":0.5'
    assert parse(text).clauses()[0].terms[0].region == box
    # on a NOT leaf, inside parentheses and an OR: only that leaf changes
    text = core.set_leaf_region('("a" OR "b") AND NOT "c"', 2, box, LIMITS)
    assert text == '("a" OR "b") AND NOT "c" @ (0.100, 0.200, 0.500, 0.900)'
    text = core.set_leaf_region('("a" OR "b") AND NOT "c"', 1, box, LIMITS)
    assert text == '("a" OR "b" @ (0.100, 0.200, 0.500, 0.900)) AND NOT "c"'
    # the same concept twice: the leaf chosen, not its twin
    assert core.set_leaf_region('"a" AND "a"', 1, box, LIMITS) == '"a" AND "a" @ (0.100, 0.200, 0.500, 0.900)'


def test_a_drawn_box_replaces_the_region_a_concept_has():
    box = core.drag_to_box((0.25, 0.0, 0.75, 0.5))
    for typed in ['"a" @ left', '"a" @ (0.1, 0.2, 0.3, 0.4)', '"a":2 @ right', '"a" @ top :2']:
        text = core.set_leaf_region(typed + ' AND "b" @ bottom', 0, box, LIMITS)
        assert text.count("@") == 2 and text.endswith('AND "b" @ bottom')
        assert text.startswith('"a"') and " @ (0.250, 0.000, 0.750, 0.500)" in text
        a = next(t for t in parse(text).clauses()[0].terms if t.concept == "a")
        assert a.region == box and a.weight == (2.0 if ":2" in typed else 1.0)  # the weight stays
    # None clears the region (the "Clear its region" button)
    assert core.set_leaf_region('"a" @ left AND "b"', 0, None, LIMITS) == '"a" AND "b"'


def test_region_edits_need_an_expression_and_a_concept():
    box = core.drag_to_box((0.1, 0.1, 0.9, 0.9))
    with pytest.raises(InputError, match="dangling AND at column 5"):
        core.set_leaf_region('"a" AND', 0, box, LIMITS)
    with pytest.raises(InputError, match="empty expression"):
        core.set_leaf_region("", 0, box, LIMITS)
    for bad in [2, -1, None, "0", 0.5, True]:
        with pytest.raises(InputError, match="choose one of the 2 concepts"):
            core.set_leaf_region('"a" AND "b"', bad, box, LIMITS)


def test_canonical_text_keeps_drawn_boxes_in_three_decimals():
    drawn = '"a" @ (0.100, 0.200, 0.500, 0.900) AND "b" @ (0.1234, 0.2, 0.5, 0.9)'
    # a slider move rewrites the text: the drawn box keeps its 3 decimals, a finer typed box its digits
    assert core.set_leaf_weight(drawn, 0, 2.0, LIMITS) == \
        '"a":2.0 @ (0.100, 0.200, 0.500, 0.900) AND "b" @ (0.1234, 0.2, 0.5, 0.9)'
    # quoted concept text that looks like a box is text, left alone
    text = '"x @ (0.1, 0.2, 0.3, 0.4)" @ (0.5, 0, 1, 1)'
    assert core.canonical(parse(text)) == '"x @ (0.1, 0.2, 0.3, 0.4)" @ (0.500, 0.000, 1.000, 1.000)'
    for t in [drawn, text, DEMO, '"a \\" @ (0.1, 0.2, 0.3, 0.4)" @ left']:
        assert parse(core.canonical(parse(t))) == parse(t)


def test_regions_are_listed_and_drawn():
    text = '"a red cube" @ (0.1, 0.2, 0.5, 0.9) AND NOT "metal" @ left AND "sky" AND "<b>x</b>" @ top-right'
    a = core.analyze(text, LIMITS)
    assert a.ok
    assert [(r.index, r.concept, r.negated, r.region.coords) for r in a.regions] == [
        (0, "a red cube", False, (0.1, 0.2, 0.5, 0.9)), (1, "metal", True, (0.0, 0.0, 0.5, 1.0)),
        (3, "<b>x</b>", False, (0.5, 0.0, 1.0, 0.5))]
    assert "| region |" in a.markdown and "| whole image |" in a.markdown  # the weights table names each region
    assert core.analyze(DEMO, LIMITS).regions == [] and "| region |" not in core.analyze(DEMO, LIMITS).markdown
    svg = core.regions_svg(a.regions, selected=1, size=200)
    assert svg.startswith('<svg class="regions"') and 'viewBox="0 0 200 200"' in svg
    groups = re.findall(r'<g class="region" data-index="(\d)"><rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" '
                        r'height="([\d.]+)"[^>]*stroke="([^"]+)" stroke-width="(\d)"', svg)
    assert groups == [("0", "20.0", "40.0", "80.0", "140.0", core.PALETTE[0], "2"),
                      ("1", "0.0", "0.0", "100.0", "200.0", core.NOT_COLOUR, "4"),  # chosen: thicker
                      ("3", "100.0", "0.0", "100.0", "100.0", core.PALETTE[3], "2")]
    assert ">1. a red cube</text>" in svg and ">2. NOT metal</text>" in svg
    assert "<b>" not in svg and ">4. &lt;b&gt;x&lt;/b&gt;</text>" in svg  # user text is escaped
    assert 'class="rubber"' in svg and 'visibility="hidden"' in svg  # the rectangle a drag moves
    # the chooser names each concept with its region
    assert core.concept_choices(a.leaves)[:2] == [("1. a red cube @ (0.100, 0.200, 0.500, 0.900)", 0),
                                                  ("2. NOT metal @ left", 1)]


@pytest.mark.parametrize("text,message,column", [
    ('"a" @ (0.5, 0, 0.2, 1)', "empty region box", 7), ('"a" @ (0.1, 0.2, 1.5, 0.9)', "out of range", 18),
    ('"a" @ lft', "unknown region 'lft'", 7), ('("a" AND "b") @ left', "a region on a group", 15),
    ('"a" @', "'@' with no region", 5), ('"a" @ mask:face', "this page takes no mask images", 5)])
def test_bad_regions_are_messages_with_their_column(tiny_store, text, message, column):
    a = core.analyze(text, LIMITS)
    assert not a.ok and a.column == column and message in a.markdown.replace("\\", "")
    assert "^" in a.markdown and "Traceback" not in a.markdown
    with pytest.raises(InputError, match=re.escape(message)):
        core.generate(Settings(tiny_store.names()[0], text, n=1, steps=1), tiny_store, LIMITS)


def test_feather_and_region_mode_are_checked(tiny_store):
    name = tiny_store.names()[0]
    for change, message in [({"feather": -0.1}, "feather"), ({"feather": 1.5}, "feather"),
                            ({"feather": float("nan")}, "feather"), ({"feather": "x"}, "feather"),
                            ({"feather": True}, "feather"), ({"feather": None}, "feather"),
                            ({"region_mode": "median"}, "region mode"), ({"region_mode": None}, "region mode")]:
        with pytest.raises(InputError, match=message):
            core.check_settings(Settings(name, '"0.3,0.3" @ left', n=1, steps=1, **change), tiny_store, LIMITS)
    c = core.check_settings(Settings(name, '"0.3,0.3" @ left', n=1, steps=1, feather="0.25"), tiny_store, LIMITS)
    assert c.feather == 0.25 and c.settings.feather == 0.25 and c.has_regions


REGIONS = '"0.2,0.2" @ (0.0, 0.0, 0.6, 0.6) AND "0.8,0.8" @ (0.4, 0.4, 1.0, 1.0)'


def test_feather_and_region_mode_reach_compose(tiny_store, monkeypatch):
    import importlib

    module = importlib.import_module("compdiff.compose")  # (compdiff.compose is also the function)
    calls = []
    real = module.compose

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "compose", spy)
    monkeypatch.setattr(importlib.import_module("compdiff.generate"), "compose", spy)  # the path binds its own name
    name = tiny_store.names()[0]
    core.generate(Settings(name, REGIONS, n=1, steps=1, feather=0.125, region_mode="normalize"), tiny_store, LIMITS)
    assert calls[-1]["feather"] == 0.125 and calls[-1]["region_mode"] == "normalize"
    core.generate(Settings(name, REGIONS, n=1, steps=1), tiny_store, LIMITS)
    assert calls[-1]["feather"] == 0.0 and calls[-1]["region_mode"] == "sum"


def test_regions_feather_and_mode_change_the_images_as_the_cli_does(tiny_store, tmp_path):
    name = tiny_store.names()[0]
    base = dict(n=2, seed=5, steps=3, guidance_scale=8.0)
    plain = core.generate(Settings(name, REGIONS.replace(" @ (0.0, 0.0, 0.6, 0.6)", "").replace(
        " @ (0.4, 0.4, 1.0, 1.0)", ""), **base), tiny_store, LIMITS)
    boxed = core.generate(Settings(name, REGIONS, **base), tiny_store, LIMITS)
    soft = core.generate(Settings(name, REGIONS, feather=0.25, **base), tiny_store, LIMITS)
    shared = core.generate(Settings(name, REGIONS, region_mode="normalize", **base), tiny_store, LIMITS)
    assert not np.array_equal(plain.raw, boxed.raw)  # the regions confine the guidance
    assert not np.array_equal(boxed.raw, soft.raw)  # the feather softens their edges
    assert not np.array_equal(boxed.raw, shared.raw)  # the boxes overlap: normalize shares the guidance there
    assert "--feather" not in boxed.command and "--region-mode" not in boxed.command
    argv = shlex.split(soft.command)
    assert argv[2] == REGIONS and argv[argv.index("--feather") + 1] == "0.25"
    argv = shlex.split(shared.command)
    assert argv[argv.index("--region-mode") + 1] == "normalize"
    for g in (soft, shared):  # the reproduce command writes the same images
        for web, cli in zip(g.images, _cli_tiles(g.command, tmp_path, 2)):
            assert np.array_equal(web, cli)
    # without a region, feather and region mode change nothing, and the command leaves them out
    same = core.generate(Settings(name, plain.command.split("'")[1], feather=0.25, region_mode="normalize", **base),
                         tiny_store, LIMITS)
    assert np.array_equal(same.raw, plain.raw) and same.command == plain.command
    assert boxed.captions[0] == "seed 5"


def test_captions_show_a_clauses_regions(tiny_store):
    name = tiny_store.names()[0]
    g = core.generate(Settings(name, '"0.2,0.2" @ (0.1, 0.1, 0.5, 0.5) OR "0.8,0.8" @ right', n=2, steps=1),
                      tiny_store, LIMITS)
    assert all(" @ (0.100, 0.100, 0.500, 0.500)" in c or " @ right" in c for c in g.captions)


def _api_generate(url: str, demo, data: list) -> dict:
    """POST one /generate call to the server's queue as raw JSON (so NaN goes out as the literal
    NaN, which gradio_client refuses to send) and return its final message's output."""
    import json
    import uuid

    import httpx

    fn_index = next(i for i, fn in demo.fns.items() if fn.api_name == "generate")
    session = uuid.uuid4().hex
    body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None})
    with httpx.Client(base_url=url, timeout=120) as client:
        r = client.post("gradio_api/queue/join", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 200, r.text
        with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("the queue closed without a result")


def test_the_api_names_a_bad_number_instead_of_answering_error_null(tiny_store):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'compdiff[web]')")
    import socket

    from compdiff.web.app import build_app, launch

    limits = Limits(max_n=4, max_steps=2)
    demo = build_app(tiny_store, limits)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = launch(demo, limits, port=port)
    try:
        # model, expression, n, seed, sampler, steps, scale, corrector, negation, mode, feather, region mode,
        # selection, candidates
        good = [tiny_store.names()[0], '"0.3,0.3"', 1, 0, "ddim", 1, 3.0, "off", "plain", "sum", 0.0, "sum", "off", 4]
        done = _api_generate(url, demo, good)
        assert done["success"] and re.fullmatch(r"1 image in [\d.]+ s", done["output"]["data"][2])  # it generates
        for index, value, message in [(2, "abc", "n must be a finite number, got 'abc'"),
                                      (3, float("nan"), "seed must be a finite number, got nan"),
                                      (3, float("inf"), "seed must be a finite number, got inf"),
                                      (2, None, "n must be a finite number, got None"),
                                      (5, "x", "steps must be a finite number, got 'x'"),
                                      (6, [1], "the guidance scale must be a finite number, got [1]"),
                                      (10, {}, "feather must be a finite number, got {}"),
                                      (4, "nope", "Value: nope is not in the list of choices"),  # Gradio's
                                      (2, 100, "Value 100 is greater than maximum value 4")]:  # own checks
            done = _api_generate(url, demo, good[:index] + [value] + good[index + 1:])
            assert not done["success"] and done["output"]["error"].startswith(message), (value, done)
        # what Gradio passes on is checked as the page's settings are: the message is the status
        done = _api_generate(url, demo, good[:4] + [["ddim"]] + good[5:])
        assert done["success"] and "unknown sampler" in done["output"]["data"][2]
    finally:
        demo.close()


# ---- selection, batches, the model's spacing ---------------------------------------------------------


@pytest.mark.parametrize("how", ["lift", "cached-lift"])
def test_selection_shows_each_kept_images_seed_and_lifts_and_the_command_reproduces_it(tiny_store, tmp_path, how):
    import json

    import compdiff as cd

    name = tiny_store.names()[0]
    s = Settings(name, DEMO, n=3, seed=4, steps=2, select=how, candidates=2)
    g = core.generate(s, tiny_store, LIMITS)
    lib = cd.generate(tiny_store.get(name), DEMO, [4, 5, 6], steps=2, select=how, candidates=2)
    assert np.array_equal(g.raw, lib.uint8().permute(0, 2, 3, 1).numpy())
    assert g.records == [lib.record(i) for i in range(3)]
    for cap, rec in zip(g.captions, g.records):
        assert cap.startswith(f"seed {rec['seed']} (image seed {rec['image_seed']}, candidate {rec['candidate'] + 1}/2)")
        assert 'NOT "0.70,0.30"' in cap and ("holds" in cap) == rec["satisfied"]
    assert g.table.count("\n| ") == 4 and f"{how}, 2 candidates" in g.table  # a header and one row per image
    assert str(g.records[0]["seed"]) in g.table
    argv = shlex.split(g.command)
    assert argv[argv.index("--select") + 1] == how and argv[argv.index("--candidates") + 1] == "2"
    for web, cli in zip(g.images, _cli_tiles(g.command, tmp_path, 3)):
        assert np.array_equal(web, cli)
    assert json.loads((tmp_path / "cli.json").read_text())["images"] == [{"index": i, **r}
                                                                         for i, r in enumerate(g.records)]
    # off: plain sampling whatever the candidates slider says, and the command has no --select
    off = core.generate(Settings(name, DEMO, n=3, seed=4, steps=2, candidates=3), tiny_store, LIMITS)
    assert off.records == [] and off.table == "" and "--select" not in off.command
    assert off.captions == ["seed 4", "seed 5", "seed 6"]
    for change, message in [(dict(select="best"), "select must be one of"), (dict(candidates=9), "candidates must lie"),
                            (dict(candidates=0), "candidates must lie"), (dict(candidates=1.5), "whole number")]:
        with pytest.raises(InputError, match=message):
            core.generate(Settings(**{**s.__dict__, **change}), tiny_store, LIMITS)


def test_the_command_samples_in_the_pages_batch_beyond_16_images(tiny_store, tmp_path):
    """The page samples its n images in one batch; the command says --batch-size n (the CLI's default 16
    would sample n > 16 in two batches)."""
    name = tiny_store.names()[0]
    g = core.generate(Settings(name, '"0.3,0.3" AND NOT "0.7,0.7"', n=17, seed=0, steps=1), tiny_store,
                      Limits(max_n=17))
    argv = shlex.split(g.command)
    assert argv[argv.index("--batch-size") + 1] == "17"
    for web, cli in zip(g.images, _cli_tiles(g.command, tmp_path, 17)):
        assert np.array_equal(web, cli)


def test_steps_are_checked_with_the_models_own_spacing(tiny_model):
    """check_settings asks the model's spacing (and steps_offset) what steps it takes, as generation does:
    "leading" with offset 1 cannot take all T steps (the last would be T), "trailing" can."""
    import compdiff as cd

    store = ModelStore([tiny_model], shipped=False, device="cpu", device_flag="cpu")
    name = store.names()[0]
    m = store.get(name)
    T = m.schedule.T
    assert core.check_settings(Settings(name, '"0.3,0.3"', n=1, steps=T), store, Limits(max_steps=T)).steps == T
    m.spacing, m.steps_offset = "leading", 1
    with pytest.raises(cd.InputError):
        cd.generate(m, '"0.3,0.3"', [0], steps=T)
    with pytest.raises(InputError, match="steps: timesteps out of"):
        core.check_settings(Settings(name, '"0.3,0.3"', n=1, steps=T), store, Limits(max_steps=T))
    assert core.check_settings(Settings(name, '"0.3,0.3"', n=1, steps=T - 1), store, Limits(max_steps=T)).steps == T - 1
