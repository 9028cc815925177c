"""LaTeX shared by the inner-product attention patterns (column-token convention, as in Table 19)."""

from __future__ import annotations

from typing import Callable

import sympy as sp

from ...primitives import X


def phi_symbols(pieces) -> tuple[str, Callable[[str], str]]:
    """(Φ(Z) as LaTeX, a wrapper applying Φ'(Z) ⊙) — the identity map when there is no feature map."""
    if pieces["phi"] == X:
        return r"\mathbf{Z}_h", (lambda body: body)
    return r"\Phi(\mathbf{Z}_h)", (lambda body: r"\Phi'(\mathbf{Z}_h) \odot \left(%s\right)" % body)


def update(body: str) -> str:
    return r"-\nabla_{\mathbf{X}} E = -\sum_{h=1}^{H} \mathbf{W}_h \left(%s\right)" % body


def coupling(Phi: str, C: sp.Expr) -> str:
    from ...primitives import S

    G = sp.Symbol(r"\mathbf{G}_h")
    return r"%s \left[%s\right]_{\mathbf{G}_h = %s^\top %s}" % (
        Phi,
        sp.latex(sp.simplify(C).xreplace({S: G})),
        Phi,
        Phi,
    )
