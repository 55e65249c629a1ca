"""Write the pip requirements of the images from pyproject.toml (run at image build time).

    python requirements.py PYPROJECT OUT [--extra EXTRA ...] [--only NAME ... | --exclude NAME ...]
                           [--constraints-out FILE]

OUT gets [project].dependencies, plus those of each --extra ([project.optional-dependencies]),
only the named ones or all but the excluded ones, so that
torch's pin is read from pyproject.toml and never repeated, and the dependency layer of an
image is cached until pyproject.toml changes and the project itself is then installed with
`pip install --no-deps .`. --constraints-out pins the torch family that is already installed
(the CUDA build of a pytorch base image), so that no other package can replace it.
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import tomllib
from importlib import metadata
from pathlib import Path

TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "triton")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return canonical(re.split(r"[\s\[<>=!~;@(]", requirement.strip(), maxsplit=1)[0])


def requirements(
    pyproject: Path, exclude: tuple[str, ...] = (), only: tuple[str, ...] = (), extras: tuple[str, ...] = ()
) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise SystemExit(f"not in [project.optional-dependencies]: {', '.join(unknown)}")
    deps = [*project["dependencies"], *(dep for extra in extras for dep in optional[extra])]
    skip, keep = {canonical(name) for name in exclude}, {canonical(name) for name in only}
    chosen = [dep for dep in deps if requirement_name(dep) not in skip and (not keep or requirement_name(dep) in keep)]
    missing = keep - {requirement_name(dep) for dep in chosen}
    if missing:
        raise SystemExit(f"not in the dependencies: {', '.join(sorted(missing))}")
    return chosen


def installed_pins(names: tuple[str, ...] = TORCH_FAMILY) -> list[str]:
    pins = []
    for name in names:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="also the dependencies of this extra")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--exclude", action="append", default=[], help="distribution name to leave out")
    group.add_argument("--only", action="append", default=[], help="distribution name to keep (and nothing else)")
    parser.add_argument("--constraints-out", type=Path, help="write pins of the installed torch family here")
    args = parser.parse_args(argv)
    chosen = requirements(args.pyproject, tuple(args.exclude), tuple(args.only), tuple(args.extra))
    args.out.write_text("\n".join(chosen) + "\n")
    if args.constraints_out:
        pins = installed_pins()
        if not any(pin.startswith("torch==") for pin in pins):
            raise SystemExit("--constraints-out: torch is not installed in this interpreter")
        args.constraints_out.write_text("\n".join(pins) + "\n")


if __name__ == "__main__":
    main()
