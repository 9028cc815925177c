"""Step-size rules (issue 17): free (the paper's signed steps) vs bounded vs guaranteed descent, with gd and Nesterov.

Per run: the task's metric at the trained depth T and at 2T, ``term_rise_fraction`` (max over terms: the fraction of
(sample, iteration) sub-steps that raised their own term's energy), the total-energy ``energy_rise_fraction``, and
the mean wall time of a training step (same run, so descent/free ratios are comparable within one task). With
``--negate`` also, per rule (gd, first seed), whether the declared energy E and its negative −E train to the same
model (max |logit difference| on the first 256 test examples).

    python benchmarks/exp_descent.py --tasks digits --seeds 0,1,2 --out runs/exp_descent
    python benchmarks/exp_descent.py --tasks fashion_mnist,text,sudoku --seeds 0 --out runs/exp_descent_small

Tasks use their packaged configs (``energyarch/train/configs``): digits is the full recipe; the others are cut to
fit a shared 2-core CPU (``--epochs``, ``--limit-train``; the cut is printed in the results).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from exp_common import record, seconds_per_step, table  # noqa: E402

from energyarch.train import TrainConfig, train  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402
from energyarch.train.trainer import load_run  # noqa: E402

RULES = ("free", "bounded", "descent")
SOLVERS = {"gd": {}, "nesterov": {"momentum": 0.9}}
PACKAGED = {"digits": "digits", "fashion_mnist": "fashion_mnist", "text": "text_small", "sudoku": "sudoku_small"}
#: E and −E as inline declarations (the presets bisoftmax and relu written out, then negated)
ENERGY = {
    +1: ('{ f = "log(x)/beta", K = "exp(beta*s)" }', '{ g = "x", h = "relu(x)**2/2" }'),
    -1: ('{ f = "-log(x)/beta", K = "exp(beta*s)" }', '{ g = "-x", h = "relu(x)**2/2" }'),
}


def config(task: str, rule: str, solver: str, seed: int, out: Path, args, sign: int = 0) -> TrainConfig:
    cfg = TrainConfig.load(PACKAGED[task])
    T = cfg.model.iters
    params = dict(SOLVERS[solver])
    ov = [
        f'out_dir="{out}"',
        "progress=false",
        "eval_every=0",
        f"seed={seed}",
        f"eval_iters=[{T}, {2 * T}]",
        f'model.steps="{rule}"',
        f'model.solver="{solver}"',
        "model.solver_params={ " + ", ".join(f"{k} = {v}" for k, v in params.items()) + " }",
    ]
    epochs = args.epochs.get(task)
    if epochs:
        ov.append(f"epochs={epochs}")
    if task == "fashion_mnist":
        ov += [f'data_dir="{args.fashion_dir}"', f"limit_train={args.limit_train}", "limit_test=2000"]
    if sign:
        ov += [f"model.attention={ENERGY[sign][0]}", f"model.feedforward={ENERGY[sign][1]}"]
    return cfg.with_overrides(ov)


def one(task, rule, solver, seed, out: Path, args, sign: int = 0) -> dict:
    cfg = config(task, rule, solver, seed, out, args, sign)
    start = time.perf_counter()
    train(cfg)
    minutes = (time.perf_counter() - start) / 60
    ev = json.loads((out / "eval.json").read_text())
    T = cfg.model.iters
    metric = "cell_acc" if task == "sudoku" else ev["metric"]  # small Sudoku: boards are rarely all right
    at = {row["iters"]: row[metric] for row in ev["sweep"]}
    speed = json.loads((out / "metrics.json").read_text())["speed"]["epochs"]
    steps = [e["step_s"] for e in speed if e.get("step_s")]
    terms = ev.get("term_rise_fraction") or {}
    return {
        "task": task,
        "rule": rule,
        "solver": solver,
        "seed": seed,
        "sign": sign,
        "epochs": cfg.epochs,
        "metric": metric,
        "at_T": at.get(T),
        "at_2T": at.get(2 * T),
        "term_rise_max": terms.get("max"),
        "term_rise": {k: v for k, v in terms.items() if k != "max"},
        "energy_rise": ev.get("energy_rise_fraction"),
        "step_s": statistics.mean(steps) if steps else None,
        "minutes": round(minutes, 2),
        "out_dir": str(out),
    }


@torch.no_grad()
def logit_gap(a: Path, b: Path) -> float:
    ma, task, _, _ = load_run(a)
    mb, _, _, _ = load_run(b)
    ma.eval()
    mb.eval()
    batch = task.test_set[list(range(min(256, len(task.test_set))))]
    x = task.inputs(batch, "cpu")
    return float((ma(x) - mb(x)).abs().max())


def _ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values):.2g}"


def summary(rows: list) -> str:
    """Per (task, solver, rule): mean ± sample standard deviation over seeds (the cost of a rule: ``--timing``)."""
    lines = [
        "| task | solver | rule | seeds | metric at T | at 2T | term rise (max) | total energy rise | "
        "s/step (wall; load varied between runs) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in rows:
        if not r["sign"]:
            groups.setdefault((r["task"], r["solver"], r["rule"]), []).append(r)
    for (task, solver, rule), rs in groups.items():
        step = statistics.mean(r["step_s"] for r in rs)
        scale = 100 if rs[0]["metric"] != "bpb" else 1
        lines.append(
            f"| {task} | {solver} | {rule} | {len(rs)} | {_ms([scale * r['at_T'] for r in rs])} "
            f"| {_ms([scale * r['at_2T'] for r in rs])} | {_ms([r['term_rise_max'] for r in rs])} "
            f"| {_ms([r['energy_rise'] for r in rs])} | {step:.3g} |"
        )
    neg = [r for r in rows if r["sign"]]
    if neg:
        lines += [
            "",
            "E vs −E (gd, first seed; max abs logit difference on 256 test examples):",
            "",
            table(
                neg,
                [
                    ("task", "task"),
                    ("rule", "rule"),
                    ("sign", "sign"),
                    ("epochs", "epochs"),
                    ("metric at T", "at_T"),
                    ("max abs logit difference E vs −E", "logit_gap"),
                ],
            ),
        ]
    lines += [
        "",
        "Every run:",
        "",
        table(
            [r for r in rows if not r["sign"]],
            [
                ("task", "task"),
                ("solver", "solver"),
                ("rule", "rule"),
                ("seed", "seed"),
                ("epochs", "epochs"),
                ("at T", "at_T"),
                ("at 2T", "at_2T"),
                ("term rise", "term_rise_max"),
                ("energy rise", "energy_rise"),
                ("s/step", "step_s"),
                ("minutes", "minutes"),
            ],
        ),
    ]
    return "\n".join(lines)


def _record(out: Path, rows: list) -> None:
    import os

    load = os.getloadavg()
    record(
        out,
        "Step rules: free vs bounded vs descent",
        rows,
        summary(rows) + f"\n\nLoad average at the end (1, 5, 15 min): {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}",
        {"loadavg": load},
    )


def timing(tasks: list, rules: list, args, out: Path, rounds: int = 2, steps: int = 8) -> str:
    """Median seconds per training step of each rule, measured in one process, rules interleaved (``rounds``
    times ``steps`` steps each), with the ratio to free steps: the cost of the rule under the same load."""
    import os

    lines = ["| task | solver | rule | s/step (median) | ÷ free |", "|---|---|---|---|---|"]
    for task in tasks:
        for solver in args.solvers.split(","):
            times: dict = {r: [] for r in rules}
            for _ in range(rounds):
                for rule in rules:
                    cfg = config(task, rule, solver, 0, out / "timing", args)
                    times[rule].append(seconds_per_step(cfg, steps=steps))
            med = {r: statistics.median(v) for r, v in times.items()}
            for rule in rules:
                ratio = med[rule] / med["free"] if "free" in med else float("nan")
                lines.append(f"| {task} | {solver} | {rule} | {med[rule]:.3g} | {ratio:.2f} |")
    load = os.getloadavg()
    return "\n".join(lines) + (
        f"\n\nOne process, rules interleaved, {rounds} × {steps} steps each (after a warm-up "
        f"step); load average (1, 5, 15 min) {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="digits")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--rules", default=",".join(RULES))
    ap.add_argument("--solvers", default=",".join(SOLVERS))
    ap.add_argument(
        "--epochs", default="", help="per-task epochs, e.g. fashion_mnist=2,sudoku=2 (default: the config's)"
    )
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--negate", default="", help="tasks on which E and −E are trained (gd, first seed, each rule)")
    ap.add_argument("--negate-epochs", type=int, default=3)
    ap.add_argument("--out", default="runs/exp_descent")
    ap.add_argument("--append", action="store_true", help="add to the rows already in OUT/results.json")
    ap.add_argument(
        "--timing",
        action="store_true",
        help="only measure seconds per training step of each rule (one process, interleaved) into OUT/timing.md",
    )
    args = ap.parse_args(argv)
    args.epochs = {k: int(v) for k, v in (p.split("=") for p in args.epochs.split(",") if p)}
    setup_logging(False)
    out = Path(args.out)
    if args.timing:
        from energyarch.train.config import atomic_write_text

        text = timing([t for t in args.tasks.split(",") if t], args.rules.split(","), args, out)
        atomic_write_text(out / "timing.md", text + "\n")
        print(text)
        return 0
    rows = (
        json.loads((out / "results.json").read_text())["rows"]
        if args.append and (out / "results.json").exists()
        else []
    )
    seeds = [int(s) for s in args.seeds.split(",")]
    for task in [t for t in args.tasks.split(",") if t]:
        for seed in seeds:
            for solver in args.solvers.split(","):
                for rule in args.rules.split(","):
                    row = one(task, rule, solver, seed, out / f"{task}-{solver}-{rule}-s{seed}", args)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    _record(out, rows)
    for task in [t for t in args.negate.split(",") if t]:
        saved = dict(args.epochs)
        args.epochs[task] = args.negate_epochs
        for rule in args.rules.split(","):
            pair = [
                one(task, rule, "gd", seeds[0], out / f"neg-{task}-{rule}-{'pm'[s < 0]}", args, sign=s)
                for s in (+1, -1)
            ]
            gap = logit_gap(Path(pair[0]["out_dir"]), Path(pair[1]["out_dir"]))
            for r in pair:
                r["logit_gap"] = gap
                rows.append(r)
                print(json.dumps(r), flush=True)
            _record(out, rows)
        args.epochs = saved
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
