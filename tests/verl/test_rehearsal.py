"""Launch rehearsal on CPU: each shipped config through as much of verl's real launch path as runs without
CUDA, ending in the per-token gradient coefficients of one training step, compared with the local trainer's
on the same rows. What is rehearsed and what is not: docs/verl.md ("Launch rehearsal").

    rlreason verl-config (verl_overrides + agent-loop yaml) on the config, scaled to the tiny model
    -> Hydra compose of verl's ppo_trainer.yaml + verl's validate_config
    -> main_ppo.run_ppo: ray.init with the emitted runtime env on a local CPU Ray, the task-runner actor
       (a probe) sees the env vars and verl's trainer patched by the worker setup hook
    -> RLHFDataset on the exported parquet
    -> the agent loop (hydra-instantiated from the yaml) per session, the tiny model's HF engine behind the
       server-manager interface, rewards scored by the shared Ray reward actor
    -> V1 batch assembly: AgentLoopOutput.as_dict, keys {uid}_{session}_{index}, verl's padding template up
       to lcm(dp, ppo_mini_batch_size x n), verl's sequence-length balancing across dp ranks
    -> the patched compute_advantage_for_multi_trajectories
    -> verl's mini-batch iterator per dp rank and compute_policy_loss_vanilla with verl's global batch info,
       gradients averaged over ranks and summed over mini-batches (optimizer steps)
    vs the local trainer: ADVANTAGES + token_weights + POLICY_LOSSES on the same rows, one mini-batch.

The comparison is on d loss / d logprob(token) at ratio 1: the model gradient is sum_t c_t grad logprob_t,
so equal coefficients up to a positive factor give the same gradient direction."""

from __future__ import annotations

import math
import os
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import compose_verl
from test_agent_loop import HFServerManager, dataset_rows, run_groups
from test_launch import ProbeRunner

from rlreason.config import load_config
from rlreason.verl.config_map import runtime_env_vars, verl_overrides, write_agent_loop_yaml
from rlreason.verl.export import export_verl_parquet

ROOT = Path(__file__).resolve().parents[2]
P, G, DP = 2, 3, 2  # prompts per step, samples per prompt, data-parallel ranks (GPUs) rehearsed
MATH_ROWS = [{"id": f"q{i}", "question": f"What is {i} + 1?", "answer": str(i + 1), "data_source": "toy",
              "info": "{}"} for i in range(P)]
QA_ROWS = [{"id": f"qa{i}", "question": q, "answer": a, "data_source": "toy_qa", "info": "{}"}
           for i, (q, a) in enumerate([("What is the capital of France?", '["Paris"]'),
                                       ("Who wrote Hamlet?", '["William Shakespeare"]')])]
# The shipped configs, scaled to the tiny model and a 2-core CPU: the same environment, rewards, estimator,
# loss aggregation and clipping; smaller budgets and batch.
SHIPPED = {
    "quickstart": ({"max_tokens": 6}, MATH_ROWS, 512),
    "pay_per_search_cpu": ({"max_turn_tokens": 8, "max_response_tokens": 24, "timeout_s": 0.2, "retries": 0,
                            "server_url": "http://127.0.0.1:9/retrieve"}, QA_ROWS, 1024),
    "markovian_paper": ({"chunk_size": 16, "carryover": 8, "keep_head": 2, "max_chunks": 3}, MATH_ROWS, 256),
}


class EndsSomeTraces(HFServerManager):
    """The tiny random model almost never writes EOS, so every Delethink trace would run all its chunks and
    the row count would always be a multiple of verl's mini-batch. Every third generation here ends with
    EOS instead of its last sampled token: traces get 1 to 3 chunks and verl's padding is exercised."""

    def __init__(self, engine, eos_id: int) -> None:
        super().__init__(engine)
        self.eos_id = eos_id

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        call = self.calls + 1  # counted before awaiting: the sessions' requests interleave
        out = await super().generate(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params, **kwargs)
        if call % 3 == 0 and out.token_ids:
            out.token_ids = [*out.token_ids[:-1], self.eos_id]
        return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.rollout.base import SamplingConfig
    from rlreason.rollout.hf_engine import HFEngine
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return HFEngine(model, tokenizer=tok, sampling=SamplingConfig(temperature=1.0), max_model_len=1024)


def scaled_config(name: str, tiny_model_dir: str):
    env_args, rows, max_len = SHIPPED[name]
    cfg = load_config(str(ROOT / "configs" / f"{name}.yaml"),
                      [f"model.name={tiny_model_dir}", "model.dtype=fp32", f"trainer.prompts_per_step={P}",
                       f"trainer.samples_per_prompt={G}", "trainer.mini_batches=1", f"rollout.max_model_len={max_len}",
                       "logging.wandb=false"])
    cfg.env.args = {**cfg.env.args, **env_args}
    return cfg, rows


def launch(cfg, rows, tmp_path: Path):
    """verl-config + parquet export, compose, validate_config, then main_ppo.run_ppo with the probe runner;
    Ray is left up for the agent loop's reward actor."""
    import ray
    from verl.trainer import main_ppo
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    yaml_path = write_agent_loop_yaml(cfg, tmp_path / "agent_loops.yaml")
    parquet = export_verl_parquet(rows, tmp_path / "train.parquet", env_name=cfg.env.name, env_args=cfg.env.args)
    overrides = verl_overrides(cfg, nodes=1, gpus_per_node=DP, run_dir=str(tmp_path), train_files=str(parquet),
                               val_files=str(parquet), agent_loop_config=str(yaml_path))
    vcfg = compose_verl(overrides)
    validate_config(config=vcfg, use_reference_policy=need_reference_policy(vcfg), use_critic=need_critic(vcfg))
    main_ppo.run_ppo(vcfg, task_runner_class=ray.remote(num_cpus=0)(ProbeRunner))
    assert ray.is_initialized()
    from omegaconf import OmegaConf
    return vcfg, OmegaConf.load(yaml_path)[0]


def assemble_v1_batch(results, vcfg, eos_id: int):
    """The V1 trainer's step batch: one entry per AgentLoopOutput keyed {uid}_{session}_{index}, padded with
    verl's own padding template to the required multiple, reordered by verl's balancing across DP ranks.
    The tiny random model earns the same reward (0) in every session, which would make the comparison
    vacuous, so each session's score is replaced by a distinct value (on the row's last token, where verl
    puts it) after the real rewards were checked; both paths read the same rows."""
    from verl.trainer.ppo.padding_utils import construct_minimal_padding_template
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils.seqlen_balancing import calculate_workload, get_seqlen_balanced_partitions
    keys, samples, tags = [], [], []
    for (i, s), outs in sorted(results.items()):
        assert all(math.isfinite(o.reward_score) and o.reward_score == outs[-1].reward_score for o in outs)
        for j, o in enumerate(outs):
            d = o.as_dict()
            d["rm_scores"] = torch.zeros_like(d["rm_scores"])
            d["rm_scores"][-1] = float((s * 7 + i * 3) % 5)  # distinct rewards, ties across groups
            keys.append(f"uid{i}_{s}_{j}")
            samples.append(d)
            tags.append({"seq_len": len(o.prompt_ids) + len(o.response_ids)})
    fake = SimpleNamespace(config=vcfg, use_critic=False, global_steps=1)
    multiple = PPOTrainer._get_required_batch_multiple(fake, DP)
    real = len(keys)
    if real % multiple:
        template, tag = construct_minimal_padding_template(samples[0], tags[0], eos_id)
        pad_uid = f"pad{uuid.uuid4().hex}"
        for k in range(multiple - real % multiple):
            keys.append(f"{pad_uid}_{k}_0")
            samples.append(dict(template))
            tags.append(dict(tag))
    seqlens = torch.tensor([t["seq_len"] for t in tags])
    parts = get_seqlen_balanced_partitions(calculate_workload(seqlens), k_partitions=DP, equal_size=True)
    order = [j for p in parts for j in p]
    return [keys[j] for j in order], [samples[j] for j in order], real, multiple


def padded(samples, field: str) -> torch.Tensor:
    T = max(len(s["response_mask"]) for s in samples)
    out = torch.zeros(len(samples), T)
    for r, s in enumerate(samples):
        v = torch.as_tensor(s[field]).float().reshape(-1)
        out[r, :len(v)] = v
    return out


def verl_coefficients(keys, samples, vcfg, env_flags: dict[str, str]):
    """d (summed step loss) / d logprob per token through the patched advantage and verl's loss path."""
    from tensordict import TensorDict
    from verl.protocol import DataProto
    from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass

    import verl.trainer.ppo.v1.trainer_base as tb
    mask, scores = padded(samples, "response_mask"), padded(samples, "rm_scores")
    data = DataProto(batch=TensorDict({"response_mask": mask, "token_level_scores": scores,
                                       "token_level_rewards": scores.clone()}, batch_size=len(keys)),
                     non_tensor_batch={"uid": np.array([k.rsplit("_", 2)[0] for k in keys], dtype=object)})
    old = {k: os.environ.get(k) for k in env_flags}
    os.environ.update(env_flags)
    try:
        assert getattr(tb.compute_advantage_for_multi_trajectories, "rlreason_patched", False)
        adv = tb.compute_advantage_for_multi_trajectories(
            data, batch_keys=keys, adv_estimator=vcfg.algorithm.adv_estimator, gamma=vcfg.algorithm.gamma,
            lam=vcfg.algorithm.lam, num_repeat=vcfg.actor_rollout_ref.rollout.n,
            norm_adv_by_std_in_grpo=vcfg.algorithm.norm_adv_by_std_in_grpo, config=vcfg.algorithm).batch["advantages"]
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    actor = omega_conf_to_dataclass(vcfg.actor_rollout_ref.actor)
    M = actor.ppo_mini_batch_size * vcfg.actor_rollout_ref.rollout.n  # rows per mini-batch (global)
    per_rank = len(keys) // DP
    lp = torch.zeros_like(mask, requires_grad=True)
    # each rank's mini-batches, as verl's worker iterates them (its shuffle setting and seed)
    rank_batches = []
    for r in range(DP):
        idx = TensorDict({"i": torch.arange(r * per_rank, (r + 1) * per_rank)}, batch_size=per_rank)
        it = tu.make_iterator(idx, mini_batch_size=M // DP, epochs=actor.ppo_epochs,
                              seed=actor.data_loader_seed + r, dataloader_kwargs={"shuffle": actor.shuffle})
        rank_batches.append([mb["i"] for mb in it])
    steps = len(rank_batches[0])
    total = torch.zeros(())
    for j in range(steps):
        rows = torch.cat([rank_batches[r][j] for r in range(DP)])
        info = dict(dp_size=DP, batch_num_tokens=int(mask[rows].sum()), global_batch_size=M, loss_scale_factor=None)
        for r in range(DP):  # FSDP averages the ranks' gradients
            i = rank_batches[r][j]
            actor.global_batch_info.update(info)
            loss, _ = compute_policy_loss_vanilla(lp.detach()[i], lp[i], adv[i], mask[i],
                                                  loss_agg_mode=actor.loss_agg_mode, config=actor)
            total = total + loss / DP
    total.backward()
    return lp.grad, mask, adv, steps, M


def local_coefficients(keys, samples, real_rows: set[int], cfg):
    """The local trainer's d loss / d logprob on the same (non-padding) rows: ADVANTAGES per episode,
    broadcast to its rows, token_weights over one mini-batch, the registered policy loss at ratio 1."""
    from rlreason.algos.advantages import ADVANTAGES, broadcast_to_tokens
    from rlreason.algos.losses import POLICY_LOSSES, token_weights
    a = cfg.algo
    mask = padded(samples, "response_mask")
    rewards_by_session, row_session, sessions = {}, [], {}
    for r, k in enumerate(keys):
        uid, s, _ = k.rsplit("_", 2)
        sid = sessions.setdefault((uid, s), len(sessions))
        row_session.append(sid)
        rewards_by_session[sid] = float(samples[r]["rm_scores"].sum())
    uids = sorted({u for u, _ in sessions})
    groups = torch.tensor([uids.index(u) for (u, _), _ in sorted(sessions.items(), key=lambda x: x[1])])
    rewards = torch.tensor([rewards_by_session[s] for s in range(len(sessions))])
    rows = torch.tensor(sorted(real_rows))
    rs = torch.tensor(row_session)
    adv = broadcast_to_tokens(ADVANTAGES.get(a.advantage)(rewards, groups, eps=a.adv_eps), rs, mask)
    w = token_weights(mask[rows], a.loss_agg_mode, trace_ids=rs[rows])
    lp = torch.zeros_like(mask, requires_grad=True)
    pg, _ = POLICY_LOSSES.get(a.policy_loss)(lp[rows], lp.detach()[rows], adv[rows].float(), mask[rows],
                                            eps_low=a.eps_low, eps_high=a.eps_high, dual_clip_c=a.dual_clip_c,
                                            is_weights=None)
    (pg * w).sum().backward()
    return lp.grad


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", list(SHIPPED))
def test_launch_rehearsal(name, tmp_path, tiny_model_dir, engine):
    import ray
    cfg, rows = scaled_config(name, tiny_model_dir)
    try:
        vcfg, entry = launch(cfg, rows, tmp_path)
        from rlreason.verl.hooks import setup_worker
        setup_worker()  # this process plays the trainer: patch verl's V1 module as the Ray hook does
        manager = (EndsSomeTraces(engine, engine.tokenizer.eos_token_id) if cfg.env.name == "markovian"
                   else HFServerManager(engine))
        results = run_groups(engine, vcfg, entry, dataset_rows(vcfg, engine.tokenizer), manager)
    finally:
        ray.shutdown()
    assert len(results) == P * G
    keys, samples, real, multiple = assemble_v1_batch(results, vcfg, engine.tokenizer.eos_token_id)
    assert len(keys) % multiple == 0
    if cfg.env.name == "markovian":  # traces of different lengths: verl pads the step
        assert real % multiple and len(keys) > real
    real_rows = {r for r, k in enumerate(keys) if not k.startswith("pad")}
    assert len(real_rows) == real
    c_verl, mask, adv, steps, M = verl_coefficients(keys, samples, vcfg, runtime_env_vars(cfg))
    c_local = local_coefficients(keys, samples, real_rows, cfg)
    pad = torch.tensor(sorted(set(range(len(keys))) - real_rows), dtype=torch.long)
    assert not c_verl[pad].any() if len(pad) else True  # padding rows add nothing
    a, b = c_verl.flatten().double(), c_local.flatten().double()
    assert b.norm() > 0
    cos = float(a @ b / (a.norm() * b.norm()))
    scale = float(a.norm() / b.norm())
    R = len(real_rows)
    print(f"\n{name}: rows {R} (+{len(keys) - R} padding), verl mini-batch {M} rows -> {steps} optimizer steps "
          f"(local 1); gradient cosine {cos:.8f}, verl/local scale {scale:.4f}")
    assert cos > 1 - 1e-6
    assert steps == math.ceil(R / M)
    if cfg.algo.loss_agg_mode == "trace-length-norm":
        assert scale == pytest.approx(R / M, rel=1e-5)  # each row's weight (R/G)/l_g over M rows per step
    else:
        assert scale == pytest.approx(1.0, rel=1e-5)
