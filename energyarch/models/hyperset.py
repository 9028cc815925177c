"""The Hyper-SET backbone: L distinct compiled energy layers, each iterated T times (Sec. 4, App. D).

Per layer ℓ and iteration t (weights shared across t)::

    steps = stepnet_ℓ(t, x(0) or x(t))                     α_t, γ_t ∈ R^d per token (Eq. 12)
    W_t   = W + s · A_t B_t                                 depth-wise LoRA, when lora_rank > 0 (App. G.2)
    X, S  ← step_ℓ(X, steps, W_t, S)                        one solver step per term (Eqs. 9, 11 for 'gd'); the
                                                            solver state S (velocity, moments) is carried across t

With ``norm_gain`` (the official code's learnable RMSNorm weights) each term's point is ``Z = g ⊙ RMSNorm(X W_h)·R/√p``
with one gain vector g per term (length p, shared by the heads; length M for a feed-forward term); the step is
the paper-mode step at that point, ``X ← X − step ⊙ Σ_h ∇E(Z_h) W_hᵀ`` (the gain is not differentiated through,
as in the official code).

>>> import torch
>>> from energyarch.models import ModelConfig
>>> net = HyperSET(ModelConfig(d=16, heads=2, iters=3, time_freq=8, steps="free"))
>>> X = torch.randn(2, 5, 16)
>>> torch.equal(net(X), X)      # zero-initialised free step sizes: the identity at initialisation
True
"""

from __future__ import annotations

import copy
from typing import Iterable, Mapping, Optional, Union, cast

import torch
from torch import Tensor, nn

from ..compile import EnergyStep, compile as compile_energy
from ..energy import Attention
from ..runtime import TermUpdate
from .config import ModelConfig
from .diagnostics import TraceRecorder
from .lora import DepthLoRA
from .stepsizes import FixedSteps, StepSizeNet


class HyperSETLayer(nn.Module):
    """One layer with unique parameters: a compiled :class:`EnergyStep`, its step sizes and optional LoRA.

    Each layer has its own step-size network; ``t`` counts from 0 within the layer, and ``condition='x0'``
    means the layer's own input (the tokenizer output for the first layer).
    """

    def __init__(self, step: EnergyStep, cfg: ModelConfig):
        super().__init__()
        self.step = step
        names = step.names
        if cfg.step_sizes == "learned":
            self.stepnet: Union[StepSizeNet, FixedSteps] = StepSizeNet(
                cfg.d, names, cfg.time_freq, embedding=cfg.time_embedding
            )
        else:
            # α = fixed_step under each term's rule
            self.stepnet = FixedSteps(names, {n: step.solvers[n].raw_step(cfg.fixed_step) for n in names})
        self.condition = cfg.condition
        terms = cast(Mapping[str, TermUpdate], step.terms)
        self.lora = (
            DepthLoRA({n: tuple(m.weight.shape) for n, m in terms.items()}, cfg.iters, cfg.lora_rank, cfg.lora_scale)
            if cfg.lora_rank
            else None
        )
        decl = step.energy_decl
        #: terms whose per-head coordinates the diagnostics look at (the subspace/attention terms)
        self.subspace_terms = [t.name for t in decl.terms if isinstance(t, Attention)]
        #: learnable RMSNorm gain g per term (length p or M, initialised to 1), or None
        self.gains = (
            nn.ParameterDict({n: nn.Parameter(torch.ones(m.head_dim)) for n, m in terms.items()})
            if cfg.norm_gain
            else None
        )
        #: the RMSNorm epsilon follows the parameters' dtype (torch.finfo(dtype).eps) when norm_eps = 'machine'
        self.machine_eps = cfg.norm_eps == "machine"

    @property
    def _gain_map(self) -> Optional[Mapping[str, Tensor]]:
        """``gains`` as the mapping it is (torch does not type nn.ParameterDict as a Mapping)."""
        return cast(Optional[Mapping[str, Tensor]], self.gains)

    def _apply(self, fn, *args, **kwargs):
        """``.to(dtype)`` / ``.double()`` / ...: with norm_eps = 'machine' the epsilon follows the new dtype."""
        out = super()._apply(fn, *args, **kwargs)
        if self.machine_eps:
            for term in cast(Mapping[str, TermUpdate], self.step.terms).values():
                term.eps = float(torch.finfo(term.weight.dtype).eps)
        return out

    def _point(self, name: str, X: Tensor, W: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """``(Z_raw, Z)`` of one term: raw coordinates and the (gain-scaled) normalised point, (B, H, N, p)."""
        term = cast(TermUpdate, self.step.terms[name])
        Z_raw = term.coords(X, W)
        Z = term.normalize(Z_raw)
        return Z_raw, (Z if self.gains is None else Z * self.gains[name])

    def _direction(self, name: str, X: Tensor, W: Optional[Tensor]) -> Tensor:
        """``−Σ_h ∇E(Z_h) W_hᵀ`` of one term at the gain-scaled point, shape like X (:meth:`EnergyStep.direction`)."""
        return self.step.direction(name, X, W, self._gain_map)

    def update(self, X: Tensor, steps: dict, W: Optional[dict] = None, state: Optional[dict] = None):
        """One iteration of every term in the compiled schedule, with the layer's gains (if any) and the solver
        state (``(X, state)`` is returned when ``state`` is given)."""
        return self.step(X, steps, W, state, gains=self.gains)

    def energies(self, X: Tensor, W: Optional[dict] = None) -> dict[str, Tensor]:
        """Energy of each term at its (gain-scaled) point, each of shape ``(B,)``."""
        return self.step.energies(X, W, self._gain_map)

    def weights(self, t: int) -> Optional[dict[str, Tensor]]:
        """The bases used at iteration ``t``: None (the shared W) without LoRA, else ``W + s A_t B_t``."""
        if self.lora is None:
            return None
        return self.lora.weights(t, {n: m.weight for n, m in cast(Mapping[str, TermUpdate], self.step.terms).items()})

    def head_coords(self, X: Tensor, weights: Optional[dict] = None) -> dict[str, Tensor]:
        """Normalised per-head coordinates ``RMSNorm(X W_h)`` of each attention term: name → (B, H, N, p)."""
        weights = weights or {}
        return {n: self._point(n, X, weights.get(n))[1] for n in self.subspace_terms}

    def forward(self, X: Tensor, iters: int, recorder: Optional[TraceRecorder] = None, index: int = 0) -> Tensor:
        X0 = X  # (B, N, d)
        state = self.step.init_state()  # solver state, carried across t
        for t in range(iters):
            W = self.weights(t)
            steps = self.stepnet(t, X0 if self.condition == "x0" else X)
            if recorder is None:
                X, state = self.update(X, steps, W, state)
                continue
            before = self.energies(X, W)
            coords = self.head_coords(X, W)
            X, state = self.update(X, steps, W, state)
            recorder.add(index, t, before, self.energies(X, W), coords)
        return X

    @torch.no_grad()
    def adaptive(self, X: Tensor, tol: float, max_iters: int) -> tuple[Tensor, Tensor]:
        """Adaptive depth (App. H.4): iterate each sample until the relative change of its total energy,
        ``|E(x_{t+1}) − E(x_t)| / |E(x_t)|``, falls below ``tol``, at most ``max_iters`` times.

        Returns the final X and the number of iterations each sample used, ``(B,)`` (a stopped sample keeps its
        X and solver state; the others go on). Without gradient.
        """
        X0 = X
        state = self.step.init_state()
        active = torch.ones(X.shape[:-2], dtype=torch.bool, device=X.device)  # (B,)
        used = torch.zeros(X.shape[:-2], dtype=torch.long, device=X.device)
        for t in range(max_iters):
            W = self.weights(t)
            steps = self.stepnet(t, X0 if self.condition == "x0" else X)
            E0 = self.step.energy(X, W, self._gain_map)
            X1, state1 = self.update(X, steps, W, state)
            E1 = self.step.energy(X1, W, self._gain_map)
            keep = active[..., None, None]
            X = torch.where(keep, X1, X)
            state = {
                n: {
                    k: (torch.where(keep, v, state[n][k]) if isinstance(v, Tensor) and k in state[n] else v)
                    for k, v in st.items()
                }
                for n, st in state1.items()
            }
            used = used + active.long()
            rel = (E1 - E0).abs() / E0.abs().clamp_min(torch.finfo(E0.dtype).tiny)
            active = active & ~(rel < tol)
            if not bool(active.any()):
                break
        return X, used


class HyperSET(nn.Module):
    """L distinct compiled layers (deep copies of one compiled step, each re-initialised), each applied T times.

    Args:
        cfg: the model config; uses d, heads, layers, iters, attention, feedforward, ff_ratio, step_sizes,
            fixed_step, condition, time_freq, lora_rank, lora_scale, mode, solver, solver_params, solvers (one solver
            and step rule per term), norm_gain, norm_eps, time_embedding.
        causal: compile the attention term's causal conditional energy (ea.CausalAttention), for language models.
    """

    def __init__(self, cfg: ModelConfig, causal: bool = False):
        super().__init__()
        self.cfg, self.causal = cfg, causal
        self.iters = cfg.iters
        energy = cfg.energy(causal=causal)
        step = compile_energy(
            energy,
            d=cfg.d,
            mode=cfg.mode,  # norm_eps: in each Sphere
            solver=cfg.solver_object(),
            solvers=cfg.solver_objects(energy.names),
            schedule=cfg.schedule,
        )
        layers = []
        for _ in range(cfg.layers):
            own = copy.deepcopy(step)
            for term in cast(Mapping[str, TermUpdate], own.terms).values():
                term.reset_parameters()
            layers.append(HyperSETLayer(own, cfg))
        self.layers = nn.ModuleList(layers)

    def forward(self, X: Tensor, iters: Optional[int] = None, record: bool = False):
        """Run every layer ``iters`` times (default: the training T). Returns X, or ``(X, Trace)`` if record."""
        iters = self.iters if iters is None else iters
        recorder = TraceRecorder() if record else None
        for index, layer in enumerate(self.layers):
            X = layer(X, iters, recorder, index)
        return (X, recorder.finish()) if recorder is not None else X

    @torch.no_grad()
    def adaptive(self, X: Tensor, tol: float, max_iters: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Adaptive depth through every layer (:meth:`HyperSETLayer.adaptive`); returns X and the iterations each
        sample used, summed over the layers, ``(B,)``. ``max_iters`` per layer (default: the training T)."""
        max_iters = self.iters if max_iters is None else max_iters
        used = torch.zeros(X.shape[:-2], dtype=torch.long, device=X.device)
        for layer in cast(Iterable[HyperSETLayer], self.layers):
            X, n = layer.adaptive(X, tol, max_iters)
            used = used + n
        return X, used
