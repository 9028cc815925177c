"""A check users can call on their own energy and solver: with small constant steps the solver descends.

:func:`verify_solver` runs ``iters`` iterations of a compiled step with a constant step size (small against the
direction's size), in float64 on random inputs, carrying the solver state, and records the total energy of each
sample at every iteration. It passes when the energy never rises by more than rounding and ends lower than it
started, for every sample.

>>> import energyarch as ea
>>> step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h="relu(x)**2/2"), d=8)
>>> ea.verify_solver(step, "nesterov").ok
True
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import Tensor

from ..errors import VerificationError
from .base import Solver, make_solver


@dataclass
class SolverCheck:
    """Result of :func:`verify_solver`.

    Attributes:
        solver: the solver's description; step_size: the constant step used.
        energies: ``(iters + 1, batch)`` total energy of each sample before the first and after each iteration.
        rtol: a rise counts when ``E_{k+1} − E_k > rtol · |E_k|`` (float64 rounding).
    """

    solver: str
    step_size: float
    energies: Tensor
    rtol: float = 1e-10
    rises: list = field(default_factory=list)  # (iteration, sample, rise) of every rise beyond rtol

    def __post_init__(self):
        E = self.energies
        diff = E[1:] - E[:-1]
        bad = diff > self.rtol * E[:-1].abs()
        self.rises = [(int(k), int(b), float(diff[k, b])) for k, b in bad.nonzero().tolist()]

    @property
    def decreased(self) -> bool:
        """Every sample ends lower than it started."""
        return bool((self.energies[-1] < self.energies[0]).all())

    @property
    def ok(self) -> bool:
        return self.decreased and not self.rises and bool(torch.isfinite(self.energies).all())

    def table(self) -> str:
        E = self.energies
        rows = ["| iteration | mean E | max rise over samples |", "|---|---|---|"]
        for k in range(E.shape[0]):
            rise = "" if k == 0 else f"{float((E[k] - E[k - 1]).max()):.3e}"
            rows.append(f"| {k} | {float(E[k].mean()):.8g} | {rise} |")
        return "\n".join(rows)

    def __str__(self) -> str:
        return (
            f"solver check {self.solver} (step {self.step_size:.3g}, {self.energies.shape[0] - 1} iterations, "
            f"{self.energies.shape[1]} samples): {'OK' if self.ok else 'FAILED'}"
            f"{'' if not self.rises else f' ({len(self.rises)} rises)'}\n" + self.table()
        )


def verify_solver(
    step,
    solver: Union[str, Solver, None] = None,
    *,
    iters: int = 10,
    step_size: float = 1e-3,
    batch: int = 4,
    tokens: int = 7,
    seed: int = 0,
    raise_on_fail: bool = True,
    **solver_params,
) -> SolverCheck:
    """Run ``solver`` (default: the step's own) on the compiled ``step`` with a small constant step size.

    The step size is ``step_size / max(1, max |direction at the start|)`` (at most ``step_size`` in any
    coordinate of the first gradient step). Raises :class:`~energyarch.errors.VerificationError` with the table
    when the energy rises or does not decrease, if ``raise_on_fail``.
    """
    # a compiled EnergyStep, recognised by the methods used here: importing energyarch.compile would make the solvers
    # package, which compile imports, depend on compile (an import cycle, tests/test_imports.py)
    if not all(callable(getattr(step, name, None)) for name in ("init_state", "energy", "direction", "with_solver")):
        raise VerificationError(
            f"verify_solver: expected a compiled EnergyStep (from energyarch.compile), got {type(step).__name__}"
        )
    for name, value, low in (("iters", iters, 1), ("batch", batch, 1), ("tokens", tokens, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise VerificationError(f"verify_solver: {name}={value!r} must be an integer >= {low}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0 < step_size < float("inf"):
        raise VerificationError(f"verify_solver: step_size={step_size!r} must be a positive finite number")
    if solver is None and not solver_params:
        step64 = copy.deepcopy(step).to(torch.float64)  # the step's own solver(s), one per term
    else:
        chosen_one = make_solver(step.solver if solver is None else solver, **solver_params)
        step64 = copy.deepcopy(step).to(torch.float64).with_solver(chosen_one)
    chosen = step64.solvers
    step64.eval()
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(batch, tokens, step.d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        scale = max(float(step64.direction(n, X).abs().max()) for n in step64.names)
        alpha = step_size / max(1.0, scale)
        raw = {}
        for n, rule in chosen.items():
            if rule.steps == "bounded":  # the rule maps raw → max_step·sigmoid(raw): ask for alpha itself
                a = min(alpha, rule.max_step / 2)
                raw[n] = float(torch.logit(torch.tensor(a / rule.max_step, dtype=torch.float64)))
            else:
                raw[n] = alpha
        if all(rule.steps == "bounded" for rule in chosen.values()):
            alpha = min(alpha, *(rule.max_step / 2 for rule in chosen.values()))
        state, energies = step64.init_state(), [step64.energy(X)]
        for _ in range(iters):
            X, state = step64(X, raw, state=state)
            energies.append(step64.energy(X))
    described = step64._describe_solvers() if not step64._uniform() else step64.solver.describe()
    check = SolverCheck(solver=described, step_size=alpha, energies=torch.stack(energies))
    if raise_on_fail and not check.ok:
        raise VerificationError(
            f"verify_solver: the energy does not descend under {described} with a "
            f"constant step {alpha:.3g}; the solver or the energy's direction is wrong (or the "
            f"step too large: pass a smaller step_size)\n{check}"
        )
    return check
