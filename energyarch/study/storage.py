"""The Optuna side of a study: storage (SQLite in the study folder, or any SQLAlchemy URL), the study with its
sampler, and the state of every grid point as the storage records it.

Optuna coordinates the workers; nothing here is a queue of our own. A worker's liveness is Optuna's heartbeat: a
RUNNING trial silent for two heartbeats is failed by the next worker that starts a trial, and
``RetryHeartbeatStaleTrialCallback`` queues it again (WAITING) with the same parameters.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import ConfigError
from .spec import SEED_PARAM, StudySpec

STORAGE_FILE = "study.db"


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's heartbeat and retry are 'experimental' (a warning on each use); its INFO log is one line per
    trial. Both are silenced here: the study prints its own progress."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_url(out_dir, storage: Optional[str] = None) -> str:
    """``storage`` as given, or the SQLite file ``study.db`` in ``out_dir``."""
    if storage:
        if "://" not in storage:
            raise ConfigError(
                f"--storage {storage!r}: give an SQLAlchemy URL, e.g. sqlite:///study.db or postgresql://user@host/db"
            )
        return storage
    return f"sqlite:///{(Path(out_dir) / STORAGE_FILE).resolve()}"


def open_storage(url: str, heartbeat: Optional[int] = None, max_retry: int = 3):
    """An RDBStorage; with ``heartbeat`` seconds, stale RUNNING trials are failed and queued again."""
    import optuna

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # several processes write the file
    if heartbeat:
        kwargs.update(
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry),
        )
    with quiet_optuna():
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except ImportError as err:
            raise ConfigError(
                f"storage {url!r}: its database driver is not installed ({err}); install the "
                f"study extra: pip install 'energyarch[study]'"
            ) from None
        except Exception as err:  # sqlalchemy: a bad URL, a server that does not answer
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(
                f"storage {url!r} cannot be opened ({type(err).__name__}: {err}); check the URL, "
                f"that the server runs and that the folder exists"
            ) from None


def spec_record(spec: StudySpec) -> dict:
    """What a study stores about itself, so that a report needs only the storage."""
    return {
        "grid": spec.grid,
        "seeds": spec.seeds,
        "axes": spec.axes,
        "metric": spec.metric,
        "direction": spec.direction,
        "baseline": list(spec.baseline_design() or []) or None,
        "sampler": spec.sampler,
        "total_trials": spec.total_trials,
        "base": spec.base,
        "overrides": spec.overrides,
        "designs": spec.named,
        "search": {k: vars(v) for k, v in spec.search.items()},
    }


def make_sampler(spec: StudySpec):
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler(spec.grid_search_space(), seed=0)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler()
    return optuna.samplers.TPESampler()


def open_study(spec: StudySpec, url: str, heartbeat: bool = True):
    """Create the Optuna study or load it (several workers may call this at once); refuses a stored study of
    the same name with another grid."""
    import optuna

    storage = open_storage(url, spec.heartbeat if heartbeat else None, spec.max_retry)
    with quiet_optuna():
        study = optuna.create_study(
            study_name=spec.name,
            storage=storage,
            sampler=make_sampler(spec),
            direction=optuna.study.StudyDirection[spec.direction.upper()],
            load_if_exists=True,
        )
        record = spec_record(spec)
        stored = study.user_attrs.get("spec")
        if stored is None:
            study.set_user_attr("spec", record)
        elif {k: stored.get(k) for k in ("grid", "seeds", "sampler", "search")} != {
            k: record[k] for k in ("grid", "seeds", "sampler", "search")
        }:
            raise ConfigError(
                f"storage {url!r} already holds a study {spec.name!r} with another grid, seeds or "
                f"search space; give the study a new name, or another --out / --storage"
            )
    return study


def load_stored_study(url: str, name: Optional[str] = None):
    """A study from its storage (the only one there, or ``name``) for reports and notebooks."""
    import optuna

    storage = open_storage(url)
    with quiet_optuna():
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        if not names:
            raise ConfigError(f"storage {url!r} holds no study; run `energyarch study run STUDY.toml` first")
        if name is None:
            if len(names) > 1:
                raise ConfigError(f"storage {url!r} holds several studies ({', '.join(names)}); name one")
            name = names[0]
        if name not in names:
            raise ConfigError(f"storage {url!r} has no study {name!r}; it holds: {', '.join(names)}")
        return optuna.load_study(study_name=name, storage=storage)


def point_key(params: dict, axes) -> tuple:
    """The grid point of a trial's parameters: its grid values and its seed."""
    return tuple(params.get(k) for k in axes) + (params.get(SEED_PARAM),)


def grid_status(study, spec: StudySpec) -> dict:
    """Per grid point (grid values + seed): its trials by state name; and the counts the workers act on."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    points: dict[tuple, dict[str, list]] = {}
    for t in trials:
        if t.state == TrialState.PRUNED and "duplicate_of" in t.user_attrs:
            continue  # a collision that yielded: not an attempt
        if t.state == TrialState.WAITING and not t.params:
            fixed = t.system_attrs.get("fixed_params") or {}
            key = point_key(fixed, spec.axes)
        else:
            key = point_key(t.params, spec.axes)
        points.setdefault(key, {}).setdefault(t.state.name, []).append(t)
    complete = sum(1 for p in points.values() if "COMPLETE" in p)
    return {
        "points": points,
        "complete": complete,
        "total": spec.total_trials,
        "waiting": sum(1 for t in trials if t.state == TrialState.WAITING),
        "running": sum(1 for t in trials if t.state == TrialState.RUNNING),
    }


__all__ = [
    "STORAGE_FILE",
    "grid_status",
    "load_stored_study",
    "open_storage",
    "open_study",
    "point_key",
    "quiet_optuna",
    "spec_record",
    "storage_url",
]
