"""The derivation's shared core: the record it produces, the cost bounds, and the registries of pieces.

A derivation is assembled from registered pieces, each in a file of its own:

- a **family** (:mod:`.attention`, :mod:`.feedforward`, :mod:`.causal`) knows its term type, the sizes, the
  declared expressions and their derivatives, the generic energy and the autodiff path;
- a **pattern** (:mod:`.patterns`) recognises a structure within a family (``match``), gives its closed form
  as LaTeX, and lowers it to memory-lean torch source (``grad_lines``, optionally ``energy_lines``).

Adding a pattern is one decorated class in a new file under ``patterns/`` (imported by ``patterns/__init__``);
adding a family is one decorated class. Nothing else changes (the ``register_kl`` idea of torch.distributions).

>>> sorted(p.name for p in patterns_for("feedforward"))[:3]
['ReLU FF', 'elementwise FF', 'gated FF']
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Mapping, NoReturn, Optional, TypeVar, cast

import sympy as sp
import torch

from ..energy import Term, params_of, primitives_of
from ..errors import CompileError, DeclarationError
from ..expr import RUNTIME_NAMES, evaluate, tidy
from ..primitives import X, Scalar
from .checks import TermCheck, gradient_check

#: Largest basis (entries of one term's weight matrix) compile accepts: a typo such as width=2**40 is a
#: CompileError naming the size, not an allocator failure.
MAX_ELEMENTS = 2**31

BETA = sp.Symbol("beta", positive=True)
SK, SJ = sp.symbols("S_k S_j", positive=True)
SIGMA = sp.Symbol("Sigma", real=True)  # Σ_m h(u_m) in the feed-forward family

T = TypeVar("T", bound=Term)  # the term type a family derives


@dataclass(frozen=True)
class Dims:
    """Sizes fixed at compile time."""

    d: int
    heads: int
    head_dim: int  # p for attention, M for feed-forward
    radius: float
    beta: float


@dataclass(frozen=True)
class Derivation:
    """What the compiler derived for one term.

    Attributes:
        term: the declared term.
        dims: sizes and constants.
        path: ``'symbolic'`` (closed form emitted) or ``'autodiff'`` (``torch.func.grad``).
        pattern: the registered pattern that matched (e.g. ``'bi-softmax'``, ``'distance kernel'``,
            ``'causal bi-softmax'``, ``'ReLU FF'``) or ``'autodiff'``.
        reason: why this path/pattern was taken.
        pieces: sympy expressions: ``f, df, kappa, dkappa, phi, dphi`` (or ``rho, drho``) or ``g, dg, h, dh``.
        constants: pattern constants (``a, b, c, c1, c2``) as sympy expressions in ``beta``.
        operator: sympy expression of the coupling ``C_kj`` (in ``s`` or ``r``, ``S_k, S_j``) for attention, or
            of ``−∂E/∂u`` (in ``x`` = u and ``Sigma`` = Σ_m h(u_m)) for feed-forward.
        latex: the update ``−∇_X E`` in matrix form (column-token convention, as in the paper's tables).
    """

    term: Term
    dims: Dims
    path: str
    pattern: str
    reason: str
    pieces: Mapping[str, sp.Expr] = field(default_factory=dict)
    constants: Mapping[str, sp.Expr] = field(default_factory=dict)
    operator: Optional[sp.Expr] = None
    latex: str = ""

    @property
    def family(self) -> str:
        return self.term.family


# ---------------------------------------------------------------------------------------------
# registries
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """What a family hands to its patterns: the term, its sizes, and the bound expressions with derivatives."""

    term: Term
    dims: Dims
    kind: str  # attention: 'inner' | 'distance' | 'callable'; feed-forward: 'elementwise'
    pieces: Mapping[str, sp.Expr]


class Pattern:
    """A recognised structure: ``match`` → constants (or None), ``latex``, and its lowering to torch source.

    Subclasses set ``name``, ``family``, ``kinds`` (which candidates it looks at), ``order`` (lower is tried
    first) and ``reason`` (shown by ``report()``), and are registered with :func:`register_pattern`.
    """

    name: str = ""
    family: str = ""
    kinds: tuple = ("inner",)
    order: int = 100
    reason: str = ""

    def match(self, c: Candidate) -> Optional[dict]:
        raise NotImplementedError

    def latex(self, c: Candidate, consts: Mapping[str, sp.Expr]) -> str:
        return ""

    def operator(self, c: Candidate) -> Optional[sp.Expr]:
        return None

    def grad_lines(self, dv: Derivation) -> list[str]:
        """Body of the emitted ``grad_Z`` (names from the maths: Z, Phi, P, C, ...)."""
        raise NotImplementedError

    def energy_lines(self, dv: Derivation) -> Optional[list[str]]:
        """Body of the emitted ``energy_Z``; None means the family's generic energy."""
        return None

    #: runtime helpers this pattern's lines call beyond its family's :attr:`Family.runtime_names`: module → names
    runtime_names: Mapping[str, tuple[str, ...]] = {}

    def derivation(self, c: Candidate, consts: dict) -> Derivation:
        return Derivation(
            c.term,
            c.dims,
            "symbolic",
            self.name,
            self.reason,
            dict(c.pieces),
            consts,
            self.operator(c),
            self.latex(c, consts),
        )


class Family(Generic[T]):
    """An energy family: the term type it derives, and everything the pipeline asks about its terms.

    A new family is one decorated subclass (and its term class, a frozen dataclass subclassing
    :class:`energyarch.energy.Term` whose ``family`` is this ``name``): :meth:`derive` gives the
    :class:`Derivation`; :meth:`energy_lines` / :meth:`autodiff_lines` the emitted energy and generic gradient;
    :meth:`signature` and :meth:`energy_text` the emitted module's template (arguments, docstrings);
    :attr:`runtime_base` and :attr:`runtime_names` what the emitted module subclasses and may import (the emitted
    module imports nothing else, :func:`energyarch.emit.check_source`); :meth:`reference_energy` the independent
    energy and :meth:`check` the check that :func:`energyarch.verify` runs. The defaults describe a term on
    per-head coordinates ``Z`` (B, H, N, p) with the plain :class:`~energyarch.runtime.TermUpdate`.
    """

    name: str = ""
    term_type: type = object
    #: the emitted module's argument (coordinates) for the default signature and autodiff path
    variable: str = "Z"
    #: the class the emitted update subclasses, as (module, class name): a
    #: :class:`~energyarch.runtime.TermUpdate` subclass whose constructor takes TermUpdate's arguments
    runtime_base: tuple[str, str] = ("energyarch.runtime", "TermUpdate")
    #: the runtime helpers its emitted lines (and its patterns') call: module → names; the emitted module imports
    #: those it uses, besides :attr:`runtime_base` and the printer's helpers (:data:`energyarch.expr.RUNTIME_NAMES`)
    runtime_names: Mapping[str, tuple[str, ...]] = {}

    def derive(self, term: T, d: int) -> Derivation:
        raise NotImplementedError

    def energy_lines(self, dv: Derivation) -> list[str]:
        raise NotImplementedError

    def autodiff_lines(self, dv: Derivation) -> list[str]:
        var = self.variable
        return [
            "# generic path: differentiate the term's energy with torch.func.grad",
            f"return torch.func.grad(lambda {var}_: self.energy_Z({var}_).sum())({var})",
        ]

    def signature(self, dv: Derivation) -> dict:
        """What the emitted template takes from the family: arguments, docstrings, the rule."""
        var = self.variable
        return {
            "args": var,
            "shape": "(B, H, N, p)",
            "grad_doc": f"∇_{var} E",
            "energy_doc": f"Energy of the term at {var} (B, H, N, p); shape (B,).",
            "rule": f"X ← X − step ⊙ Σ_h (∇_{var} E)({var}_h) W_hᵀ",
        }

    def energy_text(self, dv: Derivation) -> str:
        """One line saying what the energy is (the ENERGY constant of the emitted module)."""
        prims = ", ".join(f"{k} = {p.name}" for k, p in primitives_of(dv.term).items())
        return f"{dv.term.family} term {dv.term.name}: {prims}"

    def reference_energy(self, term: T, Z, env: Mapping[str, float]):
        """E of ``term`` at coordinates ``Z``, built from the declaration alone (shape ``Z.shape[:-3]``)."""
        raise NotImplementedError(f"family {self.name!r} defines no reference energy")

    def check(self, term: Term, module, reference, X: torch.Tensor, dv: Derivation, step_size: float) -> TermCheck:
        """:func:`energyarch.verify`'s check of one compiled term (float64): ``module`` is the emitted module,
        ``reference`` the autodiff-path module with the same weights, ``X`` (B, N, d) the random input.

        The default compares ``∇_Z E`` with ``torch.func.grad`` of :meth:`reference_energy`, the update with both
        references, and checks descent (:func:`~energyarch.derivation.checks.gradient_check`).
        """
        return gradient_check(self, term, module, reference, X, dv, step_size)


PATTERNS: dict[str, Pattern] = {}
FAMILIES: dict[str, Family[Any]] = {}


def register_pattern(cls: type) -> type:
    """Class decorator: register a :class:`Pattern` (one instance, by name)."""
    inst = cls()
    if not inst.name or inst.name in PATTERNS:
        raise CompileError(f"pattern {inst.name!r} is unnamed or registered twice")
    _check_runtime_names(f"pattern {inst.name!r}", inst.runtime_names)
    PATTERNS[inst.name] = inst
    return cls


def register_family(cls: type) -> type:
    """Class decorator: register a :class:`Family` (one instance, by name); its runtime base class and names
    must be importable names (checked here, so that a bad registration fails where it is written)."""
    inst = cls()
    if not inst.name or not isinstance(inst.name, str):
        raise CompileError(f"family class {cls.__name__}: set name = '<family name>' (got {inst.name!r})")
    _check_runtime_names(f"family {inst.name!r}", inst.runtime_names, base=inst.runtime_base)
    FAMILIES[inst.name] = inst
    return cls


#: names the emitted template defines itself (``import math`` / ``import torch``, ``self``, the builtins it calls,
#: its string constants): no runtime name may take them
TEMPLATE_NAMES = frozenset(
    {"math", "torch", "self", "abs", "float", "TERM", "FAMILY", "ENERGY", "PATTERN", "PATH", "REASON", "TYING"}
)


def _check_runtime_names(owner: str, names: Mapping[str, tuple[str, ...]], base: Optional[tuple] = None) -> None:
    """Module paths are dotted identifiers, names are identifiers, none private-dunder or a template name."""

    def fail(why: str) -> NoReturn:
        raise CompileError(
            f"{owner}: {why}; runtime names are {{'package.module': ('name', ...)}} and "
            f"runtime_base is ('package.module', 'ClassName')"
        )

    if not isinstance(names, Mapping):
        fail(f"runtime_names = {names!r} is not a mapping")
    for module, listed in names.items():
        if (
            isinstance(listed, str)
            or not isinstance(listed, (tuple, list))
            or not all(isinstance(n, str) for n in listed)
        ):
            fail(f"the names of {module!r} must be a tuple of strings, got {listed!r}")
    if base is not None:
        if not (isinstance(base, tuple) and len(base) == 2 and all(isinstance(b, str) for b in base)):
            fail(f"runtime_base = {base!r} is not a (module, class name) pair")
        names = {**names, base[0]: (*names.get(base[0], ()), base[1])}
    for module, listed in names.items():
        if not (isinstance(module, str) and module and all(part.isidentifier() for part in module.split("."))):
            fail(f"module {module!r} is not a dotted module path")
        for n in listed:
            if not n.isidentifier() or n.startswith("__") or n in TEMPLATE_NAMES:
                fail(f"name {n!r} of {module!r} is not an identifier the template may import")


def runtime_imports(family: Family) -> dict[str, str]:
    """name → module of everything the emitted module of ``family`` may import: its runtime base class, its
    :attr:`~Family.runtime_names` and its patterns', and the printer's helpers (:data:`energyarch.expr.RUNTIME_NAMES`);
    in that order (the base class's module first).

    >>> runtime_imports(FAMILIES["gated feedforward"])
    {'GatedTermUpdate': 'energyarch.runtime', '_logcosh': 'energyarch.runtime', '_step': 'energyarch.runtime'}
    """
    out: dict[str, str] = {family.runtime_base[1]: family.runtime_base[0]}
    sources = [
        (f"family {family.name!r}", family.runtime_names),
        *((f"pattern {p.name!r}", p.runtime_names) for p in patterns_for(family.name)),
        ("the expression printer", RUNTIME_NAMES),
    ]
    for owner, names in sources:
        for module, listed in names.items():
            for n in listed:
                if out.setdefault(n, module) != module:
                    raise CompileError(
                        f"{owner} lists {n!r} from {module!r}, but family {family.name!r} already "
                        f"imports {n!r} from {out[n]!r}; one name, one module"
                    )
    return out


def patterns_for(family: str, kind: Optional[str] = None) -> list[Pattern]:
    """The registered patterns of ``family`` (and candidate ``kind``), in the order they are tried."""
    out = [p for p in PATTERNS.values() if p.family == family and (kind is None or kind in p.kinds)]
    return sorted(out, key=lambda p: (p.order, p.name))


def first_match(c: Candidate) -> Derivation:
    for pattern in patterns_for(c.term.family, c.kind):
        consts = pattern.match(c)
        if consts is not None:
            return pattern.derivation(c, consts)
    raise CompileError(
        f"term {c.term.name!r}: no registered pattern accepts a {c.kind} {c.term.family} term; "
        f"register one (energyarch.derivation.register_pattern) or use path='autodiff'"
    )


def family_of(term: Term) -> Family[Any]:
    """The registered family of ``term``: the one named by ``term.family`` when it takes the term's type (an
    Attention with a query-key interaction is a ``'qk attention'`` term), else that of its most specific class
    (a CausalAttention is not an Attention's)."""
    named = FAMILIES.get(term.family)
    if named is not None and isinstance(term, named.term_type):
        return named
    for cls in type(term).__mro__:
        for fam in FAMILIES.values():
            if fam.term_type is cls:
                return fam
    raise CompileError(
        f"cannot derive {type(term).__name__}; expected one of "
        f"{sorted(f.term_type.__name__ for f in FAMILIES.values())}"
    )


# ---------------------------------------------------------------------------------------------
# cost bounds: a size cap on what sympy is given and a CPU-time budget on what it does with it (any thread)
# ---------------------------------------------------------------------------------------------

#: Bounds on the symbolic path; past them the term takes the autodiff path and report() says why.
SYMBOLIC_BUDGET = {"seconds": 3.0, "input_ops": 300, "derivative_ops": 3000}


class _OverBudget(BaseException):
    """Raised inside the symbolic steps when their budget is spent (never escapes :func:`derive`). A
    BaseException, so that no ``except Exception`` on the way (in sympy or here) can swallow it."""


@contextlib.contextmanager
def _time_budget(seconds: float):
    """Interrupt the block after ``seconds`` of the calling thread's CPU time, in any thread.

    A watchdog thread reads the caller's CPU clock (``time.pthread_getcpuclockid``) every few milliseconds and,
    past the budget, raises :class:`_OverBudget` in the caller (``PyThreadState_SetAsyncExc``: delivered between
    two bytecodes, so sympy, which is pure Python, stops within milliseconds). CPU time rather than wall time, so
    that a busy machine does not change what is derived. Where the thread's CPU clock cannot be read, the block is
    stopped after ``WALL_FACTOR × seconds`` of wall time instead; where the call does not exist (not CPython),
    only the size caps hold.
    """
    caller = threading.get_ident()
    set_async = getattr(getattr(ctypes, "pythonapi", None), "PyThreadState_SetAsyncExc", None)
    try:
        clock = time.pthread_getcpuclockid(caller)
        cpu_start = time.clock_gettime(clock)
    except (AttributeError, OSError):
        clock = None
    if set_async is None:
        yield
        return
    done, lock = threading.Event(), threading.Lock()
    fired: list[bool] = []
    wall_start = time.monotonic()

    def spent() -> bool:
        if clock is None:
            return time.monotonic() - wall_start > WALL_FACTOR * seconds
        try:
            return time.clock_gettime(clock) - cpu_start > seconds
        except OSError:  # the caller's clock is gone: the block has ended
            return False

    def watch() -> None:
        while not done.wait(0.01 if not fired else 0.1):
            if fired or spent():  # past the budget: raise, and again until the block has ended
                with lock:
                    if not done.is_set():
                        set_async(ctypes.c_ulong(caller), ctypes.py_object(_OverBudget))
                        fired.append(True)

    watchdog = threading.Thread(target=watch, name="energyarch-symbolic-budget", daemon=True)
    watchdog.start()
    try:
        yield
    except _OverBudget as err:
        if err.args:  # a size cap inside the block: its own message
            raise
        raise _OverBudget(f"the symbolic steps took longer than {seconds:g} s of CPU time") from None
    finally:
        with lock:
            done.set()
            if fired:  # not yet delivered: take it back (delivered: it is the exception being handled here)
                set_async(ctypes.c_ulong(caller), None)
        watchdog.join()


#: Wall-clock budget, as a multiple of the CPU seconds, where a thread's CPU clock cannot be read.
WALL_FACTOR = 4.0


def check_size(**exprs: sp.Expr) -> None:
    for name, expr in exprs.items():
        ops = sp.count_ops(expr)
        if ops > SYMBOLIC_BUDGET["input_ops"]:
            raise _OverBudget(f"{name} has {ops} operations (symbolic limit {SYMBOLIC_BUDGET['input_ops']})")


def diff(expr: sp.Expr, var: sp.Symbol, name: str) -> sp.Expr:
    out = tidy(expr.diff(var))
    ops = sp.count_ops(out)
    if ops > SYMBOLIC_BUDGET["derivative_ops"]:
        raise _OverBudget(f"{name} has {ops} operations (symbolic limit {SYMBOLIC_BUDGET['derivative_ops']})")
    return out


def fallback(term: Term, dims: Dims, why: str, pieces: Mapping[str, sp.Expr]) -> Derivation:
    return Derivation(
        term,
        dims,
        "autodiff",
        "autodiff",
        f"{why}: torch.func.grad of the energy (symbolic budget {SYMBOLIC_BUDGET})",
        dict(pieces),
    )


def symbolic_or_fallback(
    term: Term, dims: Dims, declared: Mapping[str, sp.Expr], build: Callable[[], Derivation]
) -> Derivation:
    """Run ``build`` (the symbolic steps) within the budget; past it, the autodiff path with the reason."""
    try:
        with _time_budget(SYMBOLIC_BUDGET["seconds"]):
            return build()
    except _OverBudget as err:
        return fallback(term, dims, f"symbolic derivation stopped: {err}", declared)


# ---------------------------------------------------------------------------------------------
# helpers shared by families and patterns
# ---------------------------------------------------------------------------------------------


def bind(expr: sp.Expr, term: Term, dims: Dims) -> sp.Expr:
    """Substitute sizes and user parameters; keep ``beta`` symbolic (positive)."""
    subs = {
        sp.Symbol("beta", real=True): BETA,
        sp.Symbol("p", real=True): dims.head_dim,
        sp.Symbol("M", real=True): dims.head_dim,
        sp.Symbol("d", real=True): dims.d,
    }
    subs.update(
        {
            sp.Symbol(k, real=True): sp.Rational(repr(v)) if isinstance(v, float) else v
            for k, v in params_of(term).items()
        }
    )
    return expr.xreplace(subs)


def constant(expr: sp.Expr, var: sp.Symbol) -> Optional[sp.Expr]:
    """``expr`` simplified if it does not depend on ``var`` (else None).

    A cheap numeric test comes first: if ``expr`` takes different finite values at a few points it is not
    constant and sympy is not asked to simplify it.
    """
    if var not in expr.free_symbols:
        return expr
    probe = torch.tensor([0.37, 1.3, 2.9, 0.05], dtype=torch.float64)
    try:
        with torch.no_grad():
            values = evaluate(expr, {var.name: probe, "beta": 0.7})
        if isinstance(values, torch.Tensor) and bool(torch.isfinite(values).all()):
            if float((values - values[0]).abs().max()) > 1e-9 * (1 + float(values.abs().max())):
                return None
    except Exception:  # noqa: BLE001 - inconclusive (e.g. a function without a torch form): let sympy decide
        pass
    if sp.count_ops(expr) > SYMBOLIC_BUDGET["input_ops"]:
        return None
    simple = sp.simplify(expr)
    return simple if var not in simple.free_symbols else None


def needs_positive(fn: sp.Expr) -> bool:
    """True if ``fn(x)`` is undefined (complex / infinite) for some x ≤ 0 (log, sqrt, 1/x, ...)."""
    for probe in (sp.Rational(-1, 2), sp.Integer(0), sp.Integer(-3)):
        value = fn.xreplace({X: probe}).xreplace({BETA: sp.Integer(1)})
        value = value.evalf() if value.free_symbols == set() else value
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo) or value.is_real is False:
            return True
    return False


def sphere_samples(p: int, radius: float, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, p, generator=g, dtype=torch.float64)
    Z = Z / Z.norm(dim=-1, keepdim=True) * radius
    return torch.cat([Z, -Z[:8]], dim=0)  # include antipodal pairs (extreme inner products)


def check_domain(term: Term, outer: sp.Expr, inner_min: float, outer_name: str, inner_desc: str) -> None:
    if needs_positive(outer) and not inner_min > 0:
        raise DeclarationError(
            f"term {term.name!r}: {outer_name}(x) = {outer} needs x > 0, but {inner_desc} reaches "
            f"{inner_min:.4g} on the constraint set. Use a positive kernel / h (e.g. exp(beta*s), sigmoid), "
            f"or an {outer_name} defined for all x (e.g. a linear {outer_name})"
        )


def numeric(expr: sp.Expr, dims: Dims, var: sp.Symbol, values: torch.Tensor) -> torch.Tensor:
    out = evaluate(expr, {var.name: values, "beta": dims.beta})
    return out if isinstance(out, torch.Tensor) else torch.full_like(values, float(out))


def lx(expr: sp.Expr) -> str:
    return sp.latex(sp.simplify(expr))


def declared_scalar(prim: Scalar, t: torch.Tensor, env: Mapping[str, float]) -> torch.Tensor:
    """A scalar primitive applied to ``t``: the torch callable, or its expression evaluated by walking the sympy
    tree (never the emitted code), broadcast to ``t``'s shape."""
    if prim.fn is not None:
        return prim.fn(t)
    value = evaluate(prim.expr, {**env, "x": t})
    return value if isinstance(value, torch.Tensor) else torch.full_like(t, float(value))


def check_callable_scalar(term: Term, role: str, prim: Scalar) -> None:
    probe = torch.linspace(-1, 1, 7, dtype=torch.float64)
    try:
        out = cast(Callable, prim.fn)(probe)  # an opaque primitive: fn is set
    except Exception as err:  # noqa: BLE001
        raise DeclarationError(f"term {term.name!r}: {role} = {prim.name!r} failed on a tensor: {err}") from err
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DeclarationError(
            f"term {term.name!r}: {role} = {prim.name!r} must act elementwise (shape in = shape out); "
            f"it returned {shape} for an input of shape {tuple(probe.shape)}"
        )
