"""The registered patterns, one file each; importing this package registers them all.

To add a pattern: write a file here with one ``@register_pattern`` class (see ``bisoftmax.py``) and add its
module name below.
"""

from . import (
    bisoftmax,
    causal_bisoftmax,
    causal_distance_kernel,
    causal_inner_product_kernel,  # noqa: F401
    causal_kernel_attention,
    causal_linear_attention,
    distance_kernel,
    distance_softmax,
    elementwise_ff,
    gated_elementwise_ff,
    gated_ff,
    general_ff,
    inner_product_kernel,
    kernel_attention,
    linear_attention,
    pairwise_kernel,
    relu_ff,
    softmax_ff,
)
from . import qk_bisoftmax, qk_inner_product_kernel  # noqa: F401, E402 - query-key attention (qk_attention family)
