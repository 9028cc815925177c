"""The python blocks of "Write your own energy" run as written (they are cheap by design), and train() from
Python shows its progress."""

import logging
import re

from energyarch.train import train

from conftest import ROOT, quick, run_python


def test_write_your_own_energy_runs_as_written(tmp_path):
    page = (ROOT / "docs" / "write-your-own-energy.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, re.DOTALL)
    assert len(blocks) == page.count("```python") >= 5
    reload = re.search(r'`(energyarch\.train\.load_run\("runs/three-terms"\))`', page).group(1)
    code = (
        "\n".join(blocks) + f"\nimport energyarch\nmodel, *_ = {reload}\nprint('reloaded', model.cfg.energy().names)\n"
    )
    proc = run_python(code, tmp_path, "snippets.py")
    out = proc.stdout
    assert "qk bi-softmax" in out and out.count("True") >= 2 and "verification (paper mode" in out
    assert "reloaded ['attn', 'et', 'hopfield']" in out
    assert "epoch 1/1" in proc.stderr  # the progress bar, from Python


def test_train_from_python_shows_a_bar_and_the_epoch_line_unless_switched_off(tmp_path, capsys, monkeypatch):
    # as in a fresh Python session: nothing configured the logger (the command line's tests in this process did)
    monkeypatch.setattr(logging.getLogger("energyarch.train"), "handlers", [])
    train(quick(tmp_path, progress=True), report=False)
    out, err = capsys.readouterr()
    assert "epoch 1/1" in err and ("it/s" in err or "s/it" in err)  # tqdm bar on stderr
    assert re.search(r"^epoch 1/1 +train_loss=", out, re.MULTILINE)  # the per-epoch line on stdout
    train(quick(tmp_path / "quiet"), report=False)
    assert capsys.readouterr() == ("", "")
