"""The CPU thread count of ``energyarch train`` and ``demo``: the physical cores this process may use, capped.

torch's own default is one thread per logical CPU of the machine, whatever the affinity mask, other processes
or hyper-threads; on a shared 2-core machine that oversubscribes (two processes of 2 threads each fight over
2 cores, and each thread waits at every parallel region's barrier). The default here:

- ``OMP_NUM_THREADS`` when it is set (the user's choice for every OpenMP program);
- else the *physical* cores among the CPUs in this process's affinity mask (``os.sched_getaffinity``; siblings
  of one core, read from ``/sys/devices/system/cpu/cpu*/topology``, count once), divided among the processes of
  a ``torchrun`` job on this node (``LOCAL_WORLD_SIZE``), at least 1 and at most :data:`MAX_THREADS`.

``--threads N`` overrides it. Nothing here looks at the load: a machine that is busy with other work gets the
same count (give ``--threads 1`` there).

>>> n = default_threads()
>>> 1 <= n <= MAX_THREADS
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

#: upper bound of the default (small models gain little from more threads; ``--threads`` may exceed it)
MAX_THREADS = 16


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: Optional[list[int]] = None, sys_cpu: Path = Path("/sys/devices/system/cpu")) -> int:
    """Physical cores among ``cpus`` (default: this process's affinity mask); logical CPUs where the topology
    cannot be read."""
    cpus = _allowed_cpus() if cpus is None else cpus
    cores = set()
    for cpu in cpus:
        topo = sys_cpu / f"cpu{cpu}" / "topology"
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            cores.add(f"cpu{cpu}")  # unknown topology: count the logical CPU
    return max(1, len(cores))


def default_threads() -> int:
    """The default thread count (see the module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    share = max(1, int(local)) if local.isdigit() else 1
    return max(1, min(MAX_THREADS, physical_cores() // share))


def set_threads(n: Optional[int] = None, *, announce: bool = True) -> int:
    """Set torch's intra-op thread count to ``n`` (default :func:`default_threads`), print it, return it."""
    import torch

    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ConfigError(f"--threads {n!r}: give a positive number of CPU threads, e.g. --threads 2")
    how = (
        "--threads"
        if n is not None
        else (
            "OMP_NUM_THREADS"
            if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit()
            else f"physical cores of the {len(_allowed_cpus())} CPUs this process may use"
        )
    )
    n = default_threads() if n is None else n
    if torch.get_num_threads() != n:  # re-creating an OpenMP pool that is already this size breaks later forks
        torch.set_num_threads(n)
    if announce:
        print(f"threads: {n} ({how}; --threads N to change)", flush=True)
    return n
