"""Weights of the official Hyper-SET code (github.com/huyunzhe/hyper-set) in an energyarch model.

The official Sudoku model and the image-classification ``HyperSET`` name their tensors as below (facts read from
the official repository; shapes with d = n_embd, p = d / n_head, M = the feed-forward width)::

    Sudoku                                 image classification             energyarch (layer ℓ)
    tok_emb.weight (V, d)                  -                                embed.embed.weight
    pos_emb (1, N, d)                      -  (fixed, not a tensor)         embed.pos
    -                                      cls_token (1, 1, d)              embed.cls
    blocks.ℓ.attn.qkv.weight (d, d)        enc.ℓ.attn.qkv.weight            backbone.layers.ℓ.step.terms.attn.weight ᵀ
    blocks.ℓ.attn.ln1.weight (p,)          enc.ℓ.attn.ln1_{1,2,3}.weight    backbone.layers.ℓ.gains.attn
    blocks.ℓ.mlp.weight (M, d)             enc.ℓ.mlp.weight                 backbone.layers.ℓ.step.terms.ff.weight ᵀ
    blocks.ℓ.ln2.weight (M,)               enc.ℓ.ln2.weight                 backbone.layers.ℓ.gains.ff
    time_mlp.0.1 / .0.3 / .1.1 (shared)    time_mlp.* with RMSNorms         backbone.layers.ℓ.stepnet.time.0 / .2 / out
    ln_f.weight (d,), head.weight (C, d)   fc.0 LayerNorm, fc.1 Linear      readout.norm.weight, readout.linear.weight

Where the structures agree the tensors are copied (transposed where energyarch keeps a basis as ``(d, H·p)``);
every other key is named in the :class:`Conversion` report with the reason. The official step-size network is
shared by all blocks; it is copied into each layer's network, which computes the same step sizes.

>>> import torch
>>> sd = {"tok_emb.weight": torch.zeros(10, 8), "pos_emb": torch.zeros(1, 9, 8),
...       "blocks.0.attn.qkv.weight": torch.zeros(8, 8), "blocks.0.attn.ln1.weight": torch.ones(4),
...       "blocks.0.mlp.weight": torch.zeros(32, 8), "blocks.0.ln2.weight": torch.ones(32),
...       "time_mlp.0.1.weight": torch.zeros(8, 6), "ln_f.weight": torch.ones(8), "head.weight": torch.zeros(9, 8)}
>>> cfg = official_config(sd, iters=4)
>>> (cfg.d, cfg.heads, cfg.ff_ratio, cfg.time_freq, cfg.norm_gain, cfg.norm_eps, cfg.time_embedding)
(8, 2, 4.0, 6, True, 'machine', 'official')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..solvers import OFFICIAL_SOLVER_PARAMS
from .config import ModelConfig

KINDS = ("sudoku", "image")
_PREFIXES = ("module.", "_orig_mod.", "model.")


@dataclass
class Conversion:
    """What :func:`load_official` did.

    Attributes:
        mapped: official key → energyarch key it was copied to.
        unmapped: official key → why it has no place in this energyarch model (the structures differ).
        ignored: official key → why it changes nothing (e.g. an unused buffer, a gain equal to another).
        untouched: energyarch keys that no official tensor filled (left as initialised).
        notes: settings a state_dict cannot show (epsilon, conditioning) that the user should check.
    """

    kind: str
    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    untouched: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every official tensor found its place and every model tensor was filled."""
        return not self.unmapped and not self.untouched

    def summary(self) -> str:
        lines = [
            f"official {self.kind} state_dict: {len(self.mapped)} tensors mapped, {len(self.unmapped)} unmapped, "
            f"{len(self.ignored)} ignored, {len(self.untouched)} model tensors not filled"
        ]
        lines += [f"  unmapped {k}: {why}" for k, why in self.unmapped.items()]
        lines += [f"  ignored  {k}: {why}" for k, why in self.ignored.items()]
        lines += [f"  not filled {k}" for k in self.untouched]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


#: Most blocks an official state_dict may name (the official models have 1 to a few dozen); a crafted key such as
#: ``blocks.1000000000.mlp.weight`` is refused instead of planning a billion layers.
MAX_LAYERS = 1024


def _checked(state_dict, where: str) -> dict[str, Tensor]:
    """The state_dict with prefixes stripped, every key a string and every value a finite floating-point tensor;
    :class:`CheckpointError` naming the first key that is not."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{where}: expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}"
        )
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"{where}: key {str(key)[:60]!r} is of type {type(key).__name__}; the keys of a "
                f"state_dict are names (str)"
            )
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"{where}: {key[:80]!r} holds a {type(value).__name__}, not a tensor; pass "
                f"model.state_dict() of an official model"
            )
        if value.is_complex() or not (value.is_floating_point() or key.endswith(".mask")):
            raise CheckpointError(
                f"{where}: {key[:80]!r} is a {value.dtype} tensor; the official weights are floating-point"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{where}: {key[:80]!r} holds inf or NaN; the weights are broken (a diverged run?)")
        out[_strip(key)] = value
    return out


def _need(sd: Mapping[str, Tensor], key: str, dims: int, where: str) -> Tensor:
    """``sd[key]`` with ``dims`` dimensions, each > 0; :class:`ConfigError` naming the key otherwise."""
    if key not in sd:
        raise ConfigError(f"{where}: key {key!r} is missing; it is needed to read the model's shapes")
    value = sd[key]
    if value.dim() != dims or 0 in value.shape:
        raise ConfigError(
            f"{where}: {key!r} has shape {list(value.shape)}; expected {dims} non-empty "
            f"dimension{'s' if dims > 1 else ''}"
        )
    return value


def detect_kind(state_dict: Mapping[str, Tensor]) -> str:
    """``'sudoku'`` (keys ``blocks.*``) or ``'image'`` (keys ``enc.*``)."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"official state_dict: expected a mapping of names to tensors, got {type(state_dict).__name__}"
        )
    state_dict = {k: v for k, v in state_dict.items() if isinstance(k, str)}
    if any(k.startswith("blocks.") for k in state_dict):
        return "sudoku"
    if any(k.startswith("enc.") for k in state_dict):
        return "image"
    raise ConfigError(
        f"official state_dict: found neither 'blocks.*' (Sudoku model) nor 'enc.*' (image model) keys "
        f"among {sorted(state_dict)[:6]}...; pass the state_dict of an official Hyper-SET model"
    )


def _block_indices(state_dict, prefix: str) -> set[int]:
    """Block indices the keys name (at most six digits each: larger ones are beyond any model)."""
    return {int(m.group(1)) for k in state_dict if (m := re.match(rf"{prefix}\.(\d{{1,6}})\.", k))}


def _layers(state_dict, prefix: str) -> int:
    """The number of blocks: the keys must name blocks 0 .. n-1 with n <= :data:`MAX_LAYERS`."""
    found = _block_indices(state_dict, prefix)
    huge = [k for k in state_dict if re.match(rf"{prefix}\.\d{{7,}}\.", k)]
    if huge or (found and max(found) >= MAX_LAYERS):
        key = huge[0] if huge else next(k for k in state_dict if k.startswith(f"{prefix}.{max(found)}."))
        raise ConfigError(
            f"official state_dict: key {key[:80]!r} names a block beyond {MAX_LAYERS}; the official "
            f"models have a few blocks. Remove the key or pass the model's own state_dict"
        )
    if found and found != set(range(max(found) + 1)):
        missing = sorted(set(range(max(found) + 1)) - found)[:5]
        raise ConfigError(
            f"official state_dict: blocks {missing} are missing between 0 and {max(found)}; the keys "
            f"must name blocks 0, 1, ..., n-1"
        )
    return max(found) + 1 if found else 0


def official_config(state_dict: Mapping[str, Tensor], kind: Optional[str] = None, **overrides) -> ModelConfig:
    """A :class:`ModelConfig` whose shapes and conventions match an official state_dict (d, heads, layers, M,
    time-embedding width from the tensors; gains, machine epsilon and the official time embedding switched on;
    the image model's GELU feed-forward; the paper's signed steps, ``steps='free'``). ``overrides`` set the rest
    (``iters`` = the official ``n_recur``); ``solver='momentum' | 'rmsprop' | 'adam'`` gets the official code's
    hyper-parameters (:data:`~energyarch.solvers.OFFICIAL_SOLVER_PARAMS`: its momentum convention, ε = 1e-6)
    unless ``solver_params`` is given."""
    state_dict = _checked(state_dict, "official state_dict")
    kind = kind or detect_kind(state_dict)
    _check_kind(kind)
    block = "blocks" if kind == "sudoku" else "enc"
    where = f"official {kind} state_dict"
    d = _need(state_dict, f"{block}.0.attn.qkv.weight", 2, where).shape[1]
    gain = _need(
        state_dict, f"{block}.0.attn.ln1.weight" if kind == "sudoku" else f"{block}.0.attn.ln1_1.weight", 1, where
    )
    M = _need(state_dict, f"{block}.0.mlp.weight", 2, where).shape[0]
    freq = _need(state_dict, "time_mlp.0.1.weight", 2, where).shape[1]
    if d % gain.shape[0]:
        raise ConfigError(
            f"{where}: the attention gain has {gain.shape[0]} entries, which does not divide d = {d} "
            f"(the head width p = d / heads); the tensors do not come from one official model"
        )
    values: dict[str, Any] = dict(
        d=d,
        heads=d // gain.shape[0],
        layers=_layers(state_dict, block),
        ff_ratio=M / d,
        time_freq=freq,
        norm_gain=True,
        norm_eps="machine",
        time_embedding="official",
        step_sizes="learned",
        condition="x0" if kind == "sudoku" else "xt",
        feedforward="relu" if kind == "sudoku" else "gelu-ff",
        steps="free",
    )  # the official code's signed steps
    values.update(overrides)
    if values.get("solver", "gd") in OFFICIAL_SOLVER_PARAMS and "solver_params" not in overrides:
        values["solver_params"] = dict(OFFICIAL_SOLVER_PARAMS[values.get("solver", "gd")])
    return ModelConfig(**values)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r}: choose one of {KINDS}")


def read_official(path: Union[str, Path]) -> dict[str, Tensor]:
    """The model tensors of an official checkpoint file (``torch.load(weights_only=True)``; the trainer's
    ``model_state_dict`` / Lightning's ``state_dict`` wrappers and ``module.`` / ``_orig_mod.`` prefixes removed)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is reported as the same user error
        raise CheckpointError(
            f"official checkpoint {str(path)!r}: cannot be read with weights_only=True ({err}); "
            f"save its model.state_dict() alone and pass that file"
        ) from None
    for key in ("model_state_dict", "state_dict"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"official checkpoint {str(path)!r}: holds a {type(obj).__name__}, not a state_dict")
    return {_strip(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


# -------------------------------------------------------------------------------------------------------------
# the key maps: official key → (energyarch key(s), transform) or a reason
# -------------------------------------------------------------------------------------------------------------

_T: Callable[[Tensor], Tensor] = lambda w: w.t()  # noqa: E731 - (out, in) Linear weight → energyarch basis (d, cols)
_SAME: Callable[[Tensor], Tensor] = lambda w: w  # noqa: E731


def _stepnet(layers: int) -> dict[str, tuple[list[str], Callable]]:
    """The Sudoku model's shared step-size network → every layer's StepSizeNet."""
    out = {}
    for official, ours in (("time_mlp.0.1", "time.0"), ("time_mlp.0.3", "time.2"), ("time_mlp.1.1", "out")):
        for param in ("weight", "bias"):
            out[f"{official}.{param}"] = ([f"backbone.layers.{i}.stepnet.{ours}.{param}" for i in range(layers)], _SAME)
    return out


def _sudoku_map(sd: Mapping[str, Tensor], layers: int, conv: Conversion):
    table = {
        "tok_emb.weight": (["embed.embed.weight"], _SAME),
        "pos_emb": (["embed.pos"], _SAME),
        "ln_f.weight": (["readout.norm.weight"], _SAME),
        "head.weight": (["readout.linear.weight"], _SAME),
    }
    table.update(_stepnet(layers))
    for i in range(layers):
        ours = f"backbone.layers.{i}"
        table[f"blocks.{i}.attn.qkv.weight"] = ([f"{ours}.step.terms.attn.weight"], _T)
        table[f"blocks.{i}.attn.ln1.weight"] = ([f"{ours}.gains.attn"], _SAME)
        table[f"blocks.{i}.mlp.weight"] = ([f"{ours}.step.terms.ff.weight"], _T)
        table[f"blocks.{i}.ln2.weight"] = ([f"{ours}.gains.ff"], _SAME)
        conv.ignored[f"blocks.{i}.attn.mask"] = "causal-mask buffer of the official baseline Transformer; unused"
    return table


def _image_map(sd: Mapping[str, Tensor], layers: int, conv: Conversion):
    table = {"cls_token": (["embed.cls"], _SAME)}
    for i in range(layers):
        ours, theirs = f"backbone.layers.{i}", f"enc.{i}"
        table[f"{theirs}.attn.qkv.weight"] = ([f"{ours}.step.terms.attn.weight"], _T)
        table[f"{theirs}.mlp.weight"] = ([f"{ours}.step.terms.ff.weight"], _T)
        table[f"{theirs}.ln2.weight"] = ([f"{ours}.gains.ff"], _SAME)
        q, k, v = (f"{theirs}.attn.ln1_{j}.weight" for j in (1, 2, 3))
        if all(n in sd for n in (q, k, v)) and torch.equal(sd[q], sd[k]) and torch.equal(sd[q], sd[v]):
            table[q] = ([f"{ours}.gains.attn"], _SAME)
            conv.ignored[k] = conv.ignored[v] = f"equal to {q}: one gain shared by query, key and value"
        else:
            for n in (q, k, v):
                conv.unmapped[n] = (
                    "separate query / key / value RMSNorm gains: the update is then not the "
                    "gradient of one energy, so it has no energyarch counterpart"
                )
    reasons = {
        "emb.": "patch embedding LayerNorm → Linear → LayerNorm; energyarch's is one strided convolution",
        "fc.": "readout LayerNorm + Linear with bias; energyarch's is RMSNorm + Linear without bias",
        "time_mlp.": "step-size network with RMSNorms between its layers; energyarch's StepSizeNet has none",
        "ln_inp.": "RMSNorm of the tokens before the step-size network; energyarch's StepSizeNet has none",
    }
    for key in sd:
        for prefix, why in reasons.items():
            if key.startswith(prefix):
                conv.unmapped[key] = why
    return table


@torch.no_grad()
def load_official(
    model: nn.Module, state_dict: Mapping[str, Tensor], kind: Optional[str] = None, strict: bool = False
) -> Conversion:
    """Copy an official Sudoku / image-classification state_dict into ``model`` where the structures agree.

    Returns the :class:`Conversion` report; with ``strict`` a :class:`CheckpointError` names every official key
    that could not be mapped and every model tensor left unfilled. Shapes are checked before anything is copied,
    so a refused conversion leaves ``model`` unchanged.
    """
    sd = _checked(state_dict, "load_official: state_dict")
    kind = kind or detect_kind(sd)
    _check_kind(kind)
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.arch != "hyperset":
        raise ConfigError(
            "load_official: model must be an energyarch Hyper-SET model (build_model with "
            "arch='hyperset'); see official_config for matching settings"
        )
    block = "blocks" if kind == "sudoku" else "enc"
    conv = Conversion(kind)
    table = (_sudoku_map if kind == "sudoku" else _image_map)(sd, _layers(sd, block), conv)  # bounded, contiguous
    ours = model.state_dict()
    plan: list[tuple[str, str, Tensor]] = []
    for key, value in sd.items():
        if key in conv.unmapped or key in conv.ignored:
            continue
        if key not in table:
            conv.unmapped[key] = "no energyarch counterpart known for this key"
            continue
        targets, transform = table[key]
        if transform is _T and value.dim() != 2:
            conv.unmapped[key] = f"shape {tuple(value.shape)}: a Linear weight has 2 dimensions"
            continue
        value = transform(value)
        missing = [t for t in targets if t not in ours]
        if missing:
            conv.unmapped[key] = _why_missing(missing[0], value, cfg)
            continue
        bad = [t for t in targets if tuple(ours[t].shape) != tuple(value.shape)]
        if bad:
            conv.unmapped[key] = (
                f"shape {tuple(value.shape)} (after transposing) vs the model's "
                f"{bad[0]} {tuple(ours[bad[0]].shape)}; build the model with official_config"
            )
            continue
        plan += [(key, t, value) for t in targets]
    filled = {t for _, t, _ in plan}
    conv.untouched = sorted(set(ours) - filled)
    _notes(conv, cfg, kind, filled)
    if strict and not conv.complete:
        raise CheckpointError(
            "load_official: the official state_dict does not fit this model; nothing was copied.\n" + conv.summary()
        )
    for key, target, value in plan:
        ours[target].copy_(value.to(ours[target].dtype))
        conv.mapped[key] = target if key not in conv.mapped else conv.mapped[key] + f", {target}"
    return conv


def _why_missing(target: str, value: Tensor, cfg: ModelConfig) -> str:
    if ".gains." in target:
        if torch.all(value == 1):
            return "an all-ones RMSNorm gain (no effect) but the model has no gains; fine to drop, or norm_gain=True"
        return "learnable RMSNorm gain, but the model was built with norm_gain=False; set norm_gain=True"
    if ".stepnet." in target:
        return f"step-size network weight, but the model uses step_sizes={cfg.step_sizes!r}; use 'learned'"
    return f"the model has no tensor {target}; build it with official_config"


def _notes(conv: Conversion, cfg: ModelConfig, kind: str, filled: set) -> None:
    if cfg.norm_eps != "machine":
        conv.notes.append(
            f"the official RMSNorm epsilon is the dtype's machine epsilon; the model has "
            f"norm_eps={cfg.norm_eps!r} (set norm_eps='machine' to match)"
        )
    if any(".stepnet." in t for t in filled) and cfg.time_embedding != "official":
        conv.notes.append(
            "the step-size weights expect the official time embedding; the model has "
            f"time_embedding={cfg.time_embedding!r} (set time_embedding='official')"
        )
    conv.notes.append(
        "input_cond=True in the official config corresponds to condition='x0', False to 'xt'; the "
        f"model has condition={cfg.condition!r}"
    )
    if cfg.layers > 1 and cfg.condition == "x0":
        conv.notes.append(
            "with input_cond=True every official block is conditioned on the model's input, each "
            "energyarch layer on its own input: the two agree for layers=1 only"
        )
    if kind == "image":
        conv.notes.append("the official image layers use a GELU feed-forward: feedforward='gelu-ff'")
