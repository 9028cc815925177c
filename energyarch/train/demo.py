"""``energyarch demo``: the whole pipeline on a fresh CPU machine in a few minutes, with nothing to download.

1. declare the Hyper-SET energy (bi-softmax attention + ReLU feed-forward, Eqs. 19-20), compile it, print the
   derivation and the float64 verification table (``ea.verify``);
2. train a small one-layer recurrent Hyper-SET on scikit-learn's embedded 8x8 digits (``--task sudoku``: on a
   small generated Sudoku set) with the packaged config ``configs/digits.toml`` (``sudoku_small.toml``);
3. print the test accuracy, the test-time iteration sweep and the paths of the plots.
"""

from __future__ import annotations

import json
import time
from typing import Optional, Sequence

from .. import compile as compile_energy
from .. import verify
from ..models import ModelConfig
from .config import TrainConfig, packaged_configs
from .logs import print_summary

DEMO_CONFIGS = {"digits": "digits", "sudoku": "sudoku_small"}


def demo_config(
    task: str = "digits", out_dir: Optional[str] = None, epochs: Optional[int] = None, overrides: Sequence[str] = ()
) -> TrainConfig:
    """The packaged config of the demo task, with the output folder, epochs and ``KEY=VALUE`` overrides set."""
    cfg = TrainConfig.load(packaged_configs()[DEMO_CONFIGS[task]])
    changes = [f"out_dir={json.dumps(out_dir or _fresh_folder(f'runs/demo-{task}'))}"]
    if epochs is not None:
        changes.append(f"epochs={int(epochs)}")
    return cfg.with_overrides(changes + list(overrides))


def _fresh_folder(base: str) -> str:
    """``base``, or ``base-2``, ``base-3``, ... : the first that holds no run (a demo never overwrites a run)."""
    from .checkpoint import run_files

    name, k = base, 1
    while run_files(name) and k < 1000:
        k += 1
        name = f"{base}-{k}"
    return name


def run_demo(
    task: str = "digits",
    out_dir: Optional[str] = None,
    epochs: Optional[int] = None,
    progress: bool = True,
    overrides: Sequence[str] = (),
) -> int:
    """Run the three demo stages and print their results; returns the exit status 0."""
    from .trainer import train

    cfg = demo_config(task, out_dir, epochs, overrides)
    if not progress:
        cfg = cfg.with_overrides(["progress=false"])
    m: ModelConfig = cfg.model
    print(
        f"== 1. compile the Hyper-SET energy: {m.attention} attention + {m.feedforward} feed-forward, d={m.d}, "
        f"{m.heads} heads"
    )
    step = compile_energy(m.energy(), d=m.d, mode=m.mode)
    print(step.report())
    print()
    print(verify(step))
    print()
    print(
        f"== 2. train a one-layer Hyper-SET ({m.iters} iterations, shared weights) on {cfg.task}: {cfg.epochs} "
        f"epochs, batch {cfg.batch_size}, AdamW lr {cfg.lr:g}, cosine schedule  ->  {cfg.out_dir}"
    )
    start = time.perf_counter()
    summary = train(cfg)
    print()
    print(f"== 3. results ({time.perf_counter() - start:.0f} s)")
    print_summary(summary, summary["metric"])
    return 0
