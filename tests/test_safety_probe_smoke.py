"""Smoke test of benchmarks/safety_probe.py: its guard and its judges can tell each outcome apart (a wrong operator is
SILENTLY WRONG, a sleeper is a HANG, a created MARKER is EXECUTED, a foreign exception is RAW), and a handful of real
inputs of each category get the outcome the full campaign records."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "safety_probe.py"

pytestmark = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # Python >= 3.12 warns on fork


def _load():
    spec = importlib.util.spec_from_file_location("safety_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["safety_probe"] = module
    spec.loader.exec_module(module)
    return module


sp = _load()


@pytest.fixture(scope="module")
def warm():
    sp.warm_up()


def _by_label(probes, text):
    return next(p for p in probes if text in p.label)


def _run(probe, tmp_path, timeout=20.0):
    return sp.run_probe(probe, tmp_path / "probe", timeout)


def test_a_correct_energy_is_verified_and_a_wrong_reference_is_caught(tmp_path, warm):
    label, make, reference, _ = sp.ENERGIES[1]  # Cauchy kernel
    good = _run(sp.Probe("energies", label, sp.energy_check(make, reference), "verified"), tmp_path)
    assert good.outcome == "verified" and good.verdict == "ok", good
    wrong = sp.energy_check(make, lambda Z: reference(Z) * (1 + 1e-6))  # the probe's own reference, off by 1e-6
    result = _run(sp.Probe("energies", "off by 1e-6", wrong, "verified"), tmp_path)
    assert result.outcome == "SILENTLY WRONG" and result.verdict.startswith("DEFECT"), result
    assert "rel err grad 1.0e-06" in result.detail


def _sleeps(folder):
    time.sleep(60)


def _creates_marker(folder):
    (folder / "MARKER").write_text("")
    return {"outcome": "inert", "detail": ""}


def _raises_key_error(folder):
    raise KeyError("x")


def test_the_guard_reports_hang_executed_and_raw(tmp_path):
    start = time.perf_counter()
    hang = sp.run_probe(sp.Probe("malformed", "sleeps", _sleeps, "error"), tmp_path / "a", timeout=1.0)
    assert hang.outcome == "HANG" and time.perf_counter() - start < 10
    executed = sp.run_probe(sp.Probe("attacks", "marker", _creates_marker, "inert"), tmp_path / "b", 20.0)
    assert executed.outcome == "EXECUTED" and executed.verdict.startswith("DEFECT")
    raw = sp.run_probe(sp.Probe("malformed", "raw", _raises_key_error, "error"), tmp_path / "c", 20.0)
    assert raw.outcome == "RAW KeyError" and raw.verdict.startswith("DEFECT")
    table = sp.markdown([hang, executed, raw], "test", 1.0, 1.0)
    assert "| malformed | 2 | HANG: 1, RAW KeyError: 1 | 2 |" in table
    assert "EXECUTED 1, HANG 1, SILENTLY WRONG 0, RAW 1" in table


@pytest.mark.parametrize(
    "category, label, outcome",
    [
        ("malformed", "Sphere eps=0", "project error DeclarationError"),
        ("malformed", "step(X, '0.1')", "project error ShapeError"),
        ("attacks", "expression: __import__ call", "rejected ParseError"),
        ("attacks", "expression 'x<LS>import os; open(MARKER)'", "rejected ParseError"),
        ("attacks", "Scalar.parse(name=) 'x<LF>import os", "inert (compiled; payload stayed a literal)"),
        ("attacks", "function __name__ 'x<backslash-LF>import os", "inert (compiled; payload stayed a literal)"),
        ("attacks", "checkpoint: tensors_file '../other/", "rejected CheckpointError"),
    ],
)
def test_real_inputs_of_each_category(tmp_path, warm, category, label, outcome):
    probe = _by_label(sp.CATEGORIES[category](), label)
    result = _run(probe, tmp_path)
    assert result.outcome == outcome and result.verdict == "ok", result
    assert not (tmp_path / "probe" / "MARKER").exists()


@pytest.mark.parametrize(
    "label, outcome",
    [
        ("causal overflowing callable K (autodiff): later tokens aligned x1e3", "causal exact"),
        ("causal inner-product kernel: later tokens inf", "causal exact"),
        ("official state_dict: key naming block 10**9", "rejected ConfigError"),
        ("new run (diverging config) into a finished run", "rejected EnergyArchError"),
        ("--resume: optimizer state of the wrong shape", "rejected EnergyArchError"),
    ],
)
def test_round3_inputs(tmp_path, warm, label, outcome):
    probe = _by_label(sp.round3_probes(), label)
    if probe.label.startswith(("new run", "--resume")):
        sp._template("digits")  # trained in the parent, as run_campaign does, before the fork
    result = _run(probe, tmp_path)
    assert result.outcome == outcome and result.verdict == "ok", result


def test_the_run_judge_reports_a_changed_saved_file(tmp_path, warm):
    """A command that is refused after changing a saved file is judged SAVED FILE CHANGED."""
    sp._template("digits")
    judge = sp.run_attack(lambda folder, run: ["train", "--config", str(folder / "missing.toml")])
    original = sp._cli

    def cli_that_changes_a_file(*args):
        (tmp_path / "probe" / "run" / "metrics.json").write_text("{}")
        return original(*args)

    sp._cli = cli_that_changes_a_file
    try:
        result = _run(sp.Probe("round3", "changes a file", judge, "rejected"), tmp_path)
    finally:
        sp._cli = original
    assert result.outcome == "rejected EnergyArchError" and "SAVED FILE CHANGED" in result.verdict, result
