"""The solver of a layer: how one term's direction becomes an increment of X, with state carried across iterations.

A layer is an energy *and* the optimiser that descends it (docs: Benchmarks and Training, "Solvers"). Each solver is one small frozen
dataclass registered by name with :func:`register_solver`; :class:`~energyarch.compile.EnergyStep` calls three
methods per term and iteration (``d`` is the term's descent direction −g as defined by the constraint mode,
``alpha`` its step size, ``state`` the term's own dict of tensors)::

    point        = X + Σ_terms shift(state)          where the direction is evaluated (Nesterov: X + μ v)
    Δ, state'    = update(d(point), alpha, state)    the solver's rule
    state''      = accept(state', s)                 when a safeguard scales Δ by s ∈ [0, 1] (per sample)
    X            ← X + Σ_stage Δ

Every term may have its own solver (``ea.compile(E, d, solvers={"attn": "momentum"})``, ``ModelConfig.solvers``,
``[[model.terms]]`` keys), and so its own step rule; a joint stage mixing rules is defined in
:class:`~energyarch.compile.EnergyStep`. The step-size rule (``steps``) is shared by every solver:

- ``'free'``: the step sizes as given (learned, either sign, any size): the paper's signed steps, used by the
  paper-reproduction configs and the official-checkpoint converter. With a zero-initialised step-size network the
  energy's sign is then learned away (E and −E train to the same model);
- ``'bounded'``: ``α = max_step · sigmoid(raw)`` (positive and below ``max_step``), and each term's increment is
  scaled per sample by ``s = min(1, ⟨d, Δ⟩ / (L̂ ‖Δ‖²))`` (0 when Δ points uphill), where L̂ is the secant
  curvature ``‖d_k − d_{k−1}‖ / ‖x_k − x_{k−1}‖`` of the term's direction along the trajectory: the step stays
  below the minimiser of the quadratic model with curvature L̂ (half the largest descent step 2/L̂). Positive, but
  a descent of the energy is not guaranteed;
- ``'descent'``: ``α = max_step · sigmoid(raw)`` and backtracking inside the forward pass, in training as at
  inference: per sample (per token for a causal term), each sub-step takes the largest ``s ∈ {1, 1/2, …,
  2^−halvings}`` whose candidate ``X + s Δ`` does not raise the energy the sub-step descends (the term's own energy
  under sequential splitting, the stage's total under a joint step), else no step (s = 0). The choice is made
  without gradient; the increment ``s Δ`` keeps its gradient through α and the direction. Guaranteed descent
  (docs: Numerics, "What descent is guaranteed").

``backtrack = k`` (in eval mode only): a stage's increment is halved per sample, up to k times, while the total
energy rises, and dropped (s = 0) if it still rises, so that the total energy never increases at inference.

>>> import torch
>>> solver = make_solver("momentum", momentum=0.5)
>>> d = torch.ones(1, 2, 3)
>>> inc, state = solver.update(d, 0.1, {})
>>> inc, state = solver.update(d, 0.1, state)        # v = 0.5·0.1 + 0.1
>>> round(float(inc[0, 0, 0]), 6)
0.15
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Mapping, Optional, Union

import torch
from torch import Tensor

from ..errors import CompileError

#: name → solver class (filled by :func:`register_solver`)
SOLVERS: dict[str, type["Solver"]] = {}
STEP_RULES = ("free", "bounded", "descent")
#: rules whose step size is ``max_step · sigmoid(raw)`` (positive)
POSITIVE_RULES = ("bounded", "descent")

State = dict  # a term's solver state: name → Tensor (and 'k', the number of updates, an int)


def register_solver(name: str) -> Callable[[type], type]:
    """Class decorator: make a :class:`Solver` subclass available by ``name`` (``make_solver(name)``, TOML)."""

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Solver)):
            raise CompileError(f"register_solver({name!r}): {cls!r} is not a Solver subclass")
        if not name.isidentifier():
            raise CompileError(f"register_solver({name!r}): the name must be an identifier, e.g. 'momentum'")
        cls.name = name
        SOLVERS[name] = cls
        return cls

    return deco


def _number(owner: str, key: str, value, lo: float, hi: float, lo_open: bool = False, hi_open: bool = True) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if not bad:
        bad = (value <= lo if lo_open else value < lo) or (value >= hi if hi_open else value > hi)
    if bad:
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        raise CompileError(f"{owner}: {key}={value!r} must be a number in {interval}")


@dataclass(frozen=True)
class Solver:
    """Base of every solver: plain gradient descent's interface plus the shared step-size rule.

    Subclasses override :meth:`update` (and :meth:`shift`, :meth:`accept` when they carry a velocity)."""

    name: ClassVar[str] = "solver"
    steps: str = "free"  # step-size rule: 'free' (the paper's signed steps) | 'bounded' (positive, ≤ max_step,
    #   curvature cap) | 'descent' (positive, ≤ max_step, backtracking on each sub-step's energy: guaranteed descent)
    max_step: float = 0.2  # 'bounded', 'descent': α = max_step · sigmoid(raw); at raw = 0 α = max_step / 2
    backtrack: int = 0  # eval mode: halve a stage's increment up to this many times while the total energy rises
    halvings: int = 4  # 'descent': candidates s ∈ {1, 1/2, …, 2^-halvings} of each sub-step, else s = 0

    def __post_init__(self):
        owner = f"solver {self.name!r}"
        if self.steps not in STEP_RULES:
            raise CompileError(
                f"{owner}: steps={self.steps!r}: choose one of {STEP_RULES} ('free': step sizes as "
                f"given, the paper's signed steps; 'bounded': positive, at most max_step, capped by a "
                f"curvature estimate; 'descent': positive, backtracked so that no sub-step raises its "
                f"energy)"
            )
        _number(owner, "max_step", self.max_step, 0.0, math.inf, lo_open=True)
        if isinstance(self.backtrack, bool) or not isinstance(self.backtrack, int) or not 0 <= self.backtrack <= 60:
            raise CompileError(
                f"{owner}: backtrack={self.backtrack!r} must be an integer in [0, 60] (halvings of "
                f"a step at inference; 0 = off)"
            )
        if self.backtrack and self.steps == "descent":
            raise CompileError(
                f"{owner}: backtrack={self.backtrack!r} with steps='descent': the descent rule already "
                f"backtracks every sub-step, in training and at inference; use backtrack=0 (or "
                f"steps='free' / 'bounded' for inference-only backtracking on the total energy)"
            )
        if isinstance(self.halvings, bool) or not isinstance(self.halvings, int) or not 0 <= self.halvings <= 30:
            raise CompileError(
                f"{owner}: halvings={self.halvings!r} must be an integer in [0, 30] (candidates "
                f"1, 1/2, …, 2^-halvings of each step under steps='descent'; e.g. 4)"
            )

    # -- the step size ----------------------------------------------------------------------------------------------
    def step_size(self, raw: Union[float, Tensor]) -> Union[float, Tensor]:
        """The step size used from the given (learned or fixed) one: as is ('free'), or ``max_step · sigmoid(raw)``."""
        if self.steps == "free":
            return raw
        if isinstance(raw, Tensor):
            return self.max_step * torch.sigmoid(raw)
        return self.max_step / (1.0 + math.exp(-raw)) if raw > -700 else 0.0

    def raw_step(self, alpha: float) -> float:
        """The raw value whose step size is ``alpha`` (the inverse of :meth:`step_size`; fixed steps use it).

        >>> round(make_solver("gd", steps="descent", max_step=0.4).raw_step(0.2), 12)
        0.0
        """
        if self.steps == "free":
            return alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < self.max_step:
            raise CompileError(
                f"solver {self.name!r}: a fixed step size {alpha!r} under steps={self.steps!r} must "
                f"lie in (0, max_step={self.max_step!r}); lower it or raise max_step"
            )
        return math.log(alpha / (self.max_step - alpha))

    # -- the rule ---------------------------------------------------------------------------------------------------
    def shift(self, state: State) -> Optional[Tensor]:
        """Displacement of the point where the direction is evaluated (None: at X itself)."""
        return None

    def update(self, d: Tensor, alpha: Union[float, Tensor], state: State) -> tuple[Tensor, State]:
        """The increment of X from the direction ``d`` (−g) and step size ``alpha``, and the new state."""
        raise NotImplementedError  # pragma: no cover - abstract

    def accept(self, state: State, scale: Tensor) -> State:
        """The state after a safeguard multiplied the increment by ``scale`` (shape ``(*batch, 1, 1)``)."""
        return state

    # -- description ------------------------------------------------------------------------------------------------
    def params(self) -> dict:
        """The solver's hyper-parameters (fields other than the shared step-size rule)."""
        common = {f.name for f in dataclasses.fields(Solver)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in common}

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        rule = f"steps={self.steps!r}" + (f", max_step={self.max_step!r}" if self.steps in POSITIVE_RULES else "")
        rule += f", halvings={self.halvings}" if self.steps == "descent" else ""
        back = f", backtrack={self.backtrack}" if self.backtrack else ""
        return f"{self.name}({extra + ', ' if extra else ''}{rule}{back})"


def make_solver(solver: Union[str, Solver, None] = "gd", **params) -> Solver:
    """A solver from its registered name and hyper-parameters (or a Solver, returned as is when no params).

    >>> make_solver("adam", beta2=0.99).describe()
    "adam(beta1=0.9, beta2=0.99, eps=1e-08, steps='free')"
    """
    if solver is None:
        solver = "gd"
    if isinstance(solver, Solver):
        return dataclasses.replace(solver, **params) if params else solver
    if not isinstance(solver, str) or solver not in SOLVERS:
        raise CompileError(
            f"solver={solver!r}: choose one of {tuple(SOLVERS)} (or pass an energyarch.solvers Solver object)"
        )
    cls = SOLVERS[solver]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise CompileError(f"solver {solver!r}: unknown hyper-parameter(s) {unknown}; valid: {valid}")
    return cls(**params)


def run(
    solver: Solver, direction: Callable[[Tensor], Tensor], x0: Tensor, alpha: Union[float, Tensor], iters: int
) -> list[Tensor]:
    """Iterates ``[x_0, …, x_iters]`` of ``solver`` on one term with direction field ``direction(x) = −∇E(x)``
    and a constant step size (the same calls as :class:`~energyarch.compile.EnergyStep`, without safeguards).

    >>> xs = run(make_solver("gd"), lambda x: -x, torch.ones(2), 0.5, 2)      # E = |x|²/2
    >>> [float(x[0]) for x in xs]
    [1.0, 0.5, 0.25]
    """
    x, out = x0, [x0]
    state: State = {}
    alpha = solver.step_size(alpha)
    for _ in range(iters):
        shift = solver.shift(state)
        inc, state = solver.update(direction(x if shift is None else x + shift), alpha, state)
        x = x + inc
        out.append(x)
    return out


def solver_names() -> tuple[str, ...]:
    """Registered solver names, in registration order."""
    return tuple(SOLVERS)


def check_params(name: str, params: Mapping) -> None:
    """Raise :class:`~energyarch.errors.CompileError` if ``make_solver(name, **params)`` would."""
    make_solver(name, **dict(params))
