"""Verification helpers users can call on their own energies (the ``assert_equivariant`` idea of e3nn).

:func:`verify` checks, in float64 on random inputs, for every term of a compiled step:

1. the emitted ``∇_Z E`` equals ``torch.func.grad`` of an independent reference energy (evaluated by
   walking the declared expressions, not the emitted code): max abs diff ≤ ``rtol`` × max |reference|;
2. the emitted update ``X ↦ X'`` equals the update of the autodiff-path module with the same weights, and
   the update built from the reference gradient (same relative tolerance);
3. a small step decreases the term's energy (evaluated at the constrained point, as in the paper's Fig. 5);
4. the kernel is smooth on the constraint set: its derivative is finite and bounded at the ends of the range the
   sphere allows (:func:`kernel_smoothness`; the token with itself sits at one end).

>>> import energyarch as ea
>>> report = ea.verify(ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2), d=8))
>>> report.ok
True
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, cast

import torch
from torch import Tensor

from .compile import EnergyStep, compile as compile_energy
from .derivation import family_of
from .energy import Attention, CausalAttention, GatedFeedForward, Term, params_of
from .errors import VerificationError
from .expr import evaluate
from .primitives import Kernel
from .runtime import CausalTermUpdate, GatedTermUpdate, TermUpdate
from .runtime_qk import QKTermUpdate


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
    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d}
    return declared_energy(term, Z, env)


def _full(value, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.full_like(like, float(value))


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
    grad_scale: float = 1.0      # max |∇_Z E| of the reference
    update_scale: float = 1.0    # max |X' − X| of the reference update
    finite: bool = True          # False when a gradient, update or energy overflowed to inf / NaN
    per_token_descent: Optional[bool] = None   # causal terms: every token's own E_t fell under its own step
    stationary: bool = False     # the direction is exactly zero (e.g. a saturated f): nothing can descend
    not_smooth: Optional[str] = None   # why the kernel's derivative is unbounded on the constraint set (or None)

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
        return (t.finite and t.not_smooth is None and t.grad_rel_diff <= self.rtol and t.update_rel_diff <= self.rtol
                and t.decreased)

    @property
    def ok(self) -> bool:
        return all(self.term_ok(t) for t in self.terms)

    def table(self) -> str:
        rows = ["| term | pattern | path | max abs Δ∇ | rel Δ∇ | max abs ΔX' | rel ΔX' | E before | E after − E before "
                "| descends |", "|---|---|---|---|---|---|---|---|---|---|"]
        for t in self.terms:
            if t.not_smooth is not None:
                rows.append(f"| {t.name} | {t.pattern} | {t.path} | NOT SMOOTH ON THE SPHERE: {t.not_smooth} "
                            f"| | | | | | |")
                continue
            if not t.finite:
                rows.append(f"| {t.name} | {t.pattern} | {t.path} | OVERFLOW: inf or NaN in the gradient, update or "
                            f"energy (E = {t.energy_before:.6g}); reduce beta / the kernel's scale or use a bounded f "
                            f"| | | | | | |")
                continue
            rows.append(f"| {t.name} | {t.pattern} | {t.path} | {t.grad_max_abs_diff:.2e} | {t.grad_rel_diff:.1e} "
                        f"| {t.update_max_abs_diff:.2e} | {t.update_rel_diff:.1e} "
                        f"| {t.energy_before:.6g} | {t.energy_after - t.energy_before:.3e} "
                        f"| {'yes' if t.decreased else 'NO'} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return (f"verification ({self.mode} mode, rtol {self.rtol:g}): {'OK' if self.ok else 'FAILED'}\n"
                + self.table())


def _stationary(direction: Tensor, t: float, grad_scale: float, e0: Tensor, e1: Tensor) -> bool:
    """Nothing can descend: the direction is zero, or the step's first-order change of the energy is below the
    float64 resolution of the energy (e.g. a saturated f whose derivative is 1e-17) and the energy did not move."""
    if bool((direction == 0).all()):
        return True
    change = t * float(direction.abs().max()) * grad_scale * direction.shape[-2]
    resolution = 8 * torch.finfo(torch.float64).eps * max(1.0, float(e0.abs().sum()))
    return bool((e1 == e0).all()) and change <= resolution


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
    R2 = module.radius ** 2
    var = "s" if K.kind == "inner" else "r"
    ends = [(R2, -1.0), (-R2, 1.0)] if K.kind == "inner" else [(0.0, 1.0), (4 * R2, -1.0)]
    where = {R2: "s = R² (each token with itself)", -R2: "s = −R²", 0.0: "r = 0 (each token with itself)",
             4 * R2: "r = 4R²"}
    for end, inward in ends:
        gaps = torch.tensor([0.0, 1e-10, 1e-4], dtype=torch.float64) * max(1.0, abs(R2))
        x = (end + inward * gaps).requires_grad_(True)
        with torch.enable_grad():
            value = _full(evaluate(K.expr, {**env, var: x}), x)
            (grad,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
        if not bool(torch.isfinite(value).all()):
            return None                     # the kernel itself overflows there: reported as overflow, not here
        grad = torch.zeros_like(x) if grad is None else grad.detach()
        at, near, far = (float(v) for v in grad.abs())
        label = f"{var}: {K.expr}"
        if not math.isfinite(at) or not math.isfinite(near):
            return (f"the kernel's derivative is {'NaN' if math.isnan(at) else 'infinite'} at {where[end]} "
                    f"(kernel in {label}); use a kernel smooth on the whole sphere, e.g. exp(beta*s)")
        if near > 1e3 and near > 100 * max(far, 1e-300):
            return (f"the kernel's derivative grows without bound towards {where[end]} (|κ'| = {near:.3g} at "
                    f"1e-10 from it, {far:.3g} at 1e-4; kernel in {label}); use a kernel smooth on the whole sphere")
    return None


def _finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def verify(step: EnergyStep, *, batch: int = 2, tokens: int = 7, seed: int = 0, rtol: float = 1e-9,
           step_size: float = 1e-4, raise_on_fail: bool = True, tol: Optional[float] = None) -> VerificationReport:
    """Check a compiled step numerically in float64 (see module docstring).

    Errors are relative: ``max |emitted − reference| ≤ rtol · max |reference|`` for the gradient and for the
    update (``tol`` is an older name for ``rtol``). Overflow (inf / NaN anywhere) is reported as such. Raises
    :class:`~energyarch.errors.VerificationError` with the table if a check fails and ``raise_on_fail``.
    """
    if not isinstance(step, EnergyStep):
        raise VerificationError(f"verify: expected a compiled EnergyStep (from energyarch.compile), got {type(step).__name__}")
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
        ref = reference.terms[name]  # the autodiff module of the same term: the same runtime class
        if isinstance(module, GatedTermUpdate):
            report.terms.append(_check_gated(name, cast(GatedFeedForward, term), module, cast(GatedTermUpdate, ref),
                                             X, step.derivations[name], step_size))
            continue
        if isinstance(module, QKTermUpdate):
            report.terms.append(_check_qk(name, cast(Attention, term), module, cast(QKTermUpdate, ref), X,
                                          step.derivations[name], step_size))
            continue
        if isinstance(module, CausalTermUpdate):
            report.terms.append(_check_causal(name, cast(CausalAttention, term), module, cast(CausalTermUpdate, ref),
                                              X, step.derivations[name], step_size))
            continue
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
            # a small step: at most step_size in any coordinate of X, however large the gradient
            t = step_size / max(1.0, float(direction.abs().max()))
            e0 = module.energy(X)
            e1 = module.energy(X + t * direction)
        finite = _finite(G, G_ref, X1, X1_ref, e0, e1)
        report.terms.append(TermCheck(
            name=name, pattern=step.derivations[name].pattern, path=step.derivations[name].path,
            grad_max_abs_diff=float((G - G_ref).abs().max()), update_max_abs_diff=float(X1_ref.max()),
            energy_before=float(e0.sum()), energy_after=float(e1.sum()), step=t,
            grad_scale=float(G_ref.abs().max()), update_scale=float((0.1 * dir_ref).abs().max()), finite=finite,
            stationary=_stationary(direction, t, float(G_ref.abs().max()), e0, e1),
        ))
    for check, (name, module) in zip(report.terms, terms64.items()):
        check.not_smooth = kernel_smoothness(step.energy_decl[name], module)
    if raise_on_fail and not report.ok:
        raise VerificationError(str(report))
    return report


# ------------------------------------------------------------------------------------------------------------
# bidirectional attention with an interaction: both roles
# ------------------------------------------------------------------------------------------------------------

def declared_qk_energy(term: Attention, Q: Tensor, K: Tensor, env: Mapping[str, float]) -> Tensor:
    """E = Σ_h Σ_i f(Σ_j K(q_i, k_j)) at queries ``Q`` and keys ``K`` (…, H, N, p), from the declaration alone
    (shape ``(…,)``); a distance kernel sees ``r = ‖q_i − k_j‖²`` formed from differences."""
    env = {**env, **params_of(term)}

    def scalar(prim, t):
        return prim.fn(t) if prim.fn is not None else _full(evaluate(prim.expr, {**env, "x": t}), t)

    Kd: Kernel = term.K
    if Kd.kind == "callable":
        rows = torch.vmap(torch.vmap(cast(Callable, Kd.fn), in_dims=(None, 0)), in_dims=(0, None))
        flat_q, flat_k = Q.reshape(-1, *Q.shape[-2:]), K.reshape(-1, *K.shape[-2:])
        Kmat = torch.stack([rows(q, k) for q, k in zip(flat_q, flat_k)]).reshape(*Q.shape[:-1], K.shape[-2])
    elif Kd.kind == "inner":
        Phi_q = scalar(Kd.phi, Q) if Kd.phi is not None else Q
        Phi_k = scalar(Kd.phi, K) if Kd.phi is not None else K
        Kmat = _full(evaluate(Kd.expr, {**env, "s": Phi_q @ Phi_k.transpose(-1, -2)}), Q[..., :1])
    else:
        r = (Q.unsqueeze(-2) - K.unsqueeze(-3)).pow(2).sum(-1)           # (…, N, N) ‖q_i − k_j‖²
        Kmat = _full(evaluate(Kd.expr, {**env, "r": r}), r)
    return scalar(term.f, Kmat.sum(-1)).sum(dim=(-1, -2))


def _check_qk(name: str, term: Attention, module: QKTermUpdate, reference: QKTermUpdate, X: Tensor, dv,
              step_size: float) -> TermCheck:
    """(∂E/∂Q, ∂E/∂K) vs ``torch.func.grad`` of the declared energy in both roles; the update vs the autodiff
    module and vs the reference gradients mapped back through the interaction; a small step lowers E."""
    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d}
    with torch.no_grad():
        Q, K, Q_raw, K_raw = module.query_key(X)
        G_q, G_k = module.grad_Z(Q, K)
        R_q, R_k = torch.func.grad(lambda Q_, K_: declared_qk_energy(term, Q_, K_, env).sum(), argnums=(0, 1))(Q, K)
        G, G_ref = torch.cat([G_q, G_k], -1), torch.cat([R_q, R_k], -1)
        if module.mode != "paper":
            R_q, R_k = module.constrain(R_q, Q, Q_raw), module.constrain(R_k, K, K_raw)
        dir_ref = -module.interaction.pullback(module, R_q, R_k, None)
        direction = module.direction(X)
        X1 = module(X, 0.1)
        X1_ref = torch.maximum((X1 - reference(X, 0.1)).abs(), (X1 - (X + 0.1 * dir_ref)).abs())
        t = step_size / max(1.0, float(direction.abs().max()))
        e0, e1 = module.energy(X), module.energy(X + t * direction)
    return TermCheck(name=name, pattern=dv.pattern, path=dv.path, grad_max_abs_diff=float((G - G_ref).abs().max()),
                     update_max_abs_diff=float(X1_ref.max()), energy_before=float(e0.sum()),
                     energy_after=float(e1.sum()), step=t, grad_scale=float(G_ref.abs().max()),
                     update_scale=float((0.1 * dir_ref).abs().max()), finite=_finite(G, G_ref, X1, X1_ref, e0, e1),
                     stationary=_stationary(direction, t, float(G_ref.abs().max()), e0, e1))


# ------------------------------------------------------------------------------------------------------------
# causal conditional energies: token by token
# ------------------------------------------------------------------------------------------------------------

def declared_conditional_energy(term: Attention, q: Tensor, keys: Tensor, k_self: Tensor,
                                env: Mapping[str, float]) -> Tensor:
    """E_t = f(Σ_{s<t} K(q_t, k_s) + K(q_t, k_t)) for one token and head, from the declaration alone.

    ``q`` (p,), ``keys`` (t, p) the earlier tokens' keys, ``k_self`` (p,) the token's own key.
    """
    env = {**env, **params_of(term)}

    def scalar(prim, x):
        return prim.fn(x) if prim.fn is not None else _full(evaluate(prim.expr, {**env, "x": x}), x)

    K: Kernel = term.K
    all_keys = torch.cat([keys, k_self.unsqueeze(0)], dim=0)                  # (t + 1, p)
    if K.kind == "callable":
        values = torch.stack([cast(Callable, K.fn)(q, k) for k in all_keys.unbind(0)])
    elif K.kind == "inner":
        Phi_q = scalar(K.phi, q) if K.phi is not None else q
        Phi_k = scalar(K.phi, all_keys) if K.phi is not None else all_keys
        s = (Phi_k * Phi_q).sum(-1)
        values = _full(evaluate(K.expr, {**env, "s": s}), s)
    else:
        r = (all_keys - q).pow(2).sum(-1)
        values = _full(evaluate(K.expr, {**env, "r": r}), r)
    return scalar(term.f, values.sum())


def causal_reference_grads(term: CausalAttention, module: CausalTermUpdate, Q: Tensor,
                           K: Tensor) -> tuple[Tensor, Tensor]:
    """(∂E_t/∂q_t, ∂E_t/∂k_t) for every token and head by ``torch.func.grad`` of each token's own conditional
    energy in a loop (independent of the emitted module and of the stop-gradient construction)."""
    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d}
    G_q, G_k = torch.zeros_like(Q), torch.zeros_like(K)
    for idx in itertools.product(*[range(n) for n in Q.shape[:-2]]):      # every batch element and head
        for t in range(Q.shape[-2]):
            def E(q, k_self):
                return declared_conditional_energy(term, q, K[idx][:t], k_self, env)
            gq, gk = torch.func.grad(E, argnums=(0, 1))(Q[idx][t], K[idx][t])
            G_q[idx + (t,)] = gq
            if term.self_term == "exact":
                G_k[idx + (t,)] = gk
    return G_q, G_k


def _check_causal(name: str, term: CausalAttention, module: CausalTermUpdate, reference: CausalTermUpdate,
                  X: Tensor, dv, step_size: float) -> TermCheck:
    """Gradients of each token's conditional energy vs a per-token torch.func.grad; the update vs the autodiff
    module; and token by token, a small step on x_t alone lowers E_t(x_t | x_<t)."""
    with torch.no_grad():
        Q, K, _, _ = module.query_key(X)
        G_q, G_k = module.grad_Z(Q, K)
        R_q, R_k = causal_reference_grads(term, module, Q, K)
        G, G_ref = torch.cat([G_q, G_k], -1), torch.cat([R_q, R_k], -1)
        direction = module.direction(X)
        X1 = module(X, 0.1)
        X1_ref = (X1 - reference(X, 0.1)).abs()
        e_tokens = module.token_energies(X)                                  # (B, N)
        t_step = step_size / max(1.0, float(direction.abs().max()))
        e_after = torch.zeros_like(e_tokens)
        for t in range(X.shape[-2]):                                          # move x_t alone, others fixed
            Xt = X.clone()
            Xt[..., t, :] = X[..., t, :] + t_step * direction[..., t, :]
            Q_t, K_t, _, _ = module.query_key(Xt)
            K_t = K_t if term.self_term == "exact" else K              # a stopped self-term holds k_t fixed
            e_after[..., t] = module.energy_Z(Q_t, K_t).sum(-2)[..., t]
        moving = direction.abs().amax(-1) > 1e-12 * max(1e-300, float(direction.abs().max()))   # (B, N)
        tol = 1e-13 * e_tokens.abs().clamp_min(1)
        descends = bool(((e_after <= e_tokens + tol) & (~moving | (e_after < e_tokens))).all())
    finite = _finite(G, G_ref, X1, e_tokens, e_after)
    # energy_after reports the summed per-token energies after each token's own small step
    return TermCheck(name=name, pattern=dv.pattern, path=dv.path, grad_max_abs_diff=float((G - G_ref).abs().max()),
                     update_max_abs_diff=float(X1_ref.max()), energy_before=float(e_tokens.sum()),
                     energy_after=float(e_after.sum()), step=t_step, grad_scale=float(G_ref.abs().max()),
                     update_scale=float((X1 - X).abs().max()), finite=finite,
                     per_token_descent=descends)


def _check_gated(name: str, term: GatedFeedForward, module: GatedTermUpdate, reference: GatedTermUpdate, X: Tensor, dv,
                 step_size: float) -> TermCheck:
    """Gated feed-forward: ∇_U of −Σ h(U) ⊙ V (V fixed) from the declaration, the update vs the autodiff module,
    and a small step lowers the energy with the gate held at its value."""
    env = {"p": module.head_dim, "M": module.head_dim, "d": module.d, **params_of(term)}

    def declared(U_, V_):
        h = term.h.fn(U_) if term.h.fn is not None else _full(evaluate(term.h.expr, {**env, "x": U_}), U_)
        return -(h * V_).sum()

    with torch.no_grad():
        U, V = module.normalize(module.coords(X)), module.gate(X)
        G = module.grad_Z(U, V)
        G_ref = torch.func.grad(declared)(U, V)
        direction = module.direction(X)
        X1 = module(X, 0.1)
        X1_ref = (X1 - reference(X, 0.1)).abs()
        t = step_size / max(1.0, float(direction.abs().max()))
        U1 = module.normalize(module.coords(X + t * direction))
        e0, e1 = module.energy_Z(U, V), module.energy_Z(U1, V)              # the gate held at its value
    return TermCheck(name=name, pattern=dv.pattern, path=dv.path, grad_max_abs_diff=float((G - G_ref).abs().max()),
                     update_max_abs_diff=float(X1_ref.max()), energy_before=float(e0.sum()),
                     energy_after=float(e1.sum()), step=t, grad_scale=float(G_ref.abs().max()),
                     update_scale=float((X1 - X).abs().max()), finite=_finite(G, G_ref, X1, e0, e1),
                     stationary=_stationary(direction, t, float(G_ref.abs().max()), e0, e1))
