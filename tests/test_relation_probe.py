"""bench/relation_probe.py: the denoising-loss probe of whether a model reads a word."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from compdiff.schedule import NoiseSchedule
from compdiff.world.dataset import WorldDataset
from compdiff.world.holdout import get_split

SPEC = importlib.util.spec_from_file_location("relation_probe", Path(__file__).parents[1] / "bench" / "relation_probe.py")
probe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe)

N = 12


@pytest.fixture(scope="module")
def ds():
    return WorldDataset("relations", 32, seed=5, hold_out=get_split("relations", "default"), max_objects=3)


def test_labels_true_and_both_false_ones_false(ds):
    task, rng = ds.task, np.random.default_rng(0)
    skipped = 0
    for i in range(300):
        scene = ds.scene(i)
        got = probe.labels(task, scene, rng)
        if got is None:  # every true relation's flip holds too: two objects alike on both sides
            skipped += 1
            assert all(task.holds(type(c)(c.first, probe._FLIP[c.rel], c.second), scene)
                       for c in task.true_concepts(scene))
            continue
        true, flipped, recolored = got
        assert task.holds(true, scene) and not task.holds(flipped, scene) and not task.holds(recolored, scene)
        assert flipped.first == true.first and flipped.second == true.second and flipped.rel != true.rel
        assert recolored.rel == true.rel and recolored.first.color != true.first.color
    assert skipped < 30


class Oracle:
    """Predicts the exact noise for a label that holds in its image's scene, and the noise plus
    ``miss`` otherwise (``sign`` -1: the other way round); the null condition gets the noise plus
    ``miss / 2``. The probe scores the whole set in one batch through compdiff.lift, whose forward is
    condition-major: row r is scene r mod N."""

    def __init__(self, ds, sched, sign=1.0, miss=0.1):
        self.task, self.sched, self.sign, self.miss = ds.task, sched, sign, miss
        rng = np.random.default_rng(0)  # which scenes the probe keeps does not depend on the draw
        index = [i for i in range(3 * N) if probe.labels(self.task, ds.scene(i), rng) is not None][:N]
        self.scenes = [ds.scene(i) for i in index]
        self.images = ds.batch(index).image
        self.null = ds.task.null_row()[0]

    def __call__(self, xt, t, cond):
        G = xt.shape[0] // N
        eps = self.sched.eps_from_x0(xt, self.images.repeat(G, 1, 1, 1), t)
        scenes = self.scenes * G
        null = torch.tensor([bool(torch.equal(r, self.null)) for r in cond])
        holds = torch.tensor([not z and self.task.holds(self.task.row_concept(r), s)
                              for r, s, z in zip(cond, scenes, null)])
        wrong = (holds if self.sign < 0 else ~holds).float()
        wrong = torch.where(null, torch.full_like(wrong, 0.5), wrong)
        return eps + self.miss * wrong.reshape(-1, 1, 1, 1)


def run(den, ds):
    return probe.measure(den, ds.task.encoder(), NoiseSchedule.cosine(), ds, N, [200, 800], 2, seed=3, batch=N)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_a_model_that_reads_the_words_wins_every_image_and_its_opposite_none(ds, sign):
    out = run(Oracle(ds, NoiseSchedule.cosine(), sign), ds)
    for name in probe.PROBES:
        for cell in out["probes"][name].values():
            assert cell["true lower"] == (1.0 if sign > 0 else 0.0)
            assert (cell["gap"] > 0) == (sign > 0)


def test_a_model_blind_to_a_word_ties_on_it(ds):
    def reads_color_only(xt, t, cond):  # row: shape1, color1, size1, material1, rel, ...
        return 0.5 * xt + 0.01 * cond[:, 1].float().reshape(-1, 1, 1, 1)
    out = run(reads_color_only, ds)
    flipped = out["probes"]["relation flipped"]["all"]
    assert flipped["true lower"] == 0.5 and flipped["gap"] == 0.0  # the same noise under every label: ties
    assert out["probes"]["color changed"]["all"]["gap"] != 0.0
