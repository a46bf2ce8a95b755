"""`accelerate launch --multi_gpu --num_processes 2 -m compdiff eval ...` (two CPU processes where there is no
GPU) gives the same files as one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes
ARGS = ["eval", "--task", "objects", "--components", "1,2", "--n", "6", "--batch-size", "2", "--steps", "2",
        "--methods", "composed,composed-mean", "--no-progress"]


def test_two_processes_write_what_one_process_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "compdiff", *ARGS, "--out", str(one)], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    accelerate = Path(sys.executable).with_name("accelerate")
    sharded = subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                              "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "compdiff", *ARGS,
                              "--out", str(two)], env=ENV, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    # two processes ran, each knowing it is one of two (accelerate's --cpu would have started one)
    assert "process 1 of 2" in sharded.stderr and "process 2 of 2" in sharded.stderr, sharded.stderr[-3000:]
    assert sharded.stdout.count("wrote ") == 1  # the first process alone reports and writes
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert a == b  # every cell: accuracy, per-image success, FD-judge, to the last bit
    for grid in sorted(p.name for p in one.glob("grid_*.png")):
        assert (one / grid).read_bytes() == (two / grid).read_bytes()
    assert (one / "table.md").read_text() == (two / "table.md").read_text()


def test_each_process_samples_only_its_own_chunks(monkeypatch):
    """generate() with shard (rank, 2): rank r runs chunks c with c % 2 == r; the exchange (here the
    identity, as if each process were alone) returns only those, and together they are the full run."""
    import accelerate.utils
    import torch

    import compdiff as cd
    from compdiff.eval.composition import EvalSpec, Method, generate
    from compdiff.eval.concept_sets import concept_sets
    from compdiff.world.tasks import get_task

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda items: items)
    task, m = get_task("objects"), cd.open_model("objects")
    method = Method("composed", m.denoiser, m.encoder, "sum", False, m.schedule)
    spec = EvalSpec(task="objects", n=5, steps=2, batch_size=2)
    sets = concept_sets(task, 1, 5, spec.seed)
    full = generate(method, task, sets, spec, (3, 32, 32))
    part0 = generate(method, task, sets, spec, (3, 32, 32), shard=(0, 2))  # chunks 0, 2: sets 0, 1, 4
    part1 = generate(method, task, sets, spec, (3, 32, 32), shard=(1, 2))  # chunk 1: sets 2, 3
    assert part0.shape[0] == 3 and part1.shape[0] == 2
    assert torch.equal(torch.cat([part0[:2], part1, part0[2:]]), full)
