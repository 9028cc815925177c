"""``energyarch catalog …`` through :func:`energyarch.cli.main`: output and exit codes."""

import importlib.util
import shutil

import pytest

from energyarch import catalog, cli

NAMES = list(catalog.load_catalog())


@pytest.fixture(autouse=True)
def _command_modules(monkeypatch):
    # cli.build_parser skips a command module that does not exist only when the module itself is missing;
    # while the package energyarch.train is absent, importing energyarch.train.cli names the package instead
    # and the whole CLI fails. Keep these tests about the catalog group until that package lands.
    if importlib.util.find_spec("energyarch.train") is None:
        monkeypatch.setattr(cli, "COMMAND_MODULES", ("energyarch.catalog_cli",))


def run(capsys, *argv):
    code = cli.main(["catalog", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_shows_every_entry(capsys):
    code, out, err = run(capsys, "list")
    assert code == 0 and not err
    for name in NAMES:
        assert name in out
    assert "Table 19, row 2" in out and "beyond" in out


def test_tables_to_stdout_and_to_a_file(capsys, tmp_path):
    code, out, _ = run(capsys, "tables", "--d", "16")
    assert code == 0 and "## Table 19" in out and "## Table 20" in out and "## Beyond the paper" in out
    target = tmp_path / "catalog.md"
    code, out, _ = run(capsys, "tables", "--d", "16", "--out", str(target))
    assert code == 0 and str(target) in out
    text = target.read_text()
    for entry in catalog.load_catalog().values():
        assert f"| {entry.title} |" in text
    code, _, err = run(capsys, "tables", "--out", str(tmp_path / "missing" / "x.md"))
    assert code == 2 and "does not exist" in err


def test_derive_prints_pattern_path_reason_latex_and_source(capsys):
    code, out, err = run(capsys, "derive", "bi-softmax", "--d", "16", "--latex", "--source")
    assert code == 0 and not err
    assert "pattern:    bi-softmax" in out and "path:       symbolic" in out and "reason:" in out
    assert r"\operatorname{softmax}_{\text{col}}" in out and "printed:" in out
    assert "class BiSoftmaxUpdate(TermUpdate)" in out and "def grad_Z(self, Z):" in out
    assert "matches the printed form" in out


def test_derive_reports_the_sign_difference_and_stays_short_without_flags(capsys):
    code, out, _ = run(capsys, "derive", "sigmoid-softmax", "--d", "16")
    assert code == 0 and "differs in sign" in out and "paper_sign = -1" in out
    assert "latex:" not in out and "def grad_Z" not in out


def test_derive_unknown_entry_fails_with_a_suggestion(capsys):
    code, out, err = run(capsys, "derive", "bisoftmax")
    assert code == 2 and not out
    assert "no catalog entry named 'bisoftmax'" in err and "'bi-softmax'" in err


def test_verify_named_entries_and_all(capsys):
    code, out, _ = run(capsys, "verify", "bi-softmax", "gated-ff", "--d", "16")
    assert code == 0 and "all 2 entries verified" in out
    code, out, _ = run(capsys, "verify", "--all", "--d", "16")
    assert code == 0 and f"all {len(NAMES)} entries verified" in out
    for name in NAMES:
        assert name in out
    assert "FAIL" not in out


@pytest.mark.parametrize("argv", [(), ("bi-softmax", "--all")])
def test_verify_needs_names_or_all(capsys, argv):
    code, _, err = run(capsys, "verify", *argv)
    assert code == 2 and "--all" in err


def _copy(tmp_path, name, edit=None):
    source = catalog.default_directory() / f"{name}.toml"
    target = tmp_path / source.name
    shutil.copy(source, target)
    if edit:
        old, new = edit
        text = target.read_text()
        assert old in text
        target.write_text(text.replace(old, new))
    return target


def test_verify_fails_when_the_recorded_paper_sign_is_wrong(capsys, tmp_path):
    _copy(tmp_path, "sigmoid-softmax", ("paper_sign = -1", "paper_sign = 1"))
    code, out, _ = run(capsys, "verify", "--all", "--d", "16", "--dir", str(tmp_path))
    assert code == 1 and "FAIL" in out and "paper_sign = +1 is wrong" in out


def test_verify_fails_when_the_expected_pattern_is_not_found(capsys, tmp_path):
    _copy(tmp_path, "tanh-kernel", ('pattern = "kernel attention"', 'pattern = "bi-softmax"'))
    code, out, _ = run(capsys, "verify", "tanh-kernel", "--d", "16", "--dir", str(tmp_path))
    assert code == 1 and "catalog expects 'bi-softmax'" in out


def test_malicious_entry_is_rejected_by_every_action(capsys, tmp_path):
    marker = tmp_path / "pwned"
    _copy(tmp_path, "softplus-ff", ('h = "softplus(x)"', f"h = \"__import__('os').system('touch {marker}')\""))
    for argv in (["list"], ["tables"], ["derive", "softplus-ff"], ["verify", "--all"]):
        code, out, err = run(capsys, *argv, "--dir", str(tmp_path))
        assert code == 2 and "softplus-ff.toml: key 'h'" in err and "__import__" in err
    assert not marker.exists()


def test_catalog_without_action_prints_help(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "list" in out and "verify" in out
