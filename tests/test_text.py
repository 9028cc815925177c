"""Byte-level language modelling: corpus, split, windows, causal models, bits per byte, CLI train/eval/generate."""

from __future__ import annotations

import hashlib
import json
import math
import platform
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

import energyarch as ea
from energyarch.cli import main
from energyarch.data.text import (
    STDLIB_FILES,
    ByteWindows,
    bits_per_byte,
    load_text,
    split_bytes,
    stdlib_corpus,
    text_corpus,
)
from energyarch.errors import CheckpointError, ConfigError, DataError
from energyarch.models import ModelConfig, TaskSpec, build_model
from energyarch.train import TrainConfig, build_task
from energyarch.train.checkpoint import load_checkpoint, save_checkpoint
from energyarch.train.generate import generate
from energyarch.train.tasks import TextTask, text_spec

HAS_CAUSAL_ENERGY = hasattr(ea, "CausalAttention")

# -------------------------------------------------------------------------------------------------------------
# corpus
# -------------------------------------------------------------------------------------------------------------


def test_embedded_corpus_is_the_listed_stdlib_files_in_order_and_hashed():
    corpus = stdlib_corpus()
    root = Path(sysconfig.get_paths()["stdlib"])
    expected_files = [f for f in STDLIB_FILES if (root / f).is_file()]
    assert list(corpus.files) == expected_files and len(expected_files) >= 40
    assert corpus.data == b"".join((root / f).read_bytes() for f in expected_files)
    assert corpus.sha256 == hashlib.sha256(corpus.data).hexdigest()
    again = stdlib_corpus()
    assert again.data == corpus.data and again.sha256 == corpus.sha256
    info = corpus.info()
    assert info["python"] == platform.python_version() and info["source"] == "python-stdlib"
    assert info["files"] == expected_files and info["bytes"] == len(corpus.data)
    assert list(STDLIB_FILES) == sorted(STDLIB_FILES)


def test_embedded_corpus_skips_missing_files_and_fails_clearly_without_any(tmp_path):
    (tmp_path / "os.py").write_bytes(b"import sys\n")
    (tmp_path / "abc.py").write_bytes(b"# abc\n")
    corpus = stdlib_corpus(tmp_path)
    assert corpus.files == ("abc.py", "os.py") and corpus.data == b"# abc\nimport sys\n"
    with pytest.raises(DataError, match="none of the .* standard-library files.*text_path"):
        stdlib_corpus(tmp_path / "empty")


def test_local_folder_is_read_sorted_recursively_skipping_hidden_and_other_suffixes(tmp_path):
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.md").write_text("A")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.py").write_text("C")
    (tmp_path / "z.csv").write_text("not read")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "d.txt").write_text("not read")
    corpus = load_text(tmp_path)
    assert corpus.files == ("a.md", "b.txt", "sub/c.py") and corpus.data == b"ABC"
    assert corpus.python is None and corpus.sha256 == hashlib.sha256(b"ABC").hexdigest()
    one = load_text(tmp_path / "b.txt")
    assert one.data == b"B" and one.files == ("b.txt",)
    assert text_corpus(None).source == "python-stdlib" and text_corpus(tmp_path).data == b"ABC"


def test_local_text_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(DataError, match="no such file or folder"):
        load_text(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no .*txt.* files in it"):
        load_text(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError, match="the text is empty"):
        load_text(tmp_path / "empty.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("line one\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt.*not UTF-8.*byte 12, line 2"):
        load_text(bad)
    with pytest.raises(DataError, match="not UTF-8"):  # a folder with one bad file fails on that file
        load_text(tmp_path)


# -------------------------------------------------------------------------------------------------------------
# split and windows
# -------------------------------------------------------------------------------------------------------------


def test_split_is_the_last_tenth_and_windows_are_fixed():
    data = bytes(range(256)) * 4  # 1024 bytes
    train, val = split_bytes(data)
    assert val == data[-103:] and train == data[:-103]  # ceil(102.4) = 103
    with pytest.raises(ConfigError, match="val_fraction"):
        split_bytes(data, 1.0)
    seq = ByteWindows.sequential(val, 10)
    assert len(seq) == 10  # (103 - 1) // 10
    x, y = seq[list(range(len(seq)))]
    for k in range(len(seq)):
        assert (
            bytes(x[k].tolist()) == val[10 * k : 10 * k + 10] and bytes(y[k].tolist()) == val[10 * k + 1 : 10 * k + 11]
        )
    rnd = ByteWindows.random(train, 16, count=50, seed=3)
    same, other = ByteWindows.random(train, 16, count=50, seed=3), ByteWindows.random(train, 16, count=50, seed=4)
    assert torch.equal(rnd.starts, same.starts) and not torch.equal(rnd.starts, other.starts)
    assert int(rnd.starts.min()) >= 0 and int(rnd.starts.max()) <= len(train) - 17
    x, y = rnd[[0, 7]]
    for row, start in enumerate(rnd.starts[[0, 7]].tolist()):
        assert bytes(x[row].tolist()) == train[start : start + 16]
        assert bytes(y[row].tolist()) == train[start + 1 : start + 17]
    assert len(ByteWindows.random(train, 16)) == len(train) // 16
    with pytest.raises(DataError, match="fewer than seq_len"):
        ByteWindows.sequential(b"abc", 8)


def test_text_task_is_built_from_the_config_and_records_its_data(tmp_path):
    (tmp_path / "t.txt").write_text("hello world, " * 200)
    task = build_task(TrainConfig(task="text", text_path=str(tmp_path / "t.txt"), seq_len=16, limit_test=5))
    assert task.spec.causal and task.spec.vocab_size == 256 and task.spec.num_outputs == 256
    assert len(task.test_set) == 5 and task.primary == "bpb"
    info = task.data_info
    assert info["sha256"] == hashlib.sha256(("hello world, " * 200).encode()).hexdigest()
    assert info["train_bytes"] + info["val_bytes"] == 2600 and info["val_bytes"] == 260


# -------------------------------------------------------------------------------------------------------------
# causal models and the metric
# -------------------------------------------------------------------------------------------------------------


def _perturbed_after(ids: torch.Tensor, t: int) -> torch.Tensor:
    other = ids.clone()
    other[:, t + 1 :] = (other[:, t + 1 :] + 97) % 256
    return other


@pytest.mark.parametrize(
    "arch",
    [
        "transformer",
        pytest.param(
            "hyperset",
            marks=pytest.mark.skipif(
                not HAS_CAUSAL_ENERGY, reason="ea.CausalAttention (the causal energy compiler) is not in this build"
            ),
        ),
    ],
)
def test_causal_models_ignore_later_bytes_exactly(arch):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, d=16, heads=2, layers=2, iters=2, time_freq=8)
    model = build_model(cfg, text_spec(12)).double()
    if arch == "hyperset":  # zero-initialised steps would be the identity
        for p in model.backbone.parameters():
            torch.nn.init.normal_(p, std=0.3)
    ids = torch.randint(0, 256, (3, 12))
    logits = model(ids)
    for t in (0, 5, 10):
        changed = model(_perturbed_after(ids, t))
        assert torch.equal(changed[:, : t + 1], logits[:, : t + 1])
        assert not torch.allclose(changed[:, t + 1 :], logits[:, t + 1 :])
    # a shorter context gives the prefix's logits (generation starts from short prompts)
    torch.testing.assert_close(model(ids[:, :7]), logits[:, :7], rtol=1e-12, atol=1e-12)


def test_bidirectional_model_does_see_later_bytes():
    """The check above can fail: without the mask the same perturbation changes earlier logits."""
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="transformer", d=16, heads=2, iters=1), TaskSpec(vocab_size=256, seq_len=12, num_outputs=256)
    )
    ids = torch.randint(0, 256, (2, 12))
    assert not torch.allclose(model(_perturbed_after(ids, 5))[:, :6], model(ids)[:, :6])


def test_causal_task_refuses_backbones_without_a_causal_form():
    with pytest.raises(ConfigError, match="no causal form"):
        build_model(ModelConfig(arch="energy_transformer", d=16, heads=2), text_spec(8))
    with pytest.raises(ConfigError, match="causal"):
        TaskSpec(kind="tokens", output="cls", causal=True)


def test_bits_per_byte_matches_a_hand_computation():
    logits = torch.tensor([[[2.0, 0.5, -1.0] + [-30.0] * 253, [0.0] * 256]])  # (B=1, N=2, 256)
    target = torch.tensor([[1, 7]])
    task = TextTask(None, None, seq_len=2)
    # by hand: -log softmax(logits)[target]; the second position is uniform: log 256 nats = 8 bits exactly
    z = math.exp(2.0) + math.exp(0.5) + math.exp(-1.0) + 253 * math.exp(-30.0)
    nats = [-(0.5 - math.log(z)), math.log(256)]
    metrics = task.finalize(task.sums(logits, (None, target)))
    assert metrics["bpb"] == pytest.approx(sum(nats) / 2 / math.log(2), rel=1e-6)
    assert metrics["loss"] == pytest.approx(sum(nats) / 2, rel=1e-6)
    assert metrics["top1"] == 0.0  # argmax 0 ≠ 1; argmax of a tie (0) ≠ 7
    assert float(task.loss([logits], (None, target))) == pytest.approx(sum(nats) / 2, rel=1e-6)
    assert bits_per_byte(8 * math.log(2), 1) == pytest.approx(8.0)


def test_generate_is_seeded_and_greedy_at_temperature_zero():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="transformer", d=16, heads=2, iters=1), text_spec(8))
    a = generate(model, b"import ", max_bytes=6, temperature=1.0, seed=5)
    assert a == generate(model, b"import ", max_bytes=6, temperature=1.0, seed=5) and len(a) == 6
    greedy = generate(model, b"import ", max_bytes=4, temperature=0)
    context, expected = list(b"import "), []
    with torch.no_grad():
        for _ in range(4):
            nxt = int(model(torch.tensor([context[-8:]]))[0, -1].argmax())
            expected.append(nxt)
            context.append(nxt)
    assert greedy == bytes(expected)
    assert generate(model, b"import ", max_bytes=4, top_k=1, seed=9) == greedy
    with pytest.raises(ConfigError, match="top_k"):
        generate(model, b"x", top_k=300)
    with pytest.raises(ConfigError, match="temperature"):
        generate(model, b"x", temperature=-1.0)


def test_checkpoints_written_before_taskspec_had_causal_still_load(tmp_path):
    model = build_model(ModelConfig(arch="transformer", d=16, heads=2, iters=1), TaskSpec(seq_len=9))
    save_checkpoint(tmp_path, model, state={"step": 1})
    state = json.loads((tmp_path / "checkpoint.json").read_text())
    del state["signature"]["task"]["causal"]
    (tmp_path / "checkpoint.json").write_text(json.dumps(state))
    assert (
        load_checkpoint(
            tmp_path, build_model(ModelConfig(arch="transformer", d=16, heads=2, iters=1), TaskSpec(seq_len=9))
        )["step"]
        == 1
    )


# -------------------------------------------------------------------------------------------------------------
# the command line
# -------------------------------------------------------------------------------------------------------------


def test_cli_train_eval_generate_round_trip(tmp_path, capsys):
    """text_small's own architecture (the causal Hyper-SET energy), shrunk; the GPT baseline's causality and
    generation are tested above."""
    arch = "hyperset" if HAS_CAUSAL_ENERGY else "transformer"
    out = tmp_path / "run"
    args = [
        "train",
        "--config",
        "text_small",
        "--out",
        str(out),
        "--quiet",
        "--set",
        f"model.arch={arch}",
        "--set",
        "model.d=16",
        "--set",
        "model.heads=2",
        "--set",
        "model.iters=2",
        "--set",
        "model.time_freq=8",
        "--set",
        "seq_len=16",
        "--set",
        "batch_size=4",
        "--set",
        "limit_train=8",
        "--set",
        "limit_test=4",
        "--set",
        "eval_iters=[1, 2]",
        "--set",
        "diagnostics_samples=2",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "test bpb: " in printed and "%" not in printed.split("test bpb: ")[1].split()[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["history"][-1]["step"] == 2
    assert metrics["data"]["sha256"] == stdlib_corpus().sha256 and metrics["data"]["python"]
    assert main(["eval", "--checkpoint", str(out), "--iters", "1,2"]) == 0
    sweep = json.loads((out / "eval.json").read_text())["sweep"]
    assert [row["iters"] for row in sweep] == [1, 2] and all(0 < row["bpb"] < 9 for row in sweep)
    capsys.readouterr()
    generate = ["generate", "--checkpoint", str(out), "--prompt", "def f(", "--max-bytes", "20", "--top-k", "5"]
    assert main([*generate, "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("def f(")
    assert main([*generate, "--seed", "1"]) == 0
    assert capsys.readouterr().out == first

    other = tmp_path / "not-text"  # the same run relabelled as an image task
    shutil.copytree(out, other)
    state = json.loads((other / "checkpoint.json").read_text())
    state["config"]["task"] = "digits"
    (other / "checkpoint.json").write_text(json.dumps(state))
    assert main(["generate", "--checkpoint", str(other), "--prompt", "x"]) == 2
    assert "task='digits', not a language model" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(out), "--top-k", "0", "--temperature", "-1"]) == 2
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        from energyarch.train.generate import load_text_model

        load_text_model(tmp_path / "nowhere")
