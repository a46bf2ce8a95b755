"""Where a regions cell's objects went: for each positive concept of each set, was the described
object drawn inside its box, drawn elsewhere, or not drawn at all; and was anything drawn in the
box. Reads a `compdiff eval --task described` report (the judged scenes of every set) and redraws
the same concept sets and boxes from its spec. "In its box" is the eval's per-concept in-region
rate, recomputed from the judged positions as the report stores them (2 decimals), so an object
on a box's edge can count differently (2 of 512 pairs in reports/described-regions, K = 2).

    python bench/regions_diagnose.py reports/described-regions
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from compdiff.eval.concept_sets import concept_sets, inside
from compdiff.world import Obj, Scene, get_task

_JUDGED = re.compile(r"(\w+) (\w+) (\w+) (\w+) at ([0-9.]+),([0-9.]+)")


def judged_scene(lines: list[str]) -> Scene:
    """A scene from the judge's `Obj.describe()` strings ("large red rubber cylinder at 0.50,0.50")."""
    objs = []
    for line in lines:
        m = _JUDGED.fullmatch(line)
        if m is None:
            raise ValueError(f"cannot read the judged object {line!r}")
        size, color, material, shape, x, y = m.groups()
        objs.append(Obj(shape, color, size, material, float(x), float(y)))
    return Scene(tuple(objs), "free")


def outcomes(results: dict) -> dict[str, dict[str, float]]:
    """Per cell, the fractions of (set, concept) pairs: in box, elsewhere only, not drawn; of
    boxes with no object at all; and the mean number of objects drawn that fit the concept
    ("copies": more copies land one in the box by chance)."""
    spec = results["spec"]
    task = get_task(spec["task"])
    out = {}
    for name, cell in results["cells"].items():
        if "judged" not in cell:
            continue
        sets = concept_sets(task, cell["k"], spec["n"], spec["seed"], spec.get("negate", False))
        counts = {"in its box": 0, "elsewhere only": 0, "not drawn": 0, "box empty": 0, "copies": 0}
        total = 0
        for s, lines in zip(sets, cell["judged"]):
            scene = judged_scene(lines)
            for c, box in zip(s.positives, s.boxes(task, spec["region_size"])):
                total += 1
                in_box = Scene(tuple(o for o in scene.objects if inside(o.x, o.y, box)), "free")
                if task.holds(c, in_box):
                    counts["in its box"] += 1
                elif task.holds(c, scene):
                    counts["elsewhere only"] += 1
                else:
                    counts["not drawn"] += 1
                counts["box empty"] += not in_box.objects
                counts["copies"] += sum(task.holds(c, Scene((o,), "free")) for o in scene.objects)
        out[name] = {k: v / total for k, v in counts.items()} | {"pairs": total}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report")
    args = p.parse_args(argv)
    path = Path(args.report) / "results.json"
    if not path.is_file():
        print(f"regions_diagnose: no {path}", file=sys.stderr)
        return 2
    table = outcomes(json.loads(path.read_text()))
    print("| cell | (set, concept) pairs | in its box | elsewhere only | not drawn | box empty | copies drawn |")
    print("|---|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['pairs']} | " + " | ".join(f"{100 * r[k]:.1f}%" for k in
                                                        ("in its box", "elsewhere only", "not drawn", "box empty"))
              + f" | {r['copies']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
