"""The python blocks of "Write your own energy" run as written (they are cheap by design), and train() from
Python shows its progress."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from energyarch.models import ModelConfig
from energyarch.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]


def test_write_your_own_energy_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "write-your-own-energy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    assert len(blocks) == page.count("```python") >= 5
    reload = re.search(r'`(energyarch\.train\.load_run\("runs/three-terms"\))`', page).group(1)
    code = "\n".join(blocks) + f"\nimport energyarch\nmodel, *_ = {reload}\nprint('reloaded', model.cfg.energy().names)\n"
    script = tmp_path / "snippets.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "qk bi-softmax" in out and out.count("True") >= 2 and "verification (paper mode" in out
    assert "reloaded ['attn', 'et', 'hopfield']" in out
    assert "epoch 1/1" in proc.stderr                         # the progress bar, from Python


def _tiny(tmp_path, progress: bool) -> TrainConfig:
    return TrainConfig(task="digits", epochs=1, batch_size=16, limit_train=32, limit_test=16, progress=progress,
                       diagnostics_samples=4, eval_iters=[1], out_dir=str(tmp_path / "run"),
                       model=ModelConfig(d=16, heads=2, iters=2, time_freq=8))


def test_train_from_python_shows_a_bar_and_the_epoch_line_unless_switched_off(tmp_path, capsys, monkeypatch):
    # as in a fresh Python session: nothing configured the logger (the command line's tests in this process did)
    monkeypatch.setattr(logging.getLogger("energyarch.train"), "handlers", [])
    train(_tiny(tmp_path, True), report=False)
    out, err = capsys.readouterr()
    assert "epoch 1/1" in err and ("it/s" in err or "s/it" in err)   # tqdm bar on stderr
    assert re.search(r"^epoch 1/1 +train_loss=", out, re.MULTILINE)    # the per-epoch line on stdout
    train(_tiny(tmp_path / "quiet", False), report=False)
    assert capsys.readouterr() == ("", "")
