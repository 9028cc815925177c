"""Guaranteed descent (issue 17): under steps='descent' no splitting sub-step raises the energy it descends.

Profiles as in tests/test_properties.py: ``ci`` (default, a few seconds) and ``dev`` (``HYPOTHESIS_PROFILE=dev``).
The energies checked here are computed independently of the acceptance test where one exists: the term's own
``energy`` (ordinary terms), the emitted ``token_energies`` with one token moved at a time (causal terms), the
emitted ``energy_Z`` with the gate held (gated feed-forward).
"""

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import energyarch as ea  # noqa: E402
from energyarch import catalog  # noqa: E402
from energyarch.descent import conditional_token_energies, sub_step_energy  # noqa: E402
from energyarch.errors import CompileError, ConfigError  # noqa: E402
from energyarch.models import ModelConfig, TaskSpec, build_model  # noqa: E402
from energyarch.models.config import ATTENTION_PRESETS, FEEDFORWARD_PRESETS  # noqa: E402
from energyarch.runtime import MODES, CausalTermUpdate, GatedTermUpdate  # noqa: E402
from energyarch.runtime_qk import QKTermUpdate  # noqa: E402

settings.register_profile(
    "ci", max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

F64 = torch.float64
D, HEADS, N, B = 8, 2, 5, 3
ENTRIES = catalog.load_catalog()
#: extra f / K combinations beyond the presets and the catalog (distance kernels, unbounded f)
EXTRA_ATTENTION = [
    ("log(x)/beta", "exp(-beta*r)", None),
    ("x", "tanh(beta*s)", None),
    ("-log(x)/beta", "exp(beta*s)", None),
    ("x**2/2", "exp(beta*s)", None),
    ("x/(2*beta)", "(beta*s)**2/2", "sigmoid(x)"),
]


def _attention(choice, causal: bool):
    kind, key = choice
    if kind == "preset":
        term = ATTENTION_PRESETS[key](HEADS)
    elif kind == "catalog":
        term = ENTRIES[key].term(D)
    else:
        f, K, phi = EXTRA_ATTENTION[key]
        term = ea.Attention(f=f, K=K, phi=phi, heads=HEADS)
    if causal:
        term = ea.CausalAttention(
            f=term.f,
            K=term.K,
            heads=HEADS,
            phi=getattr(term.K, "phi", None),
            beta=term.beta,
            constraint=term.constraint,
        )
    return term


def _feedforward(choice):
    kind, key = choice
    return FEEDFORWARD_PRESETS[key](1.0) if kind == "preset" else ENTRIES[key].term(D)


attention_choices = st.one_of(
    st.sampled_from([("preset", k) for k in ATTENTION_PRESETS]),
    st.sampled_from([("catalog", n) for n, e in ENTRIES.items() if e.family == "attention"]),
    st.sampled_from([("extra", i) for i in range(len(EXTRA_ATTENTION))]),
)
ff_choices = st.one_of(
    st.sampled_from([("preset", k) for k in FEEDFORWARD_PRESETS]),
    st.sampled_from([("catalog", n) for n, e in ENTRIES.items() if e.family == "feedforward"]),
)


def _independent(step, stage, X0, X1):
    """The energy of the sub-step, from the modules' own energies (not the acceptance test's function)."""
    if len(stage) > 1:
        return sum(_independent(step, [n], X0, X1).reshape(X0.shape[0], -1).sum(-1) for n in stage)
    n = stage[0]
    module = step.terms[n]
    if isinstance(module, CausalTermUpdate) and not isinstance(
        module, QKTermUpdate
    ):  # token t moved alone: E_t(x1_t | x0_<t), emitted energies
        out = torch.empty(X0.shape[:-1], dtype=X0.dtype)
        for t in range(X0.shape[-2]):
            Xt = X0.clone()
            Xt[..., t, :] = X1[..., t, :]
            out[..., t] = module.token_energies(Xt)[..., t]
        return out
    if isinstance(module, GatedTermUpdate):
        return module.energy_Z(module.normalize(module.coords(X1)), module.gate(X0))
    return module.energy(X1)


def _sub_steps(step, X, raw, iters=3):
    """Every (stage, X before, X after) of ``iters`` iterations with raw step sizes ``raw`` (name → tensor)."""
    state, out = step.init_state(), []
    with torch.no_grad():
        for t in range(iters):
            for stage in step.stages:
                X1, state = step._stage(X, stage, raw[t], {}, state, None)
                out.append((stage, X, X1))
                X = X1
    return out


@torch.no_grad()
def _rises(step, X, raw):
    worst = float("-inf")
    for stage, X0, X1 in _sub_steps(step, X, raw):
        e0, e1 = _independent(step, stage, X0, X0), _independent(step, stage, X0, X1)
        assert torch.isfinite(e1).all()
        worst = max(worst, float(((e1 - e0) / e0.abs().clamp_min(1.0)).max()))
    return worst


@given(
    att=attention_choices,
    ff=ff_choices,
    causal=st.booleans(),
    mode=st.sampled_from(MODES),
    joint=st.booleans(),
    solver=st.sampled_from(["gd", "nesterov", "momentum", "adam"]),
    scale=st.sampled_from([0.1, 3.0, 30.0]),
    max_step=st.sampled_from([0.2, 1.0, 10.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_no_sub_step_raises_its_energy_under_descent(att, ff, causal, mode, joint, solver, scale, max_step, seed):
    energy = _attention(att, causal) + _feedforward(ff)
    try:
        step = ea.compile(
            energy,
            d=D,
            mode=mode,
            schedule="joint" if joint else "sequential",
            dtype=F64,
            solver=solver,
            steps="descent",
            max_step=max_step,
        )
    except CompileError:
        hypothesis.assume(False)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(B, N, D, generator=gen, dtype=F64)
    raw = [{n: scale * torch.randn(B, N, D, generator=gen, dtype=F64) for n in step.names} for _ in range(3)]
    assert _rises(step, X, raw) <= 1e-10


@pytest.mark.parametrize("interaction", [ea.QueryKey(), ea.DiagLowRank(2)], ids=["query-key", "diag-low-rank"])
@pytest.mark.parametrize("K", ["exp(beta*s)", "sigmoid(beta*s)"])
def test_bidirectional_interactions_descend_their_energy(interaction, K):
    """A bidirectional attention term with separate query and key projections (one global energy, not per token)."""
    f = "log(x)/beta" if K.startswith("exp") else "x/(2*beta)"
    energy = ea.Attention(f=f, K=K, heads=HEADS, interaction=interaction) + FEEDFORWARD_PRESETS["softmax"](1.0)
    step = ea.compile(energy, d=D, dtype=F64, steps="descent", max_step=20.0)
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(B, N, D, generator=gen, dtype=F64)
    raw = [{n: 3.0 * torch.randn(B, N, D, generator=gen, dtype=F64) for n in step.names} for _ in range(3)]
    assert _rises(step, X, raw) <= 1e-10
    assert _rises(step.with_solver("gd"), X, raw) > 1e-3  # the same steps, signed: the check can fail


def test_the_check_fails_under_free_steps():
    """The same check, with the paper's signed (free) steps of the same size: some sub-step raises its energy."""
    step = ea.compile(ATTENTION_PRESETS["bisoftmax"](HEADS) + FEEDFORWARD_PRESETS["relu"](1.0), d=D, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(B, N, D, generator=gen, dtype=F64)
    raw = [{n: 3.0 * torch.randn(B, N, D, generator=gen, dtype=F64) for n in step.names} for _ in range(3)]
    assert _rises(step, X, raw) > 1e-3
    assert _rises(step.with_solver("gd", steps="descent", max_step=20.0), X, raw) <= 1e-10


@pytest.mark.parametrize("K", ["exp(beta*s)", "tanh(beta*s)", "exp(-beta*r)"])
@pytest.mark.parametrize("self_term", ["exact", "stopped"])
def test_conditional_token_energies_match_the_emitted_ones(K, self_term):
    term = ea.CausalAttention(
        f="log(x)/beta" if "exp" in K else "x", K=K, heads=HEADS, self_term=self_term, interaction=ea.QueryKey()
    )
    step = ea.compile(term, d=D, dtype=F64)
    X0 = torch.randn(B, N, D, dtype=F64)
    X1 = X0 + 0.3 * torch.randn(B, N, D, dtype=F64)
    module = step.terms["attn"]
    with torch.no_grad():
        got = conditional_token_energies(module, step.energy_decl["attn"], X0, X0)
        torch.testing.assert_close(got, module.token_energies(X0), rtol=1e-12, atol=1e-12)
        moved = conditional_token_energies(module, step.energy_decl["attn"], X0, X1)
        for t in range(N):  # token t moved alone, its prefix at X0
            Xt = X0.clone()
            Xt[..., t, :] = X1[..., t, :]
            want = (
                module.token_energies(Xt)[..., t]
                if self_term == "exact"
                else module.energy_Z(module.query_key(Xt)[0], module.query_key(X0)[1]).sum(-2)[..., t]
            )
            torch.testing.assert_close(moved[..., t], want, rtol=1e-12, atol=1e-12)
        both = sub_step_energy(step, ["attn"], X0, torch.stack([X0, X1]))
        torch.testing.assert_close(both[1], moved)


def test_descent_scale_keeps_the_gradient_and_momentum_state_follows_it():
    step = ea.compile(
        ATTENTION_PRESETS["bisoftmax"](HEADS), d=D, dtype=F64, solver="momentum", steps="descent", max_step=1.0
    )
    X = torch.randn(B, N, D, dtype=F64)
    raw = torch.zeros(B, N, D, dtype=F64, requires_grad=True)
    X1, state = step(X, raw, state=step.init_state())
    X1.pow(2).sum().backward()
    assert (X1 != X).any()  # at least one sample took a step
    assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().max() > 0
    torch.testing.assert_close(state["attn"]["v"], (X1 - X).detach())  # the velocity is the scaled increment


def _tiny_digits(attention: dict, steps: str, tmp_path, name: str):
    from energyarch.train import TrainConfig, train

    cfg = TrainConfig(
        task="digits",
        epochs=1,
        batch_size=64,
        lr=3e-3,
        limit_train=256,
        limit_test=64,
        eval_every=0,
        progress=False,
        eval_iters=[2],
        diagnostics_samples=64,
        out_dir=str(tmp_path / name),
        model=ModelConfig(d=16, heads=2, iters=2, time_freq=8, ff_ratio=1.0, attention=attention, steps=steps),
        patch_size=2,
    )
    summary = train(cfg)
    from energyarch.train.trainer import load_run

    model, task, _, _ = load_run(summary["out_dir"])
    x = task.inputs(task.test_set[list(range(32))], "cpu")
    with torch.no_grad():
        return model(x), summary, model, x


def test_default_descent_trains_e_and_minus_e_to_different_models_and_reports_no_rise(tmp_path):
    import json

    E = {"f": "log(x)/beta", "K": "exp(beta*s)"}
    minus_E = {"f": "-log(x)/beta", "K": "exp(beta*s)"}
    assert ModelConfig().steps == "descent"
    a, _, model, x = _tiny_digits(E, "descent", tmp_path, "pos")
    b, *_ = _tiny_digits(minus_E, "descent", tmp_path, "neg")
    assert (a - b).abs().max() > 1e-3  # the energy's sign matters
    ev = json.loads((tmp_path / "pos" / "eval.json").read_text())
    assert ev["term_rise_fraction"]["max"] == 0.0 and set(ev["term_rise_fraction"]) == {"attn", "ff", "max"}
    assert ea.verify_descent(model, x).ok
    # the paper's signed steps: E and −E give the same model (zero-initialised step net, mirrored trajectory)
    c, *_ = _tiny_digits(E, "free", tmp_path, "free-pos")
    d, _, free_model, _ = _tiny_digits(minus_E, "free", tmp_path, "free-neg")
    assert torch.equal(c, d)
    report = ea.verify_descent(free_model, x)
    assert not report.ok and report.max_fraction > 0 and "rose" in str(report)


def test_fixed_steps_under_the_positive_rule_are_the_given_step():
    cfg = ModelConfig(d=8, heads=2, iters=2, time_freq=8, step_sizes="fixed", fixed_step=0.3)
    layer = build_model(cfg, TaskSpec(seq_len=5)).backbone.layers[0]
    raw = layer.stepnet(0, torch.zeros(1, 5, 8))["attn"]
    assert layer.step.solver.step_size(raw) == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="fixed_step"):
        ModelConfig(step_sizes="fixed", fixed_step=2.0)
    assert ModelConfig(step_sizes="fixed", fixed_step=2.0, steps="free").solver_object().steps == "free"
    with pytest.raises(ConfigError, match="steps"):
        ModelConfig(steps="downhill")


def test_official_momentum_convention_differs_with_varying_steps():
    d = torch.ones(1, 1, 1)
    ours, official = (
        ea.solvers.make_solver("momentum", momentum=0.9),
        ea.solvers.make_solver("momentum", momentum=0.9, convention="official"),
    )
    run = {}
    for name, s in (("ours", ours), ("official", official)):
        state, x = {}, 0.0
        for alpha in (0.1, 0.1):  # constant steps: the two agree
            inc, state = s.update(d, alpha, state)
            x += float(inc)
        run[name] = x
    assert run["ours"] == pytest.approx(run["official"])
    state_o, state_e = {}, {}
    _, state_o = official.update(d, 0.1, state_o)
    _, state_e = ours.update(d, 0.1, state_e)
    assert float(official.update(d, 1.0, state_o)[0]) == pytest.approx(1.9)  # 1.0 · (0.9 · 1 + 1)
    assert float(ours.update(d, 1.0, state_e)[0]) == pytest.approx(1.09)  # 0.9 · 0.1 + 1.0
    with pytest.raises(CompileError, match="convention"):
        ea.solvers.make_solver("momentum", convention="pytorch")


@pytest.mark.parametrize(
    "K, where",
    [
        ("1 - (pi/2 - atan((s/p)/sqrt(1 - (s/p)**2)))/pi", "s = R²"),
        ("exp(-sqrt(r))", "r = 0"),
        ("(p - s)**0.5 + s", "s = R²"),
    ],
)
def test_verify_flags_kernels_not_smooth_on_the_sphere(K, where):
    """The arc-cosine kernel 1 − acos(s/p)/π written with atan: its derivative is infinite at s = p (each token
    with itself); verify used to pass it at random points (RMSNorm's epsilon keeps |z|² just below p)."""
    step = ea.compile(ea.Attention(f="x", K=K, heads=HEADS), d=D)
    report = ea.verify(step, raise_on_fail=False)
    assert not report.ok and where in report.terms[0].not_smooth and "NOT SMOOTH" in str(report)
    with pytest.raises(ea.errors.VerificationError, match="NOT SMOOTH"):
        ea.verify(step)
    assert ea.verify(ea.compile(ea.Attention(f="x", K="tanh(beta*s)", heads=HEADS), d=D)).ok


def test_runs_saved_before_the_step_rule_existed_load_with_free_steps():
    from energyarch.train.checkpoint import _defaults
    from energyarch.train.config import TrainConfig, saved_config

    old = TrainConfig(task="digits", model=ModelConfig(d=16, heads=2, iters=2, time_freq=8)).to_dict()
    del old["model"]["steps"]  # as written before the field existed
    assert TrainConfig.from_dict(saved_config(old)).model.steps == "free"
    assert TrainConfig.from_dict(old).model.steps == "descent"  # a config file without it gets today's default
    assert _defaults("model")["steps"] == "free"
