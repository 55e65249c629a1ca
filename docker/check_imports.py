"""Import every module of the installed onbrand packages; print each one that fails and exit 1.

    python -P check_imports.py [--package NAME ...]

Run it with -P from outside the repository so that the installed package is imported, not
./shared. Modules are found by walking the installed packages' directories, so the check follows
modules as they move. No connection is made: set ONBRAND_REDIS_URL (the Celery app needs a
broker URL to be built). Used by .ci/check-install and the images' build smoke test.
Standard library only.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path

PACKAGES = ("shared", "services", "workers")


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package!r} is not installed")
    directory = Path(next(iter(spec.submodule_search_locations))).resolve()
    here = Path.cwd().resolve()
    if directory.parent == here:
        raise SystemExit(f"{package} would be imported from the working directory ({directory}): run with -P elsewhere")
    return directory


def discover(packages: tuple[str, ...] = PACKAGES) -> list[str]:
    """Dotted names of every .py file under the installed packages, sorted."""
    found: set[str] = set()
    for package in packages:
        root = package_dir(package)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for filename in filenames:
                if not filename.endswith(".py"):
                    continue
                parts = Path(dirpath, filename).relative_to(root.parent).with_suffix("").parts
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found.add(".".join(parts))
    return sorted(found)


def check(modules: list[str]) -> dict[str, str]:
    """Import each module; the failures, as module -> last line of its traceback."""
    failures: dict[str, str] = {}
    for name in modules:
        try:
            importlib.import_module(name)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and the like count as failures too
            if isinstance(exc, KeyboardInterrupt):
                raise
            failures[name] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", action="append", help=f"top-level package (default: {', '.join(PACKAGES)})")
    args = parser.parse_args(argv)
    started = time.monotonic()
    modules = discover(tuple(args.package or PACKAGES))
    if not modules:
        print("check_imports: no modules found", file=sys.stderr)
        return 1
    failures = check(modules)
    for name, error in failures.items():
        print(f"FAIL {name}: {error}", file=sys.stderr)
    print(
        f"check_imports: {len(modules) - len(failures)}/{len(modules)} modules imported"
        f" in {time.monotonic() - started:.1f}s ({sys.executable})"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
