"""Model and task configuration: one dataclass each, one comment per field, validated at construction.

>>> cfg = ModelConfig(arch="hyperset", d=64, heads=4, layers=1, iters=8)
>>> cfg.energy().names
['attn', 'ff']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from ..energy import Attention, Energy, FeedForward
from ..errors import ConfigError

ARCHS = ("hyperset", "transformer", "energy_transformer", "crate")

#: Paper operators (Tables 19-20) as declarations; heads / ratio are filled in from the config.
ATTENTION_PRESETS = {
    "bisoftmax": lambda heads: Attention(f="log(x)/beta", K="exp(beta*s)", heads=heads),
    "sigmoid": lambda heads: Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=heads),
    "linear": lambda heads: Attention(f="x/(2*beta)", K="(beta*s)**2/2", phi="sigmoid(x)", heads=heads),
}
FEEDFORWARD_PRESETS = {
    "relu": lambda ratio: FeedForward(g="x", h="relu(x)**2/2", ratio=ratio),
    "softmax": lambda ratio: FeedForward(g="log(x)", h="exp(x)", ratio=ratio),
    "gated": lambda ratio: FeedForward(g="x**2/2", h="sigmoid(x)", ratio=ratio),
}


def _fail(name: str, value, fix: str):
    raise ConfigError(f"ModelConfig.{name}={value!r}: {fix}")


def _pos_int(name: str, value, zero_ok: bool = False) -> None:
    lo = 0 if zero_ok else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        _fail(name, value, f"must be an integer >= {lo}")


def _pos_num(name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        _fail(name, value, "must be a positive number")


def _choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name}={value!r}: choose one of {tuple(choices)}")


@dataclass
class ModelConfig:
    """Architecture of a model (backbone only; the task decides embedding and readout)."""

    arch: str = "hyperset"  # 'hyperset' | 'transformer' | 'energy_transformer' | 'crate'
    d: int = 128  # token width
    heads: int = 4  # attention heads H (head width p = d / H)
    layers: int = 1  # L distinct layers (own weights), applied one after the other
    iters: int = 16  # T: iterations of each layer at training (shared weights); evaluation may use more
    attention: Union[str, Attention] = "bisoftmax"  # hyperset: 'bisoftmax' | 'sigmoid' | 'linear' | ea.Attention
    feedforward: Union[str, FeedForward] = "relu"  # hyperset: preset name (relu|softmax|gated) or an ea.FeedForward
    ff_ratio: float = 4.0  # hyperset / energy_transformer: feed-forward width M = ff_ratio * d (presets only)
    step_sizes: str = "learned"  # hyperset: 'learned' (alpha_t, gamma_t from a network, App. D.1) | 'fixed'
    fixed_step: float = 0.1  # step size when step_sizes='fixed'; also the Energy Transformer's step
    condition: str = "x0"  # step-size network conditioned on the layer's input 'x0' or the current tokens 'xt'
    time_freq: int = 512  # width of the sinusoidal embedding of the iteration index t (Table 6)
    lora_rank: int = 0  # hyperset: rank r of depth-wise LoRA (App. G.2); 0 = off
    lora_scale: float = 4.0  # s in W_t = W + s * A_t B_t
    mode: str = "paper"  # hyperset constraint semantics: 'paper' | 'exact' | 'riemannian' (see ea.compile)

    def __post_init__(self):
        _choice("ModelConfig", "arch", self.arch, ARCHS)
        for name in ("d", "heads", "layers", "iters", "time_freq"):
            _pos_int(name, getattr(self, name))
        _pos_int("lora_rank", self.lora_rank, zero_ok=True)
        for name in ("ff_ratio", "fixed_step", "lora_scale"):
            _pos_num(name, getattr(self, name))
        if self.d % self.heads:
            _fail("heads", self.heads, f"must divide d={self.d} (head width p = d / heads); e.g. heads=4 with d=128")
        if self.time_freq % 2:
            _fail("time_freq", self.time_freq, "must be even (half sine, half cosine); e.g. 512")
        if self.lora_rank and self.arch != "hyperset":
            _fail("lora_rank", self.lora_rank, f"depth-wise LoRA applies to arch='hyperset' only, not "
                                               f"arch={self.arch!r}; use lora_rank=0")
        _choice("ModelConfig", "step_sizes", self.step_sizes, ("learned", "fixed"))
        _choice("ModelConfig", "condition", self.condition, ("x0", "xt"))
        _choice("ModelConfig", "mode", self.mode, ("paper", "exact", "riemannian"))
        if isinstance(self.attention, str):
            _choice("ModelConfig", "attention", self.attention, ATTENTION_PRESETS)
        elif isinstance(self.attention, Attention):
            if self.attention.heads != self.heads:
                _fail("attention", self.attention,
                      f"declares heads={self.attention.heads} but heads={self.heads}; make them equal")
        else:
            _fail("attention", self.attention, f"give a preset name {tuple(ATTENTION_PRESETS)} or an ea.Attention")
        if isinstance(self.feedforward, str):
            _choice("ModelConfig", "feedforward", self.feedforward, FEEDFORWARD_PRESETS)
        elif not isinstance(self.feedforward, FeedForward):
            _fail("feedforward", self.feedforward,
                  f"give a preset name {tuple(FEEDFORWARD_PRESETS)} or an ea.FeedForward")

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    def energy(self) -> Energy:
        """The Hyper-SET energy E_ATTN + E_FF this config declares (Eqs. 19-20)."""
        attn = ATTENTION_PRESETS[self.attention](self.heads) if isinstance(self.attention, str) else self.attention
        ff = (FEEDFORWARD_PRESETS[self.feedforward](self.ff_ratio) if isinstance(self.feedforward, str)
              else self.feedforward)
        return attn + ff


@dataclass
class TaskSpec:
    """What the model reads and predicts."""

    kind: str = "tokens"  # 'tokens' (integer ids, shape (B, N)) | 'image' (float, shape (B, C, H, W))
    vocab_size: int = 10  # tokens: number of distinct ids
    seq_len: int = 81  # tokens: sequence length N (learnable positional encoding)
    num_outputs: int = 9  # classes per token ('per_token') or per input ('cls')
    output: str = "per_token"  # 'per_token': logits (B, N, C) | 'cls': class-token readout, logits (B, C)
    image_shape: Optional[tuple] = None  # image: (C, H, W)
    patch_size: int = 4  # image: side of a square patch; must divide H and W

    def __post_init__(self):
        _choice("TaskSpec", "kind", self.kind, ("tokens", "image"))
        _choice("TaskSpec", "output", self.output, ("per_token", "cls"))
        for name in ("vocab_size", "seq_len", "num_outputs", "patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"TaskSpec.{name}={value!r}: must be an integer >= 1")
        if self.kind == "image":
            shape = self.image_shape
            if (not isinstance(shape, (tuple, list)) or len(shape) != 3
                    or not all(isinstance(s, int) and s > 0 for s in shape)):
                raise ConfigError(f"TaskSpec.image_shape={shape!r}: give (C, H, W) as positive integers, "
                                  f"e.g. (3, 32, 32)")
            self.image_shape = tuple(shape)
            if shape[1] % self.patch_size or shape[2] % self.patch_size:
                raise ConfigError(f"TaskSpec.patch_size={self.patch_size!r}: must divide H={shape[1]} and "
                                  f"W={shape[2]}; e.g. patch_size=4 for 32x32 images")

    @property
    def num_tokens(self) -> int:
        """Tokens the backbone sees (class token included when output='cls')."""
        if self.kind == "tokens":
            n = self.seq_len
        else:
            _, H, W = self.image_shape
            n = (H // self.patch_size) * (W // self.patch_size)
        return n + (self.output == "cls")
