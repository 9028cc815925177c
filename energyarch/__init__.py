"""energyarch: turn energy functions into Transformer layers (Hyper-SET).

Declare an energy from primitives, compile it to an ``nn.Module`` update step, inspect the derived
operator and the emitted source, and verify it against ``torch.func.grad``:

>>> import energyarch as ea
>>> E = ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=4) + ea.FeedForward(g="x", h="relu(x)**2/2")
>>> step = ea.compile(E, d=64)
>>> ea.verify(step).ok
True
"""

from .compile import EnergyStep as EnergyStep
from .compile import compile as compile  # noqa: A001 - the toolkit's verb
from .compile import energy_graph as energy_graph
from .derive import Derivation as Derivation
from .derive import derive as derive
from .energy import Attention as Attention
from .energy import CausalAttention as CausalAttention
from .energy import Energy as Energy
from .energy import FeedForward as FeedForward
from .energy import GatedFeedForward as GatedFeedForward
from .energy import Sphere as Sphere
from .errors import EnergyArchError as EnergyArchError
from .interactions import DiagLowRank as DiagLowRank
from .interactions import QueryKey as QueryKey
from .interactions import SharedBasis as SharedBasis
from .primitives import Kernel as Kernel
from .primitives import Scalar as Scalar
from .runtime import TermUpdate as TermUpdate
from .runtime import finite_checks as finite_checks
from .verify import verify as verify
from .solvers import Solver as Solver
from .solvers import verify_solver as verify_solver
from .descent import verify_descent as verify_descent

__version__ = "0.1.0"

__all__ = [
    "Attention",
    "CausalAttention",
    "DiagLowRank",
    "QueryKey",
    "SharedBasis",
    "Derivation",
    "Energy",
    "EnergyArchError",
    "EnergyStep",
    "FeedForward",
    "GatedFeedForward",
    "Kernel",
    "Scalar",
    "Sphere",
    "TermUpdate",
    "compile",
    "derive",
    "energy_graph",
    "finite_checks",
    "verify",
    "Solver",
    "verify_solver",
    "verify_descent",
]


def __getattr__(name: str):
    """``energyarch.train``, ``energyarch.models``, ... after a plain ``import energyarch`` (imported on first use,
    so that declaring and compiling energies does not load the training stack)."""
    if name in ("train", "models", "catalog", "data"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'energyarch' has no attribute {name!r}")
