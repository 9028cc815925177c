"""Logs people read: plain progress lines instead of a carriage-return bar when the output is not a terminal,
TensorBoard event files in the run folder (and a one-line notice when tensorboard is missing)."""

import functools
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from energyarch.train import lr_at, train
from energyarch.train import logs

import conftest
from conftest import ROOT

#: the shared tiny run on 48 training images: 3 steps per epoch
tiny = functools.partial(conftest.tiny, limit_train=48, limit_test=16)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


# ---------------------------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------------------------


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere(caplog):
    terminal, pipe = FakeTerminal(), io.StringIO()
    assert logs.interactive(terminal) and not logs.interactive(pipe)
    with caplog.at_level(logging.INFO, logger="energyarch.train"):
        for stream in (terminal, pipe):
            bar = logs.Progress(total=5, desc="epoch 1/1", stream=stream, interval=0.0)
            for _ in range(5):
                bar.update(loss=0.25, samples_per_s=12.5)
            bar.close()
    assert terminal.getvalue().count("\r") >= 5  # the bar redraws in place
    assert pipe.getvalue() == ""  # nothing drawn on the pipe ...
    lines = [r.getMessage() for r in caplog.records]
    # ... but one plain line per interval (here every step but the last, which the epoch line reports)
    assert lines == [f"epoch 1/1  step {k}/5  loss=0.2500  samples_per_s=12.5" for k in range(1, 5)]


def test_progress_lines_are_rate_limited(caplog):
    with caplog.at_level(logging.INFO, logger="energyarch.train"):
        bar = logs.Progress(total=1000, desc="e", stream=io.StringIO(), interval=3600.0)
        for _ in range(999):
            bar.update(loss=1.0, samples_per_s=1.0)
        bar.close()
    assert caplog.records == []


def test_piped_training_log_has_no_carriage_returns(tmp_path):
    """``energyarch train`` with stdout and stderr going into a file: epoch lines, no '\\r' redraws."""
    log_file = tmp_path / "train.log"
    cmd = [
        sys.executable,
        "-m",
        "energyarch",
        "train",
        "--config",
        "digits",
        "--out",
        str(tmp_path / "run"),
        "--no-report",
        "--set",
        "epochs=2",
        "--set",
        "limit_train=64",
        "--set",
        "limit_test=16",
        "--set",
        "model.d=16",
        "--set",
        "model.heads=2",
        "--set",
        "model.iters=2",
        "--set",
        "model.time_freq=8",
    ]
    env = {**os.environ, "MPLBACKEND": "Agg"}
    with open(log_file, "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=300).returncode
    text = log_file.read_text()
    assert rc == 0, text[-2000:]
    assert text.count("\r") == 0, text[:2000]
    for epoch in (1, 2):  # time-stamped lines, one per epoch
        assert re.search(rf"^\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d  epoch {epoch}/2  train_loss=", text, re.M), text


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard
# ---------------------------------------------------------------------------------------------------------------


def _scalars(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_hold_losses_lr_speed_sweep_and_energies(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = tiny(tmp_path)
    summary = train(cfg)
    folder = Path(summary["out_dir"])
    assert list(folder.glob("events.out.tfevents.*"))
    s = _scalars(folder)
    # every optimizer step: its loss and the learning rate it used (lr_at, computed independently here)
    steps = [step for step, _ in s["train/lr"]]
    assert steps == list(range(1, 7))  # 48 / 16 = 3 steps per epoch, 2 epochs
    for step, value in s["train/lr"]:
        assert value == pytest.approx(lr_at(step - 1, cfg, total_steps=6, warmup_steps=0), rel=1e-6)
    assert len(s["train/loss"]) == 6
    # per epoch: train loss, test metrics equal to the history, throughput and peak memory
    for entry in summary["history"]:
        assert (entry["step"], pytest.approx(entry["test_top1"])) in s["test/top1"]
        assert (entry["step"], pytest.approx(entry["train_loss"])) in s["train/epoch_loss"]
    assert [step for step, _ in s["speed/samples_per_s"]] == [3, 6]
    assert all(v > 0 for _, v in s["speed/tokens_per_s"] + s["speed/peak_memory_mb"])
    # after training: the test-time iteration sweep (x = iterations) and per-term energies along the iterations
    assert [(row["iters"], pytest.approx(row["top1"])) for row in summary["sweep"]] == s["sweep/top1"]
    energy_tags = sorted(t for t in s if t.startswith("energy/"))
    assert energy_tags == ["energy/attn", "energy/ff"]
    assert all(len(s[t]) == 3 for t in energy_tags)  # max(eval_iters) = 3 iterations recorded


def test_resumed_run_keeps_one_curve(tmp_path):
    pytest.importorskip("tensorboard")
    train(tiny(tmp_path, max_steps=4), report=False)  # stops inside epoch 2
    train(tiny(tmp_path), resume=True, report=False)
    steps = [step for step, _ in _scalars(tmp_path / "run")["train/loss"]]
    assert steps == list(range(1, 7))


def test_missing_tensorboard_is_one_notice(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    monkeypatch.setattr(logs.Board, "_notified", False)
    with caplog.at_level(logging.INFO, logger="energyarch.train"):
        summary = train(tiny(tmp_path, epochs=1))
    notices = [r.getMessage() for r in caplog.records if "tensorboard" in r.getMessage().lower()]
    assert len(notices) == 1 and "pip install" in notices[0]
    assert summary["finished"] and not list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "metrics.json").is_file()
