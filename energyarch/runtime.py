"""Runtime shared by every emitted update module: projection, constraint, step, energy.

An emitted module subclasses :class:`TermUpdate` and supplies two methods derived from its energy term:

- ``grad_Z(Z)``: ∇_Z E of the term at the constrained coordinates ``Z`` (shape ``(B, H, N, p)``);
- ``energy_Z(Z)``: the term's energy, shape ``(B,)``.

:class:`TermUpdate` does the rest (Eqs. 8–11 of the paper, docs: Concepts, "The emitted module")::

    Z_raw = X W_h                    (B, H, N, p)
    Z     = RMSNorm(Z_raw) · R/√p    on the sphere of radius R
    G     = grad_Z(Z)                ∇_Z E at the constrained point
    G     = constrain(G)             'paper': as is; 'riemannian': tangent part; 'exact': chain rule through RMSNorm
    X'    = X − step ⊙ Σ_h G_h W_hᵀ
"""

from __future__ import annotations

import math
from itertools import zip_longest
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch._C._functorch import is_functorch_wrapped_tensor

from .errors import CompileError, ShapeError
from .sphere import sphere_norm

MODES = ("paper", "exact", "riemannian")


def _step(x: Tensor) -> Tensor:
    """Heaviside step with step(0) = 0 (the a.e. derivative of ReLU)."""
    return (x > 0).to(x.dtype)


def _logcosh(x: Tensor) -> Tensor:
    """log cosh x, stable for large |x|."""
    ax = x.abs()
    return ax + torch.log1p(torch.exp(-2 * ax)) - math.log(2.0)


def bisoftmax_sdpa(Phi: Tensor, b: float, *, second_pass: str = "auto") -> Tensor:
    """(P + Pᵀ) Φ with P = row-softmax(b ΦΦᵀ), without forming the N×N matrix.

    Two calls of :func:`torch.nn.functional.scaled_dot_product_attention` (an energyarch construction, not in
    the paper):

    1. ``P Φ`` and the row log-sum-exp ``L``: keys ``[Φ_j, 0]`` plus a sink ``[0, c/b]`` of score ``c``
       (an upper bound of every score, so nothing underflows) with value ``[0, 1]``. The sink channel
       of the output is ``e^c / (Σ_j e^{s_ij} + e^c)``, which gives ``L_i`` and un-normalises ``P Φ``.
    2. ``Pᵀ Φ``, by one of two constructions (``second_pass``):

       - ``'symmetric'`` (:func:`transpose_pass_symmetric`): the scores are symmetric, so
         ``(PᵀΦ)_i = e^{L_i − m} · SDPA(Φ, Φ, e^{m − L_j} Φ_j)_i``, a plain SDPA of width p;
       - ``'sink'`` (:func:`transpose_pass_sink`): query ``[Φ_k, 1]``, keys ``[Φ_i, −L_i/b]`` so that the
         score is ``log P_ik``, and a sink of score 0 and value ``[0, 1]`` that recovers the column sum;
       - ``'auto'`` (default): ``'symmetric'`` where :func:`symmetric_pass_ok` says its scale factors fit the
         dtype (float32, bfloat16, float64 always; float16 when L's range is small enough), else ``'sink'``.

    Memory is O(N·p) and gradients are exact (SDPA's own backward).

    >>> Phi = torch.nn.functional.normalize(torch.randn(2, 600, 8, dtype=torch.float64), dim=-1) * 8 ** 0.5
    >>> ref = bisoftmax_dense(Phi, 0.35)
    >>> all(torch.allclose(bisoftmax_sdpa(Phi, 0.35, second_pass=s), ref) for s in ("symmetric", "sink"))
    True
    """
    if second_pass not in ("auto", "symmetric", "sink"):
        raise CompileError(f"bisoftmax_sdpa(second_pass={second_pass!r}): choose 'auto', 'symmetric' or 'sink'")
    if second_pass != "sink" and flash_lse_ok(Phi):  # CPU: pass 1 at width p, L from the kernel
        P_Phi, L = flash_lse(Phi, Phi, Phi, b)
        if second_pass == "symmetric" or _spread_ok(L, Phi, flash=True):
            return P_Phi + transpose_pass_symmetric(Phi, L, b)
        return P_Phi + transpose_pass_sink(Phi, L, b, *_sink_query_values(Phi, Phi.shape[-1] + 1))
    P_Phi, L, q, v = _row_softmax_sdpa(Phi, b)
    if second_pass == "symmetric" or (second_pass == "auto" and symmetric_pass_ok(L, Phi)):
        return P_Phi + transpose_pass_symmetric(Phi, L, b)
    return P_Phi + transpose_pass_sink(Phi, L, b, q, v)


def transpose_pass_symmetric(Phi: Tensor, L: Tensor, b: float) -> Tensor:
    """``Pᵀ Φ`` for the symmetric scores ``s = b ΦΦᵀ`` from the row log-sum-exp ``L`` (..., N, 1), one plain SDPA.

    Since ``Σ_j e^{s_ij} = e^{L_i}`` is also column i's normaliser, ``(PᵀΦ)_i = Σ_j e^{s_ij − L_j} Φ_j
    = e^{L_i − m} · SDPA(Φ, Φ, e^{m − L_j} Φ_j)_i`` for any constant ``m``: the per-key bias ``−L_j`` moves from
    the scores into the values, so no extra coordinate and no sink key are needed. ``m`` is the midpoint of L's range per batch entry and head, held constant (the identity
    holds for every m, so the gradient through it is zero): the factors stay within ``e^{±spread/2}``,
    ``spread = max L − min L`` (≤ log N on the sphere, see :func:`symmetric_pass_ok`).
    """
    with torch.no_grad():
        m = (L.amax(dim=-2, keepdim=True) + L.amin(dim=-2, keepdim=True)) / 2  # (..., 1, 1)
    out = F.scaled_dot_product_attention(Phi, Phi, torch.exp(m - L) * Phi, scale=b)
    return torch.exp(L - m) * out


def transpose_pass_sink(Phi: Tensor, L: Tensor, b: float, q: Tensor, v: Tensor) -> Tensor:
    """``Pᵀ Φ`` with the per-key bias ``−L_i`` as one extra coordinate and a sink key (any score matrix
    ``b ΦΦᵀ`` whose row log-sum-exp is L; ``q``, ``v`` are pass 1's query and values, see :func:`bisoftmax_sdpa`)."""
    *batch, N, p = Phi.shape
    w = q.shape[-1]  # p + 1, or padded on CUDA
    keys = torch.cat([Phi, -L / b, Phi.new_zeros(*batch, N, w - p - 1)], dim=-1)
    k2 = torch.cat([keys, Phi.new_zeros(*batch, 1, w)], dim=-2)
    out2 = F.scaled_dot_product_attention(q, k2, v, scale=b)
    return out2[..., :p] / out2[..., p : p + 1]


def _spread_limit(dtype: torch.dtype, phi_max: float = 1.0) -> float:
    """Largest ``max L − min L`` for which :func:`transpose_pass_symmetric`'s factors stay 16× inside the normal
    range of ``dtype``: ``e^{spread/2} · max|Φ|`` below its largest value, ``e^{−spread/2}`` above its smallest
    normal (float32, bfloat16: about 168; float16: 13.2 at ``max|Φ| = √32``)."""
    fi = torch.finfo(dtype)
    half = min(math.log(fi.max) - math.log(max(phi_max, 1.0)), -math.log(fi.tiny)) - math.log(16.0)
    return 2 * half


def compute_dtype(t: Tensor) -> torch.dtype:
    """The dtype SDPA computes ``t`` in: the autocast dtype where autocast is on for its device, else its own."""
    dev = t.device.type
    if torch.is_autocast_enabled(dev) and t.is_floating_point():
        return torch.get_autocast_dtype(dev)
    return t.dtype


def symmetric_pass_ok(L: Tensor, Phi: Tensor) -> bool:
    """The rule that chooses :func:`transpose_pass_symmetric` over the sink: its factors ``e^{±spread/2}``,
    ``spread = max L − min L`` per batch entry and head, must fit :func:`_spread_limit` of the dtype SDPA computes
    in (:func:`compute_dtype`).

    - float32, bfloat16, float64: always. Pass 1 resolves row i only while ``L_i > c − log(2/eps)`` (its sink's
      weight ``1/(1 + e^{L_i − c})`` must differ from 1; c is the largest score), and ``L_i ≤ c + log(N + 1)``, so
      wherever pass 1 is valid the range is below ``log(2/eps) + log(N + 1)`` (< 40 in float32 for any N below
      10⁹), far inside their limit (≈ 168). On the sphere of radius r with ``b > 0``, ``L_i ∈ [b r², b r² + log N]``.
    - float16: the limit (≈ 13 at ``max|Φ| = √32``) can be below that range, so L's range is checked (two numbers
      read back); under ``torch.compile`` float16 takes the sink (no data-dependent branch in the graph).
    """
    if compute_dtype(Phi) != torch.float16:
        return True
    if torch.compiler.is_compiling():
        return False
    return _spread_ok(L, Phi)


def _spread_ok(L: Tensor, Phi: Tensor, flash: bool = False) -> bool:
    """L's range per batch entry and head is within :func:`_spread_limit` (two numbers read back); float16's rule.

    ``flash``: L from :func:`flash_lse` is exact on every row, so the range argument of :func:`symmetric_pass_ok`
    (pass 1's sink) does not bound it; the range is then also held below that argument's bound
    ``log(2/eps) + log(N + 1)``: the symmetric pass keeps float32 accuracy there (on the sphere the range is at
    most log N), while at ranges near the overflow limit its values lose digits (1e-4 relative at a range of 82,
    0.3 at 132, measured in float32); beyond it the sink pass 2, fed the exact L, stays accurate.
    """
    dtype = compute_dtype(Phi)
    with torch.no_grad():
        spread = float((L.amax(dim=-2) - L.amin(dim=-2)).max())
        phi_max = float(Phi.abs().amax())
    limit = _spread_limit(dtype, phi_max)
    if flash:
        limit = min(limit, math.log(2 / torch.finfo(dtype).eps) + math.log(Phi.shape[-2] + 1))
    return spread <= limit


def sdpa_device_type(t: Tensor) -> str:
    """The device type whose SDPA kernels the widths are chosen for (tests patch it to check the CUDA path)."""
    return t.device.type


def _widen(t: Tensor, pad: int) -> Tensor:
    """``t`` with ``pad`` zero columns appended (``t`` itself when there are none)."""
    return F.pad(t, (0, pad)) if pad else t


def sdpa_width(width: int, device_type: str) -> int:
    """The head width given to SDPA for ``width`` coordinates: on CUDA the next multiple of 8 (FlashAttention and
    the memory-efficient kernel take those without a padded copy or a fallback to the math kernel), else ``width``.
    """
    return -(-width // 8) * 8 if device_type == "cuda" else width


_CPU_FLASH_DTYPES = (torch.float32, torch.float64)
#: callables ``f(q, k, v, is_causal)`` told of every :func:`flash_lse` call (``sdpa_check.record_sdpa_calls``)
FLASH_OBSERVERS: list = []


def flash_lse_ok(*ts: Tensor) -> bool:
    """Whether :func:`flash_lse` takes the CPU flash op's own log-sum-exp (width p, no sink): CPU tensors of
    float32/float64 with no autocast, outside ``torch.compile`` (whose graph keeps the sink construction) and
    outside ``torch.func`` transforms (``grad``, ``vmap``: a custom backward with a data-dependent branch)."""
    return (
        not torch.compiler.is_compiling()
        and all(
            t.device.type == "cpu"
            and t.dim() >= 2
            and compute_dtype(t) in _CPU_FLASH_DTYPES
            and not is_functorch_wrapped_tensor(t)
            for t in ts
        )
        and sdpa_device_type(ts[0]) == "cpu"
    )


class _FlashLSE(torch.autograd.Function):
    """``(out, lse)`` of the CPU flash-attention op with a gradient for both (see :func:`flash_lse`)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float, is_causal: bool):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale, ctx.is_causal = scale, is_causal
        return out, lse

    @staticmethod
    def backward(ctx, g_out: Tensor, g_lse: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        back = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward

        def grads(g: Tensor, o: Tensor):
            return back(g.contiguous(), q, k, v, o, lse, 0.0, ctx.is_causal, scale=ctx.scale)

        # dS_ij = P_ij (g_i·v_j − D_i + gL_i), D_i = g_i·o_i: the kernel computes D from (g, o) only, so gL is
        # folded into o: o'_i = o_i − gL_i g_i / ‖g_i‖² gives g_i·o'_i = D_i − gL_i.
        gl = g_lse.unsqueeze(-1)
        fi = torch.finfo(out.dtype)
        nrm = g_out.pow(2).sum(-1, keepdim=True)
        weak = (gl != 0) & (nrm < fi.tiny / fi.eps)  # rows where g cannot carry gL
        if not bool(weak.any()):
            return (*grads(g_out, out - (gl / torch.where(gl != 0, nrm, 1)) * g_out), None, None)
        # exact for every row: add u_i (‖u_i‖ ~ |gL_i|) to g on the weak rows, then subtract u's own gradient
        c = gl.abs().clamp(math.sqrt(fi.tiny / fi.eps), math.sqrt(fi.max) / 64)
        u = torch.where(weak, c, 0).expand_as(g_out)
        g_a = g_out + u
        nrm_a = g_a.pow(2).sum(-1, keepdim=True)
        gq, gk, gv = grads(g_a, out - (gl / torch.where(gl != 0, nrm_a, 1)) * g_a)
        uq, uk, uv = grads(u, out)
        return gq - uq, gk - uk, gv - uv, None, None


def flash_lse(q: Tensor, k: Tensor, v: Tensor, scale: float, is_causal: bool = False) -> tuple[Tensor, Tensor]:
    """``(softmax(scale q kᵀ) v, L)`` with L the row log-sum-exp (..., N, 1), both differentiable, in one call of
    the CPU flash-attention kernel at the heads' own width (no sink coordinate, no extra key).

    The kernel returns L but its backward takes the output's gradient only; the gradient of L enters the score
    gradient as ``dS_ij = P_ij (dO_i·v_j − D_i + gL_i)`` with ``D_i = dO_i·O_i``, which the backward receives by
    handing it ``O_i − gL_i dO_i / ‖dO_i‖²`` in place of O_i (the kernel reads O only to form D). Rows where dO_i
    is too small to carry gL_i (an energy that uses L alone) get a second backward call that adds and removes an
    auxiliary gradient: exact, and only then. Use where :func:`flash_lse_ok` holds.

    >>> q = torch.randn(2, 7, 4, dtype=torch.float64)
    >>> O, L = flash_lse(q, q, q, 0.5)
    >>> S = 0.5 * q @ q.transpose(-1, -2)
    >>> bool(torch.allclose(O, torch.softmax(S, -1) @ q) and torch.allclose(L, torch.logsumexp(S, -1, keepdim=True)))
    True
    """
    for observe in FLASH_OBSERVERS:
        observe(q, k, v, is_causal)
    if q.dim() == 4:
        out, lse = _FlashLSE.apply(q, k, v, scale, is_causal)
        return out, lse.unsqueeze(-1)
    shape = q.shape[:-1]  # other ranks: heads as one batch axis
    q4, k4, v4 = (t.reshape(-1, 1, *t.shape[-2:]) for t in (q, k, v))
    out, lse = _FlashLSE.apply(q4, k4, v4, scale, is_causal)
    return out.reshape(*shape, v.shape[-1]), lse.reshape(*shape, 1)


def _row_softmax_sdpa(Phi: Tensor, b: float):
    """Pass 1 of :func:`bisoftmax_sdpa`: ``(P Φ, L, q, v)`` with L the row log-sum-exp of ``b ΦΦᵀ`` (..., N, 1).

    Width ``w = p + 1`` (the sink coordinate), zero-padded to :func:`sdpa_width` on CUDA.
    """
    *batch, N, p = Phi.shape
    w = sdpa_width(p + 1, sdpa_device_type(Phi))
    with torch.no_grad():
        bound = abs(b) * Phi.pow(2).sum(-1).amax()  # ≥ every score b Φ_i·Φ_j (Cauchy–Schwarz)
    q, v = _sink_query_values(Phi, w)
    kv = v[..., :N, :]  # [Φ, 0, 0…]
    sink_key = Phi.new_zeros(*batch, 1, w)
    sink_key[..., 0, p] = bound / b
    k1 = torch.cat([kv, sink_key], dim=-2)
    out1 = F.scaled_dot_product_attention(q, k1, v, scale=b)  # (B, H, N, w)
    w_sink = out1[..., p : p + 1]  # e^c / (Σ_j e^{s_ij} + e^c)
    L = bound + torch.log1p(-w_sink) - torch.log(w_sink)  # (B, H, N, 1) row log-sum-exp
    return out1[..., :p] / (1 - w_sink), L, q, v


def _sink_query_values(Phi: Tensor, w: int) -> tuple[Tensor, Tensor]:
    """Pass 1's query ``[Φ, 1, 0…]`` (..., N, w) and values ``[Φ, 0, 0…]`` plus the sink's ``[0, 1, 0…]``
    (..., N + 1, w)."""
    *batch, N, p = Phi.shape
    sink_value = Phi.new_zeros(*batch, 1, w)
    sink_value[..., 0, p] = 1.0
    pad = Phi.new_zeros(*batch, N, w - p)  # [0, …]: the sink coordinate and padding
    q = torch.cat([Phi, pad], dim=-1)
    q[..., p] = 1.0
    return q, torch.cat([torch.cat([Phi, pad], dim=-1), sink_value], dim=-2)


def row_logsumexp(Phi: Tensor, b: float, threshold: int) -> Tensor:
    """``log Σ_j exp(b Φ_i·Φ_j)``, shape (..., N): dense up to ``threshold`` tokens, one SDPA pass above it."""
    if Phi.shape[-2] > threshold:
        if flash_lse_ok(Phi):
            return flash_lse(Phi, Phi, Phi, b)[1].squeeze(-1)
        return _row_softmax_sdpa(Phi, b)[1].squeeze(-1)
    return torch.logsumexp(b * (Phi @ Phi.transpose(-1, -2)), dim=-1)


def distance_row_logsumexp(Z: Tensor, b: float, threshold: int) -> Tensor:
    """``log Σ_j exp(b ‖z_i − z_j‖²)``, shape (..., N): dense up to ``threshold``, one SDPA pass above it."""
    if Z.shape[-2] <= threshold:
        return torch.logsumexp(b * sq_distances(Z), dim=-1)
    # b r_ij = b‖z_i‖² + (−2b z_i·z_j + b‖z_j‖²): a row term plus a row-softmax with a per-key bias
    return b * Z.pow(2).sum(-1) + _distance_pass1(Z, b)[1].squeeze(-1)


def sq_distances(Z: Tensor) -> Tensor:
    """``r_ij = ‖z_i − z_j‖²`` from the Gram matrix, shape ``(..., N, N)`` (clamped at 0 against rounding)."""
    sq = Z.pow(2).sum(-1)  # (..., N)
    return (sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2 * (Z @ Z.transpose(-1, -2))).clamp_min(0)


def distance_softmax_dense(Z: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """``((P + Pᵀ) Z, Pᵀ1)`` for ``P = row-softmax(b r)``, ``r_ij = ‖z_i − z_j‖²`` (N×N materialised)."""
    P = torch.softmax(b * sq_distances(Z), dim=-1)  # (..., N, N)
    return (P + P.transpose(-1, -2)) @ Z, P.sum(-2).unsqueeze(-1)


def distance_softmax_sdpa(Z: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """:func:`distance_softmax_dense` without forming N×N, through two SDPA passes.

    Row i of ``b r`` is ``−2b z_i·z_j + b‖z_j‖²`` up to a per-row constant (which the softmax ignores), so P is a
    softmax with scale ``β = −2b`` and a per-key bias ``c_j = b‖z_j‖²``, carried as one extra coordinate; the
    row log-sum-exp and the column sums come from a "sink" key, as in :func:`bisoftmax_sdpa`.
    """
    *batch, N, p = Z.shape
    beta = -2.0 * b
    P_Z, L, v, sq = _distance_pass1(Z, b)
    ones = Z.new_ones(*batch, N, 1)
    # pass 2: (Pᵀ Z)_k = Σ_i P_ik z_i with score log P_ik = β z_i·z_k + c_k − L_i; the sink (score 0) gives Σ_i P_ik
    q2 = torch.cat([Z, ones, b * sq / beta], -1)
    k2 = torch.cat([torch.cat([Z, -L / beta, ones], -1), Z.new_zeros(*batch, 1, p + 2)], -2)
    pad = v.shape[-1] - p - 2  # 0, or the CUDA padding of pass 1
    out2 = F.scaled_dot_product_attention(_widen(q2, pad), _widen(k2, pad), v, scale=beta)
    w2 = out2[..., p : p + 1]
    return P_Z + out2[..., :p] / w2, (1 - w2) / w2


def _distance_pass1(Z: Tensor, b: float):
    """Pass 1 of :func:`distance_softmax_sdpa`: ``(P Z, L, v, ‖z‖²)``, L = log Σ_j exp(β z_i·z_j + c_j) (..., N, 1)."""
    *batch, N, p = Z.shape
    beta = -2.0 * b
    sq = Z.pow(2).sum(-1, keepdim=True)  # (..., N, 1)
    ones, zeros = Z.new_ones(*batch, N, 1), Z.new_zeros(*batch, N, 1)
    with torch.no_grad():
        bound = abs(beta) * sq.amax() + (b * sq).amax().clamp_min(0)  # ≥ every score of a row
    sink_v = Z.new_zeros(*batch, 1, p + 2)
    sink_v[..., 0, p] = 1.0
    # values as wide as queries and keys (p + 2): unequal head dims send SDPA to its N×N math backend on CPU
    v = torch.cat([torch.cat([Z, zeros, zeros], -1), sink_v], -2)  # (..., N+1, p+2)
    q1 = torch.cat([Z, ones, ones], -1)  # (..., N, p+2): scores β z_i·z_j + c_j
    sink_k1 = Z.new_zeros(*batch, 1, p + 2)
    sink_k1[..., 0, p] = bound / beta
    k1 = torch.cat([torch.cat([Z, b * sq / beta, zeros], -1), sink_k1], -2)
    pad = sdpa_width(p + 2, sdpa_device_type(Z)) - p - 2  # zero columns on CUDA (multiple of 8)
    v = _widen(v, pad)
    out1 = F.scaled_dot_product_attention(_widen(q1, pad), _widen(k1, pad), v, scale=beta)
    w1 = out1[..., p : p + 1]
    return out1[..., :p] / (1 - w1), bound + torch.log1p(-w1) - torch.log(w1), v, sq


def bisoftmax_dense(Phi: Tensor, b: float) -> Tensor:
    """(P + Pᵀ) Φ with the N×N matrix P = row-softmax(b ΦΦᵀ) materialised (fast for short sequences)."""
    P = torch.softmax(b * (Phi @ Phi.transpose(-1, -2)), dim=-1)  # (B, H, N, N)
    return (P + P.transpose(-1, -2)) @ Phi


def _broadcast_shape(a: tuple, b: tuple) -> Optional[tuple]:
    """``torch.broadcast_shapes(a, b)``, or None where they do not broadcast; plain Python (no dispatch: this runs
    for every term and iteration)."""
    out = []
    for x, y in zip_longest(reversed(a), reversed(b), fillvalue=1):
        if x != y and x != 1 and y != 1:
            return None
        out.append(y if x == 1 else x)
    return tuple(reversed(out))


def check_step(step, X: Tensor, where: str):
    """Validate a step size against X: a real finite number, or a real tensor that broadcasts to X (cast to
    X's dtype). Raises :class:`~energyarch.errors.ShapeError` naming the term and the fix."""
    if isinstance(step, Tensor):
        if step.dim() == 0 and step.is_floating_point() and not step.is_complex():  # a scalar: broadcasts
            return step.to(X.dtype) if step.dtype != X.dtype else step
        if step.is_complex() or not (step.is_floating_point() or step.dtype in (torch.int32, torch.int64)):
            raise ShapeError(f"{where}: step size has dtype {step.dtype}; give a real floating-point tensor or a float")
        shape = _broadcast_shape(tuple(step.shape), tuple(X.shape))
        if shape is None:
            raise ShapeError(
                f"{where}: step size of shape {tuple(step.shape)} does not broadcast against X of shape "
                f"{tuple(X.shape)}; use a scalar, (d,), or (..., N, d)"
            )
        if len(shape) != X.dim():
            raise ShapeError(
                f"{where}: step size of shape {tuple(step.shape)} has more dimensions than X "
                f"{tuple(X.shape)}; use a scalar, (d,), or (..., N, d)"
            )
        return step.to(X.dtype) if step.dtype != X.dtype else step
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise ShapeError(
            f"{where}: step size {step!r} of type {type(step).__name__} is not a real number; "
            f"give a float (e.g. 0.1) or a real tensor"
        )
    if not math.isfinite(step):
        raise ShapeError(f"{where}: step size {step!r} is not finite; give a finite float")
    return step


class _FiniteCheck:
    """State of :func:`finite_checks` (opt-in: checking costs a device sync per term and iteration)."""

    def __init__(self):
        self.active = False
        self.calls = 0

    def check(self, out: Tensor, term: str) -> None:
        if not bool(torch.isfinite(out).all()):
            from .errors import NonFiniteError

            bad = (~torch.isfinite(out)).sum().item()
            raise NonFiniteError(
                f"non-finite values first appear in the update of term {term!r} at iteration {self.calls} of "
                f"finite_checks() ({bad} of {out.numel()} entries inf or NaN); check that term's energy "
                f"(ea.verify reports overflow), its step sizes, and the scale of its kernel (beta)"
            )


_FINITE_CHECK = _FiniteCheck()


class finite_checks:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Opt-in check that every update is finite; the first inf / NaN raises
    :class:`~energyarch.errors.NonFiniteError` naming the term and the iteration.

    >>> import energyarch as ea, torch
    >>> step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2), d=8)
    >>> with ea.finite_checks():
    ...     X = step(torch.randn(2, 5, 8), 0.1)
    """

    def __enter__(self):
        self._was = (_FINITE_CHECK.active, _FINITE_CHECK.calls)
        _FINITE_CHECK.active, _FINITE_CHECK.calls = True, 0
        return self

    def __exit__(self, *exc):
        _FINITE_CHECK.active, _FINITE_CHECK.calls = self._was
        return False


class TermUpdate(nn.Module):
    """One gradient step on one energy term: ``X ↦ X − step ⊙ Σ_h (∇_Z E)(Z_h) W_hᵀ``.

    Args:
        d: model width.
        heads: number of subspaces H (1 for feed-forward terms).
        head_dim: p (for feed-forward terms, M).
        radius: radius of the constraint sphere of each head's coordinates.
        mode: constraint semantics, one of ``'paper'`` (default), ``'exact'``, ``'riemannian'``.
        eps: RMSNorm epsilon.
        sdpa_threshold: sequence length above which memory-linear kernels are used where available.
    """

    #: set by the emitted subclass
    term_name: str = "term"
    pattern: str = "generic"
    path: str = "symbolic"
    beta: float  # attention terms only

    def __init__(
        self,
        d: int,
        heads: int,
        head_dim: int,
        radius: float,
        mode: str = "paper",
        eps: float = 1e-6,
        sdpa_threshold: int = 512,
    ):
        super().__init__()
        if mode not in MODES:
            raise CompileError(f"mode={mode!r}: choose one of {MODES}")
        self.d, self.heads, self.head_dim = d, heads, head_dim
        self.radius = float(radius)
        self.mode = mode
        self.eps = float(eps)
        self.sdpa_threshold = int(sdpa_threshold)
        self.weight = nn.Parameter(torch.empty(d, heads * head_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Orthogonal init: incoherent basis vectors spanning the space (paper Sec. 4.1)."""
        nn.init.orthogonal_(self.weight)

    def extra_repr(self) -> str:
        return (
            f"{self.term_name}: pattern={self.pattern!r}, path={self.path!r}, d={self.d}, heads={self.heads}, "
            f"head_dim={self.head_dim}, radius={self.radius:.4g}, mode={self.mode!r}"
        )

    # -- coordinates -----------------------------------------------------------------------------
    def _check(self, X: Tensor, weight: Optional[Tensor]) -> Tensor:
        if not isinstance(X, Tensor) or X.dim() < 2 or X.shape[-1] != self.d:
            shape = tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__
            raise ShapeError(
                f"{self.term_name}: X has shape {shape}; expected (..., N, d) with d={self.d} "
                f"(tokens in rows, width last)"
            )
        W = self.weight if weight is None else weight
        if not isinstance(W, Tensor) or W.shape != self.weight.shape:
            shape = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
            raise ShapeError(f"{self.term_name}: weight has shape {shape}; expected {tuple(self.weight.shape)}")
        if X.dtype != W.dtype and not torch.is_autocast_enabled(X.device.type):
            raise ShapeError(
                f"{self.term_name}: X has dtype {X.dtype} but the layer's weights are {W.dtype}; convert one of "
                f"them: layer.to({X.dtype}) or X.to({W.dtype})"
            )
        return W

    def coords(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """Raw subspace coordinates ``X W_h``, shape ``(..., H, N, p)``."""
        W = self._check(X, weight)
        Z = X @ W  # (..., N, H·p)
        return Z.unflatten(-1, (self.heads, self.head_dim)).transpose(-2, -3)

    def normalize(self, Z_raw: Tensor) -> Tensor:
        """RMSNorm without gain, scaled to the sphere of radius R (Eq. 8); :func:`sphere_norm`."""
        return sphere_norm(Z_raw, self.radius, self.eps)

    def constrain(self, G: Tensor, Z: Tensor, Z_raw: Tensor) -> Tensor:
        """Apply the constraint mode to ∇_Z E evaluated at the normalised point ``Z``."""
        if self.mode == "paper":
            return G
        radial = (G * Z).sum(-1, keepdim=True) / (self.radius**2)
        tangent = G - radial * Z  # G minus its part along z
        if self.mode == "riemannian":
            return tangent
        # exact: Jᵀ G for n(z) = c z / sqrt(‖z‖²/p + eps), c = R/√p
        c = self.radius / math.sqrt(self.head_dim)
        q = Z_raw.pow(2).mean(-1, keepdim=True) + self.eps
        return c * q.rsqrt() * (G - Z_raw * (Z_raw * G).sum(-1, keepdim=True) / (self.head_dim * q))

    # -- the step ----------------------------------------------------------------------------------
    def direction(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """The descent direction ``−Σ_h G_h W_hᵀ`` in token space, shape like ``X``."""
        W = self._check(X, weight)
        Z_raw = self.coords(X, W)
        Z = self.normalize(Z_raw)
        descent_Z = getattr(self, "descent_Z", None)  # emitted where ∇_Z E is −EXPR: −∇_Z E without a negation
        if descent_Z is not None:
            D = self.constrain(descent_Z(Z), Z, Z_raw)  # (..., H, N, p); every mode's map is linear in G
            return D.transpose(-2, -3).flatten(-2) @ W.transpose(0, 1)  # (..., N, d)
        G = self.constrain(self.grad_Z(Z), Z, Z_raw)  # (..., H, N, p)
        # −Σ_h G_h W_hᵀ with the sign on W (d × H·p), not on the (..., N, d) result: exact, and one pass less
        return G.transpose(-2, -3).flatten(-2) @ W.neg().transpose(0, 1)  # (..., N, d)

    def forward(self, X: Tensor, step: Union[float, Tensor] = 1.0, weight: Optional[Tensor] = None) -> Tensor:
        """One step ``X + step ⊙ direction(X)``; ``step`` broadcasts against ``(..., N, d)``.

        dtype rule: X must have the dtype of the layer's parameters (``layer.to(dtype)`` converts the layer);
        a step-size tensor is cast to X's dtype. Step sizes are real and finite.
        """
        step = check_step(step, X, self.term_name)
        out = X + step * self.direction(X, weight)
        if _FINITE_CHECK.active:
            _FINITE_CHECK.check(out, self.term_name)
        return out

    def energy(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """The term's energy at the constrained point, shape ``X.shape[:-2]`` (Fig. 5 convention)."""
        return self.energy_Z(self.normalize(self.coords(X, weight)))

    # -- supplied by emitted subclasses ---------------------------------------------------------------
    # (their arguments are the family's coordinates: Z here, (Q, K) or (U, V) in the subclasses below; grad_Z
    # returns one gradient per argument, a tuple where there are two)
    def grad_Z(self, *coords: Tensor) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def energy_Z(self, *coords: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def source(self) -> str:
        """The emitted Python source of this module."""
        import inspect

        return inspect.getsource(type(self))


def pairwise_kernel(K, Z: Tensor) -> Tensor:
    """``K(z_i, z_j)`` for an opaque kernel on single vectors, shape ``(..., N, N)`` (vmap, N×N memory)."""
    flat = Z.reshape(-1, *Z.shape[-2:])
    rows = torch.vmap(torch.vmap(K, in_dims=(None, 0)), in_dims=(0, None))  # (N, p), (N, p) -> (N, N)
    return torch.vmap(lambda z: rows(z, z))(flat).reshape(*Z.shape[:-1], Z.shape[-2])


def pairwise_kernel_grad(K, Z: Tensor) -> Tensor:
    """``∂₁K(z_k, z_j)`` for an opaque kernel, shape ``(..., N, N, p)``, by ``torch.func.grad``."""
    flat = Z.reshape(-1, *Z.shape[-2:])
    dK = torch.func.grad(K, argnums=0)
    rows = torch.vmap(torch.vmap(dK, in_dims=(None, 0)), in_dims=(0, None))
    return torch.vmap(lambda z: rows(z, z))(flat).reshape(*Z.shape[:-1], Z.shape[-2], Z.shape[-1])


# ------------------------------------------------------------------------------------------------------------
# causal conditional energies (CEM): queries and keys from an interaction, gradients for both roles
# ------------------------------------------------------------------------------------------------------------


def causal_mask(N: int, device, strict: bool = False) -> Tensor:
    """Boolean (N, N) mask of the keys s each token t sees: s ≤ t (``strict``: s < t)."""
    return torch.ones(N, N, dtype=torch.bool, device=device).tril(-1 if strict else 0)


def causal_softmax_sdpa(Phi_q: Tensor, Phi_k: Tensor, b: float) -> tuple[Tensor, Tensor]:
    """``(P Φ_k, L)`` with ``P_ts = softmax_{s≤t}(b Φ_q,t·Φ_k,s)`` and L its row log-sum-exp, shape (..., N, 1).

    One call of ``F.scaled_dot_product_attention(..., is_causal=True)`` (FlashAttention on GPU, memory linear
    in N; width p + 1, padded to :func:`sdpa_width` on CUDA): a dummy first query and a "sink" first key, seen by
    every query, with score c_t ≥ every score of row t and value [0, 1]; its share of the output gives L.
    c_t = |b| ‖Φ_q,t‖ max_{s≤t} ‖Φ_k,s‖ uses tokens s ≤ t only, so row t is exactly independent of later tokens.
    A key holding inf or NaN is replaced by zeros before the call (0·inf in the fused kernel would carry it into
    earlier rows), and the rows that see it, s ≤ t, are set to NaN: non-finite by right, and never finite by
    accident.

    On CPU (float32, float64; :func:`flash_lse_ok`) there is no sink and no dummy query: :func:`flash_lse` takes
    L from the kernel at width p and folds its gradient into the kernel's backward. The plain second pass of
    :func:`transpose_pass_symmetric` has no counterpart here: there is no Pᵀ pass (each token's key gradient is
    its own self-term, elementwise from L), and the masked scores are not symmetric (row t normalises over s ≤ t,
    column s sums over t ≥ s).
    """
    *batch, N, p = Phi_q.shape
    flash = flash_lse_ok(Phi_q, Phi_k) and Phi_q.shape == Phi_k.shape
    if flash and bool(torch.isfinite(Phi_k).all()):  # CPU, every key finite: one call, no masking
        return flash_lse(Phi_q, Phi_k, Phi_k, b, is_causal=True)
    width = sdpa_width(p + 1, sdpa_device_type(Phi_q))  # p + 1, padded on CUDA
    bad = ~torch.isfinite(Phi_k).all(dim=-1, keepdim=True)  # (..., N, 1)
    seen = torch.cumsum(bad.to(torch.int32), dim=-2) > 0  # some s ≤ t is bad
    Phi_k = torch.where(bad, 0, Phi_k)
    if flash:  # CPU: width p, L from the kernel
        PK, L = flash_lse(Phi_q, Phi_k, Phi_k, b, is_causal=True)
        return torch.where(seen, math.nan, PK), torch.where(seen, math.nan, L)
    with torch.no_grad():
        c = abs(b) * Phi_q.norm(dim=-1, keepdim=True) * torch.cummax(Phi_k.norm(dim=-1, keepdim=True), dim=-2).values
    zero_row = Phi_q.new_zeros(*batch, 1, width)
    q = torch.cat([zero_row, _widen(torch.cat([Phi_q, c / b], dim=-1), width - p - 1)], dim=-2)  # (..., N+1, w)
    sink = Phi_q.new_zeros(*batch, 1, width)
    sink[..., 0, p] = 1.0
    kv = torch.cat([sink, _widen(Phi_k, width - p)], dim=-2)  # keys = values: [Φ_k, 0…]
    out = F.scaled_dot_product_attention(q, kv, kv, scale=b, is_causal=True)[..., 1:, :]  # drop the dummy query
    w = out[..., p : p + 1]  # e^c / (Σ_s e^{score} + e^c)
    PK, L = out[..., :p] / (1 - w), c + torch.log1p(-w) - torch.log(w)
    return torch.where(seen, math.nan, PK), torch.where(seen, math.nan, L)


def causal_prefix_outer(Phi_q: Tensor, Phi_k: Tensor) -> Tensor:
    """``Σ_{s≤t} (Φ_q,t·Φ_k,s) Φ_k,s`` by prefix sums of p×p outer products: O(N p²), never N×N."""
    A = torch.cumsum(Phi_k.unsqueeze(-1) * Phi_k.unsqueeze(-2), dim=-3)  # (..., N, p, p)
    return (A @ Phi_q.unsqueeze(-1)).squeeze(-1)


def cross_kernel(K, Q: Tensor, Kk: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """``K(q_t, k_s)`` for an opaque kernel on single vectors, shape ``(..., N, N)``.

    With a boolean ``mask`` (N, N), a pair the mask removes is never evaluated on its tokens: both inputs are
    replaced by zeros *before* the kernel and its value by 0 after it (``torch.where``, a selection), so neither
    its value nor its gradient reaches any token, even when the kernel overflows there (inf, NaN).
    """
    fq, fk = Q.reshape(-1, *Q.shape[-2:]), Kk.reshape(-1, *Kk.shape[-2:])
    if mask is None:
        rows = torch.vmap(torch.vmap(K, in_dims=(None, 0)), in_dims=(0, None))
        return torch.vmap(rows)(fq, fk).reshape(*Q.shape[:-1], Kk.shape[-2])

    def pair(q: Tensor, k: Tensor, m: Tensor) -> Tensor:
        return torch.where(m, K(torch.where(m, q, 0), torch.where(m, k, 0)), 0)

    rows = torch.vmap(torch.vmap(pair, in_dims=(None, 0, 0)), in_dims=(0, None, 0))
    return torch.vmap(rows, in_dims=(0, 0, None))(fq, fk, mask).reshape(*Q.shape[:-1], Kk.shape[-2])


def _poison_rows(bad: Tensor, like: Tensor) -> Tensor:
    """NaN for each row t that sees a non-finite row s ≤ t (``bad[s]``), else 0; shape (..., N, 1). A prefix sum:
    never an N×N pass. A token's own non-finite key poisons its own row, whose self-term holds it anyway."""
    seen = torch.cumsum(bad.to(torch.int32), dim=-1).unsqueeze(-1) > 0
    return torch.where(seen, math.nan, 0.0).to(like.dtype)


def causal_gram(A: Tensor, B: Tensor) -> Tensor:
    """``A Bᵀ`` (..., N, N) whose row t never depends on a row s > t of B.

    A plain matmul's backward multiplies the zero gradient of a masked pair by ``b_s``: 0·inf = NaN when a later
    token holds inf or NaN. Here non-finite rows of B are replaced by zeros (``torch.where``, a selection in both
    passes) and the rows of A that see such a token, s ≤ t, are set to NaN before the product: their rows are then
    non-finite by right, never finite by accident. Extra cost: O(N p), no N×N pass.
    """
    bad = ~torch.isfinite(B).all(dim=-1)  # (..., N) non-finite keys
    return (A + _poison_rows(bad, A)) @ torch.where(bad.unsqueeze(-1), 0, B).transpose(-1, -2)


def causal_apply(C: Tensor, V: Tensor) -> Tensor:
    """``C V`` for a causal weight matrix C (zero above the diagonal): row t never depends on a row s > t of V,
    even an inf or NaN one (0·inf would otherwise be NaN); see :func:`causal_gram`."""
    bad = ~torch.isfinite(V).all(dim=-1)
    return C @ torch.where(bad.unsqueeze(-1), 0, V) + _poison_rows(bad, V)


def causal_sq_distances(Q: Tensor, K: Tensor, mask: Tensor) -> Tensor:
    """``r_ts = ‖q_t − k_s‖²`` like :func:`sq_distances_qk`, the cross term by :func:`causal_gram` (row t never
    depends on a later key) and the pairs the causal ``mask`` hides set to 0."""
    r = (Q.pow(2).sum(-1).unsqueeze(-1) + K.pow(2).sum(-1).unsqueeze(-2) - 2 * causal_gram(Q, K)).clamp_min(0)
    return torch.where(mask, r, 0)


def diag_kernel(K, Q: Tensor, Kk: Tensor) -> Tensor:
    """``K(q_t, k_t)`` for an opaque kernel, shape ``(..., N)``."""
    flat = torch.vmap(K)(Q.reshape(-1, Q.shape[-1]), Kk.reshape(-1, Kk.shape[-1]))
    return flat.reshape(Q.shape[:-1])


class CausalTermUpdate(TermUpdate):
    """One step of each token on its own conditional energy: ``x_t ← x_t − step ⊙ ∇_{x_t} E_t(x_t | x_{<t})``.

    The emitted subclass supplies ``grad_Z(Q, K) → (G_q, G_k)`` (the paper-semantics gradients of Σ_t E_t with
    respect to each token's query and key coordinates, the other tokens held fixed) and ``energy_Z(Q, K)``
    (per head and token, (..., H, N)). The interaction gives the coordinates and maps the gradients back.
    """

    tying: str = ""
    weight_k: nn.Parameter  # made by the query-key and diagonal-plus-low-rank interactions
    delta: nn.Parameter  # made by the diagonal-plus-low-rank interaction

    def __init__(
        self,
        d: int,
        heads: int,
        head_dim: int,
        radius: float,
        mode: str = "paper",
        eps: float = 1e-6,
        sdpa_threshold: int = 512,
        interaction=None,
    ):
        from .interactions import SharedBasis

        nn.Module.__init__(self)
        if mode not in MODES:
            raise CompileError(f"mode={mode!r}: choose one of {MODES}")
        self.interaction = SharedBasis() if interaction is None else interaction
        if mode != "paper" and self.interaction.kind == "diag-low-rank":
            raise CompileError(
                f"mode={mode!r}: the diagonal-plus-low-rank interaction is defined in paper mode "
                f"only (its coordinates are not on a per-head sphere); use mode='paper'"
            )
        self.d, self.heads, self.head_dim = d, heads, head_dim
        self.radius, self.mode, self.eps = float(radius), mode, float(eps)
        self.sdpa_threshold = int(sdpa_threshold)
        self.interaction.make_parameters(self)

    def reset_parameters(self) -> None:
        self.interaction.make_parameters(self)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", interaction={self.interaction.kind!r}"

    def coords(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """Raw query coordinates (..., H, N, p) (for diagnostics)."""
        self._check(X, weight)
        return self.interaction.coords(self, X, weight)[2]

    def query_key(self, X: Tensor, weight: Optional[Tensor] = None):
        self._check(X, weight)
        return self.interaction.coords(self, X, weight)

    def direction(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        Q, K, Q_raw, K_raw = self.query_key(X, weight)
        G_q, G_k = self.grad_Z(Q, K)
        if self.mode != "paper":
            G_q, G_k = self.constrain(G_q, Q, Q_raw), self.constrain(G_k, K, K_raw)
        return -self.interaction.pullback(self, G_q, G_k, weight)

    def token_energies(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """E_t(x_t | x_{<t}) of every token, summed over heads, shape (..., N)."""
        Q, K, _, _ = self.query_key(X, weight)
        return self.energy_Z(Q, K).sum(-2)

    def energy(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        """Σ_t E_t(x_t | x_{<t}), shape ``X.shape[:-2]`` (a sum of conditional energies, not a global energy)."""
        return self.token_energies(X, weight).sum(-1)


def sq_distances_qk(Q: Tensor, K: Tensor) -> Tensor:
    """``r_ts = ‖q_t − k_s‖²``, shape (..., N, N) (clamped at 0 against rounding)."""
    return (Q.pow(2).sum(-1).unsqueeze(-1) + K.pow(2).sum(-1).unsqueeze(-2) - 2 * (Q @ K.transpose(-1, -2))).clamp_min(
        0
    )


class GatedTermUpdate(TermUpdate):
    """Gated feed-forward step (CEM): ``X ← X − step ⊙ (∇_U E)(U, V) Dᵀ`` with U = RMSNorm(X D) on the sphere and
    gate coordinates ``V = RMSNorm(X) W_v`` held fixed; the emitted subclass supplies ``grad_Z(U, V)`` and
    ``energy_Z(U, V)``. ``weight`` is D (up and down), ``weight_v`` the gate projection."""

    def __init__(
        self,
        d: int,
        heads: int,
        head_dim: int,
        radius: float,
        mode: str = "paper",
        eps: float = 1e-6,
        sdpa_threshold: int = 512,
    ):
        super().__init__(d, heads, head_dim, radius, mode=mode, eps=eps, sdpa_threshold=sdpa_threshold)
        self.weight_v = nn.Parameter(torch.empty(d, heads * head_dim))
        nn.init.orthogonal_(self.weight_v)

    def gate(self, X: Tensor) -> Tensor:
        """Gate coordinates Vᵀx̄ with x̄ = RMSNorm(x), shape (..., 1, N, M); held fixed by the step."""
        xbar = F.rms_norm(X, (self.d,), eps=self.eps)
        return (xbar @ self.weight_v).unsqueeze(-3)

    def direction(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        W = self._check(X, weight)
        U_raw = self.coords(X, W)
        U = self.normalize(U_raw)
        G = self.constrain(self.grad_Z(U, self.gate(X).detach()), U, U_raw)
        return G.transpose(-2, -3).flatten(-2) @ W.neg().transpose(0, 1)

    def energy(self, X: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return self.energy_Z(self.normalize(self.coords(X, weight)), self.gate(X))
