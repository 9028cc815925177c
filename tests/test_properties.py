"""Property-based tests (Hypothesis) of the parser and the compiler (issue 8, "tests that search").

Profiles: ``ci`` (default, a few seconds per test) and ``dev`` (``HYPOTHESIS_PROFILE=dev``, many more examples)::

    HYPOTHESIS_PROFILE=dev python -m pytest tests/test_properties.py
"""

import ast
import math
import os
import time

import pytest
import sympy as sp
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import energyarch as ea  # noqa: E402
from energyarch.derive import SYMBOLIC_BUDGET  # noqa: E402
from energyarch.emit import docstring  # noqa: E402
from energyarch.errors import DeclarationError, ParseError  # noqa: E402
from energyarch.expr import FUNCTIONS, evaluate, parse  # noqa: E402

settings.register_profile(
    "ci", max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

PARSE_BUDGET_S = 1.0  # "well under a second" per parse
COMPILE_BUDGET_S = SYMBOLIC_BUDGET["seconds"] + 10.0  # derivation budget + emission, verification slack

# ------------------------------------------------------------------------------------------------------------
# random expression text over the grammar (and a little beyond it: huge numbers, deep powers, bad names)
# ------------------------------------------------------------------------------------------------------------

numbers = st.one_of(
    st.integers(0, 10**6).map(str),
    st.floats(1e-3, 1e3).map(lambda v: f"{v:.6g}"),
    st.sampled_from(["9**64", "1e99", "1e-120", "0", "(1/0)", "10**400"]),
)
leaves = st.one_of(st.just("x"), st.just("x"), numbers, st.sampled_from(["pi", "e", "beta", "y", "__import__"]))


def _extend(children):
    unary = st.builds(lambda a: f"-({a})", children)
    binary = st.builds(
        lambda a, op, b: f"({a}){op}({b})", children, st.sampled_from(["+", "-", "*", "/", "**"]), children
    )
    call = st.builds(lambda f, a: f"{f}({a})", st.sampled_from(sorted(FUNCTIONS) + ["open", "eval"]), children)
    return st.one_of(unary, binary, call)


expressions = st.recursive(leaves, _extend, max_leaves=12)


def _sympy_value(expr, x):
    value = sp.N(expr.subs(sp.Symbol("x", real=True), x), 30)
    if not value.is_real or not value.is_finite:
        return math.nan
    return float(value)


@given(text=expressions, points=st.lists(st.floats(-3, 3), min_size=1, max_size=3))
def test_random_text_is_rejected_or_parsed_to_an_expression_sympy_and_torch_agree_on(text, points):
    start = time.perf_counter()
    try:
        expr = parse(text, ("x",))
    except ParseError:
        assert time.perf_counter() - start < PARSE_BUDGET_S
        return
    assert time.perf_counter() - start < PARSE_BUDGET_S
    for v in points:
        ref = _sympy_value(expr, v)
        with torch.no_grad():
            got = evaluate(expr, {"x": torch.tensor([v], dtype=torch.float64)})
        got = float(got[0]) if isinstance(got, torch.Tensor) else float(got)
        if math.isfinite(ref) and abs(ref) < 1e12:
            assert got == pytest.approx(ref, rel=1e-9, abs=1e-12), (text, v)


# ------------------------------------------------------------------------------------------------------------
# random compositions of primitives: compile within budget, then verify or raise a clear declaration error
# ------------------------------------------------------------------------------------------------------------

OUTER = ["x", "log(x)", "log(x)/beta", "x**2/2", "sqrt(x)", "softplus(x)", "tanh(x)", "x**3/3 + x", "log(1 + x)"]
KERNELS = [
    "exp(beta*s)",
    "sigmoid(beta*s)",
    "(beta*s)**2/2",
    "exp(-r/8)",
    "1/(1 + r)",
    "tanh(beta*s)",
    "softplus(beta*s)",
    "exp(-sqrt(r + 1))",
    "relu(beta*s)**2",
    "gelu(beta*s) + 1",
]
PHIS = [None, "sigmoid(x)", "elu(x) + 1", "relu(x)", "silu(x)"]
INNER = [
    "relu(x)**2/2",
    "exp(x)",
    "sigmoid(x)",
    "softplus(x)",
    "gelu(x)",
    "silu(x)",
    "logcosh(x)",
    "elu(x) + 1",
    "x**2/2",
    "erf(x)",
]


@given(
    f=st.sampled_from(OUTER),
    K=st.sampled_from(KERNELS),
    phi=st.sampled_from(PHIS),
    g=st.sampled_from(OUTER),
    h=st.sampled_from(INNER),
    heads=st.sampled_from([1, 2]),
)
@settings(max_examples=20 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else 300)
def test_random_compositions_compile_in_budget_and_verify_or_refuse(f, K, phi, g, h, heads):
    start = time.perf_counter()
    try:
        if phi is not None and "r" in K.replace("relu", ""):
            phi = None  # a feature map applies to inner-product kernels only
        energy = ea.Attention(f=f, K=K, phi=phi, heads=heads) + ea.FeedForward(g=g, h=h, ratio=1)
        step = ea.compile(energy, d=8)
    except DeclarationError as err:
        assert "needs x > 0" in str(err) or "not finite" in str(err), err  # a domain error that says why
        return
    assert time.perf_counter() - start < COMPILE_BUDGET_S
    report = ea.verify(step, raise_on_fail=False)
    for t in report.terms:
        if not t.finite:
            assert "OVERFLOW" in str(report)
            continue
        assert t.grad_rel_diff <= 1e-8 and t.update_rel_diff <= 1e-8, (f, K, phi, g, h, str(report))
        assert t.energy_after <= t.energy_before + 1e-12 * abs(t.energy_before), str(report)


# ------------------------------------------------------------------------------------------------------------
# emitted docstrings: any text (quotes, backslashes, line breaks of every kind, surrogates) reads back as itself
# ------------------------------------------------------------------------------------------------------------


@given(
    text=st.text(st.characters(blacklist_categories=()))
    | st.lists(st.sampled_from(['"', "'", "\\", "\n", "\r", "\x00", "\u2028", "N{", "x", "u", " "])).map("".join),
    indent=st.sampled_from(["", "    ", "        "]),
)
def test_any_text_becomes_a_docstring_literal_that_reads_back_as_itself(text, indent):
    literal = docstring(text, indent)
    assert literal.startswith('"""') and literal.endswith('"""')  # never the repr() fallback
    assert all(ch.isprintable() or ch == "\n" for ch in literal)  # the only real line breaks are the text's
    lines = text.split("\n")
    expected = [lines[0], *(indent + ln if ln else "" for ln in lines[1:]), *([indent] if len(lines) > 1 else [])]
    assert ast.literal_eval(literal).split("\n") == expected
    tree = ast.parse(f"class C:\n    {docstring(text, '    ')}\n    x = 1\n")  # as a class docstring
    assert len(tree.body[0].body) == 2 and ast.get_docstring(tree.body[0], clean=False) == "\n".join(
        [lines[0], *("    " + ln if ln else "" for ln in lines[1:]), *(["    "] if len(lines) > 1 else [])]
    )
