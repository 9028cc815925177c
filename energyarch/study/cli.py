"""``energyarch study run | report``.

    energyarch study run STUDY.toml --out DIR [--storage URL] [--workers N]
    energyarch study report DIR [--storage URL] [--name NAME]

Several machines share one study by starting the same ``study run`` with the same ``--storage`` (e.g.
``postgresql://user:password@host/db``); each also needs ``--out`` on a file system they share, or their own.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError


def cmd_run(args) -> int:
    from .runner import run_study

    result = run_study(args.study_file, args.out, storage=args.storage, workers=args.workers, progress=not args.quiet)
    print(f"{result['complete']} of {result['total']} trials complete ({result['url']})")
    if result["failed"]:
        print(f"{result['failed']} grid points failed; their errors are in the trials' 'error' attribute")
    if result["complete"] < result["total"] and result["running"]:
        print(
            f"{result['running']} trials are running elsewhere (or were killed less than two heartbeats ago); "
            f"run the study again later to retry killed ones"
        )
    print(f"report: energyarch study report {args.out}" + (f" --storage {args.storage}" if args.storage else ""))
    return 0


def cmd_report(args) -> int:
    from .report import write_report
    from .storage import STORAGE_FILE, load_stored_study, storage_url

    folder = Path(args.dir)
    if not args.storage and not (folder / STORAGE_FILE).is_file():
        raise ConfigError(
            f"study report {args.dir}: no {STORAGE_FILE} there; give the study's folder (the --out "
            f"of `study run`) or --storage URL"
        )
    study = load_stored_study(storage_url(folder, args.storage), args.name)
    result = write_report(study, folder)
    print(Path(result["markdown"]).read_text(encoding="utf-8"))
    print(
        f"wrote {result['markdown']}, {result['leaderboard']}, {result['differences']}"
        + "".join(f", {p}" for p in result["plots"].values())
    )
    return 0


def register(subparsers) -> None:
    """Add ``study run`` and ``study report`` to the ``energyarch`` command."""
    p = subparsers.add_parser(
        "study",
        help="run a grid of designs x seeds (Optuna) and report intervals",
        description="Design studies: a grid of config overrides x seeds, run by local or "
        "remote workers sharing an Optuna storage, and a report with 95 % "
        "intervals over seeds.",
    )
    sub = p.add_subparsers(dest="study_command", metavar="SUBCOMMAND")
    r = sub.add_parser(
        "run",
        help="run (or continue) a study",
        description="Run every trial of the study file that has not run; continue after a kill by running it again.",
    )
    r.add_argument("study_file", metavar="STUDY.toml", help="the study file")
    r.add_argument("--out", required=True, help="study folder: trials/<name> run folders, study.db, report")
    r.add_argument("--storage", help="SQLAlchemy URL of a shared storage (default: sqlite DIR/study.db)")
    r.add_argument("--workers", type=int, help="local worker processes (default: [study] workers)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=cmd_run)
    q = sub.add_parser(
        "report",
        help="leaderboard, paired differences and plots of a study",
        description="Markdown, CSV and PNG into DIR: mean and 95 % t-interval over seeds per "
        "design, paired differences against the baseline.",
    )
    q.add_argument("dir", metavar="DIR", help="the study folder (the --out of study run)")
    q.add_argument("--storage", help="SQLAlchemy URL, if the study is not in DIR/study.db")
    q.add_argument("--name", help="the study's name, if the storage holds several")
    q.set_defaults(func=cmd_report)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


__all__ = ["register"]
