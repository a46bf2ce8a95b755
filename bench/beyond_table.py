"""The "Beyond training" table of BENCHMARKS from the reports bench/beyond_training.sh writes.

    .venv/bin/python bench/beyond_table.py attributes            # markdown table on stdout
    .venv/bin/python bench/beyond_table.py attributes --plot docs/beyond_attributes.png --target 80

Rows: every cell of reports/beyond-TASK-{held-out,seen}[-ula] (and reports/beyond-objects[-ula],
whose sets are all K = 1..5 of split le2), one per (method, sets, K), with accuracy, its Wilson
95% interval, per-concept accuracy, FD-judge and the real-vs-real floor. ``--plot`` draws
accuracy against K with the intervals as error bars, one panel per set kind.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compdiff.eval.stats import wilson

LABEL = {"composed": "composed", "joint": "joint", "joint-oracle": "joint, oracle layout"}


def reports(task: str, root: Path) -> list[tuple[str, str, dict]]:
    """(sets, method suffix, results) for each report of the task that exists."""
    found = []
    kinds = ("all",) if task == "objects" else ("held-out", "seen")
    for sets in kinds:
        for ula in ("", "-ula"):
            name = f"beyond-{task}" + ("" if sets == "all" else f"-{sets}") + ula
            path = root / name / "results.json"
            if path.is_file():
                found.append((sets, ula, json.loads(path.read_text())))
    return found


def rows(task: str, root: Path) -> list[dict]:
    out = []
    for sets, ula, res in reports(task, root):
        spec = res["spec"]
        for key, c in res["cells"].items():
            method = key.split("/")[0]
            label = LABEL.get(method, method)
            if ula:
                label += f" + ULA ({spec['steps']} steps + {spec['corrector_steps']} ULA)"
            lo, hi = wilson(sum(c["success"]), len(c["success"]))
            out.append({"method": label, "sets": sets, "k": c["k"], "acc": c["accuracy"], "lo": lo, "hi": hi,
                        "concept": c["concept_accuracy"], "fd": c["fd_judge"], "floor": c["fd_floor"],
                        "n": len(c["success"])})
    order = {"held-out": 0, "all": 0, "seen": 1}
    return sorted(out, key=lambda r: (order[r["sets"]], r["k"], r["method"]))


def table(rs: list[dict]) -> str:
    lines = ["| method | sets | K | n | accuracy | 95% interval (Wilson) | per-concept | FD-judge | FD floor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['method']} | {r['sets']} | {r['k']} | {r['n']} | {100 * r['acc']:.1f}% | "
                     f"{100 * r['lo']:.1f}–{100 * r['hi']:.1f}% | {100 * r['concept']:.1f}% | {r['fd']:.1f} | "
                     f"{r['floor']:.1f} |")
    return "\n".join(lines)


def plot(rs: list[dict], task: str, out: Path, target: float | None = None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [s for s in ("held-out", "seen", "all") if any(r["sets"] == s for r in rs)]
    colour = {m: f"C{i}" for i, m in enumerate(sorted({r["method"] for r in rs}))}  # the same in every panel
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        methods = sorted({r["method"] for r in rs if r["sets"] == kind})
        for i, m in enumerate(methods):
            pts = sorted((r for r in rs if r["sets"] == kind and r["method"] == m), key=lambda r: r["k"])
            ks = [r["k"] + 0.04 * (i - (len(methods) - 1) / 2) for r in pts]
            acc = [100 * r["acc"] for r in pts]
            err = [[100 * (r["acc"] - r["lo"]) for r in pts], [100 * (r["hi"] - r["acc"]) for r in pts]]
            ax.errorbar(ks, acc, yerr=err, marker="o", capsize=3, lw=1.5, label=m, color=colour[m])
        if kind == "all":  # objects le2: training scenes had at most 2 objects
            ax.axvspan(2.5, max(r["k"] for r in rs) + 0.5, color="gray", alpha=0.12, lw=0,
                       label="K beyond training")
        if target is not None and kind == "held-out":
            ax.axhline(target, ls=":", color="gray", lw=1, label=f"target: composed {target:g}%")
        title = {"held-out": "combinations held out of training", "seen": "combinations seen in training",
                 "all": "trained on scenes of <= 2 objects"}[kind]
        ax.set(title=f"{task}: {title}", xlabel="K (concepts ANDed)", ylabel="accuracy (%)", ylim=(-3, 103),
               xticks=sorted({r["k"] for r in rs if r["sets"] == kind}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("task", choices=["attributes", "relations", "objects"])
    p.add_argument("--reports", default="reports", help="the folder holding the beyond-* reports (default reports)")
    p.add_argument("--plot", metavar="PNG", help="also draw accuracy against K with 95%% intervals")
    p.add_argument("--target", type=float, metavar="PCT",
                   help="with --plot: a dotted line at this accuracy on the held-out panel (issue #15: 80)")
    args = p.parse_args(argv)
    rs = rows(args.task, Path(args.reports))
    if not rs:
        print(f"beyond_table: no reports/beyond-{args.task}* with results under {args.reports}", file=sys.stderr)
        return 2
    print(table(rs))
    if args.plot:
        plot(rs, args.task, Path(args.plot), args.target)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
