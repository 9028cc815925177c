"""Solvers (issue 10): textbook recurrences against closed forms and torch.optim, the state carried by EnergyStep,
gradient descent unchanged, descent checks, descent-safe steps, adaptive depth, configs, torch.compile."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import energyarch as ea
from energyarch.errors import CompileError, ConfigError, VerificationError
from energyarch.models import ModelConfig, TaskSpec, build_model
from energyarch.solvers import SOLVERS, Solver, make_solver, register_solver, run, verify_solver

F64 = torch.float64
NAMES = ("gd", "momentum", "nesterov", "rmsprop", "adam")


def _energy(**kw):
    return ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h="relu(x)**2/2", **kw)


@pytest.fixture(scope="module")
def step64():
    return ea.compile(_energy(), d=8, dtype=F64)


def _quadratic(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))[0]
    A = Q @ torch.diag(torch.linspace(0.5, 3.0, n, dtype=F64)) @ Q.T  # SPD, eigenvalues in [0.5, 3]
    b = torch.randn(n, generator=g, dtype=F64)
    x0 = torch.randn(n, generator=g, dtype=F64)
    return A, b, x0, torch.linalg.solve(A, b)


# -- the recurrences on a quadratic E = ½ xᵀAx − bᵀx ------------------------------------------------------------


def test_registry_has_the_five_solvers_and_gd_is_default():
    assert set(NAMES) <= set(SOLVERS)
    assert ea.compile(_energy(), d=8).solver == make_solver("gd")


@pytest.mark.parametrize("name", ["gd", "momentum", "nesterov"])
def test_linear_solvers_match_their_closed_form(name):
    """x_k − x* = (I − αA)^k e₀ (gd); momentum and Nesterov: the k-th power of their 2n×2n linear map on (e, v)."""
    A, b, x0, xs = _quadratic()
    alpha, mu, n, K = 0.2, 0.7, len(b), 12
    iterates = run(make_solver(name, **({} if name == "gd" else {"momentum": mu})), lambda x: b - A @ x, x0, alpha, K)
    I = torch.eye(n, dtype=F64)
    B = I - alpha * A
    if name == "gd":
        M = B
        start = x0 - xs
    elif name == "momentum":  # v' = μv − αA e;  e' = e + v'
        M = torch.cat([torch.cat([B, mu * I], 1), torch.cat([-alpha * A, mu * I], 1)], 0)
        start = torch.cat([x0 - xs, torch.zeros(n, dtype=F64)])
    else:  # v' = μ(I − αA)v − αA e;  e' = e + v'
        M = torch.cat([torch.cat([B, mu * B], 1), torch.cat([-alpha * A, mu * B], 1)], 0)
        start = torch.cat([x0 - xs, torch.zeros(n, dtype=F64)])
    for k, x in enumerate(iterates):
        expected = xs + (torch.linalg.matrix_power(M, k) @ start)[:n]
        torch.testing.assert_close(x, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["momentum", "rmsprop", "adam"])
def test_solvers_match_torch_optim(name):
    """Independent references: torch.optim.SGD(momentum) (v = −lr·buf), RMSprop (alpha = ρ) and Adam."""
    A, b, x0, _ = _quadratic(seed=1)
    lr, K = 0.05, 15
    solver = make_solver(name)
    ours = run(solver, lambda x: b - A @ x, x0, lr, K)
    p = torch.nn.Parameter(x0.clone())
    opt = {
        "momentum": lambda: torch.optim.SGD([p], lr=lr, momentum=solver.params().get("momentum", 0)),
        "rmsprop": lambda: torch.optim.RMSprop([p], lr=lr, alpha=solver.params().get("rho", 0), eps=1e-8),
        "adam": lambda: torch.optim.Adam([p], lr=lr, betas=(0.9, 0.96), eps=1e-8),
    }[name]()
    for k in range(K):
        opt.zero_grad()
        p.grad = A @ p.detach() - b
        opt.step()
        torch.testing.assert_close(ours[k + 1], p.detach(), rtol=1e-11, atol=1e-12)


def test_adam_bias_correction_first_steps_by_hand():
    """k = 1: Δ = α g/|g| (m̂ = g, ŝ = g²); k = 2 with g₂: m̂ = (β₁(1−β₁)g₁ + (1−β₁)g₂)/(1−β₁²), likewise ŝ."""
    s = make_solver("adam", beta1=0.5, beta2=0.75, eps=1e-300)  # ε > 0 required; this small it changes no digit
    g1, g2 = torch.tensor([2.0], dtype=F64), torch.tensor([-1.0], dtype=F64)
    inc, st = s.update(g1, 0.1, {})
    torch.testing.assert_close(inc, torch.tensor([0.1], dtype=F64))
    inc, st = s.update(g2, 0.1, st)
    m_hat = (0.5 * 0.5 * 2.0 + 0.5 * -1.0) / (1 - 0.25)
    s_hat = (0.75 * 0.25 * 4.0 + 0.25 * 1.0) / (1 - 0.5625)
    torch.testing.assert_close(inc, torch.tensor([0.1 * m_hat / s_hat**0.5], dtype=F64))
    assert st["k"] == 2


# -- EnergyStep: the state carried across iterations, per term ------------------------------------------------------


def _reference_iterates(step, name, X, alphas, K, params, joint=False):
    """Textbook recurrences written out here, on the compiled terms' directions (sequential or joint)."""
    mu, rho, b1, b2, eps = (
        params.get("momentum", 0.9),
        params.get("rho", 0.8),
        params.get("beta1", 0.9),
        params.get("beta2", 0.96),
        params.get("eps", 1e-8),
    )
    terms = step.names
    v = {n: torch.zeros_like(X) for n in terms}
    m = {n: torch.zeros_like(X) for n in terms}
    s = {n: torch.zeros_like(X) for n in terms}
    out = []
    stages = [terms] if joint else [[n] for n in terms]
    for k in range(1, K + 1):
        for stage in stages:
            look = X + sum(mu * v[n] for n in stage) if name == "nesterov" else X
            incs = []
            for n in stage:
                d = step.terms[n].direction(look)
                a = alphas[n]
                if name == "gd":
                    incs.append(a * d)
                elif name in ("momentum", "nesterov"):
                    v[n] = mu * v[n] + a * d
                    incs.append(v[n])
                elif name == "rmsprop":
                    s[n] = rho * s[n] + (1 - rho) * d * d
                    incs.append(a * d / (s[n].sqrt() + eps))
                else:
                    m[n] = b1 * m[n] + (1 - b1) * d
                    s[n] = b2 * s[n] + (1 - b2) * d * d
                    incs.append(a * (m[n] / (1 - b1**k)) / ((s[n] / (1 - b2**k)).sqrt() + eps))
            X = X + sum(incs)
        out.append(X)
    return out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("joint", [False, True])
def test_energy_step_carries_each_terms_state(name, joint):
    step = ea.compile(_energy(), d=8, dtype=F64, schedule="joint" if joint else "sequential", solver=name)
    X = torch.randn(2, 5, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    alphas = {"attn": 0.05, "ff": 0.08}
    expected = _reference_iterates(step, name, X, alphas, 4, {}, joint=joint)
    state = step.init_state()
    for k in range(4):
        X, state = step(X, alphas, state=state)
        torch.testing.assert_close(X, expected[k], rtol=1e-12, atol=1e-12)


def test_gd_is_bit_identical_to_the_term_updates(step64):
    X = torch.randn(3, 6, 8, dtype=F64)
    lora = {"attn": step64.terms["attn"].weight + 0.01}
    alphas = {"attn": torch.rand(3, 6, 8, dtype=F64), "ff": 0.3}
    ref = step64.terms["ff"](step64.terms["attn"](X, alphas["attn"], lora["attn"]), 0.3)
    assert torch.equal(step64(X, alphas, lora), ref)
    X1, state = step64(X, alphas, lora, state=step64.init_state())
    assert torch.equal(X1, ref) and state == {"attn": {}, "ff": {}}


def test_hyperset_with_gains_steps_as_before():
    """The gain-scaled step (official convention) now goes through EnergyStep: same formula, written out here."""
    cfg = ModelConfig(
        d=8, heads=2, iters=2, time_freq=8, norm_gain=True, step_sizes="fixed", fixed_step=0.1, steps="free"
    )  # the formula below is the plain (free-step) update
    net = build_model(cfg, TaskSpec(seq_len=5)).backbone.double()
    layer = net.layers[0]
    with torch.no_grad():
        for g in layer.gains.values():
            g.uniform_(0.5, 1.5)
    X = torch.randn(2, 5, 8, dtype=F64)
    ref = X
    for _ in range(2):
        for n, term in layer.step.terms.items():
            Z = term.normalize(term.coords(ref)) * layer.gains[n]
            ref = ref - 0.1 * (term.grad_Z(Z).transpose(-2, -3).flatten(-2) @ term.weight.T)
    torch.testing.assert_close(net(X), ref, rtol=1e-12, atol=1e-12)


# -- descent checks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kw", [dict(), dict(mode="exact"), dict(mode="riemannian"), dict(path="autodiff")])
def test_verify_solver_descends_with_small_steps(name, kw):
    E = ea.Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=2) + ea.FeedForward(g="x", h="softplus(x)")
    check = verify_solver(ea.compile(E, d=8, **kw), name, iters=4)
    assert check.ok and check.decreased and not check.rises
    assert check.energies.shape == (5, 4)


def test_verify_solver_catches_an_ascent_rule(step64):
    @dataclasses.dataclass(frozen=True)
    class Ascent(Solver):
        def update(self, d, alpha, state):
            return -alpha * d, state

    register_solver("test_ascent")(Ascent)
    try:
        with pytest.raises(VerificationError, match="does not descend"):
            verify_solver(step64, "test_ascent")
        assert not verify_solver(step64, "test_ascent", raise_on_fail=False).ok
    finally:
        SOLVERS.pop("test_ascent")


def test_backtracking_never_lets_the_energy_rise_and_free_large_steps_do(step64):
    X0 = torch.randn(4, 7, 8, dtype=F64, generator=torch.Generator().manual_seed(5))

    def energies(step):
        X, state, out = X0, step.init_state(), [step.energy(X0)]
        with torch.no_grad():
            for _ in range(5):
                X, state = step(X, 3.0, state=state)
                out.append(step.energy(X))
        return torch.stack(out)

    free = energies(step64.with_solver("momentum"))
    assert bool(((free[1:] - free[:-1]) > 0).any())  # the control: large steps climb
    safe = step64.with_solver("momentum", backtrack=4)
    safe.eval()
    E = energies(safe)
    assert bool(((E[1:] - E[:-1]) <= 0).all()) and bool((E[-1] < E[0]).all())


def test_bounded_steps_are_positive_bounded_and_capped_by_curvature():
    s = make_solver("gd", steps="bounded", max_step=0.4)
    raw = torch.tensor([-50.0, 0.0, 50.0], dtype=F64)
    torch.testing.assert_close(s.step_size(raw), 0.4 * torch.sigmoid(raw))
    assert s.step_size(0.0) == pytest.approx(0.2) and 0 < s.step_size(-30.0) < s.step_size(30.0) <= 0.4
    # 2nd step: Δ = α d scaled by min(1, ⟨d, Δ⟩ / (L̂ ‖Δ‖²)), L̂ the secant ‖d₁ − d₀‖ / ‖x₁ − x₀‖ of the 1st step
    step = ea.compile(
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2),
        d=4,
        dtype=F64,
        solver=make_solver("gd", steps="bounded", max_step=4.0),
    )
    X = torch.randn(2, 3, 4, dtype=F64)
    with torch.no_grad():
        X1, st = step(X, 50.0, state=step.init_state())
        d1, X2 = step.direction("attn", X1), step(X1, 50.0, state=st)[0]
    alpha = 4.0 * torch.sigmoid(torch.tensor(50.0, dtype=F64))
    d0 = step.direction("attn", X)
    L = ((d1 - d0).flatten(-2).norm(dim=-1) / (X1 - X).flatten(-2).norm(dim=-1))[:, None, None]
    scale = torch.clamp(
        (d1 * alpha * d1).flatten(-2).sum(-1)[:, None, None]
        / (L * (alpha * d1).pow(2).flatten(-2).sum(-1)[:, None, None]),
        max=1,
    )
    torch.testing.assert_close(X2, X1 + scale * alpha * d1, rtol=1e-12, atol=1e-12)
    assert bool((scale < 1).all())  # the cap binds here (L̂ ≈ 2 > 1/α)


def test_solver_arguments_are_checked():
    with pytest.raises(CompileError, match="choose one of"):
        make_solver("lbfgs")
    with pytest.raises(CompileError, match="unknown hyper-parameter"):
        make_solver("momentum", rho=0.5)
    with pytest.raises(CompileError, match="momentum=1.5"):
        make_solver("nesterov", momentum=1.5)
    with pytest.raises(CompileError, match="steps='safe'"):
        make_solver("gd", steps="safe")
    with pytest.raises(CompileError, match="backtrack"):
        make_solver("gd", backtrack=-1)


# -- models, configs, adaptive depth, torch.compile ------------------------------------------------------------------


def test_model_config_solver_from_toml_and_errors():
    from energyarch.train.config import TrainConfig

    cfg = TrainConfig.from_toml_string(
        'task = "digits"\n[model]\nd = 16\nheads = 2\nsolver = "nesterov"\n'
        '[model.solver_params]\nmomentum = 0.5\nsteps = "bounded"\n'
    )
    assert cfg.model.solver_object() == make_solver("nesterov", momentum=0.5, steps="bounded")
    again = TrainConfig.from_toml_string(cfg.to_toml())
    assert again.model.solver_object() == cfg.model.solver_object()
    with pytest.raises(ConfigError, match="solver='heavy'"):
        ModelConfig(solver="heavy")
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        ModelConfig(solver="adam", solver_params={"momentum": 0.9})
    with pytest.raises(ConfigError, match="arch='hyperset' only"):
        ModelConfig(arch="transformer", solver="adam")


@pytest.mark.parametrize("name", NAMES)
def test_model_with_solver_and_lora_trains(name):
    cfg = ModelConfig(d=8, heads=2, iters=3, time_freq=8, lora_rank=2, solver=name)
    model = build_model(cfg, TaskSpec(seq_len=6))
    x = torch.randint(0, 10, (2, 6))
    with torch.no_grad():  # non-zero step sizes so that every solver moves X
        for layer in model.backbone.layers:
            layer.stepnet.out.bias.fill_(0.05)
    model(x).sum().backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.backbone.layers[0].step.solver.name == name


def test_adaptive_depth_stops_per_sample():
    cfg = ModelConfig(d=8, heads=2, iters=4, time_freq=8, step_sizes="fixed", fixed_step=0.05, solver="momentum")
    net = build_model(cfg, TaskSpec(seq_len=5)).backbone.double()
    X = torch.randn(3, 5, 8, dtype=F64)
    full, used = net.adaptive(X, tol=0.0, max_iters=6)  # tol 0: never stops early
    torch.testing.assert_close(full, net(X, iters=6))
    assert used.tolist() == [6, 6, 6]
    one, used = net.adaptive(X, tol=1e9, max_iters=6)  # every change is below 1e9: one iteration
    torch.testing.assert_close(one, net(X, iters=1))
    assert used.tolist() == [1, 1, 1]
    # a middle tolerance: each sample stops after the first iteration whose relative energy change is below it
    layer, rels = net.layers[0], []
    state, Xt = layer.step.init_state(), X
    with torch.no_grad():
        for t in range(6):
            E0 = layer.step.energy(Xt)
            Xt, state = layer.update(Xt, layer.stepnet(t, X), None, state)
            rels.append((layer.step.energy(Xt) - E0).abs() / E0.abs())
    R = torch.stack(rels)  # (iteration, sample)
    tol = float(R.median())
    below = R < tol
    expected = [int(below[:, b].nonzero()[0]) + 1 if below[:, b].any() else 6 for b in range(3)]
    assert net.adaptive(X, tol=tol, max_iters=6)[1].tolist() == expected


def test_solver_step_compiles_without_graph_breaks():
    step = ea.compile(_energy(), d=8, solver="nesterov", steps="bounded")
    X = torch.randn(2, 5, 8)

    def two(X):
        state = step.init_state()
        for _ in range(2):
            X, state = step(X, 0.1, state=state)
        return X

    compiled = torch.compile(two, fullgraph=True, backend="eager")  # dynamo capture: no graph break
    torch.testing.assert_close(compiled(X), two(X), rtol=1e-5, atol=1e-6)


class _TinyTask:
    """The three methods of a Task that evaluation calls, on random token sequences (labels: the first token)."""

    primary = "top1"

    def inputs(self, batch, device):
        return batch

    def sums(self, logits, batch):
        return {"top1": float((logits[:, 0].argmax(-1) == batch[:, 0]).sum()), "n": float(len(batch))}

    def finalize(self, sums):
        return {"top1": sums["top1"] / sums["n"]}


def test_energy_rise_counts_pairs_against_the_recorded_energies():
    from energyarch.train.evaluate import adaptive_depth, energy_rise

    cfg = ModelConfig(d=8, heads=2, layers=2, iters=3, time_freq=8, step_sizes="fixed", fixed_step=2.0, steps="free")
    model = build_model(cfg, TaskSpec(seq_len=5, num_outputs=10))
    data = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(0))
    rise = energy_rise(model, _TinyTask(), data, iters=3, samples=6)
    # independent count: every layer and iteration, total energy before/after with the step's own energy
    X, rises, biggest = model.embed(data), 0, float("-inf")
    with torch.no_grad():
        for layer in model.backbone.layers:
            state = layer.step.init_state()
            for t in range(3):
                E0 = layer.step.energy(X)
                X, state = layer.step(X, 2.0, state=state)
                diff = layer.step.energy(X) - E0
                rises += int((diff > 1e-6 * E0.abs()).sum())
                biggest = max(biggest, float(diff.max()))
    assert rise["pairs"] == 6 * 2 * 3 and len(rise["per_iteration"]) == 6
    assert rise["fraction"] == pytest.approx(rises / 36) and rise["max"] == pytest.approx(biggest, rel=1e-5)
    rows = adaptive_depth(model, _TinyTask(), data, [0.0, 1e9], max_iters=3, batch_size=4)
    assert [r["mean_iters"] for r in rows] == [6.0, 2.0]  # 2 layers × (3 | 1) iterations
    assert (
        energy_rise(
            build_model(ModelConfig(arch="transformer", d=8, heads=2, iters=2), TaskSpec(seq_len=5)),
            _TinyTask(),
            data,
            iters=2,
        )
        is None
    )
