"""The ``energyarch`` package has no import cycles, function-level imports included.

The import graph is built from the source with :mod:`ast` (nothing is imported). Its nodes are the package's
modules, a package standing for its ``__init__.py``; its edges are every ``import`` statement anywhere in a file (at
module level, in functions, in ``if`` and ``try`` blocks alike: an import moved into a function to dodge a cycle is
still a cycle), relative or absolute:

- ``import a.b.c`` and ``from a.b import c`` where ``a/b/c.py`` (or ``a/b/c/__init__.py``) exists are edges to the
  module ``a.b.c``; ``from a.b import name`` where ``name`` is not a submodule is an edge to ``a.b`` itself (its
  ``__init__`` defines or re-exports the name).
- Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first: those are edges too, except to the packages
  that hold the importing module itself. Its own packages are already running when it runs (a submodule is only
  ever loaded after its package), so a package ``__init__`` importing (re-exporting) its children is no cycle by
  itself, and neither is a sibling import (``from .config import X``). An explicit import *of its own package*
  does count: a submodule that takes a name from its package's ``__init__`` (``from . import TrainConfig``,
  ``from energyarch import Energy``) depends on everything that ``__init__`` imports, its siblings included, and
  closes a real cycle. Importing ``energyarch.models.record`` from ``energyarch.train`` runs
  ``energyarch/models/__init__.py``, and through it every module that ``__init__`` imports.
- Imports in the body of ``if TYPE_CHECKING:`` are left out: they never run (annotations only, under
  ``from __future__ import annotations``), and they are the one way a lower module may name the type of a module
  above it. Everything else in that ``if`` (its ``else``) counts.
- Imports of other distributions (torch, sympy, ...) are ignored; so are dynamic imports
  (``importlib.import_module``, module ``__getattr__``), which a static reading cannot follow.

A cycle is a strongly connected component of more than one module; the test fails listing each one as chains of
modules (``a -> b -> a``) with the file and line of every import on the chain.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]

Graph = dict[str, dict[str, list[int]]]  # module -> imported module -> line numbers of the imports


def _modules(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a folder under ``src``) by dotted name; a package is its ``__init__.py``."""
    found: dict[str, Path] = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name of a relative import (``level`` dots, then ``name``) written in ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _type_checking(test: ast.expr) -> bool:
    """The condition ``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (
        isinstance(test, ast.Name)
        and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute)
        and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` in source order, at any depth, except in the body of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _type_checking(node.test):
            stack.extend(reversed(node.orelse))
        else:
            stack.extend(reversed(list(ast.iter_child_nodes(node))))


def import_graph(src: Path, package: str) -> Graph:
    """The import graph of ``package`` (see the module docstring for what counts as an edge)."""
    modules = _modules(src, package)
    graph: Graph = {name: {} for name in modules}

    def add(origin: str, target: str, line: int, origin_is_package: bool) -> None:
        # the longest prefix of ``target`` that is a module of the package (``a.b.C`` -> ``a.b``) ...
        while target and target not in modules:
            target = target.rpartition(".")[0]
        parts = target.split(".") if target else []
        own = origin.split(".") if origin_is_package else origin.split(".")[:-1]  # the packages running already
        # ... and the packages above it that run first, except the importing module's own packages
        for k in range(1, len(parts) + 1):
            name = ".".join(parts[:k])
            if name != origin and (k == len(parts) or parts[:k] != own[:k]):
                graph[origin].setdefault(name, []).append(line)

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(name, alias.name, node.lineno, is_package)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    add(name, sub if sub in modules else base, node.lineno, is_package)
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node, each sorted, in sorted order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _shortest_cycle(graph: Graph, start: str, members: set[str]) -> list[str]:
    """The shortest chain ``start -> ... -> start`` inside one component (breadth-first)."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if child not in members:
                continue
            if child == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [start, *reversed(chain[:-1]), start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    raise AssertionError(f"{start} is on no cycle of its component")  # pragma: no cover - Tarjan guarantees one


def cycles(graph: Graph) -> list[list[str]]:
    """Chains of modules that cover every module of every cycle: per component, the shortest cycle through each
    module that no chain listed so far passes through."""
    chains: list[list[str]] = []
    for component in strongly_connected(graph):
        covered: set[str] = set()
        for module in component:
            if module not in covered:
                chain = _shortest_cycle(graph, module, set(component))
                covered.update(chain)
                chains.append(chain)
    return chains


def describe(graph: Graph, chains: list[list[str]]) -> str:
    """One line per chain, each step with the lines of its imports: ``a -> b (a:3) -> a (b:12, 40)``."""
    lines = []
    for chain in chains:
        steps = [chain[0]]
        for origin, target in zip(chain, chain[1:]):
            where = ", ".join(str(n) for n in sorted(set(graph[origin][target])))
            steps.append(f"{target} ({origin.rpartition('.')[2] or origin}:{where})")
        lines.append(" -> ".join(steps))
    return "\n".join(lines)


def test_energyarch_has_no_import_cycles():
    graph = import_graph(ROOT, "energyarch")
    assert len(graph) > 50 and "energyarch.train.trainer" in graph["energyarch.train"]  # the graph was read
    chains = cycles(graph)
    assert not chains, f"{len(chains)} import cycle(s) in energyarch:\n{describe(graph, chains)}"


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_finds_a_cycle_hidden_in_a_function(tmp_path):
    src = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import f\nfrom .sub import g\n",
            "pkg/a.py": "from .b import h\ndef f():\n    return h()\n",
            "pkg/b.py": "def h():\n    from . import a  # dodges the cycle at import time, still a cycle\n    return a\n",
            "pkg/sub/__init__.py": "from .c import g\n",
            "pkg/sub/c.py": "import os\nfrom ..a import f as g\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert graph["pkg.b"] == {"pkg.a": [2]}
    assert graph["pkg.sub.c"] == {"pkg.a": [2]}  # ``..a`` from a submodule; ``os`` is not in the package
    chains = cycles(graph)
    assert chains == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe(graph, chains) == "pkg.a -> pkg.b (a:1) -> pkg.a (b:2)"


def test_package_init_importing_its_children_is_no_cycle(tmp_path):
    src = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\nfrom .b import B\nimport pkg.c\n",
            "pkg/a.py": "A = 1\n",
            "pkg/b.py": "from .a import A\nfrom pkg import c\nB = A\n",  # siblings, by relative and absolute import
            "pkg/c.py": "import pkg.a\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert graph["pkg"] == {"pkg.a": [1], "pkg.b": [2], "pkg.c": [3]}
    assert graph["pkg.b"] == {"pkg.a": [1], "pkg.c": [2]}
    assert cycles(graph) == []


def test_a_name_taken_from_the_own_package_init_is_a_cycle(tmp_path):
    src = _package(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\nfrom .b import B\n",
            "pkg/a.py": "A = 1\n",
            "pkg/b.py": "from . import A  # defined in the sibling a, re-exported by the package\nB = A\n",
            "pkg/deep/__init__.py": "",
            "pkg/deep/d.py": "def f():\n    from .. import b\n    from pkg.b import B\n",
            "pkg/typed.py": (
                "from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n    from . import b\n"
                "if typing.TYPE_CHECKING:\n    from .a import A\nelse:\n    from .deep import d\n"
            ),
        },
    )
    graph = import_graph(src, "pkg")
    assert graph["pkg.b"] == {"pkg": [1]}
    assert graph["pkg.deep.d"] == {"pkg.b": [2, 3]}  # a submodule by ``..``; a name of the module pkg.b
    # annotations-only imports are left out, ``else`` counts (and runs pkg/deep/__init__.py first)
    assert graph["pkg.typed"] == {"pkg.deep": [8], "pkg.deep.d": [8]}
    assert strongly_connected(graph) == [["pkg", "pkg.b"]]
    assert cycles(graph) == [["pkg", "pkg.b", "pkg"]]


def test_importing_a_submodule_of_another_package_runs_that_package_init(tmp_path):
    src = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/low/__init__.py": "from .rules import R\nfrom .check import check\n",  # a facade over two layers
            "pkg/low/rules.py": "R = 1\n",
            "pkg/low/check.py": "def check(step):\n    from ..high import Step\n    return isinstance(step, Step)\n",
            "pkg/high.py": "from .low.rules import R\nclass Step:\n    rule = R\n",
        },
    )
    graph = import_graph(src, "pkg")
    assert graph["pkg.high"] == {"pkg.low": [1], "pkg.low.rules": [1]}
    assert graph["pkg.low.check"] == {"pkg.high": [2]}  # its own packages pkg and pkg.low are no edges
    assert cycles(graph) == [["pkg.high", "pkg.low", "pkg.low.check", "pkg.high"]]
