"""edgekd's import graph has no circle, and its layers import downwards only.

The graph is read from the source with `ast`, nothing is imported: an edge A -> B for every
import of B in A, at module level or inside a function (both run A's import of B sooner or
later), except under `if TYPE_CHECKING:` (never run). Importing a submodule counts as importing
the packages above it too (Python runs their `__init__` first). A circle is a strongly connected
component of more than one module (Tarjan's algorithm).

Layers (docs/architecture.md): `edgekd.runtime` is the torch-free runtime a device installs, so
it imports nothing from the training side; `edgekd.data` feeds training and export, and imports
none of them, nor the CLI commands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "edgekd"

LAYERS = {
    "edgekd.runtime": ("edgekd.distill", "edgekd.export", "edgekd.models", "edgekd.data",
                       "edgekd.search", "edgekd.teachers"),
    "edgekd.data": ("edgekd.distill", "edgekd.export", "edgekd.search", "edgekd.teachers",
                    "edgekd.commands"),
}

Edges = dict[str, dict[str, list[int]]]  # importer -> imported -> line numbers


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package folder `root`."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` bodies (`typing.TYPE_CHECKING` too)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skip.update(id(sub) for sub in ast.walk(statement))
    return skip


def _imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The dotted names an import statement may load: `a.b` for `import a.b`, `a.b.c` for
    `from a.b import c` (c may be a submodule or a name in a.b), relative imports resolved."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([base] if base else [])])
    return [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"] or [base]


def import_graph(root: Path) -> Edges:
    """The import graph of the package folder `root` (see the module docstring)."""
    modules = _modules(root)

    def resolve(name: str) -> str | None:
        """The module `name` loads: itself, else the nearest package or module above it."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: Edges = {m: {} for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skip = _type_checking_only(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for name in _imported_names(node, module, is_package):
                target = resolve(name)
                if target is None:
                    continue  # not this package (numpy, the standard library...)
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    loaded = ".".join(parts[:i])
                    # the packages above the target count, except the importer's own (they
                    # were imported before it); the target itself counts unless it is the
                    # importer (`from edgekd.runtime import x` in edgekd.runtime.bench does)
                    above_importer = i < len(parts) and module.startswith(loaded + ".")
                    if loaded in modules and loaded != module and not above_importer:
                        edges[module].setdefault(loaded, []).append(node.lineno)
    return edges


def circles(edges: Edges) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, {})):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def _describe(component: list[str], edges: Edges) -> str:
    members = set(component)
    lines = [f"  {a} -> {b} (line {', '.join(map(str, sorted(set(edges[a][b]))))})"
             for a in component for b in sorted(edges[a]) if b in members]
    return "circle " + " / ".join(component) + ":\n" + "\n".join(lines)


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# -- the rules -----------------------------------------------------------------------------------
def test_edgekd_has_no_import_circle() -> None:
    edges = import_graph(ROOT)
    assert len(edges) > 50, "the package was not found"
    found = circles(edges)
    assert not found, (
        "import circles in edgekd; move the names both sides need into a lower module:\n"
        + "\n".join(_describe(c, edges) for c in found)
    )


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layer_imports_nothing_from_the_layers_above(layer: str) -> None:
    edges = import_graph(ROOT)
    wrong = [f"  {a} -> {b} (line {', '.join(map(str, sorted(set(lines))))})"
             for a in sorted(edges) if in_package(a, layer)
             for b, lines in sorted(edges[a].items())
             if any(in_package(b, above) for above in LAYERS[layer])]
    assert not wrong, (f"{layer} must not import {', '.join(LAYERS[layer])}:\n"
                       + "\n".join(wrong))


# -- the checker itself ----------------------------------------------------------------------------
def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_circle_through_a_function_level_import_is_found(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "low.py": "def f():\n    from pkg.high import g\n    return g\n",
        "high.py": "from pkg.low import f\n\ndef g():\n    return f\n",
        "side.py": "import pkg.low\n",
    })
    edges = import_graph(pkg)
    assert circles(edges) == [["pkg.high", "pkg.low"]]
    assert "pkg.low -> pkg.high (line 2)" in _describe(["pkg.high", "pkg.low"], edges)


def test_type_checking_imports_and_parents_count_as_the_docstring_says(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
        "b.py": "from pkg.a import *\n",
        "sub/__init__.py": "from pkg.b import B\n",
        "sub/c.py": "from . import d\nfrom ..a import x\n",
        "sub/d.py": "",
        "e.py": "from pkg.sub.c import y\n",
    })
    edges = import_graph(pkg)
    assert circles(edges) == []
    assert "pkg.b" not in edges["pkg.a"]  # TYPE_CHECKING only
    assert set(edges["pkg.sub.c"]) == {"pkg.sub.d", "pkg.a"}  # relative; own parent not counted
    assert set(edges["pkg.e"]) == {"pkg.sub", "pkg.sub.c"}  # a submodule loads its package
    (pkg / "a.py").write_text("from pkg.e import z\n")  # a -> e -> sub -> b -> a, c -> a
    assert circles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.e", "pkg.sub", "pkg.sub.c"]]
