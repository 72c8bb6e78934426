"""Expert iteration (Auto-CEI): resampling, LoRA weight merging, a 1-round smoke test, exact resume, and
the curriculum environment under the GRPO trainer; tiny model + HF engine.

The tiny random model never answers a question nor says "I don't know", so the environment below judges
by a hash of the transcript: a reproducible mix of correct answers, wrong ones and refusals, which makes
the fine-tuning set non-empty and the curriculum move."""

import json
import random
import zlib

import pytest
import torch
from safetensors.torch import load_file

from environments.curriculum_ei import CurriculumEI
from rewards.idk import Judgement
from rlreason.config import load_config
from rlreason.models import resolve_model
from rlreason.registry import ENVIRONMENTS, ConfigError
from rlreason.trainer.expert_iteration import engine_weights, resample, train


@ENVIRONMENTS.register("_scripted_ei")
class ScriptedEI(CurriculumEI):
    def judge(self, completion, example):
        h = zlib.crc32(completion.encode())
        kind = h % 3  # 0 refused, 1 correct, 2 wrong
        return Judgement(kind == 1, kind == 0, (h // 3) % 4, "scripted")


TINY = [
    "algorithm=expert_iteration", "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf",
    "rollout.max_model_len=256",
    "data.train={source: reasoning_gym, task: basic_arithmetic, size: 40, seed: 1, difficulty: {min_terms: 2, "
    "max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+']}}",
    "data.eval_size=4", "eval.max_problems=4", "eval.k=2",
    "env.name=_scripted_ei", "env.args={style: raw, max_tokens: 5, max_rounds_per_stage: 1}",
    "rewards=[{name: idk}]",
    "ei.questions_per_round=3", "ei.samples_per_question=3", "ei.batch_size=4",
    "trainer.micro_batch_size=4", "trainer.lr=1e-3", "trainer.checkpoint_every=1",
    "logging.wandb=false", "logging.progress=false",
]


def cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"output_dir={tmp_path}/run", *extra])


def test_resample_keeps_every_original_and_draws_by_exp_r_over_t():
    rewards = [1.0, 0.0, -1.0, 0.5, 0.5]
    T, n_draws = 0.5, 40_000
    idx = resample(rewards, T, n_draws, random.Random(0))
    assert idx[:5] == [0, 1, 2, 3, 4] and len(idx) == 5 + n_draws  # the originals, each once, first
    # P(i) = exp(R_i / T) / sum: exp(2), exp(0), exp(-2), exp(1), exp(1) over their sum 16.9849
    z = sum(torch.tensor(rewards).div(T).exp().tolist())
    for i, r in enumerate(rewards):
        p = float(torch.tensor(r / T).exp()) / z
        freq = idx[5:].count(i) / n_draws
        sigma = (p * (1 - p) / n_draws) ** 0.5
        assert abs(freq - p) < 5 * sigma + 1e-4, (i, freq, p)
    # a lower T concentrates the draws on the best answer
    sharp = resample(rewards, 0.05, 1000, random.Random(0))[5:]
    assert sharp.count(0) > 990
    assert resample([], 1.0, 10, random.Random(0)) == []
    assert resample([0.3, 0.3], 1.0, 0, random.Random(0)) == [0, 1]


def test_engine_weights_merge_lora_into_base_names():
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    path = resolve_model("tiny-random", dtype="fp32")
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    lora = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # B starts at 0 (LoRA is a no-op); make it do something
    merged = dict(engine_weights(lora))
    assert set(merged) == set(base.state_dict())
    q = "model.layers.0.self_attn.q_proj"
    A = lora.get_submodule(q).lora_A["default"].weight
    B = lora.get_submodule(q).lora_B["default"].weight
    assert torch.allclose(merged[q + ".weight"], base.state_dict()[q + ".weight"] + (8 / 4) * B @ A, atol=1e-6)
    base.load_state_dict(merged)  # a plain model with the merged weights computes what the LoRA model does
    x = torch.tensor([[1, 5, 9, 200, 7]])
    assert torch.allclose(base(x).logits, lora(x).logits, atol=1e-4)


def rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_one_round_smoke(tmp_path):
    summary = train(cfg(tmp_path, "ei.rounds=1"))
    run = tmp_path / "run"
    m = rows(run / "metrics.jsonl")
    assert m[0]["step"] == 0 and "eval/precision" in m[0] and m[0]["ei/temperature"] >= 0.05
    r1 = next(r for r in m if r["step"] == 1 and "reward/total" in r)
    p = f"env/{ScriptedEI.name}/"
    for k in ("accuracy", "precision", "refusal_rate", "f", "steps_before_refusal", "c1", "c2", "stage"):
        assert p + k in r1, k
    for k in ("loss/sft", "loss/grad_norm", "ei/sft_rows", "ei/originals_kept", "reward/idk", "time/update"):
        assert k in r1, k
    assert r1["ei/sft_rows"] >= r1["ei/originals_kept"] > 0
    assert r1[p + "stage"] == 1.0  # max_rounds_per_stage = 1: the round ended a stage
    assert m[-1]["step"] == 1 and "eval/refusal_rate" in m[-1]  # final held-out measurement
    assert "initial (held-out)" in summary and "c1 over stages" in summary
    assert (run / "precision_refusal.png").stat().st_size > 1000
    init = load_file(resolve_model("tiny-random", dtype="fp32") + "/model.safetensors")
    after = load_file(str(run / "checkpoints/step_000001/model.safetensors"))
    assert any(not torch.equal(init[k], after[k]) for k in init if k in after)  # it trained


def test_resume_continues_exactly(tmp_path):
    """2 rounds straight == 1 round, stop, --resume, 1 more round (weights, curriculum, metrics)."""
    train(cfg(tmp_path / "a", "ei.rounds=2"))
    train(cfg(tmp_path / "b", "ei.rounds=1"))
    train(cfg(tmp_path / "b", "ei.rounds=2"), resume=True)
    ckpt = "run/checkpoints/step_000002"
    wa, wb = load_file(str(tmp_path / "a" / ckpt / "model.safetensors")), load_file(str(tmp_path / "b" / ckpt / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = json.loads((tmp_path / "a" / ckpt / "state.json").read_text())
    sb = json.loads((tmp_path / "b" / ckpt / "state.json").read_text())
    assert sa["env"] == sb["env"] and sa["ei"] == sb["ei"] and sa["env"]["curriculum"]["stage"] == 2
    ra = [r["reward/total"] for r in rows(tmp_path / "a/run/metrics.jsonl") if "reward/total" in r]
    rb = [r["reward/total"] for r in rows(tmp_path / "b/run/metrics.jsonl") if "reward/total" in r]
    assert ra == rb and len(ra) == 2
    w1 = load_file(str(tmp_path / "b/run/checkpoints/step_000001/model.safetensors"))
    assert any(not torch.equal(w1[k], wb[k]) for k in wb)  # the resumed round did train


def test_lora_round_trains_only_the_adapters(tmp_path):
    train(cfg(tmp_path, "ei.rounds=1", "ei.lora_rank=4", "trainer.lr=1e-2"))
    init = load_file(resolve_model("tiny-random", dtype="fp32") + "/model.safetensors")
    ck = load_file(str(tmp_path / "run/checkpoints/step_000001/model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    assert torch.equal(ck[q + ".base_layer.weight"], init[q + ".weight"])  # the base is frozen
    assert ck[q + ".lora_B.default.weight"].abs().sum() > 0  # B moved off its zero init


def test_curriculum_env_under_the_grpo_trainer(tmp_path):
    """The RL variant: the GRPO trainer calls on_step_end after each step; step 1 initialises c1, c2,
    and with one round per stage each later step ends a stage."""
    from rlreason.trainer.grpo import train as grpo_train
    grpo_train(cfg(tmp_path, "algorithm=grpo", "trainer.steps=2", "trainer.prompts_per_step=3",
                   "trainer.samples_per_prompt=3"))
    m = [r for r in rows(tmp_path / "run/metrics.jsonl") if "reward/total" in r]
    p = f"env/{ScriptedEI.name}/"
    assert [r[p + "stage"] for r in m] == [0.0, 1.0]
    assert m[0][p + "c1"] is not None and m[1][p + "c2"] == m[0][p + "c2"]
    state = json.loads((tmp_path / "run/checkpoints/step_000002/state.json").read_text())
    assert state["env"]["curriculum"]["history"][0]["event"] == "init"


def test_config_errors_before_anything_loads(tmp_path):
    with pytest.raises(ConfigError, match="env.name: .*curriculum_ei"):
        train(cfg(tmp_path, "env.name=single_turn", "env.args={style: raw}"))
    with pytest.raises(ConfigError, match="data.eval_size"):
        train(cfg(tmp_path, "data.eval_size=0"))
    with pytest.raises(ConfigError, match="ei.samples_per_question"):
        train(cfg(tmp_path, "ei.samples_per_question=0"))
