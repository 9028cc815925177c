"""Interactions (how queries and keys come from tokens), one registered piece per file."""

from .base import INTERACTIONS, Interaction, register_interaction  # noqa: F401
from .low_rank import DiagLowRank  # noqa: F401
from .query_key import QueryKey  # noqa: F401
from .shared import SharedBasis  # noqa: F401

__all__ = ["INTERACTIONS", "DiagLowRank", "Interaction", "QueryKey", "SharedBasis", "register_interaction"]
