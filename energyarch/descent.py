"""Guaranteed descent: the energy each sub-step descends, the backtracking that makes it fall, and the check.

Under the step rule ``steps='descent'`` (:mod:`energyarch.solvers.base`) every splitting sub-step of
:class:`~energyarch.compile.EnergyStep` tests its candidates ``X + s Δ``, ``s ∈ {1, 1/2, …, 2^−k}``, on the
energy that sub-step descends, evaluated by :func:`sub_step_energy`:

- an ordinary term (attention, feed-forward): ``F(X) = E(N(X W))``, the term's energy at the normalised point
  (:meth:`~energyarch.compile.EnergyStep.term_energy`), one value per sample. Monotone in every constraint mode
  ('paper', 'exact', 'riemannian'): the acceptance test is on F itself, whatever direction the mode takes;
- a gated feed-forward: the same with the gate coordinates held at their value before the step;
- a causal term: each token's conditional energy ``E_t(x_t | x_<t)`` with the prefix held at its value before
  the step (its own key role moves with x_t when ``self_term='exact'``), one value per token: tokens accept
  their steps independently;
- a joint stage (several terms stepped together): the sum of those energies, one value per sample (a causal
  term contributes Σ_t E_t with the prefix held).

The largest accepted s is chosen without gradient; ``s = 0`` (no step) when none is accepted, so by construction
no sub-step raises that energy (up to the rounding of evaluating it twice). :func:`verify_descent` replays a
trained model's iterations and reports any sub-step whose energy rose.

>>> import energyarch as ea, torch
>>> step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2), d=8, steps="descent", max_step=50.0)
>>> X = torch.randn(2, 5, 8)
>>> bool((step.energy(step(X, 10.0)) <= step.energy(X) + 1e-5).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, cast

import torch
from torch import Tensor

from .errors import ShapeError, VerificationError
from .expr import evaluate
from .runtime import CausalTermUpdate, GatedTermUpdate, causal_mask, cross_kernel, diag_kernel
from .runtime_qk import QKTermUpdate

__all__ = ["DescentReport", "conditional_token_energies", "sub_step_energy", "verify_descent"]


def _full(value, like: Tensor) -> Tensor:
    return value if isinstance(value, Tensor) else torch.full_like(like, float(value))


def _causal(module) -> bool:
    """A causal term's module (per-token conditional energies), not a bidirectional query-key term that shares its
    interaction machinery (:class:`~energyarch.runtime_qk.QKTermUpdate`, one global energy)."""
    return isinstance(module, CausalTermUpdate) and not isinstance(module, QKTermUpdate)


def conditional_token_energies(
    module: CausalTermUpdate, term, X0: Tensor, X1: Tensor, weight: Optional[Tensor] = None
) -> Tensor:
    """``E_t(x1_t | x0_<t)`` for every token t, summed over heads, shape ``X1.shape[:-1]``: token t at ``X1``,
    every earlier token at ``X0`` (its own key role at ``X1`` for ``self_term='exact'``, at ``X0`` if stopped).

    Built from the declaration (f, K) with the module's query and key coordinates; ``X1`` may carry extra
    leading dimensions (candidates) over ``X0``. With ``X1 = X0`` it is the module's ``token_energies``.
    """
    from .energy import params_of

    env = {"beta": float(module.beta), "p": module.head_dim, "M": module.head_dim, "d": module.d, **params_of(term)}

    def scalar(prim, x):
        return prim.fn(x) if prim.fn is not None else _full(evaluate(prim.expr, {**env, "x": x}), x)

    Q1, K1, _, _ = module.query_key(X1, weight)
    _, K0, _, _ = module.query_key(X0, weight)
    K_self = K1 if term.self_term == "exact" else K0.expand_as(K1)
    K0 = K0.expand_as(K1)
    kern = term.K
    if kern.kind == "callable":
        cross, own = cross_kernel(kern.fn, Q1, K0), diag_kernel(kern.fn, Q1, K_self)
    elif kern.kind == "inner":
        Pq = scalar(kern.phi, Q1) if kern.phi is not None else Q1
        Pk = scalar(kern.phi, K0) if kern.phi is not None else K0
        Ps = scalar(kern.phi, K_self) if kern.phi is not None else K_self
        s_cross, s_own = Pq @ Pk.transpose(-1, -2), (Pq * Ps).sum(-1)
        cross = _full(evaluate(kern.expr, {**env, "s": s_cross}), s_cross)
        own = _full(evaluate(kern.expr, {**env, "s": s_own}), s_own)
    else:
        r_cross = (Q1.unsqueeze(-2) - K0.unsqueeze(-3)).pow(2).sum(-1)
        r_own = (Q1 - K_self).pow(2).sum(-1)
        cross = _full(evaluate(kern.expr, {**env, "r": r_cross}), r_cross)
        own = _full(evaluate(kern.expr, {**env, "r": r_own}), r_own)
    strict = causal_mask(Q1.shape[-2], Q1.device, strict=True)
    S = torch.where(strict, cross, torch.zeros_like(cross)).sum(-1) + own  # (..., H, N)
    return scalar(term.f, S).sum(-2)


def sub_step_energy(
    step,
    stage: list,
    X0: Tensor,
    X1: Tensor,
    weights: Optional[Mapping[str, Tensor]] = None,
    gains: Optional[Mapping[str, Tensor]] = None,
) -> Tensor:
    """The energy the sub-step ``stage`` (a list of term names of ``step``) descends from ``X0``, evaluated at
    ``X1`` (which may carry extra leading dimensions): per sample ``X1.shape[:-2]``, or per token
    ``X1.shape[:-1]`` for a stage of one causal term (see the module docstring)."""
    weights = weights or {}
    per_token = len(stage) == 1 and _causal(step.terms[stage[0]])
    total = None
    for n in stage:
        module, w = step.terms[n], weights.get(n)
        if _causal(module):
            e = conditional_token_energies(module, step.energy_decl[n], X0, X1, w)
            e = e if per_token else e.sum(-1)
        elif isinstance(module, GatedTermUpdate):
            e = module.energy_Z(module.normalize(module.coords(X1, w)), module.gate(X0))
        else:
            e = step.term_energy(n, X1, w, gains)
        total = e if total is None else total + e
    return cast(Tensor, total)  # a stage names at least one term


def backtrack(
    step, solver, stage: list, X: Tensor, total: Tensor, weights: Mapping, gains: Optional[Mapping[str, Tensor]]
) -> Tensor:
    """The per-sample (per-token for one causal term) scale ``s`` of a sub-step's increment ``total`` from X:
    the largest of ``1, 1/2, …, 2^−halvings`` whose candidate does not raise :func:`sub_step_energy`, else 0.
    Shape ``(*batch, 1, 1)`` or ``(*batch, N, 1)``; no gradient."""
    with torch.no_grad():
        X0, T0 = X.detach(), total.detach()
        scales = [2.0**-k for k in range(solver.halvings + 1)]
        E0 = sub_step_energy(step, stage, X0, torch.stack([X0, X0 + T0]), weights, gains)  # X and the full step
        E = E0[1:]
        E0 = E0[0]
        # eager: the halvings only when some sample rejects s = 1; compiled: always (no data-dependent branch)
        if len(scales) > 1 and (torch.compiler.is_compiling() or not bool(((E[0] <= E0) & torch.isfinite(E[0])).all())):
            cands = torch.stack([X0 + T0 * s for s in scales[1:]])  # (K − 1, *batch, N, d)
            E = torch.cat([E, sub_step_energy(step, stage, X0, cands, weights, gains)])  # (K, *E0.shape)
        else:
            scales = scales[:1]
        ok = (E <= E0) & torch.isfinite(E)
        factors = torch.tensor(scales, dtype=X.dtype, device=X.device).view(-1, *([1] * E0.dim()))
        s = torch.where(ok, factors, torch.zeros_like(factors)).amax(0)
    per_token = E0.dim() == X.dim() - 1
    return s[..., None] if per_token else s[..., None, None]


# ------------------------------------------------------------------------------------------------------------
# the check
# ------------------------------------------------------------------------------------------------------------


@dataclass
class DescentReport:
    """Per term, the fraction of (sample, iteration) sub-steps (causal: (sample, token, iteration)) that raised
    the term's own energy by more than ``rtol · max(1, |E|)``; ``rises`` lists the first few as
    ``(layer, iteration, term, largest rise)``."""

    fractions: dict = field(default_factory=dict)
    rises: list = field(default_factory=list)
    rtol: float = 1e-5

    @property
    def ok(self) -> bool:
        return not self.rises

    @property
    def max_fraction(self) -> float:
        return max(self.fractions.values(), default=0.0)

    def __str__(self) -> str:
        head = "descent: OK (no sub-step raised its term's energy)" if self.ok else "descent: FAILED"
        lines = [head] + [f"  {n}: {100 * f:.2f} % of sub-steps rose" for n, f in self.fractions.items()]
        lines += [
            f"  layer {layer}, iteration {t}, term {n!r}: energy rose by {r:.3g}" for layer, t, n, r in self.rises[:10]
        ]
        return "\n".join(lines)


def sub_step_rises(layer, X: Tensor, iters: int, rtol: float = 1e-5) -> tuple[dict, dict, list]:
    """Replay ``iters`` iterations of a Hyper-SET layer from X (no gradient): per term, ``(rises, counts, worst)``
    where rises / counts count sub-steps whose own energy rose by more than ``rtol · max(1, |E|)``, and worst
    lists ``(iteration, term, rise)``. Every stage of the compiled schedule is one sub-step."""
    step = layer.step
    rises = {n: 0 for n in step.names}
    counts = {n: 0 for n in step.names}
    worst = []
    with torch.no_grad():
        state, X0 = step.init_state(), X
        for t in range(iters):
            steps = step._steps(layer.stepnet(t, X0 if layer.condition == "x0" else X))
            weights = step._weights(layer.weights(t))
            for stage in step.stages:
                X1, state = step._stage(X, stage, steps, weights, state, layer.gains)
                e0 = sub_step_energy(step, stage, X, X, weights, layer.gains)
                e1 = sub_step_energy(step, stage, X, X1, weights, layer.gains)
                tol = rtol * e0.abs().clamp_min(1.0)
                rose = e1 > e0 + tol
                name = "+".join(stage)
                for n in stage:
                    rises[n] += int(rose.sum())
                    counts[n] += rose.numel()
                if bool(rose.any()):
                    worst.append((t, name, float((e1 - e0).max())))
                X = X1
    return rises, counts, worst


def verify_descent(
    model, batch, iters: Optional[int] = None, rtol: float = 1e-5, raise_on_fail: bool = False
) -> DescentReport:
    """Replay a trained Hyper-SET model on ``batch`` (the task's input, e.g. images or token ids) and report, per
    term and iteration, any splitting sub-step that raised the energy it descends (module docstring).

    Under ``steps='descent'`` nothing rises (up to rounding, relative 1e-5); under ``'free'`` or ``'bounded'``
    the report says which term and iteration rose. A rise counts above ``rtol · max(1, |E|)`` (float32 rounding of
    evaluating the energy twice). Raises :class:`~energyarch.errors.VerificationError` with the
    report when ``raise_on_fail`` and something rose.
    """
    backbone = getattr(model, "backbone", model)
    layers = getattr(backbone, "layers", None)
    if layers is None or not all(hasattr(layer, "step") and hasattr(layer, "stepnet") for layer in layers):
        raise VerificationError(
            f"verify_descent: expected a Hyper-SET model (from energyarch.train or "
            f"ea.models.HyperSET), got {type(model).__name__}; other architectures have no "
            f"declared energy to descend"
        )
    if backbone is not model and not hasattr(model, "embed"):
        raise ShapeError(
            "verify_descent: the model has a backbone but no embed; pass a model built by "
            "energyarch.train (or a HyperSET backbone and embedded tokens (B, N, d))"
        )
    T = iters if iters is not None else backbone.iters
    was = model.training
    model.eval()
    report = DescentReport(rtol=rtol)
    try:
        with torch.no_grad():
            X = model.embed(batch) if backbone is not model else batch
            for index, layer in enumerate(layers):
                rises, counts, worst = sub_step_rises(layer, X, T, rtol)
                for n in rises:
                    key = n if len(layers) == 1 else f"layer{index}.{n}"
                    report.fractions[key] = rises[n] / max(1, counts[n])
                report.rises += [(index, t, n, r) for t, n, r in worst]
                X = layer(X, T)
    finally:
        model.train(was)
    if raise_on_fail and not report.ok:
        raise VerificationError(str(report))
    return report
