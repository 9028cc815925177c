"""LaTeX shared by the feed-forward patterns (column-token convention, as in Table 20)."""

import sympy as sp

from ...primitives import X

U_TEX = r"\mathbf{D}^\top \mathbf{X}"


def update(body: str) -> str:
    return r"-\nabla_{\mathbf{X}} E = \mathbf{D}\, %s" % body


def with_U(body: str) -> str:
    return body + r",\quad \mathbf{U} = %s" % U_TEX


def of_U(expr: sp.Expr) -> str:
    return sp.latex(expr.xreplace({X: sp.Symbol(r"\mathbf{U}")}))
