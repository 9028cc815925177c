"""Energies as data: attention and feed-forward terms on hyperspheres, which add.

The two families of the paper (Eqs. 19–20), in the row-token convention ``X ∈ R^{N×d}``:

    E_ATTN = Σ_h Σ_i f( Σ_j K(z_i^h, z_j^h) ),   z_i^h = W_hᵀ x_i on the sphere of radius √p   (Eq. 19, 4)
    E_FF   = − Σ_i g( Σ_m h(d_mᵀ x_i) ),          u_i = Dᵀ x_i on the sphere of radius √M       (Eq. 20, 5)

>>> E = Attention(f="log(x)/beta", K="exp(beta*s)", heads=4) + FeedForward(g="x", h="relu(x)**2/2")
>>> [t.name for t in E.terms]
['attn', 'ff']
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Mapping, Optional, Union

from .errors import DeclarationError
from .interactions import INTERACTIONS, Interaction, SharedBasis
from .primitives import Kernel, Scalar, as_kernel, as_scalar


@dataclass(frozen=True)
class Sphere:
    """Hypersphere constraint ‖z‖ = radius, realised by RMSNorm (no gain) scaled to ``radius``.

    ``radius=None`` means the paper's default: √p for attention coordinates, √M for feed-forward ones.
    """

    radius: Optional[float] = None
    eps: float = 1e-6

    def __post_init__(self):
        if self.radius is not None and (not _real(self.radius) or not 0 < self.radius < 1e30):
            raise DeclarationError(
                f"Sphere: radius={self.radius!r} must be a positive number, finite (or None for the default √p / √M)"
            )
        if not (_real(self.eps) and 0 < self.eps < 1):
            raise DeclarationError(
                f"Sphere: eps={self.eps!r} must be a number in (0, 1); it keeps RMSNorm finite at an all-zero token "
                f"(default 1e-6; the official Hyper-SET code uses the dtype's machine epsilon)"
            )

    def resolve(self, dim: int) -> float:
        return float(self.radius) if self.radius is not None else math.sqrt(dim)


def _real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Term:
    """Base class of energy terms: addition into an :class:`Energy`, renaming.

    A new family is a frozen dataclass subclassing ``Term`` (with a ``name`` field and a ``family`` string naming
    its registered :class:`~energyarch.derivation.Family`); its :class:`~energyarch.primitives.Scalar` /
    :class:`~energyarch.primitives.Kernel` fields are its primitives (see :func:`params_of`).
    """

    name: str
    __dataclass_fields__: ClassVar[dict[str, Any]]  # every term is a dataclass: fields() and replace() apply

    @property
    def family(self) -> str:
        """The name of the term's registered :class:`~energyarch.derivation.Family` (subclasses set it)."""
        return ""

    def __add__(self, other: Union["Term", "Energy"]) -> "Energy":
        return Energy((self,)) + other

    def __radd__(self, other):
        if other == 0:  # lets sum([...]) work
            return Energy((self,))
        return NotImplemented

    def renamed(self, name: str):
        return replace(self, name=name)


@dataclass(frozen=True)
class Attention(Term):
    """E_ATTN = Σ_h Σ_i f(Σ_j K(z_i^h, z_j^h)) with H heads of width p = d/H (Eq. 19).

    Args:
        f: outer scalar function (expression in ``x``, sympy, :class:`Scalar` or torch callable).
        K: kernel (expression in ``s`` or ``r``, :class:`Kernel`, or torch callable ``K(x, y)``).
        heads: number of heads H; must divide the model width at compile time.
        phi: optional elementwise feature map Φ for inner-product kernels.
        constraint: the sphere of each head's coordinates (default radius √p).
        beta: value of the symbol ``beta`` (default 1/√p).
        name: term name (used for step sizes and energy breakdowns).
        radius: shorthand for ``constraint=Sphere(radius)``.
        interaction: how queries and keys come from the tokens (:mod:`energyarch.interactions`): None or
            ``SharedBasis()`` (Hyper-SET's one basis per head, the default), ``QueryKey()`` (separate W_Q, W_K per
            head, as in Energy Transformer) or ``DiagLowRank(rank)``. With queries q and keys k,
            ``S_i = Σ_j K(q_i, k_j)`` is no longer symmetric in i, j; the gradient of both roles is derived
            (docs: Concepts, "Bidirectional interactions").

    >>> Attention(f="log(x)/beta", K="exp(beta*s)", heads=2).family
    'attention'
    >>> from energyarch.interactions import QueryKey
    >>> Attention(f="log(x)/beta", K="exp(beta*s)", heads=2, interaction=QueryKey()).family
    'qk attention'
    """

    f: Scalar
    K: Kernel
    heads: int = 1
    constraint: Sphere = Sphere()
    beta: Optional[float] = None
    name: str = "attn"
    interaction: Optional[Interaction] = None  # None: the shared basis

    def __init__(
        self,
        f,
        K,
        heads: int = 1,
        phi=None,
        constraint: Optional[Sphere] = None,
        beta: Optional[float] = None,
        name: str = "attn",
        radius: Optional[float] = None,
        interaction=None,
    ):
        kernel = as_kernel(K)
        if phi is not None:
            if kernel.kind != "inner":
                raise DeclarationError(
                    f"Attention: phi= needs an inner-product kernel (in s); K={kernel.name!r} is {kernel.kind}"
                )
            kernel = replace(kernel, phi=as_scalar(phi, "phi"))
        if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
            raise DeclarationError(f"Attention: heads={heads!r} must be a positive integer")
        if beta is not None and not (_real(beta) and 0 < beta < 1e30):
            raise DeclarationError(f"Attention: beta={beta!r} must be a positive number or None (for 1/√p)")
        if constraint is not None and radius is not None:
            raise DeclarationError("Attention: give either constraint= or radius=, not both")
        _check_sphere(constraint, "Attention")
        object.__setattr__(self, "f", as_scalar(f, "f"))  # noqa: E501
        object.__setattr__(self, "K", kernel)
        object.__setattr__(self, "heads", heads)
        object.__setattr__(self, "constraint", constraint or Sphere(radius))
        object.__setattr__(self, "beta", None if beta is None else float(beta))
        object.__setattr__(self, "name", _check_name(name))
        interaction = _check_interaction("Attention", interaction, self.K)
        object.__setattr__(self, "interaction", None if interaction.kind == "shared" else interaction)

    @property
    def family(self) -> str:
        """``'attention'`` (one basis per head, Eq. 19) or ``'qk attention'`` (queries and keys from an
        interaction other than the shared basis)."""
        return "attention" if self.interaction is None else "qk attention"


@dataclass(frozen=True)
class CausalAttention(Attention):
    """Causal conditional energies (CEM; paper App. H.4, direction 1): token t descends its own

        E_t(x_t | x_{<t}) = Σ_h f( Σ_{s≤t} K(q_t^h, k_s^h) ),     x_t ← x_t − α_t ∇_{x_t} E_t

    the other tokens held fixed. There is no single global energy; ``energy`` reports Σ_t E_t.

    Args:
        f: outer scalar function, as in :class:`Attention`.
        K: kernel, as in :class:`Attention`.
        heads: number of heads H.
        phi: optional elementwise feature map Φ (inner-product kernels).
        constraint: the sphere of the coordinates (default radius √p).
        beta: value of the symbol ``beta`` (default 1/√p).
        name: term name.
        radius: shorthand for ``constraint=Sphere(radius)``.
        interaction: how queries and keys come from the tokens (:mod:`energyarch.interactions`):
            ``SharedBasis()`` (default; Hyper-SET's one basis per head), ``QueryKey()`` (CEM's weight-tied
            attention) or ``DiagLowRank(rank)``.
        self_term: ``'exact'`` (default) differentiates x_t's key role in its own term K(q_t, k_t);
            ``'stopped'`` holds it fixed (a declared stop-gradient).
    """

    interaction: Interaction = SharedBasis()
    self_term: str = "exact"

    def __init__(
        self,
        f,
        K,
        heads: int = 1,
        phi=None,
        constraint: Optional[Sphere] = None,
        beta: Optional[float] = None,
        name: str = "attn",
        radius: Optional[float] = None,
        interaction=None,
        self_term: str = "exact",
    ):
        Attention.__init__(self, f, K, heads=heads, phi=phi, constraint=constraint, beta=beta, name=name, radius=radius)
        interaction = _check_interaction("CausalAttention", interaction, self.K)
        if self_term not in SELF_TERMS:
            raise DeclarationError(
                f"CausalAttention: self_term={self_term!r}; choose 'exact' (differentiate x_t's "
                f"key role in its own term) or 'stopped' (hold it fixed)"
            )
        object.__setattr__(self, "interaction", interaction)
        object.__setattr__(self, "self_term", self_term)

    family = "causal attention"


#: How a causal term treats x_t's key role in its own term K(q_t, k_t).
SELF_TERMS = ("exact", "stopped")


def _check_interaction(where: str, interaction, K: Kernel):
    """The declared interaction (``SharedBasis()`` for None), checked against the kernel."""
    interaction = SharedBasis() if interaction is None else interaction
    if not isinstance(interaction, Interaction):
        raise DeclarationError(
            f"{where}: interaction={interaction!r}; give one of "
            + ", ".join(f"ea.{cls.__name__}()" for cls in INTERACTIONS.values())
        )
    if K.kind == "distance" and interaction.kind == "diag-low-rank":
        raise DeclarationError(
            f"{where}: a distance kernel needs queries and keys of one kind; use "
            f"SharedBasis() or QueryKey() with K in r, or write the kernel in s"
        )
    return interaction


def _init_width_terms(term, where: str, h, width, ratio, constraint, radius, name) -> None:
    """Validate and set the fields the feed-forward terms share: h, width / ratio, the sphere, the name."""
    if width is not None and (not isinstance(width, int) or isinstance(width, bool) or width < 1):
        raise DeclarationError(f"{where}: width={width!r} must be a positive integer or None")
    if not (_real(ratio) and 0 < ratio < 1e6):
        raise DeclarationError(f"{where}: ratio={ratio!r} must be a positive number")
    if constraint is not None and radius is not None:
        raise DeclarationError(f"{where}: give either constraint= or radius=, not both")
    _check_sphere(constraint, where)
    object.__setattr__(term, "h", as_scalar(h, "h"))
    object.__setattr__(term, "width", width)
    object.__setattr__(term, "ratio", float(ratio))
    object.__setattr__(term, "constraint", constraint or Sphere(radius))
    object.__setattr__(term, "name", _check_name(name))


@dataclass(frozen=True)
class FeedForward(Term):
    """E_FF = − Σ_i g(Σ_m h(d_mᵀ x_i)) with M basis vectors (Eq. 20).

    Args:
        g: the outer scalar function (expression in ``x``, sympy, :class:`Scalar` or torch callable).
        h: the inner scalar function applied to each coordinate ``d_mᵀ x`` (same forms as ``g``).
        width: M; default ``ratio * d``.
        ratio: M / d when ``width`` is not given (paper: 1 for images, 4 for Sudoku).
        constraint: the sphere of the coordinates ``Dᵀx`` (default radius √M).
        name: term name.
    """

    g: Scalar
    h: Scalar
    width: Optional[int] = None
    ratio: float = 1.0
    constraint: Sphere = Sphere()
    name: str = "ff"

    def __init__(
        self,
        g,
        h,
        width: Optional[int] = None,
        ratio: float = 1.0,
        constraint: Optional[Sphere] = None,
        name: str = "ff",
        radius: Optional[float] = None,
    ):
        object.__setattr__(self, "g", as_scalar(g, "g"))
        _init_width_terms(self, "FeedForward", h, width, ratio, constraint, radius, name)

    family = "feedforward"

    def resolve_width(self, d: int) -> int:
        return self.width if self.width is not None else max(1, int(round(self.ratio * d)))


@dataclass(frozen=True)
class GatedFeedForward(Term):
    """Gated feed-forward with shared up/down projections, as an element-wise energy (CEM)::

        E = − Σ_i Σ_m h(d_mᵀ x_i) (v_mᵀ x̄_i),   u = RMSNorm(Dᵀx) on the sphere of radius √M, x̄ = RMSNorm(x) held fixed

    so that ``−∇_x E = D (h'(u) ⊙ Vᵀx̄)``: the up projection D is also the down projection (its transpose), and
    V gates. With h' = SiLU this is the SwiGLU feed-forward of GPT-style models with tied up/down weights.

    Args:
        h: the element-wise function (expression in ``x``, sympy, :class:`Scalar` or torch callable).
        width: M; default ``ratio * d``.
        ratio: M / d when ``width`` is not given.
        constraint: the sphere of the coordinates ``Dᵀx`` (default radius √M).
        name: term name.
        radius: shorthand for ``constraint=Sphere(radius)``.
    """

    h: Scalar
    width: Optional[int] = None
    ratio: float = 1.0
    constraint: Sphere = Sphere()
    name: str = "ff"

    def __init__(
        self,
        h,
        width: Optional[int] = None,
        ratio: float = 1.0,
        constraint: Optional[Sphere] = None,
        name: str = "ff",
        radius: Optional[float] = None,
    ):
        _init_width_terms(self, "GatedFeedForward", h, width, ratio, constraint, radius, name)

    family = "gated feedforward"

    def resolve_width(self, d: int) -> int:
        return self.width if self.width is not None else max(1, int(round(self.ratio * d)))


_Term = Term  # the older private name


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.isidentifier() or not name.isascii() or len(name) > 64:
        raise DeclarationError(
            f"term name {name!r} must be an ASCII Python identifier (at most 64 characters) such as 'attn' or 'ff'"
        )
    import torch.nn as nn

    if name.startswith("_") or hasattr(nn.ModuleDict(), name):  # an instance: 'training' is set in __init__
        raise DeclarationError(
            f"term name {name!r} is taken by torch.nn.ModuleDict (or private); choose another, "
            f"e.g. 'attn_{name.strip('_') or 'x'}'"
        )
    return name


def _check_sphere(constraint, where: str):
    if constraint is not None and not isinstance(constraint, Sphere):
        raise DeclarationError(
            f"{where}: constraint={constraint!r} must be an ea.Sphere(radius=..., eps=...) or None; "
            f"for a radius alone write radius=..."
        )
    return constraint


@dataclass(frozen=True)
class Energy:
    """A sum of named terms. ``E1 + E2`` concatenates terms; names are made unique (``attn``, ``attn_2``)."""

    terms: tuple

    def __post_init__(self):
        if not self.terms:
            raise DeclarationError("Energy: needs at least one term")
        seen: dict[str, int] = {}
        fixed = []
        for t in self.terms:
            if not isinstance(t, Term):
                raise DeclarationError(
                    f"Energy: {type(t).__name__} {t!r:.80} is not an energy term (ea.Attention, "
                    f"ea.FeedForward, ... or a subclass of energyarch.energy.Term)"
                )
            if t.name in seen:
                seen[t.name] += 1
                t = t.renamed(f"{t.name}_{seen[t.name]}")
            seen.setdefault(t.name, 1)
            fixed.append(t)
        object.__setattr__(self, "terms", tuple(fixed))

    def __add__(self, other) -> "Energy":
        if isinstance(other, Energy):
            return Energy(self.terms + other.terms)
        if isinstance(other, Term):
            return Energy(self.terms + (other,))
        return NotImplemented

    def __iter__(self):
        return iter(self.terms)

    def __len__(self):
        return len(self.terms)

    def __getitem__(self, name: str) -> Term:
        for t in self.terms:
            if t.name == name:
                return t
        raise KeyError(f"no term named {name!r}; terms: {[t.name for t in self.terms]}")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]


def as_energy(value) -> Energy:
    if isinstance(value, Energy):
        return value
    if isinstance(value, Term):
        return Energy((value,))
    raise DeclarationError(
        f"expected an Energy or an energy term (ea.Attention, ea.FeedForward, ...), got {type(value).__name__}"
    )


def primitives_of(term: Term) -> dict:
    """The term's primitives by role: its :class:`Scalar` and :class:`Kernel` fields, and a kernel's feature map
    as ``'phi'``.

    >>> sorted(primitives_of(FeedForward(g="x", h="relu(x)**2/2")))
    ['g', 'h']
    """
    out: dict = {}
    for f in fields(term):
        value = getattr(term, f.name)
        if isinstance(value, (Scalar, Kernel)):
            out[f.name] = value
            if isinstance(value, Kernel) and value.phi is not None:
                out["phi"] = value.phi
    return out


def params_of(term: Term) -> Mapping[str, float]:
    """User parameters declared on the term's primitives (merged)."""
    out: dict[str, float] = {}
    for prim in primitives_of(term).values():
        out.update(dict(prim.params))
    return out
