"""The linter, the formatter check and the type checker configured in pyproject.toml pass on the repository
(rules: [tool.ruff.lint], [tool.ruff.format]; settings: [tool.mypy])."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_lint_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", str(ROOT)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_ruff_format_check_passes():
    """Every Python file is formatted as ``ruff format`` would write it ([tool.ruff.format]; Markdown excluded)."""
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (it is in the dev extra: pip install -e '.[dev]')")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", str(ROOT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, "run `ruff format .`:\n" + proc.stdout[-3000:] + proc.stderr[-1000:]


def test_mypy_passes():
    """``mypy`` with the [tool.mypy] settings (the energyarch package, check_untyped_defs): no errors. Its cache
    (.mypy_cache in the repository) makes a re-run a few seconds; the first run takes about half a minute."""
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (it is in the dev extra: pip install -e '.[dev]')")
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
    assert "Success: no issues found" in proc.stdout, proc.stdout[-3000:]
