"""Training: config TOML round trip and errors, tasks and losses, training runs, exact resume, checkpoint
architecture checks, NaN handling, data-parallel replicas (torchrun), evaluation sweep and plots, CLI."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from energyarch.cli import main
from energyarch.data import sudoku_metrics
from energyarch.errors import CheckpointError, ConfigError
from energyarch.models import ModelConfig, TaskSpec, build_model
from energyarch.train import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    build_task,
    forward_all,
    load_checkpoint,
    lr_at,
    train,
)
from energyarch.train.checkpoint import STATE_FILE
from energyarch.train.config import packaged_configs
from energyarch.train.distributed import parameter_digest
from energyarch.train.evaluate import evaluate_checkpoint, sweep_iterations

from conftest import TINY_MODEL, python_env, tiny


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------


def test_config_toml_and_json_round_trip(tmp_path):
    cfg = tiny(
        tmp_path,
        betas=(0.9, 0.95),
        eval_iters=[4, 8],
        model=ModelConfig(arch="transformer", d=32, heads=4, iters=3, ff_ratio=2.0),
    )
    for name in ("c.toml", "c.json"):
        path = cfg.save(tmp_path / name)
        back = TrainConfig.load(path)
        assert back == cfg and back.betas == (0.9, 0.95) and back.model.ff_ratio == 2.0
    text = (tmp_path / "c.toml").read_text()
    assert "[model]" in text and 'arch = "transformer"' in text


@pytest.mark.parametrize("name", ["digits", "sudoku_small", "sudoku_paper", "fashion_mnist", "cifar10"])
def test_packaged_configs_load(name):
    cfg = TrainConfig.load(packaged_configs()[name])
    assert TrainConfig.from_toml_string(cfg.to_toml()) == cfg


def test_paper_sudoku_config_matches_tables_7_and_8():
    cfg = TrainConfig.load(packaged_configs()["sudoku_paper"])
    m = cfg.model
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.betas, cfg.grad_clip) == (
        200,
        16,
        1e-4,
        0.1,
        (0.9, 0.95),
        1.0,
    )
    assert (m.d, m.heads, m.layers, m.iters, m.ff_ratio, m.condition) == (768, 12, 1, 24, 4.0, "x0")


@pytest.mark.parametrize(
    "text, needle",
    [
        ("epoch = 3", "unknown key 'epoch' (did you mean 'epochs'?)"),
        ("[model]\nwidth = 3", "unknown key 'width'"),
        ('epochs = "ten"', "epochs = 'ten' (str) has the wrong type; expected int"),
        ("lr = true", "expected float"),
        ("[model]\nd = 1.5", "d = 1.5 (float) has the wrong type; expected int"),
        ('eval_iters = [1, "x"]', "expected a list of int"),
        ('task = "mnist"', "choose one of"),
        ("model = 3", "expected a table of model settings"),
    ],
)
def test_config_errors_name_key_and_fix(text, needle):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_toml_string(text, source="my.toml")
    assert needle in str(err.value)
    if "unknown key" in needle:
        assert "valid keys:" in str(err.value)


def test_overrides_parse_toml_values():
    cfg = TrainConfig().with_overrides(
        ["model.d=32", "model.heads=2", "lr=3e-4", "model.attention=sigmoid", "eval_iters=[2, 4]", "progress=false"]
    )
    assert (cfg.model.d, cfg.lr, cfg.model.attention, cfg.eval_iters, cfg.progress) == (
        32,
        3e-4,
        "sigmoid",
        [2, 4],
        False,
    )
    with pytest.raises(ConfigError, match="unknown key 'dd'"):
        TrainConfig().with_overrides(["model.dd=3"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        TrainConfig().with_overrides(["lr"])


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-5)
    lrs = [lr_at(s, cfg, total_steps=100, warmup_steps=10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay after warmup
    assert lrs[55] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the cosine
    assert lrs[-1] > 1e-5 and lr_at(100, cfg, 100, 10) == pytest.approx(1e-5)


# ---------------------------------------------------------------------------------------------------------------
# tasks and losses
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sudoku_task(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku")
    return build_task(TrainConfig(task="sudoku", data_dir=str(d), n_train=8, n_test=4, processes=1, progress=False))


def test_sudoku_loss_counts_blank_cells_only_and_metrics_agree(sudoku_task):
    quiz, solution = sudoku_task.test_set[[0, 1, 2, 3]]
    logits = torch.randn(4, 81, 9)
    given = quiz > 0
    changed = logits.clone()
    changed[given] = torch.randn(int(given.sum()), 9) * 100  # givens: no effect on the loss
    base = sudoku_task.loss([logits], (quiz, solution))
    assert torch.equal(base, sudoku_task.loss([changed], (quiz, solution)))
    manual = torch.nn.functional.cross_entropy(logits[~given], solution[~given] - 1)
    torch.testing.assert_close(base, manual)
    pred_logits = torch.nn.functional.one_hot(solution - 1, 9).float()
    pred_logits[0, (quiz[0] == 0).nonzero()[0]] = torch.roll(pred_logits[0, (quiz[0] == 0).nonzero()[0]], 1, -1)
    ours = sudoku_task.finalize(sudoku_task.sums(pred_logits, (quiz, solution)))
    ref = sudoku_metrics(pred_logits.argmax(-1) + 1, quiz, solution)
    assert ours["board_acc"] == pytest.approx(ref["board_acc"]) == 0.75
    assert ours["cell_acc"] == pytest.approx(ref["cell_acc"])


@pytest.mark.parametrize("arch", ["hyperset", "transformer", "energy_transformer", "crate"])
def test_forward_all_matches_separate_forwards(arch):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, **TINY_MODEL), TaskSpec(seq_len=81))
    for m in model.modules():  # give zero-initialised step sizes a value
        if type(m).__name__ == "StepSizeNet":
            torch.nn.init.normal_(m.out.weight, std=0.1)
    x = torch.randint(0, 10, (2, 81))
    logits = forward_all(model, x, iters=3)
    assert len(logits) == 3
    for t, z in enumerate(logits, start=1):
        torch.testing.assert_close(z, model(x, iters=t))


def test_image_augment_keeps_shape_and_is_seeded(tmp_path):
    task = build_task(tiny(tmp_path, augment=True))
    batch = task.train_set[list(range(4))]
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    a, b = task.inputs(batch, torch.device("cpu"), True, g()), task.inputs(batch, torch.device("cpu"), True, g())
    assert a.shape == batch[0].shape and torch.equal(a, b) and not torch.equal(a, batch[0])


# ---------------------------------------------------------------------------------------------------------------
# training, checkpoints, resume
# ---------------------------------------------------------------------------------------------------------------


def test_two_step_run_writes_checkpoint_and_metrics(tmp_path):
    cfg = tiny(tmp_path, max_steps=2, epochs=1)
    summary = train(cfg, report=False)
    out = Path(cfg.out_dir)
    state = json.loads((out / STATE_FILE).read_text())
    assert state["step"] == 2 and state["batch_in_epoch"] == 2 and not summary["finished"]
    tensors = load_file(str(out / state["tensors_file"]))
    assert any(k.startswith("model/") for k in tensors) and any(k.endswith("/exp_avg") for k in tensors)
    assert (out / "config.toml").is_file() and TrainConfig.load(out / "config.toml") == cfg
    assert len(state["rng"]["torch"]) > 100 and state["signature"]["model"]["d"] == 16
    full = train(tiny(tmp_path, epochs=1, out_dir=str(tmp_path / "full")), report=False)
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert full["finished"] and metrics["history"][0]["step"] == 4
    assert 0.0 <= metrics["history"][0]["test_top1"] <= 1.0 and math.isfinite(metrics["history"][0]["train_loss"])


def _optimizer_tensors(trainer):
    return {f"{i}/{k}": v for i, s in trainer.optimizer.state_dict()["state"].items() for k, v in s.items()}


@pytest.mark.parametrize("loss_on", ["last", "all"])
def test_resume_is_exact(tmp_path, loss_on):
    """N steps in one go == k steps, stop, resume from disk, N - k steps (mid-epoch stop, epoch boundary crossed)."""
    N, k = 6, 3
    straight = Trainer(tiny(tmp_path, max_steps=N, loss_on=loss_on, out_dir=str(tmp_path / "a")))
    straight.fit()
    rng_after = torch.get_rng_state()
    first = Trainer(tiny(tmp_path, max_steps=k, loss_on=loss_on, out_dir=str(tmp_path / "b")))
    first.fit()
    resumed = Trainer(tiny(tmp_path, max_steps=N, loss_on=loss_on, out_dir=str(tmp_path / "b")))
    torch.manual_seed(1234)  # disturb the global RNG: resume restores it
    resumed.fit(resume=True)
    assert straight.step == resumed.step == N and resumed.epoch == 1 and resumed.batch_in_epoch == 2
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    opt_a, opt_b = _optimizer_tensors(straight), _optimizer_tensors(resumed)
    assert opt_a.keys() == opt_b.keys() and len(opt_a) > 0
    for key in opt_a:
        assert torch.equal(opt_a[key], opt_b[key]), key
    timing = ("elapsed_s", "epoch_samples_per_s")
    strip = lambda hist: [{k: v for k, v in h.items() if k not in timing} for h in hist]  # noqa: E731
    assert strip(straight.history) == strip(resumed.history) and len(straight.history) == 1
    assert torch.equal(torch.get_rng_state(), rng_after)


def test_checkpoint_from_other_architecture_is_rejected(tmp_path):
    cfg = tiny(tmp_path, max_steps=1)
    trainer = Trainer(cfg)
    trainer.fit()
    other = build_model(ModelConfig(d=32, heads=2, iters=2, time_freq=8), trainer.task.spec)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(cfg.out_dir, other)
    msg = str(err.value)
    assert "different architecture" in msg and "shape mismatch" in msg and "embed.proj.weight" in msg
    assert "model.d: checkpoint 16 vs model 32" in msg
    same_shapes = build_model(ModelConfig(attention="sigmoid", **TINY_MODEL), trainer.task.spec)
    with pytest.raises(CheckpointError, match="model.attention: checkpoint 'bisoftmax' vs model 'sigmoid'"):
        load_checkpoint(cfg.out_dir, same_shapes)
    with pytest.raises(CheckpointError, match="different architecture"):  # resume into another model
        Trainer(tiny(tmp_path, model=ModelConfig(arch="transformer", **TINY_MODEL))).fit(resume=True)


def test_corrupt_or_missing_checkpoint(tmp_path):
    cfg = tiny(tmp_path, max_steps=1)
    Trainer(cfg).fit()
    model = build_model(cfg.model, build_task(cfg).spec)
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        load_checkpoint(tmp_path / "nowhere", model)
    state = json.loads((Path(cfg.out_dir) / STATE_FILE).read_text())
    with open(Path(cfg.out_dir) / state["tensors_file"], "ab") as fh:
        fh.write(b"junk")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(cfg.out_dir, model)


class NaNAt(Trainer):
    """Returns a NaN loss from step ``bad`` on."""

    bad = 3

    def loss_fn(self, batch):
        loss = super().loss_fn(batch)
        return loss * float("nan") if self.step >= self.bad else loss


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = NaNAt(tiny(tmp_path, checkpoint_every=1))
    with pytest.raises(TrainingDivergedError) as err:
        trainer.fit()
    msg = str(err.value)
    assert "loss is nan at step 3" in msg and "last good checkpoint (step 3) is kept" in msg and "--resume" in msg
    state = json.loads((Path(trainer.cfg.out_dir) / STATE_FILE).read_text())
    assert state["step"] == 3
    model = build_model(trainer.cfg.model, trainer.task.spec)
    load_checkpoint(trainer.cfg.out_dir, model)
    assert parameter_digest(model) == parameter_digest(trainer.model)  # the NaN step was not applied
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_before_any_checkpoint_says_so(tmp_path):
    trainer = NaNAt(tiny(tmp_path))
    trainer.bad = 0
    with pytest.raises(TrainingDivergedError, match="no checkpoint had been written yet") as err:
        trainer.fit()
    msg = str(err.value)  # advice fits the situation: nothing to resume from, clipping already on
    assert "--resume" not in msg and "no checkpoint to resume from" in msg
    assert "set grad_clip" not in msg and "ea.verify" in msg


def test_ddp_two_processes_identical_replicas(tmp_path):
    """The same `energyarch train` command under torchrun with 2 gloo processes."""
    cfg = tiny(tmp_path, epochs=1, max_steps=3, out_dir=str(tmp_path / "ddp"))
    cfg.save(tmp_path / "ddp.toml")
    env = python_env(OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "energyarch",
        "train",
        "--config",
        str(tmp_path / "ddp.toml"),
        "--no-report",
        "--quiet",
    ]
    cp = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=env)
    assert cp.returncode == 0, cp.stderr[-3000:]
    state = json.loads((tmp_path / "ddp" / STATE_FILE).read_text())
    assert state["world_size"] == 2 and state["step"] == 3
    digests = state["replica_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    model = build_model(cfg.model, build_task(cfg).spec)
    load_checkpoint(tmp_path / "ddp", model)
    assert parameter_digest(model) == digests[0]


# ---------------------------------------------------------------------------------------------------------------
# evaluation, plots, CLI
# ---------------------------------------------------------------------------------------------------------------


def test_eval_sweep_and_pngs(tmp_path):
    cfg = tiny(tmp_path, epochs=1)
    summary = train(cfg)
    assert [r["iters"] for r in summary["sweep"]] == [1, 2, 3]
    assert set(summary["plots"]) == {"sweep", "energies", "rank_angle", "history"}
    result = evaluate_checkpoint(cfg.out_dir, iters=[1, 4], out_dir=tmp_path / "ev")
    for path in result["plots"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [r["iters"] for r in result["sweep"]] == [1, 4]
    # the one-pass sweep equals separate evaluations at each T
    trainer = Trainer(tiny(tmp_path, out_dir=cfg.out_dir))
    trainer.resume()
    sweep = sweep_iterations(trainer.model, trainer.task, trainer.task.test_set, [1, 3], batch_size=7)
    for row in sweep:
        ref = trainer.evaluate(iters=row["iters"])
        assert row["top1"] == ref["top1"] and row["loss"] == pytest.approx(ref["loss"], rel=1e-5)


def test_cli_train_then_eval(tmp_path, capsys):
    cfg = tiny(tmp_path, epochs=1)
    cfg.save(tmp_path / "c.toml")
    out = tmp_path / "cli"
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "c.toml"),
                "--set",
                "model.iters=1",
                "--set",
                "max_steps=2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "continue with --resume" in capsys.readouterr().out
    assert (
        main(
            [
                "train",
                "--config",
                str(tmp_path / "c.toml"),
                "--set",
                "model.iters=1",
                "--out",
                str(out),
                "--resume",
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    assert json.loads((out / STATE_FILE).read_text())["step"] == 4
    assert main(["eval", "--checkpoint", str(out), "--iters", "1,2"]) == 0
    text = capsys.readouterr().out
    assert "iters=  2" in text and "plot sweep:" in text
    assert main(["train", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "packaged configs: cifar10, digits" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(out), "--iters", "0"]) == 2


def test_cli_demo_runs_compile_verify_train(tmp_path, capsys):
    args = [
        "demo",
        "--out",
        str(tmp_path / "demo"),
        "--epochs",
        "1",
        "--quiet",
        "--set",
        "limit_train=64",
        "--set",
        "limit_test=32",
        "--set",
        "model.d=16",
        "--set",
        "model.iters=2",
        "--set",
        "model.time_freq=8",
        "--set",
        "eval_iters=[1, 2]",
        "--set",
        "diagnostics_samples=8",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "verification (paper mode, rtol 1e-09): OK" in text and "| attn | bi-softmax |" in text
    assert "test top1:" in text and "plot sweep:" in text and (tmp_path / "demo" / "plots" / "sweep.png").is_file()
