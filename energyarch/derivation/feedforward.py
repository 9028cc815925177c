"""Family: feed-forward, E = − Σ_i g(Σ_m h(d_mᵀ x_i)) (Eq. 20); ``−∇_U E = g'(Σ_m h(u_m)) h'(U)``."""

from __future__ import annotations

import math
from typing import Union, cast

import torch

from ..energy import FeedForward, GatedFeedForward, params_of
from ..errors import CompileError
from ..primitives import X
from . import core
from .attention import check_energy_finite
from .codegen import code
from .core import (
    MAX_ELEMENTS,
    SIGMA,
    Candidate,
    Derivation,
    Dims,
    Family,
    bind,
    check_callable_scalar,
    check_domain,
    check_size,
    declared_scalar,
    diff,
    needs_positive,
    numeric,
    register_family,
)


def ff_dims(term: Union[FeedForward, GatedFeedForward], d: int) -> Dims:
    if not isinstance(d, int) or d < 1:
        raise CompileError(f"d={d!r} must be a positive integer (the model width)")
    M = term.resolve_width(d)
    if M * d > MAX_ELEMENTS:
        raise CompileError(
            f"term {term.name!r}: a feed-forward basis of d × M = {d} × {M} has {d * M:,} entries, "
            f"over the limit of {MAX_ELEMENTS:,}; choose a smaller width or ratio"
        )
    return Dims(d=d, heads=1, head_dim=M, radius=term.constraint.resolve(M), beta=1.0 / math.sqrt(M))


def ff_candidate(term: FeedForward, dims: Dims, declared: dict) -> Candidate:
    g, h = declared["g"], declared["h"]
    check_size(g=g, h=h)
    if needs_positive(g):
        u = torch.linspace(-dims.radius, dims.radius, 401, dtype=torch.float64)
        check_domain(term, g, float(numeric(h, dims, X, u).min()) * dims.head_dim, "g", "Σ_m h(u_m)")
    return Candidate(term, dims, "elementwise", {"g": g, "dg": diff(g, X, "g'"), "h": h, "dh": diff(h, X, "h'")})


@register_family
class FeedForwardFamily(Family[FeedForward]):
    name = "feedforward"
    term_type = FeedForward
    variable = "U"

    def signature(self, dv: Derivation) -> dict:
        return {
            "args": "U",
            "shape": "(B, 1, N, M)",
            "grad_doc": "∇_U E (E_FF = −Σ g(Σ h) carries the minus sign of Eq. 20)",
            "energy_doc": "Energy of the term at U (B, 1, N, M); shape (B,).",
            "rule": "X ← X − step ⊙ (∇_U E)(U) Dᵀ",
        }

    def energy_text(self, dv: Derivation) -> str:
        t = cast(FeedForward, dv.term)
        return f"E = -sum_i g(sum_m h(d_m . x_i)), g(x) = {t.g.name}, h(x) = {t.h.name}"

    def reference_energy(self, term, U, env):
        """E = −Σ_i g(Σ_m h(u_im)) at coordinates ``U`` (…, 1, N, M), from the declaration alone."""
        env = {**env, **params_of(term)}
        Sigma = declared_scalar(term.h, U, env).sum(-1)
        return -declared_scalar(term.g, Sigma, env).sum(dim=(-1, -2))

    def derive(self, term: FeedForward, d: int) -> Derivation:
        dims = ff_dims(term, d)
        for role, prim in (("g", term.g), ("h", term.h)):
            if not prim.symbolic:
                check_callable_scalar(term, role, prim)
        declared = {k: bind(p.expr, term, dims) for k, p in (("g", term.g), ("h", term.h)) if p.symbolic}
        if not (term.g.symbolic and term.h.symbolic):
            check_energy_finite(term, dims)
            return Derivation(
                term,
                dims,
                "autodiff",
                "autodiff",
                "a primitive is an opaque torch callable: torch.func.grad of the energy",
                declared,
            )
        return core.symbolic_or_fallback(
            term, dims, declared, lambda: core.first_match(ff_candidate(term, dims, declared))
        )

    def energy_lines(self, dv: Derivation) -> list[str]:
        t = cast(FeedForward, dv.term)
        h = "self.h(U)" if not t.h.symbolic else code(dv.pieces["h"], X, "U")
        g = "self.g(Sigma)" if not t.g.symbolic else code(dv.pieces["g"], X, "Sigma")
        return [
            f"Sigma = ({h}).sum(dim=-1)                  # (B, 1, N): Σ_m h(u_m)",
            f"return -({g}).sum(dim=(-1, -2))",
        ]


def ff_operator(c: Candidate):
    return c.pieces["dg"].xreplace({X: SIGMA}) * c.pieces["dh"]
