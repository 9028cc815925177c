"""Run a study: workers that each take trials from the shared Optuna storage until the grid is done.

A trial is an ordinary training run (:func:`energyarch.train.train`) into ``DIR/trials/<name>``, with the trial's
grid values and seed applied to the study's config. Its metrics (the primary metric at T and 2T, parameters,
time per step, tokens per second, ``energy_rise_fraction`` and, where the evaluation writes it,
``term_rise_fraction``) become the trial's user attributes; its value is the primary metric at T.

Guarantees, from the storage alone (so they hold across processes and machines):

- no grid point runs twice: Optuna's GridSampler gives trial *n* < N grid point *n*; when two trials still meet
  on one point (retries, late joiners), both wait a moment after suggesting their parameters and the later-numbered
  one is pruned (user attribute ``duplicate_of``);
- finished trials are never redone: a worker stops when no grid point is left without a trial;
- a killed worker's trial (RUNNING, no heartbeat for two intervals) is failed and queued again (WAITING) by
  Optuna's ``RetryHeartbeatStaleTrialCallback`` when the study is run again; a trial that failed otherwise
  (interrupted, not a training error) is queued again too, up to ``max_retry`` times. A training error of the
  project (e.g. divergence) is a result: recorded in ``error``, not retried.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import ConfigError, EnergyArchError
from .spec import SEED_PARAM, StudySpec, load_study
from .storage import grid_status, open_study, point_key, quiet_optuna, storage_url

log = logging.getLogger("energyarch.study")

#: seconds a trial waits after suggesting its parameters before it checks for a twin (see the module docstring)
SETTLE_S = 0.5


def trial_name(params: dict, axes) -> str:
    """A folder name from the grid values and the seed, e.g. ``attention=linear__feedforward=relu__seed=0``."""
    shorts = [k.split(".")[-1] for k in axes]
    names = [s if shorts.count(s) == 1 else k for s, k in zip(shorts, axes)]
    parts = [f"{n}={params[k]}" for n, k in zip(names, axes)] + [f"seed={params.get(SEED_PARAM)}"]
    return re.sub(r"[^A-Za-z0-9=_.+-]", "-", "__".join(parts))[:200]


def design_label(values) -> str:
    return " / ".join(str(v) for v in values)


def _weighted(entries: list, key: str) -> Optional[float]:
    rows = [(e[key], e.get("steps", 1)) for e in entries if e.get(key) is not None]
    n = sum(w for _, w in rows)
    return sum(v * w for v, w in rows) / n if n else None


def collect_metrics(summary: dict, folder: Path, T: int, metric: str) -> dict:
    """The trial's metrics from what the run wrote (``metrics.json``, ``eval.json``) and the summary."""
    import json

    def read(name):
        p = folder / name
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}

    metrics, evaluated = read("metrics.json"), read("eval.json")
    sweep = {row["iters"]: row for row in (summary.get("sweep") or evaluated.get("sweep") or [])}
    speed = (metrics.get("speed") or {}).get("epochs") or []
    final = summary.get("final") or {}
    out: dict[str, Any] = {
        "T": T,
        f"{metric}_T": (sweep.get(T) or {}).get(metric, final.get(f"test_{metric}")),
        f"{metric}_2T": (sweep.get(2 * T) or {}).get(metric),
        "parameters": summary.get("parameters", metrics.get("parameters")),
        "step_s": _weighted(speed, "step_s"),
        "tokens_per_s": _weighted(speed, "tokens_per_s"),
        "steps": final.get("step"),
        "energy_rise_fraction": evaluated.get("energy_rise_fraction"),
    }
    if "term_rise_fraction" in evaluated:  # written by newer evaluations (per-term rises)
        out["term_rise_fraction"] = evaluated["term_rise_fraction"]
    return {k: v for k, v in out.items() if not (isinstance(v, float) and not math.isfinite(v))}


class Objective:
    """One trial: suggest the point, yield to a twin, train into a fresh folder, record the metrics."""

    def __init__(self, spec: StudySpec, out_dir: Path):
        self.spec, self.out = spec, Path(out_dir)

    def suggest(self, trial) -> dict:
        spec = self.spec
        params = {k: trial.suggest_categorical(k, v) for k, v in spec.grid.items()}
        for key, p in spec.search.items():
            if p.integer:
                params[key] = trial.suggest_int(key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
            else:
                params[key] = trial.suggest_float(key, p.low, p.high, log=p.log, step=p.step)
        params[SEED_PARAM] = trial.suggest_categorical(SEED_PARAM, spec.seeds)
        return params

    def twin(self, trial, params: dict) -> Optional[int]:
        """The number of another trial on the same point that has precedence (complete, or running with a
        lower number), or None."""
        from optuna.trial import TrialState

        key = point_key(params, self.spec.axes)
        for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.number == trial.number or point_key(t.params, self.spec.axes) != key:
                continue
            if t.state == TrialState.COMPLETE or t.number < trial.number:
                return t.number
        return None

    def folder(self, trial, params: dict) -> Path:
        grid = self.spec.sampler == "grid"
        name = trial_name(params, self.spec.axes) if grid else f"trial{trial.number:04d}"
        folder = self.out / "trials" / name
        if folder.exists():  # an earlier attempt of this point that did not complete: keep it aside
            aside = self.out / "incomplete" / f"{name}.{time.strftime('%Y%m%d-%H%M%S')}.trial{trial.number}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(aside))
            log.info("trial %d: moved the incomplete folder of an earlier attempt to %s", trial.number, aside)
        return folder

    def __call__(self, trial) -> float:
        import optuna

        from ..train.evaluate import evaluate_checkpoint
        from ..train.trainer import train

        spec = self.spec
        params = self.suggest(trial)
        if spec.sampler == "grid":
            time.sleep(SETTLE_S)
            other = self.twin(trial, params)
            if other is not None:
                trial.set_user_attr("duplicate_of", other)
                raise optuna.TrialPruned(f"grid point {params} is taken by trial {other}")
        folder = self.folder(trial, params)
        cfg = spec.trial_config(params)
        T = cfg.model.iters
        recurrent = cfg.model.arch == "hyperset"
        asked = cfg.eval_iters if "eval_iters" in spec.overrides else []  # else only what the report needs
        iters = ({T, 2 * T} | set(asked)) if recurrent else {T}
        from dataclasses import replace

        cfg = replace(cfg, out_dir=str(folder), progress=False, eval_iters=sorted(iters))
        trial.set_user_attr("run_folder", os.path.relpath(folder, self.out))
        trial.set_user_attr("design", design_label([params[k] for k in spec.axes]))
        trial.set_user_attr("host", os.uname().nodename)
        start = time.time()
        try:
            summary = train(cfg, report=True)
            if not summary.get("sweep"):  # stopped by max_steps before the last epoch: evaluate anyway
                summary["sweep"] = evaluate_checkpoint(folder, iters=cfg.eval_iters)["sweep"]
            metrics = collect_metrics(summary, folder, T, spec.metric)
            metrics["wall_s"] = round(time.time() - start, 2)
            for k, v in metrics.items():
                trial.set_user_attr(k, v)
            value = metrics.get(f"{spec.metric}_T")
            if value is None:
                raise ConfigError(
                    f"trial {trial.number}: the run wrote no {spec.metric!r} at T={T}; set [study] "
                    f"metric to a metric of task {cfg.task!r}"
                )
        except EnergyArchError as err:  # a result of the design (e.g. divergence): recorded, not retried
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            raise
        return float(value)


def requeue_interrupted(study, spec: StudySpec) -> int:
    """Queue again each grid point whose attempts all failed without a project error (an interrupted worker)
    and that has no trial running or waiting, up to ``max_retry`` attempts; returns how many were queued."""
    if spec.sampler != "grid":
        return 0
    status, queued = grid_status(study, spec), 0
    for key, states in status["points"].items():
        if set(states) - {"FAIL"} or len(states["FAIL"]) > spec.max_retry:
            continue
        if any("error" in t.user_attrs or "failed_trial" in t.system_attrs for t in states["FAIL"]):
            continue  # a training error, or a stale trial Optuna's callback already handled
        study.enqueue_trial({**dict(zip(spec.axes, key[:-1])), SEED_PARAM: key[-1]})
        queued += 1
    return queued


def open_points(status: dict, spec: StudySpec) -> int:
    """Grid points without any trial yet."""
    return spec.total_trials - len([k for k in status["points"] if k[-1] is not None or not spec.axes])


def run_worker(spec: StudySpec, out_dir, url: str, on_trial: Optional[Callable] = None) -> int:
    """Take trials until none is left for this worker; returns the number of trials it ran."""
    import optuna

    from ..train.cli import setup_logging

    setup_logging(quiet=True)
    out = Path(out_dir)
    objective, ran = Objective(spec, out), 0
    with quiet_optuna():
        study = open_study(spec, url)
        requeue_interrupted(study, spec)
        while True:
            optuna.storages.fail_stale_trials(study)  # killed workers' trials → WAITING copies
            status = grid_status(study, spec)
            if spec.sampler == "grid":
                if not status["waiting"] and open_points(status, spec) <= 0:
                    break
            elif len(study.trials) - status["waiting"] >= spec.trials and not status["waiting"]:
                break
            study.optimize(objective, n_trials=1, catch=(EnergyArchError,), gc_after_trial=True)
            ran += 1
            if on_trial is not None:
                on_trial(study)
    return ran


def _worker_process(study_file: str, out_dir: str, url: str, threads: int) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    run_worker(load_study(study_file), out_dir, url)


def summary_line(study, spec: StudySpec) -> tuple[int, str]:
    """(complete trials, 'best so far' text) from the storage."""
    status = grid_status(study, spec)
    done = [t for states in status["points"].values() for t in states.get("COMPLETE", [])[:1]]
    if not done:
        return status["complete"], "best: -"
    pick = max if spec.direction == "maximize" else min
    best = pick(done, key=lambda t: t.value)
    return status["complete"], f"best {spec.metric}={best.value:.4g} ({best.user_attrs.get('run_folder')})"


def run_study(
    study_file, out_dir, storage: Optional[str] = None, workers: Optional[int] = None, progress: bool = True
) -> dict:
    """``energyarch study run``: validate, then run ``workers`` local processes on the shared storage, with a
    progress bar (trials done / total, best so far). Returns ``{'complete', 'total', 'url', 'failed'}``."""
    import multiprocessing as mp

    from tqdm import tqdm

    spec = load_study(study_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(out, storage)
    n = workers or spec.workers
    if n < 1:
        raise ConfigError(f"--workers {n}: give a number of local worker processes >= 1, e.g. --workers 2")
    with quiet_optuna():
        study = open_study(spec, url)  # created once here, so that workers only load it
    bar = tqdm(total=spec.total_trials, desc=f"study {spec.name}", unit="trial", disable=not progress)

    shown: list = []

    def refresh(s=study):
        done, best = summary_line(s, spec)
        if shown != [done, best]:  # a line per change only (log files stay short)
            shown[:] = [done, best]
            bar.n = done
            bar.set_postfix_str(best, refresh=False)
            bar.refresh()

    refresh()
    if n == 1:
        run_worker(spec, out, url, on_trial=refresh)
    else:
        threads = 0 if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // n)
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_process, args=(str(study_file), str(out), url, threads)) for _ in range(n)]
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            time.sleep(2.0)
            refresh()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            log.warning(
                "%d of %d workers exited with an error (exit codes %s); run the study again to retry their trials",
                len(bad),
                n,
                bad,
            )
    refresh()
    bar.close()
    status = grid_status(study, spec)
    failed = sum(1 for states in status["points"].values() if "COMPLETE" not in states and "FAIL" in states)
    return {
        "complete": status["complete"],
        "total": spec.total_trials,
        "url": url,
        "failed": failed,
        "running": status["running"],
    }


__all__ = [
    "Objective",
    "collect_metrics",
    "design_label",
    "requeue_interrupted",
    "run_study",
    "run_worker",
    "trial_name",
]
