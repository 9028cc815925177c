"""Any energy from a config file: catalog entries by name, inline [model.attention] / [model.feedforward] tables,
errors that name the file and the key, --set, the run folder's record of the declaration, CLI train/eval/resume."""

import json
from pathlib import Path

import pytest
import torch

import energyarch as ea
from energyarch import catalog
from energyarch.cli import main
from energyarch.errors import CheckpointError, ConfigError
from energyarch.models import ModelConfig, TaskSpec, build_model
from energyarch.train import TrainConfig, load_checkpoint
from energyarch.train.checkpoint import STATE_FILE
from energyarch.train.config import packaged_configs

from conftest import TINY_TOML as TINY

INLINE = """
[model.attention]
f = "log(x)"
K = "exp(-gamma*r)"
params = { gamma = 0.5 }
heads = 2

[model.feedforward]
g = "x"
h = "softplus(x)"
ratio = 2
"""


def test_catalog_name_builds_the_entry_term_with_config_heads_and_width():
    cfg = ModelConfig(d=16, heads=2, attention="tanh-kernel", feedforward="softplus-ff", ff_ratio=2.0)
    attn, ff = cfg.energy()["attn"], cfg.energy()["ff"]
    entry_attn, entry_ff = catalog.get("tanh-kernel").term(16), catalog.get("softplus-ff").term(16)
    assert (attn.f, attn.K) == (entry_attn.f, entry_attn.K) and attn.heads == 2 != entry_attn.heads
    assert (ff.g, ff.h) == (entry_ff.g, entry_ff.h) and ff.resolve_width(16) == 32


def test_inline_declaration_equals_the_python_declaration():
    cfg = TrainConfig.from_toml_string(TINY + INLINE, source="run.toml")
    by_hand = ea.Attention(
        f=ea.Scalar.parse("log(x)"),  # each primitive gets the params it uses
        K=ea.Kernel.parse("exp(-gamma*r)", params={"gamma": 0.5}),
        heads=2,
    ) + ea.FeedForward(g="x", h="softplus(x)", ratio=2)
    assert cfg.model.energy() == by_hand
    torch.manual_seed(0)
    a = build_model(cfg.model, TaskSpec(seq_len=9))
    torch.manual_seed(0)
    b = build_model(
        ModelConfig(d=16, heads=2, iters=2, time_freq=8, attention=by_hand["attn"], feedforward=by_hand["ff"]),
        TaskSpec(seq_len=9),
    )
    X = torch.randn(3, 9, 16)
    step_a, step_b = a.backbone.layers[0].step, b.backbone.layers[0].step
    torch.testing.assert_close(step_a(X, 0.1), step_b(X, 0.1), rtol=0, atol=0)


def test_toml_round_trip_keeps_the_declaration_and_python_terms_become_tables(tmp_path):
    cfg = TrainConfig.from_toml_string(TINY + INLINE)
    text = cfg.to_toml()
    assert "[model.attention]" in text and 'K = "exp(-gamma*r)"' in text and "params = { gamma = 0.5 }" in text
    assert TrainConfig.from_toml_string(text) == cfg
    # a term made in Python from expression strings is written as its declaration and rebuilds the same term
    term = ea.Attention(f="x/(2*beta)", K="tanh(beta*s)", heads=2, beta=0.3)
    py = TrainConfig(model=ModelConfig(d=16, heads=2, attention=term))
    back = TrainConfig.from_toml_string(py.to_toml())
    assert back.model.attention == {"f": "x/(2*beta)", "K": "tanh(beta*s)", "heads": 2, "beta": 0.3}
    assert back.model.energy()["attn"] == term
    with pytest.raises(ConfigError, match="torch callable"):
        TrainConfig(
            model=ModelConfig(d=16, heads=2, feedforward=ea.FeedForward(g="x", h=torch.nn.functional.gelu))
        ).to_toml()


@pytest.mark.parametrize(
    "edit, needles",
    [
        (("exp(-gamma*r)", "exp(-gamma*r"), ["run.toml", "[model.attention] K = 'exp(-gamma*r'", "never closed"]),
        (("params = { gamma = 0.5 }", "gamma = 0.5"), ["run.toml", "unknown key 'gamma'", "params = { gamma"]),
        (("ratio = 2", "ratio = 2\nwidth = 8"), ["run.toml", "both ratio", "keep one"]),
        (("heads = 2\n", "heads = 4\n"), ["run.toml", "heads = 4 but [model] heads = 2"]),
        (('h = "softplus(x)"', 'h = "softplus(x)"\nf = "x"'), ["it belongs to [model.attention]"]),
        (('g = "x"\n', ""), ["[model.feedforward] is missing 'g'"]),
        (('h = "softplus(x)"', 'h = "__import__(x)"'), ["[model.feedforward] h = '__import__(x)'", "not an allowed"]),
    ],
)
def test_declaration_errors_name_file_key_and_fix(edit, needles):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_toml_string(TINY + INLINE.replace(*edit), source="run.toml")
    for needle in needles:
        assert needle in str(err.value)


def test_names_of_the_wrong_family_or_unknown_are_config_errors():
    with pytest.raises(ConfigError, match="'relu-ff': is a feedforward entry; choose one of .*'tanh-kernel'"):
        TrainConfig.from_toml_string(TINY + 'attention = "relu-ff"\n', source="run.toml")
    with pytest.raises(ConfigError, match="run.toml.*'tanh-kernal'.*neither a preset nor a catalog entry"):
        TrainConfig.from_toml_string(TINY + 'attention = "tanh-kernal"\n', source="run.toml")
    with pytest.raises(ConfigError, match="attention = 3 has the wrong type"):
        TrainConfig.from_toml_string(TINY + "attention = 3\n", source="run.toml")


def test_set_overrides_names_and_declaration_keys():
    cfg = TrainConfig.load("digits")
    assert cfg == TrainConfig.load(packaged_configs()["digits"])
    assert cfg.with_overrides(['model.attention="tanh-kernel"']).model.attention == "tanh-kernel"
    assert cfg.with_overrides(["model.attention=tanh-kernel"]).model.attention == "tanh-kernel"
    inline = TrainConfig.from_toml_string(TINY + INLINE)
    changed = inline.with_overrides(["model.attention.params.gamma=0.25", 'model.feedforward.h="logcosh(x)"'])
    assert changed.model.attention["params"] == {"gamma": 0.25} and changed.model.feedforward["h"] == "logcosh(x)"
    with pytest.raises(ConfigError, match="not an inline declaration"):
        cfg.with_overrides(["model.attention.K=s"])
    with pytest.raises(ConfigError, match="no such file|does not exist"):
        TrainConfig.load("digitz")


def test_checkpoint_of_one_energy_refuses_another(tmp_path):
    from energyarch.train import Trainer

    cfg = TrainConfig.from_toml_string(TINY + INLINE).with_overrides(
        [f"out_dir={json.dumps(str(tmp_path))}", "max_steps=1"]
    )
    trainer = Trainer(cfg)
    trainer.fit()
    same_shapes = cfg.with_overrides(["model.attention.params.gamma=0.25"])
    with pytest.raises(CheckpointError, match="model.attention: checkpoint .*gamma = 0.5.* vs model .*gamma = 0.25"):
        load_checkpoint(tmp_path, build_model(same_shapes.model, trainer.task.spec))
    named = cfg.with_overrides(['model.attention="rbf-softmax"'])
    with pytest.raises(CheckpointError, match="'rbf-softmax'"):
        load_checkpoint(tmp_path, build_model(named.model, trainer.task.spec))
    trainer.close()


@pytest.mark.parametrize("energy", ["inline", "catalog"])
def test_cli_train_eval_resume_with_a_declared_energy(tmp_path, capsys, energy):
    text = TINY + (INLINE if energy == "inline" else 'attention = "tanh-kernel"\nfeedforward = "logcosh-ff"\n')
    (tmp_path / "run.toml").write_text(text)
    out = tmp_path / "run"
    base = ["train", "--config", str(tmp_path / "run.toml"), "--out", str(out), "--quiet"]
    assert main(base + ["--set", "max_steps=1"]) == 0
    recorded = TrainConfig.load(out / "config.toml")
    assert recorded.model.attention == TrainConfig.from_toml_string(text).model.attention
    state = json.loads((out / STATE_FILE).read_text())
    assert state["config"]["model"]["attention"] == recorded.model.attention
    assert main(["train", "--out", str(out), "--quiet"]) == 2  # neither --config nor --resume
    # --resume without --config continues with the config the run recorded
    assert main(["train", "--resume", "--out", str(out), "--quiet", "--no-report", "--set", "max_steps=0"]) == 0
    assert json.loads((out / STATE_FILE).read_text())["step"] == 2
    written = (out / "config.toml").read_text()
    assert main(["eval", "--checkpoint", str(out), "--iters", "1,2"]) == 0
    assert "iters=  2" in capsys.readouterr().out
    other = 'attention = "bisoftmax"\n' if energy == "inline" else INLINE
    (tmp_path / "other.toml").write_text(TINY + other)
    assert main(["train", "--config", str(tmp_path / "other.toml"), "--out", str(out), "--resume", "--quiet"]) == 2
    assert "model.attention: checkpoint" in capsys.readouterr().err
    assert json.loads((out / STATE_FILE).read_text())["step"] == 2  # nothing saved was lost
    assert Path(out / "config.toml").read_text() == written
