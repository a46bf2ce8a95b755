"""Every door gives the same images (issue #31): one generation path, bit-identical uint8 everywhere.

For a tiny trained world model and a tiny random pipeline of each family (SD, SDXL, SD3, Flux,
PixArt-Σ), the same expression, seeds, sampler and steps give BIT-IDENTICAL uint8 images from
``compdiff sample --out-dir``, the web app's generate, ``compdiff.generate``, the backend's
``generate`` (pipelines: world models have no backend object) and the evaluation's generation; the
command the web page prints writes the same images (as a grid). Cases: AND/NOT, OR, a region,
``--negation perp`` and a corrector. Two images, two steps, one batch everywhere (the doors share the
batch, so not even float round-off of batched kernels may differ).
"""
from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import compdiff as cd
from compdiff.cli import main
from compdiff.cli.sample import write_grid_uint8
from compdiff.correctors import Corrector
from compdiff.eval.composition import EvalSpec, sample_images
from compdiff.generate import to_uint8
from compdiff.web import core
from compdiff.web.store import ModelStore
from compdiff.web.validate import Limits

N, STEPS, SEED = 2, 2, 0  # the eval's seeds are spec.seed·100000 + i: 0, 1
WORLD = {"and-not": '"0.3,0.3" AND "0.7,0.7" AND NOT "0.7,0.3"', "or": '"0.3,0.5" OR "0.7,0.5":3',
         "region": '"0.3,0.3" @ left AND "0.7,0.7"'}
PROMPTS = {"and-not": '"a red cube" AND NOT "blue"', "or": '"a red cube" OR "a dog":3',
           "region": '"a red cube" @ left AND "a dog"'}
#: case -> (expression key, negation, corrector)
CASES = {"and-not": ("and-not", "plain", None), "or": ("or", "plain", None), "region": ("region", "plain", None),
         "perp": ("and-not", "perp", None), "corrector": ("and-not", "plain", "ula")}
FAMILIES = ["compdiff-world", "stable-diffusion", "sdxl", "sd3", "flux", "pixart"]


def _save(family: str, folder: Path) -> None:
    import flow_tiny
    import pixart_tiny
    import sd_tiny
    import sdxl_tiny

    save = {"stable-diffusion": sd_tiny.save_pipeline, "sdxl": sdxl_tiny.save_pipeline,
            "sd3": flow_tiny.save_sd3, "flux": flow_tiny.save_flux, "pixart": pixart_tiny.save_pixart}
    save[family](folder)


def _backend(family: str, folder: Path):
    from compdiff.backends import DiffusersBackend, FluxBackend, PixArtBackend, SD3Backend, SDXLBackend

    classes = {"stable-diffusion": DiffusersBackend, "sdxl": SDXLBackend, "sd3": SD3Backend, "flux": FluxBackend,
               "pixart": PixArtBackend}
    return classes[family].from_pretrained(folder) if family in classes else None


@pytest.fixture(scope="module", params=FAMILIES)
def opened(request, tmp_path_factory, tiny_model):
    family = request.param
    if family == "compdiff-world":
        folder = Path(tiny_model)
    else:
        folder = tmp_path_factory.mktemp(family) / "pipe"
        _save(family, folder)
    m = cd.open_model(folder)
    assert m.family == family
    store = ModelStore([str(folder)], shipped=False, device="cpu", device_flag="cpu")
    return family, folder, m, _backend(family, folder), store


def _hwc(u8: torch.Tensor) -> np.ndarray:
    return u8.permute(0, 2, 3, 1).numpy()


def _cli(folder: Path, expr: str, sampler: str, negation: str, corrector: str | None, out: Path,
         extra: tuple[str, ...] = ()) -> np.ndarray:
    args = ["sample", expr, "--model", str(folder), "--n", str(N), "--seed", str(SEED), "--steps", str(STEPS),
            "--sampler", sampler, "--negation", negation, "--out-dir", str(out), "--no-progress", *extra]
    assert main(args + (["--correct", corrector] if corrector else [])) == 0
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(out.glob("*.png"))])


@pytest.mark.parametrize("case", list(CASES))
def test_every_door_gives_the_same_images(opened, case, tmp_path):
    family, folder, m, backend, store = opened
    key, negation, kind = CASES[case]
    expr = (WORLD if family == "compdiff-world" else PROMPTS)[key]
    sampler = m.default_sampler
    corrector = Corrector(kind) if kind else None
    seeds = list(range(SEED, SEED + N))
    options = dict(sampler=sampler, steps=STEPS, negation=negation, corrector=corrector)

    library = _hwc(cd.generate(m, expr, seeds, **options).uint8())
    doors = {"cli": _cli(folder, expr, sampler, negation, kind, tmp_path / "cli")}
    name = next(iter(store.entries))
    web = core.generate(core.Settings(name, expr, n=N, seed=SEED, sampler=sampler, steps=STEPS, negation=negation,
                                      corrector=kind or core.CORRECTOR_OFF), store, Limits())
    doors["web"] = web.raw
    spec = EvalSpec(task="objects", n=N, sampler=sampler, steps=STEPS, spacing=m.spacing, seed=SEED,
                    guidance_scale=m.default_scale, batch_size=N, negation=negation, correct=kind,
                    corrector_steps=Corrector("ula").steps, clip_x0=m.clip_x0)
    doors["eval"] = _hwc(to_uint8(sample_images(m, [expr] * N, spec)))
    if backend is not None:
        doors["backend"] = _hwc(to_uint8(backend.generate(expr, n=N, seeds=seeds, **options)))
    for door, images in doors.items():
        assert images.dtype == np.uint8 and images.shape == library.shape, door
        assert np.array_equal(images, library), f"{family} {case}: {door} differs from compdiff.generate by up to " \
            f"{np.abs(images.astype(int) - library.astype(int)).max()}/255"
    if case == "and-not":  # the command the page prints writes the same images (as a grid)
        command = shlex.split(web.command)
        assert command[:2] == ["compdiff", "sample"] and command[-2:] == ["--out", "composed.png"]
        assert main(command[1:-1] + [str(tmp_path / "web.png"), "--no-progress"]) == 0
        write_grid_uint8(library, tmp_path / "expected.png")
        assert np.array_equal(np.asarray(Image.open(tmp_path / "web.png")), np.asarray(Image.open(tmp_path /
                                                                                                    "expected.png")))


@pytest.mark.parametrize("how", ["lift", "cached-lift"])
def test_every_door_gives_the_same_selected_images(opened, how, tmp_path):
    """Selection while sampling (issue #34) through every door, every family: --select with 2 candidates per
    image gives bit-identical kept images from the CLI's --out-dir, the web app, compdiff.generate, the
    evaluation and the backend, the same kept seeds and lift tables in the CLI's JSON and the page's."""
    import json

    from compdiff.cli.sample import sidecar_name

    family, folder, m, backend, store = opened
    expr = (WORLD if family == "compdiff-world" else PROMPTS)["and-not"]
    sampler, seeds = m.default_sampler, list(range(SEED, SEED + N))
    options = dict(sampler=sampler, steps=STEPS, select=how, candidates=2)
    lib = cd.generate(m, expr, seeds, **options)
    library = _hwc(lib.uint8())
    assert lib.select == how and len(lib.kept) == N and all(k in (0, 1) for k in lib.kept)
    K = len(cd.parse(expr).terms())  # its last term is the NOT
    assert all([w for _, w, _ in t] == ["present"] * (K - 1) + ["absent"] for t in lib.lifts)
    assert all(np.isfinite(v) for t in lib.lifts for _, _, v in t)
    assert lib.lift_evals == (N * 2 * (K + 1) * 10 if how == "lift" else 0)
    out = tmp_path / "cli"
    doors = {"cli": _cli(folder, expr, sampler, "plain", None, out, ("--select", how, "--candidates", "2"))}
    records = [json.loads(sidecar_name(p).read_text()) for p in sorted(out.glob("*.png"))]
    assert [{k: r[k] for k in lib.record(i)} for i, r in enumerate(records)] == [lib.record(i) for i in range(N)]
    name = next(iter(store.entries))
    web = core.generate(core.Settings(name, expr, n=N, seed=SEED, sampler=sampler, steps=STEPS, select=how,
                                      candidates=2), store, Limits())
    doors["web"] = web.raw
    assert web.records == [lib.record(i) for i in range(N)]
    spec = EvalSpec(task="objects", n=N, sampler=sampler, steps=STEPS, spacing=m.spacing, seed=SEED,
                    guidance_scale=m.default_scale, batch_size=N, clip_x0=m.clip_x0, select=how, candidates=2)
    doors["eval"] = _hwc(to_uint8(sample_images(m, [expr] * N, spec)))
    if backend is not None:
        doors["backend"] = _hwc(to_uint8(backend.generate(expr, n=N, seeds=seeds, **options)))
    for door, images in doors.items():
        assert images.shape == library.shape and np.array_equal(images, library), f"{family} {how}: {door}"


def test_wrong_argument_types_are_input_errors_naming_the_argument(opened):
    family, _, m, backend, _ = opened
    expr = (WORLD if family == "compdiff-world" else PROMPTS)["and-not"]
    bad = [({"scheduler": 3}, "scheduler"), ({"scheduler": "NotAScheduler"}, "scheduler"),
           ({"steps": "2"}, "steps"), ({"sampler": "nope"}, "sampler"), ({"spacing": "middle"}, "spacing"),
           ({"corrector": "ula"}, "corrector"), ({"guidance_scale": "7"}, "guidance_scale"),
           ({"batch_size": 0}, "batch_size"), ({"eta": 2.0}, "eta")]
    for kwargs, name in bad:
        with pytest.raises(cd.InputError, match=name):
            cd.generate(m, expr, [0], **kwargs)
    with pytest.raises(cd.InputError, match="seeds"):
        cd.generate(m, expr, 3)
    with pytest.raises(cd.InputError, match="model"):
        cd.generate(str(m.name), expr, [0])
    if backend is None:
        with pytest.raises(cd.InputError, match="scheduler applies to diffusers pipelines"):
            cd.generate(m, expr, [0], scheduler="pipeline")
        return
    # the CLI's word works everywhere: the pipeline's own scheduler (issue #31: it was an AttributeError)
    own = backend.generate('"a red cube"', n=1, seeds=[0], steps=STEPS, scheduler="pipeline")
    same = backend.generate('"a red cube"', n=1, seeds=[0], steps=STEPS, scheduler=backend.scheduler)
    assert own.shape[0] == 1 and torch.equal(own, same)
    with pytest.raises(cd.InputError, match="sampler or corrector"):
        backend.generate(expr, n=1, steps=STEPS, scheduler="pipeline", sampler="ddim")
