"""Checkpoints: tensors in safetensors, everything else in JSON, both written atomically.

A checkpoint in ``out_dir`` is two files::

    checkpoint-00000120.safetensors   model state ("model/<name>") + optimizer state ("optim/<param>/<key>")
    checkpoint.json                   epoch, step, scheduler, RNG states (lists), config, metrics history,
                                      architecture signature, optimizer hyper-parameters, tensor file + sha256

The tensor file is written first (temporary file, then ``os.replace``) and ``checkpoint.json`` last, so the JSON
always points at a complete tensor file: it is the commit point, and a crash in between leaves the previous
checkpoint in force. Nothing is pickled; loading never executes code. :func:`load_run` rebuilds a whole run (its
config, task and model) from the folder.

>>> import tempfile, torch
>>> from torch import nn
>>> model = nn.Linear(3, 2)
>>> d = tempfile.mkdtemp()
>>> _ = save_checkpoint(d, model, state={"step": 7})
>>> load_checkpoint(d, nn.Linear(3, 2))["step"]
7
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from pathlib import Path
from typing import Any, Mapping, Optional, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .._atomic import atomic_path
from ..energy import as_energy
from ..errors import CheckpointError, ConfigError
from ..models import Model, ModelConfig, TaskSpec, build_model
from ..models.record import energy_fields, energy_fingerprint
from . import distributed
from .config import SAVED_MODEL_DEFAULTS, TrainConfig, atomic_write_text, saved_config
from .tasks import Task, build_task

STATE_FILE = "checkpoint.json"
FORMAT = "energyarch-checkpoint-1"


# -------------------------------------------------------------------------------------------------------------
# architecture signature
# -------------------------------------------------------------------------------------------------------------

#: ModelConfig fields that do not define the architecture (test-time iterations may differ from training)
NON_ARCH_FIELDS = ("iters",)


def architecture_signature(model: nn.Module) -> dict:
    """What must match to load weights: the model/task configs (when known) and every tensor's shape."""
    sig: dict[str, Any] = {
        "class": type(model).__name__,
        "tensors": {k: list(v.shape) for k, v in model.state_dict().items()},
    }
    cfg, task = getattr(model, "cfg", None), getattr(model, "task", None)
    if cfg is not None:
        sig["model"] = {k: _plain(cfg, k, v) for k, v in vars(cfg).items() if k not in NON_ARCH_FIELDS}
    if task is not None:
        sig["task"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(task).items()}
    return sig


def _plain(cfg, name: str, value):
    """A config value as JSON data: energy terms as their declaration (a name or a table) when they have one."""
    if name in ("attention", "feedforward", "terms") and hasattr(cfg, "declaration"):
        decl = energy_fields(cfg)[0].get(name)  # names, tables, or the fingerprint of a Python energy
        return None if decl is None else json.loads(json.dumps(decl))
    if name == "solvers":  # per-term solvers as data; none (as in runs saved before) → None
        return json.loads(json.dumps(value)) if value else None
    return value if isinstance(value, (str, int, float, bool)) else repr(value)


def _defaults(part: str) -> dict:
    """Values of config fields that checkpoints written before the field existed implicitly had."""
    if part not in ("model", "task"):
        return {}
    defaults = ModelConfig() if part == "model" else TaskSpec()
    values = {k: v for k, v in vars(defaults).items() if isinstance(v, (str, int, float, bool))}
    if part == "model":
        values.update(SAVED_MODEL_DEFAULTS)  # e.g. steps: runs saved before the field trained with free steps
    return values


def compare_signatures(saved: dict, current: dict, where: str) -> None:
    """Raise :class:`CheckpointError` listing every tensor (and config field) that differs."""
    st, ct = saved.get("tensors", {}), current["tensors"]
    problems = []
    missing = [k for k in ct if k not in st]
    unexpected = [k for k in st if k not in ct]
    shapes = [f"{k}: checkpoint {st[k]} vs model {ct[k]}" for k in ct if k in st and list(st[k]) != list(ct[k])]
    if shapes:
        problems.append("shape mismatch: " + _few(shapes))
    if missing:
        problems.append("in the model but not in the checkpoint: " + _few(missing))
    if unexpected:
        problems.append("in the checkpoint but not in the model: " + _few(unexpected))
    for part in ("model", "task"):
        a, b = saved.get(part), current.get(part)
        if a is not None and b is not None:
            # a field added since the checkpoint was written had its default value then
            a = {**{k: v for k, v in _defaults(part).items() if k in b}, **a}
            diffs = [
                f"{part}.{k}: checkpoint {_show(a.get(k))} vs model {_show(b.get(k))}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
            if diffs:
                problems.append("configuration differs: " + _few(diffs))
    if problems:
        raise CheckpointError(
            f"checkpoint {where} was saved from a different architecture; "
            + "; ".join(problems)
            + ". Build the model with the checkpoint's [model] settings (see its config in "
            f"{STATE_FILE}), or train into a new out_dir"
        )


def _show(value) -> str:
    """A config value for a message: an inline declaration as TOML-like ``{ f = "...", ... }``."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_show(v)}" for k, v in value.items()) + " }"
    return repr(value)


def _few(items: list, n: int = 8) -> str:
    more = f", ... ({len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# -------------------------------------------------------------------------------------------------------------
# RNG states as JSON lists
# -------------------------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """torch (CPU and CUDA), numpy and python RNG states as plain lists."""
    np_state = cast(tuple, np.random.get_state())  # the legacy form (the default): a tuple
    py_state = random.getstate()
    out = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def _bytes_tensor(values, like: torch.Tensor, what: str) -> torch.Tensor:
    if (
        not isinstance(values, list)
        or len(values) != like.numel()
        or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values)
    ):
        raise CheckpointError(f"{what}: expected {like.numel()} integers in 0..255")
    return torch.tensor(values, dtype=torch.uint8)


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`. Everything is validated before anything is set: a malformed or crafted
    state raises :class:`CheckpointError` and leaves the current RNG states untouched."""
    where = "checkpoint RNG state"
    try:
        if not isinstance(state, dict):
            raise CheckpointError(f"{where}: expected a JSON object")
        torch_state = _bytes_tensor(state.get("torch"), torch.get_rng_state(), f"{where} 'torch'")
        name, keys, pos, has_gauss, cached = state["numpy"]
        np_keys = np.asarray(keys, dtype=np.uint32)
        if name != "MT19937" or np_keys.shape != (624,) or not (isinstance(pos, int) and 0 <= pos <= 624):
            raise CheckpointError(f"{where} 'numpy': not an MT19937 state")
        version, internal, gauss = state["python"]
        if (
            version != 3
            or not isinstance(internal, list)
            or len(internal) != 625
            or not all(isinstance(v, int) and 0 <= v < 2**32 for v in internal[:624])
            or not (isinstance(internal[624], int) and 0 <= internal[624] <= 624)
        ):
            raise CheckpointError(f"{where} 'python': not a Mersenne Twister state")
        cuda = None
        if "cuda" in state and torch.cuda.is_available():
            current = torch.cuda.get_rng_state_all()
            if not isinstance(state["cuda"], list) or len(state["cuda"]) != len(current):
                raise CheckpointError(f"{where} 'cuda': expected one state per device ({len(current)})")
            cuda = [_bytes_tensor(s, c, f"{where} 'cuda'") for s, c in zip(state["cuda"], current)]
        finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        if has_gauss not in (0, 1) or not finite(cached) or not (gauss is None or finite(gauss)):
            raise CheckpointError(f"{where}: a cached Gaussian is not a finite number")
        np_state = (name, np_keys, pos, int(has_gauss), float(cached))
        py_state = (version, tuple(internal), gauss if gauss is None else float(gauss))
    except CheckpointError as err:
        raise CheckpointError(
            f"{err}; the checkpoint was written by another program or changed. Resume without "
            f"it (the run folder's weights are still usable for evaluation)"
        ) from None
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise CheckpointError(
            f"{where}: malformed ({type(err).__name__}: {err}); the checkpoint was written by "
            f"another program or changed"
        ) from None
    torch.set_rng_state(torch_state)
    np.random.set_state(np_state)
    random.setstate(py_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


# -------------------------------------------------------------------------------------------------------------
# optimizer state <-> named tensors
# -------------------------------------------------------------------------------------------------------------


def optimizer_param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimizer's own order (the indices of ``optimizer.state_dict()``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in names:
                raise CheckpointError(
                    "the optimizer holds a parameter that is not in the model; build the optimizer "
                    "from model.parameters()"
                )
            out.append(names[id(p)])
    return out


def _split_optimizer(model, optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    names = optimizer_param_names(model, optimizer)
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{names[idx]}/{key}"] = value
            else:
                scalars.setdefault(names[idx], {})[key] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        | {"params": [names[i] for i in g["params"]]}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _merge_optimizer(model, optimizer, tensors: dict, meta: dict, where: str) -> None:
    try:
        _merge_optimizer_checked(model, optimizer, tensors, meta, where)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(
            f"checkpoint {where}: malformed optimizer state ({type(err).__name__}: {err}); the "
            f"file was changed or written by another program. Load it for evaluation only, or "
            f"train into a new --out"
        ) from None


def _check_optimizer_tensor(param: torch.Tensor, pname: str, key: str, value: torch.Tensor, where: str) -> None:
    """An optimizer state tensor must fit its parameter: the moments its shape and dtype kind, ``step`` one finite
    count >= 0 (validated at load, so that the first step after a resume cannot fail on it)."""
    if key == "step":
        ok = value.numel() == 1 and bool(torch.isfinite(value.double()).all()) and float(value) >= 0
        want = "one finite count >= 0"
    else:
        ok = (
            tuple(value.shape) == tuple(param.shape) and value.is_floating_point() and bool(torch.isfinite(value).all())
        )
        want = f"finite floats of shape {list(param.shape)}"
    if not ok:
        raise CheckpointError(
            f"checkpoint {where}: optimizer state {pname}/{key} is {value.dtype} of shape "
            f"{list(value.shape)}, expected {want}; the file was changed or belongs to another "
            f"model. Load it for evaluation only, or train into a new --out"
        )


def _state_keys(optimizer: torch.optim.Optimizer) -> Optional[set]:
    """The state keys ``optimizer``'s class keeps per parameter after a step (``step``, ``exp_avg``, ... for Adam),
    found by one step of a copy on a one-element parameter; None where that cannot be done."""
    import inspect

    try:
        p = torch.zeros(1, requires_grad=True)
        accepted = inspect.signature(type(optimizer).__init__).parameters
        group = {
            k: v
            for k, v in optimizer.param_groups[0].items()
            if k in accepted and k not in ("params", "fused", "foreach", "capturable")
        }
        probe = type(optimizer)([p], **group)
        p.grad = torch.zeros(1)
        probe.step()
        return set(probe.state[p])
    except Exception:  # noqa: BLE001 - an optimizer that cannot be copied this way: compare entries with each other
        return None


def _merge_optimizer_checked(model, optimizer, tensors: dict, meta: dict, where: str) -> None:
    names = optimizer_param_names(model, optimizer)
    params = dict(model.named_parameters())
    index = {n: i for i, n in enumerate(names)}
    saved_groups = meta["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if [g["params"] for g in saved_groups] != [[names[i] for i in g["params"]] for g in current]:
        raise CheckpointError(
            f"checkpoint {where}: the optimizer's parameter groups differ from this model's; "
            f"resume with the same model and optimizer settings"
        )
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, rest = key.split("/", 1)
        pname, skey = rest.rsplit("/", 1)
        if pname not in index:
            raise CheckpointError(f"checkpoint {where}: optimizer state for unknown parameter {pname!r}")
        _check_optimizer_tensor(params[pname], pname, skey, value, where)
        state.setdefault(index[pname], {})[skey] = value
    for pname, entry in meta.get("scalars", {}).items():
        state.setdefault(index[pname], {}).update(entry)
    expected = _state_keys(optimizer)
    for i, entry in state.items():
        keys = set(entry)
        if keys != (expected if expected is not None else set().union(*map(set, state.values()))):
            raise CheckpointError(
                f"checkpoint {where}: optimizer state of {names[i]} holds {sorted(keys)}, expected "
                f"{sorted(expected or [])}; the file was changed. Load it for evaluation only, or "
                f"train into a new --out"
            )
    groups = []
    for g, now in zip(saved_groups, current):
        for key, value in g.items():
            if key == "params" or key not in now:
                continue
            expected = now[key]
            bad = (
                value not in (None, True, False)
                if isinstance(expected, bool) or expected is None
                else (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not math.isfinite(value)
                    or value < 0
                )
                if isinstance(expected, (int, float))
                else (
                    not isinstance(value, list)
                    or len(value) != len(expected)
                    or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
                    )
                )
                if isinstance(expected, tuple)
                else False
            )
            if bad:
                raise CheckpointError(
                    f"checkpoint {where}: optimizer setting {key} = {str(value)[:40]} is not a "
                    f"valid value (expected like {expected!r}); the file was changed"
                )
        g = dict(g)
        g["params"] = [index[n] for n in g["params"]]
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# -------------------------------------------------------------------------------------------------------------
# save / load
# -------------------------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(
    out_dir: str | os.PathLike,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    state: Optional[dict] = None,
    keep: int = 1,
) -> Path:
    """Write model (+ optimizer) tensors and the JSON ``state``; returns the path of ``checkpoint.json``.

    ``state`` is any JSON-serialisable dict (epoch, step, config, history, ...); the architecture signature,
    optimizer hyper-parameters and RNG states are added here. Older tensor files beyond ``keep`` are removed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dict(state or {})
    tensors = {f"model/{k}": v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if optimizer is not None:
        opt_tensors, opt_meta = _split_optimizer(model, optimizer)
        tensors.update({k: v.detach().cpu().contiguous().clone() for k, v in opt_tensors.items()})
        state["optimizer"] = opt_meta
    name = f"checkpoint-{int(state.get('step', 0)):08d}.safetensors"
    with atomic_path(out / name) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    state.update(
        format=FORMAT,
        tensors_file=name,
        sha256=_sha256(out / name),
        signature=architecture_signature(model),
        rng=rng_state(),
    )
    atomic_write_text(out / STATE_FILE, json.dumps(state, indent=1, allow_nan=True))
    tensor_files = sorted(out.glob("checkpoint-*.safetensors"))
    for old in tensor_files[: max(0, len(tensor_files) - keep)]:
        if old.name != name:
            old.unlink()
    return out / STATE_FILE


#: Files a run writes into its folder: their presence means the folder holds a run.
RUN_FILES = ("config.toml", STATE_FILE, "metrics.json", "eval.json")
RUN_PATTERNS = ("checkpoint-*.safetensors", "events.out.tfevents.*")


def run_files(folder: str | os.PathLike) -> list[str]:
    """Names of the run files in ``folder`` (empty when it holds no run or does not exist)."""
    p = Path(folder)
    if not p.is_dir():
        return []
    names = [n for n in RUN_FILES if (p / n).exists()]
    for pattern in RUN_PATTERNS:
        names += sorted(q.name for q in p.glob(pattern))
    return names


def writable_folder(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a folder that exists or can be created and written; a :class:`ConfigError` naming ``option``
    otherwise (a file, a path through a file, a folder without write permission). Nothing is created here."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r} is a file, not a folder; give the path of a folder (created if missing)"
        )
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(
            f"{option} {str(path)!r}: {existing} is a file, so the folder cannot be created; give another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{option} {str(path)!r}: {existing} cannot be written (permission denied); give a folder you can write to"
        )
    return p


def check_run_folder(
    out_dir: str | os.PathLike, resume: bool, new_config_text: Optional[str] = None, option: str = "--out (out_dir)"
) -> None:
    """Refuse, before anything is written, a run that would overwrite another run's files.

    Without ``resume`` the folder must hold no run (:data:`RUN_FILES`). With ``resume`` and no checkpoint to
    continue, a folder holding files of a run is accepted only when its ``config.toml`` is ``new_config_text``
    (the same run, started again). Every message names the folder and a fix that fits what is on disk.
    """
    folder = writable_folder(out_dir, option)
    present = run_files(folder)
    if not present:
        return
    has_state = (folder / STATE_FILE).is_file()
    shown = _few(present, 5)
    if not resume:
        if has_state:
            fix = (
                f"Give a new {option} for this run, or add --resume to continue that run from its checkpoint "
                f"(with its recorded config unless you pass --config / --set)"
            )
        else:
            fix = (
                f"It has no checkpoint, so there is nothing to --resume; give a new {option} for this run, or "
                f"delete those files to start over in this folder"
            )
        raise ConfigError(
            f"{option} {str(out_dir)!r} already holds a run ({shown}); a new run would overwrite its "
            f"files, so nothing was written. {fix}"
        )
    if has_state:
        return
    recorded = folder / "config.toml"
    try:
        same = new_config_text is not None and recorded.is_file() and recorded.read_text("utf-8") == new_config_text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:
        raise ConfigError(
            f"{option} {str(out_dir)!r} holds files of a run ({shown}) but no {STATE_FILE}, so --resume "
            f"has nothing to continue, and starting here would overwrite them; nothing was written. "
            f"Give a new {option}, or delete those files to start over in this folder"
        )


def read_state(path: str | os.PathLike) -> tuple[dict, Path]:
    """The JSON state of the checkpoint at ``path`` (a run folder or its ``checkpoint.json``) and its folder."""
    p = Path(path)
    state_path = p / STATE_FILE if p.is_dir() else p
    if not state_path.is_file():
        raise CheckpointError(
            f"checkpoint {str(path)!r}: no {STATE_FILE} there; pass the out_dir of a training run "
            f"(it holds {STATE_FILE} and checkpoint-*.safetensors)"
        )
    try:
        if state_path.stat().st_size > 64 * 2**20:
            raise CheckpointError(
                f"checkpoint {state_path}: the JSON state is over 64 MiB; not an energyarch checkpoint"
            )
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON or not UTF-8 text
        raise CheckpointError(
            f"checkpoint {state_path}: cannot read the JSON state ({err}); the file is corrupt, "
            f"delete the folder or train again"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT or "tensors_file" not in state:
        raise CheckpointError(
            f"checkpoint {state_path}: not an energyarch checkpoint (format "
            f"{state.get('format') if isinstance(state, dict) else None!r}, expected {FORMAT!r})"
        )
    return state, state_path.parent


def _confined(folder: Path, name) -> Path:
    """The tensors file named in the JSON state, which must be a plain file name inside the run folder."""
    if (
        not isinstance(name, str)
        or not name.endswith(".safetensors")
        or name != Path(name).name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or "\x00" in name
    ):
        raise CheckpointError(
            f"checkpoint {folder}: {STATE_FILE} names tensors_file={str(name)[:80]!r}; it must be "
            f"the plain name of a .safetensors file in the run folder (no paths)"
        )
    path = folder / name
    if path.resolve().parent != folder.resolve():
        raise CheckpointError(
            f"checkpoint {folder}: tensors_file={name!r} resolves outside the run folder "
            f"(a link?); refusing to follow it"
        )
    return path


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    restore_rng: bool = False,
) -> dict:
    """Load weights (and optimizer state, RNG states) into ``model``; returns the JSON state.

    Raises :class:`CheckpointError` when files are missing or corrupt, or when the checkpoint's architecture
    signature differs from ``model``'s (the message names the mismatching tensors and config fields).
    """
    state, folder = read_state(path)
    tensor_path = _confined(folder, state["tensors_file"])
    if not tensor_path.is_file():
        raise CheckpointError(f"checkpoint {folder}: {STATE_FILE} points at {state['tensors_file']}, which is missing")
    if _sha256(tensor_path) != state.get("sha256"):
        raise CheckpointError(
            f"checkpoint {tensor_path}: sha256 differs from the one recorded in {STATE_FILE}; the "
            f"file is truncated or was changed"
        )
    compare_signatures(state.get("signature", {}), architecture_signature(model), str(folder))
    try:
        tensors = load_file(str(tensor_path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"checkpoint {tensor_path}: cannot read the tensors ({err})") from err
    model_sd = {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")}
    current = model.state_dict()
    missing, extra = sorted(set(current) - set(model_sd)), sorted(set(model_sd) - set(current))
    wrong = sorted(k for k in set(current) & set(model_sd) if tuple(model_sd[k].shape) != tuple(current[k].shape))
    if missing or extra or wrong:
        raise CheckpointError(
            f"checkpoint {tensor_path}: the tensors do not fit the model (missing {_few(missing)}, "
            f"unexpected {_few(extra)}, wrong shape {_few(wrong)}); the file was changed or "
            f"belongs to another model"
        )
    for k, v in model_sd.items():
        if v.dtype != current[k].dtype:
            raise CheckpointError(
                f"checkpoint {tensor_path}: tensor {k} is {v.dtype}, the model's is "
                f"{current[k].dtype}; convert the model with .to({v.dtype}) first"
            )
    model.load_state_dict(model_sd, strict=True)
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"checkpoint {folder}: holds no optimizer state; load it for evaluation only")
        opt = {k: v for k, v in tensors.items() if k.startswith("optim/")}
        _merge_optimizer(model, optimizer, opt, state["optimizer"], str(folder))
    if restore_rng and "rng" in state:
        set_rng_state(state["rng"])
    return state


# -------------------------------------------------------------------------------------------------------------
# a whole run
# -------------------------------------------------------------------------------------------------------------


def load_run(
    path: str | os.PathLike, device: str = "cpu", task: Optional[Task] = None, energy: Any = None, **overrides: Any
) -> tuple[Model, Task, TrainConfig, dict]:
    """Rebuild the model of a finished (or interrupted) run from its checkpoint: ``(model, task, cfg, state)``.

    ``overrides`` replace config fields (e.g. ``data_dir``, ``limit_test``) for building the task. A run whose
    energy has torch callables recorded only their fingerprint: pass the same energy back as ``energy=E`` (an
    ``ea.Energy`` or a term); another energy is refused.
    """
    state, folder = read_state(path)
    config = saved_config(state["config"])
    recorded = config.get("model", {}).get("terms") if isinstance(config.get("model"), dict) else None
    if isinstance(recorded, dict) and "python_energy" in recorded:
        config = _with_python_energy(config, recorded, energy, folder)
    elif energy is not None:
        raise ConfigError(
            f"load_run: run {folder} recorded its energy as a declaration; drop energy= (it is "
            f"rebuilt from {STATE_FILE})"
        )
    cfg = TrainConfig.from_dict(config, source=f"{folder / STATE_FILE} [config]")
    if overrides:
        cfg = TrainConfig.from_dict({**cfg.to_dict(), **overrides}, source="load_run overrides")
    if task is None:
        task = build_task(cfg)
    model = build_model(cfg.model, task.spec)
    load_checkpoint(folder, model)
    return model.to(distributed.resolve_device(device)), task, cfg, state


def _with_python_energy(config: Mapping[str, Any], recorded: dict, energy: Any, folder: Path) -> dict:
    """``config`` with the energy handed back from Python, after checking it against the recorded fingerprint."""
    names, fingerprint = recorded.get("names"), recorded["python_energy"]
    if energy is None:
        raise ConfigError(
            f"load_run: run {folder} was trained on an energy with torch callables (terms {names}), "
            f"recorded as its fingerprint {fingerprint}; pass the same energy back: "
            f"load_run(path, energy=E)"
        )
    energy = as_energy(energy)
    model = {**config["model"], "terms": energy}
    mine = energy_fingerprint(energy, model.get("d", ModelConfig().d))
    if mine != fingerprint:
        raise ConfigError(
            f"load_run: energy= (terms {energy.names}) is not the energy run {folder} was trained on "
            f"(fingerprint {mine}, recorded {fingerprint}, terms {names}); pass that energy"
        )
    return {**config, "model": model}
