"""Every run reloads: declarations are written (causal and gated terms included); an energy with torch callables
is recorded as a fingerprint and handed back with load_run(path, energy=E)."""

import json

import pytest
import torch

import energyarch as ea
import energyarch.train
from energyarch.cli import main
from energyarch.errors import ConfigError
from energyarch.models import ModelConfig
from energyarch.train import TrainConfig, train

from conftest import TINY_MODEL as TINY
from conftest import quick


def test_a_causal_and_gated_run_trained_from_python_reloads_for_generate(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("def f(x):\n    return x + 1\n" * 40)
    model = ModelConfig(
        **TINY,
        attention=ea.CausalAttention(
            f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.QueryKey(), self_term="stopped"
        ),
        feedforward=ea.GatedFeedForward(h="softplus(x)", ratio=2),
    )
    cfg = TrainConfig(
        task="text",
        text_path=str(tmp_path / "corpus.txt"),
        seq_len=16,
        epochs=1,
        batch_size=4,
        limit_train=8,
        limit_test=4,
        eval_iters=[1],
        diagnostics_samples=2,
        progress=False,
        out_dir=str(tmp_path / "run"),
        model=model,
    )
    train(cfg, report=False)
    run = tmp_path / "run"
    written = (run / "config.toml").read_text()
    assert 'family = "causal"' in written and 'family = "gated"' in written and 'self_term = "stopped"' in written
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["config"]["model"]["solver_params"] == {}
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(run), "--prompt", "def", "--max-bytes", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("def")
    model2, _, cfg2, _ = energyarch.train.load_run(run)
    assert cfg2.model.energy(causal=True) == cfg.model.energy(causal=True)


def test_an_energy_with_a_torch_callable_is_handed_back_and_checked(tmp_path, caplog):
    def relu_sq(u):
        return torch.relu(u) ** 2 / 2

    energy = ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h=relu_sq, ratio=2)
    cfg = quick(tmp_path, model=ModelConfig(**TINY, energy=energy))
    with pytest.raises(
        ConfigError,
        match=r"h = relu_sq is a torch callable.*fingerprint [0-9a-f]{16}.*"
        r"load_run\(path, energy=E\).*another energy is refused",
    ):
        cfg.to_toml()
    with caplog.at_level("WARNING", logger="energyarch.train"):
        train(cfg, report=False)
    assert "load_run(path, energy=E)" in caplog.text
    run = tmp_path / "run"
    assert not (run / "config.toml").exists()
    with pytest.raises(ConfigError, match=r"torch callables .*\['attn', 'ff'\].*energy=E"):
        energyarch.train.load_run(run)
    model, task, _, _ = energyarch.train.load_run(run, energy=energy)
    x = task.test_set[0][0].unsqueeze(0)
    assert torch.isfinite(model(x)).all()

    def other(u):
        return torch.relu(u) ** 2

    with pytest.raises(ConfigError, match="is not the energy"):
        energyarch.train.load_run(
            run,
            energy=ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h=other, ratio=2),
        )
