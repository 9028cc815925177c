"""Models around compiled energies: Hyper-SET and baselines in one harness (Sec. 4.3, App. D).

>>> import torch
>>> from energyarch.models import ModelConfig, TaskSpec, build_model, count_parameters
>>> model = build_model(ModelConfig(arch="transformer", d=16, heads=2, iters=2), TaskSpec(seq_len=9))
>>> model(torch.randint(0, 10, (2, 9))).shape
torch.Size([2, 9, 9])
"""

from .config import ATTENTION_PRESETS as ATTENTION_PRESETS
from .config import FEEDFORWARD_PRESETS as FEEDFORWARD_PRESETS
from .config import ModelConfig as ModelConfig
from .config import TaskSpec as TaskSpec
from .crate import CRATE as CRATE
from .diagnostics import Trace as Trace
from .diagnostics import average_angle as average_angle
from .diagnostics import effective_rank as effective_rank
from .energy_transformer import EnergyTransformer as EnergyTransformer
from .hyperset import HyperSET as HyperSET
from .lora import DepthLoRA as DepthLoRA
from .model import Model as Model
from .model import build_model as build_model
from .model import count_parameters as count_parameters
from .model import describe as describe
from .official import Conversion as Conversion
from .official import load_official as load_official
from .official import official_config as official_config
from .official import read_official as read_official
from .stepsizes import FixedSteps as FixedSteps
from .stepsizes import StepSizeNet as StepSizeNet
from .transformer import Transformer as Transformer

__all__ = [
    "ATTENTION_PRESETS",
    "CRATE",
    "Conversion",
    "DepthLoRA",
    "EnergyTransformer",
    "FEEDFORWARD_PRESETS",
    "FixedSteps",
    "HyperSET",
    "Model",
    "ModelConfig",
    "StepSizeNet",
    "TaskSpec",
    "Trace",
    "Transformer",
    "average_angle",
    "build_model",
    "count_parameters",
    "describe",
    "effective_rank",
    "load_official",
    "official_config",
    "read_official",
]
