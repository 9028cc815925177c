"""Multi-process data parallelism through ``torchrun``: the same command runs on 1 or N processes.

``torchrun --nproc_per_node=2 -m energyarch train --config FILE.toml`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` then joins the process group (gloo on CPU, nccl on GPU) and picks this process's device.
Without those variables everything runs in one process and no process group is created.

>>> info = setup("cpu")
>>> info.world, info.rank, info.is_main
(1, 0, True)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes, its ``device``."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool = False  # this process created the process group (and destroys it in teardown)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' → cuda when available; 'cuda' without a GPU is a ConfigError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                'TrainConfig.device=\'cuda\': no CUDA device is available here; use device = "cpu" or "auto"'
            )
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group if ``WORLD_SIZE > 1`` (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
            owns = True
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(values: Sequence[float], info: DistInfo) -> list[float]:
    """Sum a list of floats over processes (identity in one process)."""
    if not info.distributed:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` holds in every process."""
    if not info.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def parameter_digest(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes (names and values, in order): equal digests = bitwise-equal weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def replica_digests(model: torch.nn.Module, info: DistInfo) -> list[str]:
    """:func:`parameter_digest` of every process (all-gathered as int64 words; no pickling)."""
    digest = parameter_digest(model)
    if not info.distributed:
        return [digest]
    words = torch.tensor(
        [int(digest[i : i + 8], 16) for i in range(0, 64, 8)], dtype=torch.int64, device=info.device
    )  # 8 words of 32 bits
    gathered = [torch.empty_like(words) for _ in range(info.world)]
    dist.all_gather(gathered, words)
    return ["".join(f"{int(w):08x}" for w in g.tolist()) for g in gathered]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()
