"""A task is one file: a task defined here alone (a Task subclass and a registered builder) trains and evaluates
through the ordinary trainer; TrainConfig accepts its name because the registry lists it."""

import math

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from energyarch.models import ModelConfig, TaskSpec
from energyarch.train import TrainConfig, register_task, train
from energyarch.train.tasks import Task


class Parity(Task):
    """The parity of 8 random bits, read out from a class token."""

    name, primary = "parity", "top1"

    def __init__(self, n_train: int, n_test: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        bits = torch.randint(0, 2, (n_train + n_test, 8), generator=g)
        y = bits.sum(-1) % 2
        self.train_set = TensorDataset(bits[:n_train], y[:n_train])
        self.test_set = TensorDataset(bits[n_train:], y[n_train:])
        self.spec = TaskSpec(kind="tokens", vocab_size=2, seq_len=8, num_outputs=2, output="cls")

    def inputs(self, batch, device, train=False, generator=None):
        return batch[0].to(device)

    def loss_one(self, logits, batch):
        return F.cross_entropy(logits.float(), batch[1].to(logits.device))

    def sums(self, logits, batch):
        y = batch[1].to(logits.device)
        return {"loss_sum": float(F.cross_entropy(logits.float(), y, reduction="sum")),
                "correct": float((logits.argmax(-1) == y).sum()), "n": float(y.shape[0])}

    def finalize(self, sums):
        return {"loss": sums["loss_sum"] / max(sums["n"], 1.0), "top1": sums["correct"] / max(sums["n"], 1.0)}


@register_task("parity")
def build_parity(cfg: TrainConfig) -> Parity:
    return Parity(cfg.limit_train or 64, cfg.limit_test or 32, cfg.data_seed)


def test_a_task_defined_in_this_file_trains_and_evaluates(tmp_path):
    cfg = TrainConfig(task="parity", epochs=1, batch_size=16, limit_train=32, limit_test=16, progress=False,
                      diagnostics_samples=4, eval_iters=[1, 2], out_dir=str(tmp_path / "run"),
                      model=ModelConfig(d=16, heads=2, iters=2, time_freq=8))
    summary = train(cfg)
    assert summary["finished"] and 0 <= summary["final"]["test_top1"] <= 1
    assert math.isfinite(summary["final"]["test_loss"]) and [r["iters"] for r in summary["sweep"]] == [1, 2]
    assert TrainConfig.load(tmp_path / "run" / "config.toml").task == "parity"
