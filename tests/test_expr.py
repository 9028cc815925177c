"""The restricted parser: builds sympy from whitelisted syntax, executes nothing."""

import os

import pytest
import sympy as sp
import torch

from energyarch.errors import ParseError
from energyarch.expr import evaluate, parse, sigmoid, tidy, to_torch

X = sp.Symbol("x", real=True)


def test_parse_builds_expected_sympy():
    assert parse("log(x)/beta", ("x", "beta")) == sp.log(X) / sp.Symbol("beta", real=True)
    assert parse("0.5*x**2", ("x",)) == X**2 / 2  # floats become exact rationals


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("__import__('os').system('touch {marker}')", "not an allowed function"),
        ("().__class__", "Attribute is not allowed"),
        ("x.__class__.__bases__", "Attribute is not allowed"),
        ("[c for c in ()]", "ListComp is not allowed"),
        ("lambda: 0", "Lambda is not allowed"),
        ("exp(x, base=2)", "keyword arguments"),
        ("open('{marker}', 'w')", "not an allowed function"),
        ("x[0]", "Subscript is not allowed"),
        ("'text'", "is not a number"),
        ("y + 1", "unknown symbol 'y'"),
        ("x**10000", "exponent"),
        ("x +", "not a valid expression"),
    ],
)
def test_malicious_or_invalid_text_is_rejected_without_side_effect(tmp_path, text, fragment):
    marker = tmp_path / "pwned"
    with pytest.raises(ParseError, match=fragment.replace("(", r"\(")):
        parse(text.format(marker=marker), ("x",))
    assert not marker.exists()
    assert not os.path.exists("pwned")


def test_sigmoid_derivative_is_stable_and_printed_as_torch_sigmoid():
    d = sigmoid(X).diff(X)
    code = to_torch(d, ["x"])
    assert "torch.sigmoid" in code and "exp" not in code
    value = evaluate(d, {"x": torch.tensor([-100.0, 0.0, 100.0])})
    assert torch.isfinite(value).all()
    assert value[1].item() == pytest.approx(0.25)


def test_relu_square_derivative_tidies_to_relu():
    e = parse("relu(x)**2/2", ("x",))
    assert tidy(e.diff(X)) == parse("relu(x)", ("x",))


def test_evaluate_matches_torch_reference():
    t = torch.linspace(-3, 3, 11, dtype=torch.float64)
    e = parse("softplus(x) + logcosh(x) - tanh(2*x) + sqrt(x**2 + 1)", ("x",))
    ref = torch.nn.functional.softplus(t) + torch.log(torch.cosh(t)) - torch.tanh(2 * t) + torch.sqrt(t**2 + 1)
    assert torch.allclose(evaluate(e, {"x": t}), ref, atol=1e-12)
