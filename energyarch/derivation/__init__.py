"""Derivation: from a declared term to the structure of its gradient (symbolic path) or to autodiff.

    declaration (energy.py) → derivation (this package: a family, then the first registered pattern that
    matches) → emitted module (emit.py, the pattern's lowering) → runtime (runtime.py)

Symbolic path (the gradient of Eq. 19; docs: Concepts, "Two derivation paths"): with ``S_k = Σ_j K(z_k, z_j)`` and an inner-product kernel
``K = κ(Φ(x)·Φ(y))``::

    ∇_Z E = Φ'(Z) ⊙ (C Φ(Z)),   C_kj = [f'(S_k) + f'(S_j)] κ'(s_kj)

distance kernels differentiate ‖z_k − z_j‖² as declared, and the feed-forward family gives
``∇_U E = −g'(Σ_m h(u_m)) h'(U)``. Anything no pattern takes, or whose symbolic steps exceed
:data:`SYMBOLIC_BUDGET`, falls back to ``torch.func.grad`` of the energy; :attr:`Derivation.path` and
:attr:`Derivation.reason` say which and why.

>>> from energyarch import Attention
>>> dv = derive(Attention(f="log(x)/beta", K="exp(beta*s)", heads=4), d=64)
>>> dv.pattern, dv.path
('bi-softmax', 'symbolic')
"""

from __future__ import annotations

import functools

from ..energy import Term
from . import attention, causal, feedforward, gated, patterns  # noqa: F401 - registers the families and patterns
from . import qk_attention  # noqa: F401 - bidirectional attention with an interaction
from .core import (
    BETA,
    FAMILIES,
    PATTERNS,
    SIGMA,
    SJ,
    SK,
    SYMBOLIC_BUDGET,
    Candidate,
    Derivation,
    Dims,
    Family,
    Pattern,
    family_of,
    patterns_for,
    register_family,
    register_pattern,
)

__all__ = [
    "BETA",
    "FAMILIES",
    "PATTERNS",
    "SIGMA",
    "SJ",
    "SK",
    "SYMBOLIC_BUDGET",
    "Candidate",
    "Derivation",
    "Dims",
    "Family",
    "Pattern",
    "autodiff_derivation",
    "derive",
    "family_of",
    "patterns_for",
    "register_family",
    "register_pattern",
]


@functools.lru_cache(maxsize=256)
def derive(term: Term, d: int) -> Derivation:
    """Derive the update structure of ``term`` at width ``d`` (cached on the term, callables by identity)."""
    return family_of(term).derive(term, d)


def autodiff_derivation(term: Term, d: int, reason: str = "requested path='autodiff'") -> Derivation:
    """A derivation forced to the generic ``torch.func.grad`` path (same dims/checks as :func:`derive`)."""
    base = derive(term, d)
    return Derivation(term, base.dims, "autodiff", "autodiff", reason, base.pieces, {}, base.operator, base.latex)
