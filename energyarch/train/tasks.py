"""Tasks: datasets, the loss, metrics and the :class:`TaskSpec` the model is built for.

A task turns a batch from its dataset into model inputs, computes the training loss from the logits of the
iterations it is given (the last one, or every one, App. D.2), and reduces predictions to additive sums
(so that data-parallel processes can add them) that :meth:`Task.finalize` turns into metrics.

- ``sudoku``: 81 digit tokens (0 = blank), 9 classes per cell; cross-entropy on the blank cells only (App. D.2);
  ``board_acc`` (every blank right) and ``cell_acc`` (blank cells right).
- ``digits`` / ``fashion_mnist`` / ``cifar10`` / ``cifar100``: patches and a class token; cross-entropy; ``top1``.
- ``text``: byte-level language modelling (vocabulary 256, causal model); next-byte cross-entropy; ``bpb``
  (bits per byte = mean nats / ln 2, lower is better) on fixed non-overlapping validation windows.

>>> task = build_task(TrainConfig(task="digits", limit_train=64, limit_test=32))
>>> task.spec.num_tokens, len(task.train_set), task.primary
(17, 64, 'top1')
"""

from __future__ import annotations

from typing import Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ..errors import ConfigError
from ..models import TaskSpec
from .config import TrainConfig
from .registry import TASKS, register_task

#: default patch side per image task (digits 8x8 -> 16 patches, Fashion-MNIST 28x28 -> 49, CIFAR 32x32 -> 16)
DEFAULT_PATCH = {"digits": 2, "fashion_mnist": 4, "cifar10": 8, "cifar100": 8}


class Task:
    """Base class. Attributes: ``name``, ``spec`` (TaskSpec), ``train_set``, ``test_set``, ``primary`` metric."""

    name: str = ""
    primary: str = ""
    spec: TaskSpec
    train_set: Dataset
    test_set: Dataset

    def inputs(
        self,
        batch: Sequence[Tensor],
        device: torch.device,
        train: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tensor:
        """Model inputs of a batch on ``device`` (training batches may be augmented with ``generator``)."""
        raise NotImplementedError

    def loss(self, logits: Sequence[Tensor], batch: Sequence[Tensor]) -> Tensor:
        """Mean cross-entropy over the given iterations' logits (a list with one entry for ``loss_on='last'``)."""
        return torch.stack([self.loss_one(z, batch) for z in logits]).mean()

    def loss_one(self, logits: Tensor, batch: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError

    def sums(self, logits: Tensor, batch: Sequence[Tensor]) -> dict[str, float]:
        """Additive statistics of one evaluation batch (loss sum and counts)."""
        raise NotImplementedError

    def finalize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from summed statistics."""
        raise NotImplementedError


class SudokuTask(Task):
    """Fill the blanks of a 9x9 board: per-token readout over the 9 digits."""

    name, primary = "sudoku", "board_acc"

    def __init__(self, train_set: Dataset, test_set: Dataset):
        self.train_set, self.test_set = train_set, test_set
        self.spec = TaskSpec(kind="tokens", vocab_size=10, seq_len=81, num_outputs=9, output="per_token")

    def inputs(self, batch, device, train=False, generator=None):
        return batch[0].to(device, non_blocking=True)

    @staticmethod
    def _targets(batch, device):
        quiz, solution = (t.to(device, non_blocking=True) for t in batch)
        return quiz == 0, solution - 1  # blank mask (B, 81), digits 0..8

    def loss_one(self, logits, batch):
        blank, target = self._targets(batch, logits.device)
        if not bool(blank.any()):  # a batch of full boards: nothing to learn
            return logits.sum() * 0.0
        return F.cross_entropy(logits[blank].float(), target[blank])  # blanks only (App. D.2)

    def sums(self, logits, batch):
        blank, target = self._targets(batch, logits.device)
        wrong = (logits.argmax(-1) != target) & blank  # (B, 81)
        n_blank = int(blank.sum())
        loss = F.cross_entropy(logits[blank].float(), target[blank], reduction="sum") if n_blank else logits.sum() * 0
        return {
            "loss_sum": float(loss),
            "cells": float(n_blank),
            "cells_wrong": float(wrong.sum()),
            "boards": float(blank.shape[0]),
            "boards_solved": float((~wrong.any(-1)).sum()),
        }

    def finalize(self, sums):
        cells, boards = max(sums["cells"], 1.0), max(sums["boards"], 1.0)
        return {
            "loss": sums["loss_sum"] / cells,
            "board_acc": sums["boards_solved"] / boards,
            "cell_acc": 1.0 - sums["cells_wrong"] / cells,
        }


class ClassificationTask(Task):
    """One class label per example (``batch[1]``) against ``(B, classes)`` logits: cross-entropy, ``top1``.

    A classification task of one's own subclasses it and writes ``__init__`` (datasets, spec) and ``inputs``.
    """

    primary = "top1"

    def loss_one(self, logits, batch):
        return F.cross_entropy(logits.float(), batch[1].to(logits.device))

    def sums(self, logits, batch):
        y = batch[1].to(logits.device)
        return {
            "loss_sum": float(F.cross_entropy(logits.float(), y, reduction="sum")),
            "correct": float((logits.argmax(-1) == y).sum()),
            "n": float(y.shape[0]),
        }

    def finalize(self, sums):
        n = max(sums["n"], 1.0)
        return {"loss": sums["loss_sum"] / n, "top1": sums["correct"] / n}


class ImageTask(ClassificationTask):
    """Image classification with a class token: ``(B, C, H, W)`` -> ``(B, classes)`` logits."""

    def __init__(
        self,
        name: str,
        train_set: Dataset,
        test_set: Dataset,
        image_shape: tuple,
        num_classes: int,
        patch_size: int,
        augment: bool = False,
    ):
        self.name, self.train_set, self.test_set, self.augment = name, train_set, test_set, augment
        self.spec = TaskSpec(
            kind="image", num_outputs=num_classes, output="cls", image_shape=tuple(image_shape), patch_size=patch_size
        )

    def inputs(self, batch, device, train=False, generator=None):
        x = batch[0]
        if train and self.augment:
            x = augment(x, generator)
        return x.to(device, non_blocking=True)


def augment(x: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Random crop after zero padding by 1/8 of the side, and a random horizontal flip, per image."""
    B, _, H, W = x.shape
    pad = max(1, H // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator)
    rows = dy[:, None] + torch.arange(H)[None]  # (B, H)
    cols = dx[:, None] + torch.arange(W)[None]  # (B, W)
    out = padded[
        torch.arange(B)[:, None, None, None],
        torch.arange(x.shape[1])[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    flip = torch.rand(B, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(-1), out)


def text_spec(seq_len: int) -> TaskSpec:
    """What a byte-level language model reads and predicts: 256 byte ids in, 256 logits per position, causal."""
    return TaskSpec(kind="tokens", vocab_size=256, seq_len=seq_len, num_outputs=256, output="per_token", causal=True)


class TextTask(Task):
    """Next-byte prediction with a causal model: ids ``(B, N)`` → logits ``(B, N, 256)``; metric bits per byte.

    Attributes: ``data_info`` (source, Python version, files, sha256, sizes), recorded in the run.
    """

    name, primary = "text", "bpb"
    #: the primary metric is better when lower
    lower_is_better = True

    def __init__(self, train_set: Dataset, test_set: Dataset, seq_len: int, data_info: Optional[dict] = None):
        self.train_set, self.test_set = train_set, test_set
        self.data_info = dict(data_info or {})
        self.spec = text_spec(seq_len)

    def inputs(self, batch, device, train=False, generator=None):
        return batch[0].to(device, non_blocking=True)

    def loss_one(self, logits, batch):
        target = batch[1].to(logits.device, non_blocking=True)
        return F.cross_entropy(logits.flatten(0, -2).float(), target.flatten())

    def sums(self, logits, batch):
        target = batch[1].to(logits.device, non_blocking=True)
        flat = logits.flatten(0, -2).float()
        return {
            "loss_sum": float(F.cross_entropy(flat, target.flatten(), reduction="sum")),
            "bytes": float(target.numel()),
            "correct": float((flat.argmax(-1) == target.flatten()).sum()),
        }

    def finalize(self, sums):
        from ..data.text import bits_per_byte

        n = max(sums["bytes"], 1.0)
        return {"loss": sums["loss_sum"] / n, "bpb": bits_per_byte(sums["loss_sum"], n), "top1": sums["correct"] / n}


@register_task("text")
def _text_task(cfg: TrainConfig) -> TextTask:
    from ..data.text import ByteWindows, split_bytes, text_corpus

    corpus = text_corpus(cfg.text_path or cfg.data_dir)
    train, val = split_bytes(corpus.data)
    train_set = ByteWindows.random(train, cfg.seq_len, seed=cfg.data_seed)
    test_set = ByteWindows.sequential(val, cfg.seq_len)
    if cfg.limit_train:
        train_set.starts = train_set.starts[: cfg.limit_train]
    if cfg.limit_test:
        test_set.starts = test_set.starts[: cfg.limit_test]
    info = {
        **corpus.info(),
        "train_bytes": len(train),
        "val_bytes": len(val),
        "seq_len": cfg.seq_len,
        "train_windows": len(train_set),
        "val_windows": len(test_set),
    }
    return TextTask(train_set, test_set, cfg.seq_len, info)


def _limit(n: int, *tensors: Tensor) -> list[Tensor]:
    return [t[:n] if n else t for t in tensors]


@register_task("digits", "fashion_mnist", "cifar10", "cifar100")
def _image_task(cfg: TrainConfig) -> ImageTask:
    from ..data import load_cifar, load_digits_dataset, load_fashion_mnist

    if cfg.task == "digits":
        data = load_digits_dataset()
    elif cfg.task == "fashion_mnist":
        data = load_fashion_mnist(cfg.data_dir)
    else:
        if cfg.data_dir is None:
            raise ConfigError(
                f"task={cfg.task!r} needs data_dir: the folder holding the extracted "
                f'cifar-{cfg.task[5:]}-python archive, e.g. data_dir = "~/data"'
            )
        data = load_cifar(cfg.data_dir, which=int(cfg.task[5:]))
    tx, ty = _limit(cfg.limit_train, data.train_x, data.train_y)
    vx, vy = _limit(cfg.limit_test, data.test_x, data.test_y)
    if cfg.normalize:
        mean = torch.tensor(data.mean, dtype=tx.dtype).view(1, -1, 1, 1)
        std = torch.tensor(data.std, dtype=tx.dtype).view(1, -1, 1, 1).clamp_min(1e-8)
        tx, vx = (tx - mean) / std, (vx - mean) / std
    patch = cfg.patch_size or DEFAULT_PATCH[cfg.task]
    _, H, W = data.image_shape
    if H % patch or W % patch:
        raise ConfigError(
            f"TrainConfig.patch_size={patch}: must divide the {H}x{W} images of task={cfg.task!r}; "
            f"e.g. patch_size = {DEFAULT_PATCH[cfg.task]}"
        )
    return ImageTask(
        cfg.task,
        TensorDataset(tx.contiguous(), ty),
        TensorDataset(vx.contiguous(), vy),
        data.image_shape,
        data.num_classes,
        patch,
        augment=cfg.augment,
    )


@register_task("sudoku")
def _sudoku_task(cfg: TrainConfig) -> SudokuTask:
    from ..data import SudokuDataset, load_or_generate, load_palm_csv

    if (cfg.sudoku_csv_train is None) != (cfg.sudoku_csv_test is None):
        raise ConfigError(
            f"sudoku_csv_train={cfg.sudoku_csv_train!r}, sudoku_csv_test={cfg.sudoku_csv_test!r}: "
            f"give both Palm et al. CSV files (train.csv and test.csv), or neither to generate"
        )
    if cfg.sudoku_csv_train is not None:
        tq, ts = load_palm_csv(cfg.sudoku_csv_train)
        vq, vs = load_palm_csv(cast(str, cfg.sudoku_csv_test))  # both or neither (checked above)
        tq, ts = tq[: cfg.n_train], ts[: cfg.n_train]
        vq, vs = vq[: cfg.n_test], vs[: cfg.n_test]
    else:
        d = load_or_generate(
            cfg.data_dir,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            seed=cfg.data_seed,
            min_givens=cfg.min_givens,
            max_givens=cfg.max_givens,
            minimal=cfg.minimal,
            processes=cfg.processes,
            progress=cfg.progress,
        )
        tq, ts, vq, vs = d["train_quizzes"], d["train_solutions"], d["test_quizzes"], d["test_solutions"]
    train, test = SudokuDataset(tq, ts), SudokuDataset(vq, vs)
    train.quizzes, train.solutions = _limit(cfg.limit_train, train.quizzes, train.solutions)
    test.quizzes, test.solutions = _limit(cfg.limit_test, test.quizzes, test.solutions)
    return SudokuTask(train, test)


def build_task(cfg: TrainConfig) -> Task:
    """The task named by ``cfg.task`` (its registered builder, :mod:`energyarch.train.registry`), with its data
    loaded (nothing is downloaded)."""
    if cfg.task not in TASKS:
        raise ConfigError(f"TrainConfig.task={cfg.task!r}: no such task; registered: {tuple(TASKS)}")
    return TASKS[cfg.task](cfg)
