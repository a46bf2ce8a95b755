"""The synthetic scene world (layer 7): scenes, renderer, concept tasks, datasets.

Knows nothing of models. Main names::

    Scene, Obj, SHAPES, COLORS, SIZES, MATERIALS, sample_scenes, scene_at
    render(scenes, resolution) -> (N, 3, R, R) in [-1, 1]
    get_task("objects" | "relations" | "attributes" | "described") -> Task
    concept_sets(task, k, n, seed, negate) -> list[ConceptSet]  (evaluation's label sets)
    WorldDataset(task, resolution, seed, null_prob=0.1, length=..., joint=False)
    WorldDataset.device_batch(generator, batch_size, device) -> Sample on device
    sample_scene_batch, label_batch, render_batch, scenes_from_tensors  (torch path)
"""
from compdiff.world.batch import (SceneBatch, label_batch, render_batch, sample_scene_batch,
                                  scenes_from_tensors)
from compdiff.world.dataset import JointSample, Sample, WorldDataset
from compdiff.world.render import render, to_uint8
from compdiff.world.scene import (COLORS, EXTENT, MATERIALS, SHAPES, SIZES, ZOOM, Obj,
                                  Scene, sample_scenes, scene_at)
from compdiff.world.tasks import TASKS, Task, TaskEncoder, get_task
from compdiff.world.concept_sets import ConceptSet, concept_sets

__all__ = ["Obj", "Scene", "SHAPES", "COLORS", "SIZES", "MATERIALS", "EXTENT", "ZOOM",
           "sample_scenes", "scene_at", "render", "to_uint8", "get_task", "Task",
           "TaskEncoder", "TASKS", "WorldDataset", "Sample", "JointSample", "SceneBatch",
           "sample_scene_batch", "label_batch", "render_batch", "scenes_from_tensors", "ConceptSet",
           "concept_sets"]
