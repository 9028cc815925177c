"""Emission: a :class:`~energyarch.derive.Derivation` becomes readable PyTorch source, then a class.

The source is real Python with names from the maths (``Z``, ``Phi``, ``G``, ``P``, ``U``, ``beta``); it
is written to a cache directory and imported from there, so tracebacks, ``inspect.getsource`` and
``module.source`` show exactly the lines that run. The text comes from our printer walking a sympy
tree that the restricted parser built; no user string is ever executed.

>>> from energyarch import Attention
>>> from energyarch.derive import derive
>>> print(emit_source(derive(Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=2), 8)))  # doctest: +ELLIPSIS
# Emitted by energyarch...
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Optional

import sympy as sp

from .derive import BETA, Derivation
from .energy import Attention
from .errors import CompileError
from .expr import to_torch
from .primitives import R, S, X

#: Fixed text of every emitted module. Everything that comes from a declaration (names, expressions, reasons)
#: enters the source only as a ``repr()`` string literal bound to a module constant (see :func:`emit_source`).
HEADER = """# Emitted by energyarch: do not edit; regenerate with energyarch.compile().
# The declaration and derivation this module comes from are the string constants below.
import math

import torch

from energyarch.runtime import TermUpdate, _logcosh, _step, bisoftmax_sdpa, pairwise_kernel, pairwise_kernel_grad
from energyarch.runtime import distance_softmax_dense, distance_softmax_sdpa, sq_distances

"""

#: Names an emitted module may read besides its own locals and arguments.
_GLOBALS = {"math", "torch", "self", "TermUpdate", "_logcosh", "_step", "bisoftmax_sdpa", "pairwise_kernel",
            "pairwise_kernel_grad", "distance_softmax_dense", "distance_softmax_sdpa", "sq_distances", "abs", "float"}
_CONSTANT_NAMES = ("TERM", "FAMILY", "ENERGY", "PATTERN", "PATH", "REASON")
_EXPR_NODES = (ast.BinOp, ast.UnaryOp, ast.Call, ast.Attribute, ast.Name, ast.Constant, ast.Compare, ast.Lambda,
               ast.keyword, ast.Tuple, ast.arguments, ast.arg, ast.operator, ast.unaryop, ast.cmpop,
               ast.expr_context, ast.Subscript, ast.Slice)
_STMT_NODES = (ast.Assign, ast.Return, ast.If, ast.Expr)


def check_source(source: str) -> None:
    """Structural check of an emitted module before it is imported (defence in depth).

    The module must be exactly: the fixed imports, assignments of string constants, and one class derived
    from ``TermUpdate`` whose body holds a docstring, constant class attributes and the methods ``grad_Z``
    and ``energy_Z``; inside the methods only assignments, ``if``, ``return`` and expressions over names the
    template defines. Anything else (an import, a ``for``, a dunder attribute, an unknown global) is a
    :class:`~energyarch.errors.CompileError` and the module is not imported.
    """
    def bad(node, why):
        line = getattr(node, "lineno", "?")
        raise CompileError(f"emitted source failed its structural check at line {line}: {why}; this is a bug in "
                           f"energyarch (please report it with the declaration); nothing was imported")

    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        bad(err, f"syntax error {err.msg}")
    fixed = ast.parse(HEADER).body
    if len(tree.body) < len(fixed) or ast.dump(ast.Module(tree.body[:len(fixed)], [])) != ast.dump(ast.Module(fixed, [])):
        bad(tree, "the import block differs from the template")
    rest = tree.body[len(fixed):]
    for node in rest[:-1]:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in _CONSTANT_NAMES and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            bad(node, "a module-level statement other than a string constant")
    cls = rest[-1] if rest else None
    if not (isinstance(cls, ast.ClassDef) and [ast.dump(b) for b in cls.bases] == [ast.dump(ast.Name("TermUpdate", ast.Load()))]
            and not cls.keywords and not cls.decorator_list):
        bad(cls or tree, "the last statement is not the TermUpdate subclass")
    methods = set()
    for i, node in enumerate(cls.body):
        if isinstance(node, ast.Expr) and i == 0 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and isinstance(node.value, ast.Constant) and not node.targets[0].id.startswith("_"):
            continue
        if isinstance(node, ast.FunctionDef) and node.name in ("grad_Z", "energy_Z") and not node.decorator_list \
                and node.name not in methods:
            methods.add(node.name)
            _check_method(node, bad)
            continue
        bad(node, f"unexpected {type(node).__name__} in the class body")
    if methods != {"grad_Z", "energy_Z"}:
        bad(cls, "grad_Z and energy_Z must both be defined")


def _check_method(fn: ast.FunctionDef, bad) -> None:
    known = set(_GLOBALS) | {a.arg for a in fn.args.args}
    if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.defaults or fn.returns:
        bad(fn, "unexpected method signature")

    def expr(node, local):
        for sub in ast.walk(node):
            if isinstance(sub, ast.Lambda):
                local = local | {a.arg for a in sub.args.args}
        for sub in ast.walk(node):
            if not isinstance(sub, _EXPR_NODES):
                bad(sub, f"{type(sub).__name__} is not allowed in an expression")
            if isinstance(sub, ast.Attribute) and sub.attr.startswith("__"):
                bad(sub, f"dunder attribute {sub.attr!r}")
            if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Load) and sub.id not in local:
                bad(sub, f"unknown name {sub.id!r}")
            if isinstance(sub, ast.Constant) and not isinstance(sub.value, (int, float, str, type(None), type(Ellipsis))):
                bad(sub, "a constant of an unexpected type")

    def block(stmts, local):
        for i, st in enumerate(stmts):
            if not isinstance(st, _STMT_NODES):
                bad(st, f"{type(st).__name__} statement")
            if isinstance(st, ast.Expr):
                if not (i == 0 and isinstance(st.value, ast.Constant) and isinstance(st.value.value, str)):
                    bad(st, "a bare expression statement")
            elif isinstance(st, ast.Assign):
                expr(st.value, local)
                for target in st.targets:
                    names = target.elts if isinstance(target, ast.Tuple) else [target]
                    for name in names:
                        if not isinstance(name, ast.Name) or name.id in _GLOBALS:
                            bad(st, "assignment to something other than a new local name")
                        local = local | {name.id}
            elif isinstance(st, ast.Return):
                expr(st.value, local)
            else:  # If
                expr(st.test, local)
                left, right = block(st.body, local), block(st.orelse, local)
                local = local | (left & right)
        return local

    block(fn.body, known)


def _code(expr: sp.Expr, var_from: Optional[sp.Symbol] = None, var_to: str = "", tensors=()) -> str:
    if var_from is not None:
        expr = expr.xreplace({var_from: sp.Symbol(var_to, real=True)})
    expr = expr.xreplace({BETA: sp.Symbol("beta", real=True)})
    return to_torch(expr, tensor_symbols=set(tensors) | ({var_to} if var_to else set()))


def _scaled(coef: sp.Expr, code: str) -> str:
    coef = sp.simplify(coef)
    if " + " in code or " - " in code:
        code = f"({code})"
    if coef == 1:
        return code
    if coef == -1:
        return f"-{code}"
    return f"{_code(coef)} * {code}"


def _class_name(dv: Derivation) -> str:
    words = re.split(r"[^A-Za-z0-9]+", f"{dv.term.name} {dv.pattern} update")
    return "".join(w[:1].upper() + w[1:] for w in words if w)


def _energy_text(dv: Derivation) -> str:
    t = dv.term
    if isinstance(t, Attention):
        k = t.K.name if t.K.kind == "callable" else str(t.K.expr)
        phi = f", Phi(x) = {t.K.phi.name}" if t.K.phi is not None else ""
        return f"E = sum_h sum_i f(sum_j K(z_i, z_j)), f(x) = {t.f.name}, K = {k}{phi}, heads = {t.heads}"
    return f"E = -sum_i g(sum_m h(d_m . x_i)), g(x) = {t.g.name}, h(x) = {t.h.name}"


# ---------------------------------------------------------------------------------------------
# energy_Z bodies
# ---------------------------------------------------------------------------------------------

def _attention_energy(dv: Derivation) -> list[str]:
    t = dv.term
    if dv.pattern == "bi-softmax":
        a, b, c = dv.constants["a"], dv.constants["b"], dv.constants["c"]
        logc = sp.simplify(sp.expand_log(sp.log(c), force=True))
        shift = "" if logc == 0 else (f" - {_code(-logc)}" if logc.could_extract_minus_sign() else f" + {_code(logc)}")
        return [
            *_phi_lines(dv, with_derivative=False),
            "G = Phi @ Phi.transpose(-1, -2)                     # (B, H, N, N)",
            f"log_S = torch.logsumexp({_scaled(b, 'G')}, dim=-1){shift}   # log Σ_j K, stable",
            f"return {_scaled(a, 'log_S')}.sum(dim=(-1, -2))",
        ]
    if dv.pattern == "distance softmax":
        a, b, c = dv.constants["a"], dv.constants["b"], dv.constants["c"]
        logc = sp.simplify(sp.expand_log(sp.log(c), force=True))
        shift = "" if logc == 0 else (f" - {_code(-logc)}" if logc.could_extract_minus_sign() else f" + {_code(logc)}")
        return [
            "r = sq_distances(Z)                                 # (B, H, N, N): ‖z_i − z_j‖², as declared",
            f"log_S = torch.logsumexp({_scaled(b, 'r')}, dim=-1){shift}   # log Σ_j K, stable",
            f"return {_scaled(a, 'log_S')}.sum(dim=(-1, -2))",
        ]
    f_code = "self.f(S)" if not t.f.symbolic else _code(dv.pieces["f"], X, "S")
    if t.K.kind == "distance":
        lines = ["r = sq_distances(Z)                                 # (B, H, N, N): ‖z_i − z_j‖², as declared",
                 f"S = ({_code(dv.pieces['rho'], R, 'r')}).sum(dim=-1)   # (B, H, N): Σ_j K"]
    elif t.K.kind == "callable":
        lines = ["S = pairwise_kernel(self.kernel, Z).sum(dim=-1)     # (B, H, N): Σ_j K(z_i, z_j)"]
    else:
        lines = [*_phi_lines(dv, with_derivative=False),
                 "G = Phi @ Phi.transpose(-1, -2)                     # (B, H, N, N)",
                 f"S = ({_code(dv.pieces['kappa'], S, 'G')}).sum(dim=-1)   # (B, H, N): Σ_j K"]
    lines.append(f"return ({f_code}).sum(dim=(-1, -2))")
    return lines


def _phi_lines(dv: Derivation, with_derivative: bool) -> list[str]:
    t = dv.term
    if not isinstance(t, Attention) or t.K.phi is None:
        return ["Phi = Z"]
    if not t.K.phi.symbolic or "phi" not in dv.pieces:
        lines = ["Phi = self.phi(Z)"]
        if with_derivative:
            lines.append("dPhi = torch.func.vmap(torch.func.grad(self.phi))(Z.reshape(-1)).reshape(Z.shape)")
        return lines
    lines = [f"Phi = {_code(dv.pieces['phi'], X, 'Z')}                       # feature map, elementwise"]
    if with_derivative:
        lines.append(f"dPhi = {_code(dv.pieces['dphi'], X, 'Z')}")
    return lines


def _ff_energy(dv: Derivation) -> list[str]:
    t = dv.term
    if dv.pattern == "softmax FF":
        a, b = dv.constants["a"], dv.constants["b"]
        c = sp.simplify(dv.pieces["h"] / sp.exp(b * X))
        logc = sp.simplify(sp.expand_log(sp.log(c), force=True))
        shift = "" if logc == 0 else (f" - {_code(-logc)}" if logc.could_extract_minus_sign() else f" + {_code(logc)}")
        return [f"log_Sigma = torch.logsumexp({_scaled(b, 'U')}, dim=-1){shift}   # log Σ_m h(u_m), stable",
                f"return -({_scaled(a, 'log_Sigma')}).sum(dim=(-1, -2))"]
    h = "self.h(U)" if not t.h.symbolic else _code(dv.pieces["h"], X, "U")
    g = "self.g(Sigma)" if not t.g.symbolic else _code(dv.pieces["g"], X, "Sigma")
    return [f"Sigma = ({h}).sum(dim=-1)                  # (B, 1, N): Σ_m h(u_m)",
            f"return -({g}).sum(dim=(-1, -2))"]


# ---------------------------------------------------------------------------------------------
# grad_Z bodies
# ---------------------------------------------------------------------------------------------

def _attention_grad(dv: Derivation) -> list[str]:
    p, c = dv.pattern, dv.constants
    has_phi = dv.term.K.phi is not None
    out = (lambda body: f"return dPhi * ({body})") if has_phi else (lambda body: f"return {body}")
    if p == "bi-softmax":
        b = _code(c["b"])
        return [
            *_phi_lines(dv, with_derivative=True),
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: never form N×N",
            f"    PPt_Phi = bisoftmax_sdpa(Phi, {b})",
            "else:",
            f"    P = torch.softmax({_scaled(c['b'], 'Phi @ Phi.transpose(-1, -2)')}, dim=-1)  # (B, H, N, N) row-softmax",
            "    PPt_Phi = (P + P.transpose(-1, -2)) @ Phi      # (P + Pᵀ) Φ",
            out(_scaled(c["a"] * c["b"], "PPt_Phi")),
        ]
    if p == "linear attention":
        a, c1, c2 = c["a"], c["c1"], c["c2"]
        terms = []
        if sp.simplify(c2) != 0:
            terms.append(_scaled(4 * a * c2, "Phi @ (Phi.transpose(-1, -2) @ Phi)"))
        if sp.simplify(c1) != 0:
            terms.append(_scaled(2 * a * c1, "Phi.sum(dim=-2, keepdim=True)"))
        body = " + ".join(terms) or "torch.zeros_like(Phi)"
        return [*_phi_lines(dv, with_derivative=True), "# C Φ by associativity: O(N p²), no N×N matrix", out(body)]
    if p == "kernel attention":
        C = 2 * c["a"] * dv.pieces["dkappa"]
        return [*_phi_lines(dv, with_derivative=True),
                "G = Phi @ Phi.transpose(-1, -2)                     # (B, H, N, N) Gram matrix",
                f"C = {_code(sp.simplify(C), S, 'G')}   # coupling 2a κ'(G)",
                out("C @ Phi")]
    if p == "inner-product kernel":
        return [*_phi_lines(dv, with_derivative=True),
                "G = Phi @ Phi.transpose(-1, -2)                     # (B, H, N, N) Gram matrix",
                f"S = ({_code(dv.pieces['kappa'], S, 'G')}).sum(dim=-1)   # (B, H, N) Σ_j K",
                f"df_S = {_code(dv.pieces['df'], X, 'S')}",
                f"C = (df_S.unsqueeze(-1) + df_S.unsqueeze(-2)) * ({_code(dv.pieces['dkappa'], S, 'G')})",
                out("C @ Phi")]
    if p == "distance softmax":
        a, b = c["a"], c["b"]
        return [
            "if Z.shape[-2] > self.sdpa_threshold:             # long sequences: never form N×N",
            f"    PPt_Z, col = distance_softmax_sdpa(Z, {_code(b)})",
            "else:",
            f"    PPt_Z, col = distance_softmax_dense(Z, {_code(b)})   # (P + Pᵀ) Z and Pᵀ1, P = softmax(b r)",
            f"return {_scaled(2 * a * b, '((1 + col) * Z - PPt_Z)')}",
        ]
    if p == "distance kernel":
        drho = _code(dv.pieces["drho"], R, "r")
        if X not in dv.pieces["df"].free_symbols:   # f linear: f'(S) is the constant a
            coupling = [f"C = {_scaled(2 * dv.pieces['df'], '(' + drho + ')')}   # 2a ρ'(r)"]
        else:
            coupling = [f"S = ({_code(dv.pieces['rho'], R, 'r')}).sum(dim=-1)   # (B, H, N): Σ_j K",
                        f"df_S = {_code(dv.pieces['df'], X, 'S')}",
                        f"C = (df_S.unsqueeze(-1) + df_S.unsqueeze(-2)) * ({drho})   # [f'(S_k) + f'(S_j)] ρ'(r)"]
        return ["r = sq_distances(Z)                                 # (B, H, N, N): ‖z_k − z_j‖²",
                *coupling,
                "return 2 * (C.sum(dim=-1, keepdim=True) * Z - C @ Z)   # 2 (diag(C1) Z − C Z)"]
    if p == "pairwise kernel":
        return ["K = pairwise_kernel(self.kernel, Z)                 # (B, H, N, N)",
                "dK = pairwise_kernel_grad(self.kernel, Z)           # (B, H, N, N, p): ∂₁K(z_k, z_j)",
                "S = K.sum(dim=-1)                                   # (B, H, N)",
                f"df_S = {_code(dv.pieces['df'], X, 'S')}",
                "C = df_S.unsqueeze(-1) + df_S.unsqueeze(-2)         # f'(S_k) + f'(S_j)",
                "return (C.unsqueeze(-1) * dK).sum(dim=-2)"]
    raise AssertionError(p)


def _ff_grad(dv: Derivation) -> list[str]:
    p, c, pieces = dv.pattern, dv.constants, dv.pieces
    if p == "ReLU FF":
        return [f"return {_scaled(-c['a'] * c['c'], 'torch.relu(U)')}"]
    if p == "softmax FF":
        softmax = "torch.softmax(" + _scaled(c["b"], "U") + ", dim=-1)"
        return [f"return {_scaled(-c['a'] * c['b'], softmax)}"]
    dh = _code(pieces["dh"], X, "U")
    if p == "elementwise FF":
        return [f"return {_scaled(-c['a'], '(' + dh + ')')}"]
    if p == "gated FF":
        return [f"Sigma = ({_code(pieces['h'], X, 'U')}).sum(dim=-1, keepdim=True)   # Σ_m h(u_m)",
                f"return {_scaled(-c['a'], 'Sigma * (' + dh + ')')}"]
    return [f"Sigma = ({_code(pieces['h'], X, 'U')}).sum(dim=-1, keepdim=True)   # Σ_m h(u_m)",
            f"return -({_code(pieces['dg'], X, 'Sigma')}) * ({dh})"]


# ---------------------------------------------------------------------------------------------

def emit_source(dv: Derivation) -> str:
    """The Python source of the update module for ``dv``."""
    t = dv.term
    attn = isinstance(t, Attention)
    var = "Z" if attn else "U"
    shape = "(B, H, N, p)" if attn else "(B, 1, N, M)"
    if dv.path == "autodiff":
        grad = ["# generic path: differentiate the term's energy with torch.func.grad",
                f"return torch.func.grad(lambda {var}_: self.energy_Z({var}_).sum())({var})"]
    else:
        grad = _attention_grad(dv) if attn else _ff_grad(dv)
    energy = _attention_energy(dv) if attn else _ff_energy(dv)
    prelude = ["beta = self.beta"] if any("beta" in ln for ln in grad + energy) else []
    sign = "∇_Z E" if attn else "∇_U E (E_FF = −Σ g(Σ h) carries the minus sign of Eq. 20)"
    rule = "X ← X − step ⊙ Σ_h (∇_Z E)(Z_h) W_hᵀ" if attn else "X ← X − step ⊙ (∇_U E)(U) Dᵀ"
    doc = "    " + repr(f"{dv.pattern} update for term {t.name!r}: {rule}. See REASON.") + "\n"
    constants = {"TERM": t.name, "FAMILY": t.family, "ENERGY": _energy_text(dv), "PATTERN": dv.pattern,
                 "PATH": dv.path, "REASON": dv.reason}
    lines = [HEADER + "\n".join(f"{key} = {str(value)!r}" for key, value in constants.items()),
             "",
             f"class {_class_name(dv)}(TermUpdate):",
             doc,
             f"    term_name = {t.name!r}",
             f"    pattern = {dv.pattern!r}",
             f"    path = {dv.path!r}",
             f"    beta = {dv.dims.beta!r}",
             "",
             f"    def grad_Z(self, {var}):",
             f'        """{sign} at the constrained coordinates {var} {shape}."""',
             *("        " + ln for ln in prelude + grad),
             "",
             f"    def energy_Z(self, {var}):",
             f'        """Energy of the term at {var} {shape}; shape (B,)."""',
             *("        " + ln for ln in prelude + energy),
             ""]
    return "\n".join(lines)


def _cache_dir() -> Path:
    root = os.environ.get("ENERGYARCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "energyarch")
    path = Path(root) / "emitted"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
        return path
    except OSError:
        path = Path(tempfile.gettempdir()) / "energyarch-emitted"
        path.mkdir(parents=True, exist_ok=True)
        return path


_LOADED: dict[str, type] = {}


def load_class(source: str, class_name: str) -> type:
    """Write ``source`` to the cache (content-addressed) and import ``class_name`` from it."""
    check_source(source)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    if digest in _LOADED:
        return _LOADED[digest]
    path = _cache_dir() / f"emitted_{digest}.py"
    if not path.exists() or path.read_text() != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    module_name = f"energyarch_emitted_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)  # our generated file, not user text
    cls = getattr(module, class_name)
    _LOADED[digest] = cls
    return cls


def emit(dv: Derivation) -> type:
    """Emit, check, load and return the update class for ``dv`` (a :class:`~energyarch.runtime.TermUpdate`)."""
    return load_class(emit_source(dv), _class_name(dv))
