"""Expert iteration (Auto-CEI): resampling, LoRA weight merging, a 1-round smoke test, exact resume, and
the curriculum environment under the GRPO trainer; tiny model + HF engine.

The tiny random model never answers a question nor says "I don't know", so the environment below judges
by a hash of the transcript: a reproducible mix of correct answers, wrong ones and refusals, which makes
the fine-tuning set non-empty and the curriculum move."""

import json
import math
import random
import zlib

import pytest
import torch
from safetensors.torch import load_file

from rlreason.config import load_config
from rlreason.environments.curriculum_ei import CurriculumEI
from rlreason.registry import ENVIRONMENTS, ConfigError
from rlreason.rewards.idk import Judgement
from rlreason.trainer import expert_iteration as EI
from rlreason.trainer.expert_iteration import engine_weights, fine_tuning_set, resample
from rlreason.trainer.loop import setup, train


class ScriptedEI(CurriculumEI):
    def judge(self, completion, example):
        h = zlib.crc32(completion.encode())
        kind = h % 3  # 0 refused, 1 correct, 2 wrong
        return Judgement(kind == 1, kind == 0, (h // 3) % 4, "scripted")


@pytest.fixture(autouse=True)
def _scripted_env(registered):
    registered(ENVIRONMENTS, "_scripted_ei", ScriptedEI)


TINY = [
    "algorithm=expert_iteration", "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf",
    "rollout.max_model_len=256",
    "data.train={source: reasoning_gym, task: basic_arithmetic, size: 40, seed: 1, difficulty: {min_terms: 2, "
    "max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+']}}",
    "data.eval_size=4", "eval.max_problems=4", "eval.k=2",
    # min_std: the hashed verdicts may give a single refusal at the first measurement (no sample std)
    "env.name=_scripted_ei", "env.args={style: raw, max_tokens: 5, max_rounds_per_stage: 1, min_std: 1.0}",
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


def test_fine_tuning_set_never_holds_a_wrong_answer():
    """Catches a dropped `R > -1` filter: wrong answers (R = -1) are never fine-tuned on, neither as
    originals nor as draws; every original with R > -1 is kept once, in order, before the draws."""
    rewards = [1.0, -1.0, 0.2, -1.0, -0.9, -1.0]
    idx = fine_tuning_set(rewards, 5.0, 3000, random.Random(0))  # T = 5: the -1s would be drawn often
    assert idx[:3] == [0, 2, 4] and all(rewards[i] > -1.0 for i in idx)
    assert len(idx) > 3 + 1000  # the draws of R > -1 are kept (~56% of them at T = 5)
    assert fine_tuning_set([-1.0, -1.0], 1.0, 50, random.Random(0)) == []


def _chi_square_upper(df):
    """A loose 99.99% quantile of chi-square(df) (Wilson-Hilferty with z = 3.72)."""
    z = 3.72
    return df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3


def test_a_round_fine_tunes_on_exp_r_over_t_draws_without_wrong_answers(tmp_path, monkeypatch):
    """Through train_round: the episodes handed to the fine-tuning rows are the originals with R > -1 and
    draws whose frequencies follow exp(R / T) with T = the run's temperature, for two different T
    (catches a round that ignores T, e.g. a hard-coded 1.0, or skips the R > -1 filter)."""
    captured, rolled = [], []
    run_groups = EI.run_groups
    monkeypatch.setattr(EI, "episodes_to_rows", lambda eps, adv, gid: captured.append(list(eps)) or [])
    monkeypatch.setattr(EI, "run_groups", lambda *a, **k: rolled.append(run_groups(*a, **k)) or rolled[-1])
    run = setup(cfg(tmp_path, "ei.samples_per_question=4", "ei.resample_factor=1500"))
    try:
        for T in (0.3, 2.0):
            captured.clear()
            rolled.clear()
            run.algorithm.temperature = T
            run.algorithm.step(run)
            ((groups, _),), (kept,) = rolled, captured
            episodes = [ep for g in groups for ep in g]
            rewards = [ep.reward for ep in episodes]
            # wrong answers, and at least two different values of R > -1 for T to weigh
            assert -1.0 in rewards and len({r for r in rewards if r > -1.0}) >= 2, rewards
            assert all(ep.reward > -1.0 for ep in kept)
            originals = [ep for ep in episodes if ep.reward > -1.0]
            assert [id(ep) for ep in kept[:len(originals)]] == [id(ep) for ep in originals]
            draws = kept[len(originals):]
            # P(i | R_i > -1) = exp(R_i / T) / sum over R_j > -1 of exp(R_j / T), per episode
            w = [math.exp(ep.reward / T) for ep in originals]
            counts = [sum(d is ep for d in draws) for ep in originals]
            n = len(draws)
            chi2 = sum((c - n * wi / sum(w)) ** 2 / (n * wi / sum(w)) for c, wi in zip(counts, w))
            assert chi2 < _chi_square_upper(len(originals) - 1), (T, chi2)
            # the same counts are far from what T = 1 would give
            w1 = [math.exp(ep.reward) for ep in originals]
            chi2_t1 = sum((c - n * wi / sum(w1)) ** 2 / (n * wi / sum(w1)) for c, wi in zip(counts, w1))
            assert chi2_t1 > 10 * _chi_square_upper(len(originals) - 1), (T, chi2_t1)
    finally:
        run.engine.close()


def test_engine_weights_merge_lora_into_base_names(tiny_model_dir):
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    path = tiny_model_dir
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


def test_one_round_smoke(tmp_path, tiny_model_dir):
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
    init = load_file(tiny_model_dir + "/model.safetensors")
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


def test_lora_round_trains_only_the_adapters(tmp_path, tiny_model_dir):
    train(cfg(tmp_path, "ei.rounds=1", "ei.lora_rank=4", "trainer.lr=1e-2"))
    init = load_file(tiny_model_dir + "/model.safetensors")
    ck = load_file(str(tmp_path / "run/checkpoints/step_000001/model.safetensors"))
    q = "model.layers.0.self_attn.q_proj"
    assert torch.equal(ck[q + ".base_layer.weight"], init[q + ".weight"])  # the base is frozen
    assert ck[q + ".lora_B.default.weight"].abs().sum() > 0  # B moved off its zero init


def test_curriculum_env_under_the_grpo_trainer(tmp_path):
    """The RL variant: the GRPO trainer calls on_step_end after each step; step 1 initialises c1, c2,
    and with one round per stage each later step ends a stage."""
    from rlreason.trainer.loop import train as grpo_train
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


def test_expert_iteration_needs_a_curriculum_environment_not_lookalike_attributes(registered):
    """The curriculum contract is the CurriculumEnvironment base class: an environment that merely has
    `summarize` and `done` attributes is refused by name, a subclass implementing it is accepted."""
    from rlreason.environments.single_turn import SingleTurn
    from rlreason.trainer.algorithm import make_algorithm
    from rlreason.types import CurriculumEnvironment

    class Lookalike(SingleTurn):
        done = False

        def summarize(self, means):
            return {}

    class Declared(SingleTurn, CurriculumEnvironment):
        done = False

        def summarize(self, means):
            return {}

        def stage_thresholds(self):
            return []

    registered(ENVIRONMENTS, {"_lookalike_ei": Lookalike, "_declared_ei": Declared})
    with pytest.raises(ConfigError, match="env.name: algorithm=expert_iteration needs .*'_lookalike_ei'"):
        make_algorithm(load_config(None, ["algorithm=expert_iteration", "env.name=_lookalike_ei"])).validate()
    make_algorithm(load_config(None, ["algorithm=expert_iteration", "env.name=_declared_ei"])).validate()
    with pytest.raises(TypeError, match="stage_thresholds"):
        type("Incomplete", (SingleTurn, CurriculumEnvironment), {"summarize": lambda s, m: {}, "done": False})(None)
