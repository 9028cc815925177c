"""Solvers of the recurrent layer (issue 10): gd vs heavy ball vs Nesterov vs preconditioned (Adam), each with
learned (free) and descent-safe (bounded + backtracking) steps, two seeds, CPU-sized.

Per run: top-1 (Sudoku: cell accuracy) at the trained depth T and at 2T, the fraction of (sample, iteration) pairs
whose total energy rises (at 2T, on the first 256 test examples, eval mode), and adaptive depth: the fewest mean
iterations (tolerances 1e-2, 1e-3, 1e-4; at most 2T) whose accuracy is at least the fixed-depth accuracy at T.
Solvers add no parameters, so every run of a task has the same parameter count.

    python benchmarks/exp_solvers.py --tasks digits,fashion_mnist,sudoku --seeds 0,1 \
        --fashion-dir /usr/share/datasets/fashion-mnist --out runs/exp_solvers
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_common import record, run, table  # noqa: E402

from energyarch.models import ModelConfig  # noqa: E402
from energyarch.train import TrainConfig, build_task  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402
from energyarch.train.evaluate import adaptive_depth  # noqa: E402
from energyarch.train.trainer import load_run  # noqa: E402

SOLVERS = [("gd", {}), ("momentum", {"momentum": 0.9}), ("nesterov", {"momentum": 0.9}), ("rmsprop", {}), ("adam", {})]
RULES = {"learned": {}, "safe": {"steps": "bounded", "max_step": 0.2, "backtrack": 3}}
TOLS = [1e-2, 1e-3, 1e-4]


def task_config(task: str, args) -> TrainConfig:
    """A small model and schedule per task (what fits the CPU budget)."""
    model = ModelConfig(arch="hyperset", d=args.d, heads=4, iters=args.iters, ff_ratio=1.0, time_freq=64)
    common = dict(
        batch_size=64,
        lr=2e-3,
        warmup_epochs=0.5,
        eval_every=0,
        progress=False,
        diagnostics_samples=256,
        eval_iters=[args.iters, 2 * args.iters],
        model=model,
    )
    if task == "digits":
        return TrainConfig(task="digits", epochs=args.epochs_digits, patch_size=2, **common)
    if task == "fashion_mnist":
        return TrainConfig(
            task="fashion_mnist",
            epochs=args.epochs_fashion,
            patch_size=7,
            data_dir=args.fashion_dir,
            limit_train=args.limit_train,
            limit_test=args.limit_test,
            **common,
        )
    return TrainConfig(
        task="sudoku",
        epochs=args.epochs_sudoku,
        n_train=args.sudoku_train,
        n_test=200,
        min_givens=30,
        max_givens=40,
        weight_decay=0.1,
        **common,
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="digits,fashion_mnist,sudoku")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--sudoku-seeds", default="0", help="seeds of the Sudoku runs (the slowest task)")
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--epochs-digits", type=int, default=6)
    ap.add_argument("--epochs-fashion", type=int, default=2)
    ap.add_argument("--epochs-sudoku", type=int, default=2)
    ap.add_argument("--limit-train", type=int, default=4000, help="Fashion-MNIST training images used")
    ap.add_argument("--limit-test", type=int, default=1000, help="Fashion-MNIST test images used")
    ap.add_argument("--sudoku-train", type=int, default=500)
    ap.add_argument("--fashion-dir", default=None)
    ap.add_argument("--solvers", default=",".join(s for s, _ in SOLVERS))
    ap.add_argument("--out", default="runs/exp_solvers")
    args = ap.parse_args(argv)
    setup_logging(quiet=True)
    chosen = [s for s in SOLVERS if s[0] in args.solvers.split(",")]
    rows = []
    for task_name in args.tasks.split(","):
        base = task_config(task_name, args)
        task = build_task(base)
        metric = task.primary if task.primary != "board_acc" else "cell_acc"
        seeds = args.sudoku_seeds if task_name == "sudoku" else args.seeds
        for seed in [int(s) for s in seeds.split(",")]:
            for solver, params in chosen:
                for rule, extra in RULES.items():
                    model = replace(base.model, solver=solver, solver_params={**params, **extra})
                    cfg = replace(
                        base, seed=seed, model=model, out_dir=f"{args.out}/{task_name}/{solver}-{rule}-s{seed}"
                    )
                    row = run(cfg, f"{solver} ({rule})", task=task)
                    by = {s["iters"]: s[metric] for s in row["sweep"]}
                    ev = json.loads(Path(row["out_dir"], "eval.json").read_text())
                    trained = load_run(row["out_dir"], task=task)[0]
                    adaptive = adaptive_depth(trained, task, task.test_set, TOLS, 2 * args.iters)
                    target = by[args.iters]
                    ok = [r for r in adaptive if r[metric] >= target]
                    best = min(ok, key=lambda r: r["mean_iters"]) if ok else None
                    row.update(
                        task=task_name,
                        solver=solver,
                        rule=rule,
                        seed=seed,
                        metric=metric,
                        acc_T=100 * by[args.iters],
                        acc_2T=100 * by[2 * args.iters],
                        rise_pct=100 * ev["energy_rise_fraction"],
                        rise_max=ev["energy_rise_max"],
                        adaptive=adaptive,
                        adaptive_iters=(round(best["mean_iters"], 2) if best else "not reached"),
                        saved=(round(args.iters - best["mean_iters"], 2) if best else "—"),
                    )
                    rows.append(row)
                    print(
                        f"{task_name:13s} seed {seed} {solver:9s} {rule:8s} {metric}@T={row['acc_T']:.2f} "
                        f"@2T={row['acc_2T']:.2f} rise={row['rise_pct']:.1f}% adaptive={row['adaptive_iters']} "
                        f"({row['minutes']} min)",
                        flush=True,
                    )
    cols = [
        ("task", "task"),
        ("solver", "solver"),
        ("steps", "rule"),
        ("seed", "seed"),
        ("params", "params"),
        (f"acc % (T={args.iters})", "acc_T"),
        (f"acc % (2T={2 * args.iters})", "acc_2T"),
        ("energy rises (% pairs)", "rise_pct"),
        ("largest rise", "rise_max"),
        ("adaptive: mean iters at ≥ acc(T)", "adaptive_iters"),
        ("iters saved", "saved"),
        ("minutes", "minutes"),
    ]
    for r in rows:
        for k in ("acc_T", "acc_2T", "rise_pct"):
            r[k] = round(r[k], 2)
    text = (
        f"Hyper-SET d={args.d}, 4 heads, 1 layer x T={args.iters} iterations, ff_ratio 1, batch 64, lr 2e-3. "
        f"digits: {args.epochs_digits} epochs (1,437 train / 360 test); Fashion-MNIST: {args.epochs_fashion} "
        f"epochs on the first {args.limit_train} training / {args.limit_test} test images; Sudoku: "
        f"{args.epochs_sudoku} epochs on {args.sudoku_train} generated puzzles (30-40 givens), 200 test, metric "
        f"cell accuracy. 'safe' = steps='bounded' (α = 0.2·sigmoid(raw), secant-curvature cap) + backtrack=3 at "
        f"inference. Momentum 0.9 (heavy ball, Nesterov); Adam (0.9, 0.96).\n\n" + table(rows, cols)
    )
    print(text)
    print("recorded in", record(args.out, "Solvers: gd vs heavy ball vs Nesterov vs RMSProp vs Adam", rows, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
