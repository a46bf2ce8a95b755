"""A task defined only here, registered with ``register_task``, goes through the whole CLI.

"colors": a concept is one color word that some object in the scene has; scenes of 1-3
objects anywhere on the floor; the model reads the word as one token (like attributes).
If this file needs more than the Task subclass and ``register_task``, adding a task still
touches code outside world/tasks/: datasets (also the training device's batches, through
``Task.sample_rows``), concept sets, ``world render``, train, sample and eval all read the registry.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from compdiff.cli import main
from compdiff.world.concept_sets import concept_sets
from compdiff.world import COLORS, Scene, WorldDataset
from compdiff.world.batch import label_batch, render_batch, sample_scene_batch, scenes_from_tensors
from compdiff.world.tasks import Task, register_task, unregister_task
from compdiff.world.tasks.base import parse_error


class ColorsTask(Task[str]):
    name = "colors"
    help = "a color of some object, e.g. 'red'"
    max_k = 3
    min_objects, max_objects = 1, 3

    def parse(self, text: str) -> str:
        word = text.strip().lower()
        if word not in COLORS:
            raise parse_error(text, len(text) - len(text.lstrip()), f"unknown color {text.strip()!r}",
                              ", ".join(COLORS))
        return word

    def format(self, concept: str) -> str:
        return concept

    def holds(self, concept: str, scene: Scene) -> bool:
        return any(o.color == concept for o in scene.objects)

    def true_concepts(self, scene: Scene) -> list[str]:
        return [c for c in COLORS if self.holds(c, scene)]

    def sample_concept(self, scene: Scene, rng: np.random.Generator) -> str:
        true = self.true_concepts(scene)
        return true[int(rng.integers(len(true)))]

    def max_true(self, max_objects: int | None = None) -> int:
        return max_objects or self.max_objects

    def false_concept(self, concept: str, scene: Scene, rng: np.random.Generator) -> str | None:
        return self.first_false(lambda: COLORS[int(rng.integers(len(COLORS)))], scene)

    def condition_spec(self) -> dict:
        return {"cond_kind": "tokens", "vocab_sizes": (len(COLORS) + 1,)}

    def concept_row(self, concept: str) -> list[int]:
        return [COLORS.index(concept) + 1]

    def row_concept(self, row) -> str:
        return COLORS[int(row[0]) - 1]


@pytest.fixture
def colors():
    task = register_task(ColorsTask())
    yield task
    unregister_task("colors")


def test_the_toy_task_reaches_data_eval_sets_and_world_render(colors, tmp_path, capsys):
    batch = WorldDataset("colors", 16, seed=0, null_prob=0.0).batch([0, 1, 2])
    assert batch.image.shape == (3, 3, 16, 16) and batch.cond.shape == (3, 1)
    for s in concept_sets(colors, 2, 5, seed=1, negate=True):
        assert s.satisfied_by(colors, s.scene) and s.expression(colors).count(" AND ") == 2
    assert main(["world", "render", "--task", "colors", "--n", "2", "--resolution", "8",
                 "--out", str(tmp_path / "g.png")]) == 0
    assert "[0] label: " in (tmp_path / "g.txt").read_text()


def test_the_toy_task_draws_training_batches_on_the_device(colors):
    # no tensor kernel of its own: Task.sample_rows draws its labels with its own sample_concept
    ds = WorldDataset("colors", 16, seed=0, null_prob=0.25)
    b = ds.device_batch(ds.step_generator(3), 256, "cpu")
    assert b.image.shape == (256, 3, 16, 16) and b.cond.shape == (256, 1) and b.cond.dtype == torch.int64
    assert all(torch.equal(x, y) for x, y in zip(b, ds.device_batch(ds.step_generator(3), 256, "cpu")))
    gen = ds.step_generator(3)
    scenes = sample_scene_batch(gen, 256, "cpu", colors.min_objects, colors.max_objects, colors.layout)
    assert torch.equal(b.image, render_batch(scenes, 16))
    cond, is_null = label_batch(colors, scenes, gen, 0.25)
    assert torch.equal(cond, b.cond) and torch.equal(is_null, b.is_null)
    assert 0.15 < float(is_null.float().mean()) < 0.35 and not cond[is_null].any()
    labels = colors.from_tensor(cond[~is_null])
    assert all(colors.holds(c, s) for c, s in zip(labels, [s for s, n in zip(scenes_from_tensors(scenes), is_null)
                                                           if not n]))
    assert len(set(labels)) == len(COLORS)  # every color is drawn: the label is not one fixed choice


def test_train_sample_eval_end_to_end(colors, tmp_path, capsys):
    run, png, rep = tmp_path / "run", tmp_path / "x.png", tmp_path / "rep"
    model = str(run / "model")
    for argv in (["train", "--task", "colors", "--steps", "2", "--batch-size", "4", "--channels", "16,32",
                  "--layers-per-block", "1", "--precision", "fp32", "--no-progress", "--out", str(run)],
                 ["sample", "--task", "colors", "--model", model, "red", "--n", "2", "--steps", "2",
                  "--no-progress", "--out", str(png)],
                 ["eval", "--task", "colors", "--model", model, "--n", "2", "--components", "1",
                  "--steps", "2", "--no-progress", "--out", str(rep)]):
        assert main(argv) == 0, (argv[0], capsys.readouterr().err)
    assert Path(model, "compdiff.json").is_file() and png.stat().st_size > 0
    assert all((rep / f).is_file() for f in ("results.json", "table.md", "accuracy.png"))
