"""Declaration, compile and call-time mistakes raise one exception family with teaching messages."""

import pytest
import torch

import energyarch as ea
from energyarch.errors import CompileError, DeclarationError, EnergyArchError, ParseError, ShapeError

BISOFTMAX = ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=4)


def test_all_errors_share_one_family():
    for cls in (CompileError, DeclarationError, ParseError, ShapeError):
        assert issubclass(cls, EnergyArchError) and issubclass(cls, ValueError)


def test_heads_that_do_not_divide_the_width():
    with pytest.raises(CompileError, match=r"heads=5 does not divide the width d=64.*choose heads in"):
        ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=5), d=64)


@pytest.mark.parametrize("radius", [0, -1.0])
def test_non_positive_radius(radius):
    with pytest.raises(DeclarationError, match="radius=.* must be a positive number"):
        ea.Attention(f="log(x)/beta", K="exp(beta*s)", radius=radius)


def test_energy_that_is_not_scalar():
    vector_kernel = ea.Kernel.from_torch(lambda x, y: x * y, "elementwise")
    with pytest.raises(DeclarationError, match="energy is not scalar.*0-dim tensor"):
        ea.compile(ea.Attention(f="log(x)", K=vector_kernel), d=8)
    with pytest.raises(DeclarationError, match="must act elementwise"):
        ea.compile(ea.FeedForward(g=lambda s: s.sum(), h="relu(x)"), d=8)


def test_asymmetric_kernel_on_the_symmetric_fast_path():
    skew = lambda x, y: torch.exp((x * y).sum() + x[0])  # noqa: E731
    with pytest.raises(DeclarationError, match="not symmetric.*symmetric=False"):
        ea.compile(ea.Attention(f="log(x)", K=ea.Kernel.from_torch(skew, "skew")), d=8)
    step = ea.compile(ea.Attention(f="log(x)", K=ea.Kernel.from_torch(skew, "skew", symmetric=False)), d=8)
    assert step.derivations["attn"].path == "autodiff"
    assert ea.verify(step).ok


@pytest.mark.parametrize("f, K", [("log(x)", "s"), ("sqrt(x)", "tanh(beta*s)"), ("1/x", "s**3")])
def test_f_whose_domain_the_kernel_can_leave(f, K):
    with pytest.raises(DeclarationError, match=r"needs x > 0.*reaches"):
        ea.compile(ea.Attention(f=f, K=K), d=8)


def test_g_whose_domain_h_can_leave():
    with pytest.raises(DeclarationError, match=r"g\(x\) = log\(x\) needs x > 0"):
        ea.compile(ea.FeedForward(g="log(x)", h="tanh(x)"), d=8)


def test_positive_kernels_are_accepted_with_log():
    for K in ("exp(beta*s)", "sigmoid(beta*s)", "1 + s**2"):
        ea.compile(ea.Attention(f="log(x)", K=K), d=8)


def test_unknown_symbols_name_the_symbol_and_the_allowed_ones():
    with pytest.raises(ParseError, match=r"unknown symbol 'q'.*Allowed"):
        ea.Attention(f="log(q)", K="exp(beta*s)")
    with pytest.raises(ParseError, match=r"unknown symbol 'x'"):
        ea.Attention(f="log(x)", K="exp(beta*x)")  # kernels use s or r
    with pytest.raises(DeclarationError, match="uses both s"):
        ea.Kernel.parse("exp(s - r)")


def test_shape_mismatches_at_call_time():
    step = ea.compile(BISOFTMAX, d=16)
    with pytest.raises(ShapeError, match=r"X has shape \(2, 5, 12\); expected \(\.\.\., N, d\) with d=16"):
        step(torch.randn(2, 5, 12), 0.1)
    with pytest.raises(ShapeError, match="does not broadcast"):
        step(torch.randn(2, 5, 16), torch.ones(3, 16))
    with pytest.raises(ShapeError, match="expected exactly the term names"):
        step(torch.randn(2, 5, 16), {"attention": 0.1})
    with pytest.raises(ShapeError, match="weight has shape"):
        step(torch.randn(2, 5, 16), 0.1, weights={"attn": torch.randn(16, 8)})


def test_bad_options():
    with pytest.raises(CompileError, match="mode="):
        ea.compile(BISOFTMAX, d=16, mode="rms")
    with pytest.raises(CompileError, match="path="):
        ea.compile(BISOFTMAX, d=16, path="fast")
    with pytest.raises(CompileError, match="no closed form"):
        ea.compile(ea.Attention(f=torch.log, K="exp(beta*s)"), d=16, path="symbolic")
    with pytest.raises(DeclarationError, match="heads=0"):
        ea.Attention(f="log(x)", K="exp(beta*s)", heads=0)
    with pytest.raises(DeclarationError, match="Python identifier"):
        ea.Attention(f="log(x)", K="exp(beta*s)", name="my term")
