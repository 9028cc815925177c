"""Verification helpers users can call on their own energies (the ``assert_equivariant`` idea of e3nn).

:func:`verify` checks, in float64 on random inputs, for every term of a compiled step:

1. the emitted ``∇_Z E`` equals ``torch.func.grad`` of an independent reference energy (evaluated by
   walking the declared expressions, not the emitted code): max abs diff ≤ ``tol``;
2. the emitted update ``X ↦ X'`` equals the update of the autodiff-path module with the same weights;
3. a small step decreases the term's energy (evaluated at the constrained point, as in the paper's Fig. 5).

>>> import energyarch as ea
>>> report = ea.verify(ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2), d=8))
>>> report.ok
True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .compile import EnergyStep, compile as compile_energy
from .energy import Attention, Term, params_of
from .errors import VerificationError
from .expr import evaluate
from .primitives import Kernel
from .runtime import TermUpdate, pairwise_kernel


def reference_energy(term: Term, module: TermUpdate, Z: Tensor) -> Tensor:
    """E of ``term`` at coordinates ``Z`` (…, H, N, p), straight from the declaration (shape ``(…,)``)."""
    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d, **params_of(term)}

    def scalar(prim, t):
        return prim.fn(t) if prim.fn is not None else _full(evaluate(prim.expr, {**env, "x": t}), t)

    if isinstance(term, Attention):
        K: Kernel = term.K
        if K.kind == "callable":
            Kmat = pairwise_kernel(K.fn, Z)
        else:
            Phi = scalar(K.phi, Z) if K.phi is not None else Z
            if K.kind == "inner":
                Kmat = _full(evaluate(K.expr, {**env, "s": Phi @ Phi.transpose(-1, -2)}), Z[..., :1])
            else:
                # constrained energy: on the sphere ‖x − y‖² = 2R² − 2x·y (DESIGN, on-sphere reduction)
                r = 2 * module.radius**2 - 2 * (Z @ Z.transpose(-1, -2))
                Kmat = _full(evaluate(K.expr, {**env, "r": r}), r)
        return scalar(term.f, Kmat.sum(-1)).sum(dim=(-1, -2))
    Sigma = scalar(term.h, Z).sum(-1)
    return -scalar(term.g, Sigma).sum(dim=(-1, -2))


def _full(value, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.full_like(like, float(value))


@dataclass
class TermCheck:
    """Result of the checks on one term."""

    name: str
    pattern: str
    path: str
    grad_max_abs_diff: float
    update_max_abs_diff: float
    energy_before: float
    energy_after: float
    step: float

    @property
    def decreased(self) -> bool:
        return self.energy_after < self.energy_before


@dataclass
class VerificationReport:
    """All term checks; ``ok`` when every gradient matches within ``tol`` and every step descends."""

    terms: list[TermCheck] = field(default_factory=list)
    tol: float = 1e-9
    mode: str = "paper"

    @property
    def ok(self) -> bool:
        return all(t.grad_max_abs_diff <= self.tol and t.update_max_abs_diff <= self.tol and t.decreased
                   for t in self.terms)

    def table(self) -> str:
        rows = ["| term | pattern | path | max abs Δ∇ | max abs ΔX' | E before | E after − E before | descends |",
                "|---|---|---|---|---|---|---|---|"]
        for t in self.terms:
            rows.append(f"| {t.name} | {t.pattern} | {t.path} | {t.grad_max_abs_diff:.2e} | {t.update_max_abs_diff:.2e} "
                        f"| {t.energy_before:.6g} | {t.energy_after - t.energy_before:.3e} "
                        f"| {'yes' if t.decreased else 'NO'} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return f"verification ({self.mode} mode, tol {self.tol:g}): {'OK' if self.ok else 'FAILED'}\n" + self.table()


def verify(step: EnergyStep, *, batch: int = 2, tokens: int = 7, seed: int = 0, tol: float = 1e-9,
           step_size: float = 1e-4, raise_on_fail: bool = True) -> VerificationReport:
    """Check a compiled step numerically in float64 (see module docstring). Raises
    :class:`~energyarch.errors.VerificationError` with the table if a check fails and ``raise_on_fail``."""
    if not isinstance(step, EnergyStep):
        raise VerificationError(f"verify: expected a compiled EnergyStep (from energyarch.compile), got {type(step).__name__}")
    step64 = copy.deepcopy(step).to(torch.float64)
    mode = next(iter(step64.terms.values())).mode
    reference = compile_energy(step.energy_decl, step.d, mode=mode, path="autodiff", dtype=torch.float64)
    reference.load_state_dict(step64.state_dict())
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, tokens, step.d, generator=gen, dtype=torch.float64)
    report = VerificationReport(tol=tol, mode=mode)
    for name, module in step64.terms.items():
        term = step.energy_decl[name]
        with torch.no_grad():
            Z = module.normalize(module.coords(X))
            G = module.grad_Z(Z)
            G_ref = torch.func.grad(lambda Z_: reference_energy(term, module, Z_).sum())(Z)
            direction = module.direction(X)
            # independent reference direction for the constraint mode
            if mode == "exact":   # true gradient of E(RMSNorm(X W)) w.r.t. X
                dir_ref = -torch.func.grad(
                    lambda X_: reference_energy(term, module, module.normalize(module.coords(X_))).sum())(X)
            else:
                Gc = G_ref if mode == "paper" else G_ref - (G_ref * Z).sum(-1, keepdim=True) * Z / module.radius**2
                dir_ref = -(Gc.transpose(-2, -3).flatten(-2) @ module.weight.T)
            X1 = module(X, 0.1)
            X1_ref = torch.maximum((X1 - reference.terms[name](X, 0.1)).abs(), (X1 - (X + 0.1 * dir_ref)).abs())
            e0 = module.energy(X)
            e1 = module.energy(X + step_size * direction)
        report.terms.append(TermCheck(
            name=name, pattern=step.derivations[name].pattern, path=step.derivations[name].path,
            grad_max_abs_diff=float((G - G_ref).abs().max()), update_max_abs_diff=float(X1_ref.max()),
            energy_before=float(e0.sum()), energy_after=float(e1.sum()), step=step_size,
        ))
    if raise_on_fail and not report.ok:
        raise VerificationError(str(report))
    return report
