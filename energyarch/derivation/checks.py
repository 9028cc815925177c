"""What :func:`energyarch.verify` measures for one term, and the check every family inherits.

A family's :meth:`~energyarch.derivation.Family.check` returns a :class:`TermCheck`; the default,
:func:`gradient_check`, compares the emitted ``∇_Z E`` with ``torch.func.grad`` of the family's
:meth:`~energyarch.derivation.Family.reference_energy` (written from the declaration alone), the emitted update with
the autodiff module's and with the update built from the reference gradient, and checks that a small step descends.
Families whose runtime is not "one gradient in Z" (causal, gated, query-key) override ``check`` in their own file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover - annotations only
    from ..energy import Term
    from .core import Derivation, Family


def _rel(diff: float, scale: float) -> float:
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


@dataclass
class TermCheck:
    """Result of the checks on one term. Errors are absolute and relative to the size of what is compared."""

    name: str
    pattern: str
    path: str
    grad_max_abs_diff: float
    update_max_abs_diff: float
    energy_before: float
    energy_after: float
    step: float
    grad_scale: float = 1.0  # max |∇_Z E| of the reference
    update_scale: float = 1.0  # max |X' − X| of the reference update
    finite: bool = True  # False when a gradient, update or energy overflowed to inf / NaN
    per_token_descent: Optional[bool] = None  # causal terms: every token's own E_t fell under its own step
    stationary: bool = False  # the direction is exactly zero (e.g. a saturated f): nothing can descend
    not_smooth: Optional[str] = None  # why the kernel's derivative is unbounded on the constraint set (or None)

    @classmethod
    def measured(
        cls,
        term: Term,
        dv: Derivation,
        *,
        G: Tensor,
        G_ref: Tensor,
        X1: Tensor,
        X1_diff: Tensor,
        e0: Tensor,
        e1: Tensor,
        step: float,
        update_scale: Tensor,
        **extra: Any,
    ) -> "TermCheck":
        """The check of ``term`` from what was measured: its gradient ``G`` and the reference ``G_ref``, the update
        ``X1`` and its distance to the references ``X1_diff``, the energies before and after a step of ``step``, the
        size of the reference update; ``extra`` sets ``stationary`` or ``per_token_descent``."""
        return cls(
            name=term.name,
            pattern=dv.pattern,
            path=dv.path,
            grad_max_abs_diff=float((G - G_ref).abs().max()),
            update_max_abs_diff=float(X1_diff.max()),
            energy_before=float(e0.sum()),
            energy_after=float(e1.sum()),
            step=step,
            grad_scale=float(G_ref.abs().max()),
            update_scale=float(update_scale.abs().max()),
            finite=finite(G, G_ref, X1, X1_diff, e0, e1),
            **extra,
        )

    @property
    def grad_rel_diff(self) -> float:
        return _rel(self.grad_max_abs_diff, self.grad_scale)

    @property
    def update_rel_diff(self) -> float:
        return _rel(self.update_max_abs_diff, self.update_scale)

    @property
    def decreased(self) -> bool:
        if self.per_token_descent is not None:
            return self.per_token_descent
        if self.stationary:
            return self.energy_after <= self.energy_before
        return self.energy_after < self.energy_before


def stationary(direction: Tensor, t: float, grad_scale: float, e0: Tensor, e1: Tensor) -> bool:
    """Nothing can descend: the direction is zero, or the step's first-order change of the energy is below the
    float64 resolution of the energy (e.g. a saturated f whose derivative is 1e-17) and the energy did not move."""
    if bool((direction == 0).all()):
        return True
    change = t * float(direction.abs().max()) * grad_scale * direction.shape[-2]
    resolution = 8 * torch.finfo(torch.float64).eps * max(1.0, float(e0.abs().sum()))
    return bool((e1 == e0).all()) and change <= resolution


def finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def module_env(module) -> dict[str, float]:
    """The sizes a reference energy binds (``beta``, ``p``, ``M``, ``d``) for a compiled term module."""
    return {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d}


def gradient_check(
    family: Family, term: Term, module, reference, X: Tensor, dv: Derivation, step_size: float
) -> TermCheck:
    """The default check: ``∇_Z E`` vs ``torch.func.grad`` of ``family.reference_energy`` at the constrained
    coordinates; the update vs the autodiff module's (``reference``) and vs the reference gradient mapped back for
    the module's constraint mode; a step of at most ``step_size`` per coordinate lowers the energy."""
    env = module_env(module)

    def energy(Z_: Tensor) -> Tensor:
        return family.reference_energy(term, Z_, env)

    with torch.no_grad():
        Z = module.normalize(module.coords(X))
        G = module.grad_Z(Z)
        G_ref = torch.func.grad(lambda Z_: energy(Z_).sum())(Z)
        if module.mode == "exact":  # the true gradient of E(RMSNorm(X W)) w.r.t. X
            dir_ref = -torch.func.grad(lambda X_: energy(module.normalize(module.coords(X_))).sum())(X)
        else:
            Gc = G_ref if module.mode == "paper" else G_ref - (G_ref * Z).sum(-1, keepdim=True) * Z / module.radius**2
            dir_ref = -(Gc.transpose(-2, -3).flatten(-2) @ module.weight.T)
    return update_check(term, dv, module, reference, X, G, G_ref, dir_ref, step_size)


def update_check(
    term: Term,
    dv: Derivation,
    module,
    reference,
    X: Tensor,
    G: Tensor,
    G_ref: Tensor,
    dir_ref: Tensor,
    step_size: float,
) -> TermCheck:
    """The rest of a check once the gradients are in: the update ``module(X, 0.1)`` vs the autodiff module's
    (``reference``) and vs ``X + 0.1 dir_ref`` (the reference direction), and a step of at most ``step_size`` per
    coordinate of X along ``module.direction`` lowers ``module.energy``."""
    with torch.no_grad():
        direction = module.direction(X)
        X1 = module(X, 0.1)
        X1_ref = torch.maximum((X1 - reference(X, 0.1)).abs(), (X1 - (X + 0.1 * dir_ref)).abs())
        t = step_size / max(1.0, float(direction.abs().max()))  # at most step_size in any coordinate of X
        e0, e1 = module.energy(X), module.energy(X + t * direction)
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
        update_scale=0.1 * dir_ref,
        stationary=stationary(direction, t, float(G_ref.abs().max()), e0, e1),
    )
