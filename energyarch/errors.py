"""One exception family for user mistakes.

Every error raised because of what a user wrote derives from :class:`EnergyArchError`
(itself a :class:`ValueError`) and says what was given, why it is wrong and what to write instead.
"""

from __future__ import annotations


class EnergyArchError(ValueError):
    """Base class of every user-facing error in energyarch."""


class ParseError(EnergyArchError):
    """An expression string uses something the restricted parser does not allow."""


class DeclarationError(EnergyArchError):
    """An energy, primitive or constraint was declared with invalid arguments."""


class CompileError(EnergyArchError):
    """An energy cannot be compiled with the requested options."""


class ShapeError(EnergyArchError):
    """A tensor passed at call time has the wrong shape."""


class ConfigError(EnergyArchError):
    """A training/evaluation configuration is invalid (unknown key, wrong type, bad value)."""


class DataError(EnergyArchError):
    """A dataset file or directory is missing or malformed."""


class CheckpointError(EnergyArchError):
    """A checkpoint cannot be loaded (missing, corrupt, or from a different architecture)."""


class VerificationError(EnergyArchError):
    """A derived operator disagrees with autograd, or a step fails to decrease the energy."""


class NonFiniteError(EnergyArchError):
    """An update produced inf or NaN while :func:`energyarch.finite_checks` was active."""
