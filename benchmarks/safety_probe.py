#!/usr/bin/env python3
"""Safety probe (issue 8): a campaign of hostile and unusual inputs, each run in its own guarded process.

Three categories, as in the issue's original report:

1. **energies** not in ``catalog/``: compiled at d = 32 with 4 heads (feed-forward: M = 32) in float64, checked by
   ``ea.verify`` *and* by an independent reference written here in plain torch from the declaration
   (``torch.func.grad`` of E(Z), with r = ‖z_i − z_j‖² formed from differences), compared with
   ``step.terms[name].grad_Z(Z)`` at the normalised point. Outcome: ``verified`` (relative error ≤ 1e-9 on the
   gradient and the energy), ``refused <Class>`` (a project error), ``overflow reported by ea.verify``, or a defect:
   ``SILENTLY WRONG`` / ``WRONG (flagged by ea.verify)`` / ``verify false alarm``.
2. **malformed** declarations and calls (primitives, terms, ``compile``, ``verify``, the step call, callables).
   Outcome: ``project error <Class>`` (an :class:`~energyarch.errors.EnergyArchError`), ``accepted`` or ``RAW <Type>``
   (any other exception: a defect). Each input states what is right (``expect``).
3. **attacks**: code-injection strings, names carrying every line terminator, catalog TOML files and crafted
   checkpoints. Every attack has its own MARKER path that its payload tries to create; outcome ``rejected <Class>``,
   ``inert`` (compiled or loaded; the payload stayed a literal: the emitted source has no code of it, importing the
   saved source does nothing), ``accepted``, or a defect: ``EXECUTED`` (the marker exists) / ``RAW <Type>``.

4. **round3** (issue 16): causal energies whose later tokens overflow or hold inf / NaN (outcome ``causal exact``
   when the earlier tokens' updates are bit-identical, else ``SILENTLY WRONG``), catalog radius rules of products of
   trigonometric terms, ``ea.compile`` in a worker thread with an endless symbolic step, crafted official
   state_dicts, and the training command line: new runs into another run's folder, ``--out`` a file, diverging runs
   and their advice, crafted counters and optimizer state at ``--resume``, config files that are not UTF-8 or nest
   too deeply, ``--set`` strings, careless settings, ``eval`` and ``generate`` arguments. A probe on a run folder
   works on its own copy of a finished tiny run; ``SAVED FILE CHANGED`` when a refused input changed a file there,
   ``WRONG ADVICE`` when the message advises what the disk does not allow.

Every input runs in a forked child process with a wall-clock limit (``--timeout``, default 20 s): a hang is
reported as ``HANG`` and a dead child as ``CRASH``, and the script goes on. The parent checks each MARKER itself.

    python benchmarks/safety_probe.py                       # writes benchmarks/results/safety_probe.md
    python benchmarks/safety_probe.py --out /tmp/probe.md --timeout 30
"""

from __future__ import annotations

import os

if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: forked children must not inherit an OpenMP pool

import argparse  # noqa: E402
import ast  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import energyarch as ea  # noqa: E402
from energyarch import catalog  # noqa: E402
from energyarch.emit import check_source, emit_source  # noqa: E402
from energyarch.errors import EnergyArchError  # noqa: E402
from energyarch.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402

D, HEADS = 32, 4  # width and heads of the energy probes (p = 8, M = 32)
RTOL = 1e-9  # relative tolerance of "verified"
#: every line terminator Python or str.splitlines knows, and a backslash continuation
TERMINATORS = {
    "LF": "\n",
    "CR": "\r",
    "CRLF": "\r\n",
    "VT": "\x0b",
    "FF": "\x0c",
    "FS": "\x1c",
    "GS": "\x1d",
    "RS": "\x1e",
    "NEL": "\x85",
    "LS": "\u2028",
    "PS": "\u2029",
    "backslash-LF": "\\\n",
}
DEFECTS = (
    "SILENTLY WRONG",
    "WRONG",
    "verify false alarm",
    "RAW",
    "HANG",
    "CRASH",
    "EXECUTED",
    "NaN",
    "SAVED FILE CHANGED",
)


# ------------------------------------------------------------------------------------------------------------------
# probes and their results
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One input of the campaign."""

    category: str  # "energies", "malformed" or "attacks"
    label: str  # what is tried, as shown in the table
    run: Callable[[Path], dict]  # given its private folder; returns {"outcome", "detail"} or raises
    expect: Optional[str] = None  # the right outcome class ("verified", "refused", "error", "accept",
    # "rejected", "inert", "overflow"); None: any non-defect outcome


@dataclass
class Result:
    """What one probe got."""

    probe: Probe
    outcome: str  # e.g. "verified", "project error ShapeError", "RAW KeyError"
    detail: str  # numbers or the (shortened) error message
    seconds: float  # wall-clock time of the child process
    verdict: str = field(default="ok")  # "ok" or "DEFECT: <why>"


def _short(text: str, n: int = 150) -> str:
    """One markdown-safe line: control characters escaped (repr), pipes escaped, at most n characters."""
    text = repr(str(text))[1:-1]
    text = text if len(text) <= n else text[: n - 1] + "…"
    # pipes would split the cell; brackets would read as (reference) links, e.g. "x[...][0]"
    return text.replace("|", "\\|").replace("[", "\\[").replace("]", "\\]")


def _error_outcome(err: BaseException, project_word: str) -> dict:
    if isinstance(err, EnergyArchError):
        return {"outcome": f"{project_word} {type(err).__name__}", "detail": str(err)}
    return {"outcome": f"RAW {type(err).__name__}", "detail": str(err) or repr(err)}


def _child(probe: Probe, folder: Path, conn) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # so that `energyarch train` in the child keeps one thread: an OpenMP
    torch.set_num_threads(1)  # pool of more threads, re-created after a fork, deadlocks
    word = {"energies": "refused", "malformed": "project error", "attacks": "rejected", "round3": "rejected"}[
        probe.category
    ]
    try:
        out = probe.run(folder)
    except BaseException as err:  # noqa: BLE001 - the probe reports every exception class
        out = _error_outcome(err, word)
    try:
        conn.send(out)
    except Exception as err:  # noqa: BLE001 - e.g. an unpicklable detail
        conn.send({"outcome": "RAW unpicklable result", "detail": repr(err)})
    conn.close()


def run_probe(probe: Probe, folder: Path, timeout: float) -> Result:
    """Run ``probe`` in a forked child with a wall-clock limit; the parent checks the probe's MARKER."""
    folder.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    start = time.perf_counter()
    proc = ctx.Process(target=_child, args=(probe, folder, send), daemon=True)
    proc.start()
    send.close()
    out = None
    if recv.poll(timeout):
        try:
            out = recv.recv()
        except EOFError:
            out = None
    seconds = time.perf_counter() - start
    if out is None and proc.is_alive() and seconds >= timeout:
        proc.kill()
        out = {"outcome": "HANG", "detail": f"no answer within {timeout:g} s; killed"}
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if out is None:
        out = {"outcome": "CRASH", "detail": f"child exited with code {proc.exitcode} without an answer"}
    recv.close()
    if (folder / "MARKER").exists():
        out = {"outcome": "EXECUTED", "detail": "the payload created its MARKER file; " + str(out.get("detail", ""))}
    result = Result(probe, out["outcome"], str(out.get("detail", "")), seconds)
    result.verdict = _verdict(probe, result.outcome, out.get("defect"))
    return result


def _verdict(probe: Probe, outcome: str, defect: Optional[str]) -> str:
    if defect:
        return f"DEFECT: {defect}"
    if outcome.startswith(DEFECTS):
        return "DEFECT"
    kind = outcome.split()[0]
    if probe.expect is None:
        return "ok"
    wanted = {
        "verified": ("verified",),
        "refused": ("refused",),
        "overflow": ("overflow",),
        "error": ("project",),
        "accept": ("accepted",),
        "rejected": ("rejected",),
        "inert": ("inert", "rejected"),
        "loaded": ("accepted",),
        "causal": ("causal",),
    }[probe.expect]
    if kind in wanted:
        return "ok"
    return f"DEFECT: expected {probe.expect}, got {outcome}"


# ------------------------------------------------------------------------------------------------------------------
# 1. energies not in the catalog, against an independent torch reference
# ------------------------------------------------------------------------------------------------------------------


def _rmat(Z):
    """‖z_i − z_j‖² from differences, (…, N, N)."""
    return (Z.unsqueeze(-2) - Z.unsqueeze(-3)).pow(2).sum(-1)


def _smat(Z, phi=None):
    """Φ(z_i)·Φ(z_j), (…, N, N)."""
    P = Z if phi is None else phi(Z)
    return P @ P.transpose(-1, -2)


def _b(Z):
    """β = 1/√p, the default."""
    return 1.0 / math.sqrt(Z.shape[-1])


def _attn(f, kernel):
    """E = Σ_h Σ_i f(Σ_j K(z_i, z_j)) with ``kernel(Z) -> (…, N, N)``."""
    return lambda Z: f(kernel(Z).sum(-1)).sum()


def _ff(g, h):
    """E = −Σ_i g(Σ_m h(u_im))."""
    return lambda U: -g(h(U).sum(-1)).sum()


def _logcosh(u):
    return u.abs() + torch.log1p(torch.exp(-2 * u.abs())) - math.log(2.0)


def _sym_kernel(x, y):
    return torch.exp(-((x - y) ** 2).sum() / 8)


def _asym_kernel(x, y):
    return torch.exp((x * y).sum() / 4 + 0.1 * x[0])


def _elu1(u):
    return F.elu(u) + 1


def _gelu_sq(u):
    return F.gelu(u) ** 2


def _half_square(v):
    return v**2 / 2


Att, FF, Ker = ea.Attention, ea.FeedForward, ea.Kernel

#: (label, declaration factory, reference energy of Z (…, H, N, p) written in torch, expected outcome)
ENERGIES = [
    (
        "Laplace: f=log, K=exp(-sqrt(r + 1e-6))",
        lambda: Att(f="log(x)", K="exp(-sqrt(r + 1e-6))", heads=HEADS),
        _attn(torch.log, lambda Z: torch.exp(-torch.sqrt(_rmat(Z) + 1e-6))),
        "verified",
    ),
    (
        "Cauchy: f=log, K=1/(1 + 0.1*r)",
        lambda: Att(f="log(x)", K="1/(1 + 0.1*r)", heads=HEADS),
        _attn(torch.log, lambda Z: 1 / (1 + 0.1 * _rmat(Z))),
        "verified",
    ),
    (
        "RBF with linear f: f=x, K=exp(-gamma*r), gamma=0.05",
        lambda: Att(f="x", K=Ker.parse("exp(-gamma*r)", params={"gamma": 0.05}), heads=HEADS),
        _attn(lambda x: x, lambda Z: torch.exp(-0.05 * _rmat(Z))),
        "verified",
    ),
    (
        "inverse multiquadric: f=log, K=1/sqrt(r + 1)",
        lambda: Att(f="log(x)", K="1/sqrt(r + 1)", heads=HEADS),
        _attn(torch.log, lambda Z: 1 / torch.sqrt(_rmat(Z) + 1)),
        "verified",
    ),
    (
        "multiquadric: f=x, K=sqrt(r + 1)",
        lambda: Att(f="x", K="sqrt(r + 1)", heads=HEADS),
        _attn(lambda x: x, lambda Z: torch.sqrt(_rmat(Z) + 1)),
        "verified",
    ),
    (
        "rational quadratic: f=log, K=(1 + r/(2a))**(-a), a=1.5",
        lambda: Att(f="log(x)", K=Ker.parse("(1 + r/(2*a))**(-a)", params={"a": 1.5}), heads=HEADS),
        _attn(torch.log, lambda Z: (1 + _rmat(Z) / 3.0) ** -1.5),
        "verified",
    ),
    (
        "Laplace with f=sqrt",
        lambda: Att(f="sqrt(x)", K="exp(-sqrt(r + 1e-6))", heads=HEADS),
        _attn(torch.sqrt, lambda Z: torch.exp(-torch.sqrt(_rmat(Z) + 1e-6))),
        "verified",
    ),
    (
        "Gaussian with f=x**2/2: K=exp(-r/8)",
        lambda: Att(f="x**2/2", K="exp(-r/8)", heads=HEADS),
        _attn(lambda x: x**2 / 2, lambda Z: torch.exp(-_rmat(Z) / 8)),
        "verified",
    ),
    (
        "softmax kernel, feature map elu(x)+1",
        lambda: Att(f="log(x)/beta", K="exp(beta*s)", phi="elu(x) + 1", heads=HEADS),
        lambda Z: (torch.log(torch.exp(_b(Z) * _smat(Z, _elu1)).sum(-1)) / _b(Z)).sum(),
        "verified",
    ),
    (
        "linear kernel s, feature map silu, f=x**2/2",
        lambda: Att(f="x**2/2", K="s", phi="silu(x)", heads=HEADS),
        _attn(lambda x: x**2 / 2, lambda Z: _smat(Z, F.silu)),
        "verified",
    ),
    (
        "quadratic kernel, feature map gelu, f=x",
        lambda: Att(f="x", K="s**2/2", phi="gelu(x)", heads=HEADS),
        _attn(lambda x: x, lambda Z: _smat(Z, F.gelu) ** 2 / 2),
        "verified",
    ),
    (
        "cosh kernel: f=log, K=cosh(beta*s)",
        lambda: Att(f="log(x)", K="cosh(beta*s)", heads=HEADS),
        lambda Z: torch.log(torch.cosh(_b(Z) * _smat(Z)).sum(-1)).sum(),
        "verified",
    ),
    (
        "sigmoid kernel, f=softplus",
        lambda: Att(f="softplus(x)", K="sigmoid(beta*s)", heads=HEADS),
        lambda Z: F.softplus(torch.sigmoid(_b(Z) * _smat(Z)).sum(-1)).sum(),
        "verified",
    ),
    (
        "cubic kernel: f=log, K=(beta*s + 3)**3",
        lambda: Att(f="log(x)", K="(beta*s + 3)**3", heads=HEADS),
        lambda Z: torch.log(((_b(Z) * _smat(Z) + 3) ** 3).sum(-1)).sum(),
        "verified",
    ),
    (
        "erf kernel: f=log, K=erf(beta*s) + 2",
        lambda: Att(f="log(x)", K="erf(beta*s) + 2", heads=HEADS),
        lambda Z: torch.log((torch.erf(_b(Z) * _smat(Z)) + 2).sum(-1)).sum(),
        "verified",
    ),
    (
        "f=atan, K=exp(beta*s)",
        lambda: Att(f="atan(x)", K="exp(beta*s)", heads=HEADS),
        lambda Z: torch.atan(torch.exp(_b(Z) * _smat(Z)).sum(-1)).sum(),
        "verified",
    ),
    (
        "torch-callable f=torch.log1p, K=exp(beta*s)",
        lambda: Att(f=torch.log1p, K="exp(beta*s)", heads=HEADS),
        lambda Z: torch.log1p(torch.exp(_b(Z) * _smat(Z)).sum(-1)).sum(),
        "verified",
    ),
    (
        "torch-callable symmetric K(x,y)=exp(-|x-y|^2/8), f=log",
        lambda: Att(f="log(x)", K=_sym_kernel, heads=HEADS),
        _attn(torch.log, lambda Z: torch.exp(-_rmat(Z) / 8)),
        "verified",
    ),
    (
        "torch-callable phi=elu+1, K=s, f=log",
        lambda: Att(f="log(x)", K="s", phi=_elu1, heads=HEADS),
        _attn(torch.log, lambda Z: _smat(Z, _elu1)),
        "verified",
    ),
    (
        "non-symmetric callable K=exp(x.y/4 + 0.1 x_0), symmetric=False",
        lambda: Att(f="log(x)", K=Ker.from_torch(_asym_kernel, symmetric=False), heads=HEADS),
        _attn(torch.log, lambda Z: torch.exp(_smat(Z) / 4 + 0.1 * Z[..., :, 0:1])),
        "verified",
    ),
    (
        "non-symmetric callable K declared symmetric (default)",
        lambda: Att(f="log(x)", K=_asym_kernel, heads=HEADS),
        _attn(torch.log, lambda Z: torch.exp(_smat(Z) / 4 + 0.1 * Z[..., :, 0:1])),
        "refused",
    ),
    (
        "log of a sign-changing kernel: f=log, K=s",
        lambda: Att(f="log(x)", K="s", heads=HEADS),
        _attn(torch.log, _smat),
        "refused",
    ),
    (
        "overflowing kernel: f=x, K=exp(100*s)",
        lambda: Att(f="x", K="exp(100*s)", heads=HEADS),
        _attn(lambda x: x, lambda Z: torch.exp(100 * _smat(Z))),
        "overflow",
    ),
    ("FF: g=x, h=gelu", lambda: FF(g="x", h="gelu(x)"), _ff(lambda v: v, F.gelu), "verified"),
    (
        "FF: g=x, h=silu(x)**2/2",
        lambda: FF(g="x", h="silu(x)**2/2"),
        _ff(lambda v: v, lambda u: F.silu(u) ** 2 / 2),
        "verified",
    ),
    ("FF: g=log, h=cosh", lambda: FF(g="log(x)", h="cosh(x)"), _ff(torch.log, torch.cosh), "verified"),
    ("FF: g=x, h=x*erf(x)", lambda: FF(g="x", h="x*erf(x)"), _ff(lambda v: v, lambda u: u * torch.erf(u)), "verified"),
    ("FF: g=x**2/2, h=logcosh", lambda: FF(g="x**2/2", h="logcosh(x)"), _ff(lambda v: v**2 / 2, _logcosh), "verified"),
    ("FF: g=sqrt, h=exp", lambda: FF(g="sqrt(x)", h="exp(x)"), _ff(torch.sqrt, torch.exp), "verified"),
    (
        "FF: g=x, h=atan(x)**2",
        lambda: FF(g="x", h="atan(x)**2"),
        _ff(lambda v: v, lambda u: torch.atan(u) ** 2),
        "verified",
    ),
    (
        "FF: torch-callable g=torch.tanh, h=softplus",
        lambda: FF(g=torch.tanh, h="softplus(x)"),
        _ff(torch.tanh, F.softplus),
        "verified",
    ),
    (
        "FF: torch-callable g=torch.tanh, h=softplus(x)/32",
        lambda: FF(g=torch.tanh, h="softplus(x)/32"),
        _ff(torch.tanh, lambda u: F.softplus(u) / 32),
        "verified",
    ),
    ("FF: g=x, torch-callable h=gelu(u)**2", lambda: FF(g="x", h=_gelu_sq), _ff(lambda v: v, _gelu_sq), "verified"),
    (
        "FF: callable g=v**2/2, callable h=torch.sin",
        lambda: FF(g=_half_square, h=torch.sin),
        _ff(_half_square, torch.sin),
        "verified",
    ),
    ("FF: g=x, h=2*x (a constant gradient)", lambda: FF(g="x", h="2*x"), _ff(lambda v: v, lambda u: 2 * u), "verified"),
    ("FF: g=log, h=x (sum can be negative)", lambda: FF(g="log(x)", h="x"), _ff(torch.log, lambda u: u), "refused"),
]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = float(b.abs().max())
    diff = float((a - b).abs().max())
    return diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)


def energy_check(make, reference) -> Callable[[Path], dict]:
    def run(folder: Path) -> dict:
        step = ea.compile(make(), d=D, dtype=torch.float64)
        report = ea.verify(step, raise_on_fail=False)
        verify_ok, overflow = report.ok, any(not t.finite for t in report.terms)
        name = step.names[0]
        module = step.terms[name]
        X = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        with torch.no_grad():
            Z = module.normalize(module.coords(X))  # (B, H, N, p) on the sphere
            G = module.grad_Z(Z)
            E = module.energy_Z(Z).sum()
        G_ref = torch.func.grad(reference)(Z)
        E_ref = reference(Z)
        dv = step.derivations[name]
        where = f"{dv.pattern} / {dv.path}"
        finite = bool(torch.isfinite(G).all() and torch.isfinite(E))
        finite_ref = bool(torch.isfinite(G_ref).all() and torch.isfinite(E_ref))
        if not (finite and finite_ref):
            if overflow:
                return {
                    "outcome": "overflow reported by ea.verify",
                    "detail": f"{where}; inf/NaN in the gradient (emitted finite: {finite}, reference finite: "
                    f"{finite_ref}); ea.verify: OVERFLOW",
                }
            return {
                "outcome": "SILENTLY WRONG (NaN)" if verify_ok else "WRONG (NaN, flagged by ea.verify)",
                "detail": f"{where}; emitted finite: {finite}, reference finite: {finite_ref}",
            }
        g_rel, e_rel = _rel(G, G_ref), _rel(E, E_ref)
        t = report.terms[0]
        numbers = (
            f"{where}; rel err grad {g_rel:.1e}, energy {e_rel:.1e}; max |∇E| {float(G_ref.abs().max()):.1e}; "
            f"ea.verify rel Δ∇ {t.grad_rel_diff:.1e}, descends: {t.decreased} "
            f"(E after − E before {t.energy_after - t.energy_before:.1e})"
        )
        agrees = g_rel <= RTOL and e_rel <= RTOL
        if agrees and verify_ok:
            return {"outcome": "verified", "detail": numbers}
        if agrees:
            return {"outcome": "verify false alarm", "detail": numbers + "; " + str(report).splitlines()[0]}
        if verify_ok:
            return {"outcome": "SILENTLY WRONG", "detail": numbers}
        return {"outcome": "WRONG (flagged by ea.verify)", "detail": numbers}

    return run


def energy_probes() -> list[Probe]:
    return [Probe("energies", label, energy_check(make, ref), expect) for label, make, ref, expect in ENERGIES]


# ------------------------------------------------------------------------------------------------------------------
# 2. malformed declarations and calls
# ------------------------------------------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")


def _small_step(**kw):
    return ea.compile(Att(f="log(x)/beta", K="exp(beta*s)", heads=2) + FF(g="x", h="relu(x)**2/2"), d=8, **kw)


def _X(*shape, **kw):
    return torch.randn(*(shape or (2, 5, 8)), generator=torch.Generator().manual_seed(0), **kw)


def _call(steps=0.1, X=None, **kw):
    return _small_step()(_X() if X is None else X, steps, **kw)


def _raises(exc):
    def fn(*args):
        raise exc

    return fn


def _under_finite_checks():
    X = _X()
    X[0, 0, 0] = NAN
    with ea.finite_checks():
        return _small_step()(X, 0.1)


def _att(f="log(x)", K="exp(beta*s)", **kw):
    return Att(f=f, K=K, **kw)


def _compile_attn(d=8, **kw):
    return ea.compile(Att(f="log(x)", K="exp(beta*s)", heads=2, **kw), d=d)


def _compile_ff(d=8, **kw):
    return ea.compile(FF(g="x", h="relu(x)**2/2", **kw), d=d)


def _compile_call(energy):
    """Compile at d=8 and take one step: a callable's fault may show only when the step runs."""
    step = ea.compile(energy, d=8)
    return step(_X(), 0.1)


#: (label, thunk, expect): "error" (a project error is right), "accept", or None (either, but not RAW)
MALFORMED = [
    # Scalar.parse
    ("Scalar.parse(None)", lambda: ea.Scalar.parse(None), "error"),
    ("Scalar.parse(3)", lambda: ea.Scalar.parse(3), "error"),
    ("Scalar.parse(b'x')", lambda: ea.Scalar.parse(b"x"), "error"),
    ("Scalar.parse('')", lambda: ea.Scalar.parse(""), "error"),
    ("Scalar.parse('   ')", lambda: ea.Scalar.parse("   "), "error"),
    ("Scalar.parse('x y')", lambda: ea.Scalar.parse("x y"), "error"),
    ("Scalar.parse('y') (unknown symbol)", lambda: ea.Scalar.parse("y"), "error"),
    ("Scalar.parse('x*gamma') without params", lambda: ea.Scalar.parse("x*gamma"), "error"),
    ("Scalar.parse('log(x')", lambda: ea.Scalar.parse("log(x"), "error"),
    ("Scalar.parse('log(x, 2)')", lambda: ea.Scalar.parse("log(x, 2)"), None),
    ("Scalar.parse('exp()')", lambda: ea.Scalar.parse("exp()"), "error"),
    ("Scalar.parse('x < 1')", lambda: ea.Scalar.parse("x < 1"), "error"),
    ("Scalar.parse('x if x else 1')", lambda: ea.Scalar.parse("x if x else 1"), "error"),
    ("Scalar.parse('nan*x')", lambda: ea.Scalar.parse("nan*x"), "error"),
    ("Scalar.parse('inf + x')", lambda: ea.Scalar.parse("inf + x"), "error"),
    ("Scalar.parse('x**(1/0)')", lambda: ea.Scalar.parse("x**(1/0)"), "error"),
    ("Scalar.parse('log(0)*x')", lambda: ea.Scalar.parse("log(0)*x"), "error"),
    ("Scalar.parse('sqrt(-1)*x') (complex constant)", lambda: ea.Scalar.parse("sqrt(-1)*x"), "error"),
    ("Scalar.parse params={'x': 1}", lambda: ea.Scalar.parse("x", params={"x": 1.0}), "error"),
    ("Scalar.parse params={'beta': 1}", lambda: ea.Scalar.parse("x", params={"beta": 1.0}), "error"),
    ("Scalar.parse params gamma=NaN", lambda: ea.Scalar.parse("gamma*x", params={"gamma": NAN}), "error"),
    ("Scalar.parse params gamma=inf", lambda: ea.Scalar.parse("gamma*x", params={"gamma": INF}), "error"),
    ("Scalar.parse params gamma=1e300", lambda: ea.Scalar.parse("gamma*x", params={"gamma": 1e300}), "error"),
    ("Scalar.parse params gamma=True", lambda: ea.Scalar.parse("gamma*x", params={"gamma": True}), "error"),
    ("Scalar.parse params gamma='1'", lambda: ea.Scalar.parse("gamma*x", params={"gamma": "1"}), "error"),
    ("Scalar.parse params gamma=1j", lambda: ea.Scalar.parse("gamma*x", params={"gamma": 1j}), "error"),
    ("Scalar.parse params as a list of pairs", lambda: ea.Scalar.parse("gamma*x", params=[("gamma", 1.0)]), "error"),
    ("Scalar.parse params={'exp': 1} (function name)", lambda: ea.Scalar.parse("x", params={"exp": 1.0}), "error"),
    ("Scalar.parse params={'class': 1} (keyword)", lambda: ea.Scalar.parse("x", params={"class": 1.0}), "error"),
    ("Scalar.parse params={1: 1} (non-string key)", lambda: ea.Scalar.parse("x", params={1: 1.0}), "error"),
    ("Scalar.parse name=3", lambda: ea.Scalar.parse("x", name=3), "error"),
    ("Scalar.parse name of 201 characters", lambda: ea.Scalar.parse("x", name="n" * 201), "error"),
    ("Scalar(name='s') with neither expr nor fn", lambda: ea.Scalar(name="s"), "error"),
    ("Scalar.from_torch(3)", lambda: ea.Scalar.from_torch(3), "error"),
    # Kernel
    ("Kernel.parse(None)", lambda: ea.Kernel.parse(None), "error"),
    ("Kernel.parse('s*r') (both variables)", lambda: ea.Kernel.parse("s*r"), "error"),
    ("Kernel.parse('x') (scalar variable)", lambda: ea.Kernel.parse("x"), "error"),
    ("Kernel.parse('exp(-r)', phi='sigmoid(x)')", lambda: ea.Kernel.parse("exp(-r)", phi="sigmoid(x)"), "error"),
    ("Kernel.parse(phi=3)", lambda: ea.Kernel.parse("exp(beta*s)", phi=3), "error"),
    ("Kernel.parse(phi='y')", lambda: ea.Kernel.parse("exp(beta*s)", phi="y"), "error"),
    ("Kernel.from_torch(3)", lambda: ea.Kernel.from_torch(3), "error"),
    ("Kernel.from_torch(symmetric='yes')", lambda: ea.Kernel.from_torch(_sym_kernel, symmetric="yes"), "error"),
    ("Kernel(kind='weird')", lambda: ea.Kernel(name="k", kind="weird"), "error"),
    # Attention
    ("Attention heads=0", lambda: _att(heads=0), "error"),
    ("Attention heads=-1", lambda: _att(heads=-1), "error"),
    ("Attention heads=2.5", lambda: _att(heads=2.5), "error"),
    ("Attention heads=True", lambda: _att(heads=True), "error"),
    ("Attention heads='4'", lambda: _att(heads="4"), "error"),
    ("Attention beta=0", lambda: _att(beta=0), "error"),
    ("Attention beta=-1", lambda: _att(beta=-1), "error"),
    ("Attention beta=NaN", lambda: _att(beta=NAN), "error"),
    ("Attention beta=inf", lambda: _att(beta=INF), "error"),
    ("Attention f=None", lambda: _att(f=None), "error"),
    ("Attention f=3", lambda: _att(f=3), "error"),
    ("Attention K=None", lambda: _att(K=None), "error"),
    ("Attention K=3.5", lambda: _att(K=3.5), "error"),
    ("Attention phi with a distance kernel", lambda: _att(K="exp(-r)", phi="sigmoid(x)"), "error"),
    ("Attention radius='1'", lambda: _att(radius="1"), "error"),
    ("Attention constraint= and radius= both", lambda: _att(constraint=ea.Sphere(), radius=1.0), "error"),
    ("Attention constraint=3 (not a Sphere), compiled", lambda: _compile_attn(constraint=3), "error"),
    ("Attention name='my attn'", lambda: _att(name="my attn"), "error"),
    ("Attention name=None", lambda: _att(name=None), "error"),
    ("Attention name='forward', compiled", lambda: _compile_attn(name="forward"), "error"),
    ("Attention name='keys', compiled", lambda: _compile_attn(name="keys"), "error"),
    ("Attention name='training', compiled", lambda: _compile_attn(name="training"), "error"),
    ("Attention name='class' (keyword), compiled", lambda: _compile_attn(name="class"), None),
    ("Attention heads=3 with d=8 (does not divide)", lambda: ea.compile(_att(heads=3), d=8), "error"),
    # FeedForward
    ("FeedForward width=0", lambda: FF(g="x", h="x", width=0), "error"),
    ("FeedForward width=2.5", lambda: FF(g="x", h="x", width=2.5), "error"),
    ("FeedForward ratio=0", lambda: FF(g="x", h="x", ratio=0), "error"),
    ("FeedForward ratio=-1", lambda: FF(g="x", h="x", ratio=-1), "error"),
    ("FeedForward ratio=NaN", lambda: FF(g="x", h="x", ratio=NAN), "error"),
    ("FeedForward ratio=inf", lambda: FF(g="x", h="x", ratio=INF), "error"),
    ("FeedForward g=None", lambda: FF(g=None, h="x"), "error"),
    ("FeedForward h=object()", lambda: FF(g="x", h=object()), "error"),
    ("FeedForward width=2**40, compiled at d=8", lambda: _compile_ff(width=2**40), "error"),
    # Sphere
    ("Sphere radius=0", lambda: ea.Sphere(radius=0), "error"),
    ("Sphere radius=-1", lambda: ea.Sphere(radius=-1), "error"),
    ("Sphere radius=inf", lambda: ea.Sphere(radius=INF), "error"),
    ("Sphere radius=NaN", lambda: ea.Sphere(radius=NAN), "error"),
    ("Sphere radius=True", lambda: ea.Sphere(radius=True), "error"),
    ("Sphere eps=0", lambda: ea.Sphere(eps=0), "error"),
    ("Sphere eps=1", lambda: ea.Sphere(eps=1), "error"),
    ("Sphere eps=NaN", lambda: ea.Sphere(eps=NAN), "error"),
    # Energy and compile
    ("Energy(()) (no terms)", lambda: ea.Energy(()), "error"),
    ("Energy((3,))", lambda: ea.Energy((3,)), "error"),
    ("compile(None, d=8)", lambda: ea.compile(None, d=8), "error"),
    ("compile('bi-softmax', d=8) (a string)", lambda: ea.compile("bi-softmax", d=8), "error"),
    ("compile d=0", lambda: ea.compile(_att(), d=0), "error"),
    ("compile d=-8", lambda: ea.compile(_att(), d=-8), "error"),
    ("compile d=8.0", lambda: ea.compile(_att(), d=8.0), "error"),
    ("compile d='8'", lambda: ea.compile(_att(), d="8"), "error"),
    ("compile d=True", lambda: ea.compile(_att(), d=True), "error"),
    ("compile mode='fast'", lambda: ea.compile(_att(), d=8, mode="fast"), "error"),
    ("compile path='x'", lambda: ea.compile(_att(), d=8, path="x"), "error"),
    (
        "compile path='symbolic' with a callable f",
        lambda: ea.compile(_att(f=torch.log1p), d=8, path="symbolic"),
        "error",
    ),
    ("compile schedule='par'", lambda: ea.compile(_att(), d=8, schedule="par"), "error"),
    ("compile dtype=torch.int64", lambda: ea.compile(_att(), d=8, dtype=torch.int64), "error"),
    ("compile dtype=torch.complex64", lambda: ea.compile(_att(), d=8, dtype=torch.complex64), "error"),
    ("compile dtype='float64'", lambda: ea.compile(_att(), d=8, dtype="float64"), "error"),
    ("compile sdpa_threshold=-1", lambda: ea.compile(_att(), d=8, sdpa_threshold=-1), "error"),
    # callables
    ("f=math.log (not a tensor function)", lambda: _compile_call(_att(f=math.log)), "error"),
    ("f raises ZeroDivisionError", lambda: _compile_call(_att(f=_raises(ZeroDivisionError("boom")))), "error"),
    ("f returns a scalar (u.sum())", lambda: _compile_call(_att(f=lambda u: u.sum())), "error"),
    ("f returns None", lambda: _compile_call(_att(f=lambda u: None)), "error"),
    ("h returns a numpy array", lambda: _compile_call(FF(g="x", h=lambda u: u.numpy())), "error"),
    ("h returns a complex tensor", lambda: _compile_call(FF(g="x", h=lambda u: u.to(torch.complex128))), "error"),
    (
        "h returns an int tensor (a count: gradient 0 a.e.)",
        lambda: _compile_call(FF(g="x", h=lambda u: (u > 0).long())),
        None,
    ),
    ("callable K returns a vector (x*y)", lambda: _compile_call(_att(f="x", K=lambda x, y: x * y)), "error"),
    ("callable K of one argument", lambda: _compile_call(_att(f="x", K=lambda x: x.sum())), "error"),
    ("callable K raises RuntimeError", lambda: _compile_call(_att(f="x", K=_raises(RuntimeError("boom")))), "error"),
    (
        "callable phi returns the wrong shape",
        lambda: _compile_call(_att(f="x", K="s", phi=lambda u: u[..., :1])),
        "error",
    ),
    ("f returns NaN everywhere", lambda: _compile_call(_att(f=lambda u: u * NAN)), "error"),
    ("h=torch.log (NaN for negative coordinates)", lambda: _compile_call(FF(g="x", h=torch.log)), "error"),
    ("h=torch.relu (a builtin)", lambda: _compile_call(FF(g="x", h=torch.relu)), "accept"),
    # verify
    ("verify(None)", lambda: ea.verify(None), "error"),
    ("verify rtol=0", lambda: ea.verify(_small_step(), rtol=0), "error"),
    ("verify rtol=NaN", lambda: ea.verify(_small_step(), rtol=NAN), "error"),
    ("verify rtol=-1", lambda: ea.verify(_small_step(), rtol=-1), "error"),
    ("verify tol='a'", lambda: ea.verify(_small_step(), tol="a"), "error"),
    ("verify batch=0", lambda: ea.verify(_small_step(), batch=0), "error"),
    ("verify batch=2.5", lambda: ea.verify(_small_step(), batch=2.5), "error"),
    ("verify tokens=0", lambda: ea.verify(_small_step(), tokens=0), "error"),
    ("verify seed=-1", lambda: ea.verify(_small_step(), seed=-1), "error"),
    ("verify step_size=inf", lambda: ea.verify(_small_step(), step_size=INF), "error"),
    # the step call
    ("step(X, None)", lambda: _call(None), "error"),
    ("step(X, '0.1')", lambda: _call("0.1"), "error"),
    ("step(X, 0.1j)", lambda: _call(0.1j), "error"),
    ("step(X, NaN)", lambda: _call(NAN), "error"),
    ("step(X, inf)", lambda: _call(INF), "error"),
    ("step(X, True)", lambda: _call(True), "error"),
    ("step(X, tensor(0.1j))", lambda: _call(torch.tensor(0.1j)), "error"),
    ("step(X, tensor(True))", lambda: _call(torch.tensor(True)), "error"),
    ("step(X, ones(3, 8)) (does not broadcast)", lambda: _call(torch.ones(3, 8)), "error"),
    ("step(X, ones(3, 1, 5, 8)) (extra dimension)", lambda: _call(torch.ones(3, 1, 5, 8)), "error"),
    ("step(X, tensor(NaN)) (a NaN step tensor)", lambda: _call(torch.tensor(NAN)), None),
    ("step(X, -0.1) (negative step: ascent)", lambda: _call(-0.1), "accept"),
    ("steps dict missing a term", lambda: _call({"attn": 0.1}), "error"),
    ("steps dict with an extra key", lambda: _call({"attn": 0.1, "ff": 0.1, "zz": 0.1}), "error"),
    ("steps list of the wrong length", lambda: _call([0.1]), "error"),
    ("X of width 7 into d=8", lambda: _call(X=_X(2, 5, 7)), "error"),
    ("X 1-D", lambda: _call(X=_X(8)), "error"),
    ("X a numpy array", lambda: _call(X=_X().numpy()), "error"),
    ("X a nested list", lambda: _call(X=_X().tolist()), "error"),
    ("X float64 into a float32 step", lambda: _call(X=_X(dtype=torch.float64)), "error"),
    ("X int64", lambda: _call(X=torch.ones(2, 5, 8, dtype=torch.int64)), "error"),
    ("X complex64", lambda: _call(X=torch.ones(2, 5, 8, dtype=torch.complex64)), "error"),
    ("X with N=0 tokens", lambda: _call(X=torch.zeros(2, 0, 8)), "accept"),
    ("X with a NaN entry (no finite_checks)", lambda: _call(X=_X().index_fill(0, torch.tensor([0]), NAN)), "accept"),
    ("X with a NaN entry under ea.finite_checks()", _under_finite_checks, "error"),
    ("weights=ones(3) (a tensor, not a mapping)", lambda: _call(weights=torch.ones(3)), "error"),
    ("weights=[1, 2] (a list)", lambda: _call(weights=[1, 2]), "error"),
    ("weights={'attn': ones(3)} (wrong shape)", lambda: _call(weights={"attn": torch.ones(3)}), "error"),
    ("weights={'nope': ones(8, 8)} (unknown term)", lambda: _call(weights={"nope": torch.ones(8, 8)}), "error"),
    ("step.energy(X of width 7)", lambda: _small_step().energy(_X(2, 5, 7)), "error"),
]


def _malformed_run(thunk) -> Callable[[Path], dict]:
    def run(folder: Path) -> dict:
        value = thunk()
        shown = type(value).__name__
        if isinstance(value, torch.Tensor):
            shown = f"tensor {tuple(value.shape)} {value.dtype}, finite: {bool(torch.isfinite(value).all())}"
        return {"outcome": "accepted", "detail": f"returned {shown}"}

    return run


def malformed_probes() -> list[Probe]:
    return [Probe("malformed", label, _malformed_run(thunk), expect) for label, thunk, expect in MALFORMED]


# ------------------------------------------------------------------------------------------------------------------
# 3. attacks
# ------------------------------------------------------------------------------------------------------------------

DANGEROUS_NAMES = {"os", "open", "eval", "exec", "__import__", "compile", "getattr", "globals", "system", "subprocess"}


def _imports(source: str) -> set[str]:
    """Each imported name as ``from M import n`` / ``import n``."""
    return {
        f"from {n.module} import {a.name}" if isinstance(n, ast.ImportFrom) else f"import {a.name}"
        for n in ast.walk(ast.parse(source))
        if isinstance(n, (ast.Import, ast.ImportFrom))
        for a in n.names
    }


def _template_imports() -> set[str]:
    """What the template may import (``math``, ``torch``, the names each registered family lists), to tell a
    payload's import apart."""
    from energyarch.derivation import FAMILIES
    from energyarch.derivation.core import runtime_imports

    return {"import math", "import torch"} | {
        f"from {module} import {name}"
        for family in FAMILIES.values()
        for name, module in runtime_imports(family).items()
    }


def _code_of_payload(source: str, allowed: set[str]) -> list[str]:
    """Independent look at emitted source: imports beyond the template's, or dangerous names used as code."""
    found = sorted(_imports(source) - allowed)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id in DANGEROUS_NAMES:
            found.append(node.id)
        elif isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            found.append(node.attr)
    return found


def _exercise(step, folder: Path, payload: Optional[str]) -> dict:
    """Run, report, print and save a compiled step, then import the saved source; say whether it stayed inert."""
    step(torch.randn(2, 3, step.d, dtype=next(step.parameters()).dtype), 0.1)
    text = step.report() + str(step) + step.source
    allowed = _template_imports()
    for name in step.names:
        src = emit_source(step.derivations[name])
        check_source(src)
        code = _code_of_payload(src, allowed)
        if code:
            return {
                "outcome": "inert",
                "defect": f"payload is code in the emitted source: {code}",
                "detail": f"emitted source of {name!r} uses {code}",
            }
        if payload is not None and payload in src:
            return {
                "outcome": "inert",
                "defect": "payload appears unescaped in the emitted source",
                "detail": f"{name!r}",
            }
    out = step.save_source(folder / "emitted.py")
    for i, path in enumerate(sorted(out.glob("emitted_*.py"))):
        spec = importlib.util.spec_from_file_location(f"probe_emitted_{i}", path)
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    return {
        "outcome": "inert (compiled; payload stayed a literal)",
        "detail": f"ran, report/print ({len(text)} chars), saved and imported {len(step.names)} module(s); "
        f"no code of the payload in the source",
    }


def _marker_code(folder: Path) -> str:
    return f"open({str(folder / 'MARKER')!r}, 'w')"


def expr_attack(template: str, name: Optional[str] = None, kernel: bool = False) -> Callable[[Path], dict]:
    """Parse ``template`` (``{M}`` becomes code creating the MARKER); if it parses, compile it and exercise it."""

    def run(folder: Path) -> dict:
        text = template.replace("{M}", _marker_code(folder))
        if kernel:
            K = ea.Kernel.parse(text, name=name)
            step = ea.compile(Att(f="x", K=K, heads=2), d=8)
            parsed = K.expr
        else:
            h = ea.Scalar.parse(text, name=name)
            step = ea.compile(FF(g="x", h=h), d=8)
            parsed = h.expr
        out = _exercise(step, folder, text)
        out["detail"] = f"parsed as {parsed}; " + out["detail"]
        return out

    return run


def _payload(folder: Path, sep: str) -> str:
    return f"x{sep}import os; {_marker_code(folder)}.close(){sep}#"


def name_attack(field_name: str, sep: str) -> Callable[[Path], dict]:
    def run(folder: Path) -> dict:
        payload = _payload(folder, sep)
        if field_name == "Scalar.parse(name=)":
            energy = FF(g="x", h=ea.Scalar.parse("relu(x)**2/2", name=payload))
        elif field_name == "Kernel.from_torch(name=)":
            energy = Att(f="log(x)", K=ea.Kernel.from_torch(_sym_kernel, name=payload), heads=2)
        else:

            def h(u):
                return torch.relu(u) ** 2 / 2

            h.__name__ = h.__qualname__ = payload
            energy = FF(g="x", h=h)
        return _exercise(ea.compile(energy, d=8), folder, payload)

    return run


EXPRESSION_ATTACKS = [
    ("__import__ call", "__import__('os').system('true') or {M}", "rejected"),
    (
        "dunder walk ().__class__.__bases__[0].__subclasses__()",
        "().__class__.__bases__[0].__subclasses__()",
        "rejected",
    ),
    ("attribute on x: x.__class__.__init__.__globals__", "x.__class__.__init__.__globals__", "rejected"),
    ("attribute on a function: exp.__globals__", "exp.__globals__['__builtins__']", "rejected"),
    ("lambda", "(lambda: {M})()", "rejected"),
    ("plain open(...)", "{M}", "rejected"),
    ("exec string", 'exec("{M}")', "rejected"),
    ("eval string", 'eval("{M}")', "rejected"),
    ("sympify string", 'sympify("{M}")', "rejected"),
    ("f-string", 'f"{{M}}"', "rejected"),
    ("list comprehension", "[{M} for _ in 'a'][0]", "rejected"),
    ("generator expression", "sum({M} for _ in 'a')", "rejected"),
    ("walrus", "(y := {M})", "rejected"),
    ("starred call argument", "exp(*[x])", "rejected"),
    ("keyword call argument", "exp(x=1)", "rejected"),
    ("conditional with a side effect", "x if {M} else x", "rejected"),
    ("getattr builtin", "getattr(x, '__class__')", "rejected"),
    ("globals()", "globals()['__builtins__']", "rejected"),
    ("breakpoint()", "breakpoint()", "rejected"),
    ("subscript x[0]", "x[0]", "rejected"),
    ("dict display", "{x: 1}", "rejected"),
    ("string constant", "'x'", "rejected"),
    ("bytes constant", "b'x'", "rejected"),
    ("sympy Function('open')(x)", "Function('open')(x)", "rejected"),
    ("tower x*((((9**64)**64)**64)**64)**64", "x*((((9**64)**64)**64)**64)**64", "rejected"),
    ("10**400*x", "10**400*x", "rejected"),
    ("x**10**400", "x**10**400", "rejected"),
    ("exp(exp(exp(100)))*x", "exp(exp(exp(100)))*x", "rejected"),
    ("1e999*x (float overflow)", "1e999*x", "rejected"),
    ("x + 350-digit integer", "x + " + "9" * 350, "rejected"),
    ("401-character expression", "x" + "+x" * 200, "rejected"),
    ("unary chain -…-x (199 minus signs)", "-" * 199 + "x", "rejected"),
    ("nested exp( … ) 60 deep", "exp(" * 60 + "x" + ")" * 60, "rejected"),
    ("parentheses 185 deep around relu(x)**2/2 (no AST depth)", "(" * 185 + "relu(x)**2/2" + ")" * 185, "inert"),
    ("x + x + … (131 terms, node limit)", "x" + "+x" * 130, "rejected"),
    ("NUL inside: 'x\\x00+1'", "x\x00+1", "rejected"),
    ("fullwidth lookalike 'ｘ' in 'ｘ**2/2' (NFKC: x)", "ｘ**2/2", "inert"),
    ("fullwidth 'ｅｘｐ(ｘ)' (NFKC: exp(x))", "ｅｘｐ(ｘ)", "inert"),
    ("fullwidth '__ｉｍｐｏｒｔ__' (NFKC: __import__)", "__ｉｍｐｏｒｔ__('os')", "rejected"),
    ("kernel string: __import__", "__import__('os') * s", "rejected"),
]


def _catalog_entry(folder: Path, source: str, edit: Callable[[str], str]) -> Path:
    text = (Path(catalog.default_directory()) / source).read_text(encoding="utf-8")
    folder = folder / "catalog"
    folder.mkdir(exist_ok=True)
    (folder / source).write_text(edit(text), encoding="utf-8")
    return folder


def catalog_attack(source: str, edit: Callable[[str, str], str], raw: Optional[bytes] = None) -> Callable[[Path], dict]:
    """Write an edited copy of a catalog entry to a temp folder (``edit(text, marker_code)``), load, compile and
    exercise it, render the catalog tables."""

    def run(folder: Path) -> dict:
        code = _marker_code(folder)
        if raw is not None:
            cat = folder / "catalog"
            cat.mkdir(exist_ok=True)
            (cat / source).write_bytes(raw)
        else:
            cat = _catalog_entry(folder, source, lambda text: edit(text, code))
        entries = catalog.load_catalog(cat)
        entry = next(iter(entries.values()))
        out = _exercise(entry.compile(8), folder, None)
        tables = catalog.tables_markdown(cat, d=8, check_d=8)
        out["detail"] = f"loaded {entry.name!r}, rendered tables ({len(tables)} chars); " + out["detail"]
        return out

    return run


def _replace_key(key: str, value: str) -> Callable[[str, str], str]:
    """Replace the line ``key = ...`` of an entry with ``key = value`` (value: TOML text, may use {M})."""

    def edit(text: str, code: str) -> str:
        lines = text.splitlines()
        i = next(i for i, ln in enumerate(lines) if ln.startswith(f"{key} ="))
        lines[i] = f"{key} = " + value.replace("{M}", code)
        return "\n".join(lines) + "\n"

    return edit


def _toml_str(text: str) -> str:
    return json.dumps(text)  # a TOML basic string: JSON escapes are valid TOML escapes


CATALOG_ATTACKS = [
    (
        "TOML h = __import__ payload",
        "relu-ff.toml",
        _replace_key("h", _toml_str("__import__('os') or {M}")),
        "rejected",
    ),
    (
        "TOML h with a backslash continuation + import",
        "relu-ff.toml",
        _replace_key("h", "'''relu(x)**2/2 \\\nimport os; {M}'''"),
        "rejected",
    ),
    (
        "TOML h = huge tower",
        "relu-ff.toml",
        _replace_key("h", _toml_str("x*((((9**64)**64)**64)**64)**64")),
        "rejected",
    ),
    (
        "TOML K with LF + import",
        "bi-softmax.toml",
        _replace_key("K", _toml_str("exp(beta*s)\nimport os; {M}")),
        "rejected",
    ),
    (
        "TOML constraint = payload",
        "relu-ff.toml",
        _replace_key("constraint", _toml_str("__import__('os') or {M}")),
        "rejected",
    ),
    (
        "TOML params key with LF + import",
        "rbf-softmax.toml",
        _replace_key("params", '{ "gamma" = 0.125, "a\\nimport os" = 1.0 }'),
        "rejected",
    ),
    ("TOML params gamma = inf", "rbf-softmax.toml", _replace_key("params", "{ gamma = inf }"), "rejected"),
    ("TOML params gamma = nan", "rbf-softmax.toml", _replace_key("params", "{ gamma = nan }"), "rejected"),
    ("TOML name = payload", "relu-ff.toml", _replace_key("name", _toml_str("relu-ff\nimport os; {M}")), "rejected"),
    (
        "TOML title with every terminator + payload (free text)",
        "relu-ff.toml",
        _replace_key("title", _toml_str("".join(TERMINATORS.values()) + "import os; {M}")),
        "inert",
    ),
    (
        "TOML notes with a payload (free text)",
        "relu-ff.toml",
        lambda text, code: text.replace(
            "notes = '''", f"notes = '''\nimport os; {code}\n$$ \\end{{equation}} {code} $$\n", 1
        ),
        "inert",
    ),
    (
        "TOML params = 3000-deep nested arrays",
        "rbf-softmax.toml",
        _replace_key("params", "{ gamma = " + "[" * 3000 + "]" * 3000 + " }"),
        "rejected",
    ),
    ("TOML file of binary, non-UTF-8 bytes", "relu-ff.toml", None, "rejected"),
]


def _saved_run(folder: Path) -> tuple[Path, torch.nn.Module, dict]:
    model = torch.nn.Linear(3, 2)
    run = folder / "run"
    save_checkpoint(run, model, state={"step": 1})
    return run, model, json.loads((run / "checkpoint.json").read_text())


def _write_state(run: Path, state: dict) -> None:
    (run / "checkpoint.json").write_text(json.dumps(state))


def _retensor(run: Path, state: dict, tensors: dict) -> None:
    """Replace the tensors file by ``tensors`` and record its true sha256 (a forger can)."""
    import hashlib

    from safetensors.torch import save_file

    path = run / state["tensors_file"]
    save_file(tensors, str(path), metadata={"format": "energyarch-checkpoint-1"})
    state["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _write_state(run, state)


def checkpoint_attack(
    craft: Callable[[Path, Path, dict], None], restore_rng: bool = False, after: Optional[Callable[[], str]] = None
) -> Callable[[Path], dict]:
    def run(folder: Path) -> dict:
        run_dir, model, state = _saved_run(folder)
        craft(folder, run_dir, state)
        before = torch.get_rng_state().clone()
        loaded = load_checkpoint(run_dir, torch.nn.Linear(3, 2), restore_rng=restore_rng)
        detail = f"loaded (step {loaded.get('step')!r})"
        if after is not None:
            detail += "; " + after()
        elif restore_rng:
            detail += f"; torch RNG state changed: {not torch.equal(before, torch.get_rng_state())}"
        return {"outcome": "accepted", "detail": detail}

    return run


def _set(key, value):
    def craft(folder, run, state):
        state[key] = value(folder, run, state) if callable(value) else value
        _write_state(run, state)

    return craft


def _other_checkpoint(folder: Path) -> tuple[Path, str]:
    other = folder / "other"
    save_checkpoint(other, torch.nn.Linear(3, 2), state={"step": 1})
    return other / "checkpoint-00000001.safetensors", json.loads((other / "checkpoint.json").read_text())["sha256"]


def _point_outside(kind: str):
    def craft(folder, run, state):
        target, sha = _other_checkpoint(folder)
        if kind == "relative":
            state["tensors_file"] = "../other/" + target.name
        elif kind == "absolute":
            state["tensors_file"] = str(target)
        else:
            os.symlink(target, run / "link.safetensors")
            state["tensors_file"] = "link.safetensors"
        state["sha256"] = sha
        _write_state(run, state)

    return craft


def _write_bytes(name: str, data: bytes):
    def craft(folder, run, state):
        (run / name).write_bytes(data)

    return craft


def _sparse_json(folder, run, state):
    with open(run / "checkpoint.json", "r+b") as fh:
        fh.truncate(65 * 2**20)


def _fifo_json(folder, run, state):
    (run / "checkpoint.json").unlink()
    os.mkfifo(run / "checkpoint.json")


def _rng(edit):
    def craft(folder, run, state):
        edit(state["rng"])
        _write_state(run, state)

    return craft


def _tensor_edit(edit):
    def craft(folder, run, state):
        from safetensors.torch import load_file

        tensors = load_file(str(run / state["tensors_file"]))
        edit(tensors)
        _retensor(run, state, tensors)

    return craft


def _corrupt_header(folder, run, state):
    import hashlib

    path = run / state["tensors_file"]
    path.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    state["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _write_state(run, state)


def _next_draws() -> str:
    import random

    import numpy as np

    return f"next numpy normal draw {np.random.standard_normal():.3g}, next python gauss {random.gauss(0, 1):.3g}"


CHECKPOINT_ATTACKS = [
    ("tensors_file '../other/…' (outside the run folder)", checkpoint_attack(_point_outside("relative")), "rejected"),
    ("tensors_file absolute path", checkpoint_attack(_point_outside("absolute")), "rejected"),
    ("tensors_file a symlink to another folder", checkpoint_attack(_point_outside("link")), "rejected"),
    ("tensors_file 'checkpoint.json'", checkpoint_attack(_set("tensors_file", "checkpoint.json")), "rejected"),
    ("tensors_file with NUL", checkpoint_attack(_set("tensors_file", "a\x00.safetensors")), "rejected"),
    ("tensors_file = 123", checkpoint_attack(_set("tensors_file", 123)), "rejected"),
    ("tensors_file = ['a']", checkpoint_attack(_set("tensors_file", ["a.safetensors"])), "rejected"),
    (
        "checkpoint.json binary non-UTF-8",
        checkpoint_attack(_write_bytes("checkpoint.json", b"\xff\xfe\x00\x9c binary")),
        "rejected",
    ),
    (
        "checkpoint.json 200000-deep nested JSON arrays",
        checkpoint_attack(_write_bytes("checkpoint.json", b"[" * 200000 + b"]" * 200000)),
        "rejected",
    ),
    ("checkpoint.json a 65 MiB sparse file", checkpoint_attack(_sparse_json), "rejected"),
    ("checkpoint.json a FIFO (would block a reader)", checkpoint_attack(_fifo_json), "rejected"),
    ("checkpoint.json a JSON list", checkpoint_attack(_write_bytes("checkpoint.json", b"[1, 2]")), "rejected"),
    ("sha256 removed", checkpoint_attack(_set("sha256", None)), "rejected"),
    (
        "signature changed (another architecture)",
        checkpoint_attack(_set("signature", {"class": "Linear", "tensors": {"weight": [5, 3], "bias": [5]}})),
        "rejected",
    ),
    ("tensors file with a corrupt header (sha256 forged)", checkpoint_attack(_corrupt_header), "rejected"),
    (
        "tensors file with an extra tensor (sha256 forged)",
        checkpoint_attack(_tensor_edit(lambda t: t.update({"model/extra": torch.zeros(2)}))),
        "rejected",
    ),
    (
        "tensors file missing a tensor (sha256 forged)",
        checkpoint_attack(_tensor_edit(lambda t: t.pop("model/bias"))),
        "rejected",
    ),
    (
        "tensors file with a wrong shape (sha256 forged)",
        checkpoint_attack(_tensor_edit(lambda t: t.update({"model/bias": torch.zeros(5)}))),
        "rejected",
    ),
    (
        "tensors file float64 weights (sha256 forged)",
        checkpoint_attack(_tensor_edit(lambda t: t.update({"model/weight": t["model/weight"].double()}))),
        "rejected",
    ),
    ("RNG torch state of 3 bytes", checkpoint_attack(_rng(lambda r: r.update(torch=[0, 1, 2])), True), "rejected"),
    ("RNG torch state with a 256", checkpoint_attack(_rng(lambda r: r["torch"].__setitem__(0, 256)), True), "rejected"),
    (
        "RNG python state with 2**40 words",
        checkpoint_attack(_rng(lambda r: r["python"][1].__setitem__(0, 2**40)), True),
        "rejected",
    ),
    (
        "RNG numpy keys of 3 words",
        checkpoint_attack(_rng(lambda r: r["numpy"].__setitem__(1, [1, 2, 3])), True),
        "rejected",
    ),
    ("RNG numpy state a string", checkpoint_attack(_rng(lambda r: r.update(numpy="MT19937")), True), "rejected"),
    (
        "RNG numpy cached gaussian = NaN",
        checkpoint_attack(_rng(lambda r: r.update(numpy=r["numpy"][:3] + [1, NAN])), True, _next_draws),
        "rejected",
    ),
    (
        "RNG python gauss_next = 'nan' (a string)",
        checkpoint_attack(_rng(lambda r: r["python"].__setitem__(2, "nan")), True, _next_draws),
        "rejected",
    ),
    (
        "RNG python gauss_next = 1e308",
        checkpoint_attack(_rng(lambda r: r["python"].__setitem__(2, 1e308)), True, _next_draws),
        None,
    ),
    ("RNG genuine state (control)", checkpoint_attack(lambda f, r, s: None, True), "loaded"),
]


def attack_probes() -> list[Probe]:
    probes = []
    for label, template, expect in EXPRESSION_ATTACKS:
        probes.append(
            Probe(
                "attacks",
                f"expression: {label}",
                expr_attack(template, name="probe", kernel=label.startswith("kernel")),
                expect,
            )
        )
    for sep_name, sep in TERMINATORS.items():
        probes.append(
            Probe(
                "attacks",
                f"expression 'x<{sep_name}>import os; open(MARKER)'",
                expr_attack(f"x{sep}import os; {{M}}", name="probe"),
                "rejected",
            )
        )
    for field_name in ("Scalar.parse(name=)", "Kernel.from_torch(name=)", "function __name__"):
        for sep_name, sep in TERMINATORS.items():
            probes.append(
                Probe(
                    "attacks",
                    f"{field_name} 'x<{sep_name}>import os; open(MARKER)…'",
                    name_attack(field_name, sep),
                    "inert",
                )
            )
    binary = b"\xff\xfe\x00\x9c name = \x80\x81 not utf-8"
    for label, source, edit, expect in CATALOG_ATTACKS:
        probes.append(
            Probe(
                "attacks",
                f"catalog: {label}",
                catalog_attack(source, edit, raw=binary if edit is None else None),
                expect,
            )
        )
    for label, run, expect in CHECKPOINT_ATTACKS:
        probes.append(Probe("attacks", f"checkpoint: {label}", run, expect))
    return probes


# ------------------------------------------------------------------------------------------------------------------
# 4. round 3 (issue 16): causality under overflow, catalog text, the budget in a thread, run folders, the official
#    converter, configs, --set, checkpoints at --resume, generate. Each probe that touches a run folder works on its
#    own copy of a finished tiny run and reports SAVED FILE CHANGED if a refused input changed any file there.
# ------------------------------------------------------------------------------------------------------------------

TINY_RUN = [
    arg
    for a in (
        "limit_train=32",
        "limit_test=16",
        "batch_size=16",
        "epochs=1",
        "model.d=16",
        "model.heads=2",
        "model.iters=2",
        "model.time_freq=8",
        "diagnostics_samples=4",
        "eval_iters=[1, 2]",
    )
    for arg in ("--set", a)
]
_TEMPLATES: dict[str, Path] = {}


def _cli(*args: str) -> tuple[int, str]:
    """``energyarch ARGS`` in this process: (exit status, what it wrote to stderr)."""
    import contextlib
    import io

    from energyarch.cli import main as cli_main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = cli_main(list(args))
    return status, err.getvalue()


def _template(kind: str) -> Path:
    """A finished tiny run (``digits`` or ``text``), trained once in the parent before any child forks (with one
    thread: a child forked after the parent set a multi-threaded OpenMP pool can deadlock in its first torch op)."""
    if kind not in _TEMPLATES:
        root = Path(tempfile.mkdtemp(prefix=f"safety_probe_{kind}_"))
        if kind == "digits":
            args = [
                "train",
                "--config",
                "digits",
                "--out",
                str(root / "run"),
                "--quiet",
                "--no-report",
                "--threads",
                "1",
                *TINY_RUN,
            ]
        else:
            (root / "t.txt").write_text("def f(x):\n    return x + 1\n" * 40)
            args = [
                "train",
                "--config",
                "text_small",
                "--out",
                str(root / "run"),
                "--quiet",
                "--no-report",
                "--threads",
                "1",
                "--set",
                "model.arch=transformer",
                "--set",
                f"text_path={json.dumps(str(root / 't.txt'))}",
                "--set",
                "model.d=16",
                "--set",
                "model.heads=2",
                "--set",
                "model.iters=1",
                "--set",
                "model.time_freq=8",
                "--set",
                "seq_len=8",
                "--set",
                "batch_size=4",
                "--set",
                "limit_train=8",
                "--set",
                "limit_test=4",
                "--set",
                "epochs=1",
            ]
        status, err = _cli(*args)
        if status != 0:
            raise RuntimeError(f"the template {kind} run failed: {err}")
        _TEMPLATES[kind] = root / "run"
    return _TEMPLATES[kind]


def _snapshot(folder: Path) -> dict:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _outcome_of(status: int, err: str) -> dict:
    if status == 0:
        return {"outcome": "accepted", "detail": "exit status 0"}
    line = err.strip().splitlines()[-1] if err.strip() else ""
    if line.startswith("energyarch: error:"):
        return {"outcome": "rejected EnergyArchError", "detail": line[len("energyarch: error:") :].strip()}
    return {"outcome": f"RAW exit {status}", "detail": err[-300:]}


def run_attack(
    prepare: Callable[[Path, Path], list], template: str = "digits", words: tuple = (), forbidden: tuple = ()
) -> Callable[[Path], dict]:
    """Copy a finished run into the probe's folder, ``prepare(folder, run)`` it (returns the CLI arguments), run the
    command, and judge: saved files unchanged when refused, nothing written next to the run folder, the message
    naming ``words`` and free of ``forbidden`` advice."""

    def run(folder: Path) -> dict:
        import shutil

        run_dir = folder / "run"
        shutil.copytree(_template(template), run_dir)
        args = prepare(folder, run_dir)
        before, outside = _snapshot(run_dir), sorted(p.name for p in folder.iterdir())
        out = _outcome_of(*_cli(*args))
        defects = []
        after = _snapshot(run_dir)
        if out["outcome"] != "accepted" and any(after.get(name) != digest for name, digest in before.items()):
            defects.append("SAVED FILE CHANGED")
        if sorted(p.name for p in folder.iterdir()) != outside:
            defects.append("a file was written outside the run folder")
        if out["outcome"].startswith("rejected") and not all(w in out["detail"] for w in words):
            defects.append(f"message does not name {words}")
        if any(f in out["detail"] for f in forbidden):
            defects.append(f"WRONG ADVICE: {forbidden}")
        if defects:
            out["defect"] = "; ".join(defects)
        return out

    return run


def _train_into_run(*extra: str):
    return lambda folder, run: [
        "train",
        "--config",
        "digits",
        "--out",
        str(run),
        "--quiet",
        "--no-report",
        *TINY_RUN,
        *extra,
    ]


def _only_config(folder, run):
    import shutil

    for p in run.iterdir():
        if p.name != "config.toml":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return ["train", "--config", "digits", "--out", str(run), "--quiet", "--no-report", *TINY_RUN]


def _out_is_file(through: bool):
    def prepare(folder, run):
        (run / "notes.txt").write_text("keep")
        target = run / "notes.txt"
        return [
            "train",
            "--config",
            "digits",
            "--out",
            str(target / "x" if through else target),
            "--quiet",
            "--no-report",
            *TINY_RUN,
        ]

    return prepare


def _diverge_fresh(folder, run):
    return [
        "train",
        "--config",
        "digits",
        "--out",
        str(run / "fresh"),
        "--quiet",
        "--no-report",
        *TINY_RUN,
        "--set",
        "lr=1e30",
        "--set",
        "grad_clip=0",
        "--set",
        "warmup_epochs=0",
    ]


def _state_field(key, value):
    def prepare(folder, run):
        state = json.loads((run / "checkpoint.json").read_text())
        state[key] = value
        (run / "checkpoint.json").write_text(json.dumps(state))
        return ["train", "--resume", "--out", str(run), "--quiet", "--no-report", "--set", "epochs=2"]

    return prepare


def _optimizer_shape(folder, run):
    state = json.loads((run / "checkpoint.json").read_text())

    def change(tensors):
        key = next(k for k in tensors if k.startswith("optim/") and k.endswith("/exp_avg"))
        tensors[key] = torch.zeros(3, 1)

    from safetensors.torch import load_file

    tensors = load_file(str(run / state["tensors_file"]))
    change(tensors)
    _retensor(run, state, tensors)
    return ["train", "--resume", "--out", str(run), "--quiet", "--no-report", "--set", "epochs=2"]


def _config_file(content: bytes, *extra: str):
    def prepare(folder, run):
        (folder / "c.toml").write_bytes(content)
        return [
            "train",
            "--config",
            str(folder / "c.toml"),
            "--out",
            str(folder / "new"),
            "--quiet",
            "--no-report",
            *extra,
        ]

    return prepare


def _new_run_with(*assignments: str):
    return lambda folder, run: [
        "train",
        "--config",
        "digits",
        "--out",
        str(folder / "new"),
        "--quiet",
        "--no-report",
        *TINY_RUN,
        *[a for s in assignments for a in ("--set", s)],
    ]


def _generate(*args: str):
    return lambda folder, run: ["generate", "--checkpoint", str(run), "--max-bytes", "4", *args]


def _eval(*args: str):
    return lambda folder, run: ["eval", "--checkpoint", str(run), *args]


DEEP = "[" * 3000 + "]" * 3000
RUN_ATTACKS = [  # (label, prepare, template, expect, words the message must name, advice it must not give)
    (
        "new run (diverging config) into a finished run",
        _train_into_run("--set", "lr=1e30", "--set", "grad_clip=0"),
        "digits",
        "rejected",
        ("--out", "--resume"),
        (),
    ),
    (
        "new run into a folder holding only config.toml",
        _only_config,
        "digits",
        "rejected",
        ("--out",),
        ("add --resume",),
    ),
    ("--out names a file", _out_is_file(False), "digits", "rejected", ("--out", "is a file"), ()),
    ("--out names a path through a file", _out_is_file(True), "digits", "rejected", ("--out",), ()),
    (
        "diverging run without a checkpoint: advice",
        _diverge_fresh,
        "digits",
        "rejected",
        ("nothing to resume",),
        ("with --resume",),
    ),
    ("--resume: step = 10**30", _state_field("step", 10**30), "digits", "rejected", ("step",), ()),
    ("--resume: step = -1", _state_field("step", -1), "digits", "rejected", ("step",), ()),
    ("--resume: epoch = 2**64", _state_field("epoch", 2**64), "digits", "rejected", ("epoch",), ()),
    (
        "--resume: batch_in_epoch = 10**9",
        _state_field("batch_in_epoch", 10**9),
        "digits",
        "rejected",
        ("batch_in_epoch",),
        (),
    ),
    ("--resume: epoch_loss = 'x'", _state_field("epoch_loss", "x"), "digits", "rejected", ("epoch_loss",), ()),
    ("--resume: optimizer state of the wrong shape", _optimizer_shape, "digits", "rejected", ("optimizer state",), ()),
    ("config file not UTF-8", _config_file(b'task = "digits\xff"\n'), "digits", "rejected", ("UTF-8",), ()),
    (
        "config file: 5000-deep nested arrays",
        _config_file(b"lr = " + b"[" * 5000 + b"]" * 5000 + b"\n"),
        "digits",
        "rejected",
        ("nests too deeply",),
        (),
    ),
    (
        "config file: 3000-deep inline tables",
        _config_file(b"[model]\nattention = " + b"{ a = " * 3000 + b"1" + b" }" * 3000 + b"\n"),
        "digits",
        "rejected",
        ("nests too deeply",),
        (),
    ),
    ("--set lr=<3000-deep array>", _new_run_with("lr=" + DEEP), "digits", "rejected", ("--set",), ()),
    (
        "--set indexing into a string",
        _new_run_with('model.attention={ f = "log(x)", K = "exp(beta*s)" }', "model.attention.f.x=1"),
        "digits",
        "rejected",
        ("not a table",),
        (),
    ),
    ("seed = -1", _new_run_with("seed=-1"), "digits", "rejected", ("seed",), ()),
    ("model.lora_scale = inf", _new_run_with("model.lora_scale=inf"), "digits", "rejected", ("lora_scale",), ()),
    ("text_path = ''", _new_run_with('task="text"', 'text_path=""'), "digits", "rejected", ("text_path",), ()),
    (
        "solver rmsprop eps = 0",
        _new_run_with('model.solver={ name = "rmsprop", eps = 0.0 }'),
        "digits",
        "rejected",
        ("eps",),
        (),
    ),
    (
        "solver adam eps = 0",
        _new_run_with('model.solver={ name = "adam", eps = 0.0 }'),
        "digits",
        "rejected",
        ("eps",),
        (),
    ),
    ("eval --iters 999999999", _eval("--iters", "999999999"), "digits", "rejected", ("--iters",), ()),
    (
        "eval --out names a file",
        lambda folder, run: ["eval", "--checkpoint", str(run), "--out", str(run / "config.toml")],
        "digits",
        "rejected",
        ("--out",),
        (),
    ),
    ("generate --temperature 1e-300", _generate("--temperature", "1e-300"), "text", "accept", (), ()),
    ("generate --temperature 5e-324", _generate("--temperature", "5e-324"), "text", "accept", (), ()),
    (
        "generate --prompt with a lone surrogate",
        _generate("--prompt", "a\ud800b"),
        "text",
        "rejected",
        ("--prompt",),
        (),
    ),
    (
        "generate --prompt of Latin-1 bytes",
        _generate("--prompt", b"caf\xe9".decode("utf-8", "surrogateescape")),
        "text",
        "accept",
        (),
        (),
    ),
    ("generate --seed -1", _generate("--seed", "-1"), "text", "rejected", ("seed",), ()),
    ("generate --max-bytes 10**12", _generate("--max-bytes", str(10**12)), "text", "rejected", ("max_bytes",), ()),
]


def _overflowing_kernel(x, y):
    return torch.exp(40 * (x * y).sum() - 40 * (x * x).sum())


def causal_probe(declaration: Callable[[], dict], later: str) -> Callable[[Path], dict]:
    """Earlier tokens' updates with a later token that overflows (or holds inf / NaN) equal those without it."""

    def run(folder: Path) -> dict:
        step = ea.compile(ea.CausalAttention(heads=2, **declaration()), d=8, dtype=torch.float64)
        X = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        Y = X.clone()
        Y[:, 3:] = {"aligned x1e3": X[:, :1] * 1e3, "inf": math.inf, "nan": math.nan, "-inf": -math.inf}[later]
        a, b = step(X, 0.1)[:, :3], step(Y, 0.1)[:, :3]
        same = torch.equal(a, b)
        out = {
            "outcome": "causal exact" if same else "SILENTLY WRONG",
            "detail": f"{step.derivations['attn'].pattern}; earlier tokens bit-identical: {same}; finite: "
            f"{bool(torch.isfinite(b).all())}",
        }
        return out

    return run


CAUSAL = [
    ("bi-softmax", lambda: dict(f="log(x)/beta", K="exp(beta*s)")),
    ("inner-product kernel", lambda: dict(f="sqrt(x)", K="exp(beta*s)")),
    ("kernel attention", lambda: dict(f="x/(2*beta)", K="sigmoid(beta*s)")),
    ("distance kernel", lambda: dict(f="log(x)", K="exp(-r/8)")),
    ("linear attention", lambda: dict(f="x", K="(beta*s)**2/2", phi="elu(x) + 1")),
    ("callable f (autodiff)", lambda: dict(f=torch.log, K="exp(beta*s)")),
    (
        "overflowing callable K (autodiff)",
        lambda: dict(f="log(x)", K=ea.Kernel.from_torch(_overflowing_kernel, "overflowing", symmetric=False)),
    ),
]


def catalog_rule_probe(rule: str) -> Callable[[Path], dict]:
    def run(folder: Path) -> dict:
        src = (catalog.default_directory() / "bi-softmax.toml").read_text(encoding="utf-8")
        path = folder / "bi-softmax.toml"
        path.write_text(src.replace('constraint = "sqrt(p)"', f"constraint = {json.dumps(rule)}"), encoding="utf-8")
        start = time.perf_counter()
        entry = catalog.load_entry(path)
        radius = entry.term(16).constraint.radius
        return {"outcome": "accepted", "detail": f"radius at d=16: {radius}; {time.perf_counter() - start:.2f} s"}

    return run


def budget_thread_probe(folder: Path) -> dict:
    """ea.compile in a worker thread with a symbolic step that never ends: the budget must still stop it."""
    import threading

    import sympy

    from energyarch.derivation import core

    core.SYMBOLIC_BUDGET["seconds"] = 1.0

    def endless(*args, **kwargs):
        x = sympy.Symbol("x")
        while True:
            sympy.expand((x + 1) ** 12)

    core.first_match = endless
    box = {}

    def work():
        start = time.perf_counter()
        box["step"] = ea.compile(Att(f="log(x)", K="exp(beta*s)", heads=2), d=24)
        box["s"] = time.perf_counter() - start

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(15)
    if worker.is_alive():
        return {"outcome": "HANG", "detail": "compile in a worker thread ran past 15 s with a 1 s budget"}
    dv = box["step"].derivations["attn"]
    return {
        "outcome": "accepted" if dv.path == "autodiff" else "SILENTLY WRONG",
        "detail": f"{dv.path} after {box['s']:.1f} s (budget 1 s of the thread's CPU time): {_short(dv.reason, 90)}",
    }


def official_probe(change: Callable[[dict], None]) -> Callable[[Path], dict]:
    def run(folder: Path) -> dict:
        from energyarch.models.official import official_config

        sd = {
            "tok_emb.weight": torch.zeros(10, 8),
            "pos_emb": torch.zeros(1, 9, 8),
            "blocks.0.attn.qkv.weight": torch.zeros(8, 8),
            "blocks.0.attn.ln1.weight": torch.ones(4),
            "blocks.0.mlp.weight": torch.zeros(32, 8),
            "blocks.0.ln2.weight": torch.ones(32),
            "time_mlp.0.1.weight": torch.zeros(8, 6),
            "ln_f.weight": torch.ones(8),
            "head.weight": torch.zeros(9, 8),
        }
        change(sd)
        cfg = official_config(sd, iters=2)
        return {"outcome": "accepted", "detail": f"layers={cfg.layers}"}

    return run


OFFICIAL_ATTACKS = [
    ("key naming block 10**9", lambda sd: sd.update({"blocks.1000000000.mlp.weight": torch.zeros(1)})),
    ("key naming block 999999", lambda sd: sd.update({"blocks.999999.mlp.weight": torch.zeros(1)})),
    ("a value that is a list", lambda sd: sd.update({"blocks.0.mlp.weight": [[0.0]]})),
    ("qkv weight of rank 1", lambda sd: sd.update({"blocks.0.attn.qkv.weight": torch.zeros(8)})),
    ("empty attention gain", lambda sd: sd.update({"blocks.0.attn.ln1.weight": torch.ones(0)})),
    ("gain that does not divide d", lambda sd: sd.update({"blocks.0.attn.ln1.weight": torch.ones(3)})),
    ("a non-string key", lambda sd: sd.update({3: torch.zeros(1)})),
    ("NaN weights", lambda sd: sd.update({"head.weight": torch.full((9, 8), math.nan)})),
]


def round3_probes() -> list[Probe]:
    probes = []
    for name, decl in CAUSAL:
        for later in ("aligned x1e3", "inf", "nan"):
            probes.append(Probe("round3", f"causal {name}: later tokens {later}", causal_probe(decl, later), "causal"))
    for rule in (
        "sqrt(p)*(1+sin(p)*cos(2*p)*sin(3*p)*cos(4*p)*sin(5*p)*cos(6*p)*sin(7*p)*cos(8*p)*sin(9*p)*cos(10*p)**2)",
        "sin(p+1)*cos(p+2)*sin(2*p+3)*cos(3*p+4)*sin(4*p+5)*cos(5*p+6)*sin(6*p+7)*cos(7*p+8)+sqrt(p)",
        "sqrt(p)*(sin(p)**2+cos(p)**2)*(sin(2*p)**2+cos(2*p)**2)*(sin(3*p)**2+cos(3*p)**2)",
        "(-p)**0.5",
        "1/(p-1)",
    ):
        probes.append(
            Probe("round3", f"catalog radius rule {rule[:60]}{'…' if len(rule) > 60 else ''}", catalog_rule_probe(rule))
        )
    probes.append(
        Probe("round3", "ea.compile in a worker thread, endless symbolic step", budget_thread_probe, "accept")
    )
    for label, change in OFFICIAL_ATTACKS:
        probes.append(Probe("round3", f"official state_dict: {label}", official_probe(change), "rejected"))
    for label, prepare, template, expect, words, forbidden in RUN_ATTACKS:
        probes.append(Probe("round3", label, run_attack(prepare, template, words, forbidden), expect))
    return probes


# ------------------------------------------------------------------------------------------------------------------
# the campaign and its tables
# ------------------------------------------------------------------------------------------------------------------

CATEGORIES = {
    "energies": energy_probes,
    "malformed": malformed_probes,
    "attacks": attack_probes,
    "round3": round3_probes,
}


def warm_up() -> None:
    """Pay the lazy imports (torch.func, sympy printing, safetensors) once in the parent, before any fork, so each
    child's time is the probe's own."""
    step = ea.compile(Att(f="log(x)", K=_sym_kernel, heads=2) + FF(g="x", h="gelu(x)"), d=8, dtype=torch.float64)
    ea.verify(step)
    ea.verify(ea.compile(Att(f="log(x)", K="exp(-r)", heads=2), d=8, dtype=torch.float64))
    with tempfile.TemporaryDirectory() as tmp:
        save_checkpoint(tmp, torch.nn.Linear(3, 2))
        load_checkpoint(tmp, torch.nn.Linear(3, 2), restore_rng=True)


def run_campaign(probes: list[Probe], timeout: float, progress: bool = True) -> list[Result]:
    warm_up()
    if any(p.category == "round3" for p in probes):
        _template("digits"), _template("text")  # trained once, before any child forks
    results = []
    with tempfile.TemporaryDirectory(prefix="safety_probe_") as tmp:
        for i, probe in enumerate(probes):
            result = run_probe(probe, Path(tmp) / f"p{i:03d}", timeout)
            results.append(result)
            if progress:
                flag = "" if result.verdict == "ok" else "   <-- " + result.verdict
                print(
                    f"[{i + 1:3d}/{len(probes)}] {result.seconds:5.1f}s {probe.category:9s} "
                    f"{_short(probe.label, 70):70s} {result.outcome}{flag}",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def _group(outcome: str) -> str:
    return "inert" if outcome.startswith("inert") else outcome


def markdown(results: list[Result], command: str, total_seconds: float, timeout: float, load: str = "") -> str:
    cats = list(dict.fromkeys(r.probe.category for r in results))
    lines = [
        "# Safety probe (issues 8 and 16)",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, energyarch {ea.__version__} ({_revision()}); load average at start "
        f"{load or _loadavg()}.  ",
        f"{len(results)} inputs, each in a forked child with a {timeout:g} s wall-clock guard; total "
        f'{total_seconds:.0f} s. "verified" means ea.verify passed and an independent torch reference agreed '
        f"within a relative {RTOL:g} (gradient at the normalised point and energy).",
        "",
        "## Summary",
        "",
        "| category | inputs | outcome counts | defects | max seconds |",
        "|---|---|---|---|---|",
    ]
    for cat in cats:
        rs = [r for r in results if r.probe.category == cat]
        counts = Counter(_group(r.outcome) for r in rs)
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        defects = sum(r.verdict != "ok" for r in rs)
        lines.append(f"| {cat} | {len(rs)} | {_short(shown, 2000)} | {defects} | {max(r.seconds for r in rs):.1f} |")
    special = {k: sum(r.outcome.startswith(k) for r in results) for k in ("EXECUTED", "HANG", "SILENTLY WRONG", "RAW")}
    special["SAVED FILE CHANGED"] = sum("SAVED FILE CHANGED" in r.verdict for r in results)
    lines += [
        "",
        "Across all categories: "
        + ", ".join(f"{k} {v}" for k, v in special.items())
        + f"; defects of any kind (including an outcome other than the expected one): "
        f"{sum(r.verdict != 'ok' for r in results)}.",
        "",
    ]
    bad = [r for r in results if r.verdict != "ok"]
    if bad:
        lines += ["## Defects", "", "| category | input | outcome | verdict | detail |", "|---|---|---|---|---|"]
        lines += [
            f"| {r.probe.category} | {_short(r.probe.label, 90)} | {_short(r.outcome)} | {_short(r.verdict)} "
            f"| {_short(r.detail, 200)} |"
            for r in bad
        ]
        lines.append("")
    lines += [
        "## Every input",
        "",
        "| # | category | input | expected | outcome | verdict | seconds | detail |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(
            f"| {i} | {r.probe.category} | {_short(r.probe.label, 90)} | {r.probe.expect or 'any'} "
            f"| {_short(r.outcome)} | {_short(r.verdict, 60)} | {r.seconds:.2f} | {_short(r.detail, 200)} |"
        )
    return "\n".join(lines) + "\n"


def _revision() -> str:
    """The commit the probe ran on, and whether energyarch/ had uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "energyarch"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"commit {head or '?'}" + (" with uncommitted changes in energyarch/" if dirty else "")


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks" / "results" / "safety_probe.md"), help="markdown results file"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="wall-clock limit per input, seconds")
    parser.add_argument("--categories", nargs="+", choices=list(CATEGORIES), default=list(CATEGORIES))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    probes = [p for cat in args.categories for p in CATEGORIES[cat]()]
    load = _loadavg()
    start = time.perf_counter()
    results = run_campaign(probes, args.timeout)
    command = "python benchmarks/safety_probe.py" + (
        "" if argv is None and len(sys.argv) == 1 else " " + shlex.join(sys.argv[1:] if argv is None else argv)
    )
    text = markdown(results, command, time.perf_counter() - start, args.timeout, load)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
