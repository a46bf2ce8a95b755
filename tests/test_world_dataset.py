"""WorldDataset: deterministic per index, batch() == stacked __getitem__, joint mode."""
import pytest
import torch

from compdiff.world import TASKS, JointSample, Sample, WorldDataset, get_task


@pytest.mark.parametrize("task", TASKS)
def test_deterministic_and_batch_equals_items(task):
    ds = WorldDataset(task, 16, seed=4, null_prob=0.3, length=1000)
    idx = [7, 0, 999, 7, 42]
    items = [ds[i] for i in idx]
    again = WorldDataset(task, 16, seed=4, null_prob=0.3, length=1000)[999]  # fresh, any order
    assert torch.equal(again.image, items[2].image) and torch.equal(again.cond, items[2].cond)
    b = ds.batch(idx)
    assert isinstance(b, Sample)
    assert torch.allclose(b.image, torch.stack([s.image for s in items]), atol=1e-6)
    assert torch.equal(b.cond, torch.stack([s.cond for s in items]))
    assert b.is_null.tolist() == [s.is_null for s in items]
    t = get_task(task)
    assert b.image.shape == (5, 3, 16, 16) and b.cond.dtype == t.dtype
    assert b.image.min() >= -1 and b.image.max() <= 1
    assert not torch.equal(ds[1].image, ds[2].image)
    assert WorldDataset(task, 16, seed=5)[0].cond.shape == (t.row_dim,)


@pytest.mark.parametrize("task", TASKS)
def test_labels_true_and_null_rows(task):
    ds = WorldDataset(task, 16, seed=0, null_prob=0.5, length=100)
    t = ds.task
    b = ds.batch(range(60))
    assert 10 < int(b.is_null.sum()) < 50
    assert not b.cond[b.is_null].any()
    for i in range(60):
        if not b.is_null[i]:
            (c,) = t.from_tensor(b.cond[i:i + 1])
            assert t.holds(c, ds.scene(i))


@pytest.mark.parametrize("task,kmax", [("objects", 5), ("relations", 40), ("attributes", 4)])
def test_joint_mode(task, kmax):
    ds = WorldDataset(task, 16, seed=1, joint=True)
    s = ds[3]
    assert isinstance(s, JointSample) and s.cond.shape[0] == kmax and s.mask.shape == (kmax,)
    true = ds.task.true_concepts(ds.scene(3))
    n = int(s.mask.sum())
    assert n == len(true) and s.mask[:n].all() and not s.cond[n:].any()
    assert ds.task.to_tensor(true).tolist() == s.cond[:n].tolist()
    b = ds.batch([3, 4])
    assert torch.equal(b.cond[0], s.cond) and torch.equal(b.mask[0], s.mask)


def test_joint_cap_and_bad_index():
    ds = WorldDataset("relations", 16, seed=1, joint=True, max_concepts=4, length=10)
    s = ds[0]
    assert s.cond.shape == (4, 9) and s.mask.all()
    assert all(ds.task.holds(c, ds.scene(0)) for c in ds.task.from_tensor(s.cond))
    with pytest.raises(IndexError):
        ds[10]


@pytest.mark.parametrize("task,cap", [("objects", 2), ("relations", 2), ("objects", 1)])
def test_max_objects_caps_scenes(task, cap):
    ds = WorldDataset(task, 16, seed=3, length=400, max_objects=cap)
    counts = [len(ds.scene(i).objects) for i in range(400)]
    assert max(counts) == cap and min(counts) == get_task(task).min_objects
    j = WorldDataset(task, 16, seed=3, length=400, joint=True, max_objects=cap)
    assert int(j.batch(range(50)).mask.sum(1).max()) <= get_task(task).max_true(cap)
    full = WorldDataset(task, 16, seed=3, length=400)  # default: the task's own range, untouched
    assert max(len(full.scene(i).objects) for i in range(400)) == get_task(task).max_objects


def test_max_objects_out_of_range():
    with pytest.raises(ValueError, match=r"max objects per scene for task relations must be in \[2, 5\]"):
        WorldDataset("relations", 16, seed=0, max_objects=1)
    with pytest.raises(ValueError, match="attributes"):
        WorldDataset("attributes", 16, seed=0, max_objects=2)
