"""Means and 95 % t-intervals over seeds, and paired differences on matched seeds.

The t quantile comes from scipy (installed with scikit-learn, a dependency); a table of the two-sided 95 %
quantiles is the fallback.

>>> m = mean_interval([80.0, 82.0, 84.0])
>>> round(m["mean"], 3), round(m["half"], 3), m["n"]
(82.0, 4.968, 3)
>>> d = paired_differences({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.5, 1: 1.0, 2: 2.5})
>>> round(d["mean"], 4), d["n"]
(0.6667, 3)
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

#: metrics shown in percent (in the report and its plots)
PERCENT = ("top1", "board_acc", "cell_acc")

#: two-sided 95 % quantiles of Student's t, df = 1..30 (fallback when scipy is missing)
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_quantile(df: int, level: float = 0.95) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom."""
    try:
        from scipy.stats import t

        return float(t.ppf(0.5 + level / 2, df))
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn
        if level != 0.95:
            raise
        return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_interval(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, standard deviation and the half-width of the ``level`` t-interval (NaN when n < 2)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "half": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    mean = sum(xs) / n
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
    half = t_quantile(n - 1, level) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "half": half, "low": mean - half, "high": mean + half, "n": n}


def paired_differences(design: Mapping, baseline: Mapping, level: float = 0.95) -> Optional[dict]:
    """``design − baseline`` on the seeds both have (seed → value), with its t-interval; None if none match."""
    seeds = sorted(set(design) & set(baseline))
    diffs = [design[s] - baseline[s] for s in seeds if design[s] is not None and baseline[s] is not None]
    if not diffs:
        return None
    out = mean_interval(diffs, level)
    out["seeds"] = seeds
    return out


__all__ = ["mean_interval", "paired_differences", "t_quantile"]
