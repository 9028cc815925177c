"""Table 4-style ablation of Hyper-SET's components, on digits (default) or Fashion-MNIST, CPU-sized.

Rows (one change each from the baseline bi-softmax attention + ReLU FF + learned step sizes):
attention bisoftmax | sigmoid | linear; feed-forward relu | softmax | gated; step sizes learned | fixed 0.5 | 0.1.

    python benchmarks/exp_ablation.py --task digits --epochs 30
    python benchmarks/exp_ablation.py --task fashion_mnist --limit-train 10000 --budget-minutes 15
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_common import epochs_for_budget, record, run, table  # noqa: E402

from energyarch.models import ModelConfig  # noqa: E402
from energyarch.train import TrainConfig, build_task  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402

VARIANTS = [  # (component, design, ModelConfig changes)
    ("E_ATTN", "Bi-Softmax attention (ours)", {}),
    ("E_ATTN", "Sigmoid attention", {"attention": "sigmoid"}),
    ("E_ATTN", "Linear attention", {"attention": "linear"}),
    ("E_FF", "Softmax FF", {"feedforward": "softmax"}),
    ("E_FF", "Gated FF", {"feedforward": "gated"}),
    ("Step size", "alpha_t = gamma_t = 0.5", {"step_sizes": "fixed", "fixed_step": 0.5}),
    ("Step size", "alpha_t = gamma_t = 0.1", {"step_sizes": "fixed", "fixed_step": 0.1}),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits", choices=("digits", "fashion_mnist"))
    ap.add_argument("--epochs", type=int, help="epochs per variant (default: from --budget-minutes)")
    ap.add_argument("--budget-minutes", type=float, default=10.0, help="total budget for all variants")
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--limit-train", type=int, default=0)
    ap.add_argument("--limit-test", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", help="comma-separated variant numbers (0-6) to run")
    ap.add_argument("--out", default="runs/exp_ablation")
    args = ap.parse_args(argv)
    setup_logging(quiet=True)

    base_model = ModelConfig(
        arch="hyperset", d=args.d, heads=args.heads, iters=args.iters, ff_ratio=1.0, condition="x0"
    )
    base = TrainConfig(
        task=args.task,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_epochs=1.0,
        eval_every=0,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        seed=args.seed,
        progress=False,
        patch_size=2 if args.task == "digits" else 7,
        diagnostics_samples=64,
        model=base_model,
        eval_iters=[args.iters // 2, args.iters, 2 * args.iters],
    )
    task = build_task(base)
    chosen = [int(i) for i in args.only.split(",")] if args.only else list(range(len(VARIANTS)))
    epochs = args.epochs
    if epochs is None:
        epochs, sps = epochs_for_budget(base, args.budget_minutes / len(chosen), task=task)
        print(
            f"budget {args.budget_minutes} min for {len(chosen)} variants: {sps:.3f} s/step -> {epochs} epochs each",
            flush=True,
        )
    rows = []
    for i in chosen:
        component, design, change = VARIANTS[i]
        cfg = replace(base, epochs=epochs, model=replace(base_model, **change), out_dir=f"{args.out}/v{i}")
        row = run(cfg, design, task=task)
        row.update(
            component=component,
            top1=row["final"]["test_top1"],
            top1_2T=next((s["top1"] for s in row["sweep"] if s["iters"] == 2 * args.iters), float("nan")),
        )
        rows.append(row)
        print(
            f"{component:10s} {design:32s} top1={100 * row['top1']:.2f}%  params={row['params']:,}  "
            f"({row['minutes']} min)",
            flush=True,
        )
    for r in rows:
        r["top1_pct"] = round(100 * r["top1"], 2)
        r["top1_2T_pct"] = round(100 * r["top1_2T"], 2)
    text = (
        f"Task {args.task}, Hyper-SET d={args.d}, {args.heads} heads, 1 layer x {args.iters} iterations, "
        f"{epochs} epochs, seed {args.seed}.\n\n"
        + table(
            rows,
            [
                ("component", "component"),
                ("design", "label"),
                ("params", "params"),
                (f"top-1 % (T={args.iters})", "top1_pct"),
                (f"top-1 % (T={2 * args.iters})", "top1_2T_pct"),
                ("minutes", "minutes"),
            ],
        )
    )
    print(text)
    print("recorded in", record(args.out, "Ablation (Table 4 style)", rows, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
