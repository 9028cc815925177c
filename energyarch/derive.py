"""Derivation: from a declared term to the structure of its gradient (symbolic path) or to autodiff.

Symbolic path (DESIGN, "General closed form"): with ``S_k = Σ_j K(z_k, z_j)`` and an inner-product kernel
``K = κ(Φ(x)·Φ(y))``::

    ∇_Z E = Φ'(Z) ⊙ (C Φ(Z)),   C_kj = [f'(S_k) + f'(S_j)] κ'(s_kj)

and for the feed-forward family ``∇_U E = −g'(Σ_m h(u_m)) h'(U)``. sympy derives f', κ', Φ', g', h',
applies the constraint (``‖x − y‖² = 2R² − 2x·y`` on the sphere) and recognises the patterns of the
DESIGN table, each lowered to efficient torch code by :mod:`energyarch.emit`. Anything else falls back
to ``torch.func.grad`` of the energy (autodiff path); :attr:`Derivation.path` and
:attr:`Derivation.reason` say which and why.

>>> from energyarch import Attention
>>> dv = derive(Attention(f="log(x)/beta", K="exp(beta*s)", heads=4), d=64)
>>> dv.pattern, dv.path
('bi-softmax', 'symbolic')
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Mapping, Optional

import sympy as sp
import torch

from .energy import Attention, FeedForward, Term, params_of
from .errors import CompileError, DeclarationError
from .expr import evaluate, tidy
from .primitives import R, S, X, Scalar

BETA = sp.Symbol("beta", positive=True)
SK, SJ = sp.symbols("S_k S_j", positive=True)
SIGMA = sp.Symbol("Sigma", real=True)  # Σ_m h(u_m) in the feed-forward family


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
        pattern: recognised structure, e.g. ``'bi-softmax'``, ``'kernel attention'``, ``'linear attention'``,
            ``'inner-product kernel'``, ``'pairwise kernel'``, ``'ReLU FF'``, ``'softmax FF'``, ``'gated FF'``,
            ``'elementwise FF'``, ``'general FF'`` or ``'autodiff'``.
        reason: why this path/pattern was taken.
        pieces: sympy expressions: ``f, df, kappa, dkappa, phi, dphi`` or ``g, dg, h, dh``.
        constants: pattern constants (``a, b, c, c1, c2``) as sympy expressions in ``beta``.
        operator: sympy expression of the coupling ``C_kj`` (in ``s, S_k, S_j``) for attention, or of
            ``−∂E/∂u`` (in ``x`` = u and ``Sigma`` = Σ_m h(u_m)) for feed-forward.
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
# cost bounds: a size cap on what sympy is given and a wall-clock budget on what it does with it
# ---------------------------------------------------------------------------------------------

#: Bounds on the symbolic path; past them the term takes the autodiff path and report() says why.
SYMBOLIC_BUDGET = {"seconds": 3.0, "input_ops": 300, "derivative_ops": 3000}


class _OverBudget(Exception):
    """Raised inside the symbolic steps when their budget is spent (never escapes :func:`derive`)."""


@contextlib.contextmanager
def _time_budget(seconds: float):
    """Interrupt the block after ``seconds`` of wall time (main thread, POSIX); elsewhere only the size caps hold."""
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise _OverBudget(f"the symbolic steps took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer_delay, outer_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_delay:  # give an enclosing timer back what is left of it
            signal.setitimer(signal.ITIMER_REAL, max(outer_delay - (time.monotonic() - start), 1e-3), outer_interval)


def _check_size(**exprs: sp.Expr) -> None:
    for name, expr in exprs.items():
        ops = sp.count_ops(expr)
        if ops > SYMBOLIC_BUDGET["input_ops"]:
            raise _OverBudget(f"{name} has {ops} operations (symbolic limit {SYMBOLIC_BUDGET['input_ops']})")


def _diff(expr: sp.Expr, var: sp.Symbol, name: str) -> sp.Expr:
    out = tidy(expr.diff(var))
    ops = sp.count_ops(out)
    if ops > SYMBOLIC_BUDGET["derivative_ops"]:
        raise _OverBudget(f"{name} has {ops} operations (symbolic limit {SYMBOLIC_BUDGET['derivative_ops']})")
    return out


def _fallback(dv_or_term, dims: "Dims", why: str, pieces: Mapping[str, sp.Expr]) -> "Derivation":
    return Derivation(dv_or_term, dims, "autodiff", "autodiff",
                      f"{why}: torch.func.grad of the energy (symbolic budget {SYMBOLIC_BUDGET})", dict(pieces))


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _bind(expr: sp.Expr, term: Term, dims: Dims) -> sp.Expr:
    """Substitute sizes and user parameters; keep ``beta`` symbolic (positive)."""
    subs = {sp.Symbol("beta", real=True): BETA, sp.Symbol("p", real=True): dims.head_dim,
            sp.Symbol("M", real=True): dims.head_dim, sp.Symbol("d", real=True): dims.d}
    subs.update({sp.Symbol(k, real=True): sp.Rational(repr(v)) if isinstance(v, float) else v
                 for k, v in params_of(term).items()})
    return expr.xreplace(subs)


def _constant(expr: sp.Expr, var: sp.Symbol) -> Optional[sp.Expr]:
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


def _needs_positive(fn: sp.Expr) -> bool:
    """True if ``fn(x)`` is undefined (complex / infinite) for some x ≤ 0 (log, sqrt, 1/x, ...)."""
    for probe in (sp.Rational(-1, 2), sp.Integer(0), sp.Integer(-3)):
        value = fn.xreplace({X: probe}).xreplace({BETA: sp.Integer(1)})
        value = value.evalf() if value.free_symbols == set() else value
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo) or value.is_real is False:
            return True
    return False


def _sphere_samples(p: int, radius: float, n: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, p, generator=g, dtype=torch.float64)
    Z = Z / Z.norm(dim=-1, keepdim=True) * radius
    return torch.cat([Z, -Z[:8]], dim=0)  # include antipodal pairs (extreme inner products)


def _check_domain(term: Term, outer: sp.Expr, inner_min: float, outer_name: str, inner_desc: str) -> None:
    if _needs_positive(outer) and not inner_min > 0:
        raise DeclarationError(
            f"term {term.name!r}: {outer_name}(x) = {outer} needs x > 0, but {inner_desc} reaches "
            f"{inner_min:.4g} on the constraint set. Use a positive kernel / h (e.g. exp(beta*s), sigmoid), "
            f"or an {outer_name} defined for all x (e.g. a linear {outer_name})"
        )


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------

def _attention_dims(term: Attention, d: int) -> Dims:
    if not isinstance(d, int) or d < 1:
        raise CompileError(f"d={d!r} must be a positive integer (the model width)")
    if d % term.heads:
        divisors = [h for h in range(1, min(d, 64) + 1) if d % h == 0]
        raise CompileError(
            f"term {term.name!r}: heads={term.heads} does not divide the width d={d}; "
            f"choose heads in {divisors} or change d"
        )
    p = d // term.heads
    radius = term.constraint.resolve(p)
    beta = term.beta if term.beta is not None else 1.0 / math.sqrt(p)
    return Dims(d=d, heads=term.heads, head_dim=p, radius=radius, beta=beta)


def _kappa_on_sphere(term: Attention, dims: Dims) -> sp.Expr:
    """κ(s) with r = 2R² − 2s: the on-sphere *value* of a distance kernel (exact for energies at the constrained
    point, never differentiated: the paper-mode gradient of the declared energy is :func:`derive_distance`'s)."""
    K = term.K
    expr = _bind(K.expr, term, dims)
    if K.kind == "distance":
        r2 = dims.radius**2
        r2 = sp.Integer(round(r2)) if abs(r2 - round(r2)) < 1e-9 else sp.Rational(repr(r2))
        expr = expr.xreplace({R: 2 * r2 - 2 * S})
    return expr


def _numeric(expr: sp.Expr, dims: Dims, var: sp.Symbol, values: torch.Tensor) -> torch.Tensor:
    out = evaluate(expr, {var.name: values, "beta": dims.beta})
    return out if isinstance(out, torch.Tensor) else torch.full_like(values, float(out))


def _declared_pieces(term: Attention, dims: Dims) -> dict:
    """The bound expressions of the declaration (for the energy and the autodiff path), no derivative."""
    K, pieces = term.K, {}
    if term.f.symbolic:
        pieces["f"] = _bind(term.f.expr, term, dims)
    if K.kind == "distance":
        pieces["rho"] = _bind(K.expr, term, dims)
    elif K.expr is not None:
        pieces["kappa"] = _bind(K.expr, term, dims)
    if K.phi is not None and K.phi.symbolic:
        pieces["phi"] = _bind(K.phi.expr, term, dims)
    return pieces


def derive_attention(term: Attention, d: int) -> Derivation:
    dims = _attention_dims(term, d)
    K = term.K
    if not term.f.symbolic:
        _check_callable_scalar(term, "f", term.f)
    if K.phi is not None and not K.phi.symbolic:
        _check_callable_scalar(term, "phi", K.phi)
    if K.kind == "callable":
        _check_callable_kernel(term, dims)
    if not (term.f.symbolic and K.symbolic):
        _check_energy_finite(term, dims)
    if K.kind == "callable":
        if term.f.symbolic and K.symmetric:
            f = _bind(term.f.expr, term, dims)
            return Derivation(term, dims, "symbolic", "pairwise kernel",
                              "opaque symmetric kernel: closed form Σ_j [f'(S_k)+f'(S_j)] ∂₁K(z_k, z_j) with ∂₁K by torch.func",
                              pieces={"f": f, "df": tidy(f.diff(X))}, latex=_latex_pairwise(term))
        why = "the kernel is declared non-symmetric" if not K.symmetric else "f is an opaque torch callable"
        return Derivation(term, dims, "autodiff", "autodiff", f"{why}: torch.func.grad of the energy",
                          _declared_pieces(term, dims))
    if not term.f.symbolic or not K.symbolic:
        return Derivation(term, dims, "autodiff", "autodiff",
                          "a primitive is an opaque torch callable: torch.func.grad of the energy",
                          _declared_pieces(term, dims))
    declared = _declared_pieces(term, dims)
    try:
        with _time_budget(SYMBOLIC_BUDGET["seconds"]):
            if K.kind == "distance":
                return _derive_distance(term, dims, declared)
            return _derive_inner(term, dims)
    except _OverBudget as err:
        return _fallback(term, dims, f"symbolic derivation stopped: {err}", declared)


def _derive_inner(term: Attention, dims: Dims) -> Derivation:
    K = term.K
    f = _bind(term.f.expr, term, dims)
    kappa = _bind(K.expr, term, dims)
    phi = _bind(K.phi.expr, term, dims) if K.phi is not None else X
    _check_size(f=f, K=kappa, phi=phi)
    # domain: f may need Σ_j K > 0
    if _needs_positive(f):
        Zs = _sphere_samples(dims.head_dim, dims.radius)
        Phi = _numeric(phi, dims, X, Zs) if K.phi is not None else Zs
        s_vals = (Phi @ Phi.T).flatten()
        kmin = float(_numeric(kappa, dims, S, s_vals).min())
        _check_domain(term, f, kmin, "f", f"the kernel K = {K.name}")
    df, dkappa, dphi = _diff(f, X, "f'"), _diff(kappa, S, "κ'"), _diff(phi, X, "Φ'")
    pieces = {"f": f, "df": df, "kappa": kappa, "dkappa": dkappa, "phi": phi, "dphi": dphi}
    coupling = (df.xreplace({X: SK}) + df.xreplace({X: SJ})) * dkappa

    a_log = _constant(X * df, X)                  # f = a log x + const
    a_lin = _constant(df, X)                        # f = a x + const
    b_exp = _constant(dkappa / kappa, S) if kappa != 0 else None
    if a_log is not None and a_log != 0 and b_exp is not None and b_exp != 0:
        consts = {"a": a_log, "b": sp.simplify(b_exp), "c": sp.simplify(kappa / sp.exp(b_exp * S))}
        return Derivation(term, dims, "symbolic", "bi-softmax",
                          "f = a·log and κ = c·exp(b s): C = a b (P + Pᵀ), P = softmax(b G) (stable, SDPA when long)",
                          pieces, consts, coupling, _latex_attention("bi-softmax", consts, pieces))
    if a_lin is not None:
        poly = sp.Poly(kappa, S) if kappa.is_polynomial(S) else None
        if poly is not None and poly.degree() <= 2:
            c2, c1 = poly.coeff_monomial(S**2), poly.coeff_monomial(S)
            consts = {"a": a_lin, "c1": c1, "c2": c2}
            return Derivation(term, dims, "symbolic", "linear attention",
                              "f linear and κ quadratic in s: C Φ = 2a(2c₂ Φ(ΦᵀΦ) + c₁ 1(1ᵀΦ)) in O(N p²)",
                              pieces, consts, coupling, _latex_attention("linear attention", consts, pieces))
        consts = {"a": a_lin}
        return Derivation(term, dims, "symbolic", "kernel attention",
                          "f linear: C = 2a κ'(G), one elementwise map of the Gram matrix",
                          pieces, consts, coupling, _latex_attention("kernel attention", consts, pieces))
    return Derivation(term, dims, "symbolic", "inner-product kernel",
                      "general f with an inner-product kernel: C = (f'(S_k) + f'(S_j)) κ'(G), N×N",
                      pieces, {}, coupling, _latex_attention("inner-product kernel", {}, pieces))


def _derive_distance(term: Attention, dims: Dims, declared: Mapping[str, sp.Expr]) -> Derivation:
    """K = ρ(‖x − y‖²): the gradient of the declared energy (DESIGN, distance kernel)::

        ∇_{z_k} E = 2 Σ_j C_kj (z_k − z_j) = 2 (diag(C 1) Z − C Z),   C_kj = [f'(S_k) + f'(S_j)] ρ'(r_kj)

    ``r_kj`` is computed from Z itself (not rewritten with the radius), so the step is the gradient of the
    energy as declared at the normalised point, in every constraint mode.
    """
    f, rho = declared["f"], declared["rho"]
    _check_size(f=f, K=rho)
    if _needs_positive(f):
        Zs = _sphere_samples(dims.head_dim, dims.radius)
        r_vals = (Zs.unsqueeze(1) - Zs.unsqueeze(0)).pow(2).sum(-1).flatten()
        kmin = float(_numeric(rho, dims, R, r_vals).min())
        _check_domain(term, f, kmin, "f", f"the kernel K = {term.K.name}")
    df, drho = _diff(f, X, "f'"), _diff(rho, R, "ρ'")
    pieces = {"f": f, "df": df, "rho": rho, "drho": drho}
    coupling = (df.xreplace({X: SK}) + df.xreplace({X: SJ})) * drho
    a_log = _constant(X * df, X)
    b_exp = _constant(drho / rho, R) if rho != 0 else None
    if a_log is not None and a_log != 0 and b_exp is not None and b_exp != 0:
        consts = {"a": a_log, "b": sp.simplify(b_exp), "c": sp.simplify(rho / sp.exp(b_exp * R))}
        return Derivation(term, dims, "symbolic", "distance softmax",
                          "f = a·log and ρ = c·exp(b r): ∇_Z E = 2ab[(1 + Pᵀ1) ⊙ Z − (P + Pᵀ) Z], "
                          "P = softmax(b r) (bi-softmax at β = −2b plus a radial term; SDPA when long)",
                          pieces, consts, coupling, _latex_distance("distance softmax", consts, pieces))
    return Derivation(term, dims, "symbolic", "distance kernel",
                      "K = ρ(‖x − y‖²): ∇_Z E = 2 (diag(C1) Z − C Z), C = (f'(S_k) + f'(S_j)) ρ'(r), N×N",
                      pieces, {}, coupling, _latex_distance("distance kernel", {}, pieces))


def _check_energy_finite(term: Term, dims: Dims) -> None:
    """Probe a term with opaque primitives on the constraint set: its energy must be a finite real number."""
    from .verify import declared_energy  # the independent reference energy, built from the declaration

    Z = _sphere_samples(dims.head_dim, dims.radius, n=24, seed=3).reshape(1, 1, -1, dims.head_dim)
    env = {"beta": dims.beta, "p": dims.head_dim, "M": dims.head_dim, "d": dims.d, "radius": dims.radius}
    try:
        with torch.no_grad():
            E = declared_energy(term, Z, env)
    except Exception as err:  # noqa: BLE001 - the user's callable failed: say which term
        raise DeclarationError(f"term {term.name!r}: evaluating the energy on the constraint set failed: "
                               f"{type(err).__name__}: {err}") from err
    if not isinstance(E, torch.Tensor) or E.is_complex() or not bool(torch.isfinite(E).all()):
        raise DeclarationError(
            f"term {term.name!r}: the energy is not finite on the constraint set (value {E.flatten()[:1].tolist()} "
            f"at random points of the sphere of radius {dims.radius:.4g}); check the domain of "
            + (f"f = {term.f.name!r} against the values of K = {term.K.name!r} (e.g. log needs Σ_j K > 0)"
               if isinstance(term, Attention) else
               f"g = {term.g.name!r} against the values of h = {term.h.name!r} (e.g. log needs Σ_m h > 0)")
        )


def _check_callable_kernel(term: Attention, dims: Dims) -> None:
    g = torch.Generator().manual_seed(1)
    x, y = (torch.randn(dims.head_dim, generator=g, dtype=torch.float64) for _ in range(2))
    try:
        kxy, kyx = term.K.fn(x, y), term.K.fn(y, x)
    except Exception as err:  # noqa: BLE001 - report the user's function failing
        raise DeclarationError(f"term {term.name!r}: kernel {term.K.name!r} failed on two p={dims.head_dim} vectors: {err}") from err
    if not isinstance(kxy, torch.Tensor) or kxy.dim() != 0:
        shape = tuple(kxy.shape) if isinstance(kxy, torch.Tensor) else type(kxy).__name__
        raise DeclarationError(
            f"term {term.name!r}: the energy is not scalar: kernel {term.K.name!r} returned {shape} for two "
            f"vectors; K(x, y) must return a 0-dim tensor (reduce with .sum() or a dot product)"
        )
    if term.K.symmetric and not torch.allclose(kxy, kyx, rtol=1e-9, atol=1e-12):
        raise DeclarationError(
            f"term {term.name!r}: kernel {term.K.name!r} is not symmetric (K(x,y)={float(kxy):.6g}, "
            f"K(y,x)={float(kyx):.6g}), but the pairwise fast path assumes K(x,y)=K(y,x). Declare it with "
            f"Kernel.from_torch(fn, name, symmetric=False) to use the generic autodiff path"
        )


# ---------------------------------------------------------------------------------------------
# feed-forward
# ---------------------------------------------------------------------------------------------

def derive_feedforward(term: FeedForward, d: int) -> Derivation:
    if not isinstance(d, int) or d < 1:
        raise CompileError(f"d={d!r} must be a positive integer (the model width)")
    M = term.resolve_width(d)
    dims = Dims(d=d, heads=1, head_dim=M, radius=term.constraint.resolve(M), beta=1.0 / math.sqrt(M))
    for role, prim in (("g", term.g), ("h", term.h)):
        if not prim.symbolic:
            _check_callable_scalar(term, role, prim)
    declared = {k: _bind(p.expr, term, dims) for k, p in (("g", term.g), ("h", term.h)) if p.symbolic}
    if not (term.g.symbolic and term.h.symbolic):
        _check_energy_finite(term, dims)
        return Derivation(term, dims, "autodiff", "autodiff",
                          "a primitive is an opaque torch callable: torch.func.grad of the energy", declared)
    try:
        with _time_budget(SYMBOLIC_BUDGET["seconds"]):
            return _derive_ff(term, dims, declared)
    except _OverBudget as err:
        return _fallback(term, dims, f"symbolic derivation stopped: {err}", declared)


def _derive_ff(term: FeedForward, dims: Dims, declared: Mapping[str, sp.Expr]) -> Derivation:
    M = dims.head_dim
    g, h = declared["g"], declared["h"]
    _check_size(g=g, h=h)
    if _needs_positive(g):
        u = torch.linspace(-dims.radius, dims.radius, 401, dtype=torch.float64)
        hmin = float(_numeric(h, dims, X, u).min()) * M
        _check_domain(term, g, hmin, "g", "Σ_m h(u_m)")
    dg, dh = _diff(g, X, "g'"), _diff(h, X, "h'")
    pieces = {"g": g, "dg": dg, "h": h, "dh": dh}
    operator = dg.xreplace({X: SIGMA}) * dh

    a_lin = _constant(dg, X)
    a_log = _constant(X * dg, X)
    a_sq = _constant(dg / X, X) if dg != 0 else None
    if a_lin is not None:
        c_relu = _constant(dh / _relu(X), X)
        if c_relu is not None and c_relu != 0:
            consts = {"a": a_lin, "c": c_relu}
            return Derivation(term, dims, "symbolic", "ReLU FF", "g linear, h' = c·ReLU: −∇_U E = a c ReLU(U)",
                              pieces, consts, operator, _latex_ff("ReLU FF", consts, pieces))
        consts = {"a": a_lin}
        return Derivation(term, dims, "symbolic", "elementwise FF", "g linear: −∇_U E = a h'(U), elementwise",
                          pieces, consts, operator, _latex_ff("elementwise FF", consts, pieces))
    b_exp = _constant(dh / h, X) if h != 0 else None
    if a_log is not None and b_exp is not None and b_exp != 0:
        consts = {"a": a_log, "b": sp.simplify(b_exp)}
        return Derivation(term, dims, "symbolic", "softmax FF", "g = a·log, h = c·exp(b u): −∇_U E = a b softmax(b U)",
                          pieces, consts, operator, _latex_ff("softmax FF", consts, pieces))
    if a_sq is not None:
        consts = {"a": a_sq}
        return Derivation(term, dims, "symbolic", "gated FF", "g = a x²/2: −∇_U E = a (Σ_m h(u_m)) ⊙ h'(U)",
                          pieces, consts, operator, _latex_ff("gated FF", consts, pieces))
    return Derivation(term, dims, "symbolic", "general FF", "−∇_U E = g'(Σ_m h(u_m)) ⊙ h'(U)",
                      pieces, {}, operator, _latex_ff("general FF", {}, pieces))


def _relu(x):
    from .expr import relu

    return relu(x)


def _check_callable_scalar(term: Term, role: str, prim: Scalar) -> None:
    probe = torch.linspace(-1, 1, 7, dtype=torch.float64)
    try:
        out = prim.fn(probe)
    except Exception as err:  # noqa: BLE001
        raise DeclarationError(f"term {term.name!r}: {role} = {prim.name!r} failed on a tensor: {err}") from err
    if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise DeclarationError(
            f"term {term.name!r}: {role} = {prim.name!r} must act elementwise (shape in = shape out); "
            f"it returned {shape} for an input of shape {tuple(probe.shape)}"
        )


# ---------------------------------------------------------------------------------------------
# LaTeX of the operator (column-token convention, as in Tables 19–20)
# ---------------------------------------------------------------------------------------------

def _lx(expr: sp.Expr) -> str:
    return sp.latex(sp.simplify(expr))


def _latex_attention(pattern: str, consts: Mapping[str, sp.Expr], pieces: Mapping[str, sp.Expr]) -> str:
    identity = pieces["phi"] == X
    Phi = r"\mathbf{Z}_h" if identity else r"\Phi(\mathbf{Z}_h)"
    wrap = (lambda body: body) if identity else (lambda body: r"\Phi'(\mathbf{Z}_h) \odot \left(%s\right)" % body)
    if pattern == "bi-softmax":
        ab = sp.simplify(consts["a"] * consts["b"])
        b = consts["b"]
        coef = "" if ab == 1 else _lx(ab) + r"\,"
        gram = r"%s\, %s^\top %s" % (_lx(b), Phi, Phi)
        body = (r"%s%s\left(\operatorname{softmax}_{\text{col}}(%s) + \operatorname{softmax}_{\text{row}}(%s)\right)"
                % (coef, Phi, gram, gram))
    elif pattern == "linear attention":
        a, c1, c2 = consts["a"], consts["c1"], consts["c2"]
        parts = []
        if c2 != 0:
            coef = sp.simplify(4 * a * c2)
            parts.append(("" if coef == 1 else _lx(coef) + r"\, ") + r"%s %s^\top %s" % (Phi, Phi, Phi))
        if c1 != 0:
            coef = sp.simplify(2 * a * c1)
            parts.append(("" if coef == 1 else _lx(coef) + r"\, ") + r"%s \mathbf{1}\mathbf{1}^\top" % Phi)
        body = " + ".join(parts) or "0"
    else:
        if pattern == "kernel attention":
            C = 2 * consts["a"] * pieces["dkappa"]
        else:
            C = (pieces["df"].xreplace({X: SK}) + pieces["df"].xreplace({X: SJ})) * pieces["dkappa"]
        G = sp.Symbol(r"\mathbf{G}_h")
        body = r"%s \left[%s\right]_{\mathbf{G}_h = %s^\top %s}" % (Phi, sp.latex(sp.simplify(C).xreplace({S: G})), Phi, Phi)
    return r"-\nabla_{\mathbf{X}} E = -\sum_{h=1}^{H} \mathbf{W}_h \left(%s\right)" % wrap(body)


def _latex_distance(pattern: str, consts: Mapping[str, sp.Expr], pieces: Mapping[str, sp.Expr]) -> str:
    Z = r"\mathbf{Z}_h"
    if pattern == "distance softmax":
        coef = sp.simplify(-2 * consts["a"] * consts["b"])
        body = (r"%s\left[\left(\mathbf{P} + \mathbf{P}^\top\right) %s - %s \operatorname{diag}\left(\mathbf{1} + "
                r"\mathbf{P}^\top \mathbf{1}\right)\right],\quad \mathbf{P} = \operatorname{softmax}_{\text{row}}(%s\, "
                r"\mathbf{R}_h)" % ("" if coef == 1 else _lx(coef) + r"\,", Z, Z, _lx(consts["b"])))
    else:
        rr = sp.Symbol(r"\mathbf{R}_h")
        C = sp.latex(((pieces["df"].xreplace({X: SK}) + pieces["df"].xreplace({X: SJ})) * pieces["drho"]).xreplace({R: rr}))
        body = (r"2 %s \left(\mathbf{C} - \operatorname{diag}(\mathbf{C}\mathbf{1})\right),\quad \mathbf{C} = %s"
                % (Z, C))
    return (r"-\nabla_{\mathbf{X}} E = \sum_{h=1}^{H} \mathbf{W}_h \left(%s\right),\quad "
            r"(\mathbf{R}_h)_{kj} = \lVert\mathbf{z}_k - \mathbf{z}_j\rVert^2" % body)


def _latex_pairwise(term: Attention) -> str:
    return (r"-\nabla_{\mathbf{x}_k} E = -\sum_{h} \mathbf{W}_h \sum_j \left[f'(S_k) + f'(S_j)\right] "
            r"\partial_1 K(\mathbf{z}_k^h, \mathbf{z}_j^h),\quad f(x) = %s" % term.f.latex())


def _latex_ff(pattern: str, consts: Mapping[str, sp.Expr], pieces: Mapping[str, sp.Expr]) -> str:
    U = r"\mathbf{D}^\top \mathbf{X}"
    if pattern == "ReLU FF":
        ac = sp.simplify(consts["a"] * consts["c"])
        body = ("" if ac == 1 else _lx(ac) + r"\,") + r"\operatorname{ReLU}(%s)" % U
    elif pattern == "softmax FF":
        ab, b = sp.simplify(consts["a"] * consts["b"]), consts["b"]
        arg = U if b == 1 else _lx(b) + r"\," + U
        body = ("" if ab == 1 else _lx(ab) + r"\,") + r"\operatorname{softmax}_{\text{col}}(%s)" % arg
    else:
        uu = sp.Symbol(r"\mathbf{U}")
        dh = sp.latex(pieces["dh"].xreplace({X: uu}))
        if pattern == "gated FF":
            a = consts["a"]
            hsum = r"\mathbf{1}\mathbf{1}^\top %s" % sp.latex(pieces["h"].xreplace({X: uu}))
            body = ("" if a == 1 else _lx(a) + r"\,") + r"\left(%s\right) \odot %s" % (hsum, dh)
        elif pattern == "elementwise FF":
            a = consts["a"]
            body = ("" if a == 1 else _lx(a) + r"\,") + dh
        else:
            sigma = sp.Symbol(r"\mathbf{1}^\top " + sp.latex(pieces["h"].xreplace({X: uu})))
            body = r"\left[%s\right] \odot %s" % (sp.latex(pieces["dg"].xreplace({X: sigma})), dh)
        body = body + r",\quad \mathbf{U} = %s" % U
    return r"-\nabla_{\mathbf{X}} E = \mathbf{D}\, %s" % body


# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def derive(term: Term, d: int) -> Derivation:
    """Derive the update structure of ``term`` at width ``d`` (cached)."""
    if isinstance(term, Attention):
        return derive_attention(term, d)
    if isinstance(term, FeedForward):
        return derive_feedforward(term, d)
    raise CompileError(f"cannot derive {type(term).__name__}; expected an Attention or FeedForward term")


def autodiff_derivation(term: Term, d: int, reason: str = "requested path='autodiff'") -> Derivation:
    """A derivation forced to the generic ``torch.func.grad`` path (same dims/checks as :func:`derive`)."""
    base = derive(term, d)
    return Derivation(term, base.dims, "autodiff", "autodiff", reason, base.pieces, {}, base.operator, base.latex)
