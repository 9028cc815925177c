"""Emission: a :class:`~energyarch.derivation.Derivation` becomes readable PyTorch source, then a class.

The template is fixed here; the method bodies are the lowering of the matched pattern (``grad_lines``,
``energy_lines``) or of the family (generic energy, autodiff), each in its own file under
:mod:`energyarch.derivation`.

The source is real Python with names from the maths (``Z``, ``Phi``, ``G``, ``P``, ``U``, ``beta``); it
is written to a cache directory and imported from there, so tracebacks, ``inspect.getsource`` and
``module.source`` show exactly the lines that run. The text comes from our printer walking a sympy
tree that the restricted parser built; no user string is ever executed.

>>> from energyarch import Attention
>>> from energyarch.derivation import derive
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
from typing import Any, Callable, NoReturn, cast


from .derivation import PATTERNS, Derivation, Pattern, family_of
from .errors import CompileError

#: Fixed text of every emitted module. Everything that comes from a declaration (names, expressions, reasons)
#: enters the source only as a ``repr()`` string literal bound to a module constant (see :func:`emit_source`).
HEADER = """# Emitted by energyarch: do not edit; regenerate with energyarch.compile().
# The declaration and derivation this module comes from are the string constants below.
import math

import torch

from energyarch.runtime import TermUpdate, _logcosh, _step, bisoftmax_sdpa, pairwise_kernel, pairwise_kernel_grad
from energyarch.runtime import distance_softmax_dense, distance_softmax_sdpa, sq_distances
from energyarch.runtime import distance_row_logsumexp, row_logsumexp
from energyarch.runtime import CausalTermUpdate, causal_mask, causal_prefix_outer, causal_softmax_sdpa
from energyarch.runtime import GatedTermUpdate, cross_kernel, diag_kernel, sq_distances_qk
from energyarch.runtime import causal_apply, causal_gram, causal_sq_distances
from energyarch.blockwise import distance_couple, gram_couple, kernel_callable, kernel_on_distance, kernel_on_gram, pair_grad, pair_row_sum
from energyarch.runtime_qk import QKTermUpdate, qk_bisoftmax_sdpa, qk_softmax_sdpa

"""

#: name → module of everything an emitted module may import (the ``from`` lines of :data:`HEADER`); a module
#: imports only the names its code uses (:func:`module_header`)
_IMPORTABLE = {alias.name: node.module for node in ast.parse(HEADER).body if isinstance(node, ast.ImportFrom)
               and node.module is not None for alias in node.names}
_PREAMBLE = HEADER[:HEADER.index("from energyarch")]        # the comments, ``import math`` and ``import torch``


def module_header(body: str) -> str:
    """The header of one emitted module: the fixed preamble and the runtime names ``body`` uses, one ``from``
    line per module, in :data:`HEADER`'s order.

    >>> print(module_header("class A(TermUpdate): x = row_logsumexp"), end="")  # doctest: +ELLIPSIS
    # Emitted by energyarch...
    import math
    <BLANKLINE>
    import torch
    <BLANKLINE>
    from energyarch.runtime import TermUpdate, row_logsumexp
    <BLANKLINE>
    """
    by_module: dict[str, list[str]] = {}
    for name, module in _IMPORTABLE.items():
        if re.search(rf"(?<![\w.]){re.escape(name)}\b", body):
            by_module.setdefault(module, []).append(name)
    lines = [f"from {module} import {', '.join(names)}" for module, names in by_module.items()]
    return _PREAMBLE + "".join(line + "\n" for line in lines) + ("\n" if lines else "")


#: Names an emitted module may read besides its own locals and arguments (when it imports them).
_GLOBALS = {"math", "torch", "self", "TermUpdate", "_logcosh", "_step", "bisoftmax_sdpa", "pairwise_kernel",
            "pairwise_kernel_grad", "distance_softmax_dense", "distance_softmax_sdpa", "sq_distances", "abs", "float",
            "row_logsumexp", "distance_row_logsumexp",
            "CausalTermUpdate", "causal_mask", "causal_prefix_outer", "causal_softmax_sdpa", "cross_kernel",
            "diag_kernel", "sq_distances_qk", "causal_apply", "causal_gram", "causal_sq_distances",
            # blockwise evaluation above sdpa_threshold (energyarch.blockwise)
            "distance_couple", "gram_couple", "kernel_callable", "kernel_on_distance", "kernel_on_gram", "pair_grad",
            "pair_row_sum",
            # bidirectional attention with an interaction (energyarch.runtime_qk)
            "QKTermUpdate", "qk_bisoftmax_sdpa", "qk_softmax_sdpa"}
_CONSTANT_NAMES = ("TERM", "FAMILY", "ENERGY", "PATTERN", "PATH", "REASON", "TYING")
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
    def bad(node, why) -> NoReturn:
        line = getattr(node, "lineno", "?")
        raise CompileError(f"emitted source failed its structural check at line {line}: {why}; this is a bug in "
                           f"energyarch (please report it with the declaration); nothing was imported")

    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        bad(err, f"syntax error {err.msg}")
    fixed = ast.parse(_PREAMBLE).body
    if len(tree.body) < len(fixed) or ast.dump(ast.Module(tree.body[:len(fixed)], [])) != ast.dump(ast.Module(fixed, [])):
        bad(tree, "the import block differs from the template")
    imported, n_imports = set(), len(fixed)
    for node in tree.body[len(fixed):]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.names
                and all(a.asname is None and _IMPORTABLE.get(a.name) == node.module for a in node.names)):
            bad(node, "an import that the template does not make")
        imported |= {a.name for a in node.names}
        n_imports += 1
    rest = tree.body[n_imports:]
    for node in rest[:-1]:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id in _CONSTANT_NAMES and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
            bad(node, "a module-level statement other than a string constant")
    cls = rest[-1] if rest else None
    bases = [[ast.dump(ast.Name(name, ast.Load()))] for name in ("TermUpdate", "CausalTermUpdate", "GatedTermUpdate",
                                                                     "QKTermUpdate")]
    if not (isinstance(cls, ast.ClassDef) and [ast.dump(b) for b in cls.bases] in bases
            and not cls.keywords and not cls.decorator_list and cast(ast.Name, cls.bases[0]).id in imported):
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
            _check_method(node, bad, imported)
            continue
        bad(node, f"unexpected {type(node).__name__} in the class body")
    if methods != {"grad_Z", "energy_Z"}:
        bad(cls, "grad_Z and energy_Z must both be defined")


def _check_method(fn: ast.FunctionDef, bad: Callable[[ast.AST, str], NoReturn], imported: set) -> None:
    known = {n for n in _GLOBALS if n in imported or n not in _IMPORTABLE} | {a.arg for a in fn.args.args}
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


_ALIAS = re.compile(r"(Phi\w*) = ([A-Z])")


def _without_aliases(lines: list[str]) -> list[str]:
    """Drop ``Phi = Z`` (an identity feature map binds a second name to the same tensor) and write ``Z`` where
    ``Phi`` was used, unless the name is assigned again later; drop brackets around a lone name (``-(Sigma).sum``).

    >>> _without_aliases(["Phi = Z", "P = Phi @ Phi.transpose(-1, -2)", "return dPhi * P"])
    ['P = Z @ Z.transpose(-1, -2)', 'return dPhi * P']
    """
    out: list[str] = []
    rename: dict[str, str] = {}
    for i, line in enumerate(lines):
        alias = _ALIAS.fullmatch(line.strip())
        if alias and not any(re.match(rf"\s*{alias.group(1)}\s*=[^=]", later) for later in lines[i + 1:]):
            rename[alias.group(1)] = alias.group(2)
            continue
        for old, new in rename.items():
            line = re.sub(rf"\b{old}\b", new, line)
        code, hash_, comment = line.partition("#")
        out.append(_LONE_NAME.sub(r"\1", code) + hash_ + comment)
    return out


#: ``(Sigma)`` outside a call: brackets around a single name, which the templates leave when a piece is a name
_LONE_NAME = re.compile(r"(?<![\w\])\]])\(([A-Za-z_]\w*)\)")


_ACRONYMS = {"qk": "QK", "ff": "FF"}


def _class_name(dv: Derivation) -> str:
    """``ReLUFFUpdate``, ``QKBiSoftmaxUpdate``; a term not named ``attn`` / ``ff`` leads: ``GateGatedFFUpdate``.

    >>> from energyarch import FeedForward
    >>> from energyarch.derivation import derive
    >>> _class_name(derive(FeedForward(g="x", h="relu(x)**2/2"), 8)), _class_name(derive(FeedForward(
    ...     g="x", h="relu(x)**2/2", name="mlp_2"), 8))
    ('ReLUFFUpdate', 'Mlp2ReLUFFUpdate')
    """
    def camel(text: str) -> str:
        words = [w for w in re.split(r"[^A-Za-z0-9]+", text) if w]
        return "".join(_ACRONYMS.get(w, w[:1].upper() + w[1:]) for w in words)
    lead = "" if dv.term.name in ("attn", "ff") else camel(dv.term.name.replace("_", " "))
    name = f"{lead}{camel(dv.pattern)}Update"
    return name if name.isidentifier() and name.isascii() else f"Term{name}"


# ---------------------------------------------------------------------------------------------

def emit_source(dv: Derivation) -> str:
    """The Python source of the update module for ``dv``."""
    t = dv.term
    family = family_of(t)
    sig = family.signature(dv)
    pattern = PATTERNS.get(dv.pattern)
    grad = _without_aliases(family.autodiff_lines(dv) if dv.path == "autodiff"
                            else cast(Pattern, pattern).grad_lines(dv))    # a symbolic path has its pattern
    energy = _without_aliases((cast(Pattern, pattern).energy_lines(dv) if dv.path != "autodiff" else None)
                              or family.energy_lines(dv))
    prelude = ["beta = self.beta"] if any("beta" in ln for ln in grad + energy) else []
    doc = "    " + repr(f"{dv.pattern} update for term {t.name!r}: {sig['rule']}. See REASON.") + "\n"
    constants = {"TERM": t.name, "FAMILY": t.family, "ENERGY": family.energy_text(dv), "PATTERN": dv.pattern,
                 "PATH": dv.path, "REASON": dv.reason}
    interaction: Any = getattr(t, "interaction", None)
    tying = getattr(interaction, "tying", "")
    if tying:
        constants["TYING"] = f"{interaction.kind}: {tying}"
    lines = ["\n".join(f"{key} = {str(value)!r}" for key, value in constants.items()),
             "",
             f"class {_class_name(dv)}({sig['base']}):",
             doc,
             f"    term_name = {t.name!r}",
             f"    pattern = {dv.pattern!r}",
             f"    path = {dv.path!r}",
             f"    beta = {dv.dims.beta!r}",
             *([f"    tying = {constants['TYING']!r}"] if tying else []),
             "",
             f"    def grad_Z(self, {sig['args']}):",
             f"        {sig['grad_doc'] + ' at the constrained coordinates ' + sig['args'] + ' ' + sig['shape']!r}",
             *("        " + ln for ln in prelude + grad),
             "",
             f"    def energy_Z(self, {sig['args']}):",
             f"        {sig['energy_doc']!r}",
             *("        " + ln for ln in prelude + energy),
             ""]
    body = "\n".join(lines)
    return module_header(body) + body


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
    assert spec is not None and spec.loader is not None, path  # a .py file always has a spec and a loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)  # our generated file, not user text
    cls = getattr(module, class_name)
    _LOADED[digest] = cls
    return cls


def emit(dv: Derivation) -> type:
    """Emit, check, load and return the update class for ``dv`` (a :class:`~energyarch.runtime.TermUpdate`)."""
    return load_class(emit_source(dv), _class_name(dv))
