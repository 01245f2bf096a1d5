"""The table of bad inputs (issue 13) and two ways to run one: in this process or as a real command.

Each :class:`Case` is a command line (``run``: ``python run.py``, ``optimize``: ``qpruning optimize``,
``report``: ``python -m qpruning.report``), the files it needs, and a word the one-line message must contain
(the key or file that was wrong). Used by ``tests/test_bad_inputs.py`` and ``scripts/bad_inputs_table.py``.

In this process (:func:`run_in_process`), the command goes through the same entry as the real one
(:func:`qpruning.cli.main`: preflight, then Hydra's main and the task), with :meth:`ModelSpec.load` replaced by
a tripwire: a case that got as far as loading a model raises :class:`ModelLoaded`. As a command
(:func:`run_subprocess`), nothing is replaced: the model's ``loading model`` log line must be absent.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "qpruning: error: "
LOADING_MARKER = "loading model"
TINY = ["model=tiny_llama"]
FAST_NIAH = ["benchmark.lengths=[600]", "benchmark.depths=[50]"]

ALLOCATION_OK_HEAD = "name: test\nbudget: 0.03125\nlayers:\n"
LONGBENCH_RECORD = '{"input": "q", "context": "c", "answers": ["a"], "_id": "1", "length": 10, "all_classes": null}\n'
LONGBENCH_QASPER = ("benchmark=longbench_small", "benchmark.datasets=[qasper]", "benchmark.data_dir={tmp}/lb")
RULER_QA = ("benchmark=ruler_small", "benchmark.tasks=[qa_1]", "benchmark.num_samples=1", "benchmark.qa_data_dir={tmp}/qa")
SQUAD_NUMBER = ('{"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "c", "qas": '
                '[{"id": "q", "question": 5, "answers": [{"text": "a", "answer_start": 0}], "is_impossible": false}]}]}]}')
MODEL_CONFIG = '{"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2}'
ALLOCATION_OK = ALLOCATION_OK_HEAD + "  - {layers: 0-3, bits: 4, tokens: 256}\n"


@dataclass(frozen=True)
class Case:
    """One bad input: ``app`` + ``args`` (``{tmp}`` is the case's folder), ``files`` written there first."""

    id: str
    app: str
    args: tuple[str, ...]
    mentions: str
    files: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False  # also run as a real command by the test
    group: str = ""  # its class of mistake (a key of GROUPS)

    def command_args(self, tmp: Path) -> list[str]:
        args = [a.replace("{tmp}", str(tmp)) for a in self.args]
        if self.app in ("run", "optimize") and not any(a.startswith("output_root=") for a in args):
            args.append(f"output_root={tmp / 'outputs'}")
        return args

    def output_root(self, tmp: Path) -> Path:
        """Where the case's runs go: its own ``output_root=``, else ``tmp/outputs``."""
        roots = [a.split("=", 1)[1] for a in self.command_args(tmp) if a.startswith("output_root=")]
        return Path(roots[-1]) if roots and self.app != "report" else tmp / "outputs"

    def command(self) -> str:
        head = {"run": "python run.py", "optimize": "qpruning optimize", "report": "python -m qpruning.report"}
        return " ".join([head[self.app], *self.args])


def run_case(id_: str, *args: str, mentions: str, files: dict[str, str] | None = None, sub: bool = False) -> Case:
    return Case(id_, "run", (*TINY, *args), mentions, files or {}, sub)


def optimize_case(id_: str, *args: str, mentions: str, sub: bool = False) -> Case:
    groups = () if any(a.startswith("groups=") for a in args) else ("groups=2",)  # the tiny model has 4 layers
    return Case(id_, "optimize", (*TINY, *groups, *args), mentions, {}, sub)


def _alloc(*groups: str) -> str:
    return ALLOCATION_OK_HEAD + "".join(f"  - {g}\n" for g in groups)


GROUPS: dict[str, list[Case]] = {
    "Numbers: type and range": [
        run_case("bits-3", "bits=3", mentions="bits"),
        run_case("bits-float", "bits=4.0", mentions="bits=4.0", sub=True),
        run_case("bits-text", "bits=abc", mentions="bits"),
        run_case("bits-bool", "bits=true", mentions="bits"),
        run_case("bits-32", "bits=32", mentions="bits"),
        run_case("group-48", "group_size=48", mentions="group_size"),
        run_case("group-float", "group_size=64.0", mentions="group_size=64.0"),
        run_case("group-vs-head-dim", "+model.tiny.head_dim=64", "group_size=128", mentions="group_size"),
        run_case("tokens-float", "tokens=64.5", mentions="tokens=64.5"),
        run_case("tokens-text", "tokens=abc", mentions="tokens"),
        run_case("tokens-zero", "tokens=0", mentions="tokens"),
        run_case("tokens-negative", "tokens=-5", mentions="tokens"),
        run_case("tokens-and-budget", "tokens=512", "budget=0.0625", mentions="tokens"),
        run_case("tokens-below-window", "tokens=16", mentions="tokens"),
        run_case("budget-zero", "budget=0", mentions="budget"),
        run_case("budget-text", "budget=abc", mentions="budget"),
        run_case("budget-negative", "budget=-0.1", mentions="budget"),
        run_case("budget-above-one", "budget=1.5", mentions="budget"),
        run_case("budget-nan", "budget=nan", mentions="budget"),
        run_case("budget-null", "budget=null", mentions="budget"),
        run_case("budget-tiny", "budget=0.0001", mentions="budget"),
        run_case("budget-mode", "budget_mode=fuzzy", mentions="budget_mode"),
        run_case("seed-text", "seed=abc", mentions="seed"),
        run_case("seed-negative", "seed=-1", mentions="seed"),
        run_case("seed-float", "seed=1.5", mentions="seed"),
        run_case("limit-negative", "limit=-1", mentions="limit"),
        run_case("limit-zero", "limit=0", mentions="limit"),
        run_case("limit-float", "limit=1.5", mentions="limit"),
        run_case("limit-text", "limit=abc", mentions="limit"),
        run_case("full-cache-negative", "full_cache_tokens=-1", mentions="full_cache_tokens"),
        run_case("full-cache-zero", "full_cache_tokens=0", mentions="full_cache_tokens"),
        run_case("full-cache-float", "full_cache_tokens=1.5", mentions="full_cache_tokens"),
        run_case("storage-dtype", "storage_dtype=int8", mentions="storage_dtype"),
        run_case("kernel", "kernel=maybe", mentions="kernel"),
        run_case("seed-huge", "seed=99999999999999999999", mentions="seed"),
        run_case("seed-above-32-bits", "seed=4294967296", mentions="seed"),
        run_case("tokens-scientific", "tokens=1e3", mentions="tokens"),
        run_case("limit-scientific", "limit=1e2", mentions="limit"),
        run_case("full-cache-text", "full_cache_tokens=big", mentions="full_cache_tokens"),
        run_case("default-budget-text", "tokens=128", "default_budget=abc", mentions="default_budget"),
        run_case("default-budget-zero", "tokens=128", "default_budget=0", mentions="default_budget"),
        run_case("bits-mapping", "bits={a: 1}", mentions="bits"),
        run_case("paper-sinks-float", "compat=paper", "paper_sinks=2.5", mentions="paper_sinks"),
        run_case("sliding-unknown", "+sliding=drop", mentions="sliding"),
    ],
    "Layer-wise overrides": [
        run_case("layers-letters", "layers=[{layers: a-b, bits: 16}]", mentions="a-b", sub=True),
        run_case("layers-overlap", "budget=0.0625", "layers=[{layers: 0-2, bits: 16}, {layers: 2-3, bits: 8}]",
                 mentions="overlap"),
        run_case("layers-reversed", "layers=[{layers: 3-1, bits: 16}]", mentions="3-1"),
        run_case("layers-bits", "layers=[{layers: 0-1, bits: 3}]", mentions="bits"),
        run_case("layers-bits-float", "layers=[{layers: 0-1, bits: 8.0}]", mentions="bits"),
        run_case("layers-unknown-key", "layers=[{layer: 0-1, bits: 16}]", mentions="layer"),
        run_case("layers-tokens-negative", "layers=[{layers: 0-1, bits: 16, tokens: -3}]", mentions="tokens"),
        run_case("layers-past-model", "layers=[{layers: 0-9, bits: 16}]", mentions="0-9"),
        run_case("layers-rotate-text", "layers=[{layers: 0-1, bits: 4, tokens: 64, rotate: maybe}]", mentions="rotate"),
        run_case("quant-hqq-rotate", "quant=hqq", "+quant.rotate=true", mentions="rotate"),
        run_case("quant-rotate-text", "+quant.rotate=maybe", mentions="rotate"),
        run_case("quant-rotate-head-dim", "quant=kivi_rot", "+model.tiny.head_dim=96", "group_size=32",
                 mentions="power of two"),
        run_case("compat-paper-rotate", "compat=paper", "quant=kivi_rot", mentions="compat=paper"),
        run_case("layers-not-list", "layers=5", mentions="layers"),
        run_case("layers-without-budget", "budget=null", "tokens=128", "layers=[{layers: 0-1, bits: 16}]",
                 mentions="budget"),
    ],
    "Names and keys": [
        run_case("pruner-name", "pruner=oracle", mentions="pruner", sub=True),
        run_case("quant-name", "quant=gptq", mentions="quant"),
        Case("model-name", "run", ("model=gpt5",), "model"),
        run_case("benchmark-name", "benchmark=mmlu", mentions="benchmark"),
        run_case("logger-name", "logger=tensorboard", mentions="logger"),
        run_case("logger-mode", "logger=wandb", "logger.mode=sometimes", mentions="logger.mode"),
        run_case("experiment-name", "experiment=fig99", mentions="experiment"),
        run_case("key-typo", "bitz=4", mentions="bitz"),
        run_case("nested-key-typo", "pruner.windw=3", mentions="pruner.windw"),
        run_case("new-pruner-param", "+pruner.windw=3", mentions="pruner.windw"),
        run_case("new-model-param", "+model.foo=1", mentions="model.foo"),
        run_case("new-benchmark-field", "+benchmark.foo=1", mentions="foo"),
        run_case("override-syntax", "bits=[4", mentions="[4"),
    ],
    "Pruner, quantizer, model and benchmark parameters": [
        run_case("window-negative", "pruner.window=-1", mentions="window"),
        run_case("window-float", "pruner.window=4.5", mentions="window"),
        run_case("snapkv-kernel-even", "pruner.kernel_size=4", mentions="kernel_size"),
        run_case("snapkv-pooling", "pruner.pooling=median", mentions="pooling"),
        run_case("pyramidkv-beta", "pruner=pyramidkv", "pruner.beta=0.5", mentions="beta"),
        run_case("residual-length", "quant.residual_length=100", mentions="residual_length"),
        run_case("outlier-fraction", "quant=kivi_outlier", "quant.outliers.fraction=2", mentions="fraction"),
        run_case("hqq-layout", "quant=hqq", "quant.layout=diagonal", mentions="layout"),
        run_case("model-dtype", "model.dtype=int4", mentions="model.dtype"),
        run_case("model-device", "model.device=tpu", mentions="model.device"),
        run_case("model-context", "model.context_window=-5", mentions="context_window"),
        run_case("model-tiny-key", "+model.tiny.layers=2", mentions="model.tiny"),
        Case("model-local-path", "run", ("model=llama32_1b", "model.local_path=/nonexistent/model"), "local_path"),
        run_case("niah-lengths-empty", "benchmark.lengths=[]", mentions="lengths"),
        run_case("niah-depths", "benchmark.depths=[150]", mentions="depths"),
        run_case("ruler-too-long", "benchmark=ruler", "benchmark.length=16384", mentions="16384"),
        run_case("ruler-task", "benchmark=ruler_small", "benchmark.tasks=[niah_nope]", mentions="niah_nope"),
        run_case("headkv-scores-missing", "pruner=headkv", "pruner.head_scores=/nonexistent/scores.json",
                 mentions="head_scores"),
        run_case("headkv-scores-corrupt", "pruner=headkv", "pruner.head_scores={tmp}/scores.json",
                 mentions="scores.json", files={"scores.json": '{"0-0": [1.0], "0-1": '}),
        run_case("snapkv-kernel-float", "pruner.kernel_size=3.5", mentions="kernel_size"),
        run_case("snapkv-pooling-number", "pruner.pooling=5", mentions="pooling"),
        run_case("window-text", "pruner.window=abc", mentions="window"),
        run_case("streamingllm-sinks-float", "pruner=streamingllm", "pruner.sinks=2.5", mentions="sinks"),
        run_case("adakv-floor-text", "pruner=adakv", "pruner.floor_alpha=high", mentions="floor_alpha"),
        run_case("adakv-normalize-number", "pruner=adakv", "pruner.normalize=1", mentions="normalize"),
        run_case("headkv-temperature-zero", "pruner=headkv", "pruner.temperature=0", mentions="temperature"),
        run_case("pyramidkv-beta-float", "pruner=pyramidkv", "pruner.beta=20.5", mentions="beta"),
        run_case("pyramidkv-short-prompt", "pruner=pyramidkv", "pruner.short_prompt=drop", mentions="short_prompt"),
        run_case("chunkkv-chunk-zero", "pruner=chunkkv", "pruner.chunk_size=0", mentions="chunk_size"),
        run_case("chunkkv-chunk-float", "pruner=chunkkv", "pruner.chunk_size=2.5", mentions="chunk_size"),
        run_case("tova-window-negative", "pruner=tova", "pruner.window=-2", mentions="window"),
        run_case("knorm-key-typo", "pruner=knorm", "pruner.kernel_size=3", mentions="kernel_size"),
        run_case("cake-gamma-negative", "pruner=cake", "pruner.gamma=-1", mentions="gamma"),
        run_case("cake-tau-zero", "pruner=cake", "pruner.tau1=0", mentions="tau1"),
        run_case("cake-kernel-even", "pruner=cake", "pruner.kernel_size=4", mentions="kernel_size"),
        run_case("tiers-shares-sum", "pruner=snapkv", "quant.tiers=[[0.5,8],[0.4,4]]", mentions="quant.tiers"),
        run_case("tiers-bits-three", "pruner=snapkv", "quant.tiers=[[0.5,8],[0.5,3]]", mentions="quant.tiers[1]"),
        run_case("tiers-not-pairs", "pruner=snapkv", "quant.tiers=[8,4]", mentions="quant.tiers"),
        run_case("tiers-without-pruner", "pruner=none", "quant.tiers=[[0.5,8],[0.5,2]]", mentions="quant.tiers"),
        run_case("residual-float", "quant.residual_length=64.0", mentions="residual_length"),
        run_case("outlier-threshold-text", "quant=kivi_outlier", "quant.outliers.threshold=big",
                 mentions="threshold"),
        run_case("outlier-key-typo", "quant=kivi_outlier", "+quant.outliers.fractoin=0.1",
                 mentions="quant.outliers.fraction"),
        run_case("kvquant-rotate", "quant=kvquant", "+quant.rotate=true", mentions="before RoPE"),
        run_case("kvquant-outliers-per", "quant=kvquant", "quant.outliers.per=row", mentions="quant.outliers.per"),
        run_case("kvquant-per-vector-threshold", "quant=kvquant", "quant.outliers.fraction=null",
                 "quant.outliers.threshold=6", mentions="per=vector"),
        run_case("kvquant-compat-paper", "quant=kvquant", "compat=paper", "pruner=snapkv", mentions="kvquant"),
        run_case("kvquant-rotated-layer", "quant=kvquant", "pruner=snapkv", 'layers=[{layers: "0-1", bits: 4, rotate: true}]',
                 mentions="quant.rotate"),
        run_case("hqq-optimize-text", "quant=hqq", "quant.optimize=maybe", mentions="optimize"),
        run_case("logger-probe-negative", "logger=wandb", "+logger.probe_timeout=-1", mentions="probe_timeout"),
        run_case("logger-tags-number", "logger=wandb", "logger.tags=5", mentions="tags"),
        run_case("logger-project-number", "logger=wandb", "logger.project=5", mentions="project"),
    ],
    "Benchmark parameters": [
        run_case("niah-length-step-float", "benchmark.length_step=100.5", mentions="length_step"),
        run_case("niah-length-step-zero", "benchmark.length_step=0", mentions="length_step"),
        run_case("niah-depth-intervals-float", "benchmark.depth_intervals=1.5", mentions="depth_intervals"),
        run_case("niah-depth-intervals-zero", "benchmark=niah", "benchmark.depth_intervals=0",
                 mentions="depth_intervals"),
        run_case("niah-lengths-float", "benchmark.lengths=[1000.7]", mentions="lengths[0]", sub=True),
        run_case("niah-lengths-string", 'benchmark.lengths=["400"]', mentions="lengths[0]"),
        run_case("niah-lengths-text", "benchmark.lengths=abc", mentions="lengths"),
        run_case("niah-lengths-nested", "benchmark.lengths=[[1000]]", mentions="lengths[0]"),
        run_case("niah-depths-text", "benchmark.depths=[middle]", mentions="depths[0]"),
        run_case("niah-max-new-zero", "benchmark.max_new_tokens=0", mentions="max_new_tokens"),
        run_case("niah-max-new-negative", "benchmark.max_new_tokens=-5", mentions="max_new_tokens"),
        run_case("niah-max-new-float", "benchmark.max_new_tokens=30.5", mentions="max_new_tokens"),
        run_case("niah-min-length-zero", "benchmark=niah", "benchmark.min_length=0", mentions="min_length"),
        run_case("niah-max-length-float", "benchmark=niah", "benchmark.max_length=2000.5", mentions="max_length"),
        run_case("niah-max-length-below-min", "benchmark=niah", "benchmark.max_length=900", mentions="max_length"),
        run_case("niah-buffer-negative", "+benchmark.final_context_length_buffer=-1",
                 mentions="final_context_length_buffer"),
        run_case("niah-template-placeholder", "+benchmark.template='{context} {question} {page}'",
                 mentions="template"),
        run_case("niah-chat-template-text", "benchmark.chat_template=maybe", mentions="chat_template"),
        run_case("niah-stop-at-newline-number", "+benchmark.stop_at_newline=1", mentions="stop_at_newline"),
        run_case("niah-needle-number", "+benchmark.needle=5", mentions="needle"),
        run_case("ruler-num-samples-zero", "benchmark=ruler_small", "benchmark.num_samples=0", mentions="num_samples"),
        run_case("ruler-num-samples-float", "benchmark=ruler_small", "benchmark.num_samples=1.5",
                 mentions="num_samples"),
        run_case("ruler-seed-negative", "benchmark=ruler_small", "benchmark.seed=-1", mentions="benchmark.seed"),
        run_case("ruler-seed-huge", "benchmark=ruler_small", "benchmark.seed=99999999999999999999",
                 mentions="benchmark.seed"),
        run_case("ruler-length-float", "benchmark=ruler_small", "benchmark.length=4096.5", mentions="length"),
        run_case("ruler-length-short", "benchmark=ruler_small", "benchmark.length=100", mentions="length"),
        run_case("ruler-max-new-zero", "benchmark=ruler_small", "+benchmark.max_new_tokens=0",
                 mentions="max_new_tokens"),
        run_case("ruler-tasks-number", "benchmark=ruler_small", "benchmark.tasks=5", mentions="tasks"),
        run_case("ruler-hub-timeout-zero", "benchmark=ruler_small", "+benchmark.hub_timeout=0", mentions="hub_timeout"),
        run_case("ruler-include-generation-text", "benchmark=ruler_small", "+benchmark.include_generation=maybe",
                 mentions="include_generation"),
        run_case("longbench-limit-float", "benchmark=longbench_small", "benchmark.limit=2.5", mentions="limit"),
        run_case("longbench-limit-text", "benchmark=longbench_small", "benchmark.limit=abc", mentions="limit"),
        run_case("longbench-limit-zero", "benchmark=longbench_small", "benchmark.limit=0", mentions="limit"),
        run_case("longbench-datasets-number", "benchmark=longbench_small", "benchmark.datasets=[5]",
                 mentions="datasets[0]"),
        run_case("longbench-chat-template-text", "benchmark=longbench_small", "benchmark.chat_template=sometimes",
                 mentions="chat_template"),
        run_case("longbench-hub-timeout-negative", "benchmark=longbench_small", "+benchmark.hub_timeout=-1",
                 mentions="hub_timeout"),
        run_case("crossentropy-length-float", "benchmark=crossentropy_small", "benchmark.length=1024.5",
                 mentions="length"),
        run_case("crossentropy-continuation-zero", "benchmark=crossentropy_small", "benchmark.continuation_tokens=0",
                 mentions="continuation_tokens"),
        run_case("crossentropy-source", "benchmark=crossentropy_small", "benchmark.source=wiki", mentions="source"),
        run_case("crossentropy-too-long", "benchmark=crossentropy_small", "benchmark.length=8192",
                 mentions="crossentropy"),
        run_case("crossentropy-samples-text", "benchmark=crossentropy_small", "benchmark.num_samples=many",
                 mentions="num_samples"),
    ],
    "Model loading: parameters, files and this machine": [
        run_case("model-device-cuda", "model.device=cuda", mentions="model.device=cuda", sub=True),
        run_case("model-attn-flash", "model.attn_implementation=flash_attention_2", mentions="flash"),
        run_case("model-attn-unknown", "model.attn_implementation=xformers", mentions="attn_implementation"),
        run_case("model-dtype-number", "model.dtype=16", mentions="model.dtype"),
        run_case("kernel-on-without-triton", "kernel=on", mentions="kernel=on"),
        run_case("model-folder-empty", "model.name_or_path={tmp}/m", mentions="config.json", sub=True,
                 files={"m/README.md": "not a model"}),
        run_case("model-folder-config-not-json", "model.name_or_path={tmp}/m", mentions="config",
                 files={"m/config.json": "not json", "m/model.safetensors": "", "m/tokenizer.json": "{}"}),
        run_case("model-folder-unknown-architecture", "model.name_or_path={tmp}/m", mentions="config",
                 files={"m/config.json": MODEL_CONFIG.replace("llama", "no_such_model"), "m/model.safetensors": "",
                        "m/tokenizer.json": "{}"}),
        run_case("model-folder-no-weights", "model.name_or_path={tmp}/m", mentions="weights",
                 files={"m/config.json": MODEL_CONFIG}),
        run_case("model-folder-no-tokenizer", "model.name_or_path={tmp}/m", mentions="tokenizer",
                 files={"m/config.json": MODEL_CONFIG, "m/model.safetensors": ""}),
        run_case("model-path-is-a-file", "model.name_or_path={tmp}/weights.bin", mentions="is a file",
                 files={"weights.bin": "x"}),
        run_case("model-path-missing", "model.name_or_path=./no/such/folder", mentions="does not exist"),
        run_case("model-gguf-missing", "model.name_or_path={tmp}/m", "+model.gguf_file=model.gguf",
                 mentions="gguf_file", files={"m/README.md": "x"}),
        run_case("model-name-or-path-empty", "model.name_or_path=''", mentions="name_or_path"),
        Case("model-local-path-file", "run", ("model=llama32_1b", "model.local_path={tmp}/afile"), "is a file",
             {"afile": "x"}),
        run_case("model-tiny-layers-zero", "+model.tiny.num_hidden_layers=0", mentions="num_hidden_layers"),
        run_case("model-tiny-head-dim-float", "+model.tiny.head_dim=64.5", mentions="head_dim"),
        run_case("model-tiny-architecture", "model.name_or_path=tiny:gpt2", mentions="tiny"),
        run_case("model-context-float", "model.context_window=8192.0", mentions="context_window"),
        run_case("model-seed-negative", "model.seed=-1", mentions="model.seed"),
        run_case("model-seed-huge", "model.seed=4294967296", mentions="model.seed"),
        run_case("model-chat-template-text", "model.chat_template=maybe", mentions="chat_template"),
        run_case("model-trust-remote-code-text", "+model.trust_remote_code=yes", mentions="trust_remote_code"),
    ],
    "Keys: unknown, added (+, ++) or removed (~)": [
        run_case("key-added-typo", "+limt=1", mentions="did you mean limit", sub=True),
        run_case("key-added-typo-plusplus", "++limt=1", mentions="did you mean limit"),
        run_case("key-added-tokens-typo", "+tokns=128", mentions="did you mean tokens"),
        run_case("key-added-unrelated", "+foo=1", mentions="foo"),
        run_case("key-added-existing", "+bits=4", mentions="bits"),
        run_case("nested-key-typo-hint", "benchmark.lenghts=[600]", mentions="did you mean benchmark.lengths"),
        run_case("new-benchmark-typo", "+benchmark.lenghts=[600]", mentions="did you mean benchmark.lengths"),
        run_case("new-model-typo", "+model.devcie=cpu", mentions="did you mean model.device"),
        run_case("new-quant-param", "+quant.optimize=true", mentions="quant.optimize"),
        run_case("new-logger-typo", "logger=wandb", "+logger.projet=x", mentions="did you mean logger.project"),
        run_case("key-removed-limit", "~limit", mentions="limit"),
        run_case("key-removed-output-root", "~output_root", mentions="output_root"),
        run_case("group-removed-pruner", "~pruner", mentions="pruner"),
        run_case("model-target", "model._target_=os.system", mentions="_target_"),
        run_case("benchmark-target", "benchmark._target_=qpruning.benchmarks.NeedleInAHaystack", mentions="_target_"),
    ],
    "Conflicts": [
        run_case("layers-with-allocation", "allocation={tmp}/allocation.yaml", "layers=[{layers: 0-1, bits: 16}]",
                 mentions="allocation", files={"allocation.yaml": ALLOCATION_OK}),
        run_case("layerwise-with-allocation", "+layerwise=16bit_0-3", "allocation={tmp}/allocation.yaml",
                 mentions="allocation", files={"allocation.yaml": ALLOCATION_OK}),
        run_case("budget-beside-allocation", "budget=0.0625", "allocation={tmp}/allocation.yaml",
                 mentions="budget=0.0625", sub=True, files={"allocation.yaml": ALLOCATION_OK}),
        run_case("tokens-beside-allocation", "tokens=128", "allocation={tmp}/allocation.yaml", mentions="tokens=128",
                 files={"allocation.yaml": ALLOCATION_OK}),
        run_case("allocation-empty", "allocation=''", mentions="allocation"),
        run_case("tokens-beyond-prompt", "tokens=100000000", mentions="longest prompt"),
        run_case("tokens-beyond-longest-cell", "tokens=4000", mentions="longest prompt"),
        run_case("layer-tokens-beyond-prompt", "layers=[{layers: 0-1, bits: 16, tokens: 9000}]",
                 mentions="longest prompt"),
        run_case("tokens-beyond-ruler-length", "benchmark=ruler_small", "tokens=5000", mentions="longest prompt"),
        run_case("context-beyond-positions", "model.context_window=16384", mentions="max_position_embeddings"),
        run_case("context-beyond-tiny-positions", "+model.tiny.max_position_embeddings=2048",
                 "benchmark.lengths=[1500]", mentions="max_position_embeddings"),
    ],
    "Paths: names that become folders, and the output root": [
        run_case("model-name-traversal", "model.name=../../../../x", mentions="model.name", sub=True),
        run_case("model-name-slash", "model.name=a/b", mentions="model.name"),
        run_case("model-name-dotdot", "model.name=..", mentions="model.name"),
        run_case("model-name-empty", "model.name=''", mentions="model.name"),
        run_case("layer-config-traversal", "layer_config=../../../../x", mentions="layer_config"),
        run_case("layer-config-slash", "layer_config=a/b", mentions="layer_config"),
        run_case("layer-config-too-long", "layer_config=" + "x" * 200, mentions="layer_config"),
        run_case("experiment-name-traversal", "-m", "bits=4,8", "experiment_name=../x", mentions="experiment_name"),
        run_case("experiment-name-absolute", "experiment_name=/tmp/x", mentions="experiment_name"),
        run_case("benchmark-name-traversal", "benchmark.name=../x", mentions="benchmark.name"),
        run_case("pruner-name-traversal", "pruner.name=../x", mentions="pruner.name"),
        run_case("run-name-traversal", "run_name=../x", mentions="run_name"),
        run_case("run-name-absolute", "run_name=/tmp/x", mentions="run_name"),
        run_case("output-root-unwritable", "output_root=/proc/qpruning-x", mentions="output_root", sub=True),
        run_case("output-root-under-a-file", "output_root={tmp}/afile/out", mentions="output_root",
                 files={"afile": "x"}),
        run_case("output-root-empty", "output_root=''", mentions="output_root"),
    ],
    "Sweeps (-m)": [
        run_case("sweep-one-bad-bits", "-m", "bits=4,3", mentions="bits", sub=True),
        run_case("sweep-one-bad-budget", "-m", "budget=0.5,0", mentions="budget"),
        run_case("sweep-batch-decode-text", "-m", "bits=4,8", "hydra.launcher.batch_decode=maybe",
                 mentions="batch_decode"),
        run_case("sweep-batch-decode-number", "-m", "bits=4,8", "hydra.launcher.batch_decode=1", mentions="batch_decode"),
        run_case("sweep-one-bad-lengths", "-m", "benchmark.lengths=[600],[600.5]", mentions="lengths[0]"),
        run_case("sweep-one-bad-device", "-m", "model.device=cpu,cuda", mentions="model.device"),
        run_case("sweep-one-bad-name", "-m", "model.name=a,../b", mentions="model.name"),
        run_case("sweep-one-added-typo", "-m", "bits=4,8", "+limt=1", mentions="limit"),
    ],
    "Allocation files": [
        run_case("allocation-missing", "allocation={tmp}/nope.yaml", mentions="nope.yaml"),
        run_case("allocation-yaml-syntax", "allocation={tmp}/allocation.yaml", mentions="allocation.yaml", sub=True,
                 files={"allocation.yaml": "name: x\nlayers:\n  - {layers: 0-3, bits: 4, tokens: 64\n  - oops: [\n"}),
        run_case("allocation-no-layers", "allocation={tmp}/allocation.yaml", mentions="allocation.yaml",
                 files={"allocation.yaml": "name: x\nbudget: 0.03\n"}),
        run_case("allocation-partial", "allocation={tmp}/allocation.yaml", mentions="2-3",
                 files={"allocation.yaml": _alloc("{layers: 0-1, bits: 4, tokens: 256}")}),
        run_case("allocation-overlap", "allocation={tmp}/allocation.yaml", mentions="overlap",
                 files={"allocation.yaml": _alloc("{layers: 0-2, bits: 4, tokens: 256}",
                                                  "{layers: 2-3, bits: 8, tokens: 128}")}),
        run_case("allocation-no-tokens", "allocation={tmp}/allocation.yaml", mentions="tokens",
                 files={"allocation.yaml": _alloc("{layers: 0-3, bits: 4}")}),
        run_case("allocation-bits", "allocation={tmp}/allocation.yaml", mentions="bits",
                 files={"allocation.yaml": _alloc("{layers: 0-3, bits: 5, tokens: 256}")}),
        run_case("allocation-binary", "allocation={tmp}/allocation.yaml", mentions="allocation.yaml",
                 files={"allocation.yaml": "\x00\x01\x02"}),
    ],
    "Data files (found after the configuration checks, before the model)": [
        run_case("longbench-no-data", "benchmark=longbench_small", "benchmark.datasets=[qasper]",
                 "benchmark.data_dir={tmp}/nothing", mentions="data_dir"),
        run_case("longbench-corrupt", "benchmark=longbench_small", "benchmark.datasets=[qasper]",
                 "benchmark.data_dir={tmp}/lb", mentions="qasper.jsonl", sub=True,
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD + '{"input": "q", "context": \n'}),
        run_case("longbench-empty", "benchmark=longbench_small", "benchmark.datasets=[qasper]",
                 "benchmark.data_dir={tmp}/lb", mentions="qasper.jsonl", files={"lb/qasper.jsonl": ""}),
        run_case("longbench-fields", "benchmark=longbench_small", "benchmark.datasets=[qasper]",
                 "benchmark.data_dir={tmp}/lb", mentions="qasper.jsonl", files={"lb/qasper.jsonl": '{"input": "q"}\n'}),
        run_case("longbench-dataset", "benchmark=longbench_small", "benchmark.datasets=[nope]", mentions="nope"),
        run_case("longbench-answers-number", *LONGBENCH_QASPER, mentions="answers",
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD.replace('["a"]', "5")}),
        run_case("longbench-answers-numbers", *LONGBENCH_QASPER, mentions="answers",
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD.replace('["a"]', "[1, 2]")}),
        run_case("longbench-context-list", *LONGBENCH_QASPER, mentions="context",
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD.replace('"context": "c"', '"context": ["c"]')}),
        run_case("longbench-id-null", *LONGBENCH_QASPER, mentions="_id",
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD.replace('"_id": "1"', '"_id": null')}),
        run_case("longbench-length-text", *LONGBENCH_QASPER, mentions="length",
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD.replace('"length": 10', '"length": "ten"')}),
        run_case("longbench-all-classes-number", *LONGBENCH_QASPER, mentions="all_classes",
                 files={"lb/qasper.jsonl": LONGBENCH_RECORD.replace('"all_classes": null', '"all_classes": 3')}),
        run_case("crossentropy-gov-report-types", "benchmark=crossentropy_small", "benchmark.source=gov_report",
                 "benchmark.data_dir={tmp}/lb", mentions="gov_report.jsonl",
                 files={"lb/gov_report.jsonl": LONGBENCH_RECORD.replace('"context": "c"', '"context": 5')}),
        run_case("ruler-qa-question-number", *RULER_QA, mentions="squad.json", files={"qa/squad.json": SQUAD_NUMBER}),
        run_case("ruler-qa-not-squad", *RULER_QA, mentions="squad.json", files={"qa/squad.json": "[]"}),
        run_case("ruler-qa-not-json", *RULER_QA, mentions="squad.json", files={"qa/squad.json": "{"}),
        run_case("headkv-scores-text", "pruner=headkv", "pruner.head_scores={tmp}/scores.json",
                 mentions="scores.json", files={"scores.json": '{"0-0": "high"}'}),
    ],
    "qpruning optimize": [
        optimize_case("opt-budget-text", "budget=abc", mentions="budget"),
        optimize_case("opt-budget-zero", "budget=0", mentions="budget"),
        optimize_case("opt-budget-null", "budget=null", mentions="budget"),
        optimize_case("opt-bits-choices-3", "bits_choices=[3]", mentions="bits_choices", sub=True),
        optimize_case("opt-bits-choices-empty", "bits_choices=[]", mentions="bits_choices"),
        optimize_case("opt-bits-choices-repeat", "bits_choices=[4,4]", mentions="bits_choices"),
        optimize_case("opt-bits-choices-scalar", "bits_choices=4", mentions="bits_choices"),
        optimize_case("opt-bits-choices-float", "bits_choices=[4.0,8]", mentions="bits_choices"),
        optimize_case("opt-bits-choices-16r", "bits_choices=[4,16r]", mentions="bits_choices"),
        optimize_case("opt-bits-choices-rotated-hqq", "quant=hqq", "bits_choices=[4,4r]", mentions="rotate"),
        optimize_case("opt-groups-zero", "groups=0", mentions="groups"),
        optimize_case("opt-groups-float", "groups=2.5", mentions="groups"),
        optimize_case("opt-groups-too-many", "groups=9", mentions="groups"),
        optimize_case("opt-max-evaluations-negative", "max_evaluations=-1", mentions="max_evaluations"),
        optimize_case("opt-max-evaluations-zero", "max_evaluations=0", mentions="max_evaluations"),
        optimize_case("opt-transfer-zero", "transfer_fraction=0", mentions="transfer_fraction"),
        optimize_case("opt-transfer-big", "transfer_fraction=1.5", mentions="transfer_fraction"),
        optimize_case("opt-seed", "seed=abc", mentions="seed"),
        optimize_case("opt-bits", "bits=3", mentions="bits"),
        optimize_case("opt-calibration-empty", "calibration=[]", mentions="calibration"),
        optimize_case("opt-calibration-name", "calibration=[{name: mmlu}]", mentions="mmlu"),
        optimize_case("opt-key-typo", "group=2", mentions="group"),
        optimize_case("opt-key-added", "+limt=1", mentions="limt"),
        optimize_case("opt-output-root-unwritable", "output_root=/proc/qpruning-x", mentions="output_root"),
        optimize_case("opt-model-name-traversal", "model.name=../../x", mentions="model.name"),
        optimize_case("opt-seed-huge", "seed=99999999999999999999", mentions="seed"),
        optimize_case("opt-groups-text", "groups=many", mentions="groups"),
        optimize_case("opt-model-device-cuda", "model.device=cuda", mentions="model.device"),
        optimize_case("opt-transfer-text", "transfer_fraction=abc", mentions="transfer_fraction"),
        optimize_case("opt-max-evaluations-float", "max_evaluations=2.5", mentions="max_evaluations"),
        optimize_case("opt-heldout-name", "heldout=[{name: mmlu}]", mentions="mmlu"),
        optimize_case("opt-calibration-lengths-float", "calibration=[{name: niah, fields: {lengths: [2000.5]}}]",
                      mentions="lengths[0]"),
        optimize_case("opt-search-unknown", "search=foo", mentions="search", sub=True),
        optimize_case("opt-search-number", "search=1", mentions="search"),
        optimize_case("opt-tier-bits-repeat", "search=tiers", "tier_bits=[8,8]", mentions="tier_bits"),
        optimize_case("opt-tier-bits-3", "search=tiers", "tier_bits=[8,3]", mentions="tier_bits"),
        optimize_case("opt-tier-bits-one", "search=tiers", "tier_bits=[4]", mentions="tier_bits"),
        optimize_case("opt-tier-bits-scalar", "search=tiers", "tier_bits=8", mentions="tier_bits"),
        optimize_case("opt-tier-bits-float", "search=tiers", "tier_bits=[8.0,4]", mentions="tier_bits"),
        optimize_case("opt-tier-step-grid", "search=tiers", "tier_step=0.3", mentions="tier_step", sub=True),
        optimize_case("opt-tier-step-zero", "search=tiers", "tier_step=0", mentions="tier_step"),
        optimize_case("opt-tier-step-text", "search=tiers", "tier_step=abc", mentions="tier_step"),
        optimize_case("opt-tier-step-fine", "search=tiers", "tier_step=0.001", mentions="tier_step"),
        optimize_case("opt-search-tiers-pruner-none", "search=tiers", "pruner=none", mentions="pruner=none"),
        optimize_case("opt-search-tiers-quant-tiers", "search=tiers", "quant.tiers=[[0.5,8],[0.5,2]]",
                      mentions="quant.tiers"),
        optimize_case("opt-search-tiers-budget-small", "search=tiers", "tier_bits=[16,8]", "budget=0.0039",
                      mentions="budget"),
    ],
    "python -m qpruning.report": [
        Case("report-missing", "report", ("{tmp}/nothing", "--out", "{tmp}/report"), "nothing", subprocess=True),
        Case("report-empty", "report", ("{tmp}/empty", "--out", "{tmp}/report"), "empty", {"empty/README": "x"}),
        Case("report-out-unwritable", "report", ("{tmp}/runs", "--out", "/proc/qpruning-report"), "--out",
             {"runs/one/metrics.json": "{}"}),
        Case("report-out-under-a-file", "report", ("{tmp}/runs", "--out", "{tmp}/afile/report"), "--out",
             {"runs/one/metrics.json": "{}", "afile": "x"}),
        Case("report-throughput-missing", "report", ("{tmp}/runs", "--out", "{tmp}/report", "--throughput",
                                                     "{tmp}/nope.csv"), "nope.csv", {"runs/one/metrics.json": "{}"}),
        Case("report-paper-missing", "report", ("{tmp}/runs", "--out", "{tmp}/report", "--paper", "{tmp}/nope"),
             "nope", {"runs/one/metrics.json": "{}"}),
    ],
}
"""The table, by class of mistake (its order is the order of results/reliability/bad_inputs.md)."""

CASES: list[Case] = [replace(case, group=group) for group, cases in GROUPS.items() for case in cases]


@dataclass
class Outcome:
    code: int | None
    stderr: str
    stdout: str = ""
    model_loaded: bool = False
    outside: list[str] = field(default_factory=list)  # files written in the case's folder outside its output root

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith(PREFIX)]

    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


class ModelLoaded(BaseException):
    """Raised by the tripwire in place of loading a model (a BaseException: nothing on the way catches it)."""


def write_files(case: Case, tmp: Path) -> None:
    for name, content in case.files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode("latin-1"))


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*")) if folder.is_dir() else set()


def written_outside(tmp: Path, before: set[Path], root: Path) -> list[str]:
    """What appeared in the case's folder ``tmp`` since ``before`` outside its output root ``root`` (the folders
    that lead to it aside)."""
    root = Path(os.path.abspath(root))
    inside = [root, *root.parents]
    return sorted(str(p.relative_to(tmp)) for p in files_under(tmp) - before
                  if p not in inside and root not in p.parents)


def run_in_process(case: Case, tmp: Path) -> Outcome:
    """``case`` through :func:`qpruning.cli.main` in this process, loading no model (a tripwire)."""
    from qpruning.cli import main
    from qpruning.models import ModelSpec

    write_files(case, tmp)
    before = files_under(tmp)

    def tripwire(self):
        raise ModelLoaded(self.name)

    err, out = io.StringIO(), io.StringIO()
    saved_load, saved_argv = ModelSpec.load, list(sys.argv)
    ModelSpec.load = tripwire
    code: int | None = 0
    loaded = False
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            main([case.app, *case.command_args(tmp)])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except ModelLoaded:
        loaded, code = True, None
    finally:
        ModelSpec.load = saved_load
        sys.argv = saved_argv
    return Outcome(code, err.getvalue(), out.getvalue(), loaded, written_outside(tmp, before, case.output_root(tmp)))


def run_subprocess(case: Case, tmp: Path, timeout: float = 300) -> Outcome:
    """``case`` as the real command, in a fresh process."""
    write_files(case, tmp)
    before = files_under(tmp)
    head = {
        "run": [sys.executable, "run.py"],
        "optimize": [sys.executable, "-m", "qpruning.cli", "optimize"],
        "report": [sys.executable, "-m", "qpruning.report"],
    }[case.app]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    for name in ("QPRUNING_DEBUG", "HYDRA_FULL_ERROR", "TRITON_INTERPRET"):  # kernel=on: no interpreter either
        env.pop(name, None)
    proc = subprocess.run([*head, *case.command_args(tmp)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    loaded = LOADING_MARKER in proc.stdout or LOADING_MARKER in proc.stderr
    return Outcome(proc.returncode, proc.stderr, proc.stdout, loaded,
                   written_outside(tmp, before, case.output_root(tmp)))
