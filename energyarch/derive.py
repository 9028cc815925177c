"""Compatibility module: the derivation lives in :mod:`energyarch.derivation` (families and patterns, one file
each). ``from energyarch.derive import derive`` keeps working.

>>> from energyarch import Attention
>>> derive(Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=2), 8).pattern
'kernel attention'
"""

from .derivation import (
    BETA,
    SIGMA,
    SJ,
    SK,
    SYMBOLIC_BUDGET,
    Derivation,
    Dims,  # noqa: F401
    autodiff_derivation,
    derive,
)

__all__ = ["BETA", "SIGMA", "SJ", "SK", "SYMBOLIC_BUDGET", "Derivation", "Dims", "autodiff_derivation", "derive"]
