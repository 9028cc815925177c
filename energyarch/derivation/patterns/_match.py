"""Recognisers shared by patterns of several families (one place for each closed-form condition)."""

from __future__ import annotations

from typing import Optional

import sympy as sp

from ...primitives import S, X
from ..core import constant


def log_and_exp(df: sp.Expr, k: sp.Expr, dk: sp.Expr, var: sp.Symbol = S) -> Optional[dict]:
    """f = a·log x (+ const) and k = c·exp(b·var): the softmax structure. Returns {a, b, c} or None."""
    a = constant(X * df, X)
    b = constant(dk / k, var) if k != 0 else None
    if a is None or a == 0 or b is None or b == 0:
        return None
    return {"a": a, "b": sp.simplify(b), "c": sp.simplify(k / sp.exp(b * var))}


def linear_and_quadratic(df: sp.Expr, kappa: sp.Expr) -> Optional[dict]:
    """f linear and κ a polynomial of degree ≤ 2 in s: returns {a, c0, c1, c2} or None."""
    a = constant(df, X)
    if a is None or not kappa.is_polynomial(S):
        return None
    poly = sp.Poly(kappa, S)
    if poly.degree() > 2:
        return None
    return {"a": a, "c0": poly.coeff_monomial(1), "c1": poly.coeff_monomial(S), "c2": poly.coeff_monomial(S**2)}
