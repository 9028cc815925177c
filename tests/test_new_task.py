"""A task is one file: a task defined here alone (a Task subclass and a registered builder) trains and evaluates
through the ordinary trainer; TrainConfig accepts its name because the registry lists it."""

import math

import torch
from torch.utils.data import TensorDataset

from energyarch.models import TaskSpec
from energyarch.train import ClassificationTask, TrainConfig, register_task, train

from conftest import quick


class Parity(ClassificationTask):
    """The parity of 8 random bits, read out from a class token (loss and top1 from :class:`ClassificationTask`)."""

    name = "parity"

    def __init__(self, n_train: int, n_test: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        bits = torch.randint(0, 2, (n_train + n_test, 8), generator=g)
        y = bits.sum(-1) % 2
        self.train_set = TensorDataset(bits[:n_train], y[:n_train])
        self.test_set = TensorDataset(bits[n_train:], y[n_train:])
        self.spec = TaskSpec(kind="tokens", vocab_size=2, seq_len=8, num_outputs=2, output="cls")

    def inputs(self, batch, device, train=False, generator=None):
        return batch[0].to(device)


@register_task("parity")
def build_parity(cfg: TrainConfig) -> Parity:
    return Parity(cfg.limit_train or 64, cfg.limit_test or 32, cfg.data_seed)


def test_a_task_defined_in_this_file_trains_and_evaluates(tmp_path):
    cfg = quick(tmp_path, task="parity")
    summary = train(cfg)
    assert summary["finished"] and 0 <= summary["final"]["test_top1"] <= 1
    assert math.isfinite(summary["final"]["test_loss"]) and [r["iters"] for r in summary["sweep"]] == [1, 2]
    assert TrainConfig.load(tmp_path / "run" / "config.toml").task == "parity"
