"""Compare training runs made with ``energyarch train`` (or the experiment scripts): learning curves, the last
test-time iteration sweep, and one plot of the test metric per epoch.

Reads each run folder's ``metrics.json`` (the per-epoch history) and, when present, ``eval.json`` (written by
``energyarch eval`` or at the end of training). Runs may be unfinished: the table shows the epochs reached.

    python benchmarks/compare_runs.py runs/sudoku_long runs/sudoku_long_transformer --metric cell_acc \
        --out benchmarks/results/sudoku_long.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(folder: Path) -> dict:
    metrics = folder / "metrics.json"
    if not metrics.is_file():
        raise SystemExit(f"{folder}: no metrics.json; give run folders written by `energyarch train`")
    run = json.loads(metrics.read_text())
    evaluation = folder / "eval.json"
    run["eval"] = json.loads(evaluation.read_text()) if evaluation.is_file() else None
    model = run["config"]["model"]
    run["label"] = f"{folder.name}: {model['arch']} d={model['d']}, {run['parameters']:,} params"
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders")
    ap.add_argument("--metric", default="cell_acc", help="test metric to tabulate and plot (e.g. cell_acc, top1)")
    ap.add_argument("--out", help="markdown file to write (the plot goes next to it as .png)")
    args = ap.parse_args(argv)
    runs = [load(Path(r)) for r in args.runs]
    key = f"test_{args.metric}"

    lines = [f"Runs compared: {', '.join(f'`{r}`' for r in args.runs)}.", ""]
    epochs = sorted({h["epoch"] for r in runs for h in r["history"] if key in h})
    lines += [
        "Test " + args.metric + " % by epoch (train loss in brackets):",
        "",
        "| epoch | " + " | ".join(r["label"] for r in runs) + " |",
        "|---|" + "|".join("---" for _ in runs) + "|",
    ]
    for epoch in epochs:
        cells = []
        for r in runs:
            h = next((h for h in r["history"] if h["epoch"] == epoch and key in h), None)
            cells.append(f"{100 * h[key]:.2f} ({h['train_loss']:.4f})" if h else "")
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    sweeps = [(f"{r['label']}, epoch {r['history'][-1]['epoch']}", r["eval"]) for r in runs if r["eval"]]
    if sweeps:
        iters = sorted({s["iters"] for _, e in sweeps for s in e["sweep"]})
        lines += [
            "",
            f"Test-time iterations ({args.metric} %, the last checkpoint of each run, as of its eval.json):",
            "",
            "| model | " + " | ".join(f"T={k}" for k in iters) + " |",
            "|---|" + "|".join("---" for _ in iters) + "|",
        ]
        for label, e in sweeps:
            by = {s["iters"]: s.get(args.metric) for s in e["sweep"]}
            lines.append(
                f"| {label} (trained T={e['train_iters']}) | "
                + " | ".join(f"{100 * by[k]:.2f}" if by.get(k) is not None else "" for k in iters)
                + " |"
            )

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for r in runs:
        hs = [h for h in r["history"] if key in h]
        ax.plot([h["epoch"] for h in hs], [100 * h[key] for h in hs], marker="o", label=r["label"])
    ax.set(xlabel="epoch", ylabel=f"test {args.metric} (%)", title=f"test {args.metric} during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()

    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    text = f"```\n{command}\n```\n\n" + "\n".join(lines) + "\n"
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out.with_suffix(".png"), dpi=110)
        out.write_text(f"# Training runs compared\n\n{text}")
        print(f"wrote {out} and {out.with_suffix('.png')}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
