"""Small helpers that patterns use to write torch source from sympy (printing only our own sympy trees)."""

from __future__ import annotations

from typing import Optional

import sympy as sp

from ..energy import Attention
from ..expr import to_torch
from ..primitives import X
from .core import BETA, Derivation


def code(expr: sp.Expr, var_from: Optional[sp.Symbol] = None, var_to: str = "", tensors=()) -> str:
    """Torch source of ``expr`` with ``var_from`` renamed ``var_to`` (a tensor); ``beta`` stays a name."""
    constant_in_var = var_from is not None and var_from not in expr.free_symbols
    if var_from is not None:
        expr = expr.xreplace({var_from: sp.Symbol(var_to, real=True)})
    expr = expr.xreplace({BETA: sp.Symbol("beta", real=True)})
    text = to_torch(expr, tensor_symbols=set(tensors) | ({var_to} if var_to else set()))
    if constant_in_var:  # e.g. h' = 2 for h = 2x: a tensor shaped like the variable, not a Python number
        return f"(torch.zeros_like({var_to}) + {text})"
    return text


def scaled(coef: sp.Expr, text: str) -> str:
    """``coef * text`` with trivial coefficients folded."""
    coef = sp.simplify(coef)
    if " + " in text or " - " in text:
        text = f"({text})"
    if coef == 1:
        return text
    if coef == -1:
        return f"-{text}"
    return f"{code(coef)} * {text}"


def log_shift(c: sp.Expr) -> str:
    """`` + log c`` (or `` - …``) for a positive constant factor c of a kernel; empty when c = 1."""
    logc = sp.simplify(sp.expand_log(sp.log(c), force=True))
    if logc == 0:
        return ""
    return f" - {code(-logc)}" if logc.could_extract_minus_sign() else f" + {code(logc)}"


def phi_lines(dv: Derivation, with_derivative: bool, var: str = "Z", out: str = "Phi") -> list[str]:
    """``Phi = Φ(var)`` (and ``dPhi = Φ'(var)``) for the term's feature map (identity when none)."""
    t = dv.term
    if not isinstance(t, Attention) or t.K.phi is None:
        return [f"{out} = {var}"]
    if not t.K.phi.symbolic or "phi" not in dv.pieces:
        lines = [f"{out} = self.phi({var})"]
        if with_derivative:
            lines.append(f"d{out} = torch.func.vmap(torch.func.grad(self.phi))({var}.reshape(-1)).reshape({var}.shape)")
        return lines
    lines = [f"{out} = {code(dv.pieces['phi'], X, var)}                       # feature map, elementwise"]
    if with_derivative:
        lines.append(f"d{out} = {code(dv.pieces['dphi'], X, var)}")
    return lines
