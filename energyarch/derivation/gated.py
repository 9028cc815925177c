"""Family: gated feed-forward with shared up/down projections (CEM), E = −Σ_i Σ_m h(u_im) v_im, v held fixed.

``−∇_U E = h'(U) ⊙ V``: one element-wise map, so the only pattern is ``gated elementwise FF``
(``patterns/gated_elementwise_ff.py``); an opaque h takes the autodiff path.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor

from ..energy import GatedFeedForward, params_of
from ..primitives import X
from . import core
from .checks import TermCheck, module_env, stationary
from .codegen import code
from .core import (
    Candidate,
    Derivation,
    Family,
    bind,
    check_callable_scalar,
    check_size,
    declared_scalar,
    diff,
    register_family,
)
from .feedforward import ff_dims


@register_family
class GatedFamily(Family[GatedFeedForward]):
    name = "gated feedforward"
    term_type = GatedFeedForward
    runtime_base = ("energyarch.runtime", "GatedTermUpdate")

    def derive(self, term: GatedFeedForward, d: int) -> Derivation:
        dims = ff_dims(term, d)
        declared = {"h": bind(term.h.expr, term, dims)} if term.h.symbolic else {}
        if not term.h.symbolic:
            check_callable_scalar(term, "h", term.h)
            return Derivation(
                term,
                dims,
                "autodiff",
                "autodiff",
                "h is an opaque torch callable: torch.func.grad of the energy (gate held fixed)",
                declared,
            )

        def build():
            check_size(h=declared["h"])
            return core.first_match(Candidate(term, dims, "gated", {**declared, "dh": diff(declared["h"], X, "h'")}))

        return core.symbolic_or_fallback(term, dims, declared, build)

    def energy_lines(self, dv: Derivation) -> list[str]:
        h = "self.h(U)" if not cast(GatedFeedForward, dv.term).h.symbolic else code(dv.pieces["h"], X, "U")
        return [f"return -(({h}) * V).sum(dim=(-1, -2, -3))     # −Σ_i Σ_m h(u_im) v_im"]

    def signature(self, dv: Derivation) -> dict:
        return {
            "args": "U, V",
            "shape": "(B, 1, N, M)",
            "grad_doc": "∇_U E with the gate V held fixed",
            "energy_doc": "Energy at U and gate V; shape (B,).",
            "rule": "X ← X − step ⊙ (∇_U E)(U, V) Dᵀ, D both up and down projection",
        }

    def energy_text(self, dv: Derivation) -> str:
        h = cast(GatedFeedForward, dv.term).h
        return f"E = -sum_i sum_m h(d_m . x_i) (v_m . xbar_i), gate held fixed, h(x) = {h.name}"

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        return [
            "# generic path: differentiate the energy in U with the gate V held fixed",
            "return torch.func.grad(lambda U_: self.energy_Z(U_, V).sum())(U)",
        ]

    def check(self, term, module, reference, X, dv, step_size) -> TermCheck:
        """∇_U of −Σ h(U) ⊙ V (V fixed) from the declaration, the update vs the autodiff module, and a small step
        lowers the energy with the gate held at its value."""
        env = {**module_env(module), **params_of(term)}

        def declared(U_: Tensor, V_: Tensor) -> Tensor:
            return -(declared_scalar(term.h, U_, env) * V_).sum()

        with torch.no_grad():
            U, V = module.normalize(module.coords(X)), module.gate(X)
            G = module.grad_Z(U, V)
            G_ref = torch.func.grad(declared)(U, V)
            direction = module.direction(X)
            X1 = module(X, 0.1)
            X1_ref = (X1 - reference(X, 0.1)).abs()
            t = step_size / max(1.0, float(direction.abs().max()))
            U1 = module.normalize(module.coords(X + t * direction))
            e0, e1 = module.energy_Z(U, V), module.energy_Z(U1, V)  # the gate held at its value
        return TermCheck.measured(
            term,
            dv,
            G=G,
            G_ref=G_ref,
            X1=X1,
            X1_diff=X1_ref,
            e0=e0,
            e1=e1,
            step=t,
            update_scale=X1 - X,
            stationary=stationary(direction, t, float(G_ref.abs().max()), e0, e1),
        )
