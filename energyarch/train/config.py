"""Training configuration: one dataclass, one comment per field, loaded from TOML with a nested ``[model]`` table.

Unknown keys and wrong types are errors that name the key, the value and the valid choices; the config dumps to
TOML or JSON and loads back to an equal object.

>>> cfg = TrainConfig.from_toml_string('task = "digits"\\nepochs = 2\\n[model]\\nd = 32\\nheads = 2')
>>> cfg.epochs, cfg.model.d
(2, 32)
>>> TrainConfig.from_toml_string(cfg.to_toml()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .._atomic import atomic_open
from ..errors import ConfigError
from ..models import ModelConfig
from ..models.record import energy_fields
from .registry import TASKS  # task name → builder, filled by energyarch.train.tasks (@register_task)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")

#: valid TOML keys of the ``[model]`` table (ModelConfig fields; attention / feedforward may be sub-tables)
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))


@dataclass
class TrainConfig:
    """Everything a training run needs; ``model`` is the architecture (:class:`ModelConfig`)."""

    # --- what to learn -------------------------------------------------------------------------------------
    task: str = "digits"  # 'sudoku' | 'digits' | 'fashion_mnist' | 'cifar10' | 'cifar100' | 'text'
    data_dir: Optional[str] = None  # Fashion-MNIST / CIFAR folder; Sudoku cache folder (default ~/.cache/energyarch)
    model: ModelConfig = field(default_factory=ModelConfig)  # the architecture ([model] table)
    # --- optimisation (AdamW, linear warmup then cosine decay to min_lr) -------------------------------------
    epochs: int = 10  # passes over the training set; sets the length of the learning-rate schedule
    batch_size: int = 64  # global batch (split evenly across data-parallel processes)
    eval_batch_size: int = 0  # evaluation batch; 0 = 2 * batch_size
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 1e-5  # learning rate at the end of the cosine decay
    weight_decay: float = 5e-5  # AdamW decoupled weight decay
    betas: tuple = (0.9, 0.999)  # AdamW (beta1, beta2)
    warmup_epochs: float = 0.0  # linear warmup length in epochs (fractions allowed)
    warmup_steps: int = 0  # linear warmup length in optimizer steps; > 0 overrides warmup_epochs
    grad_clip: float = 1.0  # clip the global gradient norm to this value; 0 = no clipping
    loss_on: str = "last"  # 'last': loss on the final iteration (paper) | 'all': mean over every iteration
    # --- evaluation, checkpoints, logging ------------------------------------------------------------------
    eval_every: int = 1  # evaluate on the test split every this many epochs (and always at the end); 0 = end only
    eval_iters: list = field(default_factory=list)  # test-time iterations of the sweep (Fig. 3b); [] = T/4 .. 2T
    diagnostics_samples: int = 256  # test examples used for the energy / rank / angle curves (Figs. 5-6)
    checkpoint_every: int = 0  # also checkpoint every this many steps; 0 = at the end of each epoch only
    seed: int = 0  # seeds initialisation, data order and augmentation
    out_dir: str = "runs/run"  # checkpoints, metrics.json, config.toml and plots go here
    num_workers: int = 0  # DataLoader worker processes
    progress: bool = True  # tqdm progress bar (rank 0 only)
    device: str = "auto"  # 'cpu' | 'cuda' | 'auto' (cuda when available)
    # --- speed ---------------------------------------------------------------------------------------------
    precision: str = "auto"  # 'fp32' | 'bf16' (autocast, fp32 master weights) | 'auto' (bf16 on CUDA, fp32 on CPU)
    compile: bool = False  # torch.compile the model (fullgraph; falls back to graph breaks with a logged reason)
    # --- limits for tiny runs ------------------------------------------------------------------------------
    max_steps: int = 0  # stop after this many optimizer steps in total (the schedule is unchanged); 0 = no limit
    limit_train: int = 0  # use only the first n training examples; 0 = all
    limit_test: int = 0  # use only the first n test examples; 0 = all
    # --- images ------------------------------------------------------------------------------------------
    patch_size: int = 0  # side of a square patch; 0 = task default (digits 2, Fashion-MNIST 4, CIFAR 8)
    normalize: bool = True  # standardise images with the training mean / std per channel
    augment: bool = False  # random crop (pad 1/8 of the side) + horizontal flip of training images
    # --- Sudoku ------------------------------------------------------------------------------------------
    n_train: int = 9000  # generated training puzzles (or rows read from sudoku_csv_train)
    n_test: int = 1000  # generated test puzzles (or rows read from sudoku_csv_test)
    min_givens: int = 17  # fewest given digits of a generated puzzle (Palm et al.: 17-34)
    max_givens: int = 34  # most given digits of a generated puzzle
    minimal: bool = True  # generate minimal puzzles first, then add givens back (RRN-style)
    data_seed: int = 0  # seed of the generated puzzles (kept apart from seed so runs share one test set)
    processes: int = 2  # worker processes for puzzle generation (the puzzles do not depend on it)
    sudoku_csv_train: Optional[str] = None  # Palm et al. CSV (quizzes,solutions) used instead of generating
    sudoku_csv_test: Optional[str] = None  # Palm et al. CSV for the test split
    # --- text (byte-level language modelling) ---------------------------------------------------------------
    text_path: Optional[str] = None  # UTF-8 text file or folder (*.txt, *.md, *.py); None = the embedded corpus
    #   (Python standard-library sources); data_dir is used when text_path is unset
    seq_len: int = 128  # context length in bytes (training windows of seq_len + 1 bytes; the learned positions)

    def __post_init__(self):
        if isinstance(self.model, Mapping):
            self.model = model_config_from_dict(self.model, source="TrainConfig(model=...)")
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"TrainConfig.model={self.model!r}: give a ModelConfig or a dict of its fields")
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        if isinstance(self.eval_iters, tuple):
            self.eval_iters = list(self.eval_iters)
        for name, value in self.__dict__.items():
            if name != "model":
                _check_type(name, value, _TYPES[name], "TrainConfig")
        _choice("task", self.task, TASKS)
        _choice("device", self.device, DEVICES)
        _choice("loss_on", self.loss_on, ("last", "all"))
        _choice("precision", self.precision, PRECISIONS)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "must be >= 1")
        for name in (
            "eval_batch_size",
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "num_workers",
            "max_steps",
            "limit_train",
            "limit_test",
            "patch_size",
            "n_train",
            "n_test",
            "diagnostics_samples",
        ):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "must be >= 0 (0 means off / default)")
        for name in ("lr", "min_lr", "weight_decay", "warmup_epochs", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                _fail(name, value, "must be a finite number >= 0")
        if self.lr <= 0 or self.min_lr > self.lr:
            _fail(
                "min_lr" if self.lr > 0 else "lr",
                self.min_lr if self.lr > 0 else self.lr,
                f"need 0 < lr and min_lr <= lr (lr={self.lr}, min_lr={self.min_lr})",
            )
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail("betas", self.betas, "give two numbers in [0, 1), e.g. betas = [0.9, 0.999]")
        if any(k < 1 for k in self.eval_iters):
            _fail("eval_iters", self.eval_iters, "every entry must be an iteration count >= 1, e.g. [8, 16, 32]")
        if self.processes < 1:
            _fail("processes", self.processes, "must be >= 1")
        if self.seq_len < 1:
            _fail("seq_len", self.seq_len, "must be >= 1 (context length in bytes), e.g. seq_len = 128")
        for name in ("seed", "data_seed"):  # numpy's SeedSequence refuses negative seeds mid-run
            if not 0 <= getattr(self, name) < 2**63:
                _fail(name, getattr(self, name), "must be an integer in [0, 2**63), e.g. seed = 0")
        if self.text_path is not None and not self.text_path.strip():
            _fail(
                "text_path",
                self.text_path,
                "is empty: give a UTF-8 text file or a folder of them, or leave "
                "text_path out to train on the embedded corpus",
            )
        for name in ("out_dir", "data_dir", "sudoku_csv_train", "sudoku_csv_test"):
            value = getattr(self, name)
            if value is not None and (not value.strip() or "\x00" in value):
                _fail(name, value, "must be a non-empty path without NUL characters")

    # ---------------------------------------------------------------------------------------------------------
    # dict / TOML / JSON
    # ---------------------------------------------------------------------------------------------------------

    def to_dict(self, python_energy: bool = False) -> dict:
        """Plain data (the model as a nested dict; ``None`` fields are left out, as TOML has no null). With
        ``python_energy`` an energy with torch callables is written as its fingerprint (see
        :func:`model_config_to_dict`) instead of raising ConfigError."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "model":
                value = model_config_to_dict(value, python_energy)
            elif isinstance(value, tuple):
                value = list(value)
            if value is not None:
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Build from plain data; unknown keys and wrong types raise :class:`ConfigError` naming ``source``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a table of settings, got {type(data).__name__}")
        valid = [f.name for f in dataclasses.fields(cls)]
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in valid:
                raise ConfigError(
                    f"{source}: unknown key {key!r}{_suggest(key, valid)}; valid keys: {', '.join(valid)}"
                )
            if key == "model":
                value = model_config_from_dict(value, source=f"{source} [model]")
            else:
                _check_type(key, value, _TYPES[key], source)
            kwargs[key] = value
        return cls(**kwargs)

    def to_toml(self) -> str:
        """TOML text with top-level settings first and the ``[model]`` table last."""
        data = self.to_dict()
        model = data.pop("model")
        lines = [f"{k} = {_toml_value(v)}" for k, v in data.items()]
        tables = {k: v for k, v in model.items() if isinstance(v, dict)}  # inline energy declarations
        arrays = {k: v for k, v in model.items() if isinstance(v, list) and v and all(isinstance(t, dict) for t in v)}
        lines += ["", "[model]"] + [
            f"{k} = {_toml_value(v)}" for k, v in model.items() if k not in tables and k not in arrays
        ]
        for name, table in tables.items():
            lines += ["", f"[model.{name}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        for name, array in arrays.items():  # [[model.terms]]: one table per term
            for table in array:
                lines += ["", f"[[model.{name}]]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_toml_string(cls, text: str, source: str = "<string>") -> "TrainConfig":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{source}: not valid TOML ({err})") from err
        except (RecursionError, MemoryError):
            raise ConfigError(
                f"{source}: nests too deeply to read; a config is a table of settings with a [model] "
                f"table (and inline energy tables) inside"
            ) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        """Read a ``.toml`` or ``.json`` file, or a packaged config by name (``TrainConfig.load("digits")``)."""
        p = Path(path)
        if not p.is_file() and not p.suffix and not p.parent.parts:
            p = packaged_configs().get(p.name, p)
        if not p.is_file():
            raise ConfigError(
                f"config file {str(p)!r} does not exist; pass a .toml file such as energyarch/train/configs/digits.toml"
            )
        try:
            if p.stat().st_size > MAX_CONFIG_BYTES:
                raise ConfigError(
                    f"config file {str(p)!r} is {p.stat().st_size} bytes; a config is a few KB (limit "
                    f"{MAX_CONFIG_BYTES}); pass the .toml file of a run"
                )
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"config file {str(p)!r} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
            ) from None
        except OSError as err:
            raise ConfigError(
                f"config file {str(p)!r} cannot be read ({err.strerror or err}); pass a readable .toml file"
            ) from None
        if p.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{p}: not valid JSON ({err})") from err
            except (RecursionError, MemoryError):
                raise ConfigError(f"{p}: nests too deeply to read; a config is a table of settings") from None
            return cls.from_dict(data, source=str(p))
        return cls.from_toml_string(text, source=str(p))

    def save(self, path: str | os.PathLike) -> Path:
        """Write TOML (or JSON when the suffix is ``.json``) atomically; returns the path."""
        p = Path(path)
        atomic_write_text(p, self.to_json() if p.suffix == ".json" else self.to_toml())
        return p

    def with_overrides(self, assignments: Sequence[str]) -> "TrainConfig":
        """Apply ``key=value`` / ``model.key=value`` strings (values in TOML syntax; bare words are strings).

        >>> TrainConfig().with_overrides(["model.d=32", "model.heads=2", "lr=3e-4"]).model.d
        32
        """
        data = self.to_dict()
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set {item!r}: write KEY=VALUE, e.g. --set model.d=128 or --set lr=3e-4")
            key, raw = (s.strip() for s in item.split("=", 1))
            try:
                value = parse_value(raw)
            except (RecursionError, MemoryError):
                raise ConfigError(
                    f"--set {_short(item)}: the value nests too deeply; give a number, a string, a "
                    f'list or an inline table such as {{ f = "log(x)" }}'
                ) from None
            parts = key.split(".")
            if len(parts) == 2 and parts[0] == "model":
                data["model"][parts[1]] = value
            elif len(parts) > 2 and parts[0] == "model" and parts[1] in _NESTED_MODEL_TABLES:
                table = data["model"].get(parts[1])
                if table is None and parts[1] in ("solvers", "solver_params"):  # tables that start empty
                    table = data["model"][parts[1]] = {}
                if not isinstance(table, dict):
                    raise ConfigError(
                        f"--set {item!r}: model.{parts[1]} is {table!r}, not an inline declaration; "
                        f'set the whole term, e.g. --set \'model.{parts[1]}={{ f = "log(x)", '
                        f'K = "exp(beta*s)" }}\''
                    )
                for part in parts[2:-1]:
                    table = table.setdefault(part, {})
                    if not isinstance(table, dict):
                        raise ConfigError(
                            f"--set {_short(item)}: {'.'.join(parts[: parts.index(part) + 1])} is "
                            f"{repr(table)[:80]}, not a table; set it whole, e.g. --set "
                            f"'{'.'.join(parts[: parts.index(part) + 1])}=...'"
                        )
                table[parts[-1]] = value
            elif len(parts) == 1 and parts[0] != "model":
                data[key] = value
            else:
                raise ConfigError(
                    f"--set {item!r}: key {key!r} must be a top-level key or model.<key>, e.g. model.d=128"
                )
        return TrainConfig.from_dict(data, source="--set overrides")


# -------------------------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------------------------

#: the model tables whose keys ``--set model.<table>.<key>...=VALUE`` reaches one by one
_NESTED_MODEL_TABLES = ("attention", "feedforward", "solvers", "solver_params")

_TYPES: dict[str, Any] = {
    "task": str,
    "data_dir": (str, type(None)),
    "epochs": int,
    "batch_size": int,
    "eval_batch_size": int,
    "lr": float,
    "min_lr": float,
    "weight_decay": float,
    "betas": ("list", float),
    "warmup_epochs": float,
    "warmup_steps": int,
    "grad_clip": float,
    "loss_on": str,
    "eval_every": int,
    "eval_iters": ("list", int),
    "diagnostics_samples": int,
    "checkpoint_every": int,
    "seed": int,
    "out_dir": str,
    "num_workers": int,
    "progress": bool,
    "device": str,
    "max_steps": int,
    "limit_train": int,
    "limit_test": int,
    "patch_size": int,
    "normalize": bool,
    "augment": bool,
    "n_train": int,
    "n_test": int,
    "min_givens": int,
    "max_givens": int,
    "minimal": bool,
    "data_seed": int,
    "processes": int,
    "sudoku_csv_train": (str, type(None)),
    "sudoku_csv_test": (str, type(None)),
    "precision": str,
    "compile": bool,
    "text_path": (str, type(None)),
    "seq_len": int,
}

_EXAMPLES = {int: "10", float: "1e-3", str: '"text"', bool: "true"}


def _type_name(expected) -> str:
    if isinstance(expected, tuple) and expected and expected[0] == "list":
        return f"a list of {expected[1].__name__}"
    if isinstance(expected, tuple):
        return " or ".join("none" if t is type(None) else t.__name__ for t in expected)
    return expected.__name__


def _is(value, expected) -> bool:
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


def _check_type(name: str, value, expected, source: str) -> None:
    if isinstance(expected, tuple) and expected and expected[0] == "list":
        ok = isinstance(value, (list, tuple)) and all(_is(v, expected[1]) for v in value)
    elif isinstance(expected, tuple):
        ok = any(_is(value, t) for t in expected)
    else:
        ok = _is(value, expected)
    if not ok:
        example = _EXAMPLES.get(expected, "[8, 16]" if isinstance(expected, tuple) else "...")
        raise ConfigError(
            f"{source}: {name} = {value!r} ({type(value).__name__}) has the wrong type; expected "
            f"{_type_name(expected)}, e.g. {name} = {example}"
        )


def _fail(name: str, value, fix: str):
    raise ConfigError(f"TrainConfig.{name}={value!r}: {fix}")


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        _fail(name, value, f"choose one of {tuple(choices)}")


def _suggest(key: str, valid: Sequence[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def model_config_to_dict(cfg: ModelConfig, python_energy: bool = False) -> dict:
    """ModelConfig → plain dict; the energy is written as names or inline declarations (``[model.attention]`` and
    ``[model.feedforward]``, or ``[[model.terms]]`` tables for other families, interactions and names).

    An energy with a torch callable cannot be written: a ConfigError says so, unless ``python_energy``, which
    writes its fingerprint instead (``terms = { python_energy = ..., names = [...] }``; see
    :func:`energyarch.models.terms.energy_fields`), for ``load_run(path, energy=E)``."""
    energy, why = energy_fields(cfg)
    if why and not python_energy:
        raise ConfigError(
            f"the model's energy cannot be written as a declaration: {why}. The run records the "
            f"energy's fingerprint {energy['terms']['python_energy']} instead; reload it from Python "
            f"with energyarch.train.load_run(path, energy=E), passing the same energy E (another "
            f"energy is refused)"
        )
    out = {}
    for f in dataclasses.fields(cfg):
        if f.name in ("attention", "feedforward", "terms"):
            if energy.get(f.name) is not None:
                out[f.name] = json.loads(json.dumps(energy[f.name]))  # a plain copy
            continue
        out[f.name] = getattr(cfg, f.name)
    return out


#: [model] values that configs saved before the field existed implicitly had (their runs used them)
SAVED_MODEL_DEFAULTS = {"steps": "free"}


def saved_config(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """A run's saved config (``checkpoint.json``'s ``config``) with the values it implicitly had filled in: a run
    saved before ``[model] steps`` existed trained with the paper's free steps (today's default is 'descent')."""
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping) or model.get("arch", "hyperset") != "hyperset":
        return data
    return {**data, "model": {**SAVED_MODEL_DEFAULTS, **model}}


def model_config_from_dict(data: Mapping[str, Any], source: str = "[model]") -> ModelConfig:
    """Plain dict → ModelConfig; unknown keys and wrong types raise ConfigError naming them and ``source``."""
    if isinstance(data, ModelConfig):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a table of model settings, got {type(data).__name__} {data!r}")
    defaults = ModelConfig()
    for key, value in data.items():
        if key not in MODEL_KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_suggest(key, MODEL_KEYS)}; valid keys: {', '.join(MODEL_KEYS)}"
            )
        if key == "terms":
            continue  # checked by ModelConfig (models/terms.py)
        if key in ("attention", "feedforward"):
            if not isinstance(value, (str, Mapping)):
                raise ConfigError(
                    f"{source}: {key} = {value!r} has the wrong type; give a name, e.g. {key} = "
                    f'"{"tanh-kernel" if key == "attention" else "softplus-ff"}", or a '
                    f"[model.{key}] table"
                )
            continue
        if key == "norm_eps" and value == "machine":
            continue
        default = getattr(defaults, key)
        expected = float if isinstance(default, float) else type(default)
        _check_type(key, value, expected, source)
    try:
        return ModelConfig(**dict(data))
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


#: Largest config file read (a config is a few KB).
MAX_CONFIG_BYTES = 1 << 20


def _short(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} characters)"


def parse_value(raw: str):
    """A command-line value in TOML syntax (``128``, ``3e-4``, ``true``, ``[8, 16]``); anything else is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")  # pragma: no cover


def packaged_configs() -> dict[str, Path]:
    """Name → path of the example configs shipped in ``energyarch/train/configs``."""
    folder = resources.files("energyarch.train") / "configs"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def resolve_config(name: str) -> Path:
    """A path to a config file, or the name of a packaged one (``digits`` → configs/digits.toml)."""
    p = Path(name)
    if p.is_file():
        return p
    known = packaged_configs()
    if name in known or p.stem in known and not p.parent.parts:
        return known[p.stem]
    raise ConfigError(
        f"--config {name!r}: no such file; give a path to a .toml file or one of the packaged "
        f"configs: {', '.join(sorted(known))}"
    )


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file in the same folder, then ``os.replace`` it onto ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(p, "w") as fh:
        fh.write(text)
