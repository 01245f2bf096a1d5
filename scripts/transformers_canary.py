"""The transformers canary of `make test-latest`: is there a transformers release that CI did not just test?

Asks the registry (through pip, so the user's index settings apply) for the newest transformers release and
compares it with the one installed here (.venv-latest: the newest that pyproject.toml's bounds admit and that pip
could resolve). When they differ, it says in one line why (beyond the bound, or within it but not resolvable,
e.g. a requirement that no index has yet), and with ``--contract`` installs that release alone into a throwaway
folder, shadowing this environment's transformers, and runs tests/test_transformers_contract.py against it.

It only reports: it exits 0 whatever it finds, offline included, so CI stays green; a broken release is seen the
day it lands rather than when someone moves the bound.

    .venv-latest/bin/python scripts/transformers_canary.py --contract
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from email.parser import Parser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "transformers"
CONTRACT_TESTS = "tests/test_transformers_contract.py"
PREFIX = "transformers canary:"


def bound_of(pyproject_text: str, package: str = PACKAGE) -> SpecifierSet:
    """The version specifier of ``package`` among the quoted requirement strings of pyproject.toml."""
    for quoted in re.findall(r'"([^"\n]+)"', pyproject_text):
        try:
            requirement = Requirement(quoted)
        except InvalidRequirement:
            continue
        if requirement.name.lower() == package:
            return requirement.specifier
    raise ValueError(f"pyproject.toml has no requirement on {package}")


def parse_index_versions(output: str) -> list[Version]:
    """The releases in the output of ``pip index versions NAME`` (its 'Available versions:' line), newest first."""
    versions: list[Version] = []
    for line in output.splitlines():
        if line.strip().startswith("Available versions:"):
            for text in line.split(":", 1)[1].split(","):
                try:
                    versions.append(Version(text.strip()))
                except InvalidVersion:
                    continue
    return sorted((v for v in versions if not v.is_prerelease and not v.is_devrelease), reverse=True)


def newest_release(run: Callable[..., subprocess.CompletedProcess], python: str = sys.executable,
                   timeout: float = 60) -> tuple[Version | None, str]:
    """``(newest release, '')`` from the registry, or ``(None, why not)`` (offline, no pip index, no output)."""
    command = [python, "-m", "pip", "index", "versions", PACKAGE, "--timeout", "10", "--retries", "1",
               "--disable-pip-version-check"]
    try:
        done = run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"{type(error).__name__}: {error}"
    versions = parse_index_versions(done.stdout or "")
    if done.returncode != 0 or not versions:
        lines = [line for line in (done.stderr or done.stdout or "").splitlines() if line.strip()]
        return None, lines[-1].strip() if lines else f"pip index exited {done.returncode}"
    return versions[0], ""


def verdict(newest: Version, installed: Version, bound: SpecifierSet) -> str | None:
    """One line on how the newest release stands to the one tested here; ``None`` when they are the same."""
    if newest == installed:
        return None
    if newest < installed:
        return f"{PREFIX} the registry's newest release is {newest}, older than the {installed} tested here"
    if newest not in bound:
        return (f"{PREFIX} transformers {newest} is out, beyond pyproject.toml's bound {bound} "
                f"(tested here: {installed}): move the bound once it passes")
    return (f"{PREFIX} transformers {newest} is within pyproject.toml's bound {bound}, but pip resolved {installed} "
            f"here: a requirement of {newest} cannot be met from the index")


def unmet_requirements(metadata_text: str, version_of: Callable[[str], str | None]) -> list[str]:
    """The requirements of a wheel's METADATA (extras left out) that this environment does not meet."""
    unmet = []
    for line in Parser().parsestr(metadata_text).get_all("Requires-Dist") or []:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        have = version_of(requirement.name)
        if have is None or not requirement.specifier.contains(have, prereleases=True):
            unmet.append(f"{requirement.name}{requirement.specifier}" + ("" if have else " (not installed)"))
    return unmet


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def summary_line(output: str) -> str:
    """pytest's closing line ('10 passed in 20.1s'), or the last non-empty line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"\d+ (passed|failed|error)", line):
            return line.strip("= ")
    return lines[-1] if lines else "no output"


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("E ", "FAILED ", "ERROR ")):
            return line[:300]
    return ""


def contract_check(release: Version, run: Callable[..., subprocess.CompletedProcess], timeout: float) -> str:
    """Install ``release`` alone into a throwaway folder and run the contract tests against it; one line."""
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="transformers-canary-") as tmp:
        wheels, site = Path(tmp) / "wheels", Path(tmp) / "site"
        download = [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--timeout", "30",
                    "--disable-pip-version-check", "-d", str(wheels), f"{PACKAGE}=={release}"]
        try:
            done = run(download, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{PREFIX} could not fetch {release} ({type(error).__name__}); contract tests not run"
        wheel = next(wheels.glob("*.whl"), None)
        if done.returncode != 0 or wheel is None:
            return f"{PREFIX} could not fetch {release} ({summary_line(done.stderr or '')}); contract tests not run"
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
            metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
            unmet = unmet_requirements(archive.read(metadata).decode(), installed_version)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
        started = time.monotonic()
        try:
            done = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", CONTRACT_TESTS],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
        except subprocess.TimeoutExpired:
            return f"{PREFIX} contract tests against {release}: TIMED OUT after {timeout:.0f} s"
        output = (done.stdout or "") + (done.stderr or "")
        result = "PASSED" if done.returncode == 0 else "FAILED"
        line = f"{PREFIX} contract tests against {release}: {result} ({summary_line(output)}"
        line += f", {time.monotonic() - started:.0f} s)"
        if unmet:
            line += f"; its requirements this environment does not meet: {', '.join(unmet)}"
        if done.returncode != 0 and first_failure(output):
            line += f"\n{PREFIX}   {first_failure(output)}"
        return line


def main(argv: list[str] | None = None, run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--contract", action="store_true",
                        help="run the contract tests against the newest release when it is not the one installed")
    parser.add_argument("--timeout", type=float, default=240, help="seconds for each download and for the tests")
    args = parser.parse_args(argv)

    bound = bound_of(args.pyproject.read_text())
    have = installed_version(PACKAGE)
    if have is None:
        print(f"{PREFIX} transformers is not installed in {sys.executable}; nothing to compare")
        return 0
    installed = Version(have)
    newest, why = newest_release(run)
    if newest is None:
        print(f"{PREFIX} the registry could not be asked for the newest release ({why}); nothing to report")
        return 0
    line = verdict(newest, installed, bound)
    if line is None:
        print(f"{PREFIX} the newest release, {newest}, is the one tested here (pyproject.toml's bound {bound})")
        return 0
    print(line)
    if args.contract and newest > installed:
        print(contract_check(newest, run, args.timeout))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as error:  # noqa: BLE001 - a report, never a failure of the make target
        print(f"{PREFIX} could not report ({type(error).__name__}: {error})")
        sys.exit(0)
