"""A model is embedding → backbone → readout, built from a :class:`ModelConfig` and a :class:`TaskSpec`.

>>> import torch
>>> from energyarch.models import ModelConfig, TaskSpec, build_model
>>> model = build_model(ModelConfig(d=16, heads=2, iters=2, time_freq=8), TaskSpec(seq_len=81))
>>> model(torch.randint(0, 10, (2, 81))).shape
torch.Size([2, 81, 9])
"""

from __future__ import annotations

from typing import Optional, cast

from torch import Tensor, nn

from ..errors import ConfigError
from .config import ModelConfig, TaskSpec
from .heads import ClsReadout, PatchEmbedding, TokenEmbedding, TokenReadout


class Model(nn.Module):
    """``embed`` → ``backbone`` → ``readout``.

    Attributes:
        cfg, task: the configs it was built from; ``iters``: the training T (default at call time).
    """

    def __init__(self, embed: nn.Module, backbone: nn.Module, readout: nn.Module, cfg: ModelConfig, task: TaskSpec):
        super().__init__()
        self.embed, self.backbone, self.readout = embed, backbone, readout
        self.cfg, self.task = cfg, task

    @property
    def iters(self) -> int:
        return self.cfg.iters

    def forward(self, inputs: Tensor, iters: Optional[int] = None, record: bool = False):
        """Logits ``(B, N, C)`` (per_token) or ``(B, C)`` (cls); with ``record`` also the backbone's Trace.

        ``iters`` overrides T for every layer (it may exceed the training T).
        """
        X = self.embed(inputs)  # (B, N, d)
        out = self.backbone(X, iters=iters, record=record)
        if record:
            X, trace = out
            return self.readout(X), trace
        return self.readout(out)


#: backbones that have a causal form (token t's update reads tokens <= t only), for TaskSpec(causal=True)
CAUSAL_ARCHS = ("hyperset", "transformer")


def _backbone(cfg: ModelConfig, causal: bool = False) -> nn.Module:
    if causal and cfg.arch not in CAUSAL_ARCHS:
        raise ConfigError(
            f"ModelConfig.arch={cfg.arch!r}: the task is causal (language modelling) and this "
            f"backbone has no causal form; choose one of {CAUSAL_ARCHS}"
        )
    if cfg.arch == "hyperset":
        from .hyperset import HyperSET

        return HyperSET(cfg, causal=causal)
    if cfg.arch == "transformer":
        from .transformer import Transformer

        return Transformer(cfg, causal=causal)
    if cfg.arch == "energy_transformer":
        from .energy_transformer import EnergyTransformer

        return EnergyTransformer(cfg)
    if cfg.arch == "crate":
        from .crate import CRATE

        return CRATE(cfg)
    raise ConfigError(f"ModelConfig.arch={cfg.arch!r}: unknown")  # pragma: no cover - validated by ModelConfig


def build_model(model_cfg: ModelConfig, task_spec: TaskSpec) -> Model:
    """Build embedding, backbone and readout for ``task_spec`` with the backbone ``model_cfg.arch``."""
    if not isinstance(model_cfg, ModelConfig):
        raise ConfigError(f"build_model: model_cfg is a {type(model_cfg).__name__}; pass a ModelConfig")
    if not isinstance(task_spec, TaskSpec):
        raise ConfigError(f"build_model: task_spec is a {type(task_spec).__name__}; pass a TaskSpec")
    d, cls = model_cfg.d, task_spec.output == "cls"
    embed: nn.Module
    if task_spec.kind == "tokens":
        embed = TokenEmbedding(task_spec.vocab_size, task_spec.seq_len, d, cls=cls, causal=task_spec.causal)
    else:
        embed = PatchEmbedding(cast(tuple, task_spec.image_shape), task_spec.patch_size, d, cls=cls)
    readout = ClsReadout(d, task_spec.num_outputs) if cls else TokenReadout(d, task_spec.num_outputs)
    return Model(embed, _backbone(model_cfg, causal=task_spec.causal), readout, model_cfg, task_spec)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def describe(model: nn.Module) -> str:
    """Parameter counts per part (and per top-level child of the backbone), as aligned text."""
    rows = []
    if isinstance(model, Model):
        rows.append((f"embed ({type(model.embed).__name__})", count_parameters(model.embed)))
        rows.append(
            (f"backbone ({type(model.backbone).__name__}, arch={model.cfg.arch!r})", count_parameters(model.backbone))
        )
        for name, child in model.backbone.named_modules():
            if name.count(".") in (1, 2) and name.startswith("layers.") and count_parameters(child):
                rows.append((f"  {name} ({type(child).__name__})", count_parameters(child)))
        rows.append((f"readout ({type(model.readout).__name__})", count_parameters(model.readout)))
    else:
        rows.extend((f"{n} ({type(c).__name__})", count_parameters(c)) for n, c in model.named_children())
    rows.append(("total", count_parameters(model)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name:<{width}}  {n:>12,}" for name, n in rows)
