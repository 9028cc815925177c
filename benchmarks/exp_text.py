"""Byte-level language modelling on the embedded corpus (issue 9): causal energies against a GPT baseline.

Three models at matched parameters, on the same data (the Python standard-library corpus, fixed last-10 %
validation split, the same seeded training windows in the same order) and the same recipe (AdamW (0.9, 0.95),
weight decay 0.1, warmup then cosine decay, clipping 1.0), each trained for ``--budget-minutes`` of wall time
(the schedule is sized to the steps that fit, from a measured step time) or for ``--steps`` steps:

- **Hyper-SET (causal energy)**: the causal conditional bi-softmax energy + ReLU feed-forward energy, one layer
  iterated T times (recurrent depth) with learned step sizes — ``ea.CausalAttention`` with Hyper-SET's one basis
  per head;
- **CEM-style tied layer**: the same causal attention energy with separate query and key projections, tied as the
  gradient implies (``interaction = "query-key"``, i.e. ``ea.QueryKey()``: Causal Energy Minimization's
  weight-tied attention), and CEM's gated feed-forward with shared up/down projections (``gated-cem``);
- **GPT**: the pre-norm causal Transformer (``arch = "transformer"``, L distinct blocks, one pass), its width
  chosen so that its parameter count is closest to Hyper-SET's.

Output: validation bits per byte, parameters, training tokens/s, bits per byte against test-time iterations and
a few generated samples, in ``--results`` (markdown) with a PNG next to it, and every run folder under ``--out``.

    python benchmarks/exp_text.py --budget-minutes 30                   # the experiment (about 1.5 h of CPU)
    python benchmarks/exp_text.py --smoke                               # < 1 min: the pipeline, not a result
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exp_common import match_width, n_params, record, seconds_per_step, table  # noqa: E402

from energyarch.data.text import ByteWindows  # noqa: E402
from energyarch.errors import EnergyArchError  # noqa: E402
from energyarch.models import ModelConfig, build_model  # noqa: E402
from energyarch.train import TrainConfig, build_task, train  # noqa: E402
from energyarch.train.cli import setup_logging  # noqa: E402
from energyarch.train.config import atomic_write_text  # noqa: E402
from energyarch.train.generate import generate  # noqa: E402
from energyarch.train.plots import plot_comparison  # noqa: E402
from energyarch.train.tasks import TextTask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ("def ", "class ", "    if ")


def cem_config(hyper: ModelConfig):
    """The CEM-style tied layer as a config, or None with the reason when this build cannot declare it.

    HOOK (CEM): the causal energy with CEM's weight-tied attention (``interaction = "query-key"``: separate query
    and key projections, value = key projection, output = query-projection transpose, i.e.
    ``ea.CausalAttention(..., interaction=ea.QueryKey())``) and CEM's gated feed-forward with shared up/down
    projections (preset ``gated-cem``). Change it here if the declaration's names change.
    """
    try:
        return replace(hyper, interaction="query-key", feedforward="gated-cem"), None
    except EnergyArchError as err:  # a declaration this build does not accept
        return None, f"{type(err).__name__}: {err}"


def model_configs(args, spec) -> tuple[dict, dict]:
    """label -> ModelConfig at matched parameters, and label -> reason for each model left out."""
    hyper = ModelConfig(
        arch="hyperset",
        d=args.d,
        heads=args.heads,
        layers=1,
        iters=args.iters,
        attention="bisoftmax",
        feedforward="relu",
        ff_ratio=4.0,
        step_sizes="learned",
        condition="x0",
        time_freq=args.time_freq,
    )
    widths = range(args.heads * 4, 4 * args.d + 1, args.heads)
    models, skipped = {}, {}
    try:
        reference = n_params(hyper, spec)
        models["Hyper-SET (causal energy)"] = hyper
    except EnergyArchError as err:
        skipped["Hyper-SET (causal energy)"] = f"{type(err).__name__}: {err}"
        reference = None
    if "cem" in args.models:
        cem, why = cem_config(hyper)
        if cem is not None:
            try:
                models["CEM-style tied layer"] = (
                    match_width(reference, cem, spec, widths) if reference is not None else cem
                )
            except EnergyArchError as err:
                why = f"{type(err).__name__}: {err}"
        if why:
            skipped["CEM-style tied layer"] = why
    if "gpt" in args.models:
        gpt = ModelConfig(arch="transformer", d=args.d, heads=args.heads, layers=args.gpt_layers, iters=1)
        label = f"GPT ({args.gpt_layers} block{'s' if args.gpt_layers > 1 else ''})"
        models[label] = match_width(reference, gpt, spec, widths) if reference is not None else gpt
    if "hyperset" not in args.models:
        models.pop("Hyper-SET (causal energy)", None)
    return models, skipped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="hyperset,cem,gpt", help="comma-separated: hyperset, cem, gpt")
    ap.add_argument("--d", type=int, default=128, help="Hyper-SET width (the others are matched in parameters)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--iters", type=int, default=8, help="training iterations T of the energy models' one layer")
    ap.add_argument("--gpt-layers", type=int, default=2, help="distinct blocks of the GPT baseline")
    ap.add_argument("--time-freq", type=int, default=128, help="time embedding width of the step-size network")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--budget-minutes", type=float, default=30.0, help="training wall time per model")
    ap.add_argument("--steps", type=int, help="train every model for this many steps instead of a time budget")
    ap.add_argument("--val-windows", type=int, default=0, help="validation windows (0 = all of the split)")
    ap.add_argument("--sample-bytes", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--text-path", help="a UTF-8 file or folder instead of the embedded corpus")
    ap.add_argument("--out", default="runs/exp_text")
    ap.add_argument(
        "--results", help="markdown file (default benchmarks/results/exp_text.md; with --smoke, OUT/exp_text.md)"
    )
    ap.add_argument("--smoke", action="store_true", help="a tiny run of the whole pipeline (< 1 min)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.d, args.heads, args.iters, args.gpt_layers, args.time_freq = 32, 2, 2, 1, 8
        args.seq_len, args.batch_size, args.steps, args.val_windows, args.sample_bytes = 32, 8, 4, 8, 24
        args.out = args.out if args.out != "runs/exp_text" else "runs/exp_text_smoke"
    args.models = args.models.split(",")
    results = (
        Path(args.results)
        if args.results
        else (Path(args.out) / "exp_text.md" if args.smoke else ROOT / "benchmarks" / "results" / "exp_text.md")
    )
    setup_logging(quiet=True)

    T = args.iters
    sweep = sorted({max(1, round(T * k / 4)) for k in range(1, 9)})
    base = TrainConfig(
        task="text",
        text_path=args.text_path,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.lr / 20,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        grad_clip=1.0,
        eval_every=0,
        seed=args.seed,
        data_seed=args.seed,
        limit_test=args.val_windows,
        limit_train=8 * args.batch_size,  # enough for the step-time probe; runs get their own
        progress=False,
        eval_iters=sweep,
        diagnostics_samples=0 if args.smoke else 64,
    )
    task = build_task(base)
    models, skipped = model_configs(args, task.spec)
    for label, why in skipped.items():
        print(f"{label:28s} skipped: {why}", flush=True)
    for label, mcfg in models.items():
        print(f"{label:28s} d={mcfg.d:4d}  params={n_params(mcfg, task.spec):,}", flush=True)

    configs, steps = {}, {}
    for label, mcfg in models.items():
        energy = mcfg.arch == "hyperset"
        configs[label] = replace(
            base,
            model=mcfg,
            eval_iters=sweep if energy else [1],
            epochs=1,
            out_dir=f"{args.out}/{label.split()[0].lower()}",
        )
        if args.steps:
            steps[label] = args.steps
            continue
        sps = seconds_per_step(configs[label], task=task)
        steps[label] = max(10, int(args.budget_minutes * 60 / sps))
        print(f"{label:28s} {sps:.3f} s/step -> {steps[label]} steps in {args.budget_minutes:g} min", flush=True)
    # one seeded draw of training windows: every model reads the same windows in the same order, the first
    # steps * batch_size of them (one epoch, so that the cosine schedule ends with the budget)
    windows = ByteWindows.random(
        task.train_set.data, args.seq_len, count=max(steps.values(), default=1) * args.batch_size, seed=args.seed
    )
    rows = []
    for label, cfg in configs.items():
        n = steps[label] * args.batch_size
        own = TextTask(
            ByteWindows(windows.data, args.seq_len, windows.starts[:n]),
            task.test_set,
            args.seq_len,
            {**task.data_info, "train_windows": n},
        )
        cfg = replace(cfg, warmup_steps=max(1, steps[label] // 20))
        model = build_model(cfg.model, own.spec)  # kept for the samples
        row = run(cfg, label, task=own, model=model)
        metrics = json.loads((Path(row["out_dir"]) / "metrics.json").read_text())
        speed = metrics["speed"]["epochs"]
        row.update(
            steps=steps[label],
            val_bpb=row["final"].get("test_bpb"),
            val_top1_pct=100 * row["final"].get("test_top1", 0.0),
            tokens_per_s=round(
                sum(e["tokens_per_s"] * e["steps"] for e in speed) / max(1, sum(e["steps"] for e in speed)), 1
            ),
            samples=samples(model, args),
        )
        rows.append(row)
        print(
            f"{label:28s} val bpb={row['val_bpb']:.4f}  {row['tokens_per_s']:,.0f} tokens/s  ({row['minutes']} min)",
            flush=True,
        )
    if not rows:
        print("no model could be built; nothing to report", file=sys.stderr)
        return 1
    return report(rows, skipped, task, args, results)


def run(cfg: TrainConfig, label: str, task, model) -> dict:
    """Train ``model`` (built from ``cfg.model``) as ``energyarch train`` does; a row as exp_common.run's."""
    start = time.perf_counter()
    summary = train(cfg, task=task, model=model)
    return {
        "label": label,
        "arch": cfg.model.arch,
        "d": cfg.model.d,
        "params": summary["parameters"],
        "epochs": cfg.epochs,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "final": summary["final"],
        "sweep": summary.get("sweep", []),
        "plots": summary.get("plots", {}),
        "out_dir": summary["out_dir"],
    }


def samples(model, args) -> dict:
    """A continuation of each prompt (temperature 0.8, top-k 40, seed 0) from the trained model."""
    return {
        p: generate(model, p.encode(), args.sample_bytes, temperature=0.8, top_k=40, seed=0).decode("utf-8", "replace")
        for p in (PROMPTS[:1] if args.smoke else PROMPTS)
    }


def bpb_sweep_table(rows) -> str:
    iters = sorted({s["iters"] for r in rows for s in r["sweep"]})
    lines = ["| model | " + " | ".join(f"T={k}" for k in iters) + " |", "|---|" + "|".join("---" for _ in iters) + "|"]
    for r in rows:
        by = {s["iters"]: s["bpb"] for s in r["sweep"]}
        lines.append(f"| {r['label']} | " + " | ".join(f"{by[k]:.4f}" if k in by else "" for k in iters) + " |")
    return "\n".join(lines)


def report(rows, skipped, task, args, results: Path) -> int:
    info = task.data_info
    plot = plot_comparison(
        {r["label"]: r["sweep"] for r in rows},
        "bpb",
        args.iters,
        results.with_suffix(".png"),
        title="Validation bits per byte vs test-time iterations",
    )
    corpus = (
        f"the embedded corpus ({len(info['files'])} standard-library modules of Python {info['python']}, "
        f"{info['bytes']:,} bytes, sha256 {info['sha256'][:16]}…; it differs between Python versions)"
        if info["source"] == "python-stdlib"
        else f"{info['source']} ({info['bytes']:,} bytes, sha256 {info['sha256'][:16]}…)"
    )
    budget = f"{args.steps} steps each" if args.steps else f"{args.budget_minutes:g} min of training each"
    text = (
        f"Byte-level language modelling on {corpus}; last 10 % held out, validation on {info['val_windows']} "
        f"fixed windows of {info['seq_len']} bytes. Batch {args.batch_size}, lr {args.lr:g} (warmup, cosine), "
        f"AdamW (0.9, 0.95), weight decay 0.1, {budget}, seed {args.seed}, "
        f"{time.strftime('%Y-%m-%d')}."
        + (" **Smoke run: the numbers say the pipeline works, nothing about the models.**" if args.smoke else "")
        + "\n\n"
        + table(
            rows,
            [
                ("model", "label"),
                ("d", "d"),
                ("params", "params"),
                ("steps", "steps"),
                ("val bits/byte", "val_bpb"),
                ("val next-byte acc %", "val_top1_pct"),
                ("train tokens/s", "tokens_per_s"),
                ("minutes", "minutes"),
            ],
        )
        + "".join(f"\n\n{label}: not run ({why})." for label, why in skipped.items())
        + "\n\nValidation bits per byte against test-time iterations (energy models trained at T = "
        + f"{args.iters}; GPT has one pass):\n\n"
        + bpb_sweep_table(rows)
        + f"\n\nPlot: {plot}\n\nSamples (temperature 0.8, top-k 40, seed 0, {args.sample_bytes} bytes):\n"
    )
    for r in rows:
        for prompt, sample in r["samples"].items():
            text += f"\n{r['label']}, prompt {prompt!r}:\n\n```\n{prompt}{sample}\n```\n"
    print(text)
    out = record(
        args.out,
        "Byte-level language modelling: causal energies vs GPT",
        rows,
        text,
        extra={"data": info, "skipped": skipped},
    )
    results.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results, out.read_text(encoding="utf-8"))
    print("recorded in", out, "and", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
