"""Family: bidirectional attention, E = Σ_h Σ_i f(Σ_j K(z_i^h, z_j^h)) (Eq. 19).

The family computes the sizes, the bound expressions and their derivatives, checks domains, and hands a
:class:`~.core.Candidate` to the registered attention patterns (``patterns/``); the first that matches
gives the closed form. Opaque callables take the pairwise or autodiff path.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, TypeVar, cast

import torch

from ..energy import Attention, Term, params_of
from ..errors import CompileError, DeclarationError
from ..expr import evaluate
from ..primitives import R, S, X
from . import core
from .codegen import code, phi_lines
from .core import (
    MAX_ELEMENTS,
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
    sphere_samples,
)


def attention_dims(term: Attention, d: int, coord_dim=None, radius_dim=None) -> Dims:
    """Sizes of an attention-like term; ``coord_dim`` / ``radius_dim`` override p and the sphere's dimension."""
    if not isinstance(d, int) or d < 1:
        raise CompileError(f"d={d!r} must be a positive integer (the model width)")
    if d % term.heads:
        divisors = [h for h in range(1, min(d, 64) + 1) if d % h == 0]
        raise CompileError(
            f"term {term.name!r}: heads={term.heads} does not divide the width d={d}; "
            f"choose heads in {divisors} or change d"
        )
    p = d // term.heads if coord_dim is None else coord_dim
    if d * term.heads * p > MAX_ELEMENTS:
        raise CompileError(
            f"term {term.name!r}: a basis of d × H·p = {d} × {term.heads * p} entries is over the "
            f"limit of {MAX_ELEMENTS:,}; choose a smaller width"
        )
    radius = term.constraint.resolve(p if radius_dim is None else radius_dim)
    beta = term.beta if term.beta is not None else 1.0 / math.sqrt(p)
    return Dims(d=d, heads=term.heads, head_dim=p, radius=radius, beta=beta)


def declared_pieces(term: Attention, dims: Dims) -> dict:
    """The bound expressions of the declaration (for the energy and the autodiff path), no derivative."""
    K, pieces = term.K, {}
    if term.f.symbolic:
        pieces["f"] = bind(term.f.expr, term, dims)
    if K.kind == "distance":
        pieces["rho"] = bind(K.expr, term, dims)
    elif K.expr is not None:
        pieces["kappa"] = bind(K.expr, term, dims)
    if K.phi is not None and K.phi.symbolic:
        pieces["phi"] = bind(K.phi.expr, term, dims)
    return pieces


def check_opaque(term: Attention, dims: Dims) -> None:
    """Probe callables (elementwise f / Φ, a scalar symmetric kernel) and the energy's finiteness."""
    K = term.K
    if not term.f.symbolic:
        check_callable_scalar(term, "f", term.f)
    if K.phi is not None and not K.phi.symbolic:
        check_callable_scalar(term, "phi", K.phi)
    if K.kind == "callable":
        check_callable_kernel(term, dims)
    if not (term.f.symbolic and K.symbolic):
        check_energy_finite(term, dims)


def candidate(term: Attention, dims: Dims, declared: dict) -> Candidate:
    """Derivatives and domain checks of a fully symbolic term (inside the symbolic budget)."""
    K = term.K
    f = declared["f"]
    if K.kind == "distance":
        rho = declared["rho"]
        check_size(f=f, K=rho)
        if needs_positive(f):
            Zs = sphere_samples(dims.head_dim, dims.radius)
            r_vals = (Zs.unsqueeze(1) - Zs.unsqueeze(0)).pow(2).sum(-1).flatten()
            check_domain(term, f, float(numeric(rho, dims, R, r_vals).min()), "f", f"the kernel K = {K.name}")
        return Candidate(
            term, dims, "distance", {"f": f, "df": diff(f, X, "f'"), "rho": rho, "drho": diff(rho, R, "ρ'")}
        )
    kappa = declared["kappa"]
    phi = declared.get("phi", X)
    check_size(f=f, K=kappa, phi=phi)
    if needs_positive(f):
        Zs = sphere_samples(dims.head_dim, dims.radius)
        Phi = numeric(phi, dims, X, Zs) if K.phi is not None else Zs
        kmin = float(numeric(kappa, dims, S, (Phi @ Phi.T).flatten()).min())
        check_domain(term, f, kmin, "f", f"the kernel K = {K.name}")
    return Candidate(
        term,
        dims,
        "inner",
        {
            "f": f,
            "df": diff(f, X, "f'"),
            "kappa": kappa,
            "dkappa": diff(kappa, S, "κ'"),
            "phi": phi,
            "dphi": diff(phi, X, "Φ'"),
        },
    )


@register_family
class AttentionFamily(Family[Attention]):
    name = "attention"
    term_type = Attention
    runtime_names = {
        "energyarch.runtime": (
            "bisoftmax_sdpa",
            "row_logsumexp",
            "pairwise_kernel",
            "pairwise_kernel_grad",
            "sq_distances",
            "distance_softmax_dense",
            "distance_softmax_sdpa",
            "distance_row_logsumexp",
        ),
        # above sdpa_threshold: tiles of pairs, never N×N
        "energyarch.blockwise": (
            "pair_row_sum",
            "pair_grad",
            "gram_couple",
            "distance_couple",
            "kernel_on_gram",
            "kernel_on_distance",
            "kernel_callable",
        ),
    }

    def derive(self, term: Attention, d: int) -> Derivation:
        dims = attention_dims(term, d)
        check_opaque(term, dims)
        declared = declared_pieces(term, dims)
        K = term.K
        if K.kind == "callable" and term.f.symbolic and K.symmetric:
            return core.first_match(
                Candidate(term, dims, "callable", {**declared, "df": core.tidy(declared["f"].diff(X))})
            )
        if K.kind == "callable" or not (term.f.symbolic and K.symbolic):
            why = (
                "the kernel is declared non-symmetric"
                if K.kind == "callable" and not K.symmetric
                else "a primitive is an opaque torch callable"
            )
            return Derivation(term, dims, "autodiff", "autodiff", f"{why}: torch.func.grad of the energy", declared)
        return core.symbolic_or_fallback(
            term, dims, declared, lambda: core.first_match(candidate(term, dims, declared))
        )

    def energy_lines(self, dv: Derivation) -> list[str]:
        t = cast(Attention, dv.term)
        f_code = "self.f(S)" if not t.f.symbolic else code(dv.pieces["f"], X, "S")
        on = "Z" if t.K.kind != "inner" else "Phi"
        if t.K.kind == "distance":
            lines = [
                "r = sq_distances(Z)                                 # (B, H, N, N): ‖z_i − z_j‖², as declared",
                f"S = ({code(dv.pieces['rho'], R, 'r')}).sum(dim=-1)   # (B, H, N): Σ_j K",
            ]
        elif t.K.kind == "callable":
            lines = ["S = pairwise_kernel(self.kernel, Z).sum(dim=-1)     # (B, H, N): Σ_j K(z_i, z_j)"]
        else:
            lines = [
                "G = Phi @ Phi.transpose(-1, -2)                     # (B, H, N, N)",
                f"S = ({code(dv.pieces['kappa'], S, 'G')}).sum(dim=-1)   # (B, H, N): Σ_j K",
            ]
        prefix = phi_lines(dv, with_derivative=False) if t.K.kind == "inner" else []
        return [
            *prefix,
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: tiles of pairs, never N×N",
            f"    S = pair_row_sum({tile_kernel(dv)}, {on})   # (B, H, N): Σ_j K",
            "else:",
            *("    " + ln for ln in lines),
            f"return ({f_code}).sum(dim=(-1, -2))",
        ]

    def energy_text(self, dv: Derivation) -> str:
        return f"E = sum_h sum_i f(sum_j K(z_i, z_j)), {attention_text(cast(Attention, dv.term))}"

    def reference_energy(self, term, Z, env):
        return attention_reference_energy(term, Z, env)

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        """Above ``sdpa_threshold`` the same chain rule tile by tile: ``∇_Z E = Σ_j f'(S_k) ∂₁K(z_k, z_j) +
        f'(S_j) ∂₂K(z_j, z_k)``, with f' and ∂K by autodiff (:func:`energyarch.blockwise.pair_grad`)."""
        t = cast(Attention, dv.term)
        f_code = "self.f(S_)" if not t.f.symbolic else code(dv.pieces["f"], X, "S_")
        symmetric = t.K.kind != "callable" or t.K.symmetric
        return [
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: autodiff tile by tile",
            f"    K = {tile_kernel(dv, with_phi=True)}",
            "    S = pair_row_sum(K, Z)                              # (B, H, N): Σ_j K(z_k, z_j)",
            f"    df_S = torch.func.grad(lambda S_: ({f_code}).sum())(S)   # f'(S), elementwise",
            f"    return pair_grad(K, Z, df_S, symmetric={symmetric!r})",
            *super().autodiff_lines(dv),
        ]


def opaque_reason(term: Attention) -> Optional[str]:
    """Why a query-key term takes the generic path (an opaque kernel or primitive), or None."""
    if term.K.kind == "callable":
        return "the kernel is an opaque torch callable"
    if not (term.f.symbolic and term.K.symbolic):
        return "a primitive is an opaque torch callable"
    return None


A = TypeVar("A", bound=Attention)  # the query-key family's term type


class QueryKeyFamily(Family[A]):
    """An attention family whose emitted module takes queries and keys ``(Q, K)`` (B, H, N, p) from an interaction
    (the causal and the query-key families): the template, the reference energy with queries = keys, the
    generic path in both roles. Subclasses set the docstrings ``grad_doc``, ``energy_doc`` and the ``rule``."""

    variable = "Q, K"
    grad_doc: str = ""
    energy_doc: str = ""
    rule: str = ""
    #: the comment on the generic path's first line
    autodiff_comment: str = "differentiate the energy in both roles with torch.func.grad"

    def signature(self, dv: Derivation) -> dict:
        return {
            "args": self.variable,
            "shape": "(B, H, N, p)",
            "grad_doc": self.grad_doc,
            "energy_doc": self.energy_doc,
            "rule": self.rule,
        }

    def reference_energy(self, term, Z, env):
        """The energy with queries = keys = ``Z`` (a finiteness probe; the family's :meth:`check` differentiates
        both roles)."""
        return attention_reference_energy(term, Z, env)

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        return [
            f"# generic path: {self.autodiff_comment}",
            "G_q, G_k = torch.func.grad(lambda Q_, K_: self.energy_Z(Q_, K_).sum(), argnums=(0, 1))(Q, K)",
            "return G_q, G_k",
        ]


def tile_kernel(dv: Derivation, with_phi: bool = False) -> str:
    """Source of the term's kernel on one tile of pairs (:mod:`energyarch.blockwise`); with ``with_phi`` the
    feature map is applied inside (the kernel then takes Z, not Φ)."""
    t = cast(Attention, dv.term)
    if t.K.kind == "distance":
        return f"kernel_on_distance(lambda r: {code(dv.pieces['rho'], R, 'r')})"
    if t.K.kind == "callable":
        return "kernel_callable(self.kernel)"
    kappa = f"lambda G: {code(dv.pieces['kappa'], S, 'G')}"
    if not with_phi or t.K.phi is None:
        return f"kernel_on_gram({kappa})"
    phi = (
        "self.phi" if not t.K.phi.symbolic or "phi" not in dv.pieces else f"lambda x: {code(dv.pieces['phi'], X, 'x')}"
    )
    return f"kernel_on_gram({kappa}, phi={phi})"


def check_callable_kernel(term: Attention, dims: Dims) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(dims.head_dim, generator=g, dtype=torch.float64) for _ in range(2))
    fn = cast(Callable, term.K.fn)  # a kernel of kind 'callable' has fn
    try:
        kxy, kyx = fn(x, y), fn(y, x)
    except Exception as err:  # noqa: BLE001 - report the user's function failing
        raise DeclarationError(
            f"term {term.name!r}: kernel {term.K.name!r} failed on two p={dims.head_dim} vectors: {err}"
        ) from err
    if not isinstance(kxy, torch.Tensor) or kxy.dim() != 0:
        shape = tuple(kxy.shape) if isinstance(kxy, torch.Tensor) else type(kxy).__name__
        raise DeclarationError(
            f"term {term.name!r}: the energy is not scalar: kernel {term.K.name!r} returned {shape} for two "
            f"vectors; K(x, y) must return a 0-dim tensor (reduce with .sum() or a dot product)"
        )
    if term.K.symmetric and not torch.allclose(kxy, kyx, rtol=1e-9, atol=1e-12):
        raise DeclarationError(
            f"term {term.name!r}: kernel {term.K.name!r} is not symmetric (K(x,y)={float(kxy):.6g}, "
            f"K(y,x)={float(kyx):.6g}), but the pairwise fast path assumes K(x,y)=K(y,x). Declare it with "
            f"Kernel.from_torch(fn, name, symmetric=False) to use the generic autodiff path"
        )


def attention_reference_energy(term: Attention, Z: torch.Tensor, env) -> torch.Tensor:
    """E = Σ_h Σ_i f(Σ_j K(z_i, z_j)) at coordinates ``Z`` (…, H, N, p), from the declaration alone (shape ``(…,)``).

    Independent of the derivation: expressions are evaluated by walking the declared sympy trees, opaque
    primitives are called as given, and a distance kernel sees ``r = ‖z_i − z_j‖²`` formed from differences
    (never rewritten with the radius). ``env`` binds ``beta``, ``p``, ``M``, ``d``.
    """
    from ..runtime import pairwise_kernel

    env = {**env, **params_of(term)}
    K = term.K
    if K.kind == "callable":
        Kmat = pairwise_kernel(K.fn, Z)
    elif K.kind == "inner":
        Phi = declared_scalar(K.phi, Z, env) if K.phi is not None else Z
        Kmat = full(evaluate(K.expr, {**env, "s": Phi @ Phi.transpose(-1, -2)}), Z[..., :1])
    else:
        r = (Z.unsqueeze(-2) - Z.unsqueeze(-3)).pow(2).sum(-1)  # (…, N, N) ‖z_i − z_j‖²
        Kmat = full(evaluate(K.expr, {**env, "r": r}), r)
    return declared_scalar(term.f, Kmat.sum(-1), env).sum(dim=(-1, -2))


def full(value, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor shaped like ``like`` (an expression that does not depend on the variable is a float)."""
    return value if isinstance(value, torch.Tensor) else torch.full_like(like, float(value))


def attention_text(term: Attention) -> str:
    """``K = ..., Phi(x) = ..., heads = H`` of an attention-like term (for the emitted ENERGY constant)."""
    k = term.K.name if term.K.kind == "callable" else str(term.K.expr)
    phi = f", Phi(x) = {term.K.phi.name}" if term.K.phi is not None else ""
    return f"f(x) = {term.f.name}, K = {k}{phi}, heads = {term.heads}"


def check_energy_finite(term: Term, dims: Dims) -> None:
    """Probe a term with opaque primitives on the constraint set: its energy must be a finite real number."""
    Z = sphere_samples(dims.head_dim, dims.radius, n=24, seed=3).reshape(1, 1, -1, dims.head_dim)
    env = {"beta": dims.beta, "p": dims.head_dim, "M": dims.head_dim, "d": dims.d}
    try:
        with torch.no_grad():
            E = core.family_of(term).reference_energy(term, Z, env)
    except Exception as err:  # noqa: BLE001 - the user's callable failed: say which term
        raise DeclarationError(
            f"term {term.name!r}: evaluating the energy on the constraint set failed: {type(err).__name__}: {err}"
        ) from err
    if not isinstance(E, torch.Tensor) or E.is_complex() or not bool(torch.isfinite(E).all()):
        value = E.flatten()[:1].tolist() if isinstance(E, torch.Tensor) else E
        t: Any = term  # any family: the message names f and K, or g and h, whichever the term declares
        raise DeclarationError(
            f"term {term.name!r}: the energy is not finite on the constraint set (value {value} at random points "
            f"of the sphere of radius {dims.radius:.4g}); check the domain of "
            + (
                f"f = {t.f.name!r} against the values of K = {t.K.name!r} (e.g. log needs Σ_j K > 0)"
                if hasattr(t, "f")
                else f"g = {t.g.name!r} against the values of h = {t.h.name!r} (e.g. log needs Σ_m h > 0)"
            )
        )
