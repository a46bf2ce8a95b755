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
