"""compdiff.open_model: one way to open any model, with the family detected from the folder."""
import json

import pytest
import sd_tiny

import compdiff as cd
from compdiff.backends import BACKENDS
from compdiff.errors import InputError


def test_a_shipped_model_by_name():
    m = cd.open_model("relations")
    assert m.family == "compdiff-world" and m.task == "relations"
    assert m.sampling == {"sampler": "ddpm", "steps": 100} and m.latent_shape == (3, 32, 32)
    assert m.clip_x0 == 1.0 and m.default_scale == 3.0
    assert m.sampling["sampler"] in cd.SAMPLERS


def test_a_diffusers_pipeline_folder(tmp_path):
    pytest.importorskip("transformers")
    sd_tiny.save_pipeline(tmp_path / "pipe")
    m = cd.open_model(tmp_path / "pipe")
    assert m.family == "stable-diffusion" and m.task is None and m.clip_x0 is None and m.default_scale == 7.5
    assert m.latent_shape[0] == 4 and m.sampling == {}


def test_the_families_are_registered():
    cd.open_model("objects")
    assert {"compdiff-world", "stable-diffusion", "sdxl", "sd3", "flux", "pixart"} <= set(BACKENDS)


@pytest.mark.parametrize("make,message", [
    (lambda p: str(p / "missing"), "neither a shipped model"),
    (lambda p: "hub-org/some-model", "never downloads"),
    (lambda p: (p / "f.txt").write_text("x") and str(p / "f.txt"), "is a file"),
    (lambda p: (p / "d").mkdir() or str(p / "d"), "is not a model compdiff can open"),
    (lambda p: (p / "j").mkdir() or (p / "j" / "compdiff.json").write_text("[1, 2]") and str(p / "j"),
     "expected a JSON object"),
    (lambda p: (p / "k").mkdir() or (p / "k" / "compdiff.json").write_text("{oops") and str(p / "k"),
     "compdiff.json: not readable JSON"),
])
def test_what_is_not_a_model_is_a_clear_input_error(tmp_path, make, message):
    with pytest.raises(InputError, match=message):
        cd.open_model(make(tmp_path))


def test_a_recommended_sampler_must_be_registered(tmp_path):
    import shutil

    from compdiff.models import shipped_models

    d = tmp_path / "m"
    shutil.copytree(shipped_models()["objects"], d)
    meta = json.loads((d / "compdiff.json").read_text())
    (d / "compdiff.json").write_text(json.dumps({**meta, "sampling": {"sampler": "dpmpp-2m", "steps": 20}}))
    assert cd.open_model(d).sampling == {"sampler": "dpmpp-2m", "steps": 20}
    (d / "compdiff.json").write_text(json.dumps({**meta, "sampling": {"sampler": "heun"}}))
    with pytest.raises(InputError, match="sampler among"):
        cd.open_model(d)
