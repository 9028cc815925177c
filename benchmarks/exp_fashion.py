"""Fashion-MNIST (image classification, Sec. 5.2 at CPU size): Hyper-SET vs Transformer, 1 layer x 12 iterations.

Hyper-SET: d, M = d (Table 10), step sizes conditioned on X_t; the Transformer (MLP ratio 4) gets the width whose
parameter count is closest (``--match params``, as in Table 1) or the same width (``--match width``).
7x7 patches -> 16 tokens + [CLS]. Same recipe for both (after Table 9, shortened). Needs the IDX files
(Debian: dataset-fashion-mnist in /usr/share/datasets/fashion-mnist, or --data-dir).

    python benchmarks/exp_fashion.py --d 128 --epochs 10
    python benchmarks/exp_fashion.py --d 96 --limit-train 20000 --budget-minutes 15
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_common import epochs_for_budget, match_width, n_params, record, run, sweep_table, table  # noqa: E402

from energyarch.models import ModelConfig  # noqa: E402
from energyarch.train import TrainConfig, build_task  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402
from energyarch.train.plots import plot_comparison  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=128, help="Hyper-SET width")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--iters", type=int, default=12)
    ap.add_argument("--match", default="params", choices=("params", "width"))
    ap.add_argument("--epochs", type=int, help="epochs per model (default: from --budget-minutes)")
    ap.add_argument("--budget-minutes", type=float, default=20.0, help="total budget for both models")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--limit-train", type=int, default=0)
    ap.add_argument("--limit-test", type=int, default=0)
    ap.add_argument("--patch-size", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir")
    ap.add_argument("--out", default="runs/exp_fashion")
    args = ap.parse_args(argv)
    setup_logging(quiet=True)

    T = args.iters
    hyper = ModelConfig(arch="hyperset", d=args.d, heads=args.heads, iters=T, ff_ratio=1.0, condition="xt")
    base = TrainConfig(
        task="fashion_mnist",
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=1e-5,
        weight_decay=5e-5,
        warmup_epochs=1.0,
        eval_every=0,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        patch_size=args.patch_size,
        progress=False,
        model=hyper,
        eval_iters=sorted({max(1, T * k // 4) for k in range(1, 9)}),
        diagnostics_samples=128,
    )
    task = build_task(base)
    trans = replace(hyper, arch="transformer")
    if args.match == "params":
        trans = match_width(
            n_params(hyper, task.spec), trans, task.spec, range(args.heads * 4, 2 * args.d + 1, args.heads)
        )
    models = {"Hyper-SET": hyper, "Transformer": trans}
    for label, m in models.items():
        print(f"{label:12s} d={m.d:4d} params={n_params(m, task.spec):,}", flush=True)
    epochs = args.epochs
    if epochs is None:
        epochs, sps = epochs_for_budget(base, args.budget_minutes / len(models), task=task)
        print(f"budget {args.budget_minutes} min: Hyper-SET {sps:.3f} s/step -> {epochs} epochs each", flush=True)
    rows = []
    for label, m in models.items():
        row = run(replace(base, epochs=epochs, model=m, out_dir=f"{args.out}/{m.arch}"), label, task=task)
        row["top1_pct"] = round(100 * row["final"]["test_top1"], 2)
        rows.append(row)
        print(f"{label:12s} top1={row['top1_pct']:.2f}%  ({row['minutes']} min)", flush=True)
    plot = plot_comparison(
        {r["label"]: r["sweep"] for r in rows},
        "top1",
        T,
        Path(args.out) / "extrapolation.png",
        title="Fashion-MNIST: test-time iterations",
    )
    n_train = len(task.train_set)
    text = (
        f"Fashion-MNIST, {n_train} train / {len(task.test_set)} test images, {args.patch_size}x{args.patch_size} "
        f"patches, 1 layer x {T} iterations, {epochs} epochs, batch {args.batch_size}, lr {args.lr:g}, seed "
        f"{args.seed}, matched {args.match}.\n\n"
        + table(
            rows,
            [("model", "label"), ("d", "d"), ("params", "params"), ("top-1 %", "top1_pct"), ("minutes", "minutes")],
        )
        + "\n\nTest-time iterations, top-1 %:\n\n"
        + sweep_table(rows, "top1")
        + f"\n\nPlot: {plot}\n"
    )
    print(text)
    print("recorded in", record(args.out, "Fashion-MNIST: Hyper-SET vs Transformer", rows, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
