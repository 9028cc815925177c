"""``energyarch study report DIR``: a leaderboard over seeds and paired differences against the baseline.

Everything is read from the study's storage (the trials' parameters and user attributes), so a report can be
made on any machine that reaches it. Writes ``report.md``, ``leaderboard.csv``, ``differences.csv`` and
``plots/*.png`` into ``DIR``.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional

from ..train.config import atomic_write_text
from .spec import SEED_PARAM
from .stats import PERCENT, mean_interval, paired_differences


def trial_rows(study) -> list[dict]:
    """One dict per COMPLETE trial: design (tuple and label), seed, value and every user attribute."""
    from optuna.trial import TrialState

    spec = study.user_attrs.get("spec", {})
    axes = spec.get("axes") or []
    rows = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        design = tuple(t.params.get(k) for k in axes) + tuple(
            (k, v) for k, v in sorted(t.params.items()) if k not in axes and k != SEED_PARAM
        )
        rows.append(
            {
                **t.user_attrs,
                "number": t.number,
                "design": design,
                "label": _label(design),
                "seed": t.params.get(SEED_PARAM),
                "value": t.value,
            }
        )
    return rows


def _label(design: tuple) -> str:
    return " / ".join(f"{v[0].split('.')[-1]}={v[1]:.4g}" if isinstance(v, tuple) else str(v) for v in design)


def _mean(rows, key) -> Optional[float]:
    xs = [r[key] for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return sum(xs) / len(xs) if xs else None


def leaderboard(study) -> dict:
    """Per design: mean and 95 % t-interval of the metric at T over seeds, n, the metric at 2T, parameters,
    time per step, tokens/s, energy rises; and paired differences (matched seeds) against the baseline."""
    spec = study.user_attrs.get("spec", {})
    metric = spec.get("metric", "value")
    rows = trial_rows(study)
    by_design: dict[tuple, dict] = {}
    for r in rows:
        by_design.setdefault(r["design"], {}).setdefault(r["seed"], r)  # first COMPLETE per seed
    table = []
    for design, seeds in by_design.items():
        rs = list(seeds.values())
        ci = mean_interval([r["value"] for r in rs])
        table.append(
            {
                "design": design,
                "label": _label(design),
                **ci,
                "mean_2T": _mean(rs, f"{metric}_2T"),
                "parameters": _mean(rs, "parameters"),
                "step_s": _mean(rs, "step_s"),
                "tokens_per_s": _mean(rs, "tokens_per_s"),
                "energy_rise_fraction": _mean(rs, "energy_rise_fraction"),
                "term_rise_fraction": _mean(rs, "term_rise_fraction"),
                "values": {s: r["value"] for s, r in seeds.items()},
            }
        )
    reverse = spec.get("direction", "maximize") == "maximize"
    table.sort(key=lambda e: (math.isnan(e["mean"]), -e["mean"] if reverse else e["mean"]))
    base = tuple(spec["baseline"]) if spec.get("baseline") else None
    diffs = []
    if base in by_design:
        ref = table[[e["design"] for e in table].index(base)]["values"]
        for e in table:
            if e["design"] != base:
                d = paired_differences(e["values"], ref)
                if d:
                    diffs.append(
                        {
                            "design": e["design"],
                            "label": e["label"],
                            **d,
                            "excludes_zero": bool(d["n"] > 1 and (d["low"] > 0 or d["high"] < 0)),
                        }
                    )
    return {
        "metric": metric,
        "direction": spec.get("direction", "maximize"),
        "baseline": base,
        "baseline_label": _label(base) if base else None,
        "table": table,
        "differences": diffs,
        "trials": len(rows),
        "total": spec.get("total_trials"),
        "axes": spec.get("axes") or [],
        "study": study.study_name,
    }


def _fmt(value, scale: float = 1.0, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * scale:.{digits}f}"


def markdown(board: dict) -> str:
    """The leaderboard and the differences as Markdown tables."""
    metric = board["metric"]
    pct = metric in PERCENT
    scale, digits, unit = (100.0, 2, " %") if pct else (1.0, 4, "")
    lines = [
        f"Study `{board['study']}`: {board['trials']} complete trials of {board['total']}; metric "
        f"{metric}{unit} at the training depth T ({board['direction']}), mean over seeds with its 95 % "
        f"t-interval.",
        "",
        f"| design | {metric}{unit} (T) | 95 % interval | n | {metric}{unit} (2T) | parameters | ms / step | "
        f"tokens/s | energy rise % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in board["table"]:
        lines.append(
            f"| {e['label']} | {_fmt(e['mean'], scale, digits)} | ± {_fmt(e['half'], scale, digits)} "
            f"[{_fmt(e['low'], scale, digits)}, {_fmt(e['high'], scale, digits)}] | {e['n']} | "
            f"{_fmt(e['mean_2T'], scale, digits)} | {_fmt(e['parameters'], 1, 0)} | "
            f"{_fmt(e['step_s'], 1000, 1)} | {_fmt(e['tokens_per_s'], 1, 0)} | "
            f"{_fmt(e['energy_rise_fraction'], 100, 2)} |"
        )
    if board["differences"]:
        lines += [
            "",
            f"Paired differences against the baseline **{board['baseline_label']}** (design − "
            f"baseline on the seeds both ran; 95 % t-interval; * = the interval excludes 0):",
            "",
            f"| design | Δ {metric}{unit} | 95 % interval | n |",
            "|---|---|---|---|",
        ]
        for d in board["differences"]:
            lines.append(
                f"| {d['label']} | {_fmt(d['mean'], scale, digits)}{' *' if d['excludes_zero'] else ''} "
                f"| ± {_fmt(d['half'], scale, digits)} [{_fmt(d['low'], scale, digits)}, "
                f"{_fmt(d['high'], scale, digits)}] | {d['n']} |"
            )
    return "\n".join(lines) + "\n"


def _csv(rows: list[dict], keys: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows:
        w.writerow(["" if r.get(k) is None else r.get(k) for k in keys])
    return buf.getvalue()


def write_report(study, out_dir) -> dict:
    """Write report.md, leaderboard.csv, differences.csv and the plots into ``out_dir``; returns the paths."""
    from .plots import plot_study

    out = Path(out_dir)
    board = leaderboard(study)
    paths = {
        "markdown": out / "report.md",
        "leaderboard": out / "leaderboard.csv",
        "differences": out / "differences.csv",
    }
    made = plot_study(board, trial_rows(study), out / "plots")
    text = markdown(board)
    if made:
        text += "\n" + "\n".join(f"![{name}](plots/{Path(p).name})" for name, p in made.items()) + "\n"
    atomic_write_text(paths["markdown"], f"# {board['study']}\n\n" + text)
    keys = [
        "label",
        "mean",
        "half",
        "low",
        "high",
        "std",
        "n",
        "mean_2T",
        "parameters",
        "step_s",
        "tokens_per_s",
        "energy_rise_fraction",
        "term_rise_fraction",
    ]
    atomic_write_text(paths["leaderboard"], _csv(board["table"], keys))
    atomic_write_text(
        paths["differences"], _csv(board["differences"], ["label", "mean", "half", "low", "high", "n", "excludes_zero"])
    )
    return {"board": board, **{k: str(v) for k, v in paths.items()}, "plots": made}


__all__ = ["leaderboard", "markdown", "trial_rows", "write_report"]
