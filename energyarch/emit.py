"""Emission: a :class:`~energyarch.derivation.Derivation` becomes readable PyTorch source, then a class.

The template is fixed here; the method bodies are the lowering of the matched pattern (``grad_lines``,
``energy_lines``) or of the family (generic energy, autodiff), each in its own file under
:mod:`energyarch.derivation`. What a module subclasses and may import comes from its family's registry entry
(:attr:`~energyarch.derivation.Family.runtime_base`, :attr:`~energyarch.derivation.Family.runtime_names`).

The source is real Python with names from the maths (``Z``, ``Phi``, ``G``, ``P``, ``U``, ``beta``); it
is written to a cache directory and imported from there, so tracebacks, ``inspect.getsource`` and
``module.source`` show exactly the lines that run. The text comes from our printer walking a sympy
tree that the restricted parser built; no user string is ever executed: names and expressions reach the source
as ``repr()`` string constants or inside docstrings whose literals are checked to read back as their text.

>>> from energyarch import Attention
>>> from energyarch.derivation import derive
>>> print(emit_source(derive(Attention(f="x/(2*beta)", K="sigmoid(beta*s)", heads=2), 8)))  # doctest: +ELLIPSIS
\"\"\"kernel attention update of term 'attn' (attention family, symbolic path).
...
class KernelAttentionUpdate(TermUpdate):
...
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import io
import os
import re
import sys
import tempfile
import textwrap
import tokenize
from pathlib import Path
from typing import Callable, NoReturn, Optional

from .derivation import FAMILIES, PATTERNS, Derivation, Family, family_of
from .derivation.core import TEMPLATE_NAMES, runtime_imports
from .errors import CompileError
from .runtime import TermUpdate

#: The plain imports an emitted module may start with (after its docstring), each where it is used. Everything else
#: it imports is a name its family's registry entry lists (:func:`module_header`); everything that comes from a
#: declaration (names, expressions, reasons) enters the source as a ``repr()`` string constant or inside a docstring
#: whose literal is checked to read back as exactly its text (:func:`docstring`).
MODULES = ("math", "torch")

#: the module-level string constants of the template
_CONSTANT_NAMES = ("TERM", "FAMILY", "ENERGY", "PATTERN", "PATH", "REASON", "TYING")
#: names every method may read besides its arguments, its locals and the runtime names the module imports
_TEMPLATE_GLOBALS = frozenset({"self", "abs", "float"})
assert TEMPLATE_NAMES >= set(_CONSTANT_NAMES) | _TEMPLATE_GLOBALS | set(MODULES)
_EXPR_NODES = (
    ast.BinOp,
    ast.UnaryOp,
    ast.Call,
    ast.Attribute,
    ast.Name,
    ast.Constant,
    ast.Compare,
    ast.Lambda,
    ast.keyword,
    ast.Tuple,
    ast.arguments,
    ast.arg,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.expr_context,
    ast.Subscript,
    ast.Slice,
)
_STMT_NODES = (ast.Assign, ast.Return, ast.If)


def _names_read(body: str) -> set[str]:
    """Every name the code ``body`` reads (its ``ast.Name`` nodes: words in strings and comments do not count)."""
    return {node.id for node in ast.walk(ast.parse(body)) if isinstance(node, ast.Name)}


def module_header(body: str, family: Family) -> str:
    """The imports of one emitted module, of what it reads: ``import math``, ``import torch`` (:data:`MODULES`)
    and, of what ``family`` may import (:func:`energyarch.derivation.core.runtime_imports`), the names ``body``
    reads, one ``from`` line per module; a blank line after each group.

    >>> print(module_header("class A(TermUpdate): x = torch.exp(row_logsumexp)", FAMILIES["attention"]), end="")
    import torch
    <BLANKLINE>
    from energyarch.runtime import TermUpdate, row_logsumexp
    <BLANKLINE>
    """
    used = _names_read(body)
    by_module: dict[str, list[str]] = {}
    for name, module in runtime_imports(family).items():
        if name in used:
            by_module.setdefault(module, []).append(name)
    groups = [[f"import {module}"] for module in MODULES if module in used]
    groups.append([f"from {module} import {', '.join(names)}" for module, names in by_module.items()])
    return "".join("".join(line + "\n" for line in group) + "\n" for group in groups if group)


# ---------------------------------------------------------------------------------------------
# docstrings
# ---------------------------------------------------------------------------------------------


def _escape_line(line: str) -> str:
    """One docstring line as literal text: backslashes doubled, a quote escaped where a quote follows it or the line
    ends (so that no three quotes meet and none meets the closing ones), and every character that is not printable
    (line breaks of any kind, NUL, bidirectional controls) written as its escape sequence."""
    out = []
    for i, ch in enumerate(line):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' and (i + 1 == len(line) or line[i + 1] == '"'):
            out.append('\\"')
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def docstring(text: str, indent: str, escape: Callable[[str], str] = _escape_line) -> str:
    r"""The triple-quoted docstring literal of ``text`` in a body indented by ``indent``.

    A one-line text stays on one line; a longer one keeps its first line beside the opening quotes, indents the
    others and puts the closing quotes on a line of their own. Only the text's own line feeds are real line breaks;
    whatever could end the literal or the line is escaped (``escape``, by default :func:`_escape_line`). The literal
    is then checked to be one string token whose value is the text exactly (indentation included); where it is
    not, the ``repr()`` literal of that value is used instead.

    >>> docstring("Summary.\n\nDetails.", "    ").splitlines()[1:3]
    ['', '    Details.']
    >>> text = "a backslash \\, three quotes " + '"' * 3 + ", a line separator \u2028, a last quote " + '"'
    >>> ast.literal_eval(docstring(text, "")) == text, "\u2028" in docstring(text, "")
    (True, False)
    """
    lines = text.split("\n")
    value = lines[0] + "".join("\n" + (indent + ln if ln else "") for ln in lines[1:])
    literal = escape(lines[0]) + "".join("\n" + (indent + escape(ln) if ln else "") for ln in lines[1:])
    if len(lines) > 1:
        value, literal = value + "\n" + indent, literal + "\n" + indent
    literal = '"""' + literal + '"""'
    return literal if reads_back(literal, value) else repr(value)


def reads_back(literal: str, value: str) -> bool:
    """``literal`` is a single string token whose value is ``value`` (the round-trip check of :func:`docstring`)."""
    try:
        tokens = [
            t
            for t in tokenize.generate_tokens(io.StringIO(literal).readline)
            if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)
        ]
        tree = ast.parse(literal, mode="eval")
    except (SyntaxError, tokenize.TokenError, ValueError):
        return False
    return (
        len(tokens) == 1
        and tokens[0].type == tokenize.STRING
        and isinstance(tree.body, ast.Constant)
        and type(tree.body.value) is str
        and tree.body.value == value
    )


def docstrings(dv: Derivation) -> dict[str, str]:
    """The texts of the emitted module's docstrings, by where they stand: ``module``, ``class``, ``grad_Z``,
    ``energy_Z`` (the term's name as its ``repr()``, the energy's description as the family writes it, wrapped)."""
    t, family = dv.term, family_of(dv.term)
    sig = family.signature(dv)
    return {
        "module": (
            f"{dv.pattern} update of term {t.name!r} ({family.name} family, {dv.path} path).\n\n"
            f"{textwrap.fill(family.energy_text(dv), 116, break_long_words=False, break_on_hyphens=False)}\n\n"
            "Emitted by energyarch: do not edit; regenerate with energyarch.compile().\n"
            "The declaration and the derivation this module comes from are the string constants below."
        ),
        "class": f"{dv.pattern} update for term {t.name!r} (why this pattern: REASON).\n\n{sig['rule']}.",
        "grad_Z": f"{sig['grad_doc']}.\n\n{sig['args']}: the constrained coordinates {sig['shape']}.",
        "energy_Z": sig["energy_doc"],
        "descent_Z": "−∇_Z E, the grad_Z expression without its leading minus (the step then needs no negation).",
    }


# ---------------------------------------------------------------------------------------------
# the structural check
# ---------------------------------------------------------------------------------------------


def _docstring_node(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and type(node.value.value) is str


def check_source(source: str, family: Optional[Family] = None) -> None:
    """Structural check of an emitted module before it is imported (defence in depth).

    The module must be exactly: a docstring, ``import math`` and ``import torch`` (each or neither), ``from`` imports
    of names that
    its family's registry entry lists from the modules it lists (:func:`~energyarch.derivation.core.runtime_imports`),
    assignments of string constants, and one class derived from the family's runtime base class whose body
    holds a docstring, constant class attributes and the methods ``grad_Z`` and ``energy_Z`` (and optionally
    ``descent_Z``); inside the methods a
    docstring, then only assignments, ``if``, ``return`` and expressions over the arguments, locals, imported names
    and the template's (``math``, ``torch``, ``self``, ``abs``, ``float``). Anything else (another import, a ``for``,
    a dunder attribute, an unknown global, a second expression statement) is a
    :class:`~energyarch.errors.CompileError` and the module is not imported. ``family`` defaults to the registered
    family that the module's ``FAMILY`` constant names.
    """

    def bad(node: object, why: str) -> NoReturn:
        line = getattr(node, "lineno", "?")
        raise CompileError(
            f"emitted source failed its structural check at line {line}: {why}; this is a bug in "
            f"energyarch (please report it with the declaration); nothing was imported"
        )

    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        bad(err, f"syntax error {err.msg}")
    body = tree.body
    if not (body and _docstring_node(body[0])):
        bad(tree, "the module does not start with its docstring")
    imported: set[str] = set()
    n_fixed = 1
    for module in MODULES:
        node = body[n_fixed] if n_fixed < len(body) else None
        if isinstance(node, ast.Import) and [(a.name, a.asname) for a in node.names] == [(module, None)]:
            imported.add(module)
            n_fixed += 1
    if family is None:
        named = [
            node.value.value
            for node in body
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "FAMILY"
            and isinstance(node.value, ast.Constant)
        ]
        if len(named) != 1 or named[0] not in FAMILIES:
            bad(tree, f"the FAMILY constant {named!r} names no registered family")
        family = FAMILIES[named[0]]
    allowed = runtime_imports(family)
    n_imports = n_fixed
    for node in body[n_fixed:]:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            break
        if not (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and node.names
            and all(a.asname is None and allowed.get(a.name) == node.module for a in node.names)
        ):
            bad(node, f"an import that family {family.name!r} does not list")
        imported |= {a.name for a in node.names}
        n_imports += 1
    rest = body[n_imports:]
    for node in rest[:-1]:
        if not (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in _CONSTANT_NAMES
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            bad(node, "a module-level statement other than a string constant")
    cls = rest[-1] if rest else None
    base = family.runtime_base[1]
    if not (
        isinstance(cls, ast.ClassDef)
        and [ast.dump(b) for b in cls.bases] == [ast.dump(ast.Name(base, ast.Load()))]
        and not cls.keywords
        and not cls.decorator_list
        and base in imported
    ):
        bad(cls or tree, f"the last statement is not the {base} subclass (family {family.name!r})")
    methods = set()
    for i, node in enumerate(cls.body):
        if i == 0 and _docstring_node(node):
            continue
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Constant)
            and not node.targets[0].id.startswith("_")
        ):
            continue
        if (
            isinstance(node, ast.FunctionDef)
            and node.name in ("grad_Z", "energy_Z", "descent_Z")
            and not node.decorator_list
            and node.name not in methods
        ):
            methods.add(node.name)
            _check_method(node, bad, imported, reserved=set(MODULES) | set(allowed))
            continue
        bad(node, f"unexpected {type(node).__name__} in the class body")
    if not {"grad_Z", "energy_Z"} <= methods:
        bad(cls, "grad_Z and energy_Z must both be defined")


def _check_method(
    fn: ast.FunctionDef, bad: Callable[[object, str], NoReturn], imported: set[str], reserved: set[str]
) -> None:
    """A method: a docstring, then assignments to new local names, ``if`` and ``return`` over known names."""
    known = set(_TEMPLATE_GLOBALS) | imported | {a.arg for a in fn.args.args}
    if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.defaults or fn.returns:
        bad(fn, "unexpected method signature")

    def expr(node: ast.AST, local: set[str]) -> None:
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
            if isinstance(sub, ast.Constant) and not isinstance(
                sub.value, (int, float, str, type(None), type(Ellipsis))
            ):
                bad(sub, "a constant of an unexpected type")

    def block(stmts: list[ast.stmt], local: set[str]) -> set[str]:
        for st in stmts:
            if not isinstance(st, _STMT_NODES):
                bad(st, f"{type(st).__name__} statement")
            if isinstance(st, ast.Assign):
                expr(st.value, local)
                for target in st.targets:
                    names = target.elts if isinstance(target, ast.Tuple) else [target]
                    for name in names:
                        if not isinstance(name, ast.Name) or name.id in reserved or name.id in _TEMPLATE_GLOBALS:
                            bad(st, "assignment to something other than a new local name")
                        local = local | {name.id}
            elif isinstance(st, ast.Return):
                if st.value is not None:
                    expr(st.value, local)
            else:  # If
                expr(st.test, local)
                left, right = block(st.body, local), block(st.orelse, local)
                local = local | (left & right)
        return local

    if not (fn.body and _docstring_node(fn.body[0])):
        bad(fn, "the method does not start with its docstring")
    block(fn.body[1:], known)


# ---------------------------------------------------------------------------------------------
# tidying the method bodies: no no-op aliases, no brackets that change nothing
# ---------------------------------------------------------------------------------------------


def _stores(tree: ast.AST, name: str) -> list[int]:
    """Line numbers where ``name`` is bound (assigned, or a lambda's argument)."""
    out = [
        n.lineno for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)
    ]
    return out + [n.lineno for n in ast.walk(tree) if isinstance(n, ast.arg) and n.arg == name]


def _loads_after(tree: ast.AST, names: set[str], line: int) -> bool:
    return any(
        isinstance(n, ast.Name) and n.id in names and isinstance(n.ctx, ast.Load) and n.lineno > line
        for n in ast.walk(tree)
    )


def _without_aliases(lines: list[str]) -> list[str]:
    """Drop the no-op lines of a method body: an alias ``A = B`` at its top level (an identity feature map's
    ``Phi = Z``, a role's ``G_q = PK``) when ``A`` is bound nowhere else and ``B`` not again after it, reading ``B``
    where ``A`` was read; then every top-level assignment whose names nothing reads afterwards (``P_self`` of a
    stopped self-term). What the method returns is computed by the same operations.

    >>> _without_aliases(["Phi = Z", "P = Phi @ Phi.transpose(-1, -2)", "unused = P + 1", "return dPhi * P"])
    ['P = Z @ Z.transpose(-1, -2)', 'return dPhi * P']
    """
    lines = list(lines)
    changed = True
    while changed:
        changed = False
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            return lines
        for st in tree.body:
            if not (isinstance(st, ast.Assign) and len(st.targets) == 1 and st.lineno == st.end_lineno):
                continue
            target = st.targets[0]
            names = {
                n.id for n in (target.elts if isinstance(target, ast.Tuple) else [target]) if isinstance(n, ast.Name)
            }
            if (
                isinstance(target, ast.Name)
                and isinstance(st.value, ast.Name)
                and _stores(tree, target.id) == [st.lineno]
                and not [n for n in _stores(tree, st.value.id) if n > st.lineno]
            ):
                alias, name = target.id, st.value.id
                reads = sorted(
                    (
                        (n.lineno, n.col_offset)
                        for n in ast.walk(tree)
                        if isinstance(n, ast.Name) and n.id == alias and isinstance(n.ctx, ast.Load)
                    ),
                    reverse=True,
                )
                for row, col in reads:
                    text = lines[row - 1]
                    lines[row - 1] = text[:col] + name + text[col + len(alias) :]
            elif names and not _loads_after(tree, names, st.lineno):
                pass
            else:
                continue
            del lines[st.lineno - 1]
            changed = True
            break
    return lines


_NOT_CALLS = {"return", "if", "elif", "else", "and", "or", "not", "in", "is", "lambda"}
_WHOLE_BEFORE = {"(", ",", "[", "=", "return"}
_WHOLE_AFTER = {")", ",", "]"}
_ATOMS = (ast.Name, ast.Attribute, ast.Call, ast.Subscript)


def _shape(text: str) -> Optional[str]:
    try:
        return ast.dump(ast.parse(text))
    except SyntaxError:
        return None


def _is_atom(code: str) -> bool:
    """``code`` is a name, an attribute, a call, a subscript or a non-negative number."""
    try:
        node = ast.parse(code.strip(), mode="eval").body
    except SyntaxError:
        return False
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and not isinstance(node.value, bool) and node.value >= 0
    return isinstance(node, _ATOMS)


def _tidy_brackets(lines: list[str]) -> list[str]:
    """Drop the brackets that the printer and the templates leave and that change nothing: around a name, a call, an
    attribute or a non-negative number (``(Sigma).sum``, ``(0.5)*x``, ``(torch.sigmoid(U)).sum``), and around a
    whole argument, element, right-hand side or return value (``f(Z, (-1/8))``, ``-((a - b))``). Each removal is
    kept only if the code's syntax tree is unchanged, so the code computes exactly what it did, bit for bit.

    >>> _tidy_brackets(["S = (torch.sigmoid(U)).sum(dim=-1)   # (B, 1, N)", "return -(((1 + c) * Z - (0.5)*P))"])
    ['S = torch.sigmoid(U).sum(dim=-1)   # (B, 1, N)', 'return -((1 + c) * Z - 0.5*P)']
    """
    text = "\n".join(lines)
    reference = _shape(text)
    if reference is None:
        return lines
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    tokens = [
        t
        for t in tokenize.generate_tokens(io.StringIO(text).readline)
        if t.type not in (tokenize.NL, tokenize.INDENT, tokenize.DEDENT)
    ]
    candidates, stack = [], []
    for i, tok in enumerate(tokens):
        if tok.string == "(" and tok.type == tokenize.OP:
            prev = tokens[i - 1] if i else None
            call = prev is not None and (
                prev.string in (")", "]")
                or prev.type == tokenize.STRING
                or (prev.type == tokenize.NAME and prev.string not in _NOT_CALLS)
            )
            stack.append((i, call))
        elif tok.string == ")" and tok.type == tokenize.OP and stack:
            j, call = stack.pop()
            if call:
                continue
            open_, close = tokens[j], tok
            before = tokens[j - 1].string if j else ""
            after = tokens[i + 1] if i + 1 < len(tokens) else None
            whole = before in _WHOLE_BEFORE and (
                after is None
                or after.string in _WHOLE_AFTER
                or after.type in (tokenize.NEWLINE, tokenize.COMMENT, tokenize.ENDMARKER)
            )
            o = starts[open_.start[0] - 1] + open_.start[1]
            c = starts[close.start[0] - 1] + close.start[1]
            if whole or _is_atom(text[o + 1 : c]):
                candidates.append((o, c))
    removed: set[int] = set()
    for o, c in sorted(candidates, reverse=True):
        trial = removed | {o, c}
        if _shape("".join(ch for k, ch in enumerate(text) if k not in trial)) == reference:
            removed = trial
    return "".join(ch for k, ch in enumerate(text) if k not in removed).split("\n")


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


def _tidy_comments(lines: list[str], width: int = 112) -> list[str]:
    """A line longer than ``width`` (the body's own indentation not counted) keeps three spaces before its comment,
    not the template's alignment."""
    out = list(lines)
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO("\n".join(lines)).readline))
    except (tokenize.TokenError, SyntaxError):
        return out
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            line = out[row - 1]
            code = line[:col].rstrip()
            if len(line) > width and col - len(code) > 3:
                out[row - 1] = code + "   " + line[col:]
    return out


def _method_lines(lines: list[str]) -> list[str]:
    return _tidy_comments(_tidy_brackets(_without_aliases(lines)))


def descent_lines(grad: list[str]) -> Optional[list[str]]:
    """The body of ``descent_Z`` (−∇_Z E) when ``grad`` ends in ``return -EXPR``: the same lines returning ``EXPR``,
    so that the step does not negate an activation-sized tensor (the sign goes on the basis); otherwise None."""
    if not grad or not grad[-1].startswith("return -"):
        return None
    value = ast.parse(grad[-1]).body[0]
    operand = grad[-1][len("return -") :]
    if not (
        isinstance(value, ast.Return)
        and isinstance(value.value, ast.UnaryOp)
        and isinstance(value.value.op, ast.USub)
        and ast.dump(value.value.operand) == ast.dump(ast.parse(operand, mode="eval").body)
    ):
        return None
    return [*grad[:-1], f"return {operand}"]


def _with_beta(lines: list[str]) -> list[str]:
    """``beta = self.beta`` first where the body reads ``beta``."""
    return ["beta = self.beta", *lines] if "beta" in _names_read("\n".join(lines)) else lines


def emit_source(dv: Derivation) -> str:
    """The Python source of the update module for ``dv``."""
    t = dv.term
    family = family_of(t)
    sig = family.signature(dv)
    if dv.path == "autodiff":
        grad, energy = family.autodiff_lines(dv), family.energy_lines(dv)
    else:
        pattern = PATTERNS[dv.pattern]
        grad, energy = pattern.grad_lines(dv), pattern.energy_lines(dv) or family.energy_lines(dv)
    grad, energy = _method_lines(grad), _method_lines(energy)
    descent = descent_lines(grad)
    docs = docstrings(dv)
    constants = {
        "TERM": t.name,
        "FAMILY": family.name,
        "ENERGY": family.energy_text(dv),
        "PATTERN": dv.pattern,
        "PATH": dv.path,
        "REASON": dv.reason,
    }
    interaction = getattr(t, "interaction", None)
    tying = getattr(interaction, "tying", "")
    if tying and interaction is not None:
        constants["TYING"] = f"{interaction.kind}: {tying}"
    lines = [
        "\n".join(f"{key} = {str(value)!r}" for key, value in constants.items()),
        "",
        "",
        f"class {_class_name(dv)}({family.runtime_base[1]}):",
        "    " + docstring(docs["class"], "    "),
        "",
        f"    term_name = {t.name!r}",
        f"    pattern = {dv.pattern!r}",
        f"    path = {dv.path!r}",
        f"    beta = {dv.dims.beta!r}",
        *([f"    tying = {constants['TYING']!r}"] if tying else []),
        "",
        f"    def grad_Z(self, {sig['args']}):",
        "        " + docstring(docs["grad_Z"], "        "),
        *("        " + ln for ln in _with_beta(grad)),
        "",
        f"    def energy_Z(self, {sig['args']}):",
        "        " + docstring(docs["energy_Z"], "        "),
        *("        " + ln for ln in _with_beta(energy)),
        "",
        *(
            [
                f"    def descent_Z(self, {sig['args']}):",
                "        " + docstring(docs["descent_Z"], "        "),
                *("        " + ln for ln in _with_beta(descent)),
                "",
            ]
            if descent is not None
            else []
        ),
    ]
    body = "\n".join(lines)
    return docstring(docs["module"], "") + "\n\n" + module_header(body, family) + body


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


def load_class(source: str, class_name: str, family: Optional[Family] = None) -> type:
    """Check ``source`` (:func:`check_source`), write it to the cache (content-addressed) and import
    ``class_name`` from it; the class must be a :class:`~energyarch.runtime.TermUpdate`."""
    check_source(source, family)
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    if digest in _LOADED:
        return _LOADED[digest]
    path = _cache_dir() / f"emitted_{digest}.py"
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, path)
    module_name = f"energyarch_emitted_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CompileError(f"cannot import the emitted module {path}; set ENERGYARCH_CACHE to a writable folder")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)  # our generated file, not user text
    cls = getattr(module, class_name)
    if not (isinstance(cls, type) and issubclass(cls, TermUpdate)):
        raise CompileError(
            f"the emitted class {class_name} is not a TermUpdate: its family's runtime_base must name "
            f"a subclass of energyarch.runtime.TermUpdate"
        )
    _LOADED[digest] = cls
    return cls


def emit(dv: Derivation) -> type:
    """Emit, check, load and return the update class for ``dv`` (a :class:`~energyarch.runtime.TermUpdate`)."""
    return load_class(emit_source(dv), _class_name(dv), family_of(dv.term))
