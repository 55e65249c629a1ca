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
