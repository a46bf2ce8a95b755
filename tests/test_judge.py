"""The shipped judge: loads safely, reads fresh renders above an accuracy floor.

The full accuracy figures (2000 scenes per task) are in BENCHMARKS.md, from
bench/judge_accuracy.py; the floors here sit a little below them so that
broken weights or decoding fail loudly. Seeds here are never used in training
(bench/train_judge.py trains on 1_000_000 .. 1_600_000).
"""

import json
import shutil
from pathlib import Path

import pytest
import torch

from compdiff.eval import Judge, JudgeWeightsError, load_judge, measure
from compdiff.eval.judge import WEIGHTS_ROOT
from compdiff.world.render import render
from compdiff.world.scene import Scene, sample_scenes

SEED = 987_654_321
N = 64


@pytest.fixture(scope="module")
def judge() -> Judge:
    return load_judge(32)


def test_shipped_weights_load_in_eval_mode(judge):
    folder = WEIGHTS_ROOT / "judge32"
    assert not judge.training
    assert judge.config.resolution == 32
    assert (folder / "model.safetensors").stat().st_size <= 5 * 2**20
    assert (folder / "README.md").is_file()
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["train"]["steps"] > 0


@pytest.mark.parametrize(
    "task, min_recall, min_precision, min_agree",
    [
        ("objects", 0.98, 0.98, 0.97),
        ("relations", 0.98, 0.98, 0.97),
        ("attributes", 0.99, 0.99, 0.97),
    ],
)
def test_accuracy_floor_on_fresh_renders(judge, task, min_recall, min_precision, min_agree):
    acc = measure(judge, task, N, SEED, concepts_per_scene=4)
    assert acc.recall >= min_recall, acc
    assert acc.precision >= min_precision, acc
    assert acc.agreement >= min_agree, acc
    assert acc.false_concepts >= N  # the perturbation found false concepts


def test_read_and_features_shapes(judge):
    free = sample_scenes(6, seed=SEED + 10)
    centered = sample_scenes(5, seed=SEED + 11, layout="centered")
    read_free = judge.read(render(free, 32), layout="free")
    read_centered = judge.read(render(centered, 32), layout="centered")
    assert [type(s) for s in read_free] == [Scene] * 6
    assert all(s.layout == "free" for s in read_free)
    assert all(s.layout == "centered" and len(s.objects) == 1 for s in read_centered)
    # the main object of a centered scene maps back near its true (unzoomed) center
    for true, read in zip(centered, read_centered):
        assert abs(true.main.x - read.main.x) < 0.03 and abs(true.main.y - read.main.y) < 0.03
    images = render(free, 32)
    feats = judge.features(images)
    assert feats.shape == (6, judge.feature_dim) and feats.dtype == torch.float32
    # one image's features do not depend on the rest of the batch (eval-mode BatchNorm)
    assert torch.allclose(judge.features(images[:1]), feats[:1], atol=1e-5)


def test_bad_inputs(judge):
    with pytest.raises(ValueError, match="expects images"):
        judge.read(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="layout"):
        judge.read(torch.zeros(1, 3, 32, 32), layout="grid")
    with pytest.raises(JudgeWeightsError, match="resolution"):
        load_judge(17)


def _copy_weights(tmp_path: Path) -> Path:
    folder = tmp_path / "judge32"
    shutil.copytree(WEIGHTS_ROOT / "judge32", folder, ignore=shutil.ignore_patterns("ckpt"))
    return folder


def test_refuses_a_pickle_in_place_of_safetensors(judge, tmp_path):
    folder = _copy_weights(tmp_path)
    torch.save(judge.state_dict(), folder / "model.safetensors")  # a pickle (zip) file
    with pytest.raises(JudgeWeightsError, match="pickle"):
        load_judge(32, folder)
    torch.save(judge.state_dict(), folder / "model.safetensors", _use_new_zipfile_serialization=False)
    with pytest.raises(JudgeWeightsError, match="pickle"):
        load_judge(32, folder)
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(JudgeWeightsError, match="not a valid safetensors"):
        load_judge(32, folder)


def test_refuses_mismatched_config(tmp_path):
    folder = _copy_weights(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["widths"] = [8, 8, 8]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(JudgeWeightsError, match="do not match"):
        load_judge(32, folder)


def test_a_blank_centered_image_holds_no_object(judge):
    """The centered layout reads at most one object: a blank floor (or a sample that drew none)
    reads as empty, so no attribute can hold on it."""
    from compdiff.world import get_task

    blank = render([Scene((), layout="centered")], 32)
    noise = torch.rand(1, 3, 32, 32) * 0.1 - 0.2  # a dim, object-free image
    scenes = judge.read(torch.cat([blank, noise]), layout="centered")
    assert [len(s.objects) for s in scenes] == [0, 0]
    task = get_task("attributes")
    assert not any(task.holds(task.parse(w), s) for w in ("cube", "red", "large", "metal") for s in scenes)
