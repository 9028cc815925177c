"""The official Hyper-SET code's conventions as options (RMSNorm gains, machine epsilon, time embedding, GELU FF)
and the state_dict converter, checked against an independent float64 implementation of the official forward."""

import math

import pytest
import torch
import torch.nn.functional as F

import energyarch.expr
from energyarch.errors import CheckpointError, ConfigError
from energyarch.models import ModelConfig, TaskSpec, build_model
from energyarch.models.official import load_official, official_config, read_official
from energyarch.models.stepsizes import StepSizeNet
from test_models import wake_up  # random, non-zero step sizes (the output layer starts at zero)

D, H, V, N, C, TE = 16, 2, 10, 9, 9, 8
P, M = D // H, 4 * D
TOKENS = TaskSpec(vocab_size=V, seq_len=N, num_outputs=C)


def official_sudoku_state_dict(layers=1, seed=0, dtype=torch.float64):
    """Random tensors with the official Sudoku model's names and shapes (n_embd=D, n_head=H, multiplier 4)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.3: torch.randn(*shape, generator=g, dtype=dtype) * s  # noqa: E731
    sd = {
        "tok_emb.weight": r(V, D, s=1.0),
        "pos_emb": r(1, N, D),
        "ln_f.weight": 1 + r(D),
        "head.weight": r(C, D),
        "time_mlp.0.1.weight": r(D, TE),
        "time_mlp.0.1.bias": r(D),
        "time_mlp.0.3.weight": r(D, D),
        "time_mlp.0.3.bias": r(D),
        "time_mlp.1.1.weight": r(2 * D, D, s=0.05),
        "time_mlp.1.1.bias": 0.1 + r(2 * D, s=0.02),
    }
    for i in range(layers):
        sd.update(
            {
                f"blocks.{i}.attn.qkv.weight": r(D, D),
                f"blocks.{i}.attn.ln1.weight": 1 + r(P),
                f"blocks.{i}.attn.mask": torch.tril(torch.ones(1, 1, N, N, dtype=dtype)),
                f"blocks.{i}.mlp.weight": r(M, D),
                f"blocks.{i}.ln2.weight": 1 + r(M),
            }
        )
    return sd


def official_sudoku_forward(sd, idx, n_recur, layers, input_cond):
    """The official Sudoku model's forward (eval mode), written from its published algorithm: shared time MLP on
    [sin, cos] of t = 1..n_recur, bi-softmax attention on gained RMSNorm(W x), ReLU FF, RMSNorm + Linear head."""
    x = sd["tok_emb.weight"][idx] + sd["pos_emb"]
    half = TE // 2
    freqs = torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half, dtype=x.dtype))
    t = torch.arange(1, n_recur + 1, dtype=x.dtype)[:, None] * freqs
    emb = torch.cat([t.sin(), t.cos()], dim=-1)
    e = F.linear(
        F.gelu(F.linear(emb, sd["time_mlp.0.1.weight"], sd["time_mlp.0.1.bias"])),
        sd["time_mlp.0.3.weight"],
        sd["time_mlp.0.3.bias"],
    )  # (n_recur, D)
    x_inp = x
    B = x.shape[0]
    for i in range(layers):
        Wq, Wm = sd[f"blocks.{i}.attn.qkv.weight"], sd[f"blocks.{i}.mlp.weight"]
        for r in range(n_recur):
            cond = e[r] + (x_inp if input_cond else x)
            alpha, beta = F.linear(F.gelu(cond), sd["time_mlp.1.1.weight"], sd["time_mlp.1.1.bias"]).chunk(2, -1)
            w = F.linear(x, Wq).view(B, N, H, P).transpose(1, 2)
            w = F.rms_norm(w, (P,), sd[f"blocks.{i}.attn.ln1.weight"])  # eps: machine eps
            att = (w @ w.transpose(-1, -2)) * P**-0.5
            y = ((att.softmax(-1) + att.softmax(-2)) @ w).transpose(1, 2).reshape(B, N, D)
            x = x - alpha * F.linear(y, Wq.t())
            u = F.rms_norm(F.linear(x, Wm), (M,), sd[f"blocks.{i}.ln2.weight"])
            x = x + beta * F.linear(F.relu(u), Wm.t())
    return F.linear(F.rms_norm(x, (D,), sd["ln_f.weight"]), sd["head.weight"])


@pytest.mark.parametrize("layers, input_cond", [(1, True), (2, False)])
def test_converted_sudoku_model_equals_the_official_forward(layers, input_cond):
    sd = official_sudoku_state_dict(layers)
    cfg = official_config(sd, iters=3, condition="x0" if input_cond else "xt")
    assert (cfg.d, cfg.heads, cfg.layers, cfg.ff_ratio, cfg.time_freq) == (D, H, layers, 4.0, TE)
    model = build_model(cfg, TOKENS).double()
    report = load_official(model, sd, strict=True)
    assert report.complete and set(report.ignored) == {f"blocks.{i}.attn.mask" for i in range(layers)}
    assert report.mapped["blocks.0.attn.qkv.weight"] == "backbone.layers.0.step.terms.attn.weight"
    idx = torch.randint(0, V, (3, N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = model(idx), official_sudoku_forward(sd, idx, 3, layers, input_cond)
    assert ref.std() > 0.1  # the reference is not trivial
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_converter_names_what_it_cannot_map_and_refuses_in_strict_mode():
    sd = official_sudoku_state_dict()
    sd["blocks.0.attn.extra.weight"] = torch.zeros(3)
    model = build_model(ModelConfig(d=D, heads=H, iters=2, time_freq=TE), TOKENS).double()  # no gains
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_official(model, sd, strict=True)
    msg = str(err.value)
    assert "blocks.0.attn.extra.weight: no energyarch counterpart" in msg and "nothing was copied" in msg
    assert "blocks.0.attn.ln1.weight: learnable RMSNorm gain, but the model was built with norm_gain=False" in msg
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = load_official(model, sd)
    assert set(report.unmapped) == {"blocks.0.attn.extra.weight", "blocks.0.attn.ln1.weight", "blocks.0.ln2.weight"}
    assert any("norm_eps='machine'" in n for n in report.notes) and any("time_embedding" in n for n in report.notes)
    torch.testing.assert_close(model.backbone.layers[0].step.terms["ff"].weight, sd["blocks.0.mlp.weight"].t())


def official_image_state_dict(shared_gain=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype) * 0.3  # noqa: E731
    f, classes = 4 * 4 * 3, 5
    sd = {
        "cls_token": r(1, 1, D),
        "emb.0.weight": 1 + r(f),
        "emb.0.bias": r(f),
        "emb.1.weight": r(D, f),
        "emb.1.bias": r(D),
        "emb.2.weight": 1 + r(D),
        "emb.2.bias": r(D),
        "fc.0.weight": 1 + r(D),
        "fc.0.bias": r(D),
        "fc.1.weight": r(classes, D),
        "fc.1.bias": r(classes),
        "ln_inp.weight": 1 + r(D),
        "time_mlp.0.1.weight": r(D, TE),
        "time_mlp.0.1.bias": r(D),
        "time_mlp.0.2.weight": 1 + r(D),
        "time_mlp.0.4.weight": 1 + r(D),
        "time_mlp.0.5.weight": r(D, D),
        "time_mlp.0.5.bias": r(D),
        "time_mlp.0.6.weight": 1 + r(D),
        "time_mlp.1.1.weight": r(2 * D, D),
        "time_mlp.1.1.bias": r(2 * D),
        "enc.0.attn.qkv.weight": r(D, D),
        "enc.0.mlp.weight": r(D, D),
        "enc.0.ln2.weight": 1 + r(D),
    }
    gain = 1 + r(P)
    for j in (1, 2, 3):
        sd[f"enc.0.attn.ln1_{j}.weight"] = gain.clone() if shared_gain or j == 1 else 1 + r(P)
    return sd


def test_image_layers_map_and_the_rest_is_named():
    sd = official_image_state_dict()
    cfg = official_config(sd, iters=2, feedforward="relu")  # the GELU entry is tested on its own below
    assert (cfg.d, cfg.heads, cfg.ff_ratio, cfg.condition) == (D, H, 1.0, "xt")
    image = TaskSpec(kind="image", image_shape=(3, 8, 8), patch_size=4, num_outputs=5, output="cls")
    model = build_model(cfg, image).double()
    report = load_official(model, sd)
    layer = model.backbone.layers[0]
    assert torch.equal(layer.step.terms["attn"].weight, sd["enc.0.attn.qkv.weight"].t())
    assert torch.equal(layer.step.terms["ff"].weight, sd["enc.0.mlp.weight"].t())
    assert torch.equal(layer.gains["attn"], sd["enc.0.attn.ln1_1.weight"])
    assert torch.equal(layer.gains["ff"], sd["enc.0.ln2.weight"]) and torch.equal(model.embed.cls, sd["cls_token"])
    assert set(report.ignored) == {"enc.0.attn.ln1_2.weight", "enc.0.attn.ln1_3.weight"}
    assert set(report.unmapped) == {k for k in sd if k.split(".")[0] in ("emb", "fc", "time_mlp", "ln_inp")}
    assert "embed.proj.weight" in report.untouched and "readout.linear.weight" in report.untouched
    assert "strided convolution" in report.unmapped["emb.1.weight"]
    separate = load_official(build_model(cfg, image).double(), official_image_state_dict(shared_gain=False))
    assert "not the gradient of one energy" in separate.unmapped["enc.0.attn.ln1_2.weight"]


def test_uniform_gain_is_a_radius():
    """g = c·1 on the attention sphere and g = c'·1 on the feed-forward sphere equal radii c√p and c'√M."""
    c, c2 = 1.7, 0.6
    torch.manual_seed(0)
    gained = wake_up(build_model(ModelConfig(d=D, heads=H, iters=3, time_freq=TE, norm_gain=True), TOKENS)).double()
    with torch.no_grad():
        gained.backbone.layers[0].gains["attn"].fill_(c)
        gained.backbone.layers[0].gains["ff"].fill_(c2)
    radii = ModelConfig(
        d=D,
        heads=H,
        iters=3,
        time_freq=TE,
        attention={"f": "log(x)/beta", "K": "exp(beta*s)", "radius": c * math.sqrt(P)},
        feedforward={"g": "x", "h": "relu(x)**2/2", "radius": c2 * math.sqrt(M)},
    )
    plain = build_model(radii, TOKENS).double()
    plain.load_state_dict({k: v for k, v in gained.state_dict().items() if ".gains." not in k})
    idx = torch.randint(0, V, (2, N))
    with torch.no_grad():
        a, trace_a = gained(idx, record=True)
        b, trace_b = plain(idx, record=True)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    no_gain = build_model(ModelConfig(d=D, heads=H, iters=3, time_freq=TE), TOKENS).double()
    no_gain.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert (no_gain(idx) - a).abs().max() > 1e-3  # the gains do change the model
    torch.testing.assert_close(torch.as_tensor(trace_a.energies["attn"]), torch.as_tensor(trace_b.energies["attn"]))


def test_gains_off_by_default_and_unit_gains_change_nothing():
    torch.manual_seed(0)
    base = wake_up(build_model(ModelConfig(d=D, heads=H, iters=3, time_freq=TE), TOKENS))
    assert not any(".gains." in k for k in base.state_dict())
    unit = build_model(ModelConfig(d=D, heads=H, iters=3, time_freq=TE, norm_gain=True), TOKENS)
    unit.load_state_dict(base.state_dict(), strict=False)
    idx = torch.randint(0, V, (2, N))
    with torch.no_grad():
        torch.testing.assert_close(unit(idx), base(idx), rtol=0, atol=0)
    unit(idx).sum().backward()
    assert unit.backbone.layers[0].gains["attn"].grad.abs().sum() > 0  # the gains are trained


def test_machine_epsilon_follows_the_dtype():
    model = build_model(ModelConfig(d=D, heads=H, iters=2, time_freq=TE, norm_eps="machine"), TOKENS)
    terms = model.backbone.layers[0].step.terms
    assert {m.eps for m in terms.values()} == {torch.finfo(torch.float32).eps}
    model.double()(torch.randint(0, V, (1, N)))
    assert {m.eps for m in terms.values()} == {torch.finfo(torch.float64).eps}
    default = build_model(ModelConfig(d=D, heads=H, iters=2, time_freq=TE), TOKENS)
    assert {m.eps for m in default.backbone.layers[0].step.terms.values()} == {1e-6}
    Z = torch.randn(2, 1, N, M, dtype=torch.float64) * 1e-9  # tiny coordinates: eps decides
    torch.testing.assert_close(terms["ff"].normalize(Z), F.rms_norm(Z, (M,), eps=None), rtol=1e-12, atol=0)


def test_official_time_embedding():
    net = StepSizeNet(d=4, names=["attn", "ff"], freq=TE, embedding="official").double()
    half = TE // 2
    for t in range(3):
        tau = t + 1
        expected = [math.sin(tau * 10 ** (-4 * k / (half - 1))) for k in range(half)] + [
            math.cos(tau * 10 ** (-4 * k / (half - 1))) for k in range(half)
        ]
        got = net._sinusoid(t, TE, dtype=torch.float64)
        torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=1e-14)
    assert not torch.allclose(
        StepSizeNet(4, ["a"], TE)._sinusoid(0, TE, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64)
    )


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("norm_gain", "yes", "true or false"),
        ("norm_eps", -1.0, "machine"),
        ("norm_eps", "tiny", "machine"),
        ("time_embedding", "sinusoid", "official"),
        ("time_freq", 2, "time_freq >= 4"),
    ],
)
def test_official_option_errors(field, value, needle):
    kw = {field: value}
    if field == "time_freq":
        kw["time_embedding"] = "official"
    with pytest.raises(ConfigError, match=needle):
        ModelConfig(d=D, heads=H, **kw)
    with pytest.raises(ConfigError, match="mode='paper'"):
        ModelConfig(d=D, heads=H, norm_gain=True, mode="exact")
    with pytest.raises(ConfigError, match="distance kernel"):
        ModelConfig(d=D, heads=H, norm_gain=True, attention="rbf-softmax")


def test_read_official_unwraps_and_loads_weights_only(tmp_path):
    sd = official_sudoku_state_dict(dtype=torch.float32)
    torch.save(
        {"epoch": 3, "model_state_dict": {f"_orig_mod.module.{k}": v for k, v in sd.items()}}, tmp_path / "ckpt.pth"
    )
    back = read_official(tmp_path / "ckpt.pth")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        read_official(tmp_path / "bad.pth")


@pytest.mark.skipif("erf" not in energyarch.expr.FUNCTIONS, reason="the expression grammar has no erf yet")
def test_gelu_ff_entry_is_the_official_image_feed_forward():
    """x + β Wᵀ GELU(g ⊙ RMSNorm(W x)) (official image layer) == one energyarch feed-forward step with gains."""
    cfg = ModelConfig(
        d=D, heads=H, iters=1, time_freq=TE, feedforward="gelu-ff", ff_ratio=1.0, norm_gain=True, norm_eps="machine"
    )
    layer = build_model(cfg, TOKENS).double().backbone.layers[0]
    with torch.no_grad():
        layer.gains["ff"].uniform_(0.5, 1.5)
    X = torch.randn(2, N, D, dtype=torch.float64)
    beta = torch.rand(2, N, D, dtype=torch.float64)
    Wm = layer.step.terms["ff"].weight.t()  # official mlp.weight, (M, D)
    official = X + beta * F.linear(F.gelu(F.rms_norm(F.linear(X, Wm), (D,), layer.gains["ff"])), Wm.t())
    ours = X + beta * layer._direction("ff", X, None)
    torch.testing.assert_close(ours, official, rtol=1e-12, atol=1e-12)
