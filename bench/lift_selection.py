"""Issue #34, deliverable 4: selection by lift, and lift as a classifier, on the shipped world models.

    .venv/bin/python bench/lift_selection.py --out reports/lift_selection            # n = 256 sets per cell
    .venv/bin/python bench/lift_selection.py --out /tmp/ls --n 4 --steps 2 --tasks attributes   # a smoke run

Every cell is one ``compdiff eval`` cell (the same concept sets, seeds, judge and Wilson intervals as
the composition tables; ``--select/--candidates`` reach compdiff.generate's selection):

* tasks: attributes and relations at K = 1..3, objects at K = 3..5 (``--objects-model DIR``: e.g. a
  model trained on at most 2 objects, the issue's le2 split; default the shipped objects model);
* methods: ``plain`` and ``plain-cached`` (``--select lift|cached-lift --candidates 1``: the plain
  images bit for bit, each scored: the lift-as-classifier data; plain's cost is their sampling rows
  only), ``ula`` (``--correct ula``), ``lift-M2/4/8`` (``--select lift``), ``cached-lift-M4``.

Each method is a report folder OUT/TASK/METHOD of ``compdiff eval``, resumed cell by cell: a finished
cell (method, K) is not redone, and a method whose folder already holds all its K is not even opened.
After the cells, OUT/summary.md and OUT/summary.json hold

* selection: judged accuracy with its 95% Wilson interval, model evaluations (denoiser rows) per
  image and **per judged-correct image** (all rows spent / images the judge accepts);
* lift as a classifier (from the plain cells: every (image, concept) pair of the plain samples): the
  agreement of "lift > 0" with the judge's verdict that the concept is present (Wilson interval) and the
  ROC AUC of the lift against that verdict (Mann-Whitney, ties counted half), per task, for the fresh
  lift and the cached one. The NOT concept of a set (``--not``) counts as a concept like the others.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TASKS = {"attributes": (1, 2, 3), "relations": (1, 2, 3), "objects": (3, 4, 5)}
#: method -> the compdiff eval options that make it
METHODS = {
    "plain": ["--select", "lift", "--candidates", "1"],
    "plain-cached": ["--select", "cached-lift", "--candidates", "1"],
    "ula": ["--correct", "ula"],
    "lift-M2": ["--select", "lift", "--candidates", "2"],
    "lift-M4": ["--select", "lift", "--candidates", "4"],
    "lift-M8": ["--select", "lift", "--candidates", "8"],
    "cached-lift-M4": ["--select", "cached-lift", "--candidates", "4"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="reports/lift_selection", help="report folder (resumed)")
    p.add_argument("--n", type=int, default=256, help="concept sets per cell (default 256)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: each model's own)")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated, of " + ", ".join(TASKS))
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS))
    p.add_argument("--objects-model", default=None, metavar="DIR",
                   help="the objects model (default the shipped one; the issue asks for one trained on <= 2 objects)")
    p.add_argument("--batch-size", type=int, default=64, help="sets sampled together (x candidates rows)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--summary-only", action="store_true", help="only rewrite the summary from the finished cells")
    return p.parse_args(argv)


def _done(folder: Path, ks: tuple[int, ...], method: str = "composed") -> bool:
    path = folder / "results.json"
    if not path.is_file():
        return False
    cells = json.loads(path.read_text()).get("cells", {})
    return all(f"{method}/K{k}" in cells for k in ks)


def run_cells(args: argparse.Namespace) -> None:
    from compdiff.cli import main

    for task in args.tasks.split(","):
        ks = TASKS[task]
        for name in args.methods.split(","):
            folder = Path(args.out) / task / name
            if _done(folder, ks):
                print(f"{task}/{name}: done", file=sys.stderr)
                continue
            argv = ["eval", "--task", task, "--components", ",".join(map(str, ks)), "--n", str(args.n),
                    "--seed", str(args.seed), "--batch-size", str(args.batch_size), "--device", args.device,
                    "--methods", "composed", "--out", str(folder), "--no-progress", *METHODS[name]]
            if args.steps is not None:
                argv += ["--steps", str(args.steps)]
            if task == "objects" and args.objects_model:
                argv += ["--model", args.objects_model]
            print(f"{task}/{name}: compdiff {' '.join(argv)}", file=sys.stderr, flush=True)
            rc = main(argv)
            if rc != 0:
                raise SystemExit(f"{task}/{name}: compdiff eval exited {rc}")


# ---- the summary -------------------------------------------------------------------------------------
def roc_auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC of ``scores`` for the positive ``labels`` (Mann-Whitney U / (P·N), ties half); None when
    one class is missing."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def classifier_pairs(cell: dict) -> tuple[list[float], list[bool]]:
    """(lift, judged present) for every (image, concept) pair of a scored cell: its positives, then its NOT."""
    sel = cell.get("selection")
    if sel is None:
        return [], []
    scores, labels = [], []
    negative = cell.get("negative_success") or [None] * len(sel["lift"])
    for lifts, present, absent in zip(sel["lift"], cell["concept_success"], negative):
        verdicts = list(present) + ([] if absent is None else [not absent])
        for v, y in zip(lifts, verdicts):
            if v is not None:
                scores.append(float(v))
                labels.append(bool(y))
    return scores, labels


def summarize(out: Path) -> dict:
    from compdiff.eval.stats import wilson

    rows, classifier = [], []
    for task in TASKS:
        pooled: dict[str, tuple[list, list]] = {}
        for name in METHODS:
            path = out / task / name / "results.json"
            if not path.is_file():
                continue
            cells = json.loads(path.read_text())["cells"]
            for k in sorted(c["k"] for key, c in cells.items() if key.startswith("composed/")):
                cell = cells[f"composed/K{k}"]
                n, ok = len(cell["success"]), sum(cell["success"])
                evals = cell.get("model_evals", 0) - (cell.get("lift_evals", 0) if name.startswith("plain") else 0)
                lo, hi = wilson(ok, n)
                rows.append({"task": task, "K": k, "method": name, "n": n, "correct": ok, "accuracy": ok / n,
                             "wilson": [lo, hi], "evals_per_image": evals / n,
                             "evals_per_correct": evals / ok if ok else None})
                if name in ("plain", "plain-cached") and cell.get("selection"):
                    s, y = classifier_pairs(cell)
                    acc = pooled.setdefault(cell["selection"]["select"], ([], []))
                    acc[0].extend(s)
                    acc[1].extend(y)
        for name, (s, y) in pooled.items():
            agree = sum((v > 0) == lab for v, lab in zip(s, y))
            lo, hi = wilson(agree, len(s)) if s else (float("nan"), float("nan"))
            classifier.append({"task": task, "lift": "fresh" if name == "lift" else "cached", "pairs": len(s),
                               "present": sum(y), "agreement": agree / len(s) if s else None, "wilson": [lo, hi],
                               "auc": roc_auc(s, y)})
    summary = {"selection": rows, "classifier": classifier}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["Selection by lift (judged accuracy; cost = denoiser rows, sampling and scoring).", "",
             "| task | K | method | accuracy | 95% Wilson | evals / image | evals / judged-correct image |",
             "|---|---:|---|---:|---|---:|---:|"]
    for r in rows:
        per = "n/a" if r["evals_per_correct"] is None else f"{r['evals_per_correct']:,.0f}"
        lines.append(f"| {r['task']} | {r['K']} | {r['method']} | {r['accuracy'] * 100:.1f}% | "
                     f"{r['wilson'][0] * 100:.1f}–{r['wilson'][1] * 100:.1f}% | {r['evals_per_image']:,.0f} | {per} |")
    lines += ["", "Lift as a classifier (plain samples, every (image, concept) pair; verdict: the judge's).", "",
              "| task | lift | pairs | judged present | agreement (lift > 0) | 95% Wilson | ROC AUC |",
              "|---|---|---:|---:|---:|---|---:|"]
    for c in classifier:
        agree = "n/a" if c["agreement"] is None else f"{c['agreement'] * 100:.1f}%"
        auc = "n/a" if c["auc"] is None else f"{c['auc']:.3f}"
        lines.append(f"| {c['task']} | {c['lift']} | {c['pairs']} | {c['present']} | {agree} | "
                     f"{c['wilson'][0] * 100:.1f}–{c['wilson'][1] * 100:.1f}% | {auc} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unknown = (set(args.tasks.split(",")) - set(TASKS)) | (set(args.methods.split(",")) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown task or method: {', '.join(sorted(unknown))}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        run_cells(args)
    summarize(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
