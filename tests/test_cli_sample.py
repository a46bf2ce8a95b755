"""compdiff sample with a tiny model trained in the test."""
import pytest
import torch
from PIL import Image

from compdiff.cli import main


def test_sample_writes_a_png_grid(tiny_model, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc = main(["sample", '"0.3,0.5" AND "0.7,0.5" AND NOT "0.5,0.2"', "--model", tiny_model, "--n", "3",
               "--steps", "3", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "-3.000  0.5,0.2" in printed and str(out) in printed
    img = Image.open(out)
    assert img.size[0] > 3 * 128 and img.size[1] >= 128  # 16x16 images upscaled to >= 128 px


@pytest.mark.parametrize("expr,extra,message", [
    ('"0.3,0.5" AND', [], "dangling AND"),
    ('"0.3,0.5" AND "1.5,0.5"', [], "out of range"),
    ('"0.3,0.5"', ["--n", "0"], "--n"),
    ('"0.3,0.5"', ["--out", "x.jpg"], ".png"),
    ('"0.3,0.5"', ["--device", "gpu0"], "--device 'gpu0': not a device"),
    ('"0.3,0.5"', ["--device", "meta"], "runs on cpu or cuda"),
])
def test_bad_input_exits_2_without_a_file(tiny_model, tmp_path, capsys, expr, extra, message):
    out = tmp_path / "grid.png"
    args = ["sample", expr, "--model", tiny_model, "--steps", "2", "--out", str(out), "--no-progress", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("compdiff: error:") and message in err
    assert not out.exists() and not list(tmp_path.glob("*.png"))


def test_missing_model_says_compdiff_never_downloads(tmp_path, capsys):
    assert main(["sample", '"0.3,0.5"', "--model", "runwayml/stable-diffusion-v1-5",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert "never downloads" in capsys.readouterr().err


def test_sample_with_a_local_diffusers_pipeline(tmp_path, capsys):
    from sd_tiny import save_pipeline

    folder = tmp_path / "sd"
    save_pipeline(folder)
    out = tmp_path / "castle.png"
    rc = main(["sample", "--model", str(folder), 'a castle AND NOT "black and white"', "--n", "2",
               "--steps", "3", "--guidance-scale", "7.5", "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert "-7.500  black and white" in capsys.readouterr().out
    assert Image.open(out).size[0] > 2 * 64


def test_sample_or_perp_and_corrector_flags(tiny_model, tmp_path, capsys):
    out = tmp_path / "or.png"
    rc = main(["sample", '("0.3,0.5" OR "0.7,0.5":3) AND NOT "0.5,0.2"', "--model", tiny_model, "--n", "4",
               "--steps", "4", "--negation", "perp", "--correct", "ula", "--corrector-steps", "1",
               "--out", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "clause 1 (pi = 0.250)" in printed and "clause 2 (pi = 0.750)" in printed
    assert out.is_file()
    assert main(["sample", 'NOT ("0.3,0.5" OR "0.7,0.5")', "--model", tiny_model, "--out", str(tmp_path / "x.png")]) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_cuda_without_a_gpu_is_a_usage_error(tiny_model, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["sample", '"0.3,0.5"', "--model", tiny_model, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA GPU here; use --device cpu" in err and not out.exists()


def test_device_cpu_equals_the_default_here(tiny_model, tmp_path):
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path, extra in zip(paths, (["--device", "cpu"], [])):
        assert main(["sample", '"0.3,0.5"', "--model", tiny_model, "--n", "2", "--steps", "2",
                     "--out", str(path), "--no-progress", *extra]) == 0
    if not torch.cuda.is_available():
        assert paths[0].read_bytes() == paths[1].read_bytes()


def _with_sampling(tiny_model, tmp_path, sampling):
    import json
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    meta = json.loads((model / "compdiff.json").read_text())
    meta["sampling"] = sampling
    (model / "compdiff.json").write_text(json.dumps(meta))
    return str(model)


def test_the_model_card_sampler_is_the_default_and_flags_override_it(tiny_model, tmp_path, capsys):
    model = _with_sampling(tiny_model, tmp_path, {"sampler": "ddpm", "steps": 3})
    args = ["sample", '"0.3,0.5"', "--model", model, "--n", "1", "--out", str(tmp_path / "a.png"), "--no-progress"]
    assert main(args) == 0
    assert "sampler: ddpm, 3 steps" in capsys.readouterr().out
    assert main(args + ["--sampler", "ddim", "--steps", "2"]) == 0
    assert "sampler: ddim, 2 steps" in capsys.readouterr().out
    assert main(["sample", '"0.3,0.5"', "--model", tiny_model, "--n", "1", "--steps", "2",
                 "--out", str(tmp_path / "b.png"), "--no-progress"]) == 0
    assert "sampler: ddim, 2 steps" in capsys.readouterr().out  # no recommendation: ddim


def test_a_bad_sampling_block_is_refused(tiny_model, tmp_path, capsys):
    model = _with_sampling(tiny_model, tmp_path, {"sampler": "heun"})
    out = tmp_path / "a.png"
    assert main(["sample", '"0.3,0.5"', "--model", model, "--out", str(out)]) == 2
    assert "'sampling' must be like" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmpp-2m", "euler"])
def test_every_registered_sampler_runs_from_the_cli(tiny_model, tmp_path, sampler):
    out = tmp_path / "s.png"
    assert main(["sample", '"0.3,0.5"', "--model", tiny_model, "--n", "2", "--steps", "3", "--sampler", sampler,
                 "--correct", "ula", "--out", str(out), "--no-progress"]) == 0 and out.is_file()


def test_a_sampler_registered_elsewhere_reaches_the_cli_without_edits(tiny_model, tmp_path):
    """The CLI reads compdiff.SAMPLERS: a sampler defined here (one function) is usable at once."""
    from compdiff.sampling import SAMPLERS, register_sampler, sample_ddim

    calls = []

    @register_sampler("test-only")
    def sample_test_only(fn, x_T, schedule, timesteps, *, generator=None, callback=None, clip_x0=None,
                         corrector=None):
        calls.append(len(schedule.run(timesteps)))
        return sample_ddim(fn, x_T, schedule, timesteps, generator=generator, callback=callback, clip_x0=clip_x0,
                           corrector=corrector)

    try:
        out = tmp_path / "t.png"
        assert main(["sample", '"0.3,0.5"', "--model", tiny_model, "--n", "1", "--steps", "4",
                     "--sampler", "test-only", "--out", str(out), "--no-progress"]) == 0
        assert calls == [4] and out.is_file()
        assert main(["sample", '"0.3,0.5"', "--model", tiny_model, "--sampler", "test-only", "--eta", "0.5",
                     "--out", str(tmp_path / "u.png"), "--no-progress"]) == 2  # no eta option: refused
    finally:
        SAMPLERS.pop("test-only")


# ---- selection: --select / --candidates --------------------------------------------------------------
SELECT_EXPR = '"0.3,0.3" AND "0.7,0.7" AND NOT "0.7,0.3"'


@pytest.mark.parametrize("how", ["lift", "cached-lift"])
def test_select_writes_each_kept_images_seed_and_lift_table_beside_it(tiny_model, tmp_path, capsys, how):
    import json

    import numpy as np

    import compdiff as cd
    from compdiff.cli.sample import sidecar_name
    from compdiff.select import candidate_seed

    out = tmp_path / "kept"
    assert main(["sample", SELECT_EXPR, "--model", tiny_model, "--n", "3", "--seed", "5", "--steps", "2",
                 "--select", how, "--candidates", "2", "--batch-size", "2", "--out-dir", str(out),
                 "--no-progress"]) == 0
    assert f"selection: {how}, 2 candidates" in capsys.readouterr().out
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["00000_seed5.png", "00001_seed6.png", "00002_seed7.png"]
    assert sorted(p.name for p in out.glob("*.json")) == [sidecar_name(p).name for p in pngs]
    lib = cd.generate(cd.open_model(tiny_model), SELECT_EXPR, [5, 6, 7], steps=2, select=how, candidates=2,
                      batch_size=2)
    for i, png in enumerate(pngs):
        rec = json.loads(sidecar_name(png).read_text())
        assert rec["file"] == png.name and rec["index"] == i and rec["image_seed"] == 5 + i
        assert rec["select"] == how and rec["candidates"] == 2 and rec["expression"] == str(cd.parse(SELECT_EXPR))
        assert rec["seed"] == candidate_seed(5, i, rec["candidate"]) == lib.kept_seeds[i]
        assert [(t["concept"], t["want"]) for t in rec["lift"]] == [("0.3,0.3", "present"), ("0.7,0.7", "present"),
                                                                      ("0.7,0.3", "absent")]
        assert [t["lift"] for t in rec["lift"]] == pytest.approx([v for _, _, v in lib.lifts[i]])
        assert rec["satisfied"] == (rec["margin"] > 0) == lib.satisfied[i]
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), lib.uint8()[i].permute(1, 2, 0).numpy())
    # the grid: one JSON beside it, one record per tile
    grid = tmp_path / "grid.png"
    assert main(["sample", SELECT_EXPR, "--model", tiny_model, "--n", "3", "--seed", "5", "--steps", "2",
                 "--select", how, "--candidates", "2", "--out", str(grid), "--no-progress"]) == 0
    rec = json.loads((tmp_path / "grid.json").read_text())
    assert rec["file"] == "grid.png" and [r["index"] for r in rec["images"]] == [0, 1, 2]
    assert [r["seed"] for r in rec["images"]] == list(lib.kept_seeds)
    assert "splitmix64" in rec["seed_rule"]


def test_select_options_are_checked_and_plain_sampling_writes_no_json(tiny_model, tmp_path, capsys):
    base = ["sample", SELECT_EXPR, "--model", tiny_model, "--n", "2", "--steps", "1", "--no-progress"]
    for extra, message in [(["--candidates", "2"], "--candidates needs --select"),
                           (["--select", "lift", "--candidates", "65"], "--candidates"),
                           (["--select", "lift", "--candidates", "0"], "--candidates"),
                           (["--select", "best"], "--select")]:
        assert main(base + extra + ["--out", str(tmp_path / "x.png")]) == 2
        assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    (tmp_path / "x.json").mkdir()  # the grid's record cannot be written: refused before any work
    assert main(base + ["--select", "lift", "--out", str(tmp_path / "x.png")]) == 2
    assert "x.json" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    assert main(base + ["--out-dir", str(tmp_path / "plain")]) == 0
    assert not list((tmp_path / "plain").glob("*.json"))
    help_text = __import__("subprocess").run(
        [__import__("sys").executable, "-m", "compdiff", "sample", "--help"], capture_output=True, text=True).stdout
    assert "splitmix64((s + i)" in help_text and "INDEX_seedSEED.json" in help_text
