"""Why the earlier solver study (benchmarks/results/exp_solvers_digits.md) found that safe steps cost 9-48 points.

That study's recipe (``exp_solvers.task_config``: d = 32, T = 8, 6 epochs, lr 2e-3, batch 64) trained its 'safe' rule
(steps='bounded', max_step = 0.2) *without* backtracking and evaluated it *with* ``backtrack = 3``: the model met a
different layer at test time than in training. Here, on that recipe and seed: free, bounded and descent are trained,
and every free or bounded model is evaluated at T and 2T with backtrack = 0 and 3 (the same weights; the descent
rule refuses inference-only backtracking, since it backtracks every sub-step in training already).

    python benchmarks/exp_descent_old.py --seeds 0,1 --out runs/exp_descent_old
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_common import record, table  # noqa: E402
from exp_solvers import task_config  # noqa: E402

from energyarch.train import train  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402
from energyarch.train.evaluate import sweep_iterations  # noqa: E402
from energyarch.train.trainer import load_run  # noqa: E402

RULES = {
    "free": {"steps": "free"},
    "bounded 0.2 (old 'safe')": {"steps": "bounded", "max_step": 0.2},
    "descent 1.0": {"steps": "descent", "max_step": 1.0},
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--out", default="runs/exp_descent_old")
    args = ap.parse_args(argv)
    setup_logging(False)
    old = argparse.Namespace(d=32, iters=8, epochs_digits=6)
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for label, params in RULES.items():
            cfg = task_config("digits", old)
            folder = Path(args.out) / f"{params['steps']}-s{seed}"
            model_cfg = dataclasses.replace(
                cfg.model, steps=params["steps"], solver_params={k: v for k, v in params.items() if k != "steps"}
            )
            cfg = dataclasses.replace(cfg, model=model_cfg, seed=seed, out_dir=str(folder), diagnostics_samples=0)
            train(cfg, report=False)
            model, task, _, _ = load_run(folder)
            for back in (0, 3) if params["steps"] != "descent" else (0,):  # descent backtracks in training already
                for layer in model.backbone.layers:
                    layer.step.solver = dataclasses.replace(layer.step.solver, backtrack=back)
                sweep = {r["iters"]: r["top1"] for r in sweep_iterations(model, task, task.test_set, [8, 16])}
                row = {
                    "rule": label,
                    "seed": seed,
                    "backtrack at eval": back,
                    "top1 T": 100 * sweep[8],
                    "top1 2T": 100 * sweep[16],
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    load = os.getloadavg()
    text = (
        table(rows, [(k, k) for k in rows[0]]) + "\n\nRecipe: benchmarks/exp_solvers.py task_config('digits') "
        f"(d = 32, T = 8, 6 epochs, lr 2e-3, batch 64, gd). Load average (1, 5, 15 min): {load[0]:.2f}, "
        f"{load[1]:.2f}, {load[2]:.2f}"
    )
    record(args.out, "Earlier solver study's recipe: backtracking at inference only", rows, text, {"loadavg": load})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
