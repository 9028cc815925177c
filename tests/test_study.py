"""Design studies (energyarch.study): study files, workers sharing an Optuna storage, retries, reports.

The worker tests run real (tiny) trainings on the embedded digits: two optimisation steps each.
"""

from __future__ import annotations

import csv
import glob
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from energyarch.cli import main  # noqa: E402
from energyarch.errors import ConfigError  # noqa: E402
from energyarch.study import load_stored_study, load_study, run_study, write_report  # noqa: E402
from energyarch.study.spec import StudySpec  # noqa: E402
from energyarch.study.stats import mean_interval, paired_differences, t_quantile  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

#: a tiny training: two optimisation steps of a 16-wide layer on 64 digits
TINY_SET = {
    "epochs": "1",
    "max_steps": "2",
    "limit_train": "64",
    "limit_test": "64",
    "batch_size": "16",
    "diagnostics_samples": "8",
    '"model.d"': "16",
    '"model.heads"': "2",
    '"model.iters"': "2",
    '"model.time_freq"': "8",
}


def tiny_study(
    tmp_path: Path,
    name: str = "tiny",
    grid: str = '"model.attention" = ["bisoftmax", "linear"]\n"model.feedforward" = ["relu", "softmax"]',
    seeds: str = "[0]",
    extra: str = "",
    sets: dict | None = None,
) -> Path:
    path = tmp_path / f"{name}.toml"
    lines = "\n".join(f"{k} = {v}" for k, v in {**TINY_SET, **(sets or {})}.items())
    path.write_text(
        f'[study]\nname = "{name}"\nbase = "digits"\nseeds = {seeds}\nheartbeat = 1\n{extra}\n'
        f"[study.set]\n{lines}\n[grid]\n{grid}\n",
        encoding="utf-8",
    )
    return path


def _trials(url: str):
    return load_stored_study(url).get_trials(deepcopy=False)


def _complete_points(trials) -> list:
    return [tuple(sorted(t.params.items())) for t in trials if t.state.name == "COMPLETE"]


# -------------------------------------------------------------------------------------------------------------
# study files
# -------------------------------------------------------------------------------------------------------------

BAD = [
    ('[study]\nname = "x"\nseeds = [0]\n', "base"),
    ('[study]\nname = "x"\nbase = "no-such-config"\n', "base"),
    ('[study]\nname = "x"\nbase = "digits"\nseeds = [0, 0]\n', "seeds"),
    ('[study]\nname = "x"\nbase = "digits"\nworkers = 0\n', "workers"),
    ('[study]\nname = "x"\nbase = "digits"\nsede = [0]\n', "'sede'"),
    ('[study]\nname = "has space"\nbase = "digits"\n', "name"),
    ('[study]\nname = "x"\nbase = "digits"\n[grid]\n"model.attention" = "linear"\n', "model.attention"),
    ('[study]\nname = "x"\nbase = "digits"\n[grid]\n"model.attention" = ["nope"]\n', "attention"),
    ('[study]\nname = "x"\nbase = "digits"\n[grid]\n"model.dd" = [1, 2]\n', "dd"),
    ('[study]\nname = "x"\nbase = "digits"\n[study.set]\nepochs = "ten"\n', "epochs"),
    ('[study]\nname = "x"\nbase = "digits"\nbaseline = "relu"\n[grid]\n"model.attention" = ["linear"]\n', "baseline"),
    (
        '[study]\nname = "x"\nbase = "digits"\n[search]\n"model.fixed_step" = { low = 1.0, high = 0.1 }\n',
        "model.fixed_step",
    ),
    (
        '[study]\nname = "x"\nbase = "digits"\nsampler = "tpe"\n[search]\n"model.fixed_step" = { low = 0.1, '
        "high = 1.0 }\n",
        "trials",
    ),
    ('[study]\nname = "x"\nbase = "digits"\n[grid]\nseed = [1, 2]\n', "seed"),
    ('[study]\nname = "x"\nbase = "digits"\n[gird]\n', "gird"),
    ("[study\n", "TOML"),
]


@pytest.mark.parametrize("text,key", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_study_files_are_project_errors_naming_the_key(text, key):
    with pytest.raises(ConfigError) as info:
        StudySpec.from_toml_string(text, source="s.toml")
    assert key in str(info.value)


def test_study_file_grid_designs_and_nested_keys():
    spec = StudySpec.from_toml_string(
        '[study]\nname = "x"\nbase = "digits"\nseeds = [3, 4]\nbaseline = "a"\n'
        '[designs.a]\n"model.d" = 32\n[designs.b]\n"model.d" = 16\n"model.heads" = 2\n'
        '[grid]\n"model.solver_params.steps" = ["free", "bounded"]\n'
    )
    assert spec.axes == ["design", "model.solver_params.steps"] and spec.total_trials == 8
    cfg = spec.trial_config({"design": "b", "model.solver_params.steps": "bounded", "seed": 4})
    assert (cfg.model.d, cfg.model.heads, cfg.model.solver_params, cfg.seed) == (16, 2, {"steps": "bounded"}, 4)
    assert spec.baseline_design() == ("a", "free")
    # a nested override of one design does not leak into the next trial's config
    spec = StudySpec.from_toml_string(
        '[study]\nname = "x"\nbase = "digits"\n[designs.m]\nmodel.solver = "momentum"\n'
        '"model.solver_params.momentum" = 0.5\n[designs.g]\n'
    )
    assert spec.trial_config({"design": "m", "seed": 0}).model.solver_params == {"momentum": 0.5}
    assert spec.trial_config({"design": "g", "seed": 0}).model.solver_params == {}


def test_cli_reports_a_bad_study_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[study]\nname = "x"\nbase = "digits"\nseeds = []\n', encoding="utf-8")
    assert main(["study", "run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "seeds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------------------------
# statistics and the report
# -------------------------------------------------------------------------------------------------------------


def test_t_interval_matches_the_formula():
    xs = [0.81, 0.84, 0.80, 0.86]
    m = mean_interval(xs)
    mean = sum(xs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / 3)
    assert m["mean"] == pytest.approx(mean) and m["half"] == pytest.approx(3.182446 * sd / 2, rel=1e-5)
    assert t_quantile(1) == pytest.approx(12.7062, rel=1e-4) and t_quantile(30) == pytest.approx(2.0423, rel=1e-4)
    d = paired_differences({0: 0.9, 1: 0.8, 2: 0.7}, {0: 0.8, 1: 0.8, 2: 0.5, 3: 0.1})
    assert d["n"] == 3 and d["seeds"] == [0, 1, 2] and d["mean"] == pytest.approx(0.1)


def test_report_has_intervals_and_paired_differences(tmp_path):
    """A stored study with known values (3 seeds x 2 designs) → the leaderboard's intervals and the paired
    difference, computed independently here."""
    spec = load_study(
        tiny_study(
            tmp_path,
            grid='"model.attention" = ["bisoftmax", "linear"]',
            seeds="[0, 1, 2]",
            extra='baseline = "bisoftmax"',
        )
    )
    from energyarch.study.storage import open_study

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(spec, url, heartbeat=False)
    values = {"bisoftmax": [0.80, 0.82, 0.84], "linear": [0.78, 0.79, 0.83]}
    dist = {
        "model.attention": optuna.distributions.CategoricalDistribution(["bisoftmax", "linear"]),
        "seed": optuna.distributions.CategoricalDistribution([0, 1, 2]),
    }
    for design, vs in values.items():
        for seed, v in enumerate(vs):
            study.add_trial(
                optuna.trial.create_trial(
                    params={"model.attention": design, "seed": seed},
                    distributions=dist,
                    value=v,
                    user_attrs={"parameters": 1000, "step_s": 0.01, "top1_2T": v - 0.1},
                )
            )
    result = write_report(study, tmp_path)
    board = result["board"]
    rows = {e["label"]: e for e in board["table"]}
    assert rows["bisoftmax"]["n"] == 3 and rows["bisoftmax"]["half"] == pytest.approx(4.302653 * 0.02 / math.sqrt(3))
    diff = board["differences"][0]
    d = [b - a for a, b in zip(values["bisoftmax"], values["linear"])]
    sd = math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    assert diff["label"] == "linear" and diff["mean"] == pytest.approx(sum(d) / 3)
    assert diff["half"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-5)
    text = Path(result["markdown"]).read_text(encoding="utf-8")
    assert "95 % interval" in text and "82.00 | ± 4.97 [77.03, 86.97] | 3" in text
    table = list(csv.DictReader(Path(result["leaderboard"]).read_text(encoding="utf-8").splitlines()))
    assert [(r["label"], r["n"]) for r in table] == [("bisoftmax", "3"), ("linear", "3")]
    assert all(Path(p).stat().st_size > 1000 for p in result["plots"].values()) and len(result["plots"]) == 3


# -------------------------------------------------------------------------------------------------------------
# workers
# -------------------------------------------------------------------------------------------------------------


def _check_grid_done(url: str, out: Path, n: int) -> None:
    trials = _trials(url)
    points = _complete_points(trials)
    assert len(points) == n and len(set(points)) == n, [(t.number, t.state.name, t.params) for t in trials]
    folders = sorted(p.name for p in (out / "trials").iterdir())
    assert len(folders) == n and all((out / "trials" / f / "eval.json").is_file() for f in folders)
    for t in trials:
        if t.state.name == "COMPLETE":
            assert t.user_attrs["parameters"] > 0 and t.user_attrs["step_s"] > 0
            assert {"top1_T", "top1_2T", "energy_rise_fraction"} <= set(t.user_attrs)


def test_two_workers_on_sqlite_complete_the_grid_without_duplicates(tmp_path):
    out = tmp_path / "out"
    result = run_study(tiny_study(tmp_path), out, workers=2, progress=False)
    assert result["complete"] == result["total"] == 4
    _check_grid_done(result["url"], out, 4)
    # finished trials are never redone
    again = run_study(tiny_study(tmp_path), out, workers=1, progress=False)
    assert again["complete"] == 4 and len(_trials(result["url"])) == len(_trials(result["url"]))
    assert len([t for t in _trials(result["url"]) if t.state.name == "COMPLETE"]) == 4


def test_a_killed_worker_is_retried_on_the_next_run(tmp_path):
    study_file = tiny_study(
        tmp_path,
        grid='"model.attention" = ["bisoftmax", "linear"]',
        sets={"max_steps": "0", "limit_train": "0", "epochs": "2"},
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "energyarch", "study", "run", str(study_file), "--out", str(out), "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"sqlite:///{(out / 'study.db').resolve()}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:  # wait until a trial trains (its folder holds a config)
            if glob.glob(str(out / "trials" / "*" / "config.toml")):
                break
            assert proc.poll() is None, "the worker ended before its first trial trained"
            time.sleep(0.2)
        else:
            pytest.fail("no trial started within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    running = [t for t in _trials(url) if t.state.name == "RUNNING"]
    assert len(running) == 1
    time.sleep(2.5)  # two heartbeats (1 s) without a sign of life
    result = run_study(study_file, out, workers=1, progress=False)
    assert result["complete"] == 2
    trials = _trials(url)
    killed = [t for t in trials if t.number == running[0].number][0]
    assert killed.state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == killed.params
    assert len(list((out / "incomplete").iterdir())) == 1  # the killed attempt's folder, kept aside
    _check_grid_done(url, out, 2)


def test_sampled_parameters_with_a_random_sampler(tmp_path):
    path = tiny_study(tmp_path, grid="", extra='sampler = "random"\ntrials = 2').read_text(encoding="utf-8")
    path = path.replace("[grid]\n", '[search]\n"model.fixed_step" = { low = 0.05, high = 0.5, log = true }\n')
    study_file = tmp_path / "sampled.toml"
    study_file.write_text(path, encoding="utf-8")
    result = run_study(study_file, tmp_path / "out", progress=False)
    trials = [t for t in _trials(result["url"]) if t.state.name == "COMPLETE"]
    assert len(trials) == 2 and all(0.05 <= t.params["model.fixed_step"] <= 0.5 for t in trials)


# -------------------------------------------------------------------------------------------------------------
# PostgreSQL
# -------------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL cluster in a temporary folder (Debian's postgresql; as the `postgres` user when
    the tests run as root); skipped with the reason when it cannot start."""
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install 'energyarch[study]')")
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = bins[-1] if bins else shutil.which("initdb")
    if not initdb:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); the PostgreSQL test needs initdb")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    folder = tempfile.mkdtemp(prefix="energyarch-pg-")
    os.chmod(folder, 0o777)
    if as_user:
        shutil.chown(folder, "postgres")
    data, port = os.path.join(folder, "data"), _free_port()

    def run(cmd, **kw):
        return subprocess.run(as_user + cmd, capture_output=True, text=True, timeout=120, **kw)

    try:
        r = run([initdb, "-D", data, "-A", "trust", "-U", "postgres"])
        if r.returncode:
            pytest.skip(f"PostgreSQL cannot start here (initdb: {r.stderr.strip()[-300:]})")
        r = run(
            [
                pg_ctl,
                "-D",
                data,
                "-l",
                os.path.join(folder, "log"),
                "-w",
                "-o",
                f"-k {folder} -p {port} -h 127.0.0.1",
                "start",
            ]
        )
        if r.returncode:
            pytest.skip(f"PostgreSQL cannot start here (pg_ctl: {(r.stderr or r.stdout).strip()[-300:]})")
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def test_two_workers_share_one_study_on_postgresql(tmp_path, postgres_url):
    out = tmp_path / "out"
    result = run_study(tiny_study(tmp_path, name="pg"), out, storage=postgres_url, workers=2, progress=False)
    assert result["complete"] == 4 and result["url"] == postgres_url
    _check_grid_done(postgres_url, out, 4)
    assert not (out / "study.db").exists()
    assert main(["study", "report", str(out), "--storage", postgres_url]) == 0
    assert "| bisoftmax / relu |" in (out / "report.md").read_text(encoding="utf-8")
