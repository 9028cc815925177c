"""Models: shapes for every arch and task, step sizes, LoRA, recording, gradients, baselines, config errors."""

import copy

import pytest
import torch

import energyarch as ea
from energyarch.errors import ConfigError
from energyarch.models import (
    CRATE,
    EnergyTransformer,
    HyperSET,
    Model,
    ModelConfig,
    TaskSpec,
    build_model,
    count_parameters,
    describe,
)
from energyarch.models.lora import DepthLoRA
from energyarch.models.stepsizes import StepSizeNet

ARCHS = ["hyperset", "transformer", "energy_transformer", "crate"]
D, H, T = 16, 2, 3
TOKENS = TaskSpec(kind="tokens", vocab_size=10, seq_len=9, num_outputs=9, output="per_token")
IMAGES = TaskSpec(kind="image", image_shape=(3, 8, 8), patch_size=4, num_outputs=5, output="cls")


def cfg(**kw):
    base = dict(d=D, heads=H, iters=T, time_freq=8)
    base.update(kw)
    return ModelConfig(**base)


def inputs(task, B=2):
    if task.kind == "tokens":
        return torch.randint(0, task.vocab_size, (B, task.seq_len))
    return torch.randn(B, *task.image_shape)


def wake_up(model):
    """Give zero-initialised step-size outputs a random value so every path carries gradient."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, StepSizeNet):
                m.out.weight.normal_(0, 0.1)
                m.out.bias.uniform_(0.05, 0.2)
    return model


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "task",
    [
        TOKENS,
        IMAGES,
        TaskSpec(kind="image", image_shape=(1, 8, 8), patch_size=4, num_outputs=3, output="per_token"),
        TaskSpec(kind="tokens", seq_len=6, num_outputs=4, output="cls"),
    ],
    ids=["tokens-per_token", "image-cls", "image-per_token", "tokens-cls"],
)
def test_shapes_every_arch_and_task(arch, task):
    torch.manual_seed(0)
    model = build_model(cfg(arch=arch), task)
    x = inputs(task)
    out = model(x)
    n_tokens = task.num_tokens
    expected = (2, task.num_outputs) if task.output == "cls" else (2, n_tokens, task.num_outputs)
    assert out.shape == expected and torch.isfinite(out).all()
    logits, trace = model(x, record=True)
    torch.testing.assert_close(logits, out)
    assert len(trace) == T and trace.angle["attn"].shape == (T, H)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradient_reaches_every_parameter(arch):
    torch.manual_seed(1)
    model = wake_up(build_model(cfg(arch=arch, lora_rank=2 if arch == "hyperset" else 0), TOKENS))
    model(inputs(TOKENS)).logsumexp(-1).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert dead == []


def test_hyperset_is_identity_at_init_and_step_sizes_are_zero():
    """With the paper's signed steps (steps='free') the zero-initialised step net makes the layer the identity;
    under the default 'descent' rule the raw steps are zero and the step sizes max_step / 2."""
    torch.manual_seed(2)
    net = HyperSET(cfg(layers=2, lora_rank=2, steps="free"))
    X = torch.randn(2, 5, D)
    steps = net.layers[0].stepnet(0, X)
    assert set(steps) == {"attn", "ff"} and all(torch.equal(s, torch.zeros(2, 5, D)) for s in steps.values())
    assert torch.equal(net(X), X)
    assert torch.equal(net(X, iters=3 * T), X)
    descent = HyperSET(cfg(layers=2, lora_rank=2))
    assert descent.layers[0].step.solver.step_size(descent.layers[0].stepnet(0, X)["attn"]).eq(0.5).all()


def test_evaluation_beyond_training_iterations():
    torch.manual_seed(3)
    for kw in (dict(), dict(lora_rank=2), dict(condition="xt")):
        model = wake_up(build_model(cfg(**kw), TOKENS))
        x = inputs(TOKENS)
        short, long = model(x), model(x, iters=4 * T)
        assert torch.isfinite(long).all() and not torch.allclose(short, long)
    net = StepSizeNet(D, ["attn", "ff"], freq=8)
    assert torch.isfinite(net(1000, torch.randn(1, 2, D))["ff"]).all()


def test_fixed_steps_have_no_parameters_and_move_tokens():
    model = HyperSET(cfg(step_sizes="fixed", fixed_step=0.1))
    assert not any("stepnet" in n for n, _ in model.named_parameters())
    X = torch.randn(2, 5, D)
    step = model.layers[0].step
    expected = X
    for _ in range(T):
        expected = step(expected, step.solver.raw_step(0.1))  # α = 0.1 under the default positive rule
    torch.testing.assert_close(model(X), expected)


def test_layers_are_distinct_copies():
    net = HyperSET(cfg(layers=3))
    Ws = [layer.step.terms["attn"].weight for layer in net.layers]
    assert len({W.data_ptr() for W in Ws}) == 3
    assert not torch.allclose(Ws[0], Ws[1])
    assert count_parameters(net) == 3 * count_parameters(net.layers[0])


def test_lora_weights_per_iteration_and_parameter_count():
    torch.manual_seed(4)
    r, M = 2, 24  # a feed-forward width that is not a multiple of d
    ff = ea.FeedForward(g="x", h="relu(x)**2/2", width=M)
    base, lora = HyperSET(cfg(feedforward=ff, layers=2)), HyperSET(cfg(feedforward=ff, layers=2, lora_rank=r))
    expected = 2 * T * r * ((D + D) + (D + M))  # L · T · r · Σ_terms (d + cols)
    assert count_parameters(lora) - count_parameters(base) == expected
    layer = lora.layers[0]
    W = {n: m.weight for n, m in layer.step.terms.items()}
    Ws = [layer.weights(t) for t in range(T)]
    for t, Wt in enumerate(Ws):
        for n in W:
            torch.testing.assert_close(Wt[n], W[n] + 4.0 * layer.lora.A[n][t] @ layer.lora.B[n][t])
    assert not torch.allclose(Ws[0]["ff"], Ws[1]["ff"]) and Ws[0]["ff"].shape == (D, M)
    assert all(torch.equal(layer.weights(T + 5)[n], Ws[-1][n]) for n in W)  # beyond T: last adapter
    # the per-iteration weights are what the step uses
    wake_up(lora)
    X = torch.randn(2, 5, D)
    steps = layer.stepnet(0, X)
    torch.testing.assert_close(lora.layers[0](X, 1), layer.step(X, steps, Ws[0]))
    assert not torch.allclose(lora.layers[0](X, 1), layer.step(X, steps))


def test_depth_lora_init_statistics():
    torch.manual_seed(5)
    lora = DepthLoRA({"ff": (64, 256)}, iters=8, rank=16)
    assert lora.A["ff"].std().item() == pytest.approx(0.02, rel=0.05)
    assert lora.B["ff"].std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("kw", [dict(), dict(lora_rank=2, condition="xt", layers=2)])
def test_recorded_energies_match_step_energies(kw):
    torch.manual_seed(6)
    net = wake_up(HyperSET(cfg(**kw)))
    X0 = torch.randn(3, 5, D)
    out, trace = net(X0, iters=T + 1, record=True)
    torch.testing.assert_close(out, net(X0, iters=T + 1))  # recording does not change the result
    assert len(trace) == net.cfg.layers * (T + 1)
    k, X = 0, X0
    for index, layer in enumerate(net.layers):
        Xin = X
        for t in range(T + 1):
            W = layer.weights(t)
            before = layer.step.energies(X, W)
            X = layer.step(X, layer.stepnet(t, Xin if layer.condition == "x0" else X), W)
            after = layer.step.energies(X, W)
            for n in ("attn", "ff"):
                torch.testing.assert_close(trace.energies[n][k], before[n].mean())
                torch.testing.assert_close(trace.energies_after[n][k], after[n].mean())
            assert (trace.layer[k], trace.t[k]) == (index, t)
            k += 1
    assert trace.effective_rank["attn"].shape == (len(trace), H)
    assert ((trace.angle["attn"] >= 0) & (trace.angle["attn"] <= 180)).all()


def test_energy_transformer_step_is_autograd_of_its_energy():
    torch.manual_seed(7)
    et = EnergyTransformer(cfg(arch="energy_transformer"))
    layer = et.layers[0]
    X = torch.randn(2, 5, D, dtype=torch.float64)
    layer.double()
    g = layer.norm(X).detach().requires_grad_(True)
    # independent evaluation of both energies with explicit loops over heads
    e_att = 0
    for h in range(H):
        q, k = g @ layer.Wq[h].T, g @ layer.Wk[h].T  # (B, N, p)
        e_att = e_att - torch.logsumexp(layer.beta * k @ q.transpose(-1, -2), dim=-2).sum(-1) / layer.beta
    e_hn = -0.5 * (torch.relu(g @ layer.xi.T) ** 2).sum((-1, -2))
    E = layer.energies_g(g)
    torch.testing.assert_close(E["attn"], e_att)
    torch.testing.assert_close(E["hopfield"], e_hn)
    (grad,) = torch.autograd.grad((e_att + e_hn).sum(), g)
    torch.testing.assert_close(layer(X), X - layer.step * grad)


def test_crate_block_matches_column_formulas():
    torch.manual_seed(8)
    block = CRATE(cfg(arch="crate")).layers[0].double()
    Z = torch.randn(1, 4, D, dtype=torch.float64)
    p = D // H
    Zn = block.norm1(Z)[0]  # (N, d)
    mssa = torch.zeros(4, D, dtype=torch.float64)
    for h in range(H):
        Uh = block.U[:, h * p : (h + 1) * p]  # (d, p)
        W = Zn @ Uh
        mssa += torch.softmax(W @ W.T / p**0.5, dim=-1) @ W @ Uh.T
    half = Z[0] + mssa
    x = block.norm2(half[None])[0]
    Dm, eta, lam = block.D, block.eta, block.lam
    expected = torch.stack([torch.relu(z + eta * Dm.T @ (z - Dm @ z) - eta * lam) for z in x])
    torch.testing.assert_close(block(Z)[0], expected)


def test_model_record_and_describe():
    model = build_model(cfg(arch="transformer"), IMAGES)
    assert isinstance(model, Model)
    logits, trace = model(inputs(IMAGES), iters=2 * T, record=True)
    assert logits.shape == (2, 5) and len(trace) == 2 * T and trace.energies == {}
    text = describe(model)
    assert "backbone" in text and f"{count_parameters(model):,}" in text.splitlines()[-1]
    assert count_parameters(model) == (
        count_parameters(model.embed) + count_parameters(model.backbone) + count_parameters(model.readout)
    )


def test_custom_attention_object_and_presets_build():
    att = ea.Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=H)
    for kw in (
        dict(attention=att),
        dict(attention="linear", feedforward="gated"),
        dict(attention="sigmoid", feedforward="softmax", mode="riemannian"),
    ):
        model = wake_up(build_model(cfg(**kw), TOKENS))
        assert torch.isfinite(model(inputs(TOKENS))).all()


@pytest.mark.parametrize(
    "field, value",
    [
        ("arch", "rnn"),
        ("d", 0),
        ("heads", 3),
        ("iters", 1.5),
        ("attention", "softmax"),
        ("feedforward", 7),
        ("step_sizes", "adaptive"),
        ("condition", "x1"),
        ("lora_rank", -1),
        ("mode", "strict"),
        ("time_freq", 7),
        ("fixed_step", 0.0),
    ],
)
def test_bad_config_raises_config_error(field, value):
    with pytest.raises(ConfigError, match=field) as info:
        cfg(**{field: value})
    assert repr(value) in str(info.value)


def test_bad_task_and_bad_inputs():
    with pytest.raises(ConfigError, match="patch_size"):
        TaskSpec(kind="image", image_shape=(3, 8, 8), patch_size=3)
    with pytest.raises(ConfigError, match="image_shape"):
        TaskSpec(kind="image")
    with pytest.raises(ConfigError, match="lora_rank=2"):
        cfg(arch="transformer", lora_rank=2)
    with pytest.raises(ConfigError, match="attention"):
        cfg(attention=ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=4))
    model = build_model(cfg(arch="transformer"), TOKENS)
    with pytest.raises(ea.EnergyArchError, match=r"\(B, 9\)"):
        model(torch.zeros(2, 8, dtype=torch.long))
    assert copy.deepcopy(model) is not model
