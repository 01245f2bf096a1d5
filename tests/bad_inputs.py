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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "qpruning: error: "
LOADING_MARKER = "loading model"
TINY = ["model=tiny_llama"]
FAST_NIAH = ["benchmark.lengths=[600]", "benchmark.depths=[50]"]

ALLOCATION_OK_HEAD = "name: test\nbudget: 0.03125\nlayers:\n"
LONGBENCH_RECORD = '{"input": "q", "context": "c", "answers": ["a"], "_id": "1", "length": 10, "all_classes": null}\n'


@dataclass(frozen=True)
class Case:
    """One bad input: ``app`` + ``args`` (``{tmp}`` is the case's folder), ``files`` written there first."""

    id: str
    app: str
    args: tuple[str, ...]
    mentions: str
    files: dict[str, str] = field(default_factory=dict)
    subprocess: bool = False  # also run as a real command by the test

    def command_args(self, tmp: Path) -> list[str]:
        args = [a.replace("{tmp}", str(tmp)) for a in self.args]
        if self.app in ("run", "optimize"):
            args.append(f"output_root={tmp / 'outputs'}")
        return args

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


CASES: list[Case] = [
    # -- numbers: type and range -------------------------------------------------------------------------------
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
    # -- layer-wise overrides ----------------------------------------------------------------------------------
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
    # -- names and keys ----------------------------------------------------------------------------------------
    run_case("pruner-name", "pruner=tova", mentions="pruner", sub=True),
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
    # -- component parameters ----------------------------------------------------------------------------------
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
    # -- sweeps --------------------------------------------------------------------------------------------------
    run_case("sweep-one-bad-bits", "-m", "bits=4,3", mentions="bits", sub=True),
    run_case("sweep-one-bad-budget", "-m", "budget=0.5,0", mentions="budget"),
    run_case("sweep-batch-decode-text", "-m", "bits=4,8", "hydra.launcher.batch_decode=maybe",
             mentions="batch_decode"),
    run_case("sweep-batch-decode-number", "-m", "bits=4,8", "hydra.launcher.batch_decode=1", mentions="batch_decode"),
    # -- allocation files ----------------------------------------------------------------------------------------
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
    # -- data files (found after the configuration checks, before the model) ---------------------------------------
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
    # -- qpruning optimize ---------------------------------------------------------------------------------------
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
    # -- python -m qpruning.report -------------------------------------------------------------------------------
    Case("report-missing", "report", ("{tmp}/nothing", "--out", "{tmp}/report"), "nothing", subprocess=True),
    Case("report-empty", "report", ("{tmp}/empty", "--out", "{tmp}/report"), "empty", {"empty/README": "x"}),
]


@dataclass
class Outcome:
    code: int | None
    stderr: str
    stdout: str = ""
    model_loaded: bool = False

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


def run_in_process(case: Case, tmp: Path) -> Outcome:
    """``case`` through :func:`qpruning.cli.main` in this process, loading no model (a tripwire)."""
    from qpruning.cli import main
    from qpruning.models import ModelSpec

    write_files(case, tmp)

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
    return Outcome(code, err.getvalue(), out.getvalue(), loaded)


def run_subprocess(case: Case, tmp: Path, timeout: float = 300) -> Outcome:
    """``case`` as the real command, in a fresh process."""
    write_files(case, tmp)
    head = {
        "run": [sys.executable, "run.py"],
        "optimize": [sys.executable, "-m", "qpruning.cli", "optimize"],
        "report": [sys.executable, "-m", "qpruning.report"],
    }[case.app]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    for name in ("QPRUNING_DEBUG", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    proc = subprocess.run([*head, *case.command_args(tmp)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    loaded = LOADING_MARKER in proc.stdout or LOADING_MARKER in proc.stderr
    return Outcome(proc.returncode, proc.stderr, proc.stdout, loaded)
