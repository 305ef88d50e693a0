"""The package's import structure, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` statement of every module counts, wherever it
stands (module level, inside functions, under ``if``). Relative imports are resolved to
absolute module names, and ``from pkg import name`` is an import of the module
``pkg.name`` when there is one, else of ``pkg`` itself (its ``__init__``).

How packages are modelled: an edge goes to the module an import statement names and to
nothing else. Python also runs the ``__init__`` of every enclosing package first, but
those implicit edges are left out; otherwise the usual pattern -- a package ``__init__``
re-exporting from its submodules, which import each other by their full names -- would
be a cycle through every ``__init__``. A submodule that imports a name its package
defines or re-exports (``from . import X`` with no module ``X``, ``from .. import load``,
``import refbbp``) does get an edge to that ``__init__``, and that is a cycle whenever the
``__init__`` imports the submodule, directly or not.

1. ``test_no_import_cycles``: the graph restricted to refbbp's modules has no cycle.
2. ``test_pipeline_order``: a module imports only from its own pipeline stage or earlier
   ones (``STAGES``).
"""

from __future__ import annotations

import ast
import itertools
import pathlib

import refbbp

PACKAGE = "refbbp"
ROOT = pathlib.Path(refbbp.__file__).resolve().parent

# The pipeline, in order; a module may import from its own stage and the ones before it.
# An entry names a module or a package (which covers all its modules). The last stage is
# the edge: the command line and the package's own __init__, which re-exports the API.
STAGES = [
    ("shared leaf modules", ["refbbp.errors", "refbbp._version", "refbbp._progress",
                             "refbbp._tables", "refbbp.figures", "refbbp.tolerance",
                             "refbbp._core", "refbbp._checks"]),
    ("network", ["refbbp.network"]),
    ("onnx", ["refbbp.onnx"]),
    ("bbp", ["refbbp.bbp"]),
    ("explain", ["refbbp.explain"]),
    ("evaluate", ["refbbp.evaluate"]),
    ("studies", ["refbbp.studies"]),
    ("io", ["refbbp.io"]),
    ("runs", ["refbbp.runs"]),
    ("cli", ["refbbp.cli", "refbbp.__main__", "refbbp"]),
]


def discover_modules(root=ROOT, package=PACKAGE):
    """``{module name: (path, is_package)}`` of every ``.py`` file under ``root``; a
    Cython module (``.pyx``) is a module too, with no path (it is not parsed)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        if "__pycache__" in rel.parts:
            continue
        parts = (package,) + rel.parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (path, is_package)
    for path in sorted(root.rglob("*.pyx")):
        name = ".".join((package,) + path.relative_to(root).with_suffix("").parts)
        modules.setdefault(name, (None, False))
    return modules


def _resolve_relative(module, is_package, level, target):
    """The absolute name of ``from <level dots><target> import ...`` in ``module``."""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if level > len(parts):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    base = parts[:len(parts) - level + 1]
    return ".".join(base + ([target] if target else []))


def imported_modules(module, path, is_package, modules, package=PACKAGE):
    """``[(target module, line)]`` of every import of a ``package`` module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_package, node.level, node.module)
                    if node.level else node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in modules else base, node.lineno))
    return [(target, line) for target, line in found
            if target == package or target.startswith(package + ".")]


def import_graph(modules=None, package=PACKAGE):
    """``{module: {imported module: first line}}`` over the package's modules (no
    self-edges), and the imports naming no module of the package."""
    modules = discover_modules() if modules is None else modules
    graph, unresolved = {name: {} for name in modules}, []
    for name, (path, is_package) in modules.items():
        if path is None:
            continue
        for target, line in imported_modules(name, path, is_package, modules, package):
            if target not in modules:
                unresolved.append(f"{name} (line {line}) imports {target}")
            elif target != name:
                graph[name].setdefault(target, line)
    return graph, unresolved


def find_cycles(graph):
    """One cycle ``[m0, m1, ..., m0]`` per strongly connected component with more than
    one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(component)
    return [_cycle_in(graph, component) for component in components]


def _cycle_in(graph, component):
    """A shortest cycle through the smallest-named module of a strongly connected
    component (breadth-first search back to it)."""
    start = min(component)
    parent, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if child in component and child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def _describe(graph, cycle):
    steps = [f"{a} (line {graph[a][b]})" for a, b in itertools.pairwise(cycle)]
    return " -> ".join(steps + [cycle[-1]])


def stage_of(module):
    """The index in ``STAGES`` of ``module``'s stage (longest matching entry), or None."""
    best, best_len = None, -1
    for k, (_, entries) in enumerate(STAGES):
        for entry in entries:
            covers = module == entry or (entry != PACKAGE and module.startswith(entry + "."))
            if covers and len(entry) > best_len:
                best, best_len = k, len(entry)
    return best


# ------------------------------------------------------------------- the tests
def test_graph_is_read():
    """The walk finds the package's modules and their imports (a guard against a test
    that passes because it sees nothing)."""
    graph, _ = import_graph()
    assert {"refbbp", "refbbp.network", "refbbp.bbp", "refbbp.cli"} <= set(graph)
    assert "refbbp.bbp" in graph["refbbp"]
    assert sum(len(targets) for targets in graph.values()) >= len(graph) // 2


def test_imports_resolve():
    """Every import of a refbbp module names a module that exists."""
    _, unresolved = import_graph()
    assert not unresolved, "imports of no module of the package:\n  " + \
        "\n  ".join(unresolved)


def test_no_import_cycles():
    graph, _ = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n  " + "\n  ".join(_describe(graph, c) for c in cycles)


def test_pipeline_order():
    """Each module imports only from its own stage or earlier ones (``STAGES``): shared
    leaf modules < network < onnx < bbp < explain < evaluate < studies < io < cli."""
    graph, _ = import_graph()
    unassigned = sorted(m for m in graph if stage_of(m) is None)
    assert not unassigned, f"modules in no stage of STAGES (add them): {unassigned}"
    violations = []
    for module in sorted(graph):
        for target, line in sorted(graph[module].items()):
            if stage_of(target) > stage_of(module):
                violations.append(f"{module} (line {line}, stage {STAGES[stage_of(module)][0]})"
                                  f" imports {target} (stage {STAGES[stage_of(target)][0]})")
    assert not violations, "imports from a later pipeline stage:\n  " + \
        "\n  ".join(violations)


# ------------------------------------------------- the graph code on small cases
def _modules(tmp_path, files):
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return discover_modules(tmp_path / "pkg", "pkg")


def _graph(tmp_path, files):
    graph, unresolved = import_graph(_modules(tmp_path, files), "pkg")
    assert not unresolved
    return graph


def test_reexporting_init_is_not_a_cycle(tmp_path):
    graph = _graph(tmp_path, {
        "__init__.py": "from .sub import f\nfrom . import leaf\n",
        "leaf.py": "X = 1\n",
        "sub/__init__.py": "from .a import f\n",
        "sub/a.py": "from .b import g\nfrom ..leaf import X\nfrom pkg.sub import b\n"
                    "def f():\n    from . import b\n    return b\n",
        "sub/b.py": "def g():\n    pass\n",
    })
    assert graph["pkg"] == {"pkg.sub": 1, "pkg.leaf": 2}
    assert graph["pkg.sub.a"] == {"pkg.sub.b": 1, "pkg.leaf": 2}
    assert find_cycles(graph) == []


def test_submodule_importing_its_package_init_is_a_cycle(tmp_path):
    graph = _graph(tmp_path, {
        "__init__.py": "from .sub import f\n",
        "sub/__init__.py": "from .a import f\nHELPER = 1\n",
        "sub/a.py": "def f():\n    from . import HELPER\n    return HELPER\n",
    })
    assert graph["pkg.sub.a"] == {"pkg.sub": 2}
    assert find_cycles(graph) == [["pkg.sub", "pkg.sub.a", "pkg.sub"]]
    assert _describe(graph, ["pkg.sub", "pkg.sub.a", "pkg.sub"]) == \
        "pkg.sub (line 1) -> pkg.sub.a (line 2) -> pkg.sub"


def test_cycle_through_the_top_package_and_between_modules(tmp_path):
    graph = _graph(tmp_path, {
        "__init__.py": "from .a import f\n",
        "a.py": "import pkg\nfrom .b import g\n",
        "b.py": "from .c import h\n",
        "c.py": "if True:\n    from pkg import b\n",
        "_core.pyx": "",
        "d.py": "from . import _core\n",
    })
    assert graph["pkg.d"] == {"pkg._core": 1} and graph["pkg._core"] == {}
    assert sorted(find_cycles(graph)) == [["pkg", "pkg.a", "pkg"],
                                          ["pkg.b", "pkg.c", "pkg.b"]]
