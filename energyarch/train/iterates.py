"""Logits after every iteration, without changing the model: forward hooks on the per-iteration module.

The recurrent backbones apply one module per iteration (Hyper-SET: the layer's compiled :class:`EnergyStep`;
Transformer, Energy Transformer, CRATE: the block). A forward hook on it collects the state after each
iteration; the model's readout turns each state into logits. This serves ``loss_on='all'`` (the loss averaged
over every iteration) and the test-time extrapolation sweep (one pass at the largest T gives every smaller T
when the model has one layer).

>>> import torch
>>> from energyarch.models import ModelConfig, TaskSpec, build_model
>>> model = build_model(ModelConfig(arch="transformer", d=16, heads=2, iters=3), TaskSpec(seq_len=9))
>>> x = torch.randint(0, 10, (2, 9))
>>> logits = forward_all(model, x)
>>> len(logits), torch.allclose(logits[-1], model(x))
(3, True)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from torch import Tensor, nn

from ..errors import ConfigError
from ..models import Model


def iteration_modules(model: nn.Module) -> list[nn.Module]:
    """The module each layer calls once per iteration, one per layer (in order)."""
    backbone = getattr(model, "backbone", None)
    layers = getattr(backbone, "layers", None)
    if layers is None or getattr(model, "readout", None) is None:
        raise ConfigError(
            f"forward_all: {type(model).__name__} has no backbone.layers / readout; pass a Model from "
            f"energyarch.models.build_model, or use loss_on='last'"
        )
    mods = []
    for layer in layers:
        step = getattr(layer, "step", None)  # Hyper-SET: the compiled EnergyStep inside the layer's loop
        mods.append(step if isinstance(step, nn.Module) else layer)
    return mods


@contextmanager
def capture_states(model: nn.Module) -> Iterator[list[Tensor]]:
    """Within the block, every iteration's output state ``(B, N, d)`` is appended to the yielded list."""
    states: list[Tensor] = []

    def hook(_module, _args, out):
        states.append(out[0] if isinstance(out, tuple) else out)

    handles = [m.register_forward_hook(hook) for m in iteration_modules(model)]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


def forward_all(
    model: Model, inputs: Tensor, iters: Optional[int] = None, runner: Optional[nn.Module] = None
) -> list[Tensor]:
    """Logits after each of the L·T iterations (the last entry is the model's output).

    ``runner`` is what is called (e.g. the DistributedDataParallel wrapper of ``model``); hooks go on ``model``.
    """
    with capture_states(model) as states:
        (runner or model)(inputs, iters=iters)
    return [model.readout(X) for X in states]
