"""Blockwise evaluation of pairwise (N×N) quantities: tiles of queries against tiles of keys, never N×N.

Every attention energy of Eq. 19 couples tokens through a pairwise quantity: the Gram matrix
``G_kj = Φ(z_k)·Φ(z_j)``, the squared distance ``r_kj = ‖z_k − z_j‖²``, or an opaque kernel ``K(z_k, z_j)``.
Its update is a *row reduction* of an elementwise map of that quantity, e.g. ``S_k = Σ_j κ(G_kj)`` or
``(CΦ)_k = Σ_j C(G_kj) Φ_j``. One generic primitive, :func:`pair_reduce`, evaluates any such reduction tile by
tile (``T × T`` blocks of rows against blocks of columns, accumulated over the column blocks), so the memory is
``O(N·p + T²)`` instead of ``O(N²)`` (``O(N²·p)`` for an opaque kernel's ``∂₁K``).

Gradients are exact. :func:`pair_reduce` is a :class:`torch.autograd.Function` that keeps only its inputs and
recomputes each tile in backward (as ``torch.utils.checkpoint`` does, one tile at a time), so a layer whose
update uses it can be trained: the optimizer differentiates the update w.r.t. the layer's weights. The backward
itself is not differentiable again (``once_differentiable``): the update is a forward computation of ∇E, and a
training step needs one derivative of it.

The helpers below are what the emitted update modules call above their ``sdpa_threshold`` (the elementwise maps
are sympy → torch source written as lambdas by the patterns):

- :func:`pair_row_sum`: ``S_k = Σ_j K(a_k, a_j)`` for a kernel built by :func:`kernel_on_gram`,
  :func:`kernel_on_distance` or :func:`kernel_callable`;
- :func:`gram_couple`: ``Σ_j C(G_kj, s_k, s_j) Φ_j`` (kernel attention, inner-product kernel);
- :func:`distance_couple`: ``(C Z, C 1)`` with ``C = C(r_kj, s_k, s_j)`` (distance kernel);
- :func:`pair_grad`: ``Σ_j w_k ∂₁K(z_k, z_j) + w_j ∂₂K(z_j, z_k)`` by autodiff of one tile at a time (opaque
  kernels, and the autodiff path of every attention energy).

The tile is chosen by size: the largest ``T`` whose pairwise intermediates fit :data:`TILE_BUDGET_BYTES`
(at least :data:`MIN_TILE`); :class:`tiles` fixes it (tests, tuning).

>>> import torch
>>> Phi = torch.randn(2, 100, 8, dtype=torch.float64)
>>> with tiles(16):                                   # 7 × 7 tiles of at most 16 × 16 pairs
...     S = pair_row_sum(kernel_on_gram(torch.exp), Phi)
>>> bool(torch.allclose(S, torch.exp(Phi @ Phi.transpose(-1, -2)).sum(-1)))
True
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, cast

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .errors import CompileError

#: Bytes the pairwise intermediates of one tile may take (all batch entries and heads together); the tile side
#: is the largest that fits, at least :data:`MIN_TILE`.
TILE_BUDGET_BYTES = 32 * 2**20
#: Smallest tile side chosen by size (a forced tile, see :class:`tiles`, may be smaller).
MIN_TILE = 32

_FORCED: list[Optional[int]] = [None]


class tiles:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Fix the tile side ``T`` of every blockwise evaluation inside the block (``None``: chosen by size).

    >>> with tiles(64):
    ...     pass
    """

    def __init__(self, size: Optional[int]):
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
            raise CompileError(f"tiles(size={size!r}): the tile side must be a positive integer or None")
        self.size = size

    def __enter__(self):
        self._was = _FORCED[0]
        _FORCED[0] = self.size
        return self

    def __exit__(self, *exc):
        _FORCED[0] = self._was
        return False


def tile_size(N: int, batch: int, per_pair: float, itemsize: int) -> int:
    """The tile side for ``N`` tokens: ``T² · batch · per_pair · itemsize ≤`` :data:`TILE_BUDGET_BYTES`.

    ``per_pair`` is the number of values a pair (k, j) keeps alive in one tile (e.g. 4 for ``G``, ``κ'(G)``,
    ``C`` and a temporary; about ``3p`` for an opaque kernel's ``∂₁K``).
    """
    if _FORCED[0] is not None:
        return max(1, min(_FORCED[0], N))
    side = math.isqrt(max(1, int(TILE_BUDGET_BYTES // max(1.0, batch * per_pair * itemsize))))
    return max(1, min(N, max(MIN_TILE, side)))


# ---------------------------------------------------------------------------------------------------------
# the primitive
# ---------------------------------------------------------------------------------------------------------


def _autocast_state(t: Tensor) -> tuple[str, bool, torch.dtype]:
    dev = t.device.type
    return dev, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev)


def _full(value, like: Tensor) -> Tensor:
    """A tensor of ``like``'s shape from an elementwise map that may have returned a constant."""
    if isinstance(value, Tensor):
        return value if value.shape == like.shape else value.expand_as(like)
    return torch.full_like(like, float(value))


def _tiles(N: int, T: int):
    return [slice(i, min(i + T, N)) for i in range(0, N, T)]


def _reduce(fn, rows, cols, T: int) -> Tensor:
    """Σ over column tiles of ``fn(row tile, column tile)``, for every row tile (no autograd)."""
    N_rows, N_cols = rows[0].shape[-2], cols[0].shape[-2]
    out = []
    for I in _tiles(N_rows, T):
        r = [t[..., I, :] for t in rows]
        acc: Optional[Tensor] = None
        for J in _tiles(N_cols, T):
            part = fn(r, [t[..., J, :] for t in cols])
            if acc is None:  # accumulate low-precision tiles (bf16 autocast) in float32
                acc = part.float() if part.dtype in (torch.float16, torch.bfloat16) else part.clone()
            else:
                acc += part
        out.append(cast(Tensor, acc).to(part.dtype))  # N_cols ≥ 1: at least one tile was added
    return torch.cat(out, dim=-2)


class _PairReduce(torch.autograd.Function):
    """``out = Σ_J fn(rows[I], cols[J])`` per row tile I; backward recomputes one tile at a time."""

    @staticmethod
    def forward(ctx, fn, T: int, n_rows: int, *tensors):
        ctx.fn, ctx.T, ctx.n_rows = fn, T, n_rows
        ctx.autocast = _autocast_state(tensors[0])
        ctx.save_for_backward(*tensors)
        return _reduce(fn, tensors[:n_rows], tensors[n_rows:], T)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        tensors = ctx.saved_tensors
        need = ctx.needs_input_grad[3:]
        grads = [torch.zeros_like(t) if n else None for t, n in zip(tensors, need)]
        n_rows, T = ctx.n_rows, ctx.T
        rows, cols = tensors[:n_rows], tensors[n_rows:]
        dev, enabled, dtype = ctx.autocast
        for I in _tiles(rows[0].shape[-2], T):
            g = grad_out[..., I, :]
            for J in _tiles(cols[0].shape[-2], T):
                with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
                    pieces = [t[..., I, :].detach().requires_grad_(n) for t, n in zip(rows, need[:n_rows])]
                    pieces += [t[..., J, :].detach().requires_grad_(n) for t, n in zip(cols, need[n_rows:])]
                    part = ctx.fn(pieces[:n_rows], pieces[n_rows:])
                    wanted = [k for k, p in enumerate(pieces) if p.requires_grad]
                    if not wanted or not part.requires_grad:
                        continue
                    got = torch.autograd.grad(part, [pieces[k] for k in wanted], g.to(part.dtype), allow_unused=True)
                for k, gk in zip(wanted, got):
                    if gk is not None:  # wanted: its input needs a gradient, so grads[k] is a tensor
                        cast(Tensor, grads[k])[..., I if k < n_rows else J, :] += gk
        return (None, None, None, *grads)


def pair_reduce(
    fn: Callable[[list, list], Tensor],
    rows: Sequence[Tensor],
    cols: Optional[Sequence[Tensor]] = None,
    *,
    per_pair: float = 4.0,
) -> Tensor:
    """Row reduction over all pairs, tile by tile: ``out[..., k, :] = Σ_J fn(rows[..., I, :], cols[..., J, :])``.

    Args:
        fn: ``fn(row_tiles, col_tiles)`` → ``(..., T_rows, m)``: the contribution of one block of pairs, already
            summed over that block's columns. Every tensor it depends on must come in through ``rows``/``cols``
            (a tensor it closes over receives no gradient).
        rows: tensors of shape ``(..., N, k)`` (the query side).
        cols: tensors of shape ``(..., N, k)`` with the same batch dimensions (the key side; default ``rows``).
        per_pair: values per pair kept alive by ``fn`` (sizes the tile, see :func:`tile_size`).

    Returns ``(..., N, m)``; differentiable once w.r.t. every input (exact gradients, tiles recomputed).
    """
    rows = tuple(rows)
    cols = rows if cols is None else tuple(cols)
    ref = rows[0]
    batch = math.prod(ref.shape[:-2])
    T = tile_size(max(ref.shape[-2], cols[0].shape[-2]), batch, per_pair, ref.element_size())
    return _PairReduce.apply(fn, T, len(rows), *rows, *cols)


# ---------------------------------------------------------------------------------------------------------
# pairwise quantities of one tile and kernels built on them
# ---------------------------------------------------------------------------------------------------------


def gram(A: Tensor, B: Tensor) -> Tensor:
    """``A Bᵀ``: inner products of the rows, shape ``(..., T_a, T_b)``."""
    return A @ B.transpose(-1, -2)


def sq_dist(A: Tensor, B: Tensor) -> Tensor:
    """``‖a_i − b_j‖²`` from the Gram matrix (as :func:`energyarch.runtime.sq_distances`), clamped at 0."""
    return (A.pow(2).sum(-1, keepdim=True) + B.pow(2).sum(-1).unsqueeze(-2) - 2 * gram(A, B)).clamp_min(0)


def pairwise(K: Callable[[Tensor, Tensor], Tensor], A: Tensor, B: Tensor) -> Tensor:
    """``K(a_i, b_j)`` for a kernel on single vectors, shape ``(..., T_a, T_b)`` (vmap over pairs and batch)."""
    a, b = A.reshape(-1, *A.shape[-2:]), B.reshape(-1, *B.shape[-2:])
    rows = torch.vmap(torch.vmap(K, in_dims=(None, 0)), in_dims=(0, None))  # (T_a, p), (T_b, p) -> (T_a, T_b)
    return torch.vmap(rows)(a, b).reshape(*A.shape[:-1], B.shape[-2])


def kernel_on_gram(kappa: Callable[[Tensor], Tensor], phi: Optional[Callable[[Tensor], Tensor]] = None):
    """The kernel ``K(a, b) = κ(Φ(a)·Φ(b))`` of one tile (``Φ`` the identity when None)."""

    def K(A, B):
        if phi is not None:
            A, B = phi(A), phi(B)
        G = gram(A, B)
        return _full(kappa(G), G)

    return K


def kernel_on_distance(rho: Callable[[Tensor], Tensor]):
    """The kernel ``K(a, b) = ρ(‖a − b‖²)`` of one tile."""

    def K(A, B):
        r = sq_dist(A, B)
        return _full(rho(r), r)

    return K


def kernel_callable(K: Callable[[Tensor, Tensor], Tensor]):
    """An opaque kernel on single vectors as a kernel of one tile (:func:`pairwise`).

    Its tiles are *wide*: evaluating K on every pair may keep ``p`` values per pair (e.g. ``a − b``), so the
    tile is sized for ``3p`` values per pair.
    """

    def tile_kernel(A, B):
        return pairwise(K, A, B)

    tile_kernel.wide = True  # type: ignore[attr-defined]  # a function attribute, read by _per_pair
    return tile_kernel


def _per_pair(K, p: int, narrow: float) -> float:
    return 3.0 * p + narrow if getattr(K, "wide", False) else narrow


# ---------------------------------------------------------------------------------------------------------
# the reductions the emitted modules call
# ---------------------------------------------------------------------------------------------------------


def pair_row_sum(K, A: Tensor, *, per_pair: float = 4.0) -> Tensor:
    """``S_k = Σ_j K(a_k, a_j)``, shape ``(..., N)``, for a tile kernel ``K`` (e.g. :func:`kernel_on_gram`)."""
    return pair_reduce(
        lambda r, c: K(r[0], c[0]).sum(-1, keepdim=True), (A,), per_pair=_per_pair(K, A.shape[-1], per_pair)
    ).squeeze(-1)


def _coupling(C, x: Tensor, s_rows: Optional[Tensor], s_cols: Optional[Tensor]) -> Tensor:
    out = C(x) if s_rows is None else C(x, s_rows, cast(Tensor, s_cols).transpose(-1, -2))  # both or neither
    return _full(out, x)


def gram_couple(C, Phi: Tensor, s: Optional[Tensor] = None) -> Tensor:
    """``Σ_j C(G_kj, s_k, s_j) Φ_j`` with ``G = ΦΦᵀ``, shape like ``Phi``; ``C(G)`` alone when ``s`` is None.

    ``C`` is an elementwise map; ``s`` (shape ``(..., N)``) is a per-token weight such as ``f'(S)``.
    """
    if s is None:
        return pair_reduce(lambda r, c: _coupling(C, gram(r[0], c[0]), None, None) @ c[0], (Phi,))
    s = s.unsqueeze(-1)
    return pair_reduce(lambda r, c: _coupling(C, gram(r[0], c[0]), r[1], c[1]) @ c[0], (Phi, s))


def distance_couple(C, Z: Tensor, s: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(C Z, C 1)`` with ``C_kj = C(r_kj, s_k, s_j)``, ``r_kj = ‖z_k − z_j‖²`` (``C(r)`` when ``s`` is None).

    The distance-kernel gradient is then ``2 (C1 ⊙ Z − C Z)``.
    """

    def block(r, c):
        Ct = _coupling(C, sq_dist(r[0], c[0]), r[1] if s is not None else None, c[1] if s is not None else None)
        return torch.cat([Ct @ c[0], Ct.sum(-1, keepdim=True)], dim=-1)

    out = pair_reduce(block, (Z,) if s is None else (Z, s.unsqueeze(-1)), per_pair=5.0)
    return out[..., :-1], out[..., -1:]


def pair_grad(K, Z: Tensor, w: Optional[Tensor] = None, *, symmetric: bool = False) -> Tensor:
    """``Σ_j w_k ∂₁K(z_k, z_j) + w_j ∂₂K(z_j, z_k)``: the gradient of ``Σ_k w_k Σ_j K(z_k, z_j)`` with the weights
    ``w`` held fixed, by autodiff of one tile at a time (``w = 1`` when None).

    With ``w = f'(S)`` this is ``∇_Z E`` of ``E = Σ_k f(S_k)``, ``S_k = Σ_j K(z_k, z_j)`` (Eq. 19). A symmetric
    kernel takes one evaluation per tile: ``Σ_j (w_k + w_j) ∂₁K(z_k, z_j)``.
    """
    per_pair = _per_pair(K, Z.shape[-1], 6.0)
    grad = torch.func.grad

    if w is None:
        if symmetric:
            fn = lambda r, c: 2 * grad(lambda a: K(a, c[0]).sum())(r[0])  # noqa: E731
        else:
            fn = lambda r, c: grad(lambda a: K(a, c[0]).sum() + K(c[0], a).sum())(r[0])  # noqa: E731
        return pair_reduce(fn, (Z,), per_pair=per_pair)
    w = w.unsqueeze(-1)  # (..., N, 1)
    if symmetric:
        fn = lambda r, c: grad(lambda a: ((r[1] + c[1].transpose(-1, -2)) * K(a, c[0])).sum())(r[0])  # noqa: E731
    else:
        fn = lambda r, c: grad(lambda a: (r[1] * K(a, c[0])).sum() + (c[1] * K(c[0], a)).sum())(r[0])  # noqa: E731
    return pair_reduce(fn, (Z, w), per_pair=per_pair)
