"""A solver and a step rule per term (issue 18, requirement 3): ``ea.compile(..., solvers={...})``, ``EnergyStep``
with one solver per term, ``ModelConfig.solvers`` and the ``[[model.terms]]`` keys ``solver``, ``solver_params``,
``steps``; recorded in config.toml and the checkpoint, reloaded by ``load_run``.

Descent claims are checked by evaluating each term's own energy (``module.energy``, not the acceptance test's
function). Hypothesis profiles as in tests/test_properties.py: ``ci`` (default, a few seconds) and ``dev``
(``HYPOTHESIS_PROFILE=dev``).
"""

import json
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import energyarch as ea  # noqa: E402
from conftest import TINY_TOML  # noqa: E402
import energyarch.train  # noqa: E402
from energyarch.errors import CompileError, ConfigError  # noqa: E402
from energyarch.models import HyperSET, ModelConfig  # noqa: E402
from energyarch.solvers import make_solver  # noqa: E402
from energyarch.train import TrainConfig, train  # noqa: E402

settings.register_profile(
    "ci", max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

F64 = torch.float64
D, HEADS, N, B = 8, 2, 5, 3
TINY = dict(d=16, heads=2, iters=2, time_freq=8)


def _energy():
    return ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=HEADS) + ea.FeedForward(
        g="log(x)", h="exp(x)", ratio=2.0
    )


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, N, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


# ------------------------------------------------------------------------------------------------ the step itself


def test_mixed_solvers_match_each_terms_sub_step_written_out():
    """Sequential splitting, momentum (μ = 0.5) on attention and Adam on the feed-forward, free steps: three
    iterations against the update rules written out, each term with its own state."""
    step = ea.compile(
        _energy(),
        d=D,
        dtype=F64,
        solvers={"attn": make_solver("momentum", momentum=0.5), "ff": make_solver("adam", beta1=0.8, beta2=0.9)},
    )
    X, alpha = _x(), {"attn": 0.3, "ff": 0.05}
    state = step.init_state()
    Y, v, m, s = X.clone(), None, None, None
    for k in range(1, 4):
        X, state = step(X, alpha, state=state)
        with torch.no_grad():
            d = step.direction("attn", Y)  # heavy ball: v ← μ v + α d, x ← x + v
            v = alpha["attn"] * d if v is None else 0.5 * v + alpha["attn"] * d
            Y = Y + v
            d = step.direction("ff", Y)  # Adam on the point the attention step produced
            m = 0.2 * d if m is None else 0.8 * m + 0.2 * d
            s = 0.1 * d * d if s is None else 0.9 * s + 0.1 * d * d
            Y = Y + alpha["ff"] * (m / (1 - 0.8**k)) / ((s / (1 - 0.9**k)).sqrt() + 1e-8)
        torch.testing.assert_close(X, Y, rtol=1e-12, atol=1e-12)
    assert sorted(state["attn"]) == ["v"] and sorted(state["ff"]) == ["k", "m", "s"]
    assert state["ff"]["k"] == 3
    # the same by composing single-solver steps, one stage each (the per-term solver is the whole difference)
    mom, adam = step.with_solver("momentum", momentum=0.5), step.with_solver("adam", beta1=0.8, beta2=0.9)
    Z, sa, sf = _x(), {}, {}
    for _ in range(3):
        Z, st_a = mom._stage(Z, ["attn"], alpha, {}, {"attn": sa, "ff": {}}, None)
        Z, st_f = adam._stage(Z, ["ff"], alpha, {}, {"attn": {}, "ff": sf}, None)
        sa, sf = st_a["attn"], st_f["ff"]
    torch.testing.assert_close(X, Z, rtol=1e-12, atol=1e-12)


def test_a_solver_given_by_name_takes_the_step_rule_of_the_default():
    step = ea.compile(_energy(), d=D, steps="descent", max_step=3.0, halvings=2, solvers={"ff": "nesterov"})
    assert step.solvers["ff"] == make_solver("nesterov", steps="descent", max_step=3.0, halvings=2)
    assert step.solvers["attn"] == make_solver("gd", steps="descent", max_step=3.0, halvings=2)
    own = make_solver("adam", steps="free")
    assert ea.compile(_energy(), d=D, steps="descent", solvers={"ff": own}).solvers["ff"] is own


def test_report_and_repr_show_per_term_solvers_only_when_they_differ():
    same = ea.compile(_energy(), d=D, solver="momentum", solvers={"ff": "momentum"})
    assert "solver=momentum(" in repr(same) and "solvers=" not in repr(same)
    assert "solver: momentum(" in same.report() and same.solver == make_solver("momentum")
    mixed = ea.compile(_energy(), d=D, solvers={"ff": "adam"})
    assert "solvers={attn: gd(steps='free'), ff: adam(" in repr(mixed)
    assert "solvers: attn: gd(steps='free'), ff: adam(" in mixed.report()
    with pytest.raises(CompileError, match=r"one solver per term .*step\.solvers\[name\]"):
        mixed.solver
    back = mixed.with_solver("gd")
    assert back.solver == make_solver("gd") and mixed.solvers["ff"].name == "adam"
    partial = mixed.with_solver(solvers={"attn": "rmsprop"})
    assert [s.name for s in partial.solvers.values()] == ["rmsprop", "adam"]
    partial.solver = "nesterov"  # every term's solver
    assert [s.name for s in partial.solvers.values()] == ["nesterov", "nesterov"]


@torch.no_grad()
def _stage_energies(step, X, raw, iters=3):
    """(stage, own energy before, after) of every sub-step, each term's energy from its module (per sample)."""
    state, out = step.init_state(), []
    for t in range(iters):
        for stage in step.stages:
            X1, state = step._stage(X, stage, raw[t], {}, state, None)
            out.append(
                (stage, sum(step.terms[n].energy(X) for n in stage), sum(step.terms[n].energy(X1) for n in stage))
            )
            X = X1
    return out


RULES = ["descent", "bounded", "free"]


@given(
    rules=st.tuples(st.sampled_from(RULES), st.sampled_from(RULES)),
    names=st.tuples(
        st.sampled_from(["gd", "momentum", "nesterov", "adam"]), st.sampled_from(["gd", "momentum", "rmsprop", "adam"])
    ),
    joint=st.booleans(),
    mode=st.sampled_from(["paper", "exact"]),
    scale=st.sampled_from([0.3, 3.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_a_descent_term_never_raises_its_energy_whatever_the_other_terms_rules(rules, names, joint, mode, scale, seed):
    """Sequential: a 'descent' term's sub-step never raises that term's energy. Joint: a stage with a 'descent'
    term never raises the stage's energy (the sum), whatever the other term's rule and solver."""
    solvers = {n: make_solver(s, steps=r, max_step=20.0) for n, s, r in zip(["attn", "ff"], names, rules)}
    step = ea.compile(
        _energy(), d=D, dtype=F64, mode=mode, schedule="joint" if joint else "sequential", solvers=solvers
    )
    gen = torch.Generator().manual_seed(seed)
    raw = [{n: scale * torch.randn(B, N, D, generator=gen, dtype=F64) for n in step.names} for _ in range(3)]
    for stage, e0, e1 in _stage_energies(step, _x(seed), raw):
        assert torch.isfinite(e1).all()
        if any(solvers[n].steps == "descent" for n in stage):
            assert bool((e1 <= e0 + 1e-10 * e0.abs().clamp_min(1.0)).all()), (stage, float((e1 - e0).max()))


def test_the_per_term_check_can_fail_a_free_term_rises_beside_a_descent_term():
    step = ea.compile(
        _energy(),
        d=D,
        dtype=F64,
        solvers={"attn": make_solver("gd", steps="descent", max_step=20.0), "ff": make_solver("gd", steps="free")},
    )
    gen = torch.Generator().manual_seed(3)
    raw = [{n: -3.0 * torch.rand(B, N, D, generator=gen, dtype=F64) for n in step.names} for _ in range(3)]
    rises = {n: 0.0 for n in step.names}
    for (n,), e0, e1 in _stage_energies(step, _x(3), raw):
        rises[n] = max(rises[n], float((e1 - e0).max()))
    assert rises["ff"] > 1e-3 and rises["attn"] <= 1e-10  # negative free steps climb; descent ones do not


def test_a_joint_stage_without_a_descent_term_can_rise_and_with_one_does_not():
    gen = torch.Generator().manual_seed(5)
    raw = [{n: 30.0 * torch.randn(B, N, D, generator=gen, dtype=F64) for n in ("attn", "ff")} for _ in range(3)]

    def worst(rule_attn):
        step = ea.compile(
            _energy(),
            d=D,
            dtype=F64,
            schedule="joint",
            solvers={"attn": make_solver("gd", steps=rule_attn, max_step=20.0), "ff": "gd"},
        )
        return max(float((e1 - e0).max()) for _, e0, e1 in _stage_energies(step, _x(5), raw))

    assert worst("free") > 1e-3 and worst("descent") <= 1e-10


def test_verify_solver_runs_the_steps_own_solvers():
    step = ea.compile(_energy(), d=D, solvers={"attn": "nesterov", "ff": make_solver("gd", steps="bounded")})
    check = ea.verify_solver(step)
    assert check.ok and "attn: nesterov(" in check.solver and "ff: gd(steps='bounded'" in check.solver


# ------------------------------------------------------------------------------------------------ the model config

TERMS_TOML = (
    TINY_TOML
    + """solver = "momentum"
solver_params = { momentum = 0.5, max_step = 2.0 }

[[model.terms]]
family = "attention"
f = "log(x)/beta"
K = "exp(beta*s)"
steps = "free"

[[model.terms]]
family = "feedforward"
g = "x"
h = "relu(x)**2/2"
solver = "adam"
solver_params = { beta1 = 0.8 }
"""
)


def test_terms_tables_give_each_term_its_solver_over_the_models():
    cfg = TrainConfig.from_toml_string(TERMS_TOML)
    solvers = cfg.model.solver_objects()
    assert solvers["attn"] == make_solver("momentum", momentum=0.5, max_step=2.0, steps="free")
    # another solver keeps only the model's step-rule keys (max_step), not momentum
    assert solvers["ff"] == make_solver("adam", beta1=0.8, max_step=2.0, steps="descent")
    net = HyperSET(cfg.model)
    assert net.layers[0].step.solvers == solvers
    again = TrainConfig.from_toml_string(cfg.to_toml())
    assert again == cfg and again.model.solver_objects() == solvers
    assert 'solver = "adam"' in cfg.to_toml() and 'steps = "free"' in cfg.to_toml()


def test_the_step_size_network_follows_each_terms_rule():
    """Zero-initialised step-size network: raw = 0 is α = max_step/2 under 'descent', 0 under 'free'."""
    net = HyperSET(ModelConfig(**TINY, solvers={"ff": {"steps": "free"}}))
    layer = net.layers[0]
    X = torch.randn(2, 5, 16)
    raw = layer.stepnet(0, X)
    assert bool(layer.step.solvers["attn"].step_size(raw["attn"]).eq(0.5).all())
    assert bool(layer.step.solvers["ff"].step_size(raw["ff"]).eq(0.0).all())
    fixed = HyperSET(
        ModelConfig(
            **TINY,
            step_sizes="fixed",
            fixed_step=0.3,
            solvers={"attn": {"steps": "bounded", "solver_params": {"max_step": 0.5}}},
        )
    )
    layer = fixed.layers[0]
    used = {n: layer.step.solvers[n].step_size(v) for n, v in layer.stepnet(0, X).items()}
    assert used == pytest.approx({"attn": 0.3, "ff": 0.3}) and layer.stepnet.values["attn"] != 0.3


def test_a_python_energy_with_per_term_solvers_round_trips_and_reloads(tmp_path):
    energy = ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, name="a") + ea.FeedForward(g="x", h="relu(x)**2/2")
    model = ModelConfig(**TINY, energy=energy, solvers={"a": {"solver": "nesterov", "steps": "bounded"}})
    cfg = TrainConfig(
        task="digits",
        epochs=1,
        batch_size=16,
        limit_train=32,
        limit_test=16,
        progress=False,
        diagnostics_samples=4,
        eval_iters=[1],
        out_dir=str(tmp_path / "run"),
        model=model,
    )
    assert TrainConfig.from_toml_string(cfg.to_toml()).model.solver_objects() == model.solver_objects()
    train(cfg, report=False)
    run = tmp_path / "run"
    assert 'a = { solver = "nesterov", steps = "bounded" }' in (run / "config.toml").read_text()
    sig = json.loads((run / "checkpoint.json").read_text())["signature"]["model"]
    assert sig["solvers"] == {"a": {"solver": "nesterov", "steps": "bounded"}}
    net, _, cfg2, _ = energyarch.train.load_run(run)
    assert cfg2.model.solver_objects() == model.solver_objects()
    assert net.backbone.layers[0].step.solvers["a"].name == "nesterov"


def test_a_terms_run_records_the_solver_keys_and_reloads(tmp_path):
    out = json.dumps(str(tmp_path / "run"))
    (tmp_path / "c.toml").write_text(TERMS_TOML.replace("progress = false", f"progress = false\nout_dir = {out}"))
    cfg = TrainConfig.load(tmp_path / "c.toml")
    train(cfg, report=False)
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert [t.get("solver") for t in state["signature"]["model"]["terms"]] == [None, "adam"]
    _, _, cfg2, _ = energyarch.train.load_run(tmp_path / "run")
    assert cfg2.model.solver_objects() == cfg.model.solver_objects()


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(solvers={"mlp": "adam"}), r"solvers: unknown term name\(s\) \['mlp'\]; the terms are \['attn', 'ff'\]"),
        (dict(solvers={"ff": "adamw"}), r"solvers\['ff'\]='adamw': solver='adamw': choose one of"),
        (dict(solvers={"ff": 3}), r"solvers\['ff'\]=3: give a registered solver name"),
        (dict(solvers=["adam"]), r"solvers=\['adam'\]: give a mapping term name"),
        (dict(solvers={"ff": "momentum"}, steps="descent", backtrack=2), r"backtrack=2 with steps='descent'"),
    ],
)
def test_compile_refuses_bad_per_term_solvers(kwargs, match):
    with pytest.raises(CompileError, match=match):
        ea.compile(_energy(), d=D, **kwargs)


def test_with_solver_refuses_hyper_parameters_without_a_solver():
    step = ea.compile(_energy(), d=D)
    with pytest.raises(CompileError, match=r"with_solver: hyper-parameters \['momentum'\] need a solver"):
        step.with_solver(momentum=0.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (
            dict(solvers={"mlp": {"solver": "adam"}}),
            r"ModelConfig\.solvers=.*unknown term name\(s\) \['mlp'\]; the "
            r"terms are \['attn', 'ff'\]",
        ),
        (dict(solvers={"ff": {"solver": "adamw"}}), r"ModelConfig\.solvers\['ff'\]: solver = 'adamw'; choose one of"),
        (dict(solvers={"ff": {"steps": "safe"}}), r"ModelConfig\.solvers\['ff'\]: steps = 'safe'; choose one of"),
        (
            dict(solvers={"ff": {"solvr": "adam"}}),
            r"unknown key 'solvr' \(did you mean 'solver'\?\); a term's solver "
            r"takes solver, solver_params, steps",
        ),
        (
            dict(solvers={"ff": {"solver": "adam", "solver_params": {"momentum": 0.5}}}),
            r"ModelConfig\.solvers\['ff'\]: solver 'adam': unknown hyper-parameter\(s\) \['momentum'\]",
        ),
        (
            dict(solvers={"ff": {"steps": "free", "solver_params": {"steps": "bounded"}}}),
            r"gives steps = 'free' and solver_params\.steps = 'bounded'; keep one",
        ),
        (dict(solvers={"ff": "adam"}), r"ModelConfig\.solvers\['ff'\] = 'adam': give a table"),
        (dict(solvers="adam"), r"ModelConfig\.solvers='adam': give a table term name"),
        (dict(arch="transformer", solvers={"ff": {"solver": "adam"}}), r"arch='hyperset' only"),
        (
            dict(step_sizes="fixed", fixed_step=0.5, solvers={"ff": {"steps": "bounded"}}),
            r"ModelConfig\.fixed_step=0\.5: under steps='bounded' the step size is at most max_step=0\.2; lower fixed_step "
            r"or raise term 'ff''s solver_params\.max_step",
        ),
    ],
)
def test_model_config_refuses_bad_per_term_solvers_by_name(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**{**TINY, **kwargs})


@pytest.mark.parametrize(
    "line, match",
    [
        ('solver = "adamw"', r"\[\[model\.terms\]\] #2 \(family = 'feedforward'\): solver = 'adamw'; choose one of"),
        ("solver_params = 0.5", r"#2 .*solver_params = 0\.5: give a table of the solver's hyper-parameters"),
        (
            'solver = "gd"\nsolver_params = { momentum = 0.5 }',
            r"\[\[model\.terms\]\] #2 \('ff'\): solver 'gd': unknown hyper-parameter\(s\) \['momentum'\]",
        ),
        ("solver_params = { max_step = -1.0 }", r"#2 \('ff'\): solver 'momentum': max_step=-1\.0 must be a number"),
    ],
)
def test_terms_tables_refuse_bad_solver_keys_by_name(line, match):
    text = TERMS_TOML.replace('solver = "adam"\nsolver_params = { beta1 = 0.8 }', line)
    with pytest.raises(ConfigError, match=match):
        TrainConfig.from_toml_string(text)


def test_a_term_gives_its_solver_in_one_place():
    tables = [
        {"family": "attention", "f": "log(x)/beta", "K": "exp(beta*s)", "solver": "adam"},
        {"family": "feedforward", "g": "x", "h": "relu(x)**2/2"},
    ]
    with pytest.raises(ConfigError, match=r"term 'attn' gives its solver keys in its \[\[model\.terms\]\] table too"):
        ModelConfig(**TINY, terms=tables, solvers={"attn": {"steps": "free"}})


def test_mixed_solvers_compile_to_one_graph():
    """torch.compile(fullgraph=True) of a model whose terms mix solvers and rules in a joint stage equals eager."""
    net = HyperSET(
        ModelConfig(**TINY, solver="momentum", schedule="joint", solvers={"ff": {"solver": "adam", "steps": "free"}})
    )  # attn: momentum, descent
    X = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.compile(net, fullgraph=True, backend="eager")(X), net(X))


def test_set_reaches_one_key_of_the_per_term_solvers():
    """``--set model.solvers.ff.solver=adam`` (and ``model.solver_params.<key>``) sets one key of a table that
    starts empty; a misspelled term name is still refused by name."""
    cfg = TrainConfig().with_overrides(
        ["model.solvers.ff.solver=adam", "model.solvers.ff.steps=free", "model.solver_params.max_step=0.5"]
    )
    assert cfg.model.solvers == {"ff": {"solver": "adam", "steps": "free"}}
    assert cfg.model.solver_params == {"max_step": 0.5}
    with pytest.raises(ConfigError, match="fff"):
        TrainConfig().with_overrides(["model.solvers.fff.solver=adam"])
