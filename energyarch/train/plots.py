"""PNG plots of runs: extrapolation curve (Fig. 3b), energies per term (Fig. 5) with the energy-rise diagnostic,
adaptive depth, effective rank and average angle per head (Fig. 6), training curves. Drawn on :class:`matplotlib.figure.Figure` with the Agg canvas, so no
display and no pyplot state are involved. Every function returns the path it wrote.

>>> import tempfile, os
>>> p = plot_sweep([{"iters": 4, "top1": 0.5}, {"iters": 8, "top1": 0.7}], "top1", 4,
...                os.path.join(tempfile.mkdtemp(), "sweep.png"))
>>> p.endswith("sweep.png")
True
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, list]:
    """A figure of ``ncols`` axes side by side on the Agg canvas (no display needed) and the list of its axes."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def save_figure(fig: Figure, path: str | os.PathLike) -> str:
    """Write ``fig`` as a PNG to ``path`` (folders made as needed); returns the path as a string."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=120)
    return str(p)


#: metrics plotted as they are (not as percentages), with their axis label
RAW_METRICS = {"bpb": "bits per byte", "loss": "cross-entropy"}


def _scale(metric: str) -> tuple[float, str]:
    """(factor, axis label) of a metric: accuracies in percent, bits per byte and losses as they are."""
    return (1.0, RAW_METRICS[metric]) if metric in RAW_METRICS else (100.0, f"{metric} (%)")


def _mark_train(ax, train_iters: Optional[int]) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if train_iters:
        ax.axvline(train_iters, color="grey", linestyle="--", linewidth=1, label=f"training T = {train_iters}")


def plot_sweep(
    sweep: Sequence[Mapping],
    metric: str,
    train_iters: Optional[int],
    path: str | os.PathLike,
    extra: Sequence[str] = (),
    title: str = "Test-time iterations (Fig. 3b)",
) -> str:
    """Metric(s) against the number of test-time iterations; a dashed line marks the training T."""
    fig, (ax,) = new_figure()
    xs = [row["iters"] for row in sweep]
    for name in (metric, *extra):
        ax.plot(xs, [_scale(name)[0] * row[name] for row in sweep], marker="o", label=name)
    _mark_train(ax, train_iters)
    ax.set(
        xlabel="iterations at test time",
        ylabel=_scale(metric)[1] if metric in RAW_METRICS else "accuracy (%)",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_comparison(
    curves: Mapping[str, Sequence[Mapping]],
    metric: str,
    train_iters: Optional[int],
    path: str | os.PathLike,
    title: str = "Extrapolation",
) -> str:
    """Several models' sweeps on one axis (label → list of {'iters', metric})."""
    fig, (ax,) = new_figure()
    for label, sweep in curves.items():
        ax.plot([r["iters"] for r in sweep], [_scale(metric)[0] * r[metric] for r in sweep], marker="o", label=label)
    _mark_train(ax, train_iters)
    ax.set(xlabel="iterations at test time", ylabel=_scale(metric)[1], title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_energies(
    trace: Mapping, path: str | os.PathLike, train_iters: Optional[int] = None, rise: Optional[Mapping] = None
) -> Optional[str]:
    """Energy of each term per iteration (Fig. 5), one panel per term; None when the trace has no energies.

    With ``rise`` (from :func:`energyarch.train.evaluate.energy_rise`) a last panel draws the fraction of samples
    whose total energy rises at each iteration, and the title gives the overall fraction and the largest rise, and
    with ``rise['term_fraction']`` (:func:`energyarch.train.evaluate.term_rise`) the per-term fraction of sub-steps
    that raised their own term's energy."""
    energies = trace.get("energies") or {}
    if not energies:
        return None
    fig, axes = new_figure(len(energies) + (rise is not None), width=4.2)
    for ax, (name, values) in zip(axes, energies.items()):
        ax.plot(range(1, len(values) + 1), values, marker=".", color="C0")
        _mark_train(ax, train_iters)
        ax.set(xlabel="iteration", ylabel=f"E_{name}", title=f"energy: {name}")
        ax.grid(alpha=0.3)
    if rise is not None:
        ax = axes[-1]
        per = rise.get("per_iteration") or []
        ax.bar(range(1, len(per) + 1), [100 * v for v in per], color="C3")
        _mark_train(ax, train_iters)
        ax.set(
            xlabel="iteration", ylabel="samples whose total energy rises (%)", ylim=(0, 100), title="total energy rises"
        )
        ax.grid(alpha=0.3)
        terms = rise.get("term_fraction")
        own = (
            (
                "; own term's energy rises in "
                + ", ".join(f"{n}: {100 * v:.1f}%" for n, v in terms.items())
                + " of sub-steps"
            )
            if terms
            else ""
        )
        fig.suptitle(
            f"total energy rises in {100 * rise['fraction']:.1f}% of (sample, iteration) pairs; "
            f"largest rise {rise['max']:.3g} ({100 * rise['max_relative']:.2g}% of |E|){own}",
            fontsize="medium",
        )
    return save_figure(fig, path)


def plot_adaptive(
    rows: Sequence[Mapping],
    sweep: Sequence[Mapping],
    metric: str,
    path: str | os.PathLike,
    title: str = "Adaptive depth",
) -> str:
    """Metric against the mean number of iterations per sample: adaptive depth (one point per tolerance, labelled)
    and fixed depth (the iteration sweep) on the same axes."""
    fig, (ax,) = new_figure()
    factor, label = _scale(metric)
    ax.plot(
        [r["iters"] for r in sweep], [factor * r[metric] for r in sweep], marker="o", color="C0", label="fixed depth"
    )
    xs, ys = [r["mean_iters"] for r in rows], [factor * r[metric] for r in rows]
    ax.plot(xs, ys, marker="s", linestyle="none", color="C1", label="adaptive depth (tol)")
    for r, x, y in zip(rows, xs, ys):
        ax.annotate(f"{r['tol']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
    ax.set(xlabel="mean iterations per sample", ylabel=label, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_rank_angle(
    trace: Mapping, path: str | os.PathLike, train_iters: Optional[int] = None, family: Optional[str] = None
) -> Optional[str]:
    """Effective rank (Eq. 17) and average angle (Eq. 18) per head against the iteration (Fig. 6)."""
    ranks, angles = trace.get("effective_rank") or {}, trace.get("angle") or {}
    if not ranks:
        return None
    family = family or next(iter(ranks))
    fig, (ax_r, ax_a) = new_figure(2, width=4.6)
    for ax, values, label in ((ax_r, ranks[family], "effective rank"), (ax_a, angles[family], "average angle (deg)")):
        steps = range(1, len(values) + 1)
        heads = len(values[0]) if values else 0
        for h in range(heads):
            ax.plot(steps, [row[h] for row in values], linewidth=1, label=f"head {h}")
        _mark_train(ax, train_iters)
        ax.set(xlabel="iteration", ylabel=label, title=f"{label} per head ({family})")
        ax.grid(alpha=0.3)
    if heads <= 12:
        ax_a.legend(fontsize="x-small", ncols=2)
    return save_figure(fig, path)


def plot_history(history: Sequence[Mapping], metric: str, path: str | os.PathLike) -> Optional[str]:
    """Training loss, test loss and test metric per epoch; None without history."""
    if not history:
        return None
    fig, (ax_l, ax_m) = new_figure(2, width=4.6)
    epochs = [h["epoch"] for h in history]
    ax_l.plot(epochs, [h["train_loss"] for h in history], marker=".", label="train")
    tested = [h for h in history if "test_loss" in h]
    if tested:
        ax_l.plot([h["epoch"] for h in tested], [h["test_loss"] for h in tested], marker=".", label="test")
        ax_m.plot(
            [h["epoch"] for h in tested],
            [_scale(metric)[0] * h[f"test_{metric}"] for h in tested],
            marker="o",
            color="C2",
        )
    ax_l.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_m.set(xlabel="epoch", ylabel=f"test {_scale(metric)[1]}", title=f"test {metric}")
    for ax in (ax_l, ax_m):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_l.legend()
    return save_figure(fig, path)
