"""No code runs from a model folder and no pickle is ever loaded from one (issue #32, items 3 and 4).

Each case edits a tiny pipeline folder so that it WOULD unpickle or import if allowed: a pickle whose
``__reduce__`` creates a marker file, a module on ``sys.path`` that creates the marker when imported,
and a spy on ``torch.load`` / ``pickle.load`` that creates it when anything tries to unpickle. Every
case must end in an InputError (exit 2 from the CLI) naming model_index.json or the weight file and
the entry, and the marker must never appear.
"""
from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch

import compdiff
import flow_tiny
import pixart_tiny
import sd_tiny
from compdiff.cli import main
from compdiff.errors import InputError

pytestmark = pytest.mark.usefixtures("no_network")
MODULE = "compdiff_marker_payload"


class _Payload:
    """Unpickling this creates the marker file (``open(path, "w")``): benign, but visible."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    sd_tiny.save_pipeline(root / "sd")
    pixart_tiny.save_pixart(root / "pixart")
    flow_tiny.save_sd3(root / "sd3")
    flow_tiny.save_flux(root / "flux")
    return root


@pytest.fixture
def marker(tmp_path, monkeypatch):
    """The marker path; torch.load, pickle.load and pickle.loads create it when called, and a module on a
    temporary sys.path creates it when imported."""
    path = tmp_path / "MARKER"

    def spy(*args, **kwargs):
        path.write_text("unpickled")
        raise AssertionError("something tried to unpickle")

    monkeypatch.setattr(torch, "load", spy)
    monkeypatch.setattr(pickle, "load", spy)
    monkeypatch.setattr(pickle, "loads", spy)
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(f"open({str(path)!r}, 'w').write('imported')\nclass X:\n    pass\n")
    monkeypatch.syspath_prepend(str(code))
    sys.modules.pop(MODULE, None)
    yield path
    sys.modules.pop(MODULE, None)


def _copy(folders: Path, family: str, dst: Path) -> Path:
    shutil.copytree(folders / family, dst)
    return dst


def _set_entry(folder: Path, name: str, entry: list) -> None:
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index[name] = entry
    index_file.write_text(json.dumps(index))


def _pickle_weights(component: Path, marker: Path, keep_safetensors: bool = False) -> None:
    """component/ holds a pickled checkpoint whose unpickling creates the marker (written with the real
    pickle module: the spy only replaces the loaders)."""
    if not keep_safetensors:
        for f in component.glob("*.safetensors"):
            f.unlink()
    with open(component / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"weight": _Payload(marker)}, f)


# ---- cases: (family, edit(folder, marker), entry, what the message says) -------------------------------
def _sd_automodel(folder: Path, marker: Path) -> None:  # the repro: AutoModel escapes the pickle check
    _set_entry(folder, "unet", ["diffusers", "AutoModel"])
    _pickle_weights(folder / "unet", marker)


def _pixart_tokenizer_unet(folder: Path, marker: Path) -> None:  # the repro: a model in a tokenizer slot
    _set_entry(folder, "tokenizer", ["diffusers", "UNet2DModel"])
    shutil.copy(folder / "vae" / "config.json", folder / "tokenizer" / "config.json")
    _pickle_weights(folder / "tokenizer", marker)
    (folder / "tokenizer" / "stray.safetensors").write_bytes(b"")


def _pickle_only(name: str):
    def edit(folder: Path, marker: Path) -> None:
        _pickle_weights(folder / name, marker)
    return edit


def _module(name: str, library: str = MODULE, cls: str = "X"):
    def edit(folder: Path, marker: Path) -> None:
        _set_entry(folder, name, [library, cls])
    return edit


CASES = [
    ("sd", _sd_automodel, "unet", "not a model"),
    ("pixart", _pixart_tokenizer_unet, "tokenizer", "not a tokenizer"),
    ("sd", _pickle_only("unet"), "unet", "pickled weights"),
    ("sd", _pickle_only("text_encoder"), "text_encoder", "pickled weights"),
    ("pixart", _pickle_only("transformer"), "transformer", "pickled weights"),
    ("sd3", _pickle_only("vae"), "vae", "pickled weights"),
    ("flux", _pickle_only("text_encoder_2"), "text_encoder_2", "pickled weights"),
    ("sd", _module("unet"), "unet", "diffusers and transformers only"),
    ("pixart", _module("transformer"), "transformer", "diffusers and transformers only"),
    ("sd3", _module("transformer"), "transformer", "diffusers and transformers only"),
    ("flux", _module("transformer"), "transformer", "diffusers and transformers only"),
    ("sd3", _module("text_encoder_3"), "text_encoder_3", "diffusers and transformers only"),
    ("pixart", _module("transformer", "os", "system"), "transformer", "diffusers and transformers only"),
    ("flux", _module("scheduler", "diffusers", "DiffusionPipeline"), "scheduler", "not a scheduler"),
    ("sd3", _module("vae", "transformers", "pipeline"), "vae", "not a model"),
    ("sd", _module("tokenizer", "diffusers", "UNet2DModel"), "tokenizer", "not a tokenizer"),
]


@pytest.mark.parametrize("family, edit, entry, message", CASES,
                         ids=[f"{c[0]}-{c[2]}-{c[3].split()[-1]}" for c in CASES])
def test_nothing_is_unpickled_or_imported(folders, tmp_path, marker, family, edit, entry, message):
    folder = _copy(folders, family, tmp_path / "pipe")
    edit(folder, marker)
    with pytest.raises(InputError) as err:
        compdiff.open_model(folder)
    text = str(err.value)
    assert message in text and repr(entry) in text, text
    assert "model_index.json" in text or "diffusion_pytorch_model.bin" in text, text
    assert not marker.exists(), f"the marker was written ({marker.read_text()})"
    assert MODULE not in sys.modules


def test_the_cli_refuses_with_exit_2_before_any_import(folders, tmp_path, marker, capsys):
    folder = _copy(folders, "pixart", tmp_path / "pipe")
    _module("transformer")(folder, marker)
    assert main(["sample", "a cat", "--model", str(folder), "--n", "1", "--steps", "1",
                 "--out", str(tmp_path / "x.png"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model_index.json" in err and "'transformer'" in err and MODULE in err
    assert not marker.exists() and not (tmp_path / "x.png").exists()
