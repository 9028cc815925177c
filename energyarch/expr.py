"""Safe expressions: a restricted parser to sympy, stable named functions, and a torch printer.

Strings written by users or stored in ``catalog/`` are never handed to ``eval``, ``exec``,
``sympy.sympify`` or ``parse_expr`` (all of which can run arbitrary code). :func:`parse` walks the
tree from ``ast.parse(mode="eval")``, accepts only numbers, whitelisted names, whitelisted function
calls and arithmetic, and builds sympy objects directly.

>>> parse("log(x)/beta", symbols=("x", "beta"))
log(x)/beta
"""

from __future__ import annotations

import ast
import math
from typing import Iterable, Mapping

import sympy as sp
from sympy.printing.pytorch import TorchPrinter

from .errors import ParseError

# --------------------------------------------------------------------------------------------
# Named, numerically stable functions. Keeping them as functions (rather than expanding
# sigmoid into exp) lets derivatives stay stable: d/dx sigmoid = sigmoid (1 - sigmoid).
# --------------------------------------------------------------------------------------------


def _pow_latex(printer, exp, text: str) -> str:
    """LaTeX of a named function, raised to ``exp`` when sympy prints a power of it."""
    return text if exp is None else r"\left(%s\right)^{%s}" % (text, exp)


class sigmoid(sp.Function):  # noqa: N801 - sympy naming convention
    """Logistic function σ(x) = 1 / (1 + e^{-x}), with σ' = σ(1 - σ)."""

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\sigma\left(%s\right)" % printer._print(self.args[0]))

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))


class relu(sp.Function):  # noqa: N801
    """ReLU(x) = max(x, 0), with ReLU' = step(x)."""

    def fdiff(self, argindex=1):
        return step(self.args[0])

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{ReLU}\left(%s\right)" % printer._print(self.args[0]))


class step(sp.Function):  # noqa: N801
    """Heaviside step, 1 for x > 0 and 0 otherwise (derivative taken as 0 almost everywhere)."""

    def fdiff(self, argindex=1):
        return sp.Integer(0)

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\mathbb{1}\left[%s > 0\right]" % printer._print(self.args[0]))


class softplus(sp.Function):  # noqa: N801
    """softplus(x) = log(1 + e^x), with softplus' = σ(x)."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{softplus}\left(%s\right)" % printer._print(self.args[0]))


class logcosh(sp.Function):  # noqa: N801
    """log(cosh(x)) evaluated stably, with derivative tanh(x)."""

    def fdiff(self, argindex=1):
        return sp.tanh(self.args[0])

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\log\cosh\left(%s\right)" % printer._print(self.args[0]))


#: Functions a user may call in an expression string, by name.
FUNCTIONS: Mapping[str, object] = {
    "exp": sp.exp,
    "log": sp.log,
    "sqrt": sp.sqrt,
    "tanh": sp.tanh,
    "cosh": sp.cosh,
    "sinh": sp.sinh,
    "sin": sp.sin,
    "cos": sp.cos,
    "atan": sp.atan,
    "abs": sp.Abs,
    "sigmoid": sigmoid,
    "relu": relu,
    "step": step,
    "softplus": softplus,
    "logcosh": logcosh,
}

CONSTANTS: Mapping[str, sp.Expr] = {"pi": sp.pi, "e": sp.E}

_MAX_LEN = 400
_MAX_DEPTH = 40
_MAX_EXPONENT = 64

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def parse(text: str, symbols: Iterable[str], where: str = "expression") -> sp.Expr:
    """Parse ``text`` into a sympy expression using only ``symbols`` and :data:`FUNCTIONS`.

    Raises :class:`~energyarch.errors.ParseError` (with the offending text and the allowed names)
    for anything else: attribute access, subscripts, lambdas, comprehensions, keyword arguments,
    unknown names, strings, huge exponents. Nothing in ``text`` is ever executed.

    >>> parse("relu(x)**2/2", symbols=("x",))
    relu(x)**2/2
    """
    if not isinstance(text, str):
        raise ParseError(f"{where}: expected a string, got {type(text).__name__} {text!r}")
    allowed = {name: sp.Symbol(name, real=True) for name in symbols}
    if len(text) > _MAX_LEN:
        raise ParseError(f"{where}: expression is {len(text)} characters long; the limit is {_MAX_LEN}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ParseError(f"{where}: {text!r} is not a valid expression ({err.msg})") from None

    def fail(node: ast.AST, why: str) -> None:
        raise ParseError(
            f"{where}: {why} in {text!r}. Allowed: numbers, + - * / **, the names "
            f"{sorted(allowed) + sorted(CONSTANTS)} and the functions {sorted(FUNCTIONS)}."
        )

    def build(node: ast.AST, depth: int) -> sp.Expr:
        if depth > _MAX_DEPTH:
            fail(node, "expression nests too deeply")
        if isinstance(node, ast.Expression):
            return build(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                fail(node, f"constant {node.value!r} is not a number")
            if isinstance(node.value, float):
                if not math.isfinite(node.value):
                    fail(node, f"constant {node.value!r} is not finite")
                return sp.Rational(repr(node.value))
            return sp.Integer(node.value)
        if isinstance(node, ast.Name):
            if node.id in allowed:
                return allowed[node.id]
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            if node.id in FUNCTIONS:
                fail(node, f"function {node.id!r} used without a call")
            fail(node, f"unknown symbol {node.id!r}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = build(node.operand, depth + 1)
            return -operand if isinstance(node.op, ast.USub) else operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            left, right = build(node.left, depth + 1), build(node.right, depth + 1)
            if isinstance(node.op, ast.Pow) and right.is_number and abs(float(right)) > _MAX_EXPONENT:
                fail(node, f"exponent {right} is larger than {_MAX_EXPONENT}")
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)[:40]
                fail(node, f"call of {name!r}, which is not an allowed function")
            if node.keywords:
                fail(node, "keyword arguments are not allowed")
            if len(node.args) != 1:
                fail(node, f"{node.func.id}() takes exactly one argument, got {len(node.args)}")
            return FUNCTIONS[node.func.id](build(node.args[0], depth + 1))
        fail(node, f"{type(node).__name__} is not allowed")
        raise AssertionError("unreachable")

    return build(tree, 0)


# --------------------------------------------------------------------------------------------
# Printing to torch code
# --------------------------------------------------------------------------------------------


class EnergyTorchPrinter(TorchPrinter):
    """Print sympy expressions as torch code.

    ``tensor_symbols`` are names bound to tensors in the emitted code; every sub-expression that does
    not depend on them is a Python float and is printed with :mod:`math` instead of :mod:`torch`.
    Powers are printed with ``**`` so that they work on both.
    """

    _math_names = {
        "exp": "math.exp", "log": "math.log", "sqrt": "math.sqrt", "tanh": "math.tanh",
        "cosh": "math.cosh", "sinh": "math.sinh", "sin": "math.sin", "cos": "math.cos",
        "atan": "math.atan", "Abs": "abs",
    }

    def __init__(self, tensor_symbols: Iterable[str] = ()):
        super().__init__()
        self.tensor_symbols = set(tensor_symbols)

    def _is_tensor(self, expr: sp.Expr) -> bool:
        return any(s.name in self.tensor_symbols for s in expr.free_symbols)

    def _print_Pow(self, expr, rational=False):
        base, exponent = expr.as_base_exp()
        if exponent == sp.Rational(1, 2):
            module = "torch" if self._is_tensor(base) else "math"
            return f"{module}.sqrt({self._print(base)})"
        if exponent == -1:
            return f"1/{self.parenthesize(base, 50)}"
        return f"{self.parenthesize(base, 60)}**{self.parenthesize(exponent, 60)}"

    def _print_Rational(self, expr):
        return f"({expr.p}/{expr.q})"

    def _print_Half(self, expr):
        return "0.5"

    def _print_Function(self, expr):
        name = type(expr).__name__
        if not self._is_tensor(expr):
            if name in self._math_names:
                return f"{self._math_names[name]}({self._print(expr.args[0])})"
            return repr(float(expr))
        arg = self._print(expr.args[0])
        special = {
            "sigmoid": f"torch.sigmoid({arg})",
            "relu": f"torch.relu({arg})",
            "step": f"_step({arg})",
            "softplus": f"torch.nn.functional.softplus({arg})",
            "logcosh": f"_logcosh({arg})",
        }
        if name in special:
            return special[name]
        return super()._print_Function(expr)

    _print_sigmoid = _print_Function
    _print_relu = _print_Function
    _print_step = _print_Function
    _print_softplus = _print_Function
    _print_logcosh = _print_Function

    def _print_exp(self, expr):
        return self._print_Function(expr)

    def _print_log(self, expr):
        return self._print_Function(expr)

    def _print_Abs(self, expr):
        if not self._is_tensor(expr):
            return f"abs({self._print(expr.args[0])})"
        return f"torch.abs({self._print(expr.args[0])})"


def to_torch(expr: sp.Expr, tensor_symbols: Iterable[str]) -> str:
    """Torch source for ``expr``; ``tensor_symbols`` name the variables that hold tensors.

    >>> to_torch(parse("sigmoid(beta*s)", ("s", "beta")), ["s"])
    'torch.sigmoid(beta*s)'
    """
    return EnergyTorchPrinter(tensor_symbols).doprint(expr)


def tidy(expr: sp.Expr) -> sp.Expr:
    """Simplify derivatives of piecewise primitives: ``relu(a)·step(a) = relu(a)``, ``step(a)^k = step(a)``."""
    expr = expr.replace(lambda e: isinstance(e, sp.Pow) and isinstance(e.base, step) and e.exp.is_positive,
                        lambda e: e.base)

    def fold(e: sp.Expr) -> sp.Expr:
        if not e.is_Mul:
            return e
        steps = [a for a in e.args if isinstance(a, step)]
        relus = {a.args[0] for a in e.args if isinstance(a, relu)}
        relus |= {a.base.args[0] for a in e.args if a.is_Pow and isinstance(a.base, relu) and a.exp.is_positive}
        keep = [a for a in e.args if not (isinstance(a, step) and a.args[0] in relus)]
        return sp.Mul(*keep) if len(keep) != len(e.args) or steps else e

    return expr.replace(lambda e: e.is_Mul, fold)


# --------------------------------------------------------------------------------------------
# Direct evaluation on tensors (no code generation): used by the generic autodiff path.
# --------------------------------------------------------------------------------------------

def _logcosh_t(x):
    import torch

    # log(cosh(x)) = |x| + log1p(exp(-2|x|)) - log 2, stable for large |x|
    ax = x.abs()
    return ax + torch.log1p(torch.exp(-2 * ax)) - math.log(2.0)


def _torch_functions():
    import torch
    import torch.nn.functional as F

    return {
        sp.exp: torch.exp, sp.log: torch.log, sp.tanh: torch.tanh, sp.cosh: torch.cosh,
        sp.sinh: torch.sinh, sp.sin: torch.sin, sp.cos: torch.cos, sp.atan: torch.atan,
        sp.Abs: torch.abs, sigmoid: torch.sigmoid, relu: torch.relu,
        step: lambda t: (t > 0).to(t.dtype), softplus: F.softplus, logcosh: _logcosh_t,
    }


def evaluate(expr: sp.Expr, env: Mapping[str, object]):
    """Evaluate a sympy expression on tensors by walking its tree (nothing is executed from text).

    ``env`` maps symbol names to tensors or floats.

    >>> import torch
    >>> evaluate(parse("relu(x)**2/2", ("x",)), {"x": torch.tensor([-1.0, 2.0])})
    tensor([0., 2.])
    """
    import torch

    funcs = _torch_functions()

    def ev(e):
        if e.is_Symbol:
            if e.name not in env:
                raise ParseError(f"symbol {e.name!r} has no value; known: {sorted(env)}")
            return env[e.name]
        if e.is_Number or e in (sp.pi, sp.E):
            return float(e)
        if e.is_Add:
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out + ev(a)
            return out
        if e.is_Mul:
            out = ev(e.args[0])
            for a in e.args[1:]:
                out = out * ev(a)
            return out
        if e.is_Pow:
            base, exponent = ev(e.base), ev(e.exp)
            if exponent == 0.5 and isinstance(base, torch.Tensor):
                return torch.sqrt(base)
            if isinstance(base, torch.Tensor) or isinstance(exponent, torch.Tensor):
                return base**exponent
            return float(base) ** float(exponent)
        fn = funcs.get(type(e))
        if fn is not None:
            arg = ev(e.args[0])
            if not isinstance(arg, torch.Tensor):
                return float(e.func(sp.Float(arg)).evalf())
            return fn(arg)
        raise ParseError(f"cannot evaluate {type(e).__name__} in {e}")

    return ev(expr)
