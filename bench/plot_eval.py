"""One figure of several `compdiff eval` reports: accuracy against K per method, one panel each.

    python bench/plot_eval.py reports/objects="objects" reports/objects-le2="objects, trained on ≤ 2 objects" \
        reports/attributes=attributes reports/relations=relations --out docs/eval_accuracy.png

Each argument is REPORT_DIR[=panel title]; the panel reads REPORT_DIR/results.json. Error
bars are 95% Wilson intervals over the n concept sets of each cell. Where a cell records
``in_region`` (the described task: every concept holds inside its box), a dashed line in the
method's colour draws it beside accuracy.

    python bench/plot_eval.py reports/described-regions="regions (described objects)" --out docs/eval_regions.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from compdiff.eval.stats import wilson

STYLE = {"composed": ("C0", "o", "composed (sum, the paper)"), "composed-mean": ("C1", "s", "composed (mean)"),
         "joint": ("C3", "^", "joint conditioning"),
         "joint-oracle": ("C7", "v", "joint conditioning, oracle layout"),
         "composed-regions": ("C2", "D", "composed, each concept in its box (regions)")}


def in_region_points(results: dict, method: str) -> list[tuple[int, float, float, float]]:
    """(K, in-region %, lower and upper error bar) of each cell that records ``in_region``
    (tasks whose concepts are single objects). The cell stores the fraction of its n sets, so
    the count is recovered as round(fraction · n) for the Wilson interval."""
    out = []
    for k in results["spec"]["components"]:
        cell = results["cells"].get(f"{method}/K{k}")
        if cell is None or "in_region" not in cell:
            continue
        n = len(cell["success"])
        a = cell["in_region"]
        lo, hi = wilson(round(a * n), n)
        out.append((k, 100 * a, max(0.0, 100 * (a - lo)), max(0.0, 100 * (hi - a))))
    return out


def panel(ax, results: dict, title: str) -> None:
    spec = results["spec"]
    for method in spec["methods"]:
        ks, acc, lo, hi = [], [], [], []
        for k in spec["components"]:
            cell = results["cells"].get(f"{method}/K{k}")
            if cell is None:
                continue
            ok = cell["success"]
            a, (l, h) = cell["accuracy"], wilson(sum(ok), len(ok))
            ks.append(k)
            acc.append(100 * a)
            lo.append(max(0.0, 100 * (a - l)))
            hi.append(max(0.0, 100 * (h - a)))
        color, marker, label = STYLE.get(method, ("C7", "x", method))
        ax.errorbar(ks, acc, yerr=[lo, hi], color=color, marker=marker, label=label, capsize=3, lw=1.5)
        region = in_region_points(results, method)
        if region:
            rk, ra, rlo, rhi = zip(*region)
            ax.errorbar([k + 0.06 for k in rk], ra, yerr=[rlo, rhi], color=color, marker=marker, ls="--",
                        mfc="none", capsize=3, lw=1.2, label=f"{label}: in its box")
    sampler = f"{spec['sampler'].upper()} {spec['steps']}"
    done = sorted({int(name.rsplit("/K", 1)[1]) for name in results["cells"]}) or spec["components"]
    ax.set(title=f"{title}\n(n = {spec['n']} sets per point, {sampler}, scale {spec['guidance_scale']:g})",
           xlabel="K (concepts ANDed)", ylabel="accuracy: all concepts hold (%)", ylim=(-3, 103),
           xticks=done, xlim=(done[0] - 0.4, done[-1] + 0.4))  # only the K measured
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))  # below: never over a point


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("reports", nargs="+", help="REPORT_DIR[=title]")
    p.add_argument("--out", default="docs/eval_accuracy.png")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(r.split("=", 1) + [None])[:2] for r in args.reports]
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 5.0), squeeze=False)
    for ax, (folder, title) in zip(axes[0], items):
        results = json.loads((Path(folder) / "results.json").read_text())
        panel(ax, results, title or results["spec"]["task"])
    fig.tight_layout()
    out = Path(args.out)
    tmp = out.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
