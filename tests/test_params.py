"""Unknown (misspelled) parameters are refused by name, with the symbols the expressions use."""

import pytest

import energyarch as ea
from energyarch.cli import main
from energyarch.errors import ConfigError, DeclarationError
from energyarch.train import TrainConfig


def test_parse_refuses_a_parameter_the_expression_does_not_use():
    with pytest.raises(DeclarationError, match=r"parameter 'nuu' is not used by .*its symbols are nu, r"):
        ea.Kernel.parse("exp(-nu*r)", params={"nu": 3, "nuu": 5})
    with pytest.raises(DeclarationError, match=r"parameter 'gama' .*symbols are gamma, x.*did you mean 'gamma'"):
        ea.Scalar.parse("log(1 + gamma*x)", params={"gamma": 1.0, "gama": 2.0})
    assert ea.Kernel.parse("exp(-nu*r)", params={"nu": 3}).params == (("nu", 3.0),)


def test_a_misspelled_parameter_in_a_table_or_on_the_command_line_is_refused(capsys):
    toml = (
        '[model]\nd = 16\nheads = 2\n[model.attention]\nf = "log(x)"\nK = "exp(-gamma*r)"\n'
        "params = { gamma = 0.5, gama = 2.0 }\n"
    )
    with pytest.raises(ConfigError, match=r"parameter 'gama' is not used by f = log\(x\), K = exp\(-gamma\*r\)"):
        TrainConfig.from_toml_string(toml)
    ok = TrainConfig.from_toml_string(toml.replace(", gama = 2.0", ""))
    with pytest.raises(ConfigError, match="'gama'.*symbols are gamma, r, x"):
        ok.with_overrides(["model.attention.params.gama=2"])
    assert (
        main(
            [
                "train",
                "--config",
                "digits",
                "--set",
                'model.attention={ f = "log(x)", K = "exp(-gamma*r)", params = { gamma = 0.5 } }',
                "--set",
                "model.attention.params.gama=2",
                "--set",
                "epochs=0",
            ]
        )
        == 2
    )
    assert "'gama'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="parameter 'b' is not used"):
        TrainConfig.from_dict(
            {
                "model": {
                    "d": 16,
                    "heads": 2,
                    "terms": [{"family": "gated", "h": "softplus(a*x)", "params": {"a": 1.0, "b": 2.0}}],
                }
            }
        )
