"""Where a regions cell's objects went: for each positive concept of each set, was the described
object drawn inside its box, drawn elsewhere, or not drawn at all; and was anything drawn in the
box. Reads a `compdiff eval --task described` report (the judged scenes of every set) and redraws
the same concept sets and boxes from its spec. "In its box" is the eval's per-concept in-region
rate, recomputed from the judged positions as the report stores them (2 decimals), so an object
on a box's edge can count differently (2 of 512 pairs in reports/described-regions, K = 2).

    python bench/regions_diagnose.py reports/described-regions

It prints two tables: per cell, accuracy and in-region with their Wilson 95% intervals (the
BENCHMARKS table), then the placement of each (set, concept) pair.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compdiff.eval.concept_sets import concept_sets, inside
from compdiff.eval.stats import wilson
from compdiff.world import Obj, Scene, get_task

def judged_scene(lines: list[str]) -> Scene:
    """A scene from the judge's `Obj.describe()` strings ("large red rubber cylinder at 0.50,0.50")."""
    return Scene(tuple(Obj.parse(line) for line in lines), "free")


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
        asked = [[task.format(c) for c in s.positives] for s in sets]
        if asked != cell.get("asked", asked):
            raise ValueError(f"{name}: the concept sets drawn again differ from the report's (another sets "
                             "version or filter); this tool reads reports of the current version without --sets")
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
    results = json.loads(path.read_text())
    g = results["spec"]["guidance_scale"]
    print("| method | guidance | K | n | accuracy | 95% interval | per-concept | in region | 95% interval "
          "| per-concept in region | FD-judge | FD floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, c in results["cells"].items():
        if "in_region" not in c:
            continue
        n = len(c["success"])
        lo, hi = wilson(sum(c["success"]), n)
        rlo, rhi = wilson(round(c["in_region"] * n), n)  # the cell stores the fraction of its n sets
        print(f"| {c['method']} | {g:g} | {c['k']} | {n} | {100 * c['accuracy']:.1f}% | {100 * lo:.1f}–{100 * hi:.1f}% "
              f"| {100 * c['concept_accuracy']:.1f}% | {100 * c['in_region']:.1f}% | {100 * rlo:.1f}–{100 * rhi:.1f}% "
              f"| {100 * c['per_concept_in_region']:.1f}% | {c['fd_judge']:.1f} | {c['fd_floor']:.1f} |")
    print()
    table = outcomes(results)
    print("| cell | (set, concept) pairs | in its box | elsewhere only | not drawn | box empty | copies drawn |")
    print("|---|---|---|---|---|---|---|")
    for name, r in table.items():
        print(f"| {name} | {r['pairs']} | " + " | ".join(f"{100 * r[k]:.1f}%" for k in
                                                        ("in its box", "elsewhere only", "not drawn", "box empty"))
              + f" | {r['copies']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
