"""Sample bytes from a trained byte-level language model (``energyarch generate``).

The model is rebuilt from its run folder (``checkpoint.json`` + safetensors, no pickle) without loading any
text. Sampling is autoregressive over bytes: the context is the last ``seq_len`` bytes, the next byte is drawn
from ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely bytes (``temperature = 0``: the
most likely byte), with a seeded generator.

>>> import torch
>>> from energyarch.models import ModelConfig, build_model
>>> from energyarch.train.tasks import text_spec
>>> model = build_model(ModelConfig(arch="transformer", d=16, heads=2, iters=1), text_spec(8))
>>> out = generate(model, b"def ", max_bytes=5, seed=0)
>>> len(out), out == generate(model, b"def ", max_bytes=5, seed=0)
(5, True)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models import build_model
from .checkpoint import STATE_FILE, load_checkpoint, read_state
from .config import TrainConfig, saved_config
from .tasks import text_spec


def load_text_model(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, TrainConfig, dict]:
    """The language model of a ``task = "text"`` run folder: ``(model, cfg, state)``; CheckpointError otherwise."""
    from . import distributed

    state, folder = read_state(path)
    cfg = TrainConfig.from_dict(saved_config(state["config"]), source=f"{folder / STATE_FILE} [config]")
    if cfg.task != "text":
        raise CheckpointError(
            f"checkpoint {str(path)!r} was trained on task={cfg.task!r}, not a language model; "
            f'generate needs a run with task = "text", e.g. energyarch train --config '
            f"text_small, then energyarch generate --checkpoint runs/text_small"
        )
    model = build_model(cfg.model, text_spec(cfg.seq_len))
    load_checkpoint(folder, model)
    return model.to(distributed.resolve_device(device)), cfg, state


#: Bounds of a generate call (each byte is one forward pass; each iteration one step of every layer).
MAX_BYTES, MAX_ITERS = 1_000_000, 10_000


def _check(max_bytes: int, temperature: float, top_k: int, iters: Optional[int] = None, seed: int = 0) -> None:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or not 0 <= max_bytes <= MAX_BYTES:
        raise ConfigError(f"max_bytes={max_bytes!r}: give a number of bytes in [0, {MAX_BYTES}], e.g. --max-bytes 200")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise ConfigError(f"seed={seed!r}: give an integer in [0, 2**63), e.g. --seed 0")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < 1e6:
        raise ConfigError(
            f"temperature={temperature!r}: give a number >= 0 (0 = always the most likely byte), e.g. --temperature 0.8"
        )
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 0 <= top_k <= 256:
        raise ConfigError(f"top_k={top_k!r}: give 0 (all 256 bytes) or a number of bytes 1..256, e.g. --top-k 40")
    if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool) or not 1 <= iters <= MAX_ITERS):
        raise ConfigError(
            f"iters={iters!r}: give a number of test-time iterations in [1, {MAX_ITERS}], or leave it "
            f"unset for the training T"
        )


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: bytes,
    max_bytes: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    iters: Optional[int] = None,
) -> bytes:
    """``max_bytes`` bytes sampled after ``prompt`` (an empty prompt starts from a newline).

    ``iters`` sets the test-time iterations of a recurrent model (default: its training T).
    """
    _check(max_bytes, temperature, top_k, iters, seed)
    if not isinstance(prompt, (bytes, bytearray)):
        raise ConfigError(
            f'generate: prompt must be bytes, got {type(prompt).__name__}; encode text first, e.g. "def ".encode()'
        )
    spec = getattr(model, "task", None)
    if spec is None or not getattr(spec, "causal", False):
        raise ConfigError(
            f"generate: the model ({type(model).__name__}) is not a causal byte-level model; build it "
            f"with energyarch.train.tasks.text_spec(seq_len) or load it with load_text_model"
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    context = torch.tensor(list(prompt or b"\n"), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    out = []
    try:
        for _ in range(max_bytes):
            logits = model(context[-spec.seq_len :][None], iters=iters)[0, -1].double()  # (256,)
            if not bool(torch.isfinite(logits).all()):
                raise CheckpointError(
                    "generate: the model gives non-finite logits (inf or NaN) for this context; "
                    "its weights are broken (a diverged run?). Use an earlier checkpoint"
                )
            if temperature == 0:
                nxt = logits.argmax()
            else:  # shifted first: the largest is 0, so a tiny temperature sends the rest to -inf, never NaN
                logits = (logits - logits.max()) / temperature
                if top_k:
                    kth = torch.topk(logits, top_k).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[0]
            out.append(int(nxt))
            context = torch.cat([context, nxt.view(1)])
    finally:
        model.train(was_training)
    return bytes(out)


def generate_from_run(
    path: str | os.PathLike,
    prompt: str,
    max_bytes: int = 200,
    temperature: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    iters: Optional[int] = None,
    device: str = "cpu",
) -> str:
    """Load the run at ``path`` and return ``prompt`` + the sampled continuation, decoded as UTF-8 (invalid
    sequences replaced, since bytes are sampled one by one)."""
    _check(max_bytes, temperature, top_k, iters, seed)
    data = prompt_bytes(prompt)
    model, _, _ = load_text_model(Path(path), device=device)
    return (data + generate(model, data, max_bytes, temperature, top_k, seed, iters)).decode("utf-8", "replace")


def prompt_bytes(prompt: str) -> bytes:
    """The prompt as UTF-8 bytes. Bytes that were not UTF-8 on the command line (which Python keeps as escaped
    surrogates) are given back as they were; a lone surrogate that stands for no byte is a :class:`ConfigError`."""
    if not isinstance(prompt, str):
        raise ConfigError(f"--prompt: expected text, got {type(prompt).__name__}")
    try:
        return prompt.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as err:
        raise ConfigError(
            f"--prompt: character {prompt[err.start]!r} at position {err.start} is not valid Unicode "
            f"text (a lone surrogate); give UTF-8 text"
        ) from None


__all__ = ["generate", "generate_from_run", "load_text_model", "prompt_bytes"]
