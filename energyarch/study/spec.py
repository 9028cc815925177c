"""A study file: a base training config, overrides for every trial, a grid (and optionally a sampled space) × seeds.

Every mistake is a :class:`~energyarch.errors.ConfigError` naming the key and the fix, raised before any trial
starts: :func:`load_study` also builds the training config of every grid point.

>>> spec = StudySpec.from_toml_string('''
... [study]
... name = "tiny"
... base = "digits"
... seeds = [0, 1]
... [study.set]
... epochs = 1
... [grid]
... "model.attention" = ["bisoftmax", "linear"]
... ''')
>>> spec.total_trials, spec.designs()
(4, [('bisoftmax',), ('linear',)])
>>> spec.trial_config({"model.attention": "linear", "seed": 1}).model.attention
'linear'
"""

from __future__ import annotations

import copy
import math
import re
import sys
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import ConfigError
from ..train.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

NAMED_AXIS = "design"
STUDY_KEYS = (
    "name",
    "base",
    "seeds",
    "workers",
    "baseline",
    "metric",
    "direction",
    "sampler",
    "trials",
    "heartbeat",
    "max_retry",
    "set",
)
SAMPLERS = ("grid", "tpe", "random")
#: primary metric of each task, and whether larger is better
PRIMARY = {"sudoku": ("board_acc", "maximize"), "text": ("bpb", "minimize")}
SEED_PARAM = "seed"


def _err(key: str, value, fix: str) -> ConfigError:
    return ConfigError(f"study file: {key} = {value!r}: {fix}")


def set_path(data: dict, key: str, value: Any, where: str = "[study.set]") -> None:
    """Assign ``value`` at the dotted ``key`` of a config dict (``model.solver_params.steps``); a table given for
    ``model`` is merged key by key."""
    parts = key.split(".")
    if not all(parts):
        raise _err(f"{where} {key!r}", value, 'write a dotted key such as "model.d" or "lr"')
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise _err(
                f"{where} {key!r}",
                value,
                f"{'.'.join(parts[: i + 1])} is {child!r}, not a table; set "
                f'the whole value, e.g. "{".".join(parts[: i + 1])}" = {{ ... }}',
            )
        node = child
    if key == "model" and isinstance(value, Mapping):
        node["model"].update(copy.deepcopy(dict(value)))
    else:
        node[parts[-1]] = copy.deepcopy(value)


def _grid_value_ok(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


@dataclass
class SearchParam:
    """A sampled parameter: a float/int range (``low``, ``high``, optional ``log``, ``step``)."""

    key: str
    low: float
    high: float
    log: bool = False
    step: Optional[float] = None
    integer: bool = False


@dataclass
class StudySpec:
    """A parsed, validated study file (see the module docstring and ``docs/benchmarks.md``)."""

    name: str
    base: str
    base_config: TrainConfig
    seeds: list
    overrides: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    search: dict = field(default_factory=dict)
    named: dict = field(default_factory=dict)
    workers: int = 1
    baseline: Any = None
    metric: str = "top1"
    direction: str = "maximize"
    sampler: str = "grid"
    trials: int = 0
    heartbeat: int = 30
    max_retry: int = 3
    source: str = "<study>"

    # ---------------------------------------------------------------------------------------------------------
    @property
    def axes(self) -> list[str]:
        """Grid keys in a fixed (file) order."""
        return list(self.grid)

    @property
    def total_trials(self) -> int:
        if self.sampler != "grid":
            return self.trials
        return math.prod(len(v) for v in self.grid.values()) * len(self.seeds)

    def designs(self) -> list[tuple]:
        """Every combination of grid values, in file order (the seeds excluded)."""
        return list(product(*self.grid.values()))

    def grid_search_space(self) -> dict:
        """The search space of Optuna's GridSampler: the grid plus the seed."""
        return {**{k: list(v) for k, v in self.grid.items()}, SEED_PARAM: list(self.seeds)}

    def trial_config(self, params: Mapping[str, Any]) -> TrainConfig:
        """The training config of one trial: base, then the study's overrides, then the trial's values."""
        data = copy.deepcopy(self.base_config.to_dict())  # to_dict shares nested dicts with the config
        for key, value in self.overrides.items():
            set_path(data, key, value)
        for key, value in self.named.get(params.get(NAMED_AXIS), {}).items():
            set_path(data, key, value, where=f"[designs.{params[NAMED_AXIS]}]")
        for key, value in params.items():
            if key not in (SEED_PARAM, NAMED_AXIS) or (key == NAMED_AXIS and not self.named):
                set_path(data, key, value, where="[grid]" if key in self.grid else "[search]")
        if SEED_PARAM in params:
            data["seed"] = params[SEED_PARAM]
        try:
            return TrainConfig.from_dict(data, source=f"{self.source} (trial {dict(params)})")
        except ConfigError as err:
            raise ConfigError(
                f"{self.source}: the trial {dict(params)} gives an invalid training config: {err}"
            ) from None

    def baseline_design(self) -> Optional[tuple]:
        """The design the report compares against: ``baseline`` as a table of grid values, or one grid value
        (the other axes at their first value); None when unset."""
        if self.baseline is None:
            return None
        if isinstance(self.baseline, Mapping):
            return tuple(self.baseline.get(k, v[0]) for k, v in self.grid.items())
        for i, (key, values) in enumerate(self.grid.items()):
            if self.baseline in values:
                return tuple(self.baseline if j == i else v[0] for j, v in enumerate(self.grid.values()))
        return None

    # ---------------------------------------------------------------------------------------------------------
    @classmethod
    def from_toml_string(cls, text: str, source: str = "<study>", root: Optional[Path] = None) -> "StudySpec":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{source}: not valid TOML ({err}); see docs/benchmarks.md for a study file") from err
        return cls.from_dict(data, source=source, root=root)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<study>", root: Optional[Path] = None) -> "StudySpec":
        from ..train.config import resolve_config

        unknown = [k for k in data if k not in ("study", "grid", "search", "designs")]
        if unknown:
            raise ConfigError(
                f"{source}: unknown table {unknown[0]!r}; a study file has [study], [study.set], "
                f"[designs], [grid] and [search]"
            )
        study = data.get("study")
        if not isinstance(study, Mapping):
            raise ConfigError(
                f'{source}: no [study] table; start the file with [study] name = "..." base = '
                f'"digits" seeds = [0, 1, 2]'
            )
        for key in study:
            if key not in STUDY_KEYS:
                raise ConfigError(f"{source}: [study] unknown key {key!r}; valid keys: {', '.join(STUDY_KEYS)}")
        name = study.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
            raise _err(
                "[study] name",
                name,
                "give a name of letters, digits, '-', '_' or '.', e.g. name = \"attention-designs\"",
            )
        base = study.get("base")
        if not isinstance(base, str):
            raise _err(
                "[study] base",
                base,
                'give a packaged config name (e.g. "fashion_mnist") or a path to a training TOML, e.g. base = "digits"',
            )
        path = Path(base)
        if root is not None and not path.is_absolute() and (root / path).is_file():
            path = root / path
        try:
            base_config = TrainConfig.load(resolve_config(str(path)))
        except ConfigError as err:
            raise ConfigError(f"{source}: [study] base = {base!r}: {err}") from None
        seeds = study.get("seeds", [0])
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
            or len(set(seeds)) != len(seeds)
        ):
            raise _err("[study] seeds", seeds, "give distinct integer seeds, e.g. seeds = [0, 1, 2]")
        workers = study.get("workers", 1)
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise _err("[study] workers", workers, "give a number of local worker processes >= 1, e.g. workers = 2")
        overrides = study.get("set", {})
        if not isinstance(overrides, Mapping):
            raise _err("[study] set", overrides, "write [study.set] as a table of KEY = VALUE, e.g. epochs = 2")
        grid = data.get("grid", {})
        if not isinstance(grid, Mapping):
            raise _err(
                "[grid]",
                grid,
                'write [grid] as a table of "key" = [values], e.g. "model.attention" = ["bisoftmax", "linear"]',
            )
        for key, values in grid.items():
            if key == SEED_PARAM:
                raise _err("[grid] seed", values, "list the seeds in [study] seeds = [...], not in [grid]")
            if (
                not isinstance(values, list)
                or not values
                or not all(_grid_value_ok(v) for v in values)
                or len({repr(v) for v in values}) != len(values)
            ):
                raise _err(
                    f"[grid] {key!r}",
                    values,
                    'give a non-empty list of distinct numbers, strings or booleans, e.g. ["bisoftmax", "linear"]',
                )
        named = data.get("designs") or {}
        if named:
            if not isinstance(named, Mapping) or not all(isinstance(v, Mapping) for v in named.values()):
                raise _err(
                    "[designs]",
                    named,
                    'give one table of overrides per design, e.g. [designs.gpt] "model.arch" = "transformer"',
                )
            if NAMED_AXIS in grid:
                raise _err(
                    f"[grid] {NAMED_AXIS!r}",
                    grid[NAMED_AXIS],
                    "the [designs] tables make the 'design' axis; remove it from [grid]",
                )
            grid = {NAMED_AXIS: list(named), **grid}
        search = {}
        for key, spec in (data.get("search") or {}).items():
            search[key] = _search_param(key, spec)
        overlap = set(search) & set(grid)
        if overlap:
            k = sorted(overlap)[0]
            raise _err(
                f"[search] {k!r}",
                data["search"][k],
                "a key is either gridded or searched: remove it from [grid] or [search]",
            )
        sampler = study.get("sampler", "tpe" if search else "grid")
        if sampler not in SAMPLERS:
            raise _err("[study] sampler", sampler, f"choose one of {SAMPLERS}")
        if search and sampler == "grid":
            raise _err(
                "[study] sampler",
                sampler,
                '[search] ranges need a sampler: sampler = "tpe" or "random" (with trials = N)',
            )
        trials = study.get("trials", 0)
        if sampler != "grid" and (not isinstance(trials, int) or isinstance(trials, bool) or trials < 1):
            raise _err("[study] trials", trials, f"sampler = {sampler!r} needs the number of trials, e.g. trials = 20")
        heartbeat = study.get("heartbeat", 30)
        if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat < 1:
            raise _err(
                "[study] heartbeat",
                heartbeat,
                "give seconds >= 1 between a worker's signs of life; a "
                "trial silent for 2x that is retried, e.g. heartbeat = 30",
            )
        max_retry = study.get("max_retry", 3)
        if not isinstance(max_retry, int) or isinstance(max_retry, bool) or max_retry < 0:
            raise _err("[study] max_retry", max_retry, "give how often a killed trial is retried, e.g. max_retry = 3")
        task = base_config.task
        metric, direction = PRIMARY.get(task, ("top1", "maximize"))
        metric = study.get("metric", metric)
        direction = study.get("direction", direction)
        if not isinstance(metric, str):
            raise _err("[study] metric", metric, 'give a metric name of the task, e.g. metric = "top1"')
        if direction not in ("maximize", "minimize"):
            raise _err("[study] direction", direction, 'choose "maximize" or "minimize"')
        spec = cls(
            name=name,
            base=base,
            base_config=base_config,
            seeds=list(seeds),
            overrides=dict(overrides),
            grid={k: list(v) for k, v in grid.items()},
            search=search,
            named={k: dict(v) for k, v in named.items()},
            workers=workers,
            baseline=study.get("baseline"),
            metric=metric,
            direction=direction,
            sampler=sampler,
            trials=trials,
            heartbeat=heartbeat,
            max_retry=max_retry,
            source=source,
        )
        if spec.baseline is not None and spec.baseline_design() is None:
            raise _err(
                "[study] baseline",
                spec.baseline,
                'name a value of one [grid] axis (e.g. baseline = "bisoftmax") or give a table of grid values',
            )
        spec.validate()
        return spec

    def validate(self) -> None:
        """Build the training config of every grid point (and the ends of every searched range)."""
        self.trial_config({})
        for values in self.designs():
            self.trial_config({**dict(zip(self.axes, values)), SEED_PARAM: self.seeds[0]})
        for p in self.search.values():
            for end in (p.low, p.high):
                self.trial_config({p.key: int(end) if p.integer else float(end)})


def _search_param(key: str, spec) -> SearchParam:
    fix = "give a range such as { low = 0.1, high = 1.0, log = true } (floats) or { low = 1, high = 8, int = true }"
    if not isinstance(spec, Mapping):
        raise _err(f"[search] {key!r}", spec, fix)
    extra = set(spec) - {"low", "high", "log", "step", "int"}
    if extra:
        raise _err(f"[search] {key!r}", spec, f"unknown field {sorted(extra)[0]!r}; {fix}")
    ends = spec.get("low"), spec.get("high")
    numbers = [float(v) for v in ends if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if len(numbers) != 2 or not numbers[0] < numbers[1]:
        raise _err(f"[search] {key!r}", spec, f"need finite numbers low < high; {fix}")
    low, high = numbers
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and low <= 0):
        raise _err(f"[search] {key!r}", spec, "log = true needs low > 0 (log is true or false)")
    step = spec.get("step")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0 or log):
        raise _err(f"[search] {key!r}", spec, "step must be a number > 0, and cannot go with log = true")
    integer = spec.get("int", False)
    if not isinstance(integer, bool):
        raise _err(f"[search] {key!r}", spec, "int is true or false")
    return SearchParam(key=key, low=low, high=high, log=log, step=step, integer=integer)


def load_study(path) -> StudySpec:
    """Read and validate a study file; a relative ``base`` path is taken relative to the file's folder first."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"study file {str(p)!r} does not exist; pass a .toml study file such as "
            f"benchmarks/studies/table4_fashion.toml"
        )
    return StudySpec.from_toml_string(p.read_text(encoding="utf-8"), source=str(p), root=p.parent)


__all__ = ["SEED_PARAM", "SearchParam", "StudySpec", "load_study", "set_path"]
