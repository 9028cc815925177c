"""Design studies: a grid of designs × seeds in an Optuna study, run by many workers, reported with intervals.

    energyarch study run STUDY.toml --out DIR [--storage URL] [--workers N]
    energyarch study report DIR

>>> from energyarch.study import mean_interval
>>> mean_interval([1.0, 1.0])["half"]
0.0
"""

from .report import leaderboard as leaderboard
from .report import trial_rows as trial_rows
from .report import write_report as write_report
from .runner import run_study as run_study
from .runner import run_worker as run_worker
from .spec import StudySpec as StudySpec
from .spec import load_study as load_study
from .stats import mean_interval as mean_interval
from .stats import paired_differences as paired_differences
from .storage import load_stored_study as load_stored_study

__all__ = [
    "StudySpec",
    "leaderboard",
    "load_stored_study",
    "load_study",
    "mean_interval",
    "paired_differences",
    "run_study",
    "run_worker",
    "trial_rows",
    "write_report",
]
