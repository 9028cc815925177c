"""Helpers shared by the tests: tiny training configs (Python and TOML) and running a script as a user would.

pytest loads this file before the test modules and puts ``tests/`` on ``sys.path``, so a test module takes what it
needs with ``from conftest import tiny, TINY_TOML, run_python``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: loading conftest must not load the training stack for every test
    from energyarch.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]

#: a 2-iteration d=16 Hyper-SET with 2 heads: the smallest model the training tests use
TINY_MODEL: dict[str, Any] = dict(d=16, heads=2, iters=2, time_freq=8)


def tiny(tmp_path: Path, **kw: Any) -> TrainConfig:
    """Digits, 64 training images in batches of 16 (4 steps per epoch), 2 epochs, the :data:`TINY_MODEL`, the run in
    ``tmp_path / "run"``, no progress bar; ``kw`` replace any of these fields."""
    from energyarch.models import ModelConfig
    from energyarch.train import TrainConfig

    base: dict[str, Any] = dict(
        task="digits",
        epochs=2,
        batch_size=16,
        lr=3e-3,
        limit_train=64,
        limit_test=32,
        progress=False,
        diagnostics_samples=8,
        eval_iters=[1, 2, 3],
        out_dir=str(tmp_path / "run"),
        model=ModelConfig(**TINY_MODEL),
    )
    base.update(kw)
    return TrainConfig(**base)


def quick(tmp_path: Path, **kw: Any) -> TrainConfig:
    """:func:`tiny` for one epoch on 32 training images (2 steps), evaluated on 16, iterations 1 and 2 swept: a run
    whose training is not under test; ``kw`` replace any field."""
    return tiny(
        tmp_path, **{**dict(epochs=1, limit_train=32, limit_test=16, diagnostics_samples=4, eval_iters=[1, 2]), **kw}
    )


#: the TOML of a :func:`quick` run (at the default learning rate), without an energy: a test adds its
#: ``[model.attention]`` / ``[[model.terms]]`` tables after it
TINY_TOML = """task = "digits"
epochs = 1
batch_size = 16
limit_train = 32
limit_test = 16
diagnostics_samples = 4
eval_iters = [1, 2]
progress = false

[model]
d = 16
heads = 2
iters = 2
time_freq = 8
"""


def python_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process that imports this checkout's ``energyarch`` first."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_python(code: str, folder: Path, name: str = "script.py", timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``code`` as the script ``folder / name`` in a fresh Python (working directory ``folder``), as a user
    would run a page's snippets; fails the test with the end of stderr unless it exits 0."""
    script = folder / name
    script.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=folder, env=python_env(), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def set_args(*assignments: str) -> list[str]:
    """``--set A --set B …`` for the command line."""
    return [arg for a in assignments for arg in ("--set", a)]


#: the ``--set`` overrides of a :func:`quick`-sized run of the packaged ``digits`` config, for the command line
TINY_SET = set_args(
    "limit_train=32",
    "limit_test=16",
    "batch_size=16",
    "epochs=1",
    "model.d=16",
    "model.heads=2",
    "model.iters=2",
    "model.time_freq=8",
    "diagnostics_samples=4",
    "eval_iters=[1, 2]",
)
