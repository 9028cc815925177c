"""``energyarch train | eval | demo | generate``.

    energyarch train --config digits.toml [--set model.d=128 --set lr=3e-4 ...] [--resume] [--out DIR]
    energyarch eval --checkpoint DIR [--iters 8,16,32] [--adaptive-tol 1e-2,1e-3] [--out DIR]
    energyarch demo [--task digits|sudoku] [--out DIR]
    energyarch generate --checkpoint DIR --prompt "def " [--max-bytes 200 --temperature 0.8 --top-k 40 --seed 0]

``--config`` takes a path or the name of a packaged config (``digits``, ``sudoku_small``, ``fashion_mnist``,
``cifar10``, ``sudoku_paper``, ``text_small``). The same ``train`` command runs data-parallel under
``torchrun --nproc_per_node=N -m energyarch train ...``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from .config import TrainConfig, packaged_configs, resolve_config
from .logs import format_metric, interactive, print_summary
from .threads import set_threads

log = logging.getLogger("energyarch.train")


class _TqdmHandler(logging.Handler):
    def emit(self, record):
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record))
        except Exception:  # pragma: no cover - logging must not raise
            self.handleError(record)


def setup_logging(quiet: bool = False) -> None:
    """INFO messages of energyarch.train on stdout, through tqdm so that progress bars stay intact; when stdout is
    not a terminal (a log file) each line starts with the time."""
    if not log.handlers:
        import sys

        handler = _TqdmHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(message)s" if interactive(sys.stdout) else "%(asctime)s  %(message)s", datefmt="%Y-%m-%d %H:%M:%S"
            )
        )
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


#: Largest test-time iteration count eval accepts (each is one step of every layer on the whole test set).
MAX_EVAL_ITERS = 10_000


def _parse_iters(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise ConfigError(f"--iters {text!r}: give comma-separated iteration counts, e.g. --iters 8,16,32") from err
    if not values or min(values) < 1 or max(values) > MAX_EVAL_ITERS or len(values) > 64:
        raise ConfigError(
            f"--iters {text[:80]!r}: give at most 64 iteration counts in [1, {MAX_EVAL_ITERS}], e.g. --iters 8,16,32"
        )
    return values


def _parse_tols(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError as err:
        raise ConfigError(
            f"--adaptive-tol {text!r}: give comma-separated tolerances, e.g. --adaptive-tol 1e-2,1e-3,1e-4"
        ) from err
    if not values or len(values) > 64 or min(values) < 0 or not all(v == v and v != float("inf") for v in values):
        raise ConfigError(f"--adaptive-tol {text!r}: give finite tolerances >= 0, e.g. --adaptive-tol 1e-3")
    return values


# -------------------------------------------------------------------------------------------------------------
# commands
# -------------------------------------------------------------------------------------------------------------


def cmd_train(args) -> int:
    from .trainer import train

    setup_logging(args.quiet)
    set_threads(args.threads, announce=int(os.environ.get("RANK", "0")) == 0)
    if args.config is None:
        if not (args.resume and args.out):
            raise ConfigError(
                "train: give --config (a TOML file or a packaged name such as 'digits'), or "
                "--resume --out RUN_FOLDER to continue a run with the config it recorded"
            )
        recorded = Path(args.out) / "config.toml"
        if not recorded.is_file():
            raise ConfigError(f"train --resume --out {args.out}: no config.toml there; pass --config as well")
        args.config = str(recorded)
    cfg = TrainConfig.load(resolve_config(args.config))
    overrides = list(args.set or [])
    if args.out:
        overrides.append(f"out_dir={json.dumps(args.out)}")
    if args.quiet:
        overrides.append("progress=false")
    if overrides:
        cfg = cfg.with_overrides(overrides)
    summary = train(cfg, resume=args.resume, report=not args.no_report)
    if int(os.environ.get("RANK", "0")) == 0:
        print_summary(summary, summary["metric"])
        if not summary.get("finished"):
            print(f"stopped before the last epoch (max_steps={cfg.max_steps}); continue with --resume")
    return 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_checkpoint

    setup_logging()
    if args.out is not None:
        from .checkpoint import writable_folder

        writable_folder(args.out, "--out")
    overrides = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    if args.limit_test is not None:
        overrides["limit_test"] = args.limit_test
    if args.adaptive_max is not None and not 1 <= args.adaptive_max <= MAX_EVAL_ITERS:
        raise ConfigError(
            f"--adaptive-max {args.adaptive_max}: give an iteration count in [1, {MAX_EVAL_ITERS}], "
            f"e.g. --adaptive-max 32"
        )
    if args.limit_test is not None and args.limit_test < 0:
        raise ConfigError(f"--limit-test {args.limit_test}: give a number of test examples >= 0 (0 = all)")
    result = evaluate_checkpoint(
        args.checkpoint,
        iters=_parse_iters(args.iters),
        out_dir=args.out,
        device=args.device,
        adaptive_tols=_parse_tols(args.adaptive_tol),
        adaptive_max=args.adaptive_max,
        **overrides,
    )
    print(f"checkpoint {args.checkpoint} (epoch {result['epoch']}, step {result['step']})")
    print_summary(
        {"sweep": result["sweep"], "plots": result["plots"], "out_dir": args.out or args.checkpoint}, result["metric"]
    )
    rise = result.get("energy_rise")
    if rise:
        print(
            f"energy rises in {100 * rise['fraction']:.2f}% of {rise['pairs']} (sample, iteration) pairs; "
            f"largest rise {rise['max']:.4g}"
        )
    for row in result.get("adaptive") or []:
        print(
            f"  adaptive tol={row['tol']:g}  mean iters={row['mean_iters']:.2f} (max {row['max_iters']})  "
            f"{result['metric']}={format_metric(result['metric'], row[result['metric']])}"
        )
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    setup_logging(args.quiet)
    set_threads(args.threads)
    return run_demo(
        task=args.task, out_dir=args.out, epochs=args.epochs, progress=not args.quiet, overrides=args.set or ()
    )


def cmd_generate(args) -> int:
    from .generate import generate_from_run

    text = generate_from_run(
        args.checkpoint,
        args.prompt,
        max_bytes=args.max_bytes,
        temperature=args.temperature,
        top_k=args.top_k,
        seed=args.seed,
        iters=args.iters,
        device=args.device,
    )
    print(text)
    return 0


def register(subparsers) -> None:
    """Add ``train``, ``eval``, ``demo`` and ``generate`` to the ``energyarch`` command."""
    p = subparsers.add_parser(
        "train",
        help="train a model from a TOML config",
        description="Train a model from a TOML config (a path or a packaged name: "
        "digits, sudoku_small, fashion_mnist, cifar10, sudoku_paper, "
        "text_small). Runs "
        "data-parallel under torchrun.",
    )
    p.add_argument(
        "--config",
        help="TOML file, or a packaged config name such as 'digits' (with --resume --out, "
        "default: the config.toml the run recorded)",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a setting, e.g. --set model.d=128 --set lr=3e-4 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in the output folder")
    p.add_argument("--out", help="output folder (overrides out_dir)")
    p.add_argument("--no-report", action="store_true", help="skip the iteration sweep and plots after training")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch messages")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores, or OMP_NUM_THREADS)")
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser(
        "eval",
        help="sweep test-time iterations of a trained run and draw its plots",
        description="Evaluate a run's checkpoint at several test-time iteration counts "
        "(Fig. 3b) and draw energies, effective rank / angle and training curves.",
    )
    p.add_argument("--checkpoint", required=True, help="the run folder (holds checkpoint.json)")
    p.add_argument("--iters", help="comma-separated iteration counts, e.g. 8,16,32 (default T/4 .. 2T)")
    p.add_argument("--out", help="folder for eval.json and plots/ (default: the run folder)")
    p.add_argument("--data-dir", help="dataset folder, if it moved since training")
    p.add_argument("--limit-test", type=int, help="evaluate on the first N test examples only")
    p.add_argument(
        "--adaptive-tol",
        metavar="TOL[,TOL...]",
        help="adaptive depth: iterate each sample until its relative energy change < TOL (Hyper-SET); "
        "comma-separated tolerances give accuracy against mean iterations, e.g. 1e-2,1e-3,1e-4",
    )
    p.add_argument(
        "--adaptive-max",
        type=int,
        help="adaptive depth: at most this many iterations per layer (default: the largest --iters count)",
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.set_defaults(func=cmd_eval)

    p = subparsers.add_parser(
        "demo",
        help="compile + verify the Hyper-SET energy, train on embedded digits (CPU)",
        description="Compile the bi-softmax + ReLU feed-forward energy, print its "
        "verification table, train a small Hyper-SET on scikit-learn's "
        "digits (nothing to download) and print test accuracy and plots.",
    )
    p.add_argument(
        "--task",
        default="digits",
        choices=("digits", "sudoku"),
        help="digits (default) or a small generated Sudoku run",
    )
    p.add_argument("--out", help="output folder (default runs/demo-<task>)")
    p.add_argument("--epochs", type=int, help="override the number of epochs")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting of the demo config")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch messages")
    p.add_argument("--threads", type=int, help="CPU threads (default: physical cores, or OMP_NUM_THREADS)")
    p.set_defaults(func=cmd_demo)

    p = subparsers.add_parser(
        "generate",
        help="sample bytes from a trained byte-level language model",
        description='Rebuild the language model of a task = "text" run from its folder and '
        "sample a continuation of the prompt, byte by byte; prints UTF-8 "
        "(invalid byte sequences replaced).",
    )
    p.add_argument("--checkpoint", required=True, help="the run folder (holds checkpoint.json)")
    p.add_argument("--prompt", default="", help="text to continue (default: start from a newline)")
    p.add_argument("--max-bytes", type=int, default=200, help="bytes to sample (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = most likely byte")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely bytes; 0 = all 256")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler")
    p.add_argument("--iters", type=int, help="test-time iterations of a recurrent model (default: training T)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    p.set_defaults(func=cmd_generate)


__all__ = ["packaged_configs", "register", "resolve_config", "setup_logging"]
