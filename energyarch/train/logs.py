"""What a run tells the person watching it: progress, TensorBoard event files, throughput and peak memory.

- :class:`Progress`: on a terminal a tqdm bar; when the output is not a terminal (CI, ``nohup``, a pipe into a
  file) one plain log line every :data:`LOG_INTERVAL_S` seconds instead of hundreds of carriage-return redraws.
- :class:`Board`: TensorBoard scalars in the run folder (``tensorboard --logdir runs``); without the optional
  ``tensorboard`` package a one-line notice and nothing else.
- :func:`print_summary`: the lines a finished run or an evaluation prints on the terminal.
- :func:`peak_memory_mb`: CUDA ``max_memory_allocated`` on a GPU, the process's peak RSS on a CPU.

>>> import io
>>> stream = io.StringIO()                      # not a terminal: no bar, no carriage returns
>>> p = Progress(total=3, desc="epoch 1/1", stream=stream)
>>> for _ in range(3):
...     p.update(loss=0.5, samples_per_s=10.0)
>>> p.close(); "\\r" in stream.getvalue()
False
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from typing import IO, Mapping, Optional

import torch

log = logging.getLogger("energyarch.train")

#: seconds between two plain progress lines when the output is not a terminal
LOG_INTERVAL_S = 10.0


def interactive(stream: Optional[IO] = None) -> bool:
    """True when ``stream`` (default: ``sys.stderr``, where tqdm draws) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress of one epoch: a tqdm bar on a terminal, else a log line every ``interval`` seconds.

    Args:
        total, initial: steps of the epoch and steps already done (a resumed epoch); ``desc``: the bar's label.
        enabled: False shows nothing (``progress = false``, or not the main process).
        stream: where a bar would be drawn (default ``sys.stderr``); ``interval``: seconds between plain lines.
        always: draw the bar even when ``stream`` is not a terminal (a notebook's captured stderr).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        enabled: bool = True,
        stream: Optional[IO] = None,
        interval: Optional[float] = None,
        always: bool = False,
    ):
        self.total, self.done, self.desc = total, initial, desc
        self.enabled = enabled
        self.interval = LOG_INTERVAL_S if interval is None else interval
        self.last_line = time.perf_counter()
        self.bar = None
        stream = sys.stderr if stream is None else stream
        if enabled and (always or interactive(stream)):  # always: train() from Python (a notebook)
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True, file=stream)

    def update(self, loss: float, samples_per_s: float) -> None:
        """One step done, with its training loss and the epoch's running throughput."""
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{samples_per_s:.1f}")
            return
        now = time.perf_counter()
        if self.enabled and now - self.last_line >= self.interval and self.done < self.total:
            self.last_line = now
            log.info(
                "%s  step %d/%d  loss=%.4f  samples_per_s=%.1f", self.desc, self.done, self.total, loss, samples_per_s
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def python_messages(enabled: bool):
    """While training from Python with nobody listening to ``energyarch.train`` (no handler: the command line
    installs its own), show its INFO messages (per-epoch lines, the summary) on stdout, through ``tqdm.write`` so
    that the bar stays intact; yields whether it did. Removed again on exit."""
    if not enabled or log.handlers:
        yield False
        return
    from tqdm import tqdm

    class _Write(logging.Handler):
        def emit(self, record):
            try:
                tqdm.write(self.format(record), file=sys.stdout)
            except Exception:  # pragma: no cover - logging must not raise
                self.handleError(record)

    handler, level, propagate = _Write(), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield True
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


class Board:
    """TensorBoard scalars written into ``folder``; a no-op when disabled or when ``tensorboard`` is missing.

    ``purge_step``: on resume, events at or after this step left by the interrupted run are hidden by
    TensorBoard, so that curves do not double back.
    """

    _notified = False  # the missing-package notice is logged once per process

    def __init__(self, folder: str | os.PathLike, enabled: bool = True, purge_step: Optional[int] = None):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if not Board._notified:
                Board._notified = True
                log.info(
                    "TensorBoard logging is off: the 'tensorboard' package is not installed "
                    "(pip install 'energyarch[tensorboard]'); metrics.json is written as usual"
                )
            return
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    @property
    def active(self) -> bool:
        return self.writer is not None

    def scalars(self, values: Mapping[str, object], step: int, prefix: str = "") -> None:
        """``add_scalar(prefix + name, value, step)`` for each finite number in ``values`` (others skipped)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.writer.add_scalar(f"{prefix}{name}", float(value), step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def log_report(folder: str | os.PathLike, sweep: list, trace: Mapping, metric: str) -> None:
    """The test-time iteration sweep (x = iterations) and, per term, the energy, effective rank and angle along
    the iterations (x = iteration index over all layers) as TensorBoard scalars in ``folder``."""
    board = Board(folder)
    if not board.active:
        return
    for row in sweep:
        board.scalars({k: v for k, v in row.items() if k != "iters"}, int(row["iters"]), prefix="sweep/")
    for kind in ("energies", "effective_rank", "angle"):
        for term, values in (trace or {}).get(kind, {}).items():
            for i, value in enumerate(values):
                value = sum(value) / len(value) if isinstance(value, list) else value  # mean over heads
                board.scalars({term: value}, i, prefix=f"{'energy' if kind == 'energies' else kind}/")
    board.close()
    log.debug("TensorBoard: sweep of %s and diagnostics written to %s", metric, folder)


def format_metric(name: str, value: float) -> str:
    """A metric for the terminal: bits per byte as a number, accuracies in percent.

    >>> format_metric("top1", 0.9583), format_metric("bpb", 2.5)
    ('95.83%', '2.5000')
    """
    return f"{value:.4f}" if name == "bpb" else f"{100 * value:.2f}%"


def print_summary(summary: Mapping, metric: str) -> None:
    """Print the test ``metric`` of a run's ``final`` entry, its iteration ``sweep``, ``plots`` and ``out_dir``
    (the summary of :func:`energyarch.train.train`, or the same keys from an evaluation)."""
    final = summary.get("final", {})
    if f"test_{metric}" in final:
        print(
            f"test {metric}: {format_metric(metric, final[f'test_{metric}'])}  (epoch {final['epoch']}, step "
            f"{final['step']}, {summary.get('parameters', 0):,} parameters)"
        )
    for row in summary.get("sweep", []):
        values = "  ".join(f"{k}={format_metric(k, v)}" for k, v in row.items() if k not in ("iters", "loss"))
        print(f"  iters={row['iters']:>3}  {values}  loss={row['loss']:.4f}")
    for name, path in summary.get("plots", {}).items():
        print(f"plot {name}: {path}")
    print(f"run folder: {summary.get('out_dir')}")


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """Peak memory in MiB: CUDA ``max_memory_allocated`` (since the last reset) on a GPU; on a CPU the process's
    peak resident set size since it started (``getrusage``), or None where that is not available."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak-memory window (the CPU peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


#: what :func:`peak_memory_mb` measures, by device type
PEAK_MEMORY_KIND = {
    "cuda": "torch.cuda.max_memory_allocated per epoch",
    "cpu": "process peak RSS since start (getrusage ru_maxrss)",
}

__all__ = [
    "Board",
    "LOG_INTERVAL_S",
    "PEAK_MEMORY_KIND",
    "Progress",
    "format_metric",
    "interactive",
    "log_report",
    "peak_memory_mb",
    "print_summary",
    "reset_peak_memory",
]
