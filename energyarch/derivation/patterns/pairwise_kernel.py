"""Pattern: an opaque symmetric kernel (torch callable) with a symbolic f.

Closed form Σ_j [f'(S_k) + f'(S_j)] ∂₁K(z_k, z_j), with ∂₁K by ``torch.func.grad`` of the user's kernel.
Lowering: dense (N×N×p) below ``sdpa_threshold``; above it by autodiff of one tile of pairs at a time
(:func:`energyarch.blockwise.pair_grad`, memory linear in N).
"""

from __future__ import annotations

from ...primitives import X
from ..codegen import code
from ..core import Candidate, Pattern, register_pattern


@register_pattern
class PairwiseKernel(Pattern):
    name = "pairwise kernel"
    family = "attention"
    kinds = ("callable",)
    order = 10
    reason = "opaque symmetric kernel: closed form Σ_j [f'(S_k)+f'(S_j)] ∂₁K(z_k, z_j) with ∂₁K by torch.func"

    def match(self, c: Candidate):
        return {}

    def latex(self, c, consts):
        return (
            r"-\nabla_{\mathbf{x}_k} E = -\sum_{h} \mathbf{W}_h \sum_j \left[f'(S_k) + f'(S_j)\right] "
            r"\partial_1 K(\mathbf{z}_k^h, \mathbf{z}_j^h),\quad f(x) = %s" % c.term.f.latex()
        )

    def grad_lines(self, dv):
        linear = X not in dv.pieces["df"].free_symbols  # f linear: f'(S) = a
        if linear:
            tiled = [f"return {code(dv.pieces['df'])} * pair_grad(kernel_callable(self.kernel), Z, symmetric=True)"]
        else:
            tiled = [
                "K = kernel_callable(self.kernel)",
                "S = pair_row_sum(K, Z)                              # (B, H, N): Σ_j K(z_k, z_j)",
                f"df_S = {code(dv.pieces['df'], X, 'S')}",
                "return pair_grad(K, Z, df_S, symmetric=True)        # Σ_j [f'(S_k) + f'(S_j)] ∂₁K(z_k, z_j)",
            ]
        head = [
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: tiles of pairs, never N×N×p",
            *("    " + ln for ln in tiled),
        ]
        dK = "dK = pairwise_kernel_grad(self.kernel, Z)           # (B, H, N, N, p): ∂₁K(z_k, z_j)"
        if linear:
            return [*head, dK, f"return {code(2 * dv.pieces['df'])} * dK.sum(dim=-2)"]
        return [
            *head,
            "K = pairwise_kernel(self.kernel, Z)                 # (B, H, N, N)",
            dK,
            "S = K.sum(dim=-1)                                   # (B, H, N)",
            f"df_S = {code(dv.pieces['df'], X, 'S')}",
            "C = df_S.unsqueeze(-1) + df_S.unsqueeze(-2)         # f'(S_k) + f'(S_j)",
            "return (C.unsqueeze(-1) * dK).sum(dim=-2)",
        ]
