"""Models of any number of terms: ModelConfig(energy=E) and [[model.terms]] (docs: Concepts, "Models of many terms")."""

import json

import pytest
import torch

import energyarch as ea
from energyarch.cli import main
from energyarch.errors import ConfigError
from energyarch.models import ModelConfig, TaskSpec, build_model
from energyarch.models.record import energy_fingerprint
from energyarch.train import TrainConfig

from conftest import TINY_TOML

THREE_TERMS = (
    TINY_TOML
    + """
[[model.terms]]
family = "attention"
f = "log(x)/beta"
K = "exp(beta*s)"

[[model.terms]]
family = "attention"
name = "et"
f = "-log(x)/beta"
K = "exp(beta*s)"
interaction = "query-key"

[[model.terms]]
family = "feedforward"
g = "log(x)"
h = "exp(x)"
"""
)


def _energy():
    return (
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2)
        + ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.QueryKey(), name="et")
        + ea.FeedForward(g="log(x)", h="exp(x)", ratio=2)
    )


def test_three_terms_declared_inline_train_and_evaluate_from_the_command_line(tmp_path, capsys):
    config = tmp_path / "three.toml"
    config.write_text(THREE_TERMS)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), "--quiet"]) in (0, None)
    written = TrainConfig.load(run / "config.toml")
    assert [t["family"] for t in written.model.terms] == ["attention", "attention", "feedforward"]
    assert written.model.energy().names == ["attn", "et", "ff"]
    state = json.loads((run / "checkpoint.json").read_text())
    assert [t.get("interaction") for t in state["signature"]["model"]["terms"]] == [None, "query-key", None]
    assert {"terms.et.weight", "terms.et.weight_k"} <= {
        k.split("layers.0.step.")[-1] for k in state["signature"]["tensors"]
    }
    assert main(["eval", "--checkpoint", str(run)]) in (0, None)
    assert "top1" in capsys.readouterr().out


def test_model_from_any_energy_has_a_basis_step_size_and_lora_per_term():
    cfg = ModelConfig(d=16, heads=2, iters=2, time_freq=8, lora_rank=2, energy=_energy())
    model = build_model(cfg, TaskSpec(seq_len=9))
    layer = model.backbone.layers[0]
    assert layer.step.names == ["attn", "et", "ff"] and layer.step.stages == [["attn"], ["et"], ["ff"]]
    assert set(layer.stepnet(0, torch.randn(2, 9, 16))) == {"attn", "et", "ff"}
    assert set(layer.weights(1)) == {"attn", "et", "ff"}
    logits, trace = model(torch.randint(0, 10, (2, 9)), record=True)
    assert logits.shape == (2, 9, 9)
    joint = build_model(
        ModelConfig(d=16, heads=2, iters=2, time_freq=8, energy=_energy(), schedule="joint"), TaskSpec(seq_len=9)
    )
    assert joint.backbone.layers[0].step.stages == [["attn", "et", "ff"]]


def test_energy_round_trips_through_toml_and_the_attention_fields_stay_shorthand():
    cfg = TrainConfig(model=ModelConfig(d=16, heads=2, energy=_energy()))
    again = TrainConfig.from_toml_string(cfg.to_toml())
    assert again.model.energy() == cfg.model.energy()
    assert "[[model.terms]]" in cfg.to_toml() and "attention =" not in cfg.to_toml()
    assert ModelConfig(d=16, heads=2).energy().names == ["attn", "ff"]


def test_a_sum_given_as_attention_is_a_short_error_with_the_hint():
    with pytest.raises(ConfigError) as err:
        ModelConfig(d=16, heads=2, attention=_energy())
    assert len(str(err.value)) < 250 and "energy=E" in str(err.value) and "'et'" in str(err.value)
    with pytest.raises(ConfigError, match="both given"):
        ModelConfig(d=16, heads=2, attention="sigmoid", energy=_energy())


@pytest.mark.parametrize(
    "table, message",
    [
        ({"family": "hopfield", "g": "x"}, "family = 'hopfield'; choose one of"),
        (
            {"family": "attention", "f": "log(x)", "K": "exp(s)", "interation": "query-key"},
            "did you mean 'interaction'",
        ),
        ({"family": "attention", "f": "log(x)", "K": "exp(s)", "rank": 4}, "rank = 4 applies to"),
        ({"family": "attention", "f": "log(x)", "K": "exp(s)", "interaction": "qk"}, "choose one of"),
        ({"family": "gated"}, "missing 'h'"),
        ({"family": "feedforward", "g": "x", "h": "relu(x)**2/2", "params": {"a": 2}}, "parameter 'a' is not used"),
    ],
)
def test_bad_term_tables_are_refused_by_name(table, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(d=16, heads=2, terms=[table])


def test_every_family_and_interaction_round_trips_as_tables():
    energy = (
        ea.Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=2, interaction=ea.DiagLowRank(rank=4))
        + ea.CausalAttention(
            f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=ea.QueryKey(), self_term="stopped", name="causal"
        )
        + ea.GatedFeedForward(h=ea.Scalar.parse("softplus(a*x)/a", params={"a": 2.0}), width=24, name="glu", radius=3.0)
        + ea.FeedForward(g="x", h="relu(x)**2/2", ratio=2)
        + ea.Attention(
            f=ea.Scalar.parse("x/2", name="half"), K="(beta*s)**2/2", phi="elu(x) + 1", heads=2, name="linear"
        )
    )
    cfg = TrainConfig(model=ModelConfig(d=16, heads=2, energy=energy))
    text = cfg.to_toml()
    assert 'phi = "elu(x) + 1"' in text and 'f = "x/2"' in text  # a primitive's label is not its text
    assert 'interaction = "diag-low-rank"\nrank = 4' in text and 'self_term = "stopped"' in text
    again = TrainConfig.from_toml_string(text).model.energy()
    assert again.terms[:4] == energy.terms[:4] and again.names == energy.names
    assert energy_fingerprint(again, 16) == energy_fingerprint(energy, 16)  # same expressions, labels aside
