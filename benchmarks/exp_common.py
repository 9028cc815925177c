"""Shared helpers of the experiment scripts (benchmarks/exp_*.py): parameter matching, budgets, tables, records.

Every experiment trains through :func:`energyarch.train.train` (the same code path as ``energyarch train``), writes
each run's folder under ``--out`` and a ``results.json`` / ``results.md`` with the command line that produced it.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from energyarch.models import ModelConfig, build_model, count_parameters
from energyarch.train import TrainConfig, Trainer, build_task, train
from energyarch.train.config import atomic_write_text


def n_params(model_cfg: ModelConfig, spec) -> int:
    return count_parameters(build_model(model_cfg, spec))


def match_width(reference: int, model_cfg: ModelConfig, spec, widths: Iterable[int]) -> ModelConfig:
    """The ``model_cfg`` with the width ``d`` (among ``widths``, each divisible by heads) whose parameter count
    is closest to ``reference``."""
    best = None
    for d in widths:
        if d % model_cfg.heads:
            continue
        cand = replace(model_cfg, d=d)
        gap = abs(n_params(cand, spec) - reference)
        if best is None or gap < best[0]:
            best = (gap, cand)
    return best[1]


def seconds_per_step(cfg: TrainConfig, steps: int = 3, task=None) -> float:
    """Median wall time of a training step (after one warm-up step), measured on a scratch copy of ``cfg``."""
    scratch = cfg.with_overrides(
        [f'out_dir="{tempfile.mkdtemp(prefix="exp-probe-")}"', "progress=false", "eval_every=0"]
    )
    trainer = Trainer(scratch, task=task)
    loader = iter(trainer._train_loader(0, 0))
    times = []
    try:
        for i in range(steps + 1):
            batch = next(loader)
            start = time.perf_counter()
            trainer.train_step(batch)
            if i:
                times.append(time.perf_counter() - start)
    finally:
        trainer.close()
    times.sort()
    return times[len(times) // 2]


def epochs_for_budget(cfg: TrainConfig, minutes: float, task=None, eval_fraction: float = 0.1) -> tuple[int, float]:
    """Epochs of ``cfg`` that fit in ``minutes`` (at least 1), from a measured step time; also the step time."""
    sps = seconds_per_step(cfg, task=task)
    n = len(task.train_set) if task is not None else len(build_task(cfg).train_set)
    steps = math.ceil(n / cfg.batch_size)
    per_epoch = sps * steps * (1 + eval_fraction)
    return max(1, int(minutes * 60 // per_epoch)), sps


def run(cfg: TrainConfig, label: str, task=None) -> dict:
    """Train one configuration; returns a row with the label, parameters, final metrics, sweep, time, folder."""
    start = time.perf_counter()
    summary = train(cfg, task=task)
    row = {
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
    return row


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table: ``columns`` = (header, key) where key indexes the row (dotted for nesting)."""

    def get(row, key):
        value = row
        for part in key.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        if isinstance(value, float) and key.endswith("pct"):
            return f"{value:.2f}"
        if isinstance(value, float):
            return f"{value:.4g}" if abs(value) >= 1 else f"{value:.4f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    head = "| " + " | ".join(h for h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    return "\n".join([head, sep] + ["| " + " | ".join(get(r, k) for _, k in columns) + " |" for r in rows])


def sweep_table(rows: Sequence[dict], metric: str) -> str:
    """Models in rows, test-time iterations in columns, ``metric`` in percent."""
    iters = sorted({s["iters"] for r in rows for s in r["sweep"]})
    head = "| model | " + " | ".join(f"T={k}" for k in iters) + " |"
    sep = "|---|" + "|".join("---" for _ in iters) + "|"
    lines = [head, sep]
    for r in rows:
        by = {s["iters"]: s[metric] for s in r["sweep"]}
        lines.append(f"| {r['label']} | " + " | ".join(f"{100 * by[k]:.2f}" if k in by else "" for k in iters) + " |")
    return "\n".join(lines)


def record(out_dir: str | Path, name: str, rows: Sequence[dict], text: str, extra: Optional[dict] = None) -> Path:
    """Write ``results.json`` and ``results.md`` (with the exact command line) into ``out_dir``."""
    out = Path(out_dir)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    info = {
        "experiment": name,
        "command": command,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows": list(rows),
        **(extra or {}),
    }
    atomic_write_text(out / "results.json", json.dumps(info, indent=1, default=str))
    atomic_write_text(out / "results.md", f"# {name}\n\n```\n{command}\n```\n\n{text}\n")
    return out / "results.md"
