"""Solvers: the update rule of a layer, one registered piece per file (heavy ball, Nesterov, RMSProp, Adam; see the training guide).

    gd          x ← x − α g                                     (default; the paper's step)
    momentum    v ← μ v − α g;            x ← x + v             (heavy ball)
    nesterov    v ← μ v − α g(x + μ v);   x ← x + v
    rmsprop     s ← ρ s + (1−ρ) g²;       x ← x − α g / (√s + ε)
    adam        m, s as in Adam (β₁, β₂), bias-corrected;  x ← x − α m̂ / (√ŝ + ε)

Each term has its own state under sequential splitting; the state is carried across the recurrent iterations
by :class:`~energyarch.compile.EnergyStep` (``X, state = step(X, steps, state=state)``).

>>> import energyarch as ea, torch
>>> step = ea.compile(ea.Attention(f="log(x)/beta", K="exp(beta*s)", heads=2), d=8, solver="nesterov")
>>> X, state = step(torch.randn(2, 5, 8), 0.1, state=step.init_state())
>>> sorted(state["attn"])
['v']
"""

from typing import Any

from . import adam as _adam  # noqa: F401 - registers 'adam'
from . import gd as _gd  # noqa: F401 - registers 'gd'
from . import momentum as _momentum  # noqa: F401 - registers 'momentum'
from . import nesterov as _nesterov  # noqa: F401 - registers 'nesterov'
from . import rmsprop as _rmsprop  # noqa: F401 - registers 'rmsprop'
from .adam import Adam as Adam

#: the official Hyper-SET Sudoku code's solvers, as energyarch hyper-parameters: its momentum keeps a running sum of
#: raw gradients (b ← 0.9 b + g, x ← x − α_t b: ``convention='official'``), its RMSProp (η = 0.8) and Adam
#: (0.9, 0.96) add ε = 1e-6 (energyarch's default is 1e-8). ``ea.models.official_config(sd, solver=name)`` uses them.
OFFICIAL_SOLVER_PARAMS: dict[str, dict[str, Any]] = {
    "gd": {},
    "momentum": {"momentum": 0.9, "convention": "official"},
    "rmsprop": {"rho": 0.8, "eps": 1e-6},
    "adam": {"beta1": 0.9, "beta2": 0.96, "eps": 1e-6},
}
from .base import SOLVERS as SOLVERS
from .base import STEP_RULES as STEP_RULES
from .base import Solver as Solver
from .base import make_solver as make_solver
from .base import register_solver as register_solver
from .base import run as run
from .base import solver_names as solver_names
from .check import SolverCheck as SolverCheck
from .check import verify_solver as verify_solver
from .gd import GradientDescent as GradientDescent
from .momentum import Momentum as Momentum
from .nesterov import Nesterov as Nesterov
from .rmsprop import RMSProp as RMSProp

__all__ = [
    "Adam",
    "GradientDescent",
    "Momentum",
    "Nesterov",
    "OFFICIAL_SOLVER_PARAMS",
    "RMSProp",
    "SOLVERS",
    "STEP_RULES",
    "Solver",
    "SolverCheck",
    "make_solver",
    "register_solver",
    "run",
    "solver_names",
    "verify_solver",
]
