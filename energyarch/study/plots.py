"""Plots of a study: the metric against parameters and against time per step (mean ± 95 % interval per design),
and each design's spread over seeds (one dot per seed). Agg canvas, no pyplot state."""

from __future__ import annotations

import math
from pathlib import Path

from ..train.plots import new_figure, save_figure
from .stats import PERCENT


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, f"{metric} % at T") if metric in PERCENT else (1.0, f"{metric} at T")


def plot_study(board: dict, rows: list[dict], folder) -> dict:
    """Write ``metric_vs_parameters.png``, ``metric_vs_time.png`` and ``spread.png``; returns name → path."""
    table = [e for e in board["table"] if e["n"]]
    if not table:
        return {}
    scale, ylabel = _scale(board["metric"])
    out = Path(folder)
    made = {}
    for name, key, xlabel, xscale in (
        ("metric_vs_parameters", "parameters", "parameters", 1.0),
        ("metric_vs_time", "step_s", "ms per training step", 1000.0),
    ):
        pts = [e for e in table if e.get(key) is not None]
        if not pts:
            continue
        fig, (ax,) = new_figure(width=6.0, height=4.2)
        for e in pts:
            err = 0.0 if math.isnan(e["half"]) else e["half"] * scale
            ax.errorbar([e[key] * xscale], [e["mean"] * scale], yerr=[err], fmt="o", capsize=3, label=e["label"])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{board['study']}: mean ± 95 % interval over seeds", fontsize=9)
        if len(pts) <= 12:
            ax.legend(fontsize=6, loc="best")
        else:  # too many for a legend: each point names its design
            for e in pts:
                ax.annotate(
                    e["label"],
                    (e[key] * xscale, e["mean"] * scale),
                    fontsize=5,
                    alpha=0.8,
                    xytext=(3, 2),
                    textcoords="offset points",
                )
        ax.grid(alpha=0.3)
        made[name] = save_figure(fig, out / f"{name}.png")
    fig, (ax,) = new_figure(width=max(5.0, 0.55 * len(table) + 2), height=4.4)
    labels = [e["label"] for e in table]
    for i, e in enumerate(table):
        ys = [v * scale for v in e["values"].values() if v is not None]
        ax.scatter([i] * len(ys), ys, s=14, alpha=0.7, color="C0")
        if not math.isnan(e["half"]):
            ax.errorbar([i + 0.15], [e["mean"] * scale], yerr=[e["half"] * scale], fmt="_", color="C3", capsize=3)
        else:
            ax.plot([i + 0.15], [e["mean"] * scale], "_", color="C3")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title("per seed (dots) and mean ± 95 % interval (red)", fontsize=9)
    ax.grid(alpha=0.3, axis="y")
    made["spread"] = save_figure(fig, out / "spread.png")
    return made


__all__ = ["plot_study"]
