"""The operator catalog: Tables 19–20 of the paper, and beyond, as declarative TOML entries.

Each file ``catalog/<name>.toml`` declares one operator by its energy primitives (expression strings read by
the restricted parser of :mod:`energyarch.expr`; nothing is evaluated) plus what the paper printed for it.
This module loads and validates the entries, builds their energy terms, holds hand transcriptions of the
paper's printed formulas (so tests can compare the emitted operator with what the paper printed), and
regenerates the tables.

>>> from energyarch import catalog
>>> entry = catalog.get("bi-softmax")
>>> entry.title, entry.pattern
('Bi-Softmax (Ours)', 'bi-softmax')
>>> step = entry.compile(d=16)
>>> catalog.compare_with_paper(entry).measured_sign
1

Conventions. The compiler works in the row-token convention (``X ∈ R^{N×d}``, ``Z_h = X W_h``); the paper's
tables use columns (``X ∈ R^{d×N}``, ``Z_h = W_hᵀ X``). The transcriptions below are written in the paper's
convention and transposed at their boundary. ``paper_sign`` is the factor that turns the printed formula into
the true −∇E: it is derived (and checked numerically by :func:`compare_with_paper`), not copied.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union, cast

import sympy as sp
import torch
from torch import Tensor

from .compile import EnergyStep, compile as compile_energy
from .derive import derive
from .energy import Attention, Energy, FeedForward, Sphere, Term
from .errors import DeclarationError, EnergyArchError
from .expr import evaluate, logcosh, parse, relu, sigmoid, softplus, step
from .derivation import patterns_for
from .primitives import R as R_SYM, S as S_SYM, X as X_SYM, Kernel, Scalar, used_params
from .runtime import TermUpdate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FAMILIES = ("attention", "feedforward")
TABLES = ("19", "20", "beyond")
#: The compiler's patterns for the catalog's families, from the pattern registry (plus the autodiff path)
PATTERNS = tuple(p.name for family in FAMILIES for p in patterns_for(family)) + ("autodiff",)

#: Every key an entry may have, with its type and meaning (catalog/README.md documents the same).
FIELDS: Mapping[str, tuple[type | tuple[type, ...], str]] = {
    "name": (str, "identifier of the entry; equals the file name without .toml"),
    "title": (str, "operator name as the table prints it"),
    "family": (str, "'attention' (Eq. 19) or 'feedforward' (Eq. 20)"),
    "table": (str, "'19', '20' (the paper's App. G.1 tables) or 'beyond'"),
    "row": (int, "row number within the table (1-based)"),
    "pattern": (str, "the structure the compiler must recognise (Derivation.pattern)"),
    "f": (str, "attention: outer function f(x)"),
    "K": (str, "attention: kernel, in s = Φ(x)·Φ(y) or r = ‖x − y‖²"),
    "phi": (str, "attention, optional: elementwise feature map Φ(x)"),
    "g": (str, "feed-forward: outer function g(x)"),
    "h": (str, "feed-forward: inner function h(x)"),
    "params": (dict, "optional: values of extra symbols used by the expressions, e.g. { gamma = 0.125 }"),
    "heads": (int, "attention: default number of heads H"),
    "ratio": ((int, float), "feed-forward: default width ratio M / d"),
    "constraint": (str, "radius rule of the constraint sphere, in p (attention) or M (feed-forward)"),
    "paper_formula": (str, "table 19/20: the printed −∇E, transcribed LaTeX, with its table and row"),
    "paper_operator": (str, "table 19/20: name of the transcribed reference in PAPER_OPERATORS"),
    "paper_sign": (int, "table 19/20: +1 or −1, the factor turning the printed formula into −∇E"),
    "notes": (str, "where the catalog differs from the paper and why"),
    "citation": (str, "where the operator comes from"),
}
_COMMON = ("name", "title", "family", "table", "row", "pattern", "constraint", "notes", "citation")
_BY_FAMILY = {"attention": (("f", "K", "heads"), ("phi", "params")), "feedforward": (("g", "h", "ratio"), ("params",))}
_PAPER = ("paper_formula", "paper_operator", "paper_sign")
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


# ---------------------------------------------------------------------------------------------
# entries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One catalog operator, validated. Build its term with :meth:`term`, compile it with :meth:`compile`."""

    name: str
    title: str
    family: str
    table: str
    row: int
    pattern: str
    constraint: str
    notes: str
    citation: str
    f: Optional[str] = None
    K: Optional[str] = None
    phi: Optional[str] = None
    g: Optional[str] = None
    h: Optional[str] = None
    params: tuple[tuple[str, float], ...] = ()
    heads: Optional[int] = None
    ratio: Optional[float] = None
    paper_formula: Optional[str] = None
    paper_operator: Optional[str] = None
    paper_sign: Optional[int] = None
    source: Optional[Path] = field(default=None, compare=False)
    _primitives: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _radius: Optional[sp.Expr] = field(default=None, compare=False, repr=False)

    @property
    def in_paper(self) -> bool:
        return self.table in ("19", "20")

    @property
    def term_name(self) -> str:
        """Name of the compiled term: ``'attn'`` or ``'ff'`` (keys of ``step.derivations``)."""
        return "attn" if self.family == "attention" else "ff"

    @property
    def expressions(self) -> dict[str, str]:
        """The primitive expression strings, by role (``f, K, phi`` or ``g, h``)."""
        roles = ("f", "K", "phi") if self.family == "attention" else ("g", "h")
        return {r: getattr(self, r) for r in roles if getattr(self, r) is not None}

    def radius(self, dim: Optional[int]) -> Optional[float]:
        """Radius of the constraint sphere for head width ``dim`` (p or M); None means the default √dim."""
        if self._radius is None:
            return None
        if self._radius.free_symbols and dim is None:
            raise DeclarationError(
                f"{self._where('constraint')}: {self.constraint!r} depends on the head width; pass d= to build the term"
            )
        value = _radius_values(self._radius, [dim if dim is not None else 1])[0]
        if not (math.isfinite(value) and value > 0):
            raise DeclarationError(f"{self._where('constraint')}: {self.constraint!r} gives radius {value} at {dim}")
        return value

    def term(self, d: Optional[int] = None, *, beta: Optional[float] = None) -> Term:
        """The energy term with the entry's defaults. ``d`` is needed only for a radius rule other than the
        default √p / √M; ``beta`` overrides 1/√p (attention only)."""
        prim = self._primitives
        if self.family == "attention":
            assert self.heads is not None, "an attention entry has heads (checked on load)"
            radius = self.radius(None if d is None else d // self.heads)
            return Attention(
                f=prim["f"], K=prim["K"], heads=self.heads, constraint=Sphere(radius), beta=beta, name=self.term_name
            )
        if beta is not None:
            raise DeclarationError(f"entry {self.name!r}: beta= applies to attention entries only")
        assert self.ratio is not None, "a feed-forward entry has a ratio (checked on load)"
        radius = self.radius(None if d is None else max(1, int(round(self.ratio * d))))
        return FeedForward(g=prim["g"], h=prim["h"], ratio=self.ratio, constraint=Sphere(radius), name=self.term_name)

    def energy(self, d: Optional[int] = None) -> Energy:
        return Energy((self.term(d),))

    def compile(self, d: int = 64, **kwargs) -> EnergyStep:
        """``energyarch.compile`` of the entry's term at width ``d`` (keyword arguments pass through)."""
        return compile_energy(self.term(d), d, **kwargs)

    def _where(self, key: str) -> str:
        return f"{self.source or self.name}: key {key!r}"


def _fail(path: Path, key: Optional[str], why: str) -> DeclarationError:
    where = f"catalog entry {path}" + (f": key {key!r}" if key else "")
    return DeclarationError(f"{where}: {why}")


def _check_keys(path: Path, data: Mapping[str, object]) -> None:
    for key in data:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise _fail(path, key, f"unknown key{hint} Known keys: {', '.join(FIELDS)}")
    for key, value in data.items():
        types = FIELDS[key][0]
        if isinstance(value, bool) or not isinstance(value, types):
            want = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise _fail(path, key, f"expected {want}, got {type(value).__name__} {value!r}")
    for key in _COMMON:
        if key not in data:
            raise _fail(path, key, f"missing required field ({FIELDS[key][1]})")
    family = data["family"]
    if family not in FAMILIES:
        raise _fail(path, "family", f"{family!r} is not one of {FAMILIES}")
    required, optional = _BY_FAMILY[family]
    other = next(f for f in FAMILIES if f != family)
    for key in required:
        if key not in data:
            raise _fail(path, key, f"missing required field for a {family} entry ({FIELDS[key][1]})")
    for key in set(_BY_FAMILY[other][0] + _BY_FAMILY[other][1]) - set(required + optional):
        if key in data:
            raise _fail(path, key, f"belongs to {other} entries; this entry has family = {family!r}")
    table = data["table"]
    if table not in TABLES:
        raise _fail(path, "table", f'{table!r} is not one of {TABLES} (write it as a string, e.g. table = "19")')
    for key in _PAPER:
        if table == "beyond" and key in data:
            raise _fail(path, key, 'only entries of the paper\'s tables (table = "19" or "20") carry paper_* fields')
        if table != "beyond" and key not in data:
            raise _fail(path, key, f"missing required field for a Table {table} entry ({FIELDS[key][1]})")


def _check_values(path: Path, data: Mapping[str, Any]) -> None:  # types checked by _check_keys
    if data["name"] != path.stem:
        raise _fail(path, "name", f"{data['name']!r} must equal the file name {path.stem!r}")
    if not _NAME.match(data["name"]):
        raise _fail(path, "name", f"{data['name']!r} must be lowercase words joined by '-', e.g. 'rbf-softmax'")
    if data["row"] < 1:
        raise _fail(path, "row", f"{data['row']} must be >= 1")
    if data["pattern"] not in PATTERNS:
        raise _fail(path, "pattern", f"{data['pattern']!r} is not a compiler pattern; choose one of {PATTERNS}")
    if "heads" in data and data["heads"] < 1:
        raise _fail(path, "heads", f"{data['heads']} must be a positive integer")
    if "ratio" in data and not data["ratio"] > 0:
        raise _fail(path, "ratio", f"{data['ratio']} must be positive")
    if "paper_sign" in data and data["paper_sign"] not in (1, -1):
        raise _fail(path, "paper_sign", f"{data['paper_sign']} must be +1 or -1")
    if "paper_operator" in data and data["paper_operator"] not in PAPER_OPERATORS:
        raise _fail(
            path,
            "paper_operator",
            f"{data['paper_operator']!r} is not a transcribed formula; known: {sorted(PAPER_OPERATORS)}",
        )
    if "paper_operator" in data and PAPER_OPERATORS[data["paper_operator"]].family != data["family"]:
        raise _fail(
            path,
            "paper_operator",
            f"{data['paper_operator']!r} transcribes a {PAPER_OPERATORS[data['paper_operator']].family} formula",
        )
    for key, value in data.get("params", {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, "params", f"parameter {key} = {value!r} must be a number")


def _parse_primitives(path: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    params = {k: float(v) for k, v in data.get("params", {}).items()}
    out: dict[str, Any] = {}
    key = ""
    try:
        if data["family"] == "attention":
            key = "phi"
            phi = Scalar.parse(data["phi"], params=used_params(data["phi"], params)) if "phi" in data else None
            key = "f"
            out["f"] = Scalar.parse(data["f"], params=used_params(data["f"], params))
            key = "K"
            out["K"] = Kernel.parse(data["K"], phi=phi, params=used_params(data["K"], params))
        else:
            for key in ("g", "h"):
                out[key] = Scalar.parse(data[key], params=used_params(data[key], params))
    except EnergyArchError as err:
        raise _fail(path, key, f"{data[key]!r} is not a valid expression: {err}") from None
    return out


def _parse_constraint(path: Path, data: Mapping[str, Any]) -> Optional[sp.Expr]:
    dim = "p" if data["family"] == "attention" else "M"
    try:
        rule = parse(data["constraint"], (dim,), where=f"constraint radius rule (in {dim})")
    except EnergyArchError as err:
        raise _fail(path, "constraint", str(err)) from None
    # Numbers only: a symbolic simplification of catalog text is unbounded in cost (a product of a few trigonometric
    # terms kept sympy busy for minutes), while evaluating the parsed tree in float64 costs one pass over it.
    probes = (1, 2, 3, 5, 16, 64, 256, 1024)
    values = _radius_values(rule, probes)
    if all(abs(v - math.sqrt(n)) <= 1e-12 * math.sqrt(n) for v, n in zip(values, probes)):
        return None  # the paper's default, √p / √M
    for probe, value in zip(probes, values):
        if not (math.isfinite(value) and value > 0):
            raise _fail(
                path,
                "constraint",
                f"{data['constraint']!r} must give a positive radius (at {dim} = {probe} it gives {value:g})",
            )
    return rule


def _radius_values(rule: sp.Expr, dims) -> list[float]:
    """The radius rule at each head width, in float64 by walking the parsed tree (never a symbolic operation);
    NaN where it has no real value (an overflow, a division by zero, a negative base under a fractional power)."""
    env = {s.name: torch.tensor([float(n) for n in dims], dtype=torch.float64) for s in rule.free_symbols}
    try:
        with torch.no_grad():
            out = evaluate(rule, env)
    except (OverflowError, ZeroDivisionError, ValueError, TypeError, RuntimeError):  # EnergyArchError is a ValueError
        return [math.nan] * len(dims)
    if isinstance(out, complex) or (isinstance(out, Tensor) and out.is_complex()):
        return [math.nan] * len(dims)
    out = torch.as_tensor(out, dtype=torch.float64).expand(len(dims))
    return [float(v) for v in out]


def load_entry(path: Union[str, Path]) -> Entry:
    """Read and validate one ``.toml`` entry; :class:`~energyarch.errors.DeclarationError` names the file
    and the key on any problem (unknown or missing key, wrong type, expression the parser rejects)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise _fail(path, None, f"cannot be read ({err.strerror})") from None
    except tomllib.TOMLDecodeError as err:
        raise _fail(path, None, f"is not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise _fail(path, None, f"is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8") from None
    except (RecursionError, MemoryError):
        raise _fail(path, None, "nests too deeply to read; an entry is a flat table of strings and numbers") from None
    _check_keys(path, data)
    _check_values(path, data)
    primitives = _parse_primitives(path, data)
    radius = _parse_constraint(path, data)
    values = {k: v for k, v in data.items() if k != "params"}
    if "ratio" in values:
        values["ratio"] = float(values["ratio"])
    for key in ("notes", "title", "citation", "paper_formula"):
        if key in values:
            values[key] = values[key].strip()
    params = tuple(sorted((k, float(v)) for k, v in data.get("params", {}).items()))
    return Entry(**values, params=params, source=path, _primitives=primitives, _radius=radius)


def default_directory() -> Path:
    """``$ENERGYARCH_CATALOG`` if set, else the project's ``catalog/`` folder."""
    env = os.environ.get("ENERGYARCH_CATALOG")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "catalog"


def _order(entry: Entry) -> tuple:
    return (TABLES.index(entry.table), entry.row)


def load_catalog(directory: Union[str, Path, None] = None) -> dict[str, Entry]:
    """All entries of ``directory`` (default :func:`default_directory`), by name, in table order:
    Table 19 rows, Table 20 rows, then the entries beyond the paper."""
    directory = Path(directory) if directory is not None else default_directory()
    if not directory.is_dir():
        raise DeclarationError(
            f"catalog directory {directory} does not exist; pass directory= or set "
            f"ENERGYARCH_CATALOG to the folder holding the .toml entries"
        )
    entries = [load_entry(p) for p in sorted(directory.glob("*.toml"))]
    if not entries:
        raise DeclarationError(f"catalog directory {directory} holds no .toml entries")
    seen: dict[tuple, Entry] = {}
    for e in entries:
        slot = (e.table, e.row)
        if slot in seen:
            raise _fail(
                cast(Path, e.source),
                "row",  # loaded from a file: it has a source
                f"table {e.table} row {e.row} is also taken by {seen[slot].source}",
            )
        seen[slot] = e
    return {e.name: e for e in sorted(entries, key=_order)}


def get(name: Union[str, Entry], directory: Union[str, Path, None] = None) -> Entry:
    """The entry called ``name`` (an :class:`Entry` passes through)."""
    if isinstance(name, Entry):
        return name
    entries = load_catalog(directory)
    if name not in entries:
        close = difflib.get_close_matches(str(name), entries, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise DeclarationError(f"no catalog entry named {name!r}.{hint} Entries: {', '.join(entries)}")
    return entries[name]


# ---------------------------------------------------------------------------------------------
# the paper's printed formulas, transcribed by hand (column convention, then transposed)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperOperator:
    """A hand transcription of one printed formula: ``fn(coords, beta)`` → the printed expression at the
    coordinates, in rows (same shape as ``coords``); ``where`` says where it is printed."""

    name: str
    family: str
    where: str
    fn: Callable[..., Tensor]


PAPER_OPERATORS: dict[str, PaperOperator] = {}


def _transcribed(name: str, family: str, where: str):
    def register(fn):
        PAPER_OPERATORS[name] = PaperOperator(name, family, where, fn)
        return fn

    return register


def _cols(A: Tensor) -> Tensor:
    """Rows (…, N, k) → the paper's columns (…, k, N), and back."""
    return A.transpose(-1, -2)


@_transcribed("eq7_bisoftmax", "attention", "Eq. 7 (Table 19, row 1)")
def eq7_bisoftmax(Z: Tensor, beta: float) -> Tensor:
    """Eq. 7: −Σ_h W_h [W_hᵀX (softmax_col(β (W_hᵀX)ᵀ(W_hᵀX)) + softmax_row(β (W_hᵀX)ᵀ(W_hᵀX)))].

    Returns the bracket at the coordinates ``Z`` (rows); the printed formula carries the minus sign."""
    Zc = _cols(Z)  # (…, p, N): W_hᵀ X
    A = beta * (_cols(Zc) @ Zc)  # (…, N, N): β (W_hᵀX)ᵀ (W_hᵀX)
    printed = -(Zc @ (torch.softmax(A, dim=-2) + torch.softmax(A, dim=-1)))  # column-wise + row-wise
    return _cols(printed)


@_transcribed("table19_sigmoid_softmax", "attention", "Table 19, row 2")
def table19_sigmoid_softmax(Z: Tensor, beta: float) -> Tensor:
    """Σ_h W_h [W_hᵀX σ(1 − σ)(β (W_hᵀX)ᵀ W_hᵀX)], printed without a leading minus sign."""
    Zc = _cols(Z)
    A = beta * (_cols(Zc) @ Zc)
    sig = torch.sigmoid(A)
    printed = Zc @ (sig * (1 - sig))
    return _cols(printed)


@_transcribed("table19_linear_attention", "attention", "Table 19, row 3 (Φ = σ)")
def table19_linear_attention(Z: Tensor, beta: float) -> Tensor:
    """Σ_h W_h [Φ'(W_hᵀX) ⊙ (β Φ(W_hᵀX) Φ(W_hᵀX)ᵀ Φ(W_hᵀX))], Φ = σ; no minus sign printed."""
    Zc = _cols(Z)
    Phi = torch.sigmoid(Zc)  # (…, p, N)
    dPhi = Phi * (1 - Phi)
    printed = dPhi * (beta * (Phi @ _cols(Phi)) @ Phi)  # (p×N)(N×p) = p×p, then ·(p×N)
    return _cols(printed)


@_transcribed("eq10_relu_ff", "feedforward", "Eq. 10 (Table 20, row 1)")
def eq10_relu_ff(U: Tensor, beta: Optional[float] = None) -> Tensor:
    """D [ReLU(DᵀX)], the bracket at U."""
    return _cols(torch.relu(_cols(U)))


@_transcribed("table20_softmax_ff", "feedforward", "Table 20, row 2")
def table20_softmax_ff(U: Tensor, beta: Optional[float] = None) -> Tensor:
    """D [softmax_col(DᵀX)]: softmax down each column (over the M basis directions of one token)."""
    return _cols(torch.softmax(_cols(U), dim=-2))


@_transcribed("table20_gated_ff", "feedforward", "Table 20, row 3 (Φ = σ)")
def table20_gated_ff(U: Tensor, beta: Optional[float] = None) -> Tensor:
    """D [colsum(Φ(DᵀX)) ⊙ Φ'(DᵀX)], Φ = σ: the only dimensionally valid reading of the printed underbrace."""
    Uc = _cols(U)  # (…, M, N)
    Phi = torch.sigmoid(Uc)
    column_sum = Phi.sum(dim=-2, keepdim=True)  # (…, 1, N), broadcast over the M rows
    return _cols(column_sum * (Phi * (1 - Phi)))


def paper_reference(
    entry: Union[str, Entry], coords: Tensor, *, beta: Optional[float] = None, directory: Union[str, Path, None] = None
) -> Tensor:
    """The formula the paper printed for ``entry``, at constrained coordinates ``Z`` (…, N, p) or ``U`` (…, N, M).

    Returns the printed expression *inside* ``Σ_h W_h (…)`` / ``D (…)``, in rows, as printed: multiply by
    ``entry.paper_sign`` to get −∇_Z E. ``beta`` defaults to 1/√p.
    """
    entry = get(entry, directory)
    if not entry.in_paper:
        raise DeclarationError(f"entry {entry.name!r} is beyond the paper: it has no printed formula")
    op = PAPER_OPERATORS[cast(str, entry.paper_operator)]  # a paper entry has one (checked on load)
    if beta is None:
        beta = 1.0 / math.sqrt(coords.shape[-1])
    return op.fn(coords, beta)


def paper_direction(entry: Union[str, Entry], module, X: Tensor, *, directory: Union[str, Path, None] = None) -> Tensor:
    """The printed token-space update Σ_h W_h (…) at ``X`` (rows, shape like ``X``), with the coordinates,
    weights and β of a compiled term ``module`` (a :class:`~energyarch.runtime.TermUpdate`)."""
    entry = get(entry, directory)
    Z = module.normalize(module.coords(X))  # (…, H, N, p): Z_RMS of Eq. 8, in rows
    R = paper_reference(entry, Z, beta=getattr(module, "beta", None))
    W = module.weight.unflatten(1, (module.heads, module.head_dim))  # (d, H, p): W_h = W[:, h, :]
    update_cols = torch.einsum("dhp,...hpn->...dn", W, _cols(R))  # Σ_h W_h R_h, (…, d, N)
    return _cols(update_cols)


@dataclass(frozen=True)
class PaperCheck:
    """Emitted −∇E against the printed formula of one entry (float64)."""

    name: str
    declared_sign: int
    measured_sign: Optional[int]  # +1: emitted = printed; −1: emitted = −printed; None: neither
    max_abs_diff: float  # |emitted − declared_sign · printed| at the coordinates
    direction_max_abs_diff: float  # the same in token space, through the module's W
    tol: float

    @property
    def ok(self) -> bool:
        return (
            self.measured_sign == self.declared_sign
            and self.max_abs_diff <= self.tol
            and self.direction_max_abs_diff <= self.tol
        )

    def summary(self) -> str:
        if self.measured_sign is None:
            return "DIFFERS from the printed formula (beyond sign)"
        text = (
            "matches the printed form"
            if self.measured_sign == 1
            else "differs in sign: printed = +∇E, so −∇E = −(printed)"
        )
        if self.measured_sign != self.declared_sign:
            text += f" (catalog paper_sign = {self.declared_sign:+d} is wrong)"
        return text


def compare_with_paper(
    entry: Union[str, Entry],
    *,
    d: int = 16,
    tokens: int = 7,
    seed: int = 0,
    tol: float = 1e-9,
    directory: Union[str, Path, None] = None,
) -> PaperCheck:
    """Compile ``entry`` in float64 and compare its emitted −∇E with ± the transcribed printed formula."""
    entry = get(entry, directory)
    if not entry.in_paper:
        raise DeclarationError(f"entry {entry.name!r} is beyond the paper: nothing to compare with")
    module = cast(TermUpdate, entry.compile(d, dtype=torch.float64).terms[entry.term_name])
    sign = cast(int, entry.paper_sign)  # a paper entry has one (checked on load)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(2, tokens, d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        Z = module.normalize(module.coords(X))
        emitted = -module.grad_Z(Z)
        printed = paper_reference(entry, Z, beta=getattr(module, "beta", None))
        diffs = {s: float((emitted - s * printed).abs().max()) for s in (1, -1)}
        measured = next((s for s, v in diffs.items() if v <= tol), None)
        direction = module.direction(X) - sign * paper_direction(entry, module, X)
    return PaperCheck(entry.name, sign, measured, diffs[sign], float(direction.abs().max()), tol)


# ---------------------------------------------------------------------------------------------
# tables (markdown with LaTeX)
# ---------------------------------------------------------------------------------------------

_DISPLAY = {
    relu: sp.Function("ReLU"),
    sigmoid: sp.Function("sigma"),
    softplus: sp.Function("softplus"),
    logcosh: sp.Function("logcosh"),
    step: sp.Function("step"),
}


def _tex(expr: sp.Expr, slots: Mapping[sp.Symbol, str]) -> str:
    """LaTeX of ``expr`` with each symbol of ``slots`` replaced by a LaTeX fragment (parenthesised where a
    power applies to it). Named primitives print as undefined functions (ReLU, σ, softplus, …)."""
    for cls, shown in _DISPLAY.items():
        expr = expr.replace(lambda e, cls=cls: isinstance(e, cls), lambda e, shown=shown: shown(*e.args))
    marks = {sym: sp.Symbol(f"zzslot{chr(97 + i)}") for i, sym in enumerate(slots)}
    text = sp.latex(expr.xreplace(marks))
    for sym, mark in marks.items():
        fragment = slots[sym]
        text = re.sub(re.escape(mark.name) + r"(?=\^)", lambda _m: r"\left(" + fragment + r"\right)", text)
        text = text.replace(mark.name, fragment)
    return text


def _symbols(expr: sp.Expr) -> dict[str, sp.Symbol]:
    return {s.name: s for s in expr.free_symbols}


def _primitive_tex(entry: Entry, role: str) -> str:
    prim = entry._primitives["K"].phi if role == "phi" else entry._primitives[role]
    expr = prim.expr
    if role == "K":
        var = "r" if prim.kind == "distance" else "s"
        if var == "r":
            slot = r"\lVert \mathbf{x} - \mathbf{y} \rVert^{2}"
        elif prim.phi is not None:
            slot = r"\Phi(\mathbf{x})^\top \Phi(\mathbf{y})"
        else:
            slot = r"\mathbf{x}^\top \mathbf{y}"
        return _tex(expr, {_symbols(expr).get(var, R_SYM if var == "r" else S_SYM): slot})
    return _tex(expr, {})


def _energy_tex(entry: Entry) -> str:
    prim = entry._primitives
    if entry.family == "attention":
        K = prim["K"]
        kexpr = K.expr
        if K.kind == "distance":
            slot = r"\lVert \mathbf{z}_i - \mathbf{z}_j \rVert^{2}"
        elif K.phi is not None:
            slot = r"\Phi(\mathbf{z}_i)^\top \Phi(\mathbf{z}_j)"
        else:
            slot = r"\mathbf{z}_i^\top \mathbf{z}_j"
        var = R_SYM if K.kind == "distance" else S_SYM
        inner = r"\sum_{j=1}^{N} " + _tex(kexpr, {_symbols(kexpr).get(var.name, var): slot})
        outer = _tex(prim["f"].expr, {_symbols(prim["f"].expr).get("x", X_SYM): inner})
        return r"\sum_{h=1}^{H} \sum_{i=1}^{N} " + outer
    h = prim["h"].expr
    inner = r"\sum_{m=1}^{M} " + _tex(h, {_symbols(h).get("x", X_SYM): r"\mathbf{d}_m^\top \mathbf{x}_i"})
    outer = _tex(prim["g"].expr, {_symbols(prim["g"].expr).get("x", X_SYM): inner})
    return r"-\sum_{i=1}^{N} " + outer


def printed_formula(entry: Entry) -> str:
    """The printed −∇E of a paper entry without its trailing source annotation and ``−∇E =`` prefix."""
    text = re.split(r"\\quad\s*\\text\{\s*\(", cast(str, entry.paper_formula))[0].strip()
    return re.split(r"-\\nabla_\{\\mathbf\{X\}\} E_\{\\text\{\w+\}\}\s*=\s*", text)[-1]


def _derived_tex(latex: str) -> str:
    prefix = re.match(r"^\s*-\\nabla_\{\\mathbf\{X\}\} E\s*=\s*", latex)
    return latex[prefix.end() :] if prefix else latex


def _math(tex: str) -> str:
    """A LaTeX fragment as an inline-math markdown table cell (pipes would split the cell)."""
    tex = tex.replace(r"\|", r"\Vert ").replace("|", r"\vert ")
    return f"${tex}$"


def _text(text: str) -> str:
    return " ".join(text.split()).replace("|", r"\|")


def _params_tex(entry: Entry) -> str:
    return ", ".join(f"{_tex(sp.Symbol(k), {})} = {v:g}" for k, v in entry.params)


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.search(r"(?<=[.!?])\s+", flat)
    return flat[: match.start()] if match else flat


def tables_markdown(directory: Union[str, Path, None] = None, *, d: int = 64, check_d: int = 16) -> str:
    """Regenerate Tables 19 and 20 and a "beyond the paper" table from the catalog (markdown + LaTeX).

    The derived −∇E column is :attr:`Derivation.latex` at width ``d``; the "vs. paper" column is measured,
    not declared: each paper entry is compiled in float64 (width ``check_d``) and its emitted −∇E compared
    with ± the transcribed printed formula (:func:`compare_with_paper`).
    """
    entries = list(load_catalog(directory).values())
    out = [
        "# Operator catalog",
        "",
        "Regenerated by `energyarch catalog tables` from `catalog/*.toml`. Column-token convention as in "
        r"the paper: $\mathbf{z}_i = \mathbf{W}_h^\top \mathbf{x}_i$, $\mathbf{Z}_h = \mathbf{W}_h^\top "
        r"\mathbf{X}$, $\beta = 1/\sqrt{p}$; the derived operator is the compiler's `Derivation.latex` "
        f'(d = {d}); "vs. paper" compares the emitted operator numerically (float64) with the printed '
        "formula, transcribed in `energyarch.catalog.PAPER_OPERATORS`.",
        "",
    ]
    heads = {
        "19": (
            "Table 19: alternative attention energies $E_{\\text{ATTN}}$ and the induced operators",
            [
                "Operator",
                "$f(x)$",
                r"$K(\mathbf{x}, \mathbf{y})$",
                r"$E_{\text{ATTN}}$",
                r"derived $-\nabla_{\mathbf{X}} E_{\text{ATTN}}$",
                "paper prints",
                "pattern",
                "vs. paper",
            ],
        ),
        "20": (
            "Table 20: alternative feed-forward energies $E_{\\text{FF}}$ and the induced operators",
            [
                "Operator",
                "$g(x)$",
                "$h(x)$",
                r"$E_{\text{FF}}$",
                r"derived $-\nabla_{\mathbf{X}} E_{\text{FF}}$",
                "paper prints",
                "pattern",
                "vs. paper",
            ],
        ),
        "beyond": (
            "Beyond the paper",
            ["Operator", "family", "primitives", "$E$", r"derived $-\nabla_{\mathbf{X}} E$", "pattern", "note"],
        ),
    }
    for table, (caption, columns) in heads.items():
        rows = [e for e in entries if e.table == table]
        if not rows:
            continue
        out += [f"## {caption}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for e in rows:
            dv = derive(e.term(d), d)
            pattern = dv.pattern if dv.pattern == e.pattern else f"{dv.pattern} (catalog expects {e.pattern})"
            derived = _math(_derived_tex(dv.latex))
            params = _params_tex(e)
            if table == "beyond":
                lhs = {"K": r"K(\mathbf{x}, \mathbf{y})", "phi": r"\Phi(x)"}
                role_tex = [f"{lhs.get(r, r + '(x)')} = {_primitive_tex(e, r)}" for r in e.expressions]
                roles = _math(",\\ ".join(role_tex + ([params] if params else [])))
                cells = [
                    _text(e.title),
                    e.family,
                    roles,
                    _math(_energy_tex(e)),
                    derived,
                    pattern,
                    _text(_first_sentence(e.notes)),
                ]
            else:
                first, second = ("f", "K") if e.family == "attention" else ("g", "h")
                second_tex = _primitive_tex(e, second)
                if e.phi is not None:
                    second_tex += r",\ \Phi(x) = " + _primitive_tex(e, "phi")
                check = compare_with_paper(e, d=check_d)
                where = PAPER_OPERATORS[cast(str, e.paper_operator)].where
                cells = [
                    _text(e.title),
                    _math(_primitive_tex(e, first)),
                    _math(second_tex),
                    _math(_energy_tex(e)),
                    derived,
                    _math(printed_formula(e)),
                    pattern,
                    _text(f"{check.summary()}; printed in {where}"),
                ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


__all__ = [
    "Entry",
    "FIELDS",
    "PAPER_OPERATORS",
    "PaperCheck",
    "PaperOperator",
    "compare_with_paper",
    "default_directory",
    "get",
    "load_catalog",
    "load_entry",
    "paper_direction",
    "paper_reference",
    "tables_markdown",
]
