"""The ``energyarch`` command: catalog, derivation, training and evaluation.

Each sub-command group lives with the code it drives and registers itself here:
``energyarch.catalog_cli`` (``catalog …``), ``energyarch.train.cli`` (``train``, ``eval``, ``demo``) and
``energyarch.study.cli`` (``study run``, ``study report``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .errors import EnergyArchError

#: modules that expose ``register(subparsers)``; each sub-parser sets ``func(args) -> int``
COMMAND_MODULES = ("energyarch.catalog_cli", "energyarch.train.cli", "energyarch.study.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energyarch",
        description="Turn energy functions into Transformer layers: derive, verify, train (Hyper-SET).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or (err.name != name and not name.startswith(err.name + ".")):
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EnergyArchError as err:
        print(f"energyarch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
