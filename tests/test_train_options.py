"""Training speed options on the CPU: precision (fp32 / auto / bf16 autocast), torch.compile (fullgraph, its
fallback, the first-step cost), and the speed log (throughput, peak memory) in metrics.json."""

import functools
import json
import logging
import os

import pytest
import torch
from torch import nn

import energyarch.train.trainer as trainer_module
from energyarch.errors import ConfigError
from energyarch.train import TrainConfig, Trainer
from energyarch.train.trainer import autocast_dtype, make_optimizer

import conftest

#: the shared tiny run for one epoch on 56 training images in batches of 16: 4 steps per epoch, the last one a
#: partial batch of 8
tiny = functools.partial(conftest.tiny, epochs=1, limit_train=56, limit_test=16)


def first_batch(trainer: Trainer):
    return next(iter(trainer._train_loader(0, 0)))


# ---------------------------------------------------------------------------------------------------------------
# precision
# ---------------------------------------------------------------------------------------------------------------


def test_precision_choices_and_errors():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match=r"precision='fp16': choose one of \('auto', 'fp32', 'bf16'\)"):
        TrainConfig(precision="fp16")
    cfg = TrainConfig.from_toml_string('precision = "bf16"\ncompile = true')
    assert (cfg.precision, cfg.compile) == ("bf16", True)
    assert TrainConfig.from_toml_string(cfg.to_toml()) == cfg
    with pytest.raises(ConfigError, match="compile = 'yes'"):
        TrainConfig.from_toml_string('compile = "yes"')


def test_auto_precision_is_plain_fp32_on_cpu(tmp_path):
    """'auto' on a CPU takes exactly the fp32 path: bitwise-equal weights after the same steps."""
    runs = {}
    for precision in ("auto", "fp32"):
        t = Trainer(tiny(tmp_path, precision=precision, max_steps=2, out_dir=str(tmp_path / precision)))
        assert t.amp_dtype is None
        t.fit()
        runs[precision] = t.model.state_dict()
    for name, value in runs["auto"].items():
        assert torch.equal(value, runs["fp32"][name]), name


def test_bf16_autocast_on_cpu_keeps_fp32_master_weights(tmp_path):
    """bf16 autocast changes the loss by bf16 rounding only (relative 2e-2) and leaves weights, gradients and
    optimizer moments in fp32."""
    losses, trainers = {}, {}
    for precision in ("fp32", "bf16"):
        t = Trainer(tiny(tmp_path, precision=precision, out_dir=str(tmp_path / precision)))
        losses[precision] = t.train_step(first_batch(t))  # the same initial weights and batch
        trainers[precision] = t
    t = trainers["bf16"]
    assert t.amp_dtype == torch.bfloat16
    assert losses["bf16"] != losses["fp32"]  # autocast did act
    assert abs(losses["bf16"] - losses["fp32"]) < 2e-2 * abs(losses["fp32"])
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in t.model.parameters())
    moments = [v for s in t.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    with t.autocast():  # evaluation runs in the same precision
        assert t.model(t.task.inputs(first_batch(t), t.dist.device)).dtype == torch.bfloat16
    assert 0.0 <= t.evaluate()["top1"] <= 1.0


def test_adamw_is_not_fused_on_cpu():
    model = nn.Linear(3, 2)
    assert not make_optimizer(model, TrainConfig()).defaults.get("fused")


# ---------------------------------------------------------------------------------------------------------------
# torch.compile
# ---------------------------------------------------------------------------------------------------------------


def test_compile_matches_eager_and_reports_first_step(tmp_path, monkeypatch):
    """compile = true: fullgraph, the same weights as eager training (the partial last batch runs eagerly),
    the first step's cost in metrics.json. The backend is aot_eager (Dynamo and AOT autograd trace forward and
    backward as on a GPU; inductor's code generation is what benchmarks/gpu_check.sh exercises)."""
    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    eager = Trainer(tiny(tmp_path, out_dir=str(tmp_path / "eager")))
    eager.fit()
    compiled = Trainer(tiny(tmp_path, compile=True, out_dir=str(tmp_path / "compiled")))
    compiled.fit()
    info = compiled.compile_info
    assert info["fullgraph"] and info["fallback_reason"] is None and info["backend"] == "aot_eager"
    assert info["first_step_s"] > 0 and compiled.speed[0]["steps"] == 3  # the compiling step left out
    for name, value in eager.model.state_dict().items():
        torch.testing.assert_close(compiled.model.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)
    speed = json.loads((tmp_path / "compiled" / "metrics.json").read_text())["speed"]
    assert speed["compile"]["first_step_s"] == info["first_step_s"]
    assert speed["epochs"][0]["compile_first_step_s"] == info["first_step_s"]


class GraphBreaking(nn.Module):
    """A model whose forward cannot be one graph (an explicit graph break before the wrapped model)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, inputs, iters=None):
        torch._dynamo.graph_break()
        return self.inner(inputs, iters=iters)


def test_compile_falls_back_from_fullgraph_with_a_logged_reason(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(trainer_module, "COMPILE_BACKEND", "eager")
    torch._dynamo.reset()
    base = Trainer(tiny(tmp_path, max_steps=2))
    t = Trainer(
        tiny(tmp_path, compile=True, max_steps=2, out_dir=str(tmp_path / "b")),
        model=GraphBreaking(base.model),
        task=base.task,
    )
    with caplog.at_level(logging.INFO, logger="energyarch.train"):
        t.fit()
    assert t.step == 2 and not t.compile_info["fullgraph"]
    assert "graph_break" in t.compile_info["fallback_reason"] or "Unsupported" in t.compile_info["fallback_reason"]
    assert "torch.compile(fullgraph=True) failed" in caplog.text and "with graph breaks" in caplog.text


# ---------------------------------------------------------------------------------------------------------------
# speed log
# ---------------------------------------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_speed_log_has_throughput_and_peak_memory(tmp_path):
    rss_before = _rss_mb()
    t = Trainer(tiny(tmp_path, epochs=2))
    t.fit()
    speed = json.loads((tmp_path / "run" / "metrics.json").read_text())["speed"]
    assert speed["precision"] == "fp32" and speed["compile"] is None and speed["tokens_per_sample"] == 17
    assert [e["epoch"] for e in speed["epochs"]] == [1, 2] and all(e["steps"] == 4 for e in speed["epochs"])
    for e in speed["epochs"]:
        # 56 samples per epoch in `steps` steps of step_s seconds each
        assert e["samples_per_s"] == pytest.approx(56 / (e["steps"] * e["step_s"]), rel=2e-3)
        assert e["tokens_per_s"] == pytest.approx(17 * e["samples_per_s"], rel=1e-3)
        assert rss_before * 0.99 <= e["peak_memory_mb"] <= _rss_peak_now() * 1.01
    assert speed["epochs"][1]["peak_memory_mb"] >= speed["epochs"][0]["peak_memory_mb"]  # a process peak


def _rss_peak_now() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
