"""Training, evaluation and plots for energyarch models (Hyper-SET, Sec. 5, App. D).

>>> from energyarch.train import TrainConfig
>>> TrainConfig(task="digits").model.arch
'hyperset'
"""

from .checkpoint import architecture_signature as architecture_signature
from .checkpoint import load_checkpoint as load_checkpoint
from .checkpoint import load_run as load_run
from .checkpoint import save_checkpoint as save_checkpoint
from .config import TrainConfig as TrainConfig
from .iterates import forward_all as forward_all
from .registry import register_task as register_task
from .tasks import ClassificationTask as ClassificationTask
from .tasks import ImageTask as ImageTask
from .tasks import SudokuTask as SudokuTask
from .tasks import Task as Task
from .tasks import build_task as build_task
from .trainer import Trainer as Trainer
from .trainer import TrainingDivergedError as TrainingDivergedError
from .trainer import evaluate_dataset as evaluate_dataset
from .trainer import lr_at as lr_at
from .trainer import train as train

__all__ = [
    "ClassificationTask",
    "ImageTask",
    "SudokuTask",
    "Task",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "architecture_signature",
    "build_task",
    "evaluate_dataset",
    "forward_all",
    "load_checkpoint",
    "load_run",
    "lr_at",
    "register_task",
    "save_checkpoint",
    "train",
]
