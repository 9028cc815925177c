"""Compile an energy into an ``nn.Module`` update step, scheduled from the energy's graph.

    declaration (Energy) → derivation (symbolic | autodiff, cached) → emitted source → TermUpdate modules
    → EnergyStep (composition; schedule derived from a networkx graph of variables and terms)

>>> import energyarch as ea, torch
>>> step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h="relu(x)**2/2"), d=8)
>>> step(torch.randn(3, 5, 8), steps={"attn": 0.1, "ff": 0.1}).shape
torch.Size([3, 5, 8])
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union, cast

import networkx as nx
import torch
from torch import Tensor, nn

from .derive import Derivation, autodiff_derivation, derive
from .emit import emit, emit_source
from .energy import Energy, Term, as_energy, primitives_of
from .errors import CompileError, ShapeError
from .runtime import _FINITE_CHECK, MODES, TermUpdate, check_step
from .solvers.base import SOLVERS, Solver, make_solver

Steps = Union[float, Tensor, Mapping[str, Union[float, Tensor]], Sequence[Union[float, Tensor]]]
SCHEDULES = ("sequential", "joint")
#: a solver given by name or as an object (``solvers={"attn": "momentum", "ff": make_solver("adam", ...)}``)
SolverSpec = Union[str, Solver]
#: the step-rule fields a solver given by name takes from the default solver (``compile(..., steps='descent')``)
RULE_FIELDS = ("steps", "max_step", "backtrack", "halvings")


def resolve_solvers(
    names: Sequence[str], defaults: Mapping[str, Solver], solvers: Optional[Mapping[str, SolverSpec]]
) -> dict[str, Solver]:
    """One :class:`~energyarch.solvers.Solver` per term: ``solvers[name]`` where given, else ``defaults[name]``.

    A solver given by name takes the step rule (``steps``, ``max_step``, ``backtrack``, ``halvings``) of the term's
    default, so that ``compile(E, d, steps='descent', solvers={'attn': 'momentum'})`` descends with momentum; a
    :class:`~energyarch.solvers.Solver` object is used as is.

    >>> from energyarch.solvers import make_solver
    >>> gd = make_solver("gd", steps="descent")
    >>> out = resolve_solvers(["attn", "ff"], {"attn": gd, "ff": gd}, {"attn": "momentum"})
    >>> out["attn"].describe(), out["ff"] is gd
    ("momentum(momentum=0.9, convention='energyarch', steps='descent', max_step=0.2, halvings=4)", True)
    """
    out = dict(defaults)
    if solvers is None:
        return out
    if not isinstance(solvers, Mapping):
        raise CompileError(
            f"solvers={solvers!r:.80}: give a mapping term name → solver (a registered name such as "
            f"'momentum' or an energyarch.solvers Solver), e.g. solvers={{{names[0]!r}: 'momentum'}}"
        )
    unknown = sorted(set(solvers) - set(names), key=str)
    if unknown:
        raise CompileError(f"solvers: unknown term name(s) {unknown}; the terms are {list(names)}")
    for name, spec in solvers.items():
        if isinstance(spec, Solver):
            out[name] = spec
        elif isinstance(spec, str):
            rule = {k: getattr(defaults[name], k) for k in RULE_FIELDS}
            try:
                out[name] = make_solver(spec, **rule)
            except CompileError as err:
                raise CompileError(f"solvers[{name!r}]={spec!r}: {err}") from None
        else:
            raise CompileError(
                f"solvers[{name!r}]={spec!r:.80}: give a registered solver name (one of "
                f"{tuple(SOLVERS)}) or an energyarch.solvers Solver, e.g. make_solver('momentum', "
                f"momentum=0.5)"
            )
    return out


def energy_graph(energy: Energy) -> nx.DiGraph:
    """The energy as a graph: the state variable ``X`` and one node per term.

    An edge ``X → term`` means the term reads X; ``term → X`` means its gradient step updates X.
    Node attributes carry the family, so schedules and drawings can be derived from the graph.
    """
    graph = nx.DiGraph(name="energy")
    graph.add_node("X", kind="variable", label="X ∈ R^{N×d}")
    for order, term in enumerate(energy.terms):
        graph.add_node(term.name, kind="term", family=term.family, order=order)
        graph.add_edge("X", term.name, role="reads")
        graph.add_edge(term.name, "X", role="updates")
    return graph


def schedule(graph: nx.DiGraph, kind: str = "sequential") -> list[list[str]]:
    """Stages of the update: each stage is a list of terms stepped jointly from the same X.

    ``'sequential'`` is the paper's splitting (Sec. 4.1.3: attention step, then feed-forward step, each
    on the X the previous one produced); ``'joint'`` takes one step on the sum of the terms.
    """
    if kind not in SCHEDULES:
        raise CompileError(f"schedule={kind!r}: choose one of {SCHEDULES}")
    updaters = sorted(
        (n for n in graph.predecessors("X") if graph.nodes[n]["kind"] == "term"), key=lambda n: graph.nodes[n]["order"]
    )
    return [[n] for n in updaters] if kind == "sequential" else [updaters]


class EnergyStep(nn.Module):
    """One iteration of a solver on a whole energy (all terms, in the derived schedule); gradient descent by default.

    ``step(X, steps, weights)`` returns the next X (a fresh solver state each call: for ``'gd'`` the state is
    empty); ``step(X, steps, weights, state=state)`` returns ``(X, state)``, carrying each term's solver state
    (velocity, moments) across the recurrent iterations. ``step.init_state()`` is the state before the first.

    Attributes:
        terms: ``nn.ModuleDict`` of per-term :class:`~energyarch.runtime.TermUpdate` modules.
        derivations: the :class:`~energyarch.derive.Derivation` of each term.
        graph: the networkx graph of the energy; ``stages`` the schedule derived from it.
        solvers: the :class:`~energyarch.solvers.Solver` of each term (update rule and step-size rule; no
            parameters), ``solvers[name]``; ``solver`` is the common one when every term has the same.

    Each term's solver state is its own (``state[name]``). Under the sequential schedule every stage is one term, so
    each term's sub-step follows its own step rule. A joint stage whose terms mix rules is one step of the sum: each
    term's step size and increment follow its own solver (a ``'bounded'`` term's curvature cap included), and when
    any of them asks for ``'descent'`` the stage's summed increment is backtracked on the stage's energy (the sum of
    its terms) with the largest ``halvings`` among them, so that the stage never raises that sum; otherwise, at
    inference, the largest ``backtrack`` among them applies to the total energy.
    """

    def __init__(
        self,
        energy: Energy,
        terms: Mapping[str, TermUpdate],
        derivations: Mapping[str, Derivation],
        schedule_kind: str = "sequential",
        solver: Union[SolverSpec, None] = "gd",
        solvers: Optional[Mapping[str, SolverSpec]] = None,
    ):
        super().__init__()
        self.energy_decl = energy
        self.terms = nn.ModuleDict(terms)
        self.derivations = dict(derivations)
        self.graph = energy_graph(energy)
        self.schedule_kind = schedule_kind
        self.stages = schedule(self.graph, schedule_kind)
        default = make_solver(solver)
        self.solvers: dict[str, Solver] = resolve_solvers(self.names, {n: default for n in self.names}, solvers)

    @property
    def names(self) -> list[str]:
        return list(self.terms.keys())

    @property
    def d(self) -> int:
        return cast(TermUpdate, next(iter(self.terms.values()))).d

    @property
    def solver(self) -> Solver:
        """The solver of every term, when they all have the same (else a :class:`~energyarch.errors.CompileError`:
        read ``solvers[name]``)."""
        first = next(iter(self.solvers.values()))
        if any(s != first for s in self.solvers.values()):
            raise CompileError(
                f"this step has one solver per term ({self._describe_solvers()}); read "
                f"step.solvers[name] for a term's solver"
            )
        return first

    @solver.setter
    def solver(self, value: SolverSpec) -> None:
        """``step.solver = s``: the solver of every term."""
        solver = make_solver(value)
        self.solvers = {n: solver for n in self.names}

    def _uniform(self) -> bool:
        return len(set(self.solvers.values())) <= 1

    def _describe_solvers(self) -> str:
        return ", ".join(f"{n}: {s.describe()}" for n, s in self.solvers.items())

    def with_solver(
        self, solver: Union[SolverSpec, None] = None, *, solvers: Optional[Mapping[str, SolverSpec]] = None, **params
    ) -> "EnergyStep":
        """A copy sharing this step's term modules (same parameters) with other solvers: ``solver`` (with
        ``params``) for every term, and/or ``solvers`` (name → solver) for some; a term given neither keeps its own.

        >>> import energyarch as ea
        >>> step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x",
        ...                   h="relu(x)**2/2"), d=8)
        >>> other = step.with_solver(solvers={"attn": "momentum"})
        >>> other.solvers["attn"].name, other.solvers["ff"].name, other.terms["attn"] is step.terms["attn"]
        ('momentum', 'gd', True)
        """
        if solver is None and params:
            raise CompileError(
                f"with_solver: hyper-parameters {sorted(params)} need a solver; e.g. "
                f"with_solver('momentum', momentum=0.5)"
            )
        defaults = dict(self.solvers)
        if solver is not None:
            default = make_solver(solver, **params)
            defaults = {n: default for n in self.names}
        other = copy.copy(self)
        object.__setattr__(other, "_modules", dict(self._modules))
        other.solvers = resolve_solvers(self.names, defaults, solvers)
        return other

    def init_state(self) -> dict[str, dict]:
        """The solver state before the first iteration: one empty dict per term (filled lazily, zeros)."""
        return {n: {} for n in self.names}

    def _weights(self, weights) -> dict:
        """Basis overrides (e.g. depth-wise LoRA): a mapping from some term names to tensors."""
        if weights is None:
            return {}
        if not isinstance(weights, Mapping):
            raise ShapeError(f"weights: expected a mapping term name → tensor (or None), got {type(weights).__name__}")
        unknown = set(weights) - set(self.names)
        if unknown:
            raise ShapeError(f"weights: unknown term names {sorted(unknown)}; the terms are {self.names}")
        return dict(weights)

    def _steps(self, steps: Steps) -> dict[str, Union[float, Tensor]]:
        names = self.names
        if isinstance(steps, Mapping):
            unknown = set(steps) - set(names)
            missing = set(names) - set(steps)
            if unknown or missing:
                raise ShapeError(
                    f"steps: got keys {sorted(steps)}, expected exactly the term names {names}"
                    + (f" (unknown: {sorted(unknown)})" if unknown else "")
                    + (f" (missing: {sorted(missing)})" if missing else "")
                )
            return dict(steps)
        if isinstance(steps, (list, tuple)):
            if len(steps) != len(names):
                raise ShapeError(f"steps: got {len(steps)} values for {len(names)} terms {names}; give one per term")
            return dict(zip(names, steps))
        return {n: cast(Union[float, Tensor], steps) for n in names}  # one scalar or tensor for all

    # -- one term at a (gain-scaled) point ------------------------------------------------------------------------
    def direction(
        self, name: str, X: Tensor, weight: Optional[Tensor] = None, gains: Optional[Mapping[str, Tensor]] = None
    ) -> Tensor:
        """The descent direction of term ``name`` at X, shape like X. With ``gains`` (the official code's RMSNorm
        gain g per term) the point is ``Z = g ⊙ RMSNorm(X W_h)·R/√p`` and the step the paper-mode step there."""
        term = cast(TermUpdate, self.terms[name])
        if gains is None:
            return term.direction(X, weight)
        W = term._check(X, weight)
        Z_raw = term.coords(X, W)
        Z = term.normalize(Z_raw) * gains[name]
        G = term.constrain(term.grad_Z(Z), Z, Z_raw)  # (..., H, N, p)
        return -(G.transpose(-2, -3).flatten(-2) @ W.transpose(0, 1))  # (..., N, d)

    def term_energy(
        self, name: str, X: Tensor, weight: Optional[Tensor] = None, gains: Optional[Mapping[str, Tensor]] = None
    ) -> Tensor:
        """Energy of term ``name`` at its (gain-scaled) constrained point, shape ``X.shape[:-2]``."""
        term = cast(TermUpdate, self.terms[name])
        if gains is None:
            return term.energy(X, weight)
        return term.energy_Z(term.normalize(term.coords(X, weight)) * gains[name])

    # -- the iteration -------------------------------------------------------------------------------------------
    def forward(
        self,
        X: Tensor,
        steps: Steps = 1.0,
        weights: Optional[Mapping[str, Tensor]] = None,
        state: Optional[Mapping[str, dict]] = None,
        *,
        gains: Optional[Mapping[str, Tensor]] = None,
    ):
        """Apply one iteration. ``steps``: a scalar/tensor for all terms, a mapping name → step, or a
        sequence in term order. ``weights`` optionally overrides a term's basis (e.g. with depth-wise LoRA).
        ``state``: the solver state from the previous iteration (then ``(X, state)`` is returned).
        ``gains``: per-term RMSNorm gains (see :meth:`direction`)."""
        steps = self._steps(steps)
        weights = self._weights(weights)
        stateful = state is not None
        if stateful:
            if not isinstance(state, Mapping) or set(state) != set(self.names):
                raise ShapeError(
                    f"state: expected a mapping with one entry per term {self.names} (from "
                    f"step.init_state() or the previous call), got {state!r:.80}"
                )
            state = dict(state)
        else:
            state = self.init_state()
        if _FINITE_CHECK.active:
            _FINITE_CHECK.calls += 1
        for stage in self.stages:
            X, state = self._stage(X, stage, steps, weights, state, gains)
        return (X, state) if stateful else X

    def _stage(
        self,
        X: Tensor,
        stage: list[str],
        steps: dict,
        weights: Mapping,
        state: dict,
        gains: Optional[Mapping[str, Tensor]],
    ) -> tuple[Tensor, dict]:
        """One stage of the schedule: every term's direction at the (shifted) point, its solver's increment; the
        stage's safeguard (class docstring) when one of its terms asks for it."""
        solvers = {n: self.solvers[n] for n in stage}
        shifts = [s for s in (solvers[n].shift(state[n]) for n in stage) if s is not None]
        point = X + sum(shifts) if shifts else X  # Nesterov: the look-ahead point
        increments, new = [], dict(state)
        for n in stage:
            solver = solvers[n]
            alpha = solver.step_size(check_step(steps[n], X, n))
            d = self.direction(n, point, weights.get(n), gains)
            inc, st = solver.update(d, alpha, state[n])
            if solver.steps == "bounded":
                inc, st = self._curvature_cap(solver, point, d, inc, st, state[n])
            increments.append(inc)
            new[n] = st
        guard, halvings = None, 0  # the 'descent' solver with the most halvings; the largest backtrack
        for n in stage:
            if solvers[n].steps == "descent" and (guard is None or solvers[n].halvings > guard.halvings):
                guard = solvers[n]
            halvings = max(halvings, solvers[n].backtrack)
        if guard is not None:  # guaranteed descent of this sub-step
            X, new = self._descend(guard, X, stage, increments, new, weights, gains)
        else:
            if halvings and not self.training:
                increments, new = self._backtrack(halvings, X, stage, increments, new, weights, gains)
            X = X + increments[0] if len(increments) == 1 else X + sum(increments)
        if _FINITE_CHECK.active:
            _FINITE_CHECK.check(X, "+".join(stage))
        return X, new

    @staticmethod
    def _curvature_cap(solver: Solver, point: Tensor, d: Tensor, inc: Tensor, st: dict, old: dict):
        """Scale ``inc`` per sample by min(1, ⟨d, Δ⟩ / (L̂ ‖Δ‖²)), L̂ the secant curvature of the direction."""
        if "_point" in old:
            with torch.no_grad():
                tiny = torch.finfo(point.dtype).tiny
                dp = (point - old["_point"]).flatten(-2).norm(dim=-1)  # (*batch,)
                dd = (d - old["_dir"]).flatten(-2).norm(dim=-1)
                L = torch.where(dp > 0, dd / dp.clamp_min(tiny), torch.zeros_like(dp))
                a = (d * inc).flatten(-2).sum(-1)  # ⟨d, Δ⟩
                q = L * inc.pow(2).flatten(-2).sum(-1)  # L̂ ‖Δ‖²
                s = torch.where(q > a, (a / q.clamp_min(tiny)).clamp_min(0), torch.ones_like(a))
            s = s.detach()[..., None, None]
            inc, st = inc * s, solver.accept(st, s)
        return inc, {**st, "_point": point.detach(), "_dir": d.detach()}

    def _descend(
        self,
        solver: Solver,
        X: Tensor,
        stage: list[str],
        increments: list,
        new: dict,
        weights: Mapping,
        gains: Optional[Mapping[str, Tensor]],
    ):
        """``steps='descent'``: the largest of ``1, 1/2, …, 2^−halvings`` (``solver.halvings``) times the stage's
        increment that does not raise the energy this sub-step descends (:func:`energyarch.descent.backtrack`), per
        sample (per token for a causal term), else no step; the scale carries no gradient, the increment does.
        Each term's own solver accepts the scale into its state."""
        from .descent import backtrack

        total = increments[0] if len(increments) == 1 else sum(increments)
        s = backtrack(self, solver, stage, X, total, weights, gains)
        X1 = torch.where(s > 0, X + total * s, X)  # s = 0: X itself (also when Δ overflowed)
        return X1, {n: self.solvers[n].accept(new[n], s) if n in stage else new[n] for n in new}

    def _backtrack(
        self,
        halvings: int,
        X: Tensor,
        stage: list[str],
        increments: list,
        new: dict,
        weights: Mapping,
        gains: Optional[Mapping[str, Tensor]],
    ):
        """Halve the stage's increment per sample while the total energy rises (``halvings`` times), then
        drop it where it still rises: the total energy never increases."""
        with torch.no_grad():
            total = sum(increments)
            E0 = self.energy(X, weights, gains)  # (*batch,)
            scale = torch.ones_like(E0)
            for i in range(halvings + 1):
                E1 = self.energy(X + scale[..., None, None] * total, weights, gains)
                rises = E1 > E0
                last = i == halvings
                scale = torch.where(rises, torch.zeros_like(scale) if last else scale / 2, scale)
        s = scale[..., None, None]
        return [inc * s for inc in increments], {
            n: self.solvers[n].accept(new[n], s) if n in stage else new[n] for n in new
        }

    def energies(
        self, X: Tensor, weights: Optional[Mapping[str, Tensor]] = None, gains: Optional[Mapping[str, Tensor]] = None
    ) -> dict[str, Tensor]:
        """Energy of each term at the constrained point, each of shape ``X.shape[:-2]``."""
        weights = self._weights(weights)
        return {n: self.term_energy(n, X, weights.get(n), gains) for n in self.names}

    def energy(
        self, X: Tensor, weights: Optional[Mapping[str, Tensor]] = None, gains: Optional[Mapping[str, Tensor]] = None
    ) -> Tensor:
        """Total energy (sum of :meth:`energies`)."""
        return cast(Tensor, sum(self.energies(X, weights, gains).values()))  # at least one term

    @property
    def source(self) -> str:
        """The emitted source of every term module, concatenated."""
        return "\n\n".join(emit_source(self.derivations[n]) for n in self.names)

    def save_source(self, path: Union[str, Path]) -> Path:
        """Write the emitted source to ``path`` (one file per term: ``<stem>_<term>.py``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        for n in self.names:
            (path.parent / f"{path.stem}_{n}.py").write_text(emit_source(self.derivations[n]))
        return path.parent

    def report(self) -> str:
        """Markdown summary: per term, the pattern, the path taken and why, and −∇E in LaTeX."""
        lines = [f"schedule: {self.schedule_kind} {self.stages}"]
        if not self._uniform():
            lines.append("solvers: " + self._describe_solvers())
        elif self.solver != make_solver("gd"):
            lines.append(f"solver: {self.solver.describe()}")
        for n in self.names:
            dv, m = self.derivations[n], self.terms[n]
            lines.append(f"- **{n}** ({dv.family}, mode={m.mode}): pattern *{dv.pattern}*, {dv.path} path: {dv.reason}")
            if dv.latex:
                lines.append(f"  $${dv.latex}$$")
        return "\n".join(lines)

    def extra_repr(self) -> str:
        solvers = (
            f"solver={self.solver.describe()}" if self._uniform() else "solvers={" + self._describe_solvers() + "}"
        )
        return f"schedule={self.schedule_kind!r}, stages={self.stages}, {solvers}"


@functools.lru_cache(maxsize=256)
def _term_class(term: Term, d: int, path: str) -> tuple[type, Derivation]:
    if path == "autodiff":
        dv = autodiff_derivation(term, d)
    else:
        dv = derive(term, d)
        if path == "symbolic" and dv.path != "symbolic":
            raise CompileError(
                f"term {term.name!r}: path='symbolic' was requested but no closed form is available "
                f"({dv.reason}); use path='auto' to fall back to autodiff"
            )
    return emit(dv), dv


def compile(
    energy,
    d: int,
    *,
    mode: str = "paper",
    path: str = "auto",
    schedule: str = "sequential",
    sdpa_threshold: int = 512,
    dtype: Optional[torch.dtype] = None,
    solver: SolverSpec = "gd",
    solvers: Optional[Mapping[str, SolverSpec]] = None,
    **solver_params,
) -> EnergyStep:
    """Compile ``energy`` (an :class:`~energyarch.energy.Energy` or a single term) for width ``d``.

    Args:
        energy: the declared energy.
        d: model width.
        mode: constraint semantics: ``'paper'`` (gradient w.r.t. the projected coordinates at the
            normalised point, mapped back with W, Eqs. 8–11), ``'exact'`` (the true gradient of
            E(RMSNorm(XW)) w.r.t. X), or ``'riemannian'`` (the tangent part of the paper's gradient).
        path: ``'auto'`` (closed form when a pattern is recognised, else autodiff), ``'symbolic'``
            (error if no closed form), or ``'autodiff'`` (``torch.func.grad`` always).
        schedule: ``'sequential'`` (the paper's splitting) or ``'joint'``.
        sdpa_threshold: sequence length above which bi-softmax uses the memory-linear SDPA kernel.
        dtype: parameter dtype (default: torch's default dtype).
        solver: the update rule, a registered name (``'gd'`` default, ``'momentum'``, ``'nesterov'``,
            ``'rmsprop'``, ``'adam'``) or an :class:`~energyarch.solvers.Solver`; ``solver_params`` its
            hyper-parameters (e.g. ``momentum=0.9``, ``steps='bounded'``, ``backtrack=4``): every term's solver.
        solvers: a solver per term, overriding ``solver`` for the terms it names: term name → a registered name
            (it takes the step rule ``steps``, ``max_step``, ``backtrack``, ``halvings`` of ``solver``) or a
            :class:`~energyarch.solvers.Solver` (used as is), e.g. ``solvers={"attn": "momentum"}``. Each term keeps
            its own solver state; how a joint stage mixes step rules is in :class:`EnergyStep`.

    >>> import energyarch as ea
    >>> E = ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2) + ea.FeedForward(g="x", h="relu(x)**2/2")
    >>> step = ea.compile(E, d=8, steps="descent", solvers={"attn": ea.solvers.make_solver("momentum", momentum=0.5,
    ...                                                                                     steps="free")})
    >>> step.solvers["attn"].steps, step.solvers["ff"].describe()
    ('free', "gd(steps='descent', max_step=0.2, halvings=4)")
    """
    energy = as_energy(energy)
    if mode not in MODES:
        raise CompileError(f"mode={mode!r}: choose one of {MODES}")
    if path not in ("auto", "symbolic", "autodiff"):
        raise CompileError(f"path={path!r}: choose 'auto', 'symbolic' or 'autodiff'")
    if schedule not in SCHEDULES:
        raise CompileError(f"schedule={schedule!r}: choose one of {SCHEDULES}")
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise CompileError(f"d={d!r} must be a positive integer (the model width)")
    if not isinstance(sdpa_threshold, int) or isinstance(sdpa_threshold, bool) or sdpa_threshold < 0:
        raise CompileError(f"sdpa_threshold={sdpa_threshold!r} must be an integer >= 0 (a sequence length)")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise CompileError(f"dtype={dtype!r} must be a real floating-point torch dtype, e.g. torch.float64")
    modules, derivations = {}, {}
    for term in energy.terms:
        cls, dv = _term_class(term, d, path)
        extra = {"interaction": term.interaction} if getattr(term, "interaction", None) is not None else {}
        module = cls(
            d=d,
            heads=dv.dims.heads,
            head_dim=dv.dims.head_dim,
            radius=dv.dims.radius,
            mode=mode,
            eps=term.constraint.eps,
            sdpa_threshold=sdpa_threshold,
            **extra,
        )
        _attach_callables(module, term)
        if dtype is not None:
            module.to(dtype)
        modules[term.name], derivations[term.name] = module, dv
    return EnergyStep(energy, modules, derivations, schedule, make_solver(solver, **solver_params), solvers)


def _attach_callables(module: TermUpdate, term: Term) -> None:
    """Opaque primitives are referenced by the emitted code as ``self.<role>`` (``self.f``, ``self.phi``, ...; a
    kernel as ``self.kernel``), whatever the family: every primitive field of the term."""
    for role, prim in primitives_of(term).items():
        setattr(module, "kernel" if role == "K" else role, prim.fn)
