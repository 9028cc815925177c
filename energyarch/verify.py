"""Verification helpers users can call on their own energies (the ``assert_equivariant`` idea of e3nn).

:func:`verify` checks, in float64 on random inputs, for every term of a compiled step:

1. the emitted ``∇_Z E`` equals ``torch.func.grad`` of an independent reference energy (evaluated by
   walking the declared expressions, not the emitted code): max abs diff ≤ ``rtol`` × max |reference|;
2. the emitted update ``X ↦ X'`` equals the update of the autodiff-path module with the same weights, and
   the update built from the reference gradient (same relative tolerance);
3. a small step decreases the term's energy (evaluated at the constrained point, as in the paper's Fig. 5);
4. the kernel is smooth on the constraint set: its derivative is finite and bounded at the ends of the range the
   sphere allows (:func:`kernel_smoothness`; the token with itself sits at one end).

Each check is the term's family's (:meth:`energyarch.derivation.Family.check`): causal terms are checked token by
token, gated feed-forward with the gate held, query-key attention in both roles; a family of your own inherits
the check above or brings its own.

>>> import energyarch as ea
>>> report = ea.verify(ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2), d=8))
>>> report.ok
True
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, cast

import torch
from torch import Tensor

from .compile import EnergyStep, compile as compile_energy
from .derivation import family_of
from .derivation.causal import causal_reference_grads, declared_conditional_energy  # noqa: F401 - re-exported
from .derivation.checks import TermCheck, module_env
from .derivation.qk_attention import declared_qk_energy  # noqa: F401 - re-exported
from .energy import Term, params_of
from .errors import VerificationError
from .expr import evaluate
from .runtime import TermUpdate


def declared_energy(term: Term, Z: Tensor, env: Mapping[str, float]) -> Tensor:
    """E of ``term`` at coordinates ``Z`` (…, H, N, p), built from the declaration alone (shape ``(…,)``): its
    family's :meth:`~energyarch.derivation.Family.reference_energy`.

    Independent of the derivation: expressions are evaluated by walking the declared sympy trees, opaque
    primitives are called as given, and a distance kernel sees ``r = ‖z_i − z_j‖²`` formed from differences
    (never rewritten with the radius). ``env`` binds ``beta``, ``p``, ``M``, ``d``.
    """
    return family_of(term).reference_energy(term, Z, env)


def reference_energy(term: Term, module: TermUpdate, Z: Tensor) -> Tensor:
    """:func:`declared_energy` with the sizes of a compiled term module."""
    return declared_energy(term, Z, module_env(module))


def _full(value, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.full_like(like, float(value))


@dataclass
class VerificationReport:
    """All term checks; ``ok`` when every term is finite, its gradient and update match the references within
    ``rtol`` relative to their size, and a small step descends."""

    terms: list[TermCheck] = field(default_factory=list)
    rtol: float = 1e-9
    mode: str = "paper"

    @property
    def tol(self) -> float:  # the older name
        return self.rtol

    def term_ok(self, t: TermCheck) -> bool:
        return (
            t.finite
            and t.not_smooth is None
            and t.grad_rel_diff <= self.rtol
            and t.update_rel_diff <= self.rtol
            and t.decreased
        )

    @property
    def ok(self) -> bool:
        return all(self.term_ok(t) for t in self.terms)

    def table(self) -> str:
        rows = [
            "| term | pattern | path | max abs Δ∇ | rel Δ∇ | max abs ΔX' | rel ΔX' | E before | E after − E before "
            "| descends |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for t in self.terms:
            if t.not_smooth is not None:
                rows.append(
                    f"| {t.name} | {t.pattern} | {t.path} | NOT SMOOTH ON THE SPHERE: {t.not_smooth} | | | | | | |"
                )
                continue
            if not t.finite:
                rows.append(
                    f"| {t.name} | {t.pattern} | {t.path} | OVERFLOW: inf or NaN in the gradient, update or "
                    f"energy (E = {t.energy_before:.6g}); reduce beta / the kernel's scale or use a bounded f "
                    f"| | | | | | |"
                )
                continue
            rows.append(
                f"| {t.name} | {t.pattern} | {t.path} | {t.grad_max_abs_diff:.2e} | {t.grad_rel_diff:.1e} "
                f"| {t.update_max_abs_diff:.2e} | {t.update_rel_diff:.1e} "
                f"| {t.energy_before:.6g} | {t.energy_after - t.energy_before:.3e} "
                f"| {'yes' if t.decreased else 'NO'} |"
            )
        return "\n".join(rows)

    def __str__(self) -> str:
        return f"verification ({self.mode} mode, rtol {self.rtol:g}): {'OK' if self.ok else 'FAILED'}\n" + self.table()


def kernel_smoothness(term: Term, module: TermUpdate) -> Optional[str]:
    """Why the kernel's derivative is unbounded where the constraint set reaches, or None.

    The compiled step evaluates κ'(s) (κ'(r) for a distance kernel) at every pair of tokens, the token with itself
    included: s = R² (r = 0) on the diagonal, s ∈ [−R², R²] (r ∈ [0, 4R²]) in general. A derivative that is
    infinite or NaN at an end of that range where the kernel itself is finite, or grows without bound towards it (|κ'| at distance 1e-10 from the end
    more than 100 times |κ'| at 1e-4 and above 1e3), makes a step there unbounded: RMSNorm's epsilon keeps the
    norm just below R and hides it from a check at random points (e.g. the arc-cosine kernel 1 − acos(s/p)/π at
    s = p). Inner-product kernels with a feature map Φ and opaque kernels are not checked.
    """
    K = getattr(term, "K", None)
    if K is None or K.expr is None or K.kind not in ("inner", "distance") or (K.kind == "inner" and K.phi is not None):
        return None
    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d, **params_of(term)}
    R2 = module.radius**2
    var = "s" if K.kind == "inner" else "r"
    ends = [(R2, -1.0), (-R2, 1.0)] if K.kind == "inner" else [(0.0, 1.0), (4 * R2, -1.0)]
    where = {
        R2: "s = R² (each token with itself)",
        -R2: "s = −R²",
        0.0: "r = 0 (each token with itself)",
        4 * R2: "r = 4R²",
    }
    for end, inward in ends:
        gaps = torch.tensor([0.0, 1e-10, 1e-4], dtype=torch.float64) * max(1.0, abs(R2))
        x = (end + inward * gaps).requires_grad_(True)
        with torch.enable_grad():
            value = _full(evaluate(K.expr, {**env, var: x}), x)
            (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
        if not bool(torch.isfinite(value).all()):
            return None  # the kernel itself overflows there: reported as overflow, not here
        grad = torch.zeros_like(x) if grad is None else grad.detach()
        at, near, far = (float(v) for v in grad.abs())
        label = f"{var}: {K.expr}"
        if not math.isfinite(at) or not math.isfinite(near):
            return (
                f"the kernel's derivative is {'NaN' if math.isnan(at) else 'infinite'} at {where[end]} "
                f"(kernel in {label}); use a kernel smooth on the whole sphere, e.g. exp(beta*s)"
            )
        if near > 1e3 and near > 100 * max(far, 1e-300):
            return (
                f"the kernel's derivative grows without bound towards {where[end]} (|κ'| = {near:.3g} at "
                f"1e-10 from it, {far:.3g} at 1e-4; kernel in {label}); use a kernel smooth on the whole sphere"
            )
    return None


def verify(
    step: EnergyStep,
    *,
    batch: int = 2,
    tokens: int = 7,
    seed: int = 0,
    rtol: float = 1e-9,
    step_size: float = 1e-4,
    raise_on_fail: bool = True,
    tol: Optional[float] = None,
) -> VerificationReport:
    """Check a compiled step numerically in float64 (see module docstring).

    Errors are relative: ``max |emitted − reference| ≤ rtol · max |reference|`` for the gradient and for the
    update (``tol`` is an older name for ``rtol``). Overflow (inf / NaN anywhere) is reported as such. Raises
    :class:`~energyarch.errors.VerificationError` with the table if a check fails and ``raise_on_fail``.
    """
    if not isinstance(step, EnergyStep):
        raise VerificationError(
            f"verify: expected a compiled EnergyStep (from energyarch.compile), got {type(step).__name__}"
        )
    for name, value, low in (("batch", batch, 1), ("tokens", tokens, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise VerificationError(f"verify: {name}={value!r} must be an integer >= {low}")
    if tol is not None:
        rtol = tol
    for name, number in (("rtol", rtol), ("step_size", step_size)):
        if not isinstance(number, (int, float)) or isinstance(number, bool) or not 0 < number < math.inf:
            raise VerificationError(f"verify: {name}={number!r} must be a positive finite number")
    step64 = copy.deepcopy(step).to(torch.float64)
    terms64 = cast(Mapping[str, TermUpdate], step64.terms)
    mode = next(iter(terms64.values())).mode
    reference = compile_energy(step.energy_decl, step.d, mode=mode, path="autodiff", dtype=torch.float64)
    reference.load_state_dict(step64.state_dict())
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, tokens, step.d, generator=gen, dtype=torch.float64)
    report = VerificationReport(rtol=rtol, mode=mode)
    for name, module in terms64.items():
        term = step.energy_decl[name]
        report.terms.append(
            family_of(term).check(term, module, reference.terms[name], X, step.derivations[name], step_size)
        )
    for check, (name, module) in zip(report.terms, terms64.items()):
        check.not_smooth = kernel_smoothness(step.energy_decl[name], module)
    if raise_on_fail and not report.ok:
        raise VerificationError(str(report))
    return report
