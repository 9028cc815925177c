"""Issue 20 req. 3: ``energyarch train`` / ``demo`` choose their CPU thread count and print it."""

import torch

from energyarch import cli
from energyarch.train import threads


def _fake_topology(tmp_path, cores):
    """A /sys/devices/system/cpu tree: logical CPU i on (package, core) cores[i]."""
    for cpu, (pkg, core) in enumerate(cores):
        topo = tmp_path / f"cpu{cpu}" / "topology"
        topo.mkdir(parents=True)
        (topo / "physical_package_id").write_text(f"{pkg}\n")
        (topo / "core_id").write_text(f"{core}\n")
    return tmp_path


def test_physical_cores_counts_hyperthread_siblings_once(tmp_path):
    sys_cpu = _fake_topology(tmp_path, [(0, 0), (0, 1), (0, 0), (0, 1), (1, 0), (1, 0)])
    assert threads.physical_cores([0, 1, 2, 3, 4, 5], sys_cpu) == 3
    assert threads.physical_cores([0, 2], sys_cpu) == 1
    assert threads.physical_cores([0, 7], sys_cpu) == 2  # cpu7 has no topology: counted as itself


def test_default_threads_follows_the_environment(monkeypatch):
    monkeypatch.setattr(threads, "physical_cores", lambda: 12)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.default_threads() == 12
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: the cores are shared
    assert threads.default_threads() == 3
    monkeypatch.setattr(threads, "physical_cores", lambda: 64)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert threads.default_threads() == threads.MAX_THREADS
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert threads.default_threads() == 5


def test_cli_sets_and_prints_the_thread_count(monkeypatch, capsys):
    import energyarch.train.demo as demo

    before = torch.get_num_threads()
    monkeypatch.setattr(demo, "run_demo", lambda **kw: 0)  # the thread choice only, no training
    try:
        assert cli.main(["demo", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        assert "threads: 1 (--threads" in capsys.readouterr().out
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert cli.main(["demo"]) == 0
        assert "threads: 1 (OMP_NUM_THREADS" in capsys.readouterr().out
        assert cli.main(["demo", "--threads", "0"]) == 2
        err = capsys.readouterr().err
        assert "--threads 0" in err and "positive" in err
    finally:
        torch.set_num_threads(before)
