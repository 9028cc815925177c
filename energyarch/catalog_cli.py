"""``energyarch catalog …``: list, tabulate, derive and verify the operators of ``catalog/``.

    energyarch catalog list
    energyarch catalog tables [--out FILE]
    energyarch catalog derive NAME [--d 64] [--source] [--latex]
    energyarch catalog verify NAME ... | --all [--d 64]

Every action accepts ``--dir DIR`` (default: ``$ENERGYARCH_CATALOG`` or the project's ``catalog/``).
Output is plain text on stdout; errors go to stderr through :func:`energyarch.cli.main` (exit code 2);
``verify`` exits with 1 when a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence, cast

from . import catalog
from .errors import EnergyArchError
from .runtime import TermUpdate
from .verify import verify


def register(subparsers) -> None:
    """Add the ``catalog`` command group to the ``energyarch`` parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        dest="catalog_dir",
        metavar="DIR",
        default=None,
        help="catalog folder (default: $ENERGYARCH_CATALOG or the project's catalog/)",
    )
    group = subparsers.add_parser(
        "catalog",
        help="the operator catalog: Tables 19-20 of the paper and beyond",
        description="List, tabulate, derive and verify the operators of catalog/*.toml.",
    )
    actions = group.add_subparsers(dest="catalog_action", metavar="ACTION")
    group.set_defaults(func=lambda args: _usage(group))

    p = actions.add_parser("list", parents=[common], help="one line per entry")
    p.set_defaults(func=cmd_list)

    p = actions.add_parser("tables", parents=[common], help="regenerate Tables 19-20 and 'beyond' (markdown)")
    p.add_argument("--out", metavar="FILE", default=None, help="write the markdown here instead of stdout")
    p.add_argument("--d", type=int, default=64, help="model width used for the derivations (default 64)")
    p.set_defaults(func=cmd_tables)

    p = actions.add_parser("derive", parents=[common], help="what the compiler derives for one entry")
    p.add_argument("name", help="entry name (see 'energyarch catalog list')")
    p.add_argument("--d", type=int, default=64, help="model width (default 64)")
    p.add_argument("--source", action="store_true", help="print the emitted PyTorch source")
    p.add_argument("--latex", action="store_true", help="print the derived -grad E in LaTeX (and the paper's)")
    p.set_defaults(func=cmd_derive)

    p = actions.add_parser(
        "verify", parents=[common], help="check entries against torch.func.grad in float64 (and the paper's formula)"
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="entries to verify")
    p.add_argument("--all", action="store_true", help="verify every entry")
    p.add_argument("--d", type=int, default=64, help="model width (default 64)")
    p.set_defaults(func=cmd_verify)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, aligned text table."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _where(entry: catalog.Entry) -> str:
    return f"Table {entry.table}, row {entry.row}" if entry.in_paper else f"beyond, row {entry.row}"


# ---------------------------------------------------------------------------------------------


def cmd_list(args) -> int:
    entries = catalog.load_catalog(args.catalog_dir).values()
    rows = [(e.name, e.family, _where(e), e.pattern, e.title) for e in entries]
    print(_rows(("name", "family", "where", "pattern", "title"), rows))
    return 0


def cmd_tables(args) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and not out.parent.is_dir():
        raise EnergyArchError(f"--out {args.out}: folder {out.parent} does not exist")
    text = catalog.tables_markdown(args.catalog_dir, d=args.d)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
        print(f"wrote {out}")
    else:
        print(text)
    return 0


def cmd_derive(args) -> int:
    entry = catalog.get(args.name, args.catalog_dir)
    step = entry.compile(args.d)
    dv = step.derivations[entry.term_name]
    module = cast(TermUpdate, step.terms[entry.term_name])
    print(f"entry:      {entry.name} ({_where(entry)}): {entry.title}")
    print(
        f"energy:     {'  '.join(f'{k} = {v}' for k, v in entry.expressions.items())}"
        + (f"  ({', '.join(f'{k} = {v:g}' for k, v in entry.params)})" if entry.params else "")
    )
    attention = entry.family == "attention"
    width = f"heads = {dv.dims.heads}, p = {dv.dims.head_dim}" if attention else f"M = {dv.dims.head_dim}"
    print(
        f"sizes:      d = {args.d}, {width}, radius = {dv.dims.radius:.6g}"
        + (f", beta = {dv.dims.beta:.6g}" if attention else "")
    )
    print(f"pattern:    {dv.pattern}" + ("" if dv.pattern == entry.pattern else f"  (catalog expects {entry.pattern})"))
    print(f"path:       {dv.path}")
    print(f"reason:     {dv.reason}")
    if dv.constants:
        print(f"constants:  {', '.join(f'{k} = {v}' for k, v in dv.constants.items())}")
    if entry.in_paper:
        check = catalog.compare_with_paper(entry)
        print(
            f"paper:      {check.summary()} (paper_sign = {entry.paper_sign:+d}; "
            f"{catalog.PAPER_OPERATORS[cast(str, entry.paper_operator)].where})"
        )
    if args.latex:
        print(f"latex:      {dv.latex}")
        if entry.in_paper:
            print(f"printed:    {catalog.printed_formula(entry)}")
    if args.source:
        print()
        print(module.source.rstrip())
    return 0


def cmd_verify(args) -> int:
    if args.all and args.names:
        raise EnergyArchError("catalog verify: give entry names or --all, not both")
    if not args.all and not args.names:
        raise EnergyArchError("catalog verify: give one or more entry names, or --all (see 'energyarch catalog list')")
    entries = (
        list(catalog.load_catalog(args.catalog_dir).values())
        if args.all
        else [catalog.get(n, args.catalog_dir) for n in args.names]
    )
    rows, failures = [], []
    for e in entries:
        problems = []
        try:
            step = e.compile(args.d)
            check = verify(step, raise_on_fail=False)
            t = check.terms[0]
        except EnergyArchError as err:
            rows.append((e.name, e.pattern, "-", "-", "-", "-", "-", "-", "FAIL"))
            failures.append(f"{e.name}: {err}")
            continue
        if t.pattern != e.pattern:
            problems.append(f"pattern {t.pattern!r}, catalog expects {e.pattern!r}")
        if not check.ok:
            problems.append("verification against torch.func.grad failed:\n" + check.table())
        paper = "-"
        if e.in_paper:
            pc = catalog.compare_with_paper(e, d=args.d)
            paper = f"{pc.measured_sign:+d}" if pc.measured_sign is not None else "none"
            if not pc.ok:
                problems.append(
                    f"paper formula: {pc.summary()}; |emitted - paper_sign * printed| = {pc.max_abs_diff:.2e}"
                )
        rows.append(
            (
                e.name,
                t.pattern,
                t.path,
                f"{t.grad_max_abs_diff:.1e}",
                f"{t.update_max_abs_diff:.1e}",
                f"{t.energy_before:.7g} -> {t.energy_after:.7g}",
                "yes" if t.decreased else "NO",
                paper,
                "ok" if not problems else "FAIL",
            )
        )
        failures += [f"{e.name}: {p}" for p in problems]
    print(f"float64, d = {args.d}, tolerance 1e-9 (max abs difference with torch.func.grad)")
    print(
        _rows(
            ("entry", "pattern", "path", "max|dgrad|", "max|dX'|", "energy", "descends", "paper sign", "status"), rows
        )
    )
    if failures:
        print()
        print("\n".join(failures))
        print(f"\n{len(failures)} problem(s) in {len(entries)} entries")
        return 1
    print(f"\nall {len(entries)} entries verified")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from .cli import main

    sys.exit(main(["catalog", *sys.argv[1:]]))
