"""The registered patterns, one file each; importing this package registers them all.

To add a pattern: write a file here with one ``@register_pattern`` class (see ``bisoftmax.py``) and add its
module name below.
"""

from . import (bisoftmax, distance_kernel, distance_softmax, elementwise_ff, gated_ff, general_ff,  # noqa: F401
               inner_product_kernel, kernel_attention, linear_attention, pairwise_kernel, relu_ff, softmax_ff)
