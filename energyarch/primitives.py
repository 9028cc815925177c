"""Primitives: scalar functions (f, g, h, Φ) and kernels K, each a small immutable object.

A primitive is made in one line, either from an expression (string or sympy; the symbolic path is then
available) or from a plain torch callable (autodiff path only):

>>> f = Scalar.parse("log(x)/beta")                     # f = β⁻¹ log
>>> K = Kernel.parse("exp(beta*s)")                     # K(x, y) = exp(β x·y)
>>> h = Scalar.from_torch(lambda u: torch.nn.functional.gelu(u), name="gelu")

Expression variables: ``x`` for scalar functions; ``s = x·y`` (inner product, after Φ) or
``r = ‖x − y‖²`` (squared distance) for kernels. Parameters: ``beta`` (1/√p unless the term says
otherwise), ``p`` (head dimension), ``M`` (feed-forward width), ``d`` (model width) and any names the
user passes in ``params``.
"""

from __future__ import annotations

import keyword
import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, cast

import sympy as sp
import torch

from .errors import DeclarationError
from .expr import CONSTANTS, FUNCTIONS, LIMITS, parse

#: Parameter names every expression may use; bound at compile time.
PARAMETERS = ("beta", "p", "M", "d")
X = sp.Symbol("x", real=True)
S = sp.Symbol("s", real=True)
R = sp.Symbol("r", real=True)


_ASCII_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}\Z")


def _as_params(params: Optional[Mapping[str, float]], where: str) -> tuple[tuple[str, float], ...]:
    if params is not None and not isinstance(params, Mapping):
        raise DeclarationError(f"{where}: params={params!r} must be a mapping such as {{'gamma': 0.5}}")
    params = dict(params or {})
    for name, value in params.items():
        if (
            not isinstance(name, str)
            or not _ASCII_NAME.match(name)
            or keyword.iskeyword(name)
            or name in ("x", "s", "r") + PARAMETERS + tuple(FUNCTIONS) + tuple(CONSTANTS)
        ):
            raise DeclarationError(
                f"{where}: parameter name {name!r} is reserved or invalid; use an ASCII identifier of at most "
                f"32 characters that is not a keyword, a function or a reserved name "
                f"(reserved: x, s, r, {', '.join(PARAMETERS)}, pi, e)"
            )
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise DeclarationError(f"{where}: parameter {name}={value!r} must be a real number")
        if (
            not math.isfinite(value)
            or abs(value) > LIMITS["constant_magnitude"]
            or (value != 0 and abs(value) < 1 / LIMITS["constant_magnitude"])
        ):
            raise DeclarationError(
                f"{where}: parameter {name}={value!r} must be finite, with 1e-100 <= |value| <= 1e100 (or 0)"
            )
    return tuple(sorted((k, float(v)) for k, v in params.items()))


def check_params_used(params: Mapping[str, float], exprs: Mapping[str, sp.Expr], where: str) -> None:
    """Refuse a declared parameter that no expression uses (a misspelling would otherwise be ignored), naming it
    and the symbols the expressions do use.

    >>> check_params_used({"gama": 2.0}, {"K": parse("exp(-gamma*r)", ("r", "gamma"))}, "Kernel")
    Traceback (most recent call last):
    ...
    energyarch.errors.DeclarationError: Kernel: parameter 'gama' is not used by K = exp(-gamma*r); its symbols are gamma, r (did you mean 'gamma'?); remove it or correct its name
    """
    used = set().union(*({s.name for s in e.free_symbols} for e in exprs.values() if e is not None))
    for name in params:
        if name not in used:
            import difflib

            close = difflib.get_close_matches(str(name), sorted(used), n=1)
            shown = ", ".join(f"{k} = {e}" if k else str(e) for k, e in exprs.items() if e is not None)
            raise DeclarationError(
                f"{where}: parameter {name!r} is not used by {shown}; its symbols are {', '.join(sorted(used))}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + "; remove it or correct its name"
            )


def used_params(text: str, params: Optional[Mapping[str, float]], variables: tuple = ("x", "s", "r")) -> dict:
    """The part of ``params`` that the expression ``text`` uses (to give each primitive of a term only its own,
    when a table declares one ``params`` for all of them). Text that does not parse keeps every parameter: the
    parser's own error comes when the primitive is made."""
    params = dict(params or {})
    try:
        names = {s.name for s in parse(text, (*variables, *PARAMETERS, *params), where="expression").free_symbols}
    except Exception:  # noqa: BLE001 - reported by Scalar.parse / Kernel.parse with the user's text
        return params
    return {k: v for k, v in params.items() if k in names}


def _check_label(name, where: str) -> str:
    """Names are free text for people (reports, plots); they reach emitted source only as repr() literals."""
    if not isinstance(name, str):
        raise DeclarationError(f"{where}: name={name!r} must be a string")
    if len(name) > 200:
        raise DeclarationError(f"{where}: name is {len(name)} characters long; use at most 200")
    return name


def _latex_name(name: str) -> str:
    """A name as LaTeX text: letters, digits and underscores only (escaped), so no name can break the maths."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "", name)[:40] or "fn"
    return cleaned.replace("_", r"\_")


def _callable_name(fn, role: str) -> str:
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) and name and len(name) <= 200 else role


@dataclass(frozen=True)
class Scalar:
    """A scalar function R → R used as f, g, h or Φ.

    Exactly one of ``expr`` (sympy, in the variable ``x``) and ``fn`` (a torch callable) is set.
    """

    name: str
    expr: Optional[sp.Expr] = None
    fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # compared (and hashed) by identity
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        _check_label(self.name, "Scalar")
        if (self.expr is None) == (self.fn is None):
            raise DeclarationError(f"Scalar {self.name!r}: give exactly one of expr= or fn=")
        if self.expr is not None:
            extra = {s.name for s in self.expr.free_symbols} - {"x", *PARAMETERS, *dict(self.params)}
            if extra:
                raise DeclarationError(
                    f"Scalar {self.name!r}: unknown symbols {sorted(extra)} in {self.expr}; a scalar "
                    f"function uses x, {', '.join(PARAMETERS)} and declared params"
                )

    @classmethod
    def parse(cls, text: str, name: Optional[str] = None, params: Optional[Mapping[str, float]] = None) -> "Scalar":
        """Make a scalar function from an expression string in ``x`` (restricted parser, no eval)."""
        p = _as_params(params, f"Scalar {text!r}")
        expr = parse(text, ("x", *PARAMETERS, *dict(p)), where=f"scalar function {text!r}")
        check_params_used(dict(p), {"": expr}, f"Scalar {text!r}")
        return cls(name=name or text, expr=expr, params=p)

    @classmethod
    def from_sympy(
        cls, expr: sp.Expr, name: Optional[str] = None, params: Optional[Mapping[str, float]] = None
    ) -> "Scalar":
        """Make a scalar function from a sympy expression in the symbol ``x``."""
        if not isinstance(expr, sp.Expr):
            raise DeclarationError(f"from_sympy: expected a sympy expression, got {type(expr).__name__}")
        subs = {s: sp.Symbol(s.name, real=True) for s in expr.free_symbols}
        p = _as_params(params, "from_sympy")
        check_params_used(dict(p), {"": expr}, f"from_sympy {expr}")
        return cls(name=name or str(expr), expr=expr.xreplace(subs), params=p)

    @classmethod
    def from_torch(cls, fn: Callable[[torch.Tensor], torch.Tensor], name: Optional[str] = None) -> "Scalar":
        """Wrap an elementwise torch callable; only the autodiff path can differentiate it."""
        if not callable(fn):
            raise DeclarationError(f"from_torch: {fn!r} is not callable")
        if name is None:
            name = _callable_name(fn, "fn")
        return cls(name=name, fn=fn)

    @property
    def symbolic(self) -> bool:
        return self.expr is not None

    def latex(self, var: str = "x") -> str:
        if self.expr is None:
            return r"\mathrm{%s}(%s)" % (_latex_name(self.name), var)
        return sp.latex(self.expr.subs(X, sp.Symbol(var)))


def as_scalar(value, role: str) -> Scalar:
    """Coerce a string / sympy expression / Scalar / callable into a :class:`Scalar`."""
    if isinstance(value, Scalar):
        return value
    if isinstance(value, str):
        return Scalar.parse(value)
    if isinstance(value, sp.Expr):
        return Scalar.from_sympy(value)
    if callable(value):
        return Scalar.from_torch(value, name=_callable_name(value, role))
    raise DeclarationError(
        f"{role}={value!r}: expected an expression string like 'log(x)', a sympy expression, "
        f"a Scalar, or a torch callable"
    )


@dataclass(frozen=True)
class Kernel:
    """A kernel K(x, y) on R^p.

    ``kind`` is one of:

    - ``"inner"``: K = κ(Φ(x)·Φ(y)), ``expr`` in ``s``; Φ elementwise (identity when ``phi`` is None);
    - ``"distance"``: K = ρ(‖x − y‖²), ``expr`` in ``r``; on the sphere of radius R it is the inner-product
      kernel κ(s) = ρ(2R² − 2s) in *value* (Eqs. 4–6); the step differentiates ‖x − y‖² as declared;
    - ``"callable"``: an opaque torch function ``fn(x, y) -> scalar`` on single vectors.
    """

    name: str
    kind: str
    expr: Optional[sp.Expr] = None
    phi: Optional[Scalar] = None
    fn: Optional[Callable] = None  # compared (and hashed) by identity: two lambdas are two kernels
    symmetric: bool = True
    params: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        _check_label(self.name, "Kernel")
        if self.kind not in ("inner", "distance", "callable"):
            raise DeclarationError(f"Kernel {self.name!r}: kind={self.kind!r}; use 'inner', 'distance' or 'callable'")
        if self.kind == "callable" and self.fn is None:
            raise DeclarationError(f"Kernel {self.name!r}: a callable kernel needs fn=")
        if self.kind != "callable" and self.expr is None:
            raise DeclarationError(f"Kernel {self.name!r}: an {self.kind} kernel needs an expression")
        if self.phi is not None and self.kind != "inner":
            raise DeclarationError(f"Kernel {self.name!r}: phi= only applies to inner-product kernels")

    @classmethod
    def parse(
        cls, text: str, phi=None, name: Optional[str] = None, params: Optional[Mapping[str, float]] = None
    ) -> "Kernel":
        """Kernel from an expression in ``s`` (= Φ(x)·Φ(y)) or ``r`` (= ‖x − y‖²)."""
        p = _as_params(params, f"Kernel {text!r}")
        expr = parse(text, ("s", "r", *PARAMETERS, *dict(p)), where=f"kernel {text!r}")
        names = {s.name for s in expr.free_symbols}
        if "s" in names and "r" in names:
            raise DeclarationError(
                f"kernel {text!r} uses both s (inner product) and r (squared distance); write it in one of them "
                f"(on the sphere of radius R, r = 2R² - 2s)"
            )
        check_params_used(dict(p), {"": expr}, f"Kernel {text!r}")
        kind = "distance" if "r" in names else "inner"
        phi_s = as_scalar(phi, "phi") if phi is not None else None
        return cls(name=name or text, kind=kind, expr=expr, phi=phi_s, params=p)

    @classmethod
    def from_torch(cls, fn: Callable, name: Optional[str] = None, symmetric: bool = True) -> "Kernel":
        """Wrap ``fn(x, y) -> scalar`` (single p-vectors); differentiated with ``torch.func``.

        ``symmetric=True`` claims K(x, y) = K(y, x), which enables the pairwise closed form
        Σ_j [f'(S_k) + f'(S_j)] ∂₁K(z_k, z_j); compile checks the claim numerically.
        """
        if not callable(fn):
            raise DeclarationError(f"Kernel.from_torch: {fn!r} is not callable")
        if not isinstance(symmetric, bool):
            raise DeclarationError(f"Kernel.from_torch: symmetric={symmetric!r} must be True or False")
        return cls(name=_callable_name(fn, "K") if name is None else name, kind="callable", fn=fn, symmetric=symmetric)

    @property
    def symbolic(self) -> bool:
        return self.kind != "callable" and (self.phi is None or self.phi.symbolic)

    @property
    def variable(self) -> sp.Symbol:
        return R if self.kind == "distance" else S

    def latex(self) -> str:
        if self.kind == "callable":
            return r"\mathrm{%s}(\mathbf{x}, \mathbf{y})" % _latex_name(self.name)
        if self.kind == "distance":
            return sp.latex(cast(sp.Expr, self.expr).subs(R, sp.Symbol(r"\|\mathbf{x}-\mathbf{y}\|^2")))
        inner = r"\mathbf{x}^\top \mathbf{y}" if self.phi is None else r"\Phi(\mathbf{x})^\top \Phi(\mathbf{y})"
        return sp.latex(cast(sp.Expr, self.expr).subs(S, sp.Symbol("(" + inner + ")")))  # not callable: an expr


def as_kernel(value) -> Kernel:
    if isinstance(value, Kernel):
        return value
    if isinstance(value, str):
        return Kernel.parse(value)
    if callable(value):
        return Kernel.from_torch(value, name=_callable_name(value, "K"))
    raise DeclarationError(
        f"K={value!r}: expected an expression string like 'exp(beta*s)', a Kernel, or a torch callable K(x, y)"
    )
