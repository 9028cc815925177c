"""The training loop: AdamW, linear warmup + cosine decay, gradient clipping, evaluation, exact resume, DDP.

    for each epoch: seeded permutation (DistributedSampler, set_epoch) → batches of batch_size / world
        logits of the last iteration (or of every iteration, loss_on='all') → task loss    [bf16 autocast]
        non-finite loss or gradient → stop, keep the last good checkpoint, raise TrainingDivergedError
        clip ‖g‖ ≤ grad_clip → lr(step) → AdamW step (fused on CUDA; fp32 master weights)
    evaluate every eval_every epochs; checkpoint at each epoch end (and every checkpoint_every steps)

Resuming reloads weights, optimizer moments, step, position within the epoch, history and RNG states, so that
training k steps, stopping and resuming for N − k steps gives the same weights as N steps in one go.

Speed: ``precision`` ('auto' = bf16 autocast on CUDA, fp32 on CPU) and ``compile`` (``torch.compile`` of the
model, fullgraph first; the cost of its first step is logged). Each epoch's throughput (samples/s, tokens/s) and
peak memory go to ``metrics.json`` (``speed``) and, with every loss, accuracy and learning rate, to TensorBoard
event files in the run folder.

>>> import tempfile
>>> cfg = TrainConfig(task="digits", epochs=1, batch_size=32, limit_train=64, limit_test=32, progress=False,
...                   out_dir=tempfile.mkdtemp(), model=ModelConfig(d=16, heads=2, iters=2, time_freq=8))
>>> Trainer(cfg).fit()["epoch"]
1
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Mapping, Optional, Sized, cast

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler
from ..errors import CheckpointError, ConfigError, EnergyArchError
from ..models import ModelConfig, build_model, count_parameters
from . import distributed, logs
from .checkpoint import STATE_FILE, check_run_folder, load_checkpoint, load_run, save_checkpoint, set_rng_state
from .config import TrainConfig, atomic_write_text
from .iterates import forward_all
from .tasks import Task, build_task

log = logging.getLogger("energyarch.train")

METRICS_FILE = "metrics.json"


class TrainingDivergedError(EnergyArchError):
    """The loss or the gradient became NaN/inf; training stopped and the last good checkpoint was kept."""


def lr_at(step: int, cfg: TrainConfig, total_steps: int, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup to ``lr``, then cosine to ``min_lr``.

    >>> cfg = TrainConfig(lr=1.0, min_lr=0.0)
    >>> [round(lr_at(s, cfg, total_steps=10, warmup_steps=2), 3) for s in (0, 1, 2, 6, 9)]
    [0.5, 1.0, 1.0, 0.5, 0.038]
    """
    if step < warmup_steps:
        return cfg.lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings (dim ≥ 2), none on gains and biases (dim < 2).

    Fused (one kernel for every parameter) when all parameters are on a CUDA device.
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(decay + no_decay) and all(p.device.type == "cuda" for p in decay + no_decay)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device``; None means plain fp32.

    'auto' is bf16 on a CUDA device that supports it and fp32 elsewhere; 'bf16' also works on a CPU (autocast on
    the CPU, slower than fp32 on most CPUs; for checking a bf16 recipe without a GPU). Parameters, gradients and
    optimizer moments stay fp32 either way (autocast casts per operation); bf16 needs no loss scaling.

    >>> autocast_dtype("auto", torch.device("cpu")) is None, autocast_dtype("bf16", torch.device("cpu"))
    (True, torch.bfloat16)
    """
    if precision == "fp32":
        return None
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if cuda_bf16 else None
    if precision != "bf16":
        raise ConfigError(f"TrainConfig.precision={precision!r}: choose one of ('auto', 'fp32', 'bf16')")
    if device.type == "cuda" and not cuda_bf16:
        raise ConfigError(
            f"TrainConfig.precision='bf16': the GPU {torch.cuda.get_device_name(device)!r} has no "
            f'bfloat16 support; use precision = "fp32" (or "auto")'
        )
    return torch.bfloat16


#: the torch.compile backend of ``compile = true`` (tests may swap in a cheaper one)
COMPILE_BACKEND = "inductor"


class _SkipSampler(DistributedSampler):
    """DistributedSampler that skips the first ``skip`` indices of this process's epoch order (exact resume)."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self):
        return max(0, super().__len__() - self.skip)


class Trainer:
    """Train ``cfg.model`` on ``cfg.task``; ``model`` / ``task`` may be passed in (e.g. a custom energy).

    Attributes:
        model: the (unwrapped) model; ``task``: the :class:`Task`; ``history``: one dict per evaluation;
        step / epoch / batch_in_epoch: progress; ``out_dir``: where checkpoints and metrics go.
        runner: what the training step calls (``model``, its DDP wrapper, or their ``torch.compile``);
        amp_dtype: the autocast dtype (None = fp32); ``speed``: throughput and peak memory, one dict per epoch;
        compile_info: how the model was compiled and what its first step cost.
    """

    #: draw the epoch's bar even when stderr is not a terminal (set by :func:`train` from Python)
    bar_always = False

    def __init__(self, cfg: TrainConfig, model: Optional[nn.Module] = None, task: Optional[Task] = None):
        if not isinstance(cfg, TrainConfig):
            raise ConfigError(f"Trainer: cfg is a {type(cfg).__name__}; pass a TrainConfig")
        self.cfg = cfg
        self.dist = distributed.setup(cfg.device)
        try:
            self._build(model, task)
        except BaseException:
            distributed.teardown(self.dist)
            raise

    def _build(self, model, task):
        cfg, info = self.cfg, self.dist
        if cfg.batch_size % info.world:
            raise ConfigError(
                f"TrainConfig.batch_size={cfg.batch_size}: must be divisible by the {info.world} "
                f"data-parallel processes (it is the global batch)"
            )
        seed_everything(cfg.seed)  # same initial weights in every process
        # a Sudoku generation bar would flood a log file with carriage returns: shown on a terminal only
        quiet_data = cfg.progress and not (info.is_main and logs.interactive())
        self.task = (
            task if task is not None else build_task(dataclasses.replace(cfg, progress=False) if quiet_data else cfg)
        )
        self.model = (model if model is not None else build_model(cfg.model, self.task.spec)).to(info.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.amp_dtype = autocast_dtype(cfg.precision, info.device)
        self.eager_runner: nn.Module = self.model
        if info.distributed:
            # single-channel patch convolutions get grads with ambiguous (but equivalent) strides; DDP copies
            # them into its buckets correctly and only warns about speed, so that one warning is silenced
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.eager_runner = DistributedDataParallel(
                self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None
            )
        self.runner: nn.Module = self.eager_runner
        self.compile_info: dict = {}
        if cfg.compile:
            # DDP splits the graph at its gradient buckets, so under DDP graph breaks are expected
            fullgraph = not info.distributed
            self.compile_info = {
                "backend": COMPILE_BACKEND,
                "fullgraph": fullgraph,
                "fallback_reason": None if fullgraph else "data-parallel (DDP splits the graph at gradient buckets)",
            }
            self.runner = self._compiled(fullgraph)
        self.out_dir = Path(cfg.out_dir)
        self.batch = cfg.batch_size // info.world
        n = len(cast(Sized, self.task.train_set))
        if n == 0:
            raise ConfigError("the training set is empty; check limit_train / n_train")
        per_rank = math.ceil(n / info.world)
        self.steps_per_epoch = math.ceil(per_rank / self.batch)
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.warmup_steps = cfg.warmup_steps or int(round(cfg.warmup_epochs * self.steps_per_epoch))
        self.step = self.epoch = self.batch_in_epoch = 0
        self.epoch_loss = [0.0, 0]  # running (sum, count) of this epoch's training loss
        self.history: list[dict] = []
        self.speed: list[dict] = []  # one entry per epoch: throughput, peak memory
        self.tokens_per_sample = self.task.spec.num_tokens
        self.last_checkpoint_step: Optional[int] = None
        self.elapsed = 0.0
        self.board = logs.Board(self.out_dir, enabled=False)  # opened by fit() on the main process

    def _compiled(self, fullgraph: bool) -> nn.Module:
        return cast(nn.Module, torch.compile(self.eager_runner, fullgraph=fullgraph, backend=COMPILE_BACKEND))

    def autocast(self):
        """The autocast context of ``precision`` (a no-op for fp32)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=self.amp_dtype)

    # ---------------------------------------------------------------------------------------------------------
    # state
    # ---------------------------------------------------------------------------------------------------------

    def state(self) -> dict:
        """The JSON part of a checkpoint (RNG states and tensors are added by save_checkpoint)."""
        return {
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "epoch_loss": list(self.epoch_loss),
            "elapsed_s": self.elapsed,
            "scheduler": {
                "kind": "warmup_cosine",
                "step": self.step,
                "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps,
                "lr": self.cfg.lr,
                "min_lr": self.cfg.min_lr,
            },
            "world_size": self.dist.world,
            "config": self._config_dict(),
            "history": self.history,
            "speed": self.speed,
            "parameters": count_parameters(self.model),
            "data": getattr(self.task, "data_info", None),
        }  # e.g. the text corpus: files, sha256

    def _config_dict(self) -> dict:
        """The config as data; an energy with torch callables is recorded as its fingerprint (reload the run with
        ``load_run(path, energy=E)``)."""
        return self.cfg.to_dict(python_energy=True)

    def save(self) -> Optional[Path]:
        """Checkpoint (main process only; every process waits for it)."""
        path = None
        digests = distributed.replica_digests(self.model, self.dist)  # collective: every process takes part
        if self.dist.is_main:
            state = self.state()
            state["replica_digests"] = digests
            path = save_checkpoint(self.out_dir, self.model, self.optimizer, state)
            self.write_metrics()
            self._save_config()
        distributed.barrier(self.dist)
        self.last_checkpoint_step = self.step
        return path

    def _save_config(self) -> None:
        """``config.toml`` of this run (none for a custom energy in cfg.model, which TOML cannot hold)."""
        try:
            self.cfg.save(self.out_dir / "config.toml")
        except ConfigError as err:
            if not getattr(self, "_config_warned", False):
                log.warning("config.toml not written: %s", err)
                self._config_warned = True

    def write_metrics(self) -> Path:
        """``metrics.json``: config, parameter count, the history and the speed log (rank 0)."""
        path = self.out_dir / METRICS_FILE
        atomic_write_text(
            path,
            _json(
                {
                    "config": self._config_dict(),
                    "parameters": count_parameters(self.model),
                    "steps_per_epoch": self.steps_per_epoch,
                    "history": self.history,
                    "speed": self.speed_summary(),
                    "data": getattr(self.task, "data_info", None),
                }
            ),
        )
        return path

    def speed_summary(self) -> dict:
        """How the run was executed and how fast: precision, optimizer, compilation, per-epoch throughput."""
        device = self.dist.device
        return {
            "device": str(device) if device.type != "cuda" else f"{device} ({torch.cuda.get_device_name(device)})",
            "precision": "bf16 autocast, fp32 weights" if self.amp_dtype == torch.bfloat16 else "fp32",
            "optimizer": "AdamW (fused)" if self.optimizer.defaults.get("fused") else "AdamW",
            "compile": dict(self.compile_info) or None,
            "processes": self.dist.world,
            "tokens_per_sample": self.tokens_per_sample,
            "peak_memory": logs.PEAK_MEMORY_KIND.get(device.type, device.type),
            "epochs": self.speed,
        }

    def check_out_dir(self, resume: bool) -> None:
        """Refuse, before anything is written, an ``out_dir`` that is a file, cannot be written, or holds another
        run's files (see :func:`~energyarch.train.checkpoint.check_run_folder`); the main process decides."""
        problem: Optional[ConfigError] = None
        if self.dist.is_main:
            try:
                text = self.cfg.to_toml()
            except ConfigError:  # a custom energy in cfg.model: no config.toml is written
                text = None
            try:
                check_run_folder(self.out_dir, resume, text)
            except ConfigError as err:
                problem = err
        if not distributed.all_true(problem is None, self.dist):
            raise problem or ConfigError(f"out_dir {str(self.out_dir)!r}: refused by the main process (see its error)")

    def resume(self) -> bool:
        """Load ``out_dir``'s checkpoint if there is one (weights, optimizer, progress, RNG); False if none."""
        if not (self.out_dir / STATE_FILE).is_file():
            return False
        state = load_checkpoint(self.out_dir, self.model, self.optimizer)
        progress = _progress(state, self.out_dir / STATE_FILE, self.steps_per_epoch)
        self.step, self.epoch, self.batch_in_epoch, self.epoch_loss, self.history, self.speed, self.elapsed = progress
        self.last_checkpoint_step = self.step
        if state.get("world_size", 1) != self.dist.world:
            log.warning(
                "resuming a %s-process run with %s processes: the data order differs from an uninterrupted run",
                state.get("world_size"),
                self.dist.world,
            )
        set_rng_state(state["rng"])
        return True

    # ---------------------------------------------------------------------------------------------------------
    # data
    # ---------------------------------------------------------------------------------------------------------

    def _train_loader(self, epoch: int, skip_batches: int) -> DataLoader:
        sampler = _SkipSampler(
            self.task.train_set,
            num_replicas=self.dist.world,
            rank=self.dist.rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=False,
        )
        sampler.set_epoch(epoch)
        sampler.skip = skip_batches * self.batch
        batches = BatchSampler(sampler, self.batch, drop_last=False)  # whole batches: one indexing per batch
        # an own generator: the loader's worker base seed then depends on (seed, rank, epoch) only, and creating a
        # loader (also mid-epoch, after a resume) does not draw from the global RNG
        seed = np.random.SeedSequence([self.cfg.seed, self.dist.rank, epoch, 1]).generate_state(1)[0]
        return DataLoader(
            self.task.train_set,
            batch_size=None,
            sampler=batches,
            generator=torch.Generator().manual_seed(int(seed)),
            num_workers=self.cfg.num_workers,
            pin_memory=self.dist.device.type == "cuda",
        )

    def _augment_generator(self) -> torch.Generator:
        """Stateless per-step randomness (seed, rank, step): identical whether or not the run was resumed."""
        seed = np.random.SeedSequence([self.cfg.seed, self.dist.rank, self.step]).generate_state(1)[0]
        return torch.Generator().manual_seed(int(seed))

    # ---------------------------------------------------------------------------------------------------------
    # training
    # ---------------------------------------------------------------------------------------------------------

    def loss_fn(self, batch) -> torch.Tensor:
        """Training loss of one batch (override to customise); runs under :meth:`autocast`.

        A compiled model runs whole batches only: the smaller last batch of an epoch runs eagerly rather than
        paying for a second compilation (the same weights, so the same function up to rounding).
        """
        inputs = self.task.inputs(batch, self.dist.device, train=True, generator=self._augment_generator())
        runner = self.runner if len(inputs) == self.batch else self.eager_runner
        if self.cfg.loss_on == "all":
            logits = forward_all(self.model, inputs, runner=runner)
        else:
            logits = [runner(inputs)]
        return self.task.loss(logits, batch)

    def _forward_loss(self, batch) -> torch.Tensor:
        """:meth:`loss_fn` under autocast; the first compiled step falls back from fullgraph if that fails."""
        first_compiled = self.cfg.compile and "first_step_s" not in self.compile_info
        try:
            with self.autocast():
                return self.loss_fn(batch)
        except Exception as err:  # noqa: BLE001 - any tracing failure, reported below
            if not (first_compiled and self.compile_info.get("fullgraph")):
                raise
            reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
            log.warning("torch.compile(fullgraph=True) failed (%s); compiling with graph breaks instead", reason)
            self.compile_info.update(fullgraph=False, fallback_reason=reason[:500])
            self.runner = self._compiled(fullgraph=False)
            with self.autocast():
                return self.loss_fn(batch)

    def _diverged(self, what: str, value: float) -> None:
        if self.last_checkpoint_step is not None:
            where = f"the last good checkpoint (step {self.last_checkpoint_step}) is kept in {self.out_dir}"
            then = "then resume from it with --resume (the new settings apply from that step)"
        else:  # advice that fits the disk: no checkpoint, so --resume would have nothing to continue
            where = (
                "no checkpoint had been written yet, so there is nothing to resume (set checkpoint_every to "
                "keep earlier ones)"
            )
            then = (
                f"then train again into a new --out (or delete the files of this attempt in {self.out_dir}); "
                f"there is no checkpoint to resume from"
            )
        advice = [f"lower lr (now {self.cfg.lr:g})"]
        advice.append(
            "set grad_clip (now off), e.g. 1.0"
            if not self.cfg.grad_clip
            else "check the energy with ea.verify (a kernel not smooth on the sphere diverges whatever the "
            f"clipping, here grad_clip = {self.cfg.grad_clip:g})"
        )
        raise TrainingDivergedError(
            f"{what} is {value} at step {self.step} (epoch {self.epoch + 1}, batch {self.batch_in_epoch + 1}); "
            f"training stopped without applying this update, {where}. To fix: {'; '.join(advice)}; {then}"
        )

    def train_step(self, batch) -> float:
        self.model.train()
        first_compiled = self.cfg.compile and "first_step_s" not in self.compile_info and len(batch[0]) == self.batch
        start = time.perf_counter()
        loss = self._forward_loss(batch)
        value = float(loss.detach())
        if not distributed.all_true(math.isfinite(value), self.dist):
            self._diverged("the training loss", value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip or float("inf")))
        if not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged("the gradient norm", norm)
        lr = lr_at(self.step, self.cfg, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.step += 1
        if first_compiled:
            if self.dist.device.type == "cuda":
                torch.cuda.synchronize(self.dist.device)
            self.compile_info["first_step_s"] = round(time.perf_counter() - start, 3)
            if self.dist.is_main:
                log.info(
                    "torch.compile (%s, %s): first step %.1f s, compilation included",
                    self.compile_info["backend"],
                    "fullgraph" if self.compile_info["fullgraph"] else "with graph breaks",
                    self.compile_info["first_step_s"],
                )
        self.board.scalars({"loss": value, "lr": lr}, self.step, prefix="train/")
        return value

    def fit(self, resume: bool = False) -> dict:
        """Train until ``epochs`` (or ``max_steps``); returns the last history entry (or progress info)."""
        cfg, info = self.cfg, self.dist
        self.check_out_dir(resume)
        resumed = resume and self.resume()
        if resumed:
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d)",
                self.out_dir,
                self.step,
                self.epoch + 1,
                self.batch_in_epoch,
            )
        elif resume:
            log.info("no checkpoint in %s: starting a new run", self.out_dir)
        if info.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if not resumed:  # a resumed run's config.toml is rewritten with its next checkpoint only, so that
                self._save_config()  # a resume that fails before it leaves every saved file as it was
            log.info(
                "training %s on %s: %s parameters, %d steps per epoch, %d processes, %s, %s%s",
                cfg.model.arch,
                cfg.task,
                f"{count_parameters(self.model):,}",
                self.steps_per_epoch,
                info.world,
                info.device,
                "bf16 autocast" if self.amp_dtype == torch.bfloat16 else "fp32",
                ", torch.compile" if cfg.compile else "",
            )
            self.board = logs.Board(self.out_dir, purge_step=self.step + 1 if self.step else None)
        stopped = False
        try:
            while self.epoch < cfg.epochs and not stopped:
                stopped = self._run_epoch()
            if not stopped and self.last_checkpoint_step != self.step:
                self.save()
        finally:
            self.board.close()
        self.check_replicas()
        return self.history[-1] if self.history else {"epoch": self.epoch, "step": self.step}

    def check_replicas(self) -> list[str]:
        """Digests of every process's weights; data-parallel replicas must be bitwise identical."""
        digests = distributed.replica_digests(self.model, self.dist)
        self.replicas = digests
        if len(set(digests)) != 1:
            raise TrainingDivergedError(
                f"data-parallel replicas hold different weights after step {self.step} "
                f"(digests {digests}); this is a bug, please report it"
            )
        return digests

    def _limit_reached(self) -> bool:
        return bool(self.cfg.max_steps) and self.step >= self.cfg.max_steps

    def _run_epoch(self) -> bool:
        """One epoch from ``batch_in_epoch``; True when stopped early by ``max_steps``."""
        cfg, info = self.cfg, self.dist
        if self._limit_reached():
            return True
        loader = self._train_loader(self.epoch, self.batch_in_epoch)
        bar = logs.Progress(
            total=self.steps_per_epoch,
            initial=self.batch_in_epoch,
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            enabled=cfg.progress and info.is_main,
            always=self.bar_always,
        )
        start, seen, elapsed_before = time.perf_counter(), 0, self.elapsed
        # throughput of this epoch: samples of every process over the wall time of the loop (loading included),
        # without checkpoint writes and without a first compiled step (its cost is reported on its own)
        timed = {"samples": 0, "seconds": 0.0, "steps": 0}
        logs.reset_peak_memory(info.device)
        try:
            tick = time.perf_counter()
            for batch in loader:
                compiling = cfg.compile and "first_step_s" not in self.compile_info
                loss = self.train_step(batch)
                self.batch_in_epoch += 1
                self.epoch_loss[0] += loss
                self.epoch_loss[1] += 1
                seen += len(batch[0]) * info.world
                now = time.perf_counter()
                if not (compiling and "first_step_s" in self.compile_info):
                    timed["samples"] += len(batch[0]) * info.world
                    timed["seconds"] += now - tick
                    timed["steps"] += 1
                bar.update(loss, seen / max(now - start, 1e-9))
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._account(start)
                    start, seen = time.perf_counter(), 0
                    self.save()
                if self._limit_reached():
                    break
                tick = time.perf_counter()
        finally:
            bar.close()
        self._log_speed(timed)
        if self.batch_in_epoch < self.steps_per_epoch:  # stopped by max_steps within the epoch
            self._account(start)
            if self.last_checkpoint_step != self.step:
                self.save()
            log.info(
                "stopped at max_steps=%d (epoch %d, batch %d of %d)",
                cfg.max_steps,
                self.epoch + 1,
                self.batch_in_epoch,
                self.steps_per_epoch,
            )
            return True
        self._account(start)
        epoch_time = self.elapsed - elapsed_before
        train_loss = self.epoch_loss[0] / max(self.epoch_loss[1], 1)
        self.epoch += 1
        self.batch_in_epoch, self.epoch_loss = 0, [0.0, 0]
        entry = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": train_loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "elapsed_s": round(self.elapsed, 3),
            "epoch_samples_per_s": round(len(cast(Sized, self.task.train_set)) / max(epoch_time, 1e-9), 2),
        }
        if (cfg.eval_every and self.epoch % cfg.eval_every == 0) or self.epoch == cfg.epochs:
            entry.update({f"test_{k}": v for k, v in self.evaluate().items()})
        self.history.append(entry)
        if info.is_main:
            log.info(
                "epoch %d/%d  %s",
                self.epoch,
                cfg.epochs,
                "  ".join(f"{k}={v:.4g}" for k, v in entry.items() if isinstance(v, float)),
            )
            self.board.scalars({"epoch_loss": train_loss}, self.step, prefix="train/")
            self.board.scalars({k[5:]: v for k, v in entry.items() if k.startswith("test_")}, self.step, prefix="test/")
            self.board.flush()
        self.save()
        return False

    def _log_speed(self, timed: dict) -> None:
        """Append this epoch's (or epoch part's) throughput and peak memory to :attr:`speed` and TensorBoard."""
        if not timed["steps"]:
            return
        rate = timed["samples"] / max(timed["seconds"], 1e-9)
        peak = logs.peak_memory_mb(self.dist.device)
        entry = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "steps": timed["steps"],
            "samples_per_s": round(rate, 2),
            "tokens_per_s": round(rate * self.tokens_per_sample, 1),
            "step_s": round(timed["seconds"] / timed["steps"], 6),
            "peak_memory_mb": None if peak is None else round(peak, 1),
        }
        first = self.compile_info.get("first_step_s")
        if first is not None and "overhead_s" not in self.compile_info:
            self.compile_info["overhead_s"] = round(first - entry["step_s"], 3)  # first step − a usual step
            entry["compile_first_step_s"] = first
        self.speed.append(entry)
        if self.dist.is_main:
            self.board.scalars(
                {k: v for k, v in entry.items() if k not in ("epoch", "step", "steps")}, self.step, prefix="speed/"
            )

    def _account(self, start: float) -> float:
        spent = time.perf_counter() - start
        self.elapsed += spent
        return spent

    # ---------------------------------------------------------------------------------------------------------
    # evaluation
    # ---------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, iters: Optional[int] = None, dataset=None) -> dict:
        """Metrics of the test split at ``iters`` iterations (default: the training T), summed over processes.

        Runs eagerly (not compiled), in the training precision.
        """
        with self.autocast():
            return evaluate_dataset(
                self.model,
                self.task,
                dataset if dataset is not None else self.task.test_set,
                self.dist,
                self.cfg.eval_batch_size or 2 * self.cfg.batch_size,
                iters=iters,
            )

    def close(self) -> None:
        distributed.teardown(self.dist)


@torch.no_grad()
def evaluate_dataset(
    model: nn.Module, task: Task, dataset, info: distributed.DistInfo, batch_size: int, iters: Optional[int] = None
) -> dict:
    """Task metrics of ``model`` on ``dataset``; each process takes every world-th example, sums are added."""
    was_training = model.training
    model.eval()
    indices = list(range(info.rank, len(dataset), info.world))
    sums: dict[str, float] = {}
    for i in range(0, len(indices), batch_size):
        batch = dataset[indices[i : i + batch_size]]
        logits = model(task.inputs(batch, info.device), iters=iters)
        for k, v in task.sums(logits, batch).items():
            sums[k] = sums.get(k, 0.0) + v
    if not sums:  # this process got no examples
        empty = task.sums(model(task.inputs(dataset[[0]], info.device), iters=iters), dataset[[0]])
        sums = {k: 0.0 for k in empty}
    keys = sorted(sums)
    total = dict(zip(keys, distributed.all_sum([sums[k] for k in keys], info)))
    model.train(was_training)
    return task.finalize(total)


def _json(obj) -> str:
    import json

    return json.dumps(obj, indent=1, allow_nan=True)


#: Largest step / epoch counter accepted from a checkpoint (far beyond any run; a crafted 10**30 is refused).
MAX_COUNTER = 2**53


def _progress(state: dict, where, steps_per_epoch: int) -> tuple:
    """The progress counters of a checkpoint's JSON state, validated: integers in range, a finite loss sum and
    elapsed time, lists for the logs; :class:`CheckpointError` naming the field otherwise."""

    def count(key, value, hi=MAX_COUNTER):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
            raise CheckpointError(
                f"checkpoint {where}: {key} = {str(value)[:40]!r} must be an integer in [0, {hi}]; "
                f"the file was changed or written by another program, train into a new --out"
            )
        return value

    def number(key, value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise CheckpointError(
                f"checkpoint {where}: {key} = {str(value)[:40]!r} must be a finite number >= 0; "
                f"the file was changed or written by another program, train into a new --out"
            )
        return float(value)

    try:
        step, epoch = count("step", state["step"]), count("epoch", state["epoch"])
        batch = count("batch_in_epoch", state["batch_in_epoch"], steps_per_epoch)
        loss = state["epoch_loss"]
        if not isinstance(loss, list) or len(loss) != 2:
            raise CheckpointError(f"checkpoint {where}: epoch_loss must be [sum, count]")
        epoch_loss = [number("epoch_loss[0]", loss[0]), count("epoch_loss[1]", loss[1])]
        history, speed = state.get("history", []), state.get("speed", [])
        if not isinstance(history, list) or not isinstance(speed, list):
            raise CheckpointError(f"checkpoint {where}: history and speed must be lists")
        elapsed = number("elapsed_s", state.get("elapsed_s", 0.0))
    except KeyError as err:
        raise CheckpointError(
            f"checkpoint {where}: {err} is missing; the file was changed or written by another "
            f"program, train into a new --out"
        ) from None
    return step, epoch, batch, epoch_loss, list(history), list(speed), elapsed


def train(
    cfg: TrainConfig,
    resume: bool = False,
    model: Optional[nn.Module] = None,
    task: Optional[Task] = None,
    report: bool = True,
) -> dict:
    """Train, then (main process) sweep test-time iterations and draw the plots; returns a summary dict.

    The summary has ``final`` (last history entry), ``history``, ``out_dir``, ``metric`` (the task's primary
    metric), ``parameters``, ``finished``, and with ``report`` the sweep and
    the plot paths (see :func:`energyarch.train.evaluate.report`). From Python (nothing configured the
    ``energyarch.train`` logger) it shows a tqdm bar and the per-epoch lines, as the command line does;
    ``progress=False`` in the config switches both off.
    """
    with logs.python_messages(cfg.progress) as shown:
        return _train(cfg, resume, model, task, report, shown)


def _train(
    cfg: TrainConfig, resume: bool, model: Optional[nn.Module], task: Optional[Task], report: bool, bar_always: bool
) -> dict:
    trainer = Trainer(cfg, model=model, task=task)
    trainer.bar_always = bar_always
    try:
        final = trainer.fit(resume=resume)
        summary = {
            "final": final,
            "history": trainer.history,
            "out_dir": str(trainer.out_dir),
            "metric": trainer.task.primary,
            "parameters": count_parameters(trainer.model),
            "finished": trainer.epoch >= cfg.epochs,
        }
        if report and trainer.dist.is_main and summary["finished"]:
            from .evaluate import report as make_report

            summary.update(make_report(trainer.model, trainer.task, cfg, trainer.out_dir, history=trainer.history))
        distributed.barrier(trainer.dist)
        return summary
    finally:
        trainer.close()


__all__ = [
    "ModelConfig",
    "Trainer",
    "TrainingDivergedError",
    "evaluate_dataset",
    "load_run",
    "lr_at",
    "make_optimizer",
    "train",
]
