"""Checkpoints as Hugging Face model directories: a trained checkpoint loads in transformers as is, `rlreason
export` writes a clean directory (LoRA merged) whose logits equal the trained weights', bad input is a
one-line exit 2; (slow) the real vLLM engine loads an exported directory."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.cli import main
from rlreason.export import export_checkpoint, merge_lora
from rlreason.trainer.checkpoint import save_checkpoint

IDS = torch.tensor([[1, 450, 3921, 28, 17, 905, 2], [5, 77, 1200, 8, 31, 9, 640]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The final checkpoint of a one-step GRPO run of the tiny model (HF engine, a large lr so it moves)."""
    from rlreason.config import load_config
    from rlreason.trainer.loop import train
    root = tmp_path_factory.mktemp("run")
    train(load_config(None, [
        "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf", "rollout.max_model_len=256",
        "data.train={source: reasoning_gym, task: basic_arithmetic, size: 12, seed: 1}", "data.eval_size=2",
        "env.args.max_tokens=6", "trainer.prompts_per_step=2", "trainer.samples_per_prompt=3", "trainer.steps=1",
        "trainer.lr=1e-2", "algo.entropy_coef=0.5", "rewards=[{name: boxed_format, weight: 1.0}]",
        "logging.wandb=false", "logging.progress=false", f"output_dir={root}/run"]))
    return root / "run/checkpoints/step_000001"


def trained_reference(ckpt, base_dir):
    """The trained weights, put into the base model by hand (not through the checkpoint's config)."""
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(load_file(str(ckpt / "model.safetensors")), strict=False)
    assert not unexpected and not missing
    return model.eval()


@torch.no_grad()
def logits(model):
    return model(IDS).logits.float()


def test_final_checkpoint_is_a_model_directory(trained, tiny_model_dir):
    for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        assert (trained / f).exists(), f
    ref = trained_reference(trained, tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert not torch.allclose(logits(base), logits(ref))  # the step trained
    direct = AutoModelForCausalLM.from_pretrained(trained).eval()
    assert torch.allclose(logits(direct), logits(ref), atol=1e-5)
    assert AutoTokenizer.from_pretrained(trained).encode("2 + 3") == AutoTokenizer.from_pretrained(
        tiny_model_dir).encode("2 + 3")


def test_export_loads_in_transformers_with_the_trained_logits(trained, tmp_path, capsys, tiny_model_dir):
    out = tmp_path / "hf"
    assert main(["export", "--run", str(trained.parent.parent), "--out", str(out)]) == 0  # its latest checkpoint
    assert "wrote a Hugging Face model directory" in capsys.readouterr().out
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= names
    assert not names & {"trainer.pt", "state.json"}
    assert "lm_head.weight" not in load_file(str(out / "model.safetensors"))  # tied: stored once
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.dtype == torch.float32 and json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert torch.allclose(logits(model), logits(trained_reference(trained, tiny_model_dir)), atol=1e-5)
    tok_out, tok_ckpt = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(trained)
    assert tok_out.decode([450, 3921]) == tok_ckpt.decode([450, 3921])

    half = export_checkpoint(trained, tmp_path / "bf16", dtype="bf16")
    m16 = AutoModelForCausalLM.from_pretrained(half).eval()
    assert m16.dtype == torch.bfloat16
    assert (logits(m16) - logits(trained_reference(trained, tiny_model_dir))).abs().max() < 0.05


@pytest.mark.parametrize("rslora", [False, True])
def test_lora_checkpoint_exports_merged(tmp_path, rslora, tiny_model_dir):
    """A peft LoRA model (adapters with non-zero B, as after training) saved by the checkpoint function:
    the exported plain model computes what peft's adapted forward computes."""
    from peft import LoraConfig, inject_adapter_in_model
    d = tiny_model_dir
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=12, lora_dropout=0.0, target_modules="all-linear",
                                       use_rslora=rslora), model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    model.eval()
    ckpt = save_checkpoint(tmp_path / "ckpts", 3, model=model, torch_state={}, state={}, keep=1, tokenizer=tok)
    assert (ckpt / "adapter_config.json").exists()
    out = export_checkpoint(ckpt, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    base = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert not torch.allclose(logits(base), logits(model), atol=1e-3)  # the adapters matter
    assert torch.allclose(logits(merged), logits(model), atol=1e-4)


def test_merge_lora_by_hand():
    """W' = W + (alpha / r) B A on literal numbers (r = 1, scale 2)."""
    t = {"q.base_layer.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "q.base_layer.bias": torch.tensor([0.5, 0.5]),
         "q.lora_A.default.weight": torch.tensor([[1.0, -1.0]]),
         "q.lora_B.default.weight": torch.tensor([[2.0], [0.5]]),
         "norm.weight": torch.tensor([1.0, 1.0])}
    out = merge_lora(t, 2.0)
    assert set(out) == {"q.weight", "q.bias", "norm.weight"}
    assert torch.equal(out["q.weight"], torch.tensor([[5.0, -2.0], [4.0, 3.0]]))
    assert torch.equal(out["q.bias"], t["q.base_layer.bias"])


def _err(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("rlreason export: ")
    return err


def test_bad_input_is_one_line_exit_2(trained, tmp_path, capsys):
    assert "no such directory" in _err(capsys, ["export", "--checkpoint", str(tmp_path / "nope"),
                                                "--out", str(tmp_path / "o")])
    (tmp_path / "empty").mkdir()
    assert "not an rlreason checkpoint" in _err(capsys, ["export", "--checkpoint", str(tmp_path / "empty"),
                                                         "--out", str(tmp_path / "o")])
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("keep me")
    assert "--out" in _err(capsys, ["export", "--checkpoint", str(trained), "--out", str(full)])
    assert (full / "x.txt").read_text() == "keep me" and len(list(full.iterdir())) == 1
    # a checkpoint without config files (older runs) needs --model, which then works
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes())
    assert "--model" in _err(capsys, ["export", "--checkpoint", str(old), "--out", str(tmp_path / "o")])
    assert main(["export", "--checkpoint", str(old), "--out", str(tmp_path / "o2"), "--model", "tiny-random"]) == 0
    capsys.readouterr()
    assert "no checkpoint" in _err(capsys, ["export", "--run", str(tmp_path), "--out", str(tmp_path / "o")])
    # a damaged checkpoint (its checksums no longer match)
    torn = tmp_path / "torn"
    torn.mkdir()
    for f in trained.iterdir():
        (torn / f.name).write_bytes(f.read_bytes())
    (torn / "config.json").write_text((trained / "config.json").read_text().replace("64", "65", 1))
    assert "config.json" in _err(capsys, ["export", "--checkpoint", str(torn), "--out", str(tmp_path / "o4")])
    # weights of another architecture
    (tmp_path / "o3").mkdir()
    bad = tmp_path / "bad"
    bad.mkdir()
    from safetensors.torch import save_file
    save_file({"model.embed_tokens.weight": torch.zeros(10, 4)}, str(bad / "model.safetensors"))
    assert "does not match" in _err(capsys, ["export", "--checkpoint", str(bad), "--out", str(tmp_path / "o3"),
                                             "--model", "tiny-random"])


@pytest.mark.slow
def test_vllm_engine_loads_an_exported_checkpoint_and_the_checkpoint_itself(trained, tmp_path, tiny_model_dir):
    """The real vLLM engine starts from the exported directory and from the checkpoint as it is; its sampling
    logprobs agree with the trained weights' forward (bf16 engine vs fp32 reference)."""
    from rlreason.rollout import SamplingConfig, make_engine
    ref_model = trained_reference(trained, tiny_model_dir)
    for model_dir in (export_checkpoint(trained, tmp_path / "hf"), trained):
        tok = AutoTokenizer.from_pretrained(model_dir)
        eng = make_engine("vllm", model_dir=str(model_dir), model=None, tokenizer=tok, sampling=SamplingConfig(1.0),
                          dtype="bf16", max_model_len=256, kv_cache_gb=0.25, gpu_memory_utilization=0.3,
                          enable_prefix_caching=False, seed=0)
        try:
            p = tok.encode("What is 2 + 3? Put the final answer in \\boxed{}.")
            c = eng.generate_batch([p], n=1, max_tokens=16, seed=1)[0][0]
            assert len(c.token_ids) >= 1
            with torch.no_grad():
                lg = ref_model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1:-1].float()
            ref = torch.log_softmax(lg, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            assert (ref - torch.tensor(c.logprobs)).abs().mean() < 0.1, model_dir
        finally:
            eng.close()
