"""Evaluation after training: test-time iteration sweep (Fig. 3b), diagnostics (Figs. 5-6), plots.

With one layer, the state after t iterations does not depend on how many follow, so a single pass at the
largest T gives the metrics of every smaller T (states captured by forward hooks; checked in the tests against
separate passes). With several layers each T needs its own pass.

>>> default_sweep(8)
[2, 4, 6, 8, 10, 12, 14, 16]
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, cast

import torch
from torch import nn

from ..errors import ConfigError
from ..models import HyperSET, Model
from . import logs, plots
from .checkpoint import load_run
from .config import TrainConfig, atomic_write_text
from .iterates import capture_states
from .tasks import Task

log = logging.getLogger("energyarch.train")

EVAL_FILE = "eval.json"


def default_sweep(train_iters: int) -> list[int]:
    """T/4, T/2, ..., 2T (Fig. 3b goes to twice the training iterations)."""
    return sorted({max(1, round(train_iters * k / 4)) for k in range(1, 9)})


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def sweep_iterations(model: Model, task: Task, dataset, iters: Sequence[int], batch_size: int = 256) -> list[dict]:
    """Metrics at each test-time iteration count in ``iters``: a list of ``{'iters': k, **metrics}``."""
    iters = sorted({int(k) for k in iters})
    if not iters or iters[0] < 1:
        raise ConfigError(f"sweep_iterations: iters={list(iters)!r}: give iteration counts >= 1, e.g. [8, 16, 32]")
    device, was_training = _device(model), model.training
    model.eval()
    one_pass = getattr(getattr(model, "cfg", None), "layers", None) == 1
    sums: dict[int, dict[str, float]] = {k: {} for k in iters}
    for start in range(0, len(dataset), batch_size):
        batch = dataset[list(range(start, min(start + batch_size, len(dataset))))]
        inputs = task.inputs(batch, device)
        if one_pass:
            with capture_states(model) as states:
                model(inputs, iters=iters[-1])
            per_k = {k: model.readout(states[k - 1]) for k in iters}
        else:
            per_k = {k: model(inputs, iters=k) for k in iters}
        for k, logits in per_k.items():
            for name, v in task.sums(logits, batch).items():
                sums[k][name] = sums[k].get(name, 0.0) + v
    model.train(was_training)
    return [{"iters": k, **task.finalize(sums[k])} for k in iters]


@torch.no_grad()
def diagnostics(model: nn.Module, task: Task, dataset, iters: int, samples: int = 256) -> dict:
    """Per-iteration energies per term and per-head effective rank / angle on the first ``samples`` examples."""
    n = min(samples, len(dataset))
    if n == 0:
        return {}
    batch = dataset[list(range(n))]
    was_training = model.training
    model.eval()
    _, trace = model(task.inputs(batch, _device(model)), iters=iters, record=True)
    model.train(was_training)
    return trace.to_dict()


def _energy_layers(model: nn.Module):
    """The Hyper-SET layers of a model (they have a compiled energy), or None for other backbones."""
    layers = getattr(getattr(model, "backbone", None), "layers", None)
    if layers is None or not all(hasattr(layer, "step") and hasattr(layer.step, "energy") for layer in layers):
        return None
    return list(layers)


def _first_examples(model: nn.Module, task: Task, dataset, samples: int) -> Optional[tuple[list, torch.Tensor, bool]]:
    """``(layers, inputs, was_training)``: the energy layers and the model inputs of the first ``samples`` examples,
    with ``model`` switched to eval mode (``was_training`` restores it); None without energy layers or examples."""
    layers = _energy_layers(model)
    n = min(samples, len(dataset))
    if layers is None or n == 0:
        return None
    was_training = model.training
    model.eval()
    return layers, task.inputs(dataset[list(range(n))], _device(model)), was_training


#: a rise counts when E_after − E_before > RISE_RTOL · |E_before| (float32 rounding of the energy)
RISE_RTOL = 1e-6


@torch.no_grad()
def energy_rise(model: Model, task: Task, dataset, iters: int, samples: int = 256) -> Optional[dict]:
    """Does each iteration descend? The total energy of every (sample, iteration) pair, before and after the
    iteration's step with the iteration's weights, on the first ``samples`` examples (eval mode).

    Returns ``{'fraction', 'max', 'max_relative', 'per_iteration', 'pairs', 'rtol'}``: the fraction of pairs whose
    energy rises (by more than ``RISE_RTOL`` relative), the largest rise (absolute and relative to |E_before|),
    the fraction per iteration (all layers in order), and the number of pairs; None for backbones without energy.
    """
    first = _first_examples(model, task, dataset, samples)
    if first is None:
        return None
    layers, inputs, was_training = first
    X = model.embed(inputs)  # (B, N, d), the first layer's input
    n = X.shape[0]
    with capture_states(model) as states:
        model(inputs, iters=iters)
    model.train(was_training)
    rises, per_iter, largest, largest_rel, i = 0, [], float("-inf"), float("-inf"), 0
    for layer in layers:
        for t in range(iters):
            W = layer.weights(t)
            before = layer.step.energy(X, W, layer.gains).float()  # (B,)
            X = states[i]
            after = layer.step.energy(X, W, layer.gains).float()
            diff = after - before
            rose = diff > RISE_RTOL * before.abs()
            rises += int(rose.sum())
            per_iter.append(float(rose.float().mean()))
            largest = max(largest, float(diff.max()))
            largest_rel = max(largest_rel, float((diff / before.abs().clamp_min(1e-30)).max()))
            i += 1
    pairs = n * len(per_iter)
    return {
        "fraction": rises / pairs,
        "max": largest,
        "max_relative": largest_rel,
        "per_iteration": per_iter,
        "pairs": pairs,
        "rtol": RISE_RTOL,
    }


@torch.no_grad()
def term_rise(model: Model, task: Task, dataset, iters: int, samples: int = 256) -> Optional[dict]:
    """Does each splitting sub-step descend its own term's energy? (:func:`energyarch.descent.sub_step_rises`:
    the energy each sub-step descends — the term's own, per token for a causal term, the total for a joint stage —
    before and after it, on the first ``samples`` examples, eval mode.)

    Returns ``{'per_term': {term: fraction}, 'max', 'worst', 'rtol'}``: per term the fraction of (sample,
    iteration) sub-steps (causal: (sample, token, iteration)) whose energy rose by more than ``RISE_RTOL · max(1,
    |E|)``, the maximum over terms, and the first few rises ``[layer, iteration, term, rise]``; None for backbones
    without energy.
    """
    from ..descent import sub_step_rises

    first = _first_examples(model, task, dataset, samples)
    if first is None:
        return None
    layers, inputs, was_training = first
    X = model.embed(inputs)
    per_term, worst = {}, []
    for index, layer in enumerate(layers):
        rises, counts, rose = sub_step_rises(layer, X, iters, RISE_RTOL)
        for name in rises:
            per_term[name if len(layers) == 1 else f"layer{index}.{name}"] = rises[name] / max(1, counts[name])
        worst += [[index, t, name, r] for t, name, r in rose[:5]]
        X = layer(X, iters)
    model.train(was_training)
    return {"per_term": per_term, "max": max(per_term.values(), default=0.0), "worst": worst[:10], "rtol": RISE_RTOL}


@torch.no_grad()
def adaptive_depth(
    model: Model, task: Task, dataset, tols: Sequence[float], max_iters: int, batch_size: int = 256
) -> list[dict]:
    """Adaptive depth at test time (App. H.4): each sample iterates until the relative change of its total energy
    falls below ``tol``, at most ``max_iters`` times per layer. One row per tolerance:
    ``{'tol', 'mean_iters', 'max_iters', **metrics}`` (``mean_iters``: iterations per sample, summed over layers)."""
    layers = _energy_layers(model)
    if layers is None or not hasattr(model.backbone, "adaptive"):
        raise ConfigError(
            f"--adaptive-tol: adaptive depth stops on the energy, which only arch='hyperset' has "
            f"(this model: {type(getattr(model, 'backbone', model)).__name__}); drop --adaptive-tol"
        )
    tols = [float(v) for v in tols]
    if not tols or min(tols) < 0:
        raise ConfigError(f"adaptive_depth: tols={list(tols)!r}: give tolerances >= 0, e.g. [1e-2, 1e-3]")
    if not isinstance(max_iters, int) or max_iters < 1:
        raise ConfigError(f"adaptive_depth: max_iters={max_iters!r} must be an integer >= 1")
    device, was_training = _device(model), model.training
    model.eval()
    rows = []
    for tol in tols:
        sums: dict[str, float] = {}
        used = 0
        for start in range(0, len(dataset), batch_size):
            batch = dataset[list(range(start, min(start + batch_size, len(dataset))))]
            backbone = cast(HyperSET, model.backbone)  # adaptive depth: hyperset models only
            X, n_iters = backbone.adaptive(model.embed(task.inputs(batch, device)), tol, max_iters)
            used += int(n_iters.sum())
            for name, v in task.sums(model.readout(X), batch).items():
                sums[name] = sums.get(name, 0.0) + v
        rows.append(
            {
                "tol": tol,
                "mean_iters": used / max(1, len(dataset)),
                "max_iters": max_iters * len(layers),
                **task.finalize(sums),
            }
        )
    model.train(was_training)
    return rows


def report(
    model: Model,
    task: Task,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    history: Optional[list] = None,
    iters: Optional[Sequence[int]] = None,
    dataset=None,
    adaptive_tols: Optional[Sequence[float]] = None,
    adaptive_max: Optional[int] = None,
) -> dict:
    """Sweep, diagnostics and plots into ``out_dir`` (``eval.json``, ``plots/*.png`` and TensorBoard scalars
    ``sweep/*`` over the iteration count, ``energy/<term>``, ``effective_rank/<term>``, ``angle/<term>`` over the
    iterations). Runs in fp32, whatever the training precision.

    The JSON also holds ``energy_rise_fraction`` and ``energy_rise_max`` (:func:`energy_rise`, the total energy per
    iteration), ``term_rise_fraction`` (:func:`term_rise`: per term, the fraction of sub-steps that raised the
    term's own energy, and ``max`` over the terms; Hyper-SET only; None otherwise) and, with ``adaptive_tols``, the rows of :func:`adaptive_depth` (``adaptive``; at most
    ``adaptive_max`` iterations per layer, default the largest swept count) with a plot of the metric against the
    mean iterations used.

    Returns ``{'sweep': [...], 'plots': {name: path}, 'eval_file': path, 'energy_rise': ..., 'adaptive': ...}``.
    """
    out = Path(out_dir)
    T = getattr(getattr(model, "cfg", None), "iters", cfg.model.iters)
    iters = sorted(set(iters or cfg.eval_iters or default_sweep(T)))
    data = dataset if dataset is not None else task.test_set
    bs = cfg.eval_batch_size or 2 * cfg.batch_size
    sweep = sweep_iterations(model, task, data, iters, batch_size=bs)
    trace = diagnostics(model, task, data, max(iters), cfg.diagnostics_samples) if cfg.diagnostics_samples else {}
    rise = energy_rise(model, task, data, max(iters), cfg.diagnostics_samples) if cfg.diagnostics_samples else None
    terms = term_rise(model, task, data, max(iters), cfg.diagnostics_samples) if cfg.diagnostics_samples else None
    if rise is not None and terms is not None:
        rise = {**rise, "term_fraction": terms["per_term"]}
    adaptive = (
        adaptive_depth(model, task, data, adaptive_tols, adaptive_max or max(iters), batch_size=bs)
        if adaptive_tols
        else None
    )
    metric = task.primary
    extra = ("cell_acc",) if metric == "board_acc" else ()
    name = f"{cfg.model.arch} on {cfg.task}"
    made = {
        "sweep": plots.plot_sweep(
            sweep, metric, T, out / "plots" / "sweep.png", extra=extra, title=f"{name}: test-time iterations"
        ),
        "energies": plots.plot_energies(trace, out / "plots" / "energies.png", T, rise=rise) if trace else None,
        "adaptive": (
            plots.plot_adaptive(
                adaptive, sweep, metric, out / "plots" / "adaptive.png", title=f"{name}: adaptive depth"
            )
            if adaptive
            else None
        ),
        "rank_angle": plots.plot_rank_angle(trace, out / "plots" / "rank_angle.png", T) if trace else None,
        "history": plots.plot_history(history or [], metric, out / "plots" / "history.png"),
    }
    made = {k: v for k, v in made.items() if v}
    result = {
        "train_iters": T,
        "metric": metric,
        "sweep": sweep,
        "diagnostics": trace,
        "plots": made,
        "energy_rise_fraction": rise["fraction"] if rise else None,
        "energy_rise_max": rise["max"] if rise else None,
        "energy_rise": rise,
        "term_rise_fraction": ({**terms["per_term"], "max": terms["max"]} if terms else None),
        "term_rise": terms,
    }
    if adaptive:
        result["adaptive"] = adaptive
    atomic_write_text(out / EVAL_FILE, json.dumps(result, indent=1, allow_nan=True))
    logs.log_report(out, sweep, trace, metric)
    return {
        "sweep": sweep,
        "plots": made,
        "eval_file": str(out / EVAL_FILE),
        "energy_rise": rise,
        "term_rise": terms,
        "adaptive": adaptive,
    }


def evaluate_checkpoint(
    path: str | os.PathLike,
    iters: Optional[Sequence[int]] = None,
    out_dir: Optional[str | os.PathLike] = None,
    device: str = "cpu",
    adaptive_tols: Optional[Sequence[float]] = None,
    adaptive_max: Optional[int] = None,
    **overrides,
) -> dict:
    """Load a run's checkpoint, sweep ``iters`` (default: config's eval_iters or T/4..2T), write plots; with
    ``adaptive_tols`` also adaptive depth (:func:`adaptive_depth`)."""
    model, task, cfg, state = load_run(path, device=device, **overrides)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    info: dict = getattr(task, "data_info", None) or {}
    trained_on, now = (state.get("data") or {}).get("sha256"), info.get("sha256")
    if trained_on and now and trained_on != now:
        # e.g. the embedded text corpus read under another Python version: the numbers are not comparable
        log.warning(
            "the evaluation data differ from the training run's (sha256 %s… then, %s… now; source %s, "
            "Python %s then, %s now); the metrics are not comparable with the run's own",
            trained_on[:12],
            now[:12],
            info.get("source"),
            state["data"].get("python"),
            info.get("python"),
        )
    result = report(
        model,
        task,
        cfg,
        out_dir or folder,
        history=state.get("history"),
        iters=iters,
        adaptive_tols=adaptive_tols,
        adaptive_max=adaptive_max,
    )
    result.update(
        step=state.get("step"),
        epoch=state.get("epoch"),
        metric=task.primary,
        data_matches=None if not (trained_on and now) else trained_on == now,
    )
    return result


__all__ = [
    "adaptive_depth",
    "default_sweep",
    "diagnostics",
    "energy_rise",
    "evaluate_checkpoint",
    "report",
    "sweep_iterations",
    "term_rise",
]
