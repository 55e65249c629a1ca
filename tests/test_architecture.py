"""The fixed architecture rules, checked on the source: services/ and workers/ import shared/ but
never each other; shared/ imports neither; heavy ML libraries only inside workers' model adapters,
and there only inside functions (lazily)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "transformers", "diffusers", "sentence_transformers", "pytorch_msssim", "accelerate"}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level module name, imported at module level?) for every import in the file."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name.split(".")[0], id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module.split(".")[0], id(node) in top_level))
    return found


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_services_and_workers_do_not_import_each_other() -> None:
    rules = (("services", {"workers"}), ("workers", {"services"}), ("shared", {"services", "workers"}))
    for package, forbidden in rules:
        for path in files(package):
            bad = {name for name, _ in imports(path)} & forbidden
            assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_heavy_ml_imports_only_lazily_in_model_adapters() -> None:
    seen = 0
    for package in ("services", "workers", "shared"):
        for path in files(package):
            for name, module_level in imports(path):
                if name not in HEAVY:
                    continue
                seen += 1
                rel = path.relative_to(ROOT)
                assert rel.parts[:2] == ("workers", "models"), f"{rel} imports {name}"
                assert not module_level, f"{rel} imports {name} at module level"
    assert seen >= 3  # the adapters do use them (the scan is not looking at nothing)


# ---------------------------------------------------------------- the module import graph

INTERNAL = ("shared", "services", "workers")


def module_sources(*packages: str) -> dict[str, tuple[str, bool]]:
    """{dotted module name: (source, is a package)} for every .py file under the given packages."""
    found = {}
    for package in packages:
        for path in files(package):
            parts = path.relative_to(ROOT).with_suffix("").parts
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path.read_text(), is_package)
    return found


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, with relative imports resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, known: set[str] | dict[str, object]) -> str | None:
    """`name` itself if it is a known module, else its longest known parent, else None."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(
    module: str, source: str, is_package: bool, known: set[str] | dict[str, object]
) -> list[tuple[str, int]]:
    """(imported known module, line) for every import in `source`, at module level or inside functions;
    `from pkg import name` is an import of pkg.name when that is a module, else of pkg."""
    edges = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [_known(alias.name, known) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, is_package, node)
            names = [f"{base}.{alias.name}" for alias in node.names]
            targets = [name if name in known else _known(base, known) for name in names]
        else:
            continue
        edges += [(target, node.lineno) for target in targets if target and target != module]
    return edges


def import_graph(sources: dict[str, tuple[str, bool]]) -> dict[str, dict[str, int]]:
    """{module: {imported module: line}}. A package's __init__ importing its own submodules is no
    dependency of the package on them (it is how a package presents its parts), so it is left out."""
    graph: dict[str, dict[str, int]] = {}
    for module, (source, is_package) in sources.items():
        edges = graph.setdefault(module, {})
        for target, line in import_edges(module, source, is_package, sources):
            if not (is_package and target.startswith(module + ".")):
                edges.setdefault(target, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def describe_cycles(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per cycle: its modules, then the imports that tie them together (importer:line -> imported)."""
    lines = []
    for component in cycles(graph):
        members = set(component)
        ties = [
            f"{source}:{line} -> {target}"
            for source in component
            for target, line in sorted(graph[source].items())
            if target in members
        ]
        lines.append(f"{', '.join(component)}  [{'; '.join(ties)}]")
    return lines


def private_imports(sources: dict[str, tuple[str, bool]]) -> list[str]:
    """`module:line imports other._name` for every `from other import _name` of a private (single
    underscore) name that another module of `sources` defines (or that is a private module)."""
    found = []
    for module, (source, is_package) in sources.items():
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = _absolute(module, is_package, node)
            if _known(base, sources) is None:
                continue  # a third-party or standard library module: not ours to judge
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.endswith("__")
                if private and base != module:
                    found.append(f"{module}:{node.lineno} imports {base}.{alias.name}")
    return sorted(found)


def test_no_import_cycles_between_modules() -> None:
    graph = import_graph(module_sources(*INTERNAL))
    assert sum(len(edges) for edges in graph.values()) > 100  # the scan is looking at something
    found = describe_cycles(graph)
    assert not found, "import cycles (each: its modules [the imports that close it]):\n" + "\n".join(found)


def test_no_private_names_imported_across_modules() -> None:
    found = private_imports(module_sources(*INTERNAL, "tests"))
    assert not found, "private names imported from another module:\n" + "\n".join(found)


def test_no_module_imports_a_test_module_or_conftest() -> None:
    """Shared helpers live in tests/factories.py (and tests/system.py); fixtures in conftest.py files."""
    sources = module_sources(*INTERNAL, "tests")
    found = sorted(
        {
            f"{module}:{line} imports {target}"
            for module, (source, is_package) in sources.items()
            for target, line in import_edges(module, source, is_package, sources)
            if target.rpartition(".")[2].startswith("test_") or target.rpartition(".")[2] == "conftest"
        }
    )
    assert not found, "\n".join(found)


def test_the_checkers_can_fail() -> None:
    """Each checker on a tiny synthetic tree: it finds what is there and only that."""
    sources = {
        "pkg": ("from pkg import a, b  # a package presenting its parts: no cycle", True),
        "pkg.a": ("from pkg.b import helper, _hidden\nfrom pkg import c\n", False),
        "pkg.b": ("import json\n\ndef helper():\n    from . import a  # lazily, still a dependency\n", False),
        "pkg.c": ("from ._d import thing\nimport pkg.d2\n", False),
        "pkg._d": ("from pkg.c import _mine\n_mine = 1\nfrom .d2 import _x\n", False),
        "pkg.d2": ("from os import _exit\n", False),
        "pkg.e": ("from .e import _self\nfrom pkg import _d\n", False),
    }
    graph = import_graph(sources)
    assert graph["pkg"] == {}
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.c": 2}
    assert graph["pkg.b"] == {"pkg.a": 4}
    assert graph["pkg._d"] == {"pkg.c": 1, "pkg.d2": 3}
    assert cycles(graph) == [["pkg._d", "pkg.c"], ["pkg.a", "pkg.b"]]
    assert describe_cycles(graph)[1] == "pkg.a, pkg.b  [pkg.a:1 -> pkg.b; pkg.b:4 -> pkg.a]"
    assert cycles({"x": {"y": 1}, "y": {"z": 1}, "z": {}}) == []
    assert private_imports(sources) == [
        "pkg._d:1 imports pkg.c._mine",
        "pkg._d:3 imports pkg.d2._x",
        "pkg.a:1 imports pkg.b._hidden",
        "pkg.e:2 imports pkg._d",
    ]
    tests = {"t": ("", True), "t.test_x": ("from t.test_y import f\n", False), "t.test_y": ("", False)}
    assert import_edges("t.test_x", *tests["t.test_x"], tests) == [("t.test_y", 1)]
