"""Latency of one Generate in `compdiff serve` vs the same `compdiff sample`, in process.

The job: 4 images of a K = 3 expression ("0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30") with
the shipped objects model at its recommended sampler (its compdiff.json names none: ddim, 50
steps), guidance scale 3, seed 0. Three ways, interleaved (cli, app, http, cli, app, http, ...)
so that load from other processes on the shared machine falls on all of them alike:

  cli   compdiff.cli.main(["sample", ...]) in this process: opens the model, samples, writes the grid
  app   compdiff.web.core.generate(...): what the page's Generate button runs (model cached)
  http  the Generate event of a running server (Gradio queue, images encoded to PNG, served
        over HTTP), through gradio_client: what a user waits for. Skipped without Gradio.

Reported: the median time of each and the ratios app/cli and http/cli (target <= 1.5). The
images of the three ways are checked to be identical.

    .venv/bin/python bench/web_latency.py [--repeats 3] [--threads 1] [--steps 50] [--no-http]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXPR = '"0.30,0.30" AND "0.70,0.70" AND NOT "0.70,0.30"'
N = 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    ap.add_argument("--steps", type=int, default=None, help="default: the model's recommendation (50)")
    ap.add_argument("--no-http", action="store_true", help="skip the round trip through a running server")
    args = ap.parse_args()

    import torch
    from PIL import Image

    from compdiff.cli import main as cli_main
    from compdiff.web.core import Limits, ModelStore, Settings, generate

    torch.set_num_threads(args.threads)
    limits = Limits(max_n=N, max_steps=1000)
    store = ModelStore(device="cpu", device_flag="cpu")
    store.load_all()  # the server loads its models at start, once
    d = store.defaults("objects", limits)
    steps = args.steps or d["steps"]
    settings = Settings("objects", EXPR, n=N, seed=0, sampler=d["sampler"], steps=steps)

    tmp = Path(tempfile.mkdtemp(prefix="web_latency_"))
    cli_argv = ["sample", EXPR, "--task", "objects", "--n", str(N), "--seed", "0", "--sampler", d["sampler"],
                "--steps", str(steps), "--guidance-scale", "3", "--device", "cpu", "--out", str(tmp / "cli.png"),
                "--no-progress"]

    client = demo = None
    if not args.no_http:
        try:
            from gradio_client import Client

            from compdiff.web.app import build_app, launch
        except ImportError as err:
            print(f"http: skipped ({err})")
        else:
            demo = build_app(store, limits)
            url = launch(demo, limits, host="127.0.0.1", port=_free_port())
            client = Client(url, verbose=False)

    def run_cli() -> np.ndarray:
        with open(os.devnull, "w") as devnull:
            stdout, sys.stdout = sys.stdout, devnull
            try:
                assert cli_main(cli_argv) == 0
            finally:
                sys.stdout = stdout
        return np.asarray(Image.open(tmp / "cli.png").convert("RGB"))

    def run_app() -> list[np.ndarray]:
        return generate(settings, store, limits).images

    def run_http() -> list[np.ndarray]:
        gallery, _command, status = client.predict("objects", EXPR, N, 0, d["sampler"], steps, 3.0, "off", "plain",
                                                   "sum", api_name="/generate")
        assert "images in" in status, status
        return [np.asarray(Image.open(item["image"]["path"] if isinstance(item["image"], dict) else item["image"])
                           .convert("RGB")) for item in gallery]

    ways = {"cli": run_cli, "app": run_app}
    if client is not None:
        ways["http"] = run_http
    times: dict[str, list[float]] = {k: [] for k in ways}
    outputs: dict[str, object] = {}
    print(f"objects model, {settings.sampler or d['sampler']} {steps} steps, n = {N}, K = 3, "
          f"{args.threads} torch thread(s), {args.repeats} repeats, interleaved")
    for r in range(args.repeats):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
            print(f"  repeat {r + 1}: {name:5s} {times[name][-1]:7.2f} s", flush=True)

    # the same images every way (the CLI grid's tiles are the app's images)
    grid = outputs["cli"]
    cell, pad = outputs["app"][0].shape[0], 2
    tiles = [grid[pad:pad + cell, pad + i * (cell + pad):pad + i * (cell + pad) + cell] for i in range(N)]
    same = all(np.array_equal(a, b) for a, b in zip(tiles, outputs["app"]))
    if "http" in outputs:
        same = same and all(np.array_equal(a, b) for a, b in zip(outputs["app"], outputs["http"]))

    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'way':6s} {'median s':>9s} {'ratio to cli':>13s}")
    for k, v in med.items():
        print(f"{k:6s} {v:9.2f} {v / med['cli']:13.2f}")
    print(f"identical images: {same}")
    print(f"app/cli = {med['app'] / med['cli']:.2f}" + (f", http/cli = {med['http'] / med['cli']:.2f}"
                                                      if "http" in med else "") + " (target <= 1.5)")
    if demo is not None:
        demo.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
