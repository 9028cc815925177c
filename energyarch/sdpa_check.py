"""Which SDPA kernel would run: the backend-selection inputs of ``F.scaled_dot_product_attention``, as data.

The memory-linear lowerings (bi-softmax, causal bi-softmax and distance softmax above ``sdpa_threshold``) are
memory-linear only while SDPA runs a fused kernel. On CUDA, PyTorch picks FlashAttention, the memory-efficient
kernel (or cuDNN) from the inputs and falls back to the *math* kernel, which materialises the N×N scores, when
none accepts them, with at most a warning. This module writes the documented acceptance conditions of the two
fused kernels as plain Python, so that a test on a CPU-only machine can check the inputs the layers produce
(:func:`record_sdpa_calls`), and the GPU check can compare them with ``torch.backends.cuda.can_use_*``.

Conditions checked (PyTorch's SDPA documentation and its backend selection, torch 2.x; conservative where the
kernels would pad or copy):

- both kernels: 4-D ``(batch, heads, N, width)`` inputs of one dtype and equal batch and head sizes, the last
  dimension contiguous (stride 1), no dropout requirement, non-empty sequences, head width a multiple of 8
  (FlashAttention pads other widths with a copy; the memory-efficient kernel needs the alignment);
- FlashAttention: float16 or bfloat16; q, k and v of the same width, at most 256; no ``attn_mask``;
- memory-efficient: float32, float16 or bfloat16; q and k of the same width; no ``attn_mask`` (a float mask
  of N×N is itself quadratic memory, and one that needs a gradient sends SDPA to the math kernel).

>>> import torch
>>> q = torch.randn(2, 4, 1024, 33, dtype=torch.bfloat16)
>>> kernel_blockers(q, q, q)["flash"]
['head width 33 is not a multiple of 8']
>>> memory_linear_kernel(q[..., :32], q[..., :32], q[..., :32])
'flash'
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

FLASH_DTYPES = (torch.float16, torch.bfloat16)
EFFICIENT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_FLASH_WIDTH = 256


@dataclass(frozen=True)
class SDPACall:
    """The backend-selection inputs of one SDPA call (shapes, strides, dtypes; no tensor is kept)."""

    q: tuple
    k: tuple
    v: tuple
    last_strides: tuple
    dtype: Optional[torch.dtype]  # None: q, k and v differ in dtype
    mask: Optional[str]
    dropout_p: float
    is_causal: bool

    @property
    def blockers(self) -> dict[str, list[str]]:
        return _blockers(self)

    @property
    def kernel(self) -> Optional[str]:
        """``'flash'`` or ``'efficient'`` (the first that accepts the inputs), or None: the math kernel, N×N."""
        b = self.blockers
        return next((name for name in ("flash", "efficient") if not b[name]), None)


def describe(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    *,
    dtype: Optional[torch.dtype] = None,
) -> SDPACall:
    """The :class:`SDPACall` of these inputs; ``dtype`` defaults to the dtype SDPA computes in (autocast's)."""
    from .runtime import compute_dtype

    mask = None
    if attn_mask is not None:
        mask = f"{attn_mask.dtype} {tuple(attn_mask.shape)}" + (" requiring grad" if attn_mask.requires_grad else "")
    dtypes = {t.dtype for t in (q, k, v)}
    return SDPACall(
        tuple(q.shape),
        tuple(k.shape),
        tuple(v.shape),
        tuple(t.stride(-1) for t in (q, k, v)),
        dtype or (compute_dtype(q) if len(dtypes) == 1 else None),
        mask,
        float(dropout_p),
        bool(is_causal),
    )


def _blockers(c: SDPACall) -> dict[str, list[str]]:
    common = []
    if not (len(c.q) == len(c.k) == len(c.v) == 4):
        common.append(f"inputs are not 4-D (batch, heads, N, width): {c.q}, {c.k}, {c.v}")
    else:
        if not (c.q[:2] == c.k[:2] == c.v[:2]):
            common.append(f"batch and head sizes differ: {c.q[:2]}, {c.k[:2]}, {c.v[:2]}")
        if c.k[2] != c.v[2]:
            common.append(f"keys ({c.k[2]}) and values ({c.v[2]}) differ in length")
        if min(c.q[2], c.k[2]) == 0:
            common.append("an empty sequence")
    if c.dtype is None:
        common.append("q, k and v differ in dtype")
    if any(s != 1 for s in c.last_strides):
        common.append(f"last dimension not contiguous (strides {c.last_strides})")
    for name, shape in (("q", c.q), ("k", c.k), ("v", c.v)):
        if shape[-1] % 8:
            common.append(f"head width {shape[-1]} is not a multiple of 8")
            break
    if c.mask is not None:
        common.append(f"attn_mask given ({c.mask}): N×N memory, and the math kernel where it needs a gradient")
    flash, efficient = list(common), list(common)
    if c.dtype not in FLASH_DTYPES:
        flash.append(f"dtype {c.dtype} (FlashAttention takes float16, bfloat16)")
    if not c.q[-1] == c.k[-1] == c.v[-1]:
        flash.append(f"q, k, v widths {c.q[-1]}, {c.k[-1]}, {c.v[-1]} differ")
    if max(c.q[-1], c.v[-1]) > MAX_FLASH_WIDTH:
        flash.append(f"head width above {MAX_FLASH_WIDTH}")
    if c.dtype not in EFFICIENT_DTYPES:
        efficient.append(f"dtype {c.dtype} (the memory-efficient kernel takes float32, float16, bfloat16)")
    if c.q[-1] != c.k[-1]:
        efficient.append(f"q, k widths {c.q[-1]}, {c.k[-1]} differ")
    return {"flash": flash, "efficient": efficient}


def kernel_blockers(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    *,
    dtype: Optional[torch.dtype] = None,
) -> dict[str, list[str]]:
    """Why each fused CUDA kernel (``'flash'``, ``'efficient'``) would decline these inputs (empty: it accepts)."""
    return describe(q, k, v, attn_mask, dropout_p, dtype=dtype).blockers


def memory_linear_kernel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    *,
    dtype: Optional[torch.dtype] = None,
) -> Optional[str]:
    """The fused CUDA kernel that accepts these inputs (``'flash'`` first), or None (the N×N math kernel)."""
    return describe(q, k, v, attn_mask, dropout_p, dtype=dtype).kernel


@contextlib.contextmanager
def record_sdpa_calls():
    """Record the :class:`SDPACall` of every ``F.scaled_dot_product_attention`` call inside the block, and of every
    direct call of the CPU flash kernel by :func:`energyarch.runtime.flash_lse` (the calls themselves run
    unchanged). Yields the list the calls are appended to.

    >>> import torch
    >>> with record_sdpa_calls() as calls:
    ...     _ = torch.nn.functional.scaled_dot_product_attention(*3 * [torch.randn(1, 2, 16, 8)])
    >>> [(c.q, c.kernel) for c in calls]
    [((1, 2, 16, 8), 'efficient')]
    """
    calls: list[SDPACall] = []
    inner = F.scaled_dot_product_attention

    def spy(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, *args, **kwargs):
        calls.append(describe(query, key, value, attn_mask, dropout_p, is_causal))
        return inner(query, key, value, attn_mask, dropout_p, is_causal, *args, **kwargs)

    def observe(query, key, value, is_causal):
        calls.append(describe(query, key, value, None, 0.0, is_causal))

    from . import runtime

    F.scaled_dot_product_attention = spy
    runtime.FLASH_OBSERVERS.append(observe)
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = inner
        runtime.FLASH_OBSERVERS.remove(observe)
