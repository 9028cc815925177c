"""Sudoku (Sec. 5.1, Fig. 3): Hyper-SET vs vanilla Transformer vs Energy Transformer at equal iterations and
matched parameters, at a CPU-trainable size; then the test-time extrapolation curve up to 2x the iterations.

Hyper-SET sets the size (d, heads, 1 layer x T iterations); each baseline gets the width d whose parameter count is
closest to Hyper-SET's. Every model sees the same generated puzzles (17-34 givens), the same recipe (App. D.2:
AdamW (0.9, 0.95), weight decay 0.1, cosine decay, clipping 1.0, loss on the blanks of the last iteration).

    python benchmarks/exp_sudoku.py --d 128 --iters 16 --n-train 9000 --epochs 20          # the full CPU recipe
    python benchmarks/exp_sudoku.py --d 64 --iters 8 --n-train 2000 --budget-minutes 30     # what fits a shared box
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_common import epochs_for_budget, match_width, n_params, record, run, sweep_table, table  # noqa: E402

from energyarch.models import ModelConfig  # noqa: E402
from energyarch.train import TrainConfig, build_task  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402
from energyarch.train.plots import plot_comparison  # noqa: E402

LABELS = {
    "hyperset": "Hyper-SET",
    "transformer": "Transformer",
    "energy_transformer": "Energy Transformer",
    "crate": "CRATE",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default="hyperset,transformer,energy_transformer")
    ap.add_argument("--d", type=int, default=128, help="Hyper-SET width (baselines are matched in parameters)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--iters", type=int, default=16, help="training iterations T of the single layer")
    ap.add_argument("--n-train", type=int, default=9000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--epochs", type=int, help="epochs per model (default: from --budget-minutes)")
    ap.add_argument("--budget-minutes", type=float, default=30.0, help="total budget for all models")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--loss-on",
        default="last",
        choices=("last", "all"),
        help="loss on the last iteration (the paper) or on every iteration (Recurrent Transformer)",
    )
    ap.add_argument("--data-dir", help="Sudoku cache folder (default ~/.cache/energyarch)")
    ap.add_argument("--match", default="params", choices=("params", "width"))
    ap.add_argument("--out", default="runs/exp_sudoku")
    ap.add_argument(
        "--collect",
        nargs="+",
        metavar="DIR",
        help="train nothing: merge the results.json of earlier runs (e.g. models trained in parallel "
        "processes with --archs) into one table and plot under --out",
    )
    args = ap.parse_args(argv)
    setup_logging(quiet=True)
    if args.collect:
        rows, sources = [], []
        for folder in args.collect:
            path = Path(folder) / "results.json"
            if not path.is_file():
                ap.error(f"--collect {folder}: no results.json there; give folders written by this script's --out")
            info = json.loads(path.read_text())
            rows += info["rows"]
            sources.append(info.get("command", str(path)))
        return report(rows, args.out, sources)

    archs = args.archs.split(",")
    hyper = ModelConfig(arch="hyperset", d=args.d, heads=args.heads, iters=args.iters, ff_ratio=4.0, condition="x0")
    T = args.iters
    base = TrainConfig(
        task="sudoku",
        n_train=args.n_train,
        n_test=args.n_test,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=1e-5,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        warmup_epochs=0.5,
        grad_clip=1.0,
        eval_every=0,
        seed=args.seed,
        loss_on=args.loss_on,
        progress=False,
        model=hyper,
        eval_iters=sorted({max(1, T * k // 4) for k in range(1, 9)}),
        diagnostics_samples=100,
    )
    task = build_task(base)
    reference = n_params(hyper, task.spec)
    models = {}
    for arch in archs:
        cfg = replace(hyper, arch=arch) if arch != "hyperset" else hyper
        if arch != "hyperset" and args.match == "params":
            cfg = match_width(reference, cfg, task.spec, range(args.heads * 4, 4 * args.d + 1, args.heads))
        models[arch] = cfg
        print(f"{LABELS[arch]:20s} d={cfg.d:4d}  params={n_params(cfg, task.spec):,}", flush=True)
    epochs = args.epochs
    if epochs is None:
        epochs, sps = epochs_for_budget(base, args.budget_minutes / len(archs), task=task)
        print(
            f"budget {args.budget_minutes} min for {len(archs)} models: Hyper-SET {sps:.2f} s/step -> "
            f"{epochs} epochs each",
            flush=True,
        )
    rows = []
    for arch, mcfg in models.items():
        cfg = replace(base, epochs=epochs, model=mcfg, out_dir=f"{args.out}/{arch}")
        row = run(cfg, LABELS[arch], task=task)
        f = row["final"]
        row.update(board_pct=round(100 * f["test_board_acc"], 2), cell_pct=round(100 * f["test_cell_acc"], 2))
        rows.append(row)
        print(
            f"{LABELS[arch]:20s} board={row['board_pct']:.2f}%  cell={row['cell_pct']:.2f}%  ({row['minutes']} min)",
            flush=True,
        )
    return report(rows, args.out)


def report(rows: list[dict], out: str, sources: Sequence[str] = ()) -> int:
    """Table, test-time iteration sweeps and plots of trained ``rows``; the recipe is read from the first run."""
    cfg = json.loads((Path(rows[0]["out_dir"]) / "metrics.json").read_text())["config"]
    T = cfg["model"]["iters"]
    plot = plot_comparison(
        {r["label"]: r["sweep"] for r in rows},
        "cell_acc",
        T,
        Path(out) / "extrapolation.png",
        title="Sudoku: test-time iterations (cell accuracy)",
    )
    plot_b = plot_comparison(
        {r["label"]: r["sweep"] for r in rows},
        "board_acc",
        T,
        Path(out) / "extrapolation_board.png",
        title="Sudoku: test-time iterations (boards)",
    )
    text = (
        f"Sudoku, {cfg['n_train']} train / {cfg['n_test']} test generated puzzles ({cfg['min_givens']}-"
        f"{cfg['max_givens']} givens), 1 layer x {T} iterations, {cfg['epochs']} epochs, batch "
        f"{cfg['batch_size']}, lr {cfg['lr']:g}, loss on {cfg['loss_on']} iteration(s), seed {cfg['seed']}.\n\n"
        + table(
            rows,
            [
                ("model", "label"),
                ("d", "d"),
                ("params", "params"),
                ("board acc %", "board_pct"),
                ("cell acc %", "cell_pct"),
                ("minutes", "minutes"),
            ],
        )
        + "\n\nTest-time iterations, cell accuracy %:\n\n"
        + sweep_table(rows, "cell_acc")
        + "\n\nTest-time iterations, board accuracy %:\n\n"
        + sweep_table(rows, "board_acc")
        + f"\n\nPlots: {plot}, {plot_b}\n"
        + "".join(f"\nMerged from: `{command}`\n" for command in sources)
    )
    print(text)
    print("recorded in", record(out, "Sudoku: Hyper-SET vs baselines", rows, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
