"""Model resolution: pass-through, the cache's atomicity and locking, pinned hashes, the tiny model
(real tokenizer, loads in transformers) and, behind `slow`, the real SmolLM2 conversion."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from rlreason import models
from rlreason.models import (MARKER, SMOLLM2_GGUF_SHA256, cache_dir, ensure_built, list_models, prepare,
                             resolve_model, sha256_file, verified_file)
from rlreason.registry import ConfigError


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("RLREASON_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "rlreason"


def test_unknown_names_pass_through_unchanged(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert not (tmp_path / "models").exists()


def test_misspelt_known_name_raises(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    with pytest.raises(ConfigError, match="Did you mean 'smollm2-135m-instruct'"):
        resolve_model("smollm2-135m-instuct")


def test_bad_dtype_and_unknown_prepare_name_raise():
    with pytest.raises(ConfigError, match="model.dtype.*fp16.*bf16, fp32"):
        resolve_model("tiny-random", dtype="fp16")
    with pytest.raises(ConfigError, match="unknown model 'tiny-randm'.*Did you mean 'tiny-random'"):
        prepare("tiny-randm")


def test_list_models_describes_known_names(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    table = {m["name"]: m for m in list_models()}
    assert set(table) == {"smollm2-135m-instruct", "tiny-random", models.QWEN}
    assert all(m["description"] and m["dtypes"] == ["bf16", "fp32"] and m["cached"] == []
               for m in table.values())


def test_verified_file_names_file_expected_and_actual(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    actual = sha256_file(f)
    assert verified_file(f, actual, "x==1") == f
    with pytest.raises(RuntimeError) as e:
        verified_file(f, "0" * 64, "x==1")
    assert str(f) in str(e.value) and "0" * 64 in str(e.value) and actual in str(e.value)


def test_packaged_gguf_matches_pin():
    assert sha256_file(models.smollm2_gguf()) == SMOLLM2_GGUF_SHA256


# --- cache mechanics --------------------------------------------------------------------------------------

def _writer(calls: list[str], delay: float = 0.0):
    def build(target: Path, variant: str) -> None:
        calls.append(variant)
        time.sleep(delay)
        (target / "weights.txt").write_text(variant)
    return build


def test_failed_build_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))

    def broken(target: Path, variant: str) -> None:
        (target / "half.txt").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ensure_built("m", "fp32", "sha", broken)
    root = tmp_path / "models" / "m"
    assert sorted(p.name for p in root.iterdir()) == ["fp32.lock"]


def test_build_once_then_cached_and_rebuilt_when_source_changes(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    calls: list[str] = []
    path = ensure_built("m", "bf16", "sha-1", _writer(calls))
    assert path == tmp_path / "models" / "m" / "bf16"
    assert json.loads((path / MARKER).read_text())["source_sha256"] == "sha-1"
    ensure_built("m", "bf16", "sha-1", _writer(calls))
    assert calls == ["bf16"]
    ensure_built("m", "bf16", "sha-2", _writer(calls))
    assert calls == ["bf16", "bf16"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["bf16", "bf16.lock"]


def test_dir_without_marker_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    half = tmp_path / "models" / "m" / "fp32"
    half.mkdir(parents=True)
    (half / "junk").write_text("half-written")
    calls: list[str] = []
    path = ensure_built("m", "fp32", "sha", _writer(calls))
    assert calls == ["fp32"] and not (path / "junk").exists() and (path / "weights.txt").exists()


def test_concurrent_callers_build_once(monkeypatch, tmp_path):
    """flock is per open file description, so threads contend exactly like processes do."""
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    calls: list[str] = []
    out: list[Path] = []
    threads = [threading.Thread(target=lambda: out.append(ensure_built("m", "bf16", "s", _writer(calls, 0.3))))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["bf16"] and len(set(out)) == 1 and len(out) == 3


# --- tiny-random --------------------------------------------------------------------------------------------

def test_tiny_random_loads_with_smollm2_tokenizer():
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = resolve_model("tiny-random", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.intermediate_size) == (2, 64, 4, 2, 128)
    assert cfg.vocab_size == len(tok) == 49152 and model.dtype == torch.float32
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.generation_config.eos_token_id == [tok.eos_token_id, tok.pad_token_id]
    ids = tok.apply_chat_template([{"role": "user", "content": "2+3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert tok.decode(ids[0]).endswith("<|im_start|>assistant\n")
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)


def test_tiny_random_bf16_dtype():
    from transformers import AutoConfig
    assert AutoConfig.from_pretrained(resolve_model("tiny-random", dtype="bf16")).dtype == torch.bfloat16


def test_tiny_random_init_is_seeded(tmp_path):
    from safetensors.torch import load_file
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        models._build_tiny_random(tmp_path / name, "fp32")
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the real model ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_converts_and_answers():
    """Converts on first use (~30 s), then checks the dequantised weights behave like SmolLM2."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = resolve_model("smollm2-135m-instruct", dtype="fp32")
    assert (Path(path) / MARKER).exists()
    tok = AutoTokenizer.from_pretrained(path)
    text = "Hello, world! 12345 + 678 = \\boxed{13023}"
    ids = tok(text)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(tok("12345")["input_ids"]) == list("12345")  # digits split singly
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (2, 0, 1)
    model = AutoModelForCausalLM.from_pretrained(path)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert model(**prompt).logits.shape == (1, prompt["input_ids"].shape[1], 49152)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert tok.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True) == "2 + 3 = 5"
