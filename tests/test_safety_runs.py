"""Run folders under hostile and careless input (issue 16): a new run never overwrites another run's files, every
piece of advice fits the state on disk, and property-based searches over config files, ``--set`` strings,
mutated run folders and ``generate`` / ``eval`` arguments.

Every input either works or raises an :class:`~energyarch.errors.EnergyArchError` within a time bound; no file
outside the run folder is written; no previously saved file changes when an input is refused.

Profiles: ``ci`` (default, a few seconds per property) and ``dev`` (``HYPOTHESIS_PROFILE=dev``)::

    HYPOTHESIS_PROFILE=dev python -m pytest tests/test_safety_runs.py
"""

import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from energyarch.cli import main  # noqa: E402
from energyarch.errors import CheckpointError, ConfigError, EnergyArchError  # noqa: E402
from energyarch.train.config import TrainConfig  # noqa: E402

from conftest import TINY_SET  # noqa: E402

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
FEW = {"ci": 6, "dev": 150}.get(PROFILE, 6)  # examples of the properties that train or load a run
MANY = {"ci": 40, "dev": 1000}.get(PROFILE, 40)  # examples of the properties that only parse
SETTINGS = dict(deadline=None, derandomize=PROFILE == "ci", suppress_health_check=list(HealthCheck))
TIME_BOUND_S = 20.0  # per input: load a run, one training step (CPU, loaded host)


def snapshot(folder: Path) -> dict:
    """Path → sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def train_cli(out: Path, *extra: str) -> int:
    return main(["train", "--config", "digits", "--out", str(out), "--quiet", "--no-report", *TINY_SET, *extra])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny digits run (2 steps, checkpoint at the end of its epoch)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_cli(out) == 0
    assert (out / "checkpoint.json").is_file()
    return out


def _copy(run: Path, tmp: Path, name: str = "run") -> Path:
    dst = tmp / name
    shutil.copytree(run, dst)
    return dst


# ------------------------------------------------------------------------------------------------------------
# class 4: a new run never overwrites another run; advice fits the disk
# ------------------------------------------------------------------------------------------------------------


def test_a_new_run_into_a_finished_run_is_refused_before_anything_is_written(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    before = snapshot(run)
    assert train_cli(run, "--set", "lr=1e30", "--set", "grad_clip=0") == 2  # would diverge at step 2
    err = capsys.readouterr().err
    assert "--out" in err and "already holds a run" in err and "--resume" in err and "nothing was written" in err
    assert snapshot(run) == before


def test_a_folder_with_run_files_but_no_checkpoint_is_not_advised_to_resume(finished_run, tmp_path, capsys):
    run = tmp_path / "crashed"
    run.mkdir()
    shutil.copy(finished_run / "config.toml", run / "config.toml")
    before = snapshot(run)
    assert train_cli(run) == 2
    err = capsys.readouterr().err
    assert "nothing to --resume" in err and "add --resume" not in err
    assert (
        main(
            [
                "train",
                "--config",
                "digits",
                "--resume",
                "--out",
                str(run),
                "--quiet",
                "--no-report",
                *TINY_SET,
                "--set",
                "lr=0.5",
            ]
        )
        == 2
    )
    assert "no checkpoint.json, so --resume has nothing to continue" in capsys.readouterr().err
    assert snapshot(run) == before


def test_resume_into_a_folder_without_any_run_starts_it(tmp_path):
    assert (
        main(
            [
                "train",
                "--config",
                "digits",
                "--resume",
                "--out",
                str(tmp_path / "new"),
                "--quiet",
                "--no-report",
                *TINY_SET,
            ]
        )
        == 0
    )
    assert (tmp_path / "new" / "checkpoint.json").is_file()


def test_divergence_without_a_checkpoint_does_not_advise_resume(tmp_path, capsys):
    out = tmp_path / "diverges"
    assert train_cli(out, "--set", "lr=1e30", "--set", "grad_clip=0", "--set", "warmup_epochs=0") == 2
    err = capsys.readouterr().err
    assert "is nan" in err or "is inf" in err, err
    assert "nothing to resume" in err and "with --resume" not in err and "new --out" in err
    assert not (out / "checkpoint.json").exists()


@pytest.mark.parametrize("make", ["file", "through a file"])
def test_out_that_is_a_file_is_a_project_error(tmp_path, capsys, make):
    target = tmp_path / "f.txt"
    target.write_text("keep me")
    out = target if make == "file" else target / "run"
    assert train_cli(out) == 2
    assert "--out" in capsys.readouterr().err
    assert target.read_text() == "keep me"
    assert main(["eval", "--checkpoint", str(tmp_path), "--out", str(out)]) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_that_cannot_be_written_is_a_project_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert train_cli(locked / "run") == 2
    assert "cannot be written" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------------
# class 6: crafted checkpoints at --resume are refused at load, before anything is written
# ------------------------------------------------------------------------------------------------------------


def _resume(run: Path) -> int:
    return main(["train", "--resume", "--out", str(run), "--quiet", "--no-report", "--set", "epochs=2"])


@pytest.mark.parametrize(
    "field, value",
    [
        ("step", 10**30),
        ("step", -1),
        ("epoch", 2**64),
        ("batch_in_epoch", 10**9),
        ("epoch_loss", [1.0, -3]),
        ("elapsed_s", "soon"),
        ("step", True),
    ],
)
def test_counters_out_of_range_are_refused_at_resume(finished_run, tmp_path, capsys, field, value):
    run = _copy(finished_run, tmp_path)
    state = json.loads((run / "checkpoint.json").read_text())
    state[field] = value
    (run / "checkpoint.json").write_text(json.dumps(state))
    before = snapshot(run)
    assert _resume(run) == 2
    assert field.split("[")[0] in capsys.readouterr().err
    assert snapshot(run) == before


def _rewrite_tensors(run: Path, change) -> None:
    """Apply ``change`` to the checkpoint's tensors and record the new file's sha256 (a consistent forgery)."""
    from safetensors.torch import load_file, save_file

    state = json.loads((run / "checkpoint.json").read_text())
    path = run / state["tensors_file"]
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": state["format"]})
    state["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (run / "checkpoint.json").write_text(json.dumps(state))


def test_optimizer_state_of_the_wrong_shape_is_refused_at_load(finished_run, tmp_path, capsys):
    import torch

    run = _copy(finished_run, tmp_path)

    def change(tensors):
        key = next(k for k in tensors if k.startswith("optim/") and k.endswith("/exp_avg"))
        tensors[key] = torch.zeros(3, 1)

    _rewrite_tensors(run, change)
    before = snapshot(run)
    assert _resume(run) == 2
    assert "optimizer state" in capsys.readouterr().err
    assert snapshot(run) == before


# ------------------------------------------------------------------------------------------------------------
# properties: generated config files and --set strings
# ------------------------------------------------------------------------------------------------------------

KEYS = [f.name for f in __import__("dataclasses").fields(TrainConfig)]
MODEL_KEYS = [
    "d",
    "heads",
    "iters",
    "layers",
    "arch",
    "attention",
    "feedforward",
    "lora_scale",
    "norm_eps",
    "step_sizes",
    "solver",
    "time_freq",
    "ff_ratio",
    "mode",
]
scalars = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["", "digits", "log(x)", "__import__('os')", "inf", "nan"]),
)
toml_values = st.one_of(
    scalars.map(
        lambda v: (
            json.dumps(v)
            if not isinstance(v, float) or v == v and abs(v) != float("inf")
            else {True: "inf", False: "nan"}[v == v]
        )
    ),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 3000).map(lambda n: "{ a = " * n + "1" + " }" * n),
    st.lists(st.integers(-5, 40), max_size=4).map(str),
    st.sampled_from(
        [
            '{ f = "log(x)", K = "exp(beta*s)" }',
            '{ solver = "adam", eps = 0.0 }',
            "[1, [2, [3]]]",
            '"\\ud800"',
            "1e999",
            "-0",
            "0x10",
        ]
    ),
)


def _toml_line(key, value):
    return f"{key} = {value}"


config_texts = st.builds(
    lambda top, model, junk: "\n".join([*top, "[model]", *model, junk]),
    st.lists(st.builds(_toml_line, st.sampled_from(KEYS + ["haeds", "model.d"]), toml_values), max_size=5),
    st.lists(st.builds(_toml_line, st.sampled_from(MODEL_KEYS), toml_values), max_size=4),
    st.sampled_from(["", "[model]", "= =", "a.b.c = 1", "\x00", "[[x]]"]),
)


def _works_or_names(fn, *names: str) -> None:
    """``fn()`` works or raises an EnergyArchError (ConfigError) within the time bound."""
    start = time.monotonic()
    try:
        fn()
    except EnergyArchError as err:
        assert str(err).strip(), "an empty error message"
        assert not names or any(n in str(err) for n in names), str(err)
    assert time.monotonic() - start < TIME_BOUND_S


@settings(max_examples=MANY, **SETTINGS)
@given(text=config_texts, encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]))
def test_property_generated_config_files_load_or_raise_a_project_error(tmp_path_factory, text, encoding):
    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "c.toml"
    try:
        path.write_bytes(text.encode(encoding))
    except UnicodeEncodeError:
        return
    _works_or_names(lambda: TrainConfig.load(path), str(path), "TrainConfig", "config", "ModelConfig")
    assert sorted(p.name for p in folder.iterdir()) == ["c.toml"]  # loading writes nothing


set_keys = st.one_of(
    st.sampled_from(KEYS),
    st.sampled_from(MODEL_KEYS).map(lambda k: f"model.{k}"),
    st.sampled_from(
        [
            "model.attention.f",
            "model.attention.f.x",
            "model.feedforward.g.h.i",
            "model",
            "",
            "a.b.c",
            "model.solver.eps",
            "..",
            "model.attention.K",
        ]
    ),
)
set_strings = st.one_of(st.builds(lambda k, v: f"{k}={v}", set_keys, toml_values), st.text(max_size=30))


@settings(max_examples=MANY, **SETTINGS)
@given(assignments=st.lists(set_strings, min_size=1, max_size=3))
def test_property_set_strings_apply_or_raise_a_project_error(assignments):
    base = TrainConfig().with_overrides(['model.attention={ f = "log(x)", K = "exp(beta*s)" }'])
    _works_or_names(lambda: base.with_overrides(assignments), "--set", "TrainConfig", "ModelConfig", "model")


# ------------------------------------------------------------------------------------------------------------
# property: mutated run folders at --resume (JSON, TOML, safetensors header and body, optimizer state)
# ------------------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6,
)
STATE_FIELDS = [
    "step",
    "epoch",
    "batch_in_epoch",
    "epoch_loss",
    "elapsed_s",
    "history",
    "speed",
    "config",
    "tensors_file",
    "sha256",
    "format",
    "rng",
    "optimizer",
    "signature",
    "world_size",
]


def _mutate_json(run, field, value, _data):
    state = json.loads((run / "checkpoint.json").read_text())
    state[field] = value
    (run / "checkpoint.json").write_text(json.dumps(state, allow_nan=True))


def _mutate_json_bytes(run, _field, _value, data):
    raw = bytearray((run / "checkpoint.json").read_bytes())
    pos, new = data
    raw[pos % len(raw)] = new
    (run / "checkpoint.json").write_bytes(bytes(raw))


def _mutate_toml(run, _field, value, _data):
    (run / "config.toml").write_text(f"lr = {json.dumps(value)}\n[model]\nd = {json.dumps(value)}\n")


def _mutate_header(run, _field, _value, data):
    state = json.loads((run / "checkpoint.json").read_text())
    path = run / state["tensors_file"]
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    pos, new = data
    if pos % 3 == 0:
        raw[:8] = struct.pack("<Q", (n * (new + 2)) % 2**64)  # header length wrong
    else:
        raw[8 + pos % n] = new  # a byte of the JSON header
    path.write_bytes(bytes(raw))
    if pos % 2:  # a consistent forgery: the sha256 recorded too
        state["sha256"] = hashlib.sha256(bytes(raw)).hexdigest()
        (run / "checkpoint.json").write_text(json.dumps(state))


def _mutate_body(run, _field, _value, data):
    import torch

    pos, new = data

    def change(tensors):
        keys = sorted(tensors)
        key = keys[pos % len(keys)]
        t = tensors[key]
        if new % 4 == 0:
            tensors[key] = torch.zeros(*(s + 1 for s in t.shape)) if t.dim() else torch.zeros(2)
        elif new % 4 == 1:
            tensors[key] = torch.full_like(t.float(), float("nan"))
        elif new % 4 == 2:
            tensors[key] = t.to(torch.float64)
        else:
            del tensors[key]

    _rewrite_tensors(run, change)


MUTATIONS = {
    "json field": _mutate_json,
    "json bytes": _mutate_json_bytes,
    "config.toml": _mutate_toml,
    "safetensors header": _mutate_header,
    "safetensors body / optimizer state": _mutate_body,
}


@settings(max_examples=FEW, **SETTINGS)
@given(
    kind=st.sampled_from(sorted(MUTATIONS)),
    field=st.sampled_from(STATE_FIELDS),
    value=json_values,
    data=st.tuples(st.integers(0, 2**20), st.integers(0, 255)),
)
def test_property_mutated_run_folders_resume_or_raise_without_changing_saved_files(
    finished_run, tmp_path_factory, kind, field, value, data
):
    parent = tmp_path_factory.mktemp("mutated")
    run = _copy(finished_run, parent)
    MUTATIONS[kind](run, field, value, data)
    before, outside = snapshot(run), sorted(p.name for p in parent.iterdir())
    start = time.monotonic()
    try:
        status = main(
            [
                "train",
                "--resume",
                "--out",
                str(run),
                "--quiet",
                "--no-report",
                "--set",
                "max_steps=3",
                "--set",
                "epochs=2",
            ]
        )
    except EnergyArchError:  # pragma: no cover - main turns these into status 2
        status = 2
    assert time.monotonic() - start < TIME_BOUND_S
    assert sorted(p.name for p in parent.iterdir()) == outside, "a file was written outside the run folder"
    if status != 0:  # new files (a TensorBoard event file) may appear; no file saved before may change
        after = snapshot(run)
        assert all(after.get(name) == digest for name, digest in before.items()), (
            f"a refused resume ({kind}) changed saved files"
        )


# ------------------------------------------------------------------------------------------------------------
# property: generate and eval arguments
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def text_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    (folder / "t.txt").write_text("def f(x):\n    return x + 1\n" * 40)
    out = folder / "run"
    assert (
        main(
            [
                "train",
                "--config",
                "text_small",
                "--out",
                str(out),
                "--quiet",
                "--no-report",
                "--set",
                "model.arch=transformer",
                "--set",
                f"text_path={json.dumps(str(folder / 't.txt'))}",
                "--set",
                "model.d=16",
                "--set",
                "model.heads=2",
                "--set",
                "model.iters=1",
                "--set",
                "model.time_freq=8",
                "--set",
                "seq_len=8",
                "--set",
                "batch_size=4",
                "--set",
                "limit_train=8",
                "--set",
                "limit_test=4",
                "--set",
                "epochs=1",
            ]
        )
        == 0
    )
    return out


prompts = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=8).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["\ud800", "a\udcffb", "\x00", "é" * 5]),
)
temperatures = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 5e-324, 1e-300, 1e6]))


@settings(max_examples=MANY // 2, **SETTINGS)
@given(
    prompt=prompts,
    temperature=temperatures,
    top_k=st.integers(-3, 300),
    seed=st.integers(-(2**70), 2**70),
    max_bytes=st.one_of(st.integers(-3, 4), st.integers(10**6 + 1, 2**70)),
    iters=st.one_of(st.none(), st.integers(-2, 3), st.integers(10**4 + 1, 2**40)),
)
def test_property_generate_arguments_work_or_raise_a_project_error(
    text_run, prompt, temperature, top_k, seed, max_bytes, iters
):
    from energyarch.train.generate import generate_from_run

    before = snapshot(text_run)
    out = {}

    def run():
        out["text"] = generate_from_run(
            text_run, prompt, max_bytes=max_bytes, temperature=temperature, top_k=top_k, seed=seed, iters=iters
        )

    _works_or_names(run, "prompt", "temperature", "top_k", "seed", "max_bytes", "iters")
    if "text" in out:
        assert isinstance(out["text"], str)
    assert snapshot(text_run) == before


iters_text = st.one_of(
    st.text(max_size=10),
    st.lists(st.integers(-3, 2**40), max_size=4).map(lambda v: ",".join(map(str, v))),
    st.sampled_from(["1" * 5000, "1,,2", " 8 , 16 ", "1e3", "nan"]),
)


@settings(max_examples=MANY, **SETTINGS)
@given(iters=iters_text, tols=iters_text)
def test_property_eval_iteration_and_tolerance_lists_parse_or_raise(iters, tols):
    from energyarch.train.cli import MAX_EVAL_ITERS, _parse_iters, _parse_tols

    out = {}

    def parse():
        out["iters"], out["tols"] = _parse_iters(iters), _parse_tols(tols)

    _works_or_names(parse, "--iters", "--adaptive-tol")
    if "iters" in out:
        assert all(1 <= v <= MAX_EVAL_ITERS for v in out["iters"])
        assert all(0 <= v < float("inf") for v in out["tols"])


def test_eval_with_a_careless_argument_changes_no_saved_file(finished_run, tmp_path, capsys):
    run = _copy(finished_run, tmp_path)
    before = snapshot(run)
    for args in (
        ["--iters", "0"],
        ["--iters", "99999999"],
        ["--adaptive-tol", "nan"],
        ["--adaptive-max", "-1"],
        ["--limit-test", "-4"],
    ):
        assert main(["eval", "--checkpoint", str(run), *args]) == 2, args
        assert capsys.readouterr().err.startswith("energyarch: error: --")
    assert snapshot(run) == before
    assert isinstance(CheckpointError("x"), EnergyArchError) and isinstance(ConfigError("x"), EnergyArchError)
