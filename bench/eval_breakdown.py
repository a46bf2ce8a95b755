"""Read an eval report cell by cell: which concepts fail, and what is drawn instead.

    .venv/bin/python bench/eval_breakdown.py reports/beyond-attributes-held-out [--cells composed/K2,joint/K2]

Works on the per-set record `compdiff eval` writes in each cell of results.json (`asked`,
`concept_success`, `judged`; cells written before that record existed are skipped, with a line
saying so). Prints markdown:

* per-concept accuracy by kind (attributes: shape / color / size / material; other tasks: the
  concept's own text, the 12 worst);
* with `--hold-out` in the report's spec, for each held-out combination a set asks for, how often
  both halves held, only one, or neither (attributes: the first judged object is the one object);
* with a split of within-object pairs, how many judged objects show a held-out combination, asked
  or not, against the rate in the world without the hold-out;
* attributes: for each missed word, the value of that kind the judge read instead (the most
  common substitutions);
* objects (one concept = one object): how many objects each image holds against the K asked
  (fewer, exactly K, more), and the histogram of counts;
* relations: what became of each asked relation on the judged objects (held; both objects drawn
  but misplaced; one object matching both sides; the first, the second or both not drawn), for
  held-out and seen color pairs apart and per relation word, and how often the relation held when
  both objects were drawn against random placement; with a split of color pairs, how
  many images show a held-out pair together, asked or not, against the world's rate.

Nothing is generated: it reads the JSON (and draws world scenes for the reference rate).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

from compdiff.world import Obj, Scene, get_task
from compdiff.world.holdout import get_split
from compdiff.world.tasks.relations import RELATIONS

KINDS = ("size", "color", "material", "shape")
#: both halves held / only the first / only the second / neither, as (first held, second held)
OUTCOMES = ((True, True), (True, False), (False, True), (False, False))
#: world scenes drawn for the reference rate of held-out combinations (+-0.7 points at 95%)
WORLD_SCENES = 20000
#: what became of an asked relation on the judged objects, in the order of the table's columns
REL_OUTCOMES = ("held", "both drawn, misplaced", "one object for both", "first missing", "second missing",
                "both missing")


def read_object(text: str) -> dict[str, str]:
    """``"large red metal cube at 0.50,0.25"`` (``Obj.describe``) -> {size, color, material, shape}."""
    obj = Obj.parse(text)
    return {kind: getattr(obj, kind) for kind in KINDS}


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}% ({a}/{b})" if b else "-"


def by_kind(task, cell, top: int = 12) -> list[str]:
    """Per-concept accuracy grouped by the concept's kind (attributes) or its text (other tasks; the
    ``top`` worst rows)."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for asked, held in zip(cell["asked"], cell["concept_success"]):
        for text, ok in zip(asked, held):
            c = task.parse(text)
            key = getattr(c, "kind", None) or text
            tally[key][0] += ok
            tally[key][1] += 1
    rows = sorted(tally.items(), key=lambda kv: (kv[1][0] / kv[1][1], -kv[1][1]))
    lines = ["| concept | held |", "|---|---|"] + [f"| {k} | {pct(*v)} |" for k, v in rows[:top]]
    if len(rows) > top:  # concepts of many words (relations, described): the worst only
        lines.append(f"| ({len(rows) - top} more concepts, each held at least as often) | |")
    return lines


def held_out_pairs(task, split, cell) -> list[str]:
    """Each held-out within-object pair asked: both halves held / only the first / only the second / neither."""
    tally: dict[str, Counter] = defaultdict(Counter)
    by_kinds: dict[str, Counter] = defaultdict(Counter)  # "all color,shape pairs", ...
    for asked, judged in zip(cell["asked"], cell["judged"]):
        concepts = [task.parse(t) for t in asked]
        obj = read_object(judged[0]) if judged else {}
        words = {c.kind: c.word for c in concepts if hasattr(c, "kind")}
        for kinds, pairs in split.within.items():
            k1, k2 = kinds.split(",")
            if (words.get(k1), words.get(k2)) not in pairs:
                continue
            a, b = obj.get(k1) == words[k1], obj.get(k2) == words[k2]
            tally[f"{words[k1]} {words[k2]}"][(a, b)] += 1
            by_kinds[f"all {kinds} pairs"][(a, b)] += 1
    if not tally:
        return []
    total: Counter = Counter()
    for c in tally.values():
        total.update(c)
    rows = sorted(tally.items()) + (sorted(by_kinds.items()) if len(by_kinds) > 1 else []) + [("all", total)]
    return ["| held-out pair | asked | both | only the first | only the second | neither |", "|---|---|---|---|---|---|"] + [
        f"| {name} | {sum(c.values())} | " + " | ".join(pct(c[key], sum(c.values())) for key in OUTCOMES) + " |"
        for name, c in rows]


def world_rate(task, split, n: int | None = None, seed: int = 12345) -> float:
    """The fraction of objects of the task's world WITHOUT the hold-out (``task.scene``) that show a
    held-out within-object combination: what a model that ignored the split would draw."""
    hits = total = 0
    for i in range(WORLD_SCENES if n is None else n):
        for o in task.scene(seed, i).objects:
            hits += bool(split.violations(Scene((o,), "free")))
            total += 1
    return hits / total


def only_pairs(split):
    """The split's held-out color pairs alone (no within-object pairs, no object count)."""
    return dataclasses.replace(split, within={}, max_objects=None)


def world_pair_rate(task, split, n: int | None = None, seed: int = 12345) -> float:
    """The fraction of scenes of the task's world WITHOUT the hold-out that show a held-out color
    pair together (two objects of the two colors)."""
    pairs = only_pairs(split)
    n = WORLD_SCENES if n is None else n
    return sum(bool(pairs.violations(task.scene(seed, i))) for i in range(n)) / n


def held_out_pairs_drawn(split, cell, reference: float) -> list[str]:
    """How many images show a held-out color pair together: no training scene did."""
    pairs = only_pairs(split)
    found = [pairs.violations(Scene(tuple(Obj.parse(t) for t in judged), "free")) for judged in cell["judged"]]
    if not found:
        return []
    shown = Counter(v for f in found for v in f)
    lines = [f"images showing a held-out color pair together: {pct(sum(bool(f) for f in found), len(found))}; "
             f"in the world without the hold-out, {100 * reference:.1f}% of scenes do"]
    if shown:
        lines.append("(" + ", ".join(f"{k} {v}" for k, v in shown.most_common()) + ")")
    return lines


def relation_outcome(task, concept, objects, held: bool | None = None) -> str:
    """What became of one asked relation among the judged objects (one of ``REL_OUTCOMES``). "held"
    is the task's own truth: some ordered pair of distinct objects matches both sides and stands in
    the relation. ``held``: the evaluation's own verdict, which read exact positions; the report's
    objects carry them rounded to 0.01, which can move a pair across the 0.05 margin, so pass it
    where it is known."""
    firsts = [i for i, o in enumerate(objects) if concept.first.matches(o)]
    seconds = [j for j, o in enumerate(objects) if concept.second.matches(o)]
    pairs = [(i, j) for i in firsts for j in seconds if i != j]
    if held is None:
        held = task.holds(concept, Scene(tuple(objects), "free"))
    if held:
        return "held"
    if pairs:
        return "both drawn, misplaced"
    if firsts and seconds:  # one object matches both descriptions, and no other matches either
        return "one object for both"
    if firsts or seconds:
        return "second missing" if firsts else "first missing"
    return "both missing"


@functools.lru_cache(maxsize=None)
def chance_placement(task, n: int = 2000, seed: int = 12345) -> float:
    """How often an ordered pair of distinct objects of a world scene stands in a relation (the mean
    over the four): what a model that draws both objects but places them at random would get.
    Computed once per task (every cell of a report asks)."""
    scenes = [task.scene(seed, i) for i in range(n)]
    pairs = sum(len(s.objects) * (len(s.objects) - 1) for s in scenes)
    return sum(len(task.true_concepts(s)) for s in scenes) / (pairs * len(RELATIONS))


def relation_outcomes(task, split, cell) -> list[str]:
    """relations: each asked relation's outcome, by held-out / seen color pair and by relation word ("held"
    as the evaluation judged it)."""
    groups: dict[str, Counter] = defaultdict(Counter)
    for asked, held, judged in zip(cell["asked"], cell["concept_success"], cell["judged"]):
        objects = [Obj.parse(t) for t in judged]
        for text, ok in zip(asked, held):
            c = task.parse(text)
            outcome = relation_outcome(task, c, objects, bool(ok))
            groups["all"][outcome] += 1
            groups[c.rel][outcome] += 1
            if split is not None and split.across:
                groups["held-out color pair" if split.asked([c]) else "seen color pair"][outcome] += 1
    if not groups:
        return []
    names = [g for g in ("held-out color pair", "seen color pair", *RELATIONS, "all") if g in groups]
    every = groups["all"]
    return (["| relations asked | n | " + " | ".join(REL_OUTCOMES) + " |", "|---|---|" + "---|" * len(REL_OUTCOMES)]
            + [f"| {g} | {sum(groups[g].values())} | "
               + " | ".join(pct(groups[g][o], sum(groups[g].values())) for o in REL_OUTCOMES) + " |" for g in names]
            + ["", f"with both objects drawn, the relation held {pct(every['held'], every['held'] + every['both drawn, misplaced'])}; "
                   f"two objects placed as the world places them stand in a given relation "
                   f"{100 * chance_placement(task):.1f}% of the time"])


def held_out_drawn(task, split, cell, reference: float) -> list[str]:
    """How often the judged objects show a held-out within-object combination, asked or not: the
    split removed them from training, so a model that draws one drew a combination it never saw."""
    objects = [Obj.parse(line) for judged in cell["judged"] for line in judged]
    if not objects:
        return []
    found = [split.violations(Scene((o,), "free")) for o in objects]
    shown = Counter(v for f in found for v in f)
    hits = sum(bool(f) for f in found)
    lines = [f"judged objects showing a held-out combination: {pct(hits, len(objects))}; "
             f"in the world without the hold-out, {100 * reference:.1f}% of objects do"]
    if shown:
        lines.append("(" + ", ".join(f"{k} {v}" for k, v in shown.most_common()) + ")")
    return lines


def substitutions(task, cell, top: int = 10) -> list[str]:
    """attributes: for each missed word, the value of its kind that the judge read on the object."""
    subs: Counter = Counter()
    for asked, held, judged in zip(cell["asked"], cell["concept_success"], cell["judged"]):
        obj = read_object(judged[0]) if judged else {}
        for text, ok in zip(asked, held):
            c = task.parse(text)
            if not ok and hasattr(c, "kind"):
                subs[(c.word, obj.get(c.kind, "nothing"))] += 1
    if not subs:
        return []
    return (["| asked | drawn instead | times |", "|---|---|---|"]
            + [f"| {a} | {b} | {n} |" for (a, b), n in subs.most_common(top)])


def object_counts(cell, top: int = 6) -> list[str]:
    """objects: how many objects the judge found per image, against the K positions asked."""
    counts = Counter()
    versus = Counter()
    for asked, judged in zip(cell["asked"], cell["judged"]):
        n, k = len(judged), len(asked)
        counts[min(n, top)] += 1
        versus[(n > k) - (n < k)] += 1
    total = sum(counts.values())
    if not total:
        return []
    head = " | ".join(str(n) if n < top else f"{top}+" for n in range(top + 1))
    return [f"objects per image: fewer than K {pct(versus[-1], total)}, exactly K {pct(versus[0], total)}, "
            f"more than K {pct(versus[1], total)}",
            "",
            f"| objects drawn | {head} |",
            "|---|" + "---|" * (top + 1),
            "| images | " + " | ".join(str(counts[n]) for n in range(top + 1)) + " |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("report", help="an eval --out folder (with results.json)")
    p.add_argument("--cells", default="", help="comma-separated cells, e.g. composed/K2 (default: all)")
    args = p.parse_args(argv)
    path = Path(args.report) / "results.json"
    if not path.is_file():
        print(f"eval_breakdown: no results.json in {args.report}", file=sys.stderr)
        return 2
    res = json.loads(path.read_text())
    task = get_task(res["spec"]["task"])
    name = res["spec"].get("hold_out")
    split = get_split(task.name, name) if name else None
    wanted = [c for c in args.cells.split(",") if c] or list(res["cells"])
    reference = pair_reference = None  # world_rate / world_pair_rate, computed once when a cell needs it
    for key in wanted:
        cell = res["cells"].get(key)
        if cell is None:
            print(f"eval_breakdown: no cell {key!r} in {path} (cells: {', '.join(res['cells'])})", file=sys.stderr)
            return 2
        head = f"## {key} ({res['spec'].get('sets', 'all')} sets): {100 * cell['accuracy']:.1f}% of sets"
        if "asked" not in cell:
            print(f"{head}\n\n(no per-set record: written before eval kept one; re-run the cell)\n")
            continue
        print(head + "\n")
        print("\n".join(by_kind(task, cell)) + "\n")
        if split is not None and split.within:
            lines = held_out_pairs(task, split, cell)
            if lines:
                print("\n".join(lines) + "\n")
            if reference is None:
                reference = world_rate(task, split)
            lines = held_out_drawn(task, split, cell, reference)
            if lines:
                print("\n".join(lines) + "\n")
        if split is not None and split.across:
            if pair_reference is None:
                pair_reference = world_pair_rate(task, split)
            lines = held_out_pairs_drawn(split, cell, pair_reference)
            if lines:
                print("\n".join(lines) + "\n")
        lines = substitutions(task, cell) + (object_counts(cell) if task.name == "objects" else [])
        lines += relation_outcomes(task, split, cell) if task.name == "relations" else []
        if lines:
            print("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
