"""compdiff serve in a real browser: start the server, drive the page with Playwright (headless
chromium from the system), generate, check errors, click the canvas, drag region boxes with the
mouse; saves screenshots.

Skips (one line) without Gradio, Playwright or a chromium binary. Tiny settings (--max-steps 4:
the Steps default is capped to 4; --max-n 4) keep it short. The README's docs/web.png is the
screenshot of the regions test (the last) at the objects model's default 50 steps:

    COMPDIFF_WEB_STEPS=50 COMPDIFF_WEB_SHOT=docs/web.png .venv/bin/python -m pytest tests/test_web_browser.py
"""
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = int(os.environ.get("COMPDIFF_WEB_STEPS", "4"))
SHOT = os.environ.get("COMPDIFF_WEB_SHOT")  # where the screenshot goes (default: the test's tmp folder)
DEMO = '"0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"'
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STARTUP_S = 180  # importing Gradio and opening three models on a busy 2-core machine
GENERATE_MS = 180_000
#: wait for one UI round trip (an event, the server, a re-render); generous: CI shares its cores
UI_MS = 90_000


def _chromium() -> str | None:
    for candidate in (os.environ.get("COMPDIFF_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def browser():
    try:
        import gradio  # noqa: F401
    except ImportError as err:
        pytest.skip(f"gradio is not importable ({err}): pip install 'compdiff[web]'")
    try:
        from playwright import sync_api
    except ImportError as err:
        pytest.skip(f"playwright is not importable ({err}): pip install playwright")
    exe = _chromium()
    if exe is None:
        pytest.skip("no chromium binary (apt-get install -y chromium, or set COMPDIFF_CHROMIUM)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(browser):
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "compdiff", "serve", "--port", str(port), "--max-steps", str(STEPS),
                             "--max-n", "4"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    url, deadline = None, time.monotonic() + STARTUP_S
    try:
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            seen.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+/?)", line)
            url = m.group(1) if m else None
        if url is None:
            pytest.fail(f"compdiff serve printed no URL in {STARTUP_S} s (exit code {proc.poll()}):\n" + "".join(seen))
        assert sum("http://" in line for line in seen) == 1  # one line gives the URL
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture()
def page(browser, server):
    pg = browser.new_page(viewport={"width": 1280, "height": 1400})
    off_host: list[str] = []
    pg.on("request", lambda r: off_host.append(r.url) if urlparse(r.url).hostname not in
          ("127.0.0.1", "localhost", None) and not r.url.startswith(("data:", "blob:")) else None)
    pg.goto(server)
    pg.get_by_label("Expression").wait_for(timeout=60_000)
    yield pg
    pg.close()
    assert off_host == [], f"the page fetched from the network: {off_host[:5]}"


def _set_expression(pg, text: str) -> None:
    box = pg.get_by_label("Expression")
    box.fill(text)
    box.press("End")  # an input event, like typing


def _generate(pg, expect_status: str) -> str:
    pg.locator("#generate").click()
    status = pg.locator("#status")
    pg.wait_for_function("([s]) => document.querySelector('#status').innerText.includes(s)", arg=[expect_status],
                         timeout=GENERATE_MS)
    return status.inner_text()


def test_generate_errors_and_canvas(page, tmp_path):
    pg = page
    box = pg.get_by_label("Expression")

    # typing parses live: the tree and the effective weights
    _set_expression(pg, '"0.30,0.30" AND "0.70,0.70"')
    pg.locator("#analysis").get_by_text("effective").first.wait_for(timeout=UI_MS)
    pg.wait_for_function("() => !document.querySelector('#analysis').innerText.includes('NOT')", timeout=UI_MS)

    # a click on the canvas adds a position (AND); with the NOT toggle, AND NOT
    img = pg.locator("#canvas img")
    img.wait_for(timeout=UI_MS)
    bb = img.bounding_box()
    img.click(position={"x": bb["width"] * 0.70, "y": bb["height"] * 0.30})
    pg.wait_for_function("() => document.querySelector('#expr textarea').value.split('AND').length === 3",
                         timeout=UI_MS)
    m = re.fullmatch(r'"0\.30,0\.30" AND "0\.70,0\.70" AND "([0-9.]+),([0-9.]+)"', box.input_value())
    assert m, box.input_value()
    assert abs(float(m.group(1)) - 0.70) <= 0.02 and abs(float(m.group(2)) - 0.30) <= 0.02
    pg.locator("#negate input").check()
    img.click(position={"x": bb["width"] * 0.50, "y": bb["height"] * 0.85})
    pg.wait_for_function("() => document.querySelector('#expr textarea').value.includes('AND NOT')", timeout=UI_MS)
    assert re.search(r'AND NOT "0\.[45]\d,0\.8\d"$', box.input_value()), box.input_value()
    pg.locator("#negate input").uncheck()

    # a weight slider rewrites the expression's :w
    pg.locator("#weight-1 input[type=number]").fill("2.5")
    pg.wait_for_function("() => document.querySelector('#expr textarea').value.includes('\"0.70,0.70\":2.5')",
                         timeout=UI_MS)

    # a bad expression: the error with its column, live and on Generate; the server keeps serving
    _set_expression(pg, '"0.30,0.30" AND')
    pg.locator("#analysis").get_by_text("dangling AND at column 13").wait_for(timeout=UI_MS)
    assert "dangling AND" in _generate(pg, "dangling AND")

    # the next good one works: images in the gallery, captioned with their seeds, and the command
    _set_expression(pg, DEMO)
    pg.locator("#analysis").get_by_text("effective").first.wait_for(timeout=UI_MS)
    assert "4 images" in _generate(pg, "images in")
    gallery = pg.locator("#gallery")
    gallery.locator("img").first.wait_for(timeout=UI_MS)
    assert gallery.locator("img").count() >= 4
    assert "seed 0" in gallery.inner_text() and "seed 3" in gallery.inner_text()
    command = pg.locator("#command textarea").input_value()
    assert command.startswith("compdiff sample '" + DEMO + "' --task objects --n 4 --seed 0 ")
    assert f"--steps {STEPS}" in command

    pg.wait_for_timeout(500)  # let the images paint
    shot = tmp_path / "web.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def _expr(pg) -> str:
    return pg.locator("#expr textarea").input_value()


def _drag(pg, start, end) -> None:
    """A mouse drag on the regions square, from and to fractions of it (may lie outside it)."""
    # the listeners attach when the component loads, which a busy machine may run after the square shows
    pg.wait_for_function("() => document.querySelector('[data-drag-ready]') !== null", timeout=UI_MS)
    bb = pg.locator("#regions svg.regions").bounding_box()
    pg.mouse.move(bb["x"] + start[0] * bb["width"], bb["y"] + start[1] * bb["height"])
    pg.mouse.down()
    pg.mouse.move(bb["x"] + end[0] * bb["width"], bb["y"] + end[1] * bb["height"], steps=6)
    pg.mouse.up()


def _choose_concept(pg, number: int) -> None:
    """Pick concept ``number`` in the region chooser, and wait for its list (over the square) to close."""
    pg.locator("#region-concept input").click()
    option = pg.get_by_role("option", name=re.compile(rf"^{number}\. "))
    option.click()
    pg.wait_for_function("([n]) => document.querySelector('#region-concept input').value.startsWith(n + '. ')",
                         arg=[number], timeout=UI_MS)
    option.wait_for(state="hidden", timeout=UI_MS)


BOX = r"@ \((\d\.\d{3}), (\d\.\d{3}), (\d\.\d{3}), (\d\.\d{3})\)"


def _box_of(text: str, concept: str) -> list[float]:
    m = re.search(re.escape(f'"{concept}"') + " " + BOX, text)
    assert m, text
    return [float(v) for v in m.groups()]


def test_draw_region_boxes(page, tmp_path):
    pg = page
    _set_expression(pg, DEMO)
    pg.locator("#analysis").get_by_text("effective").first.wait_for(timeout=UI_MS)
    svg = pg.locator("#regions svg.regions")
    svg.wait_for(timeout=UI_MS)
    assert pg.locator("#regions g.region").count() == 0

    # a drag on the square gives the chosen concept (the first) a box: ' @ (x0, y0, x1, y1)', 3 decimals
    _drag(pg, (0.05, 0.10), (0.55, 0.60))
    pg.wait_for_function("() => document.querySelector('#expr textarea').value.includes(' @ (')", timeout=UI_MS)
    text = _expr(pg)
    assert re.fullmatch(r'"0\.30,0\.30" ' + BOX + r' AND "0\.70,0\.70" AND NOT "0\.70,0\.30"', text), text
    assert _box_of(text, "0.30,0.30") == pytest.approx([0.05, 0.10, 0.55, 0.60], abs=0.01)
    # ... and the square draws it, labelled with the concept
    pg.locator("#regions g.region").first.wait_for(timeout=UI_MS)
    assert pg.locator("#regions g.region").count() == 1
    assert pg.locator("#regions g.region text").text_content() == "1. 0.30,0.30"

    # another concept, dragged up-left to down-right past the square's edge: clamped to the image
    _choose_concept(pg, 2)
    _drag(pg, (0.45, 0.40), (1.2, 1.1))
    pg.wait_for_function("() => document.querySelector('#expr textarea').value.split(' @ (').length === 3",
                         timeout=UI_MS)
    assert _box_of(_expr(pg), "0.70,0.70") == pytest.approx([0.45, 0.40, 1.0, 1.0], abs=0.01)
    pg.wait_for_function("() => document.querySelectorAll('#regions g.region').length === 2", timeout=UI_MS)

    # a new box for the first concept replaces its region
    _choose_concept(pg, 1)
    _drag(pg, (0.0, 0.0), (0.6, 0.6))
    pg.wait_for_function("() => document.querySelector('#expr textarea').value.includes('(0.000, 0.000, ')",
                         timeout=UI_MS)
    text = _expr(pg)
    assert text.count(" @ ") == 2 and _box_of(text, "0.30,0.30") == pytest.approx([0, 0, 0.6, 0.6], abs=0.01)
    assert "not set" not in pg.locator("#region-note").inner_text()

    # a bad region typed by hand: the error with its column, live and on Generate
    _set_expression(pg, '"0.30,0.30" @ (0.5, 0, 0.2, 1)')
    pg.locator("#analysis").get_by_text("empty region box at column 15").wait_for(timeout=UI_MS)
    assert "empty region box" in _generate(pg, "empty region box")
    assert "Traceback" not in pg.locator("#status").inner_text()

    # back to the drawn boxes; feather and region mode reach the generation (and its command)
    _set_expression(pg, text)
    pg.locator("#analysis").get_by_text("whole image").wait_for(timeout=UI_MS)  # its region column: NOT has none
    pg.locator("#feather input[type=number]").fill("0.1")
    pg.locator("#feather input[type=number]").press("Enter")
    pg.locator("#region-mode").get_by_text("normalize").click()
    status = _generate(pg, "images in")
    assert "4 images" in status and "rror" not in status
    pg.locator("#gallery img").first.wait_for(timeout=UI_MS)
    command = pg.locator("#command textarea").input_value()
    assert command.startswith("compdiff sample '" + text + "' --task objects --n 4 --seed 0 ")
    assert "--feather 0.1 --region-mode normalize" in command

    pg.wait_for_timeout(500)  # let the images paint
    shot = Path(SHOT) if SHOT else tmp_path / "web_regions.png"
    pg.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
