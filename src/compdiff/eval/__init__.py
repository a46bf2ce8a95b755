"""Evaluation (layer 9): judges images, not models.

- `Judge`, `load_judge(resolution)`: the scene-reading CNN and its shipped
  weights; `judge.read(images, layout)` -> list of `Scene`, checked against
  concepts with each task's own `holds`.
- `frechet_distance(images_a, images_b)`: FD-judge, the Fréchet distance over
  the judge's penultimate features (NOT Inception FID);
  `frechet_from_features` for cached features.
- `measure`, `markdown_table`: the judge's own accuracy on fresh renders.
"""

from compdiff.eval.frechet import (
    FeatureStats,
    feature_stats,
    frechet_distance,
    frechet_from_features,
    frechet_from_stats,
    judge_features,
)
from compdiff.eval.judge import Judge, JudgeConfig, JudgeWeightsError, load_judge, save_judge
from compdiff.eval.judge_accuracy import TaskAccuracy, markdown_table, match_objects, measure

__all__ = [
    "Judge",
    "JudgeConfig",
    "JudgeWeightsError",
    "load_judge",
    "save_judge",
    "FeatureStats",
    "feature_stats",
    "frechet_distance",
    "frechet_from_features",
    "frechet_from_stats",
    "judge_features",
    "TaskAccuracy",
    "measure",
    "markdown_table",
    "match_objects",
]
