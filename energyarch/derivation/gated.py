"""Family: gated feed-forward with shared up/down projections (CEM), E = −Σ_i Σ_m h(u_im) v_im, v held fixed.

``−∇_U E = h'(U) ⊙ V``: one element-wise map, so the only pattern is ``gated elementwise FF``
(``patterns/gated_elementwise_ff.py``); an opaque h takes the autodiff path.
"""

from __future__ import annotations

from typing import cast

from ..energy import GatedFeedForward
from ..primitives import X
from . import core
from .codegen import code
from .core import Candidate, Derivation, Family, bind, check_callable_scalar, check_size, diff, register_family
from .feedforward import ff_dims


@register_family
class GatedFamily(Family[GatedFeedForward]):
    name = "gated feedforward"
    term_type = GatedFeedForward

    def derive(self, term: GatedFeedForward, d: int) -> Derivation:
        dims = ff_dims(term, d)
        declared = {"h": bind(term.h.expr, term, dims)} if term.h.symbolic else {}
        if not term.h.symbolic:
            check_callable_scalar(term, "h", term.h)
            return Derivation(term, dims, "autodiff", "autodiff",
                              "h is an opaque torch callable: torch.func.grad of the energy (gate held fixed)", declared)

        def build():
            check_size(h=declared["h"])
            return core.first_match(Candidate(term, dims, "gated", {**declared, "dh": diff(declared["h"], X, "h'")}))
        return core.symbolic_or_fallback(term, dims, declared, build)

    def energy_lines(self, dv: Derivation) -> list[str]:
        h = "self.h(U)" if not cast(GatedFeedForward, dv.term).h.symbolic else code(dv.pieces["h"], X, "U")
        return [f"return -(({h}) * V).sum(dim=(-1, -2, -3))     # −Σ_i Σ_m h(u_im) v_im"]

    def signature(self, dv: Derivation) -> dict:
        return {"base": "GatedTermUpdate", "args": "U, V", "shape": "(B, 1, N, M)",
                "grad_doc": "∇_U E with the gate V held fixed", "energy_doc": "Energy at U and gate V; shape (B,).",
                "rule": "X ← X − step ⊙ (∇_U E)(U, V) Dᵀ, D both up and down projection"}

    def energy_text(self, dv: Derivation) -> str:
        h = cast(GatedFeedForward, dv.term).h
        return f"E = -sum_i sum_m h(d_m . x_i) (v_m . xbar_i), gate held fixed, h(x) = {h.name}"

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        return ["# generic path: differentiate the energy in U with the gate V held fixed",
                "return torch.func.grad(lambda U_: self.energy_Z(U_, V).sum())(U)"]
