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
import re
from typing import Any, Callable, Iterable, Mapping, NoReturn, Optional

import sympy as sp
from sympy.printing.pytorch import TorchPrinter

from .errors import ParseError

# --------------------------------------------------------------------------------------------
# Named, numerically stable functions. Keeping them as functions (rather than expanding
# sigmoid into exp) lets derivatives stay stable: d/dx sigmoid = sigmoid (1 - sigmoid).
# --------------------------------------------------------------------------------------------


class _Named(sp.Function):
    """A named stable function; ``_exact`` gives its elementary form, used only to evaluate it at numbers."""

    @staticmethod
    def _exact(x):  # pragma: no cover - overridden
        raise NotImplementedError

    def _eval_evalf(self, prec):
        if self.args[0].is_number:
            return self._exact(self.args[0])._eval_evalf(prec)
        return None


def _pow_latex(printer, exp, text: str) -> str:
    """LaTeX of a named function, raised to ``exp`` when sympy prints a power of it."""
    return text if exp is None else r"\left(%s\right)^{%s}" % (text, exp)


class sigmoid(_Named):  # noqa: N801 - sympy naming convention
    """Logistic function σ(x) = 1 / (1 + e^{-x}), with σ' = σ(1 - σ)."""

    @staticmethod
    def _exact(x):
        return 1 / (1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        s = sigmoid(self.args[0])
        return s * (1 - s)

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\sigma\left(%s\right)" % printer._print(self.args[0]))

    def _eval_rewrite_as_exp(self, x, **kwargs):
        return 1 / (1 + sp.exp(-x))


class relu(_Named):  # noqa: N801
    """ReLU(x) = max(x, 0), with ReLU' = step(x)."""

    @staticmethod
    def _exact(x):
        return sp.Max(x, 0)

    def fdiff(self, argindex=1):
        return step(self.args[0])

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{ReLU}\left(%s\right)" % printer._print(self.args[0]))


class step(_Named):  # noqa: N801
    """Heaviside step, 1 for x > 0 and 0 otherwise (derivative taken as 0 almost everywhere)."""

    @staticmethod
    def _exact(x):
        return sp.Piecewise((1, x > 0), (0, True))

    def fdiff(self, argindex=1):
        return sp.Integer(0)

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\mathbb{1}\left[%s > 0\right]" % printer._print(self.args[0]))


class softplus(_Named):  # noqa: N801
    """softplus(x) = log(1 + e^x), with softplus' = σ(x)."""

    @staticmethod
    def _exact(x):
        return sp.log(1 + sp.exp(x))

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{softplus}\left(%s\right)" % printer._print(self.args[0]))


class logcosh(_Named):  # noqa: N801
    """log(cosh(x)) evaluated stably, with derivative tanh(x)."""

    @staticmethod
    def _exact(x):
        return sp.log(sp.cosh(x))

    def fdiff(self, argindex=1):
        return sp.tanh(self.args[0])

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\log\cosh\left(%s\right)" % printer._print(self.args[0]))


class silu(_Named):  # noqa: N801
    """SiLU / swish, x σ(x), with silu' = σ(x) (1 + x (1 − σ(x)))."""

    @staticmethod
    def _exact(x):
        return x / (1 + sp.exp(-x))

    def fdiff(self, argindex=1):
        x = self.args[0]
        s = sigmoid(x)
        return s * (1 + x * (1 - s))

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{SiLU}\left(%s\right)" % printer._print(self.args[0]))


class gelu(_Named):  # noqa: N801
    """GELU (exact, erf form), x Φ(x) with Φ the standard normal CDF; gelu' = Φ(x) + x φ(x)."""

    @staticmethod
    def _exact(x):
        return x * (1 + sp.erf(x / sp.sqrt(2))) / 2

    def fdiff(self, argindex=1):
        x = self.args[0]
        return (1 + sp.erf(x / sp.sqrt(2))) / 2 + x * sp.exp(-(x**2) / 2) / sp.sqrt(2 * sp.pi)

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{GELU}\left(%s\right)" % printer._print(self.args[0]))


class elu(_Named):  # noqa: N801
    """ELU with α = 1: x for x > 0, eˣ − 1 otherwise; elu' = elu(x) − relu(x) + 1 (1 for x > 0, eˣ otherwise)."""

    @staticmethod
    def _exact(x):
        return sp.Piecewise((x, x > 0), (sp.exp(x) - 1, True))

    def fdiff(self, argindex=1):
        x = self.args[0]
        return elu(x) - relu(x) + 1

    def _latex(self, printer, exp=None):
        return _pow_latex(printer, exp, r"\operatorname{ELU}\left(%s\right)" % printer._print(self.args[0]))


#: Python (math) values of the named functions, used to fold constant arguments at parse time.
_NAMED_MATH: dict[str, Callable[[float], float]] = {
    "sigmoid": lambda v: 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v)),
    "relu": lambda v: max(v, 0.0),
    "step": lambda v: 1.0 if v > 0 else 0.0,
    "softplus": lambda v: max(v, 0.0) + math.log1p(math.exp(-abs(v))),
    "logcosh": lambda v: abs(v) + math.log1p(math.exp(-2 * abs(v))) - math.log(2.0),
    "silu": lambda v: v * _NAMED_MATH["sigmoid"](v),
    "gelu": lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))),
    "elu": lambda v: v if v > 0 else math.expm1(v),
}

#: Python (math) values of sympy's own functions, to check constant arguments at parse time (finite, bounded).
_SYMPY_MATH: dict[str, Callable[[float], float]] = {
    "exp": math.exp,
    "log": math.log,
    "sqrt": math.sqrt,
    "tanh": math.tanh,
    "cosh": math.cosh,
    "sinh": math.sinh,
    "sin": math.sin,
    "cos": math.cos,
    "atan": math.atan,
    "abs": abs,
    "erf": math.erf,
}


#: Functions a user may call in an expression string, by name.
FUNCTIONS: Mapping[str, Callable[[Any], Any]] = {
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
    "silu": silu,
    "gelu": gelu,
    "elu": elu,
    "erf": sp.erf,
}

#: One line per allowed function: what it computes (shown in errors and in the docs).
FUNCTION_DOCS: Mapping[str, str] = {
    "exp": "eˣ",
    "log": "natural logarithm (x > 0)",
    "sqrt": "square root (x ≥ 0)",
    "tanh": "hyperbolic tangent",
    "cosh": "hyperbolic cosine",
    "sinh": "hyperbolic sine",
    "sin": "sine",
    "cos": "cosine",
    "atan": "arc tangent",
    "abs": "absolute value",
    "sigmoid": "logistic σ(x) = 1/(1 + e⁻ˣ), σ' = σ(1 − σ) (stable)",
    "relu": "max(x, 0)",
    "step": "Heaviside step (1 for x > 0), the a.e. derivative of relu",
    "softplus": "log(1 + eˣ) (stable), softplus' = σ",
    "logcosh": "log cosh x (stable), derivative tanh",
    "silu": "x σ(x) (SiLU / swish)",
    "gelu": "x Φ(x), Φ the normal CDF (exact GELU, erf form)",
    "elu": "x for x > 0, eˣ − 1 otherwise (ELU, α = 1); elu(x) + 1 is the linear-attention feature map",
    "erf": "error function",
}

CONSTANTS: Mapping[str, sp.Expr] = {"pi": sp.pi, "e": sp.E}

#: Limits that bound the cost of every parse (and of what sympy does with the result).
LIMITS = {
    "characters": 400,  # length of the expression text
    "depth": 40,  # nesting depth of the syntax tree
    "nodes": 200,  # syntax-tree nodes (numbers, names, operators, calls)
    "exponent": 64,  # |numeric exponent| of any power
    "constant_magnitude": 1e100,  # |value| of any constant sub-expression (and 1/value when nonzero)
    "constant_digits": 120,  # digits of the numerator / denominator of an exact rational constant
}
_MAX_LEN = LIMITS["characters"]
_MAX_DEPTH = LIMITS["depth"]
_MAX_EXPONENT = LIMITS["exponent"]

_BINOPS = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.Pow: lambda a, b: a**b,
}


def _short(text: str, limit: int = 80) -> str:
    """``repr`` of (the start of) a user string, safe to show in a message."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse(text: str, symbols: Iterable[str], where: str = "expression") -> sp.Expr:
    """Parse ``text`` into a sympy expression using only ``symbols`` and :data:`FUNCTIONS`.

    Raises :class:`~energyarch.errors.ParseError` (with the offending text and the allowed names)
    for anything else: attribute access, subscripts, lambdas, comprehensions, keyword arguments,
    unknown names, strings, and anything over the :data:`LIMITS` (length, depth, tree size, exponents,
    size of constants). Nothing in ``text`` is ever executed, and the cost is bounded: constant
    sub-expressions are checked with cheap float arithmetic *before* sympy evaluates them exactly.

    >>> parse("relu(x)**2/2", symbols=("x",))
    relu(x)**2/2
    """
    if not isinstance(text, str):
        raise ParseError(f"{where}: expected a string, got {type(text).__name__} {_short(repr(text))}")
    allowed = {name: sp.Symbol(name, real=True) for name in symbols}
    if len(text) > _MAX_LEN:
        raise ParseError(f"{where}: expression is {len(text)} characters long; the limit is {_MAX_LEN}")
    if not text.isascii():
        bad = next(ch for ch in text if not ch.isascii())
        raise ParseError(
            f"{where}: {_short(text)} contains the non-ASCII character {bad!r} (U+{ord(bad):04X}); "
            f"expressions are ASCII (Python would fold look-alikes such as 'ｘ' into 'x')"
        )
    if "\x00" in text:
        raise ParseError(f"{where}: {_short(text)} contains a NUL character; write the expression on one line")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ParseError(f"{where}: {_short(text)} is not a valid expression ({err.msg})") from None
    except (ValueError, MemoryError, RecursionError) as err:
        raise ParseError(f"{where}: {_short(text)} cannot be parsed ({type(err).__name__})") from None
    nodes = sum(1 for _ in ast.walk(tree))
    if nodes > LIMITS["nodes"]:
        raise ParseError(
            f"{where}: {_short(text)} has {nodes} syntax nodes; the limit is {LIMITS['nodes']}. "
            f"Split it into named parameters or simplify it"
        )

    def fail(node: ast.AST, why: str) -> NoReturn:
        raise ParseError(
            f"{where}: {why} in {_short(text)}. Allowed: numbers, + - * / **, the names "
            f"{sorted(allowed) + sorted(CONSTANTS)} and the functions {sorted(FUNCTIONS)}."
        )

    def limit(node: ast.AST, why: str) -> NoReturn:
        raise ParseError(f"{where}: {why} in {_short(text)}; limits: {LIMITS}")

    def checked(node: ast.AST, expr: sp.Expr, value: Optional[float]) -> tuple[sp.Expr, Optional[float]]:
        """Bound a constant's size (float value and exact digits) and a power's exponent."""
        if value is not None:
            if not math.isfinite(value) or abs(value) > LIMITS["constant_magnitude"]:
                limit(node, f"a constant evaluates to {value!r}, beyond ±{LIMITS['constant_magnitude']:g}")
            if value != 0 and abs(value) < 1 / LIMITS["constant_magnitude"]:
                limit(node, f"a constant evaluates to {value!r}, below {1 / LIMITS['constant_magnitude']:g} in size")
            if expr.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
                limit(node, "a constant is infinite or undefined (division by zero?)")
            if isinstance(expr, sp.Rational):
                digits = max(len(str(abs(expr.p))), len(str(expr.q)))
                if digits > LIMITS["constant_digits"]:
                    limit(node, f"an exact constant has {digits} digits")
        else:  # sympy folds constants into symbolic products and powers: bound what it made
            for power in expr.atoms(sp.Pow):
                if power.exp.is_number and abs(float(power.exp)) > _MAX_EXPONENT:
                    limit(node, f"a power has exponent {power.exp}, larger than {_MAX_EXPONENT}")
            for number in expr.atoms(sp.Rational):
                digits = max(len(str(abs(number.p))), len(str(number.q)))
                if digits > LIMITS["constant_digits"] or (
                    number != 0
                    and not (1 / LIMITS["constant_magnitude"] <= abs(float(number)) <= LIMITS["constant_magnitude"])
                ):
                    limit(node, f"a constant reaches {float(number):g}, beyond the bounds")
        return expr, value

    def build(node: ast.AST, depth: int) -> tuple[sp.Expr, Optional[float]]:
        """(sympy expression, its float value when constant)."""
        if depth > _MAX_DEPTH:
            fail(node, "expression nests too deeply")
        if isinstance(node, ast.Expression):
            return build(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                fail(node, f"constant {_short(repr(node.value), 40)} is not a number")
            if isinstance(node.value, int) and node.value.bit_length() > 4 * LIMITS["constant_digits"]:
                limit(node, "an integer literal is too long")
            value: Optional[float] = float(node.value)
            if isinstance(node.value, float):
                if not math.isfinite(node.value):
                    fail(node, f"constant {node.value!r} is not finite")
                return checked(node, sp.Rational(repr(node.value)), value)
            return checked(node, sp.Integer(node.value), value)
        if isinstance(node, ast.Name):
            if node.id in allowed:
                return allowed[node.id], None
            if node.id in CONSTANTS:
                return CONSTANTS[node.id], float(CONSTANTS[node.id])
            if node.id in FUNCTIONS:
                fail(node, f"function {node.id!r} used without a call")
            fail(node, f"unknown symbol {_short(node.id, 40)}")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand, value = build(node.operand, depth + 1)
            if isinstance(node.op, ast.USub):
                return -operand, (None if value is None else -value)
            return operand, value
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            (left, lv), (right, rv) = build(node.left, depth + 1), build(node.right, depth + 1)
            value = None
            if isinstance(node.op, ast.Pow) and rv is not None and abs(rv) > _MAX_EXPONENT:
                limit(node, f"exponent {rv:g} is larger than {_MAX_EXPONENT}")
            if lv is not None and rv is not None:
                value = _float_binop(node.op, lv, rv, lambda why: limit(node, why))
            elif isinstance(node.op, ast.Div) and rv == 0:
                limit(node, "division by zero")
            return checked(node, _BINOPS[type(node.op)](left, right), value)
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                name = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
                fail(node, f"call of {_short(name, 40)}, which is not an allowed function")
            if node.keywords:
                fail(node, "keyword arguments are not allowed")
            if len(node.args) != 1:
                fail(node, f"{node.func.id}() takes exactly one argument, got {len(node.args)}")
            name = node.func.id
            arg, av = build(node.args[0], depth + 1)
            if av is None:
                return FUNCTIONS[name](arg), None
            try:  # a constant argument: evaluate in floats first (bounded), then exactly where sympy can
                value = (_NAMED_MATH.get(name) or _SYMPY_MATH[name])(av)
            except (OverflowError, ValueError, ZeroDivisionError) as err:
                limit(node, f"{name}({av:g}) is not a finite real number ({err})")
            if name in _NAMED_MATH:  # our named functions: fold to the float value
                return checked(node, sp.Rational(repr(float(value))), float(value))
            return checked(node, FUNCTIONS[name](arg), float(value))
        fail(node, f"{type(node).__name__} is not allowed")
        raise AssertionError("unreachable")

    expr, _ = build(tree, 0)
    return expr


def _float_binop(op: ast.operator, a: float, b: float, limit) -> float:
    """The float value of a constant binary operation, without ever forming a huge number."""
    try:
        if isinstance(op, ast.Add):
            return a + b
        if isinstance(op, ast.Sub):
            return a - b
        if isinstance(op, ast.Mult):
            return a * b
        if isinstance(op, ast.Div):
            if b == 0:
                limit("division by zero")
            return a / b
        # power: bound log10 |a**b| before computing it
        if a == 0:
            if b < 0:
                limit("zero raised to a negative power")
            return 0.0 if b > 0 else 1.0
        if a < 0 and b != int(b):
            limit(f"({a:g})**({b:g}) is not real")
        if abs(b * math.log10(abs(a))) > math.log10(LIMITS["constant_magnitude"]):
            limit(f"({a:g})**({b:g}) is larger than {LIMITS['constant_magnitude']:g}")
        return a**b
    except OverflowError:
        limit("a constant overflows")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Printing to torch code
# --------------------------------------------------------------------------------------------


#: runtime helpers the printed code calls (``_step``, ``_logcosh``): every emitted module may import them
RUNTIME_NAMES = {"energyarch.runtime": ("_logcosh", "_step")}


class EnergyTorchPrinter(TorchPrinter):
    """Print sympy expressions as torch code.

    ``tensor_symbols`` are names bound to tensors in the emitted code; every sub-expression that does
    not depend on them is a Python float and is printed with :mod:`math` instead of :mod:`torch`.
    Powers are printed with ``**`` so that they work on both.
    """

    _math_names = {
        "exp": "math.exp",
        "log": "math.log",
        "sqrt": "math.sqrt",
        "tanh": "math.tanh",
        "cosh": "math.cosh",
        "sinh": "math.sinh",
        "sin": "math.sin",
        "cos": "math.cos",
        "atan": "math.atan",
        "Abs": "abs",
        "erf": "math.erf",
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

    def _print_Pi(self, expr):
        return "math.pi"

    def _print_Exp1(self, expr):
        return "math.e"

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
            "silu": f"torch.nn.functional.silu({arg})",
            "gelu": f"torch.nn.functional.gelu({arg})",
            "elu": f"torch.nn.functional.elu({arg})",
        }
        if name in special:
            return special[name]
        return super()._print_Function(expr)

    _print_sigmoid = _print_Function
    _print_relu = _print_Function
    _print_step = _print_Function
    _print_softplus = _print_Function
    _print_logcosh = _print_Function
    _print_silu = _print_Function
    _print_gelu = _print_Function
    _print_elu = _print_Function

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
    >>> to_torch(parse("relu(x)**2/2 + x**2/4", ("x",)), ["x"])
    '(1/4)*x**2 + 0.5*torch.relu(x)**2'
    """
    text = EnergyTorchPrinter(tensor_symbols).doprint(expr)
    # the printer parenthesises a rational coefficient twice, ``((1/4))*x``, and a decimal one once, ``(0.5)*x``;
    # outside a call (no name, ``)`` or ``]`` before the bracket) a positive literal needs no brackets of its own
    text = _DOUBLE_RATIONAL.sub(r"(\1)", text)
    return _BRACKETED_NUMBER.sub(r"\1", text)


_DOUBLE_RATIONAL = re.compile(r"(?<![\w\])\]])\(\((-?\d+/\d+)\)\)")
_BRACKETED_NUMBER = re.compile(r"(?<![\w\])\]])\((\d+(?:\.\d+)?)\)")


def tidy(expr: sp.Expr) -> sp.Expr:
    """Simplify derivatives of piecewise primitives: ``relu(a)·step(a) = relu(a)``, ``step(a)^k = step(a)``."""
    expr = expr.replace(
        lambda e: isinstance(e, sp.Pow) and isinstance(e.base, step) and e.exp.is_positive, lambda e: e.base
    )

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
        sp.exp: torch.exp,
        sp.log: torch.log,
        sp.tanh: torch.tanh,
        sp.cosh: torch.cosh,
        sp.sinh: torch.sinh,
        sp.sin: torch.sin,
        sp.cos: torch.cos,
        sp.atan: torch.atan,
        sp.Abs: torch.abs,
        sigmoid: torch.sigmoid,
        relu: torch.relu,
        step: lambda t: (t > 0).to(t.dtype),
        softplus: F.softplus,
        logcosh: _logcosh_t,
        silu: F.silu,
        gelu: F.gelu,
        elu: F.elu,
        sp.erf: torch.erf,
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
