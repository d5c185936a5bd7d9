"""The package's import graph has no circles: every import of every module, at the top or inside
a function, read from the source with ``ast``, points one way.

A module that imports a name ``n`` from ``X`` depends on module ``X.n`` when that is a module,
else on ``X``. Importing a module of another sub-package also runs that sub-package's
``__init__``, so such an import depends on it as well: sub-packages are layered too.
"""

import ast
from pathlib import Path

import pytest

import rbmem_tutorial

ROOT = Path(rbmem_tutorial.__file__).parent
PKG = "rbmem_tutorial"


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([PKG, *parts])] = path
    return found


def _imported(module: str, path: Path, modules) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its source."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.add(sub if sub in modules else source)
    return {t for t in targets if t in modules and t != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        edges = _imported(module, path, modules)
        own = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for target in list(edges):  # the sub-package __init__ an import runs first
            parts = target.split(".")
            for cut in range(2, len(parts)):
                parent = ".".join(parts[:cut])
                if parent in modules and not (own == parent or own.startswith(parent + ".")):
                    edges.add(parent)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (depth-first search), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_package_has_no_import_circle():
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_imports_inside_functions_are_in_the_graph(tmp_path):
    first, second = tmp_path / "a.py", tmp_path / "b.py"
    first.write_text("def f():\n    from rbmem_tutorial.b import g\n")
    second.write_text("from rbmem_tutorial import a\n")
    modules = {f"{PKG}.a": first, f"{PKG}.b": second}
    graph = {m: _imported(m, p, modules) for m, p in modules.items()}
    assert graph == {f"{PKG}.a": {f"{PKG}.b"}, f"{PKG}.b": {f"{PKG}.a"}}
    assert _cycle(graph) in ([f"{PKG}.a", f"{PKG}.b", f"{PKG}.a"],
                             [f"{PKG}.b", f"{PKG}.a", f"{PKG}.b"])


@pytest.mark.parametrize("module", sorted(_modules()))
def test_every_module_stays_under_about_400_lines(module):
    lines = len(_modules()[module].read_text().splitlines())
    assert lines <= 420, f"{module} has {lines} lines; split it by idea (about 400 at most)"
