"""Shared fixtures: tiny random models (built from a config, no download) and the embedded SmolLM2."""

from __future__ import annotations

import os

# Triton's interpreter must be chosen before anything imports ``triton.language`` (hqq and transformers do, at
# collection): without a GPU the fused-kernel tests run interpreted. On a GPU machine they run compiled.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import pytest
import torch

# No test may reach the network: W&B stays offline and the hub is never asked.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TINY_ARCHITECTURES = ("llama", "mistral", "qwen2")

# Tests marked ``device`` run where these say (scripts/gpu_check.py runs them on CUDA in bfloat16); by default
# on the CPU in float32, like every other test.
TEST_DEVICE = os.environ.get("QPRUNING_TEST_DEVICE", "cpu")
TEST_DTYPE = os.environ.get("QPRUNING_TEST_DTYPE", "float32")


@pytest.fixture(scope="session")
def tiny_models():
    """A cache of tiny random models: ``tiny_models("llama") -> (model, tokenizer)``, float32 and sdpa unless
    ``dtype=`` (``bfloat16``, ``float16``: weights built in that dtype) or ``attn=`` (``eager``) say otherwise."""
    from qpruning.models import tiny_model

    built: dict[tuple[str, str, str], tuple] = {}

    def get(architecture: str = "llama", dtype: str = "float32", attn: str = "sdpa"):
        key = (architecture, dtype, attn)
        if key not in built:
            built[key] = tiny_model(architecture, dtype=dtype, attn_implementation=attn)
        return built[key]

    return get


@pytest.fixture(scope="session")
def tiny_lm():
    """Tiny random models without a tokenizer, on ``QPRUNING_TEST_DEVICE`` in ``QPRUNING_TEST_DTYPE``:
    ``tiny_lm("llama") -> model`` (default: CPU, float32, the weights of ``tiny_models``)."""
    from qpruning.models import ModelSpec

    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("QPRUNING_TEST_DEVICE=cuda but no CUDA device is visible")
    built: dict[str, torch.nn.Module] = {}

    def get(architecture: str = "llama"):
        if architecture not in built:
            spec = ModelSpec(name=f"tiny_{architecture}", name_or_path=f"tiny:{architecture}", dtype=TEST_DTYPE,
                             attn_implementation="sdpa", device=TEST_DEVICE)
            built[architecture] = spec.load_model()
        return built[architecture]

    return get


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (float32, CPU): ``(model, tokenizer)``."""
    from qpruning.models import ModelSpec

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return ModelSpec(name="smollm2_135m", name_or_path="embedded:smollm2_135m").load()


@pytest.fixture
def rng():
    """A fresh, seeded generator per test: every test draws its own random inputs."""
    return torch.Generator().manual_seed(1234)
