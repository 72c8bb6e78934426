"""The local trainer (GRPO/PPO family), readable top to bottom:

    sample prompts -> G concurrent episodes each (engine) -> group rewards -> advantages
    -> mini-batched policy update -> in-place weight sync -> metrics -> checkpoint (-> eval)

It owns no math: advantages and losses come from `rlreason.algos`, rollouts from the environment."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlreason.algos.advantages import ADVANTAGES
from rlreason.algos.kl import KL_ESTIMATORS, kl_estimate
from rlreason.algos.losses import LOSS_AGG_MODES, POLICY_LOSSES
from rlreason.config import RunConfig, to_dict
from rlreason.config_checks import check_combinations, check_ranges
from rlreason.cpu import apply_cpu_optimizations
from rlreason.registry import ConfigError, build_environment, suggest
from rlreason.rollout import Engine, SamplingConfig, make_engine
from rlreason.rubric import Rubric
from rlreason.trainer.batch import episodes_to_rows
from rlreason.trainer.critic import ValueHead, assign_gae
from rlreason.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlreason.trainer.evaluate import evaluate
from rlreason.trainer.metrics import MetricsLogger
from rlreason.trainer.dynamic_sampling import collect_groups
from rlreason.trainer.perf import PerfMeter, sequences
from rlreason.trainer.rollout_phase import as_example
from rlreason.trainer.run_dir import prepare_run_dir
from rlreason.trainer.sampler import PromptSampler
from rlreason.trainer.update import UpdateContext, compute_logprobs, policy_update
from rlreason.types import Environment, Episode

log = logging.getLogger(__name__)


def validate(cfg: RunConfig) -> None:
    """Check every registry-backed name, every numeric range and the combinations that would be silently
    ignored, before anything slow starts."""
    ADVANTAGES.check(cfg.algo.advantage, also=("gae",))  # gae needs a critic and lives in trainer/critic.py
    POLICY_LOSSES.check(cfg.algo.policy_loss)
    LOSS_AGG_MODES.check(cfg.algo.loss_agg_mode)
    KL_ESTIMATORS.check(cfg.algo.kl_estimator)
    _check_attention(cfg.model.attn_implementation)
    check_ranges(cfg)
    check_combinations(cfg)


def _check_attention(setting: str) -> None:
    from transformers import AttentionInterface
    allowed = sorted({"auto", "eager", *AttentionInterface._global_mapping})
    if setting not in allowed and "/" not in setting:  # "/": a kernel from the hub, which transformers checks
        raise ConfigError(f"model.attn_implementation: unknown '{setting}'. Allowed: {', '.join(allowed)} "
                          f"or a hub kernel (org/name).{suggest(setting, allowed)}")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: 'cuda' was asked for but no CUDA device is available. Allowed here: auto, cpu.")
    if name == "cuda" and torch.cuda.device_count() > 1:
        log.warning("%d GPUs are visible; the local trainer uses one (cuda:0). For several GPUs train through "
                    "verl (`rlreason verl-config`, launch/, docs/verl.md); CUDA_VISIBLE_DEVICES=0 silences this.",
                    torch.cuda.device_count())
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_policy(model_dir: str, device: torch.device, gradient_checkpointing: bool,
                attn_implementation: str = "auto", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The model as transformers builds it (`auto` attention: SDPA); the CPU patches come afterwards from
    `rlreason.cpu.apply_cpu_optimizations`."""
    from transformers import AutoModelForCausalLM
    # fp32 master weights; bf16 compute comes from autocast (pure bf16 Adam loses small updates).
    attn = "sdpa" if attn_implementation == "auto" else attn_implementation
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn)
    model = model.to(device)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


@dataclass
class Run:
    """Everything one training run holds; built by `setup`, advanced by `train_step`."""

    cfg: RunConfig
    tokenizer: Any
    env: Environment
    rubric: Rubric
    engine: Engine
    ctx: UpdateContext
    train_rows: Any
    eval_rows: list[dict]
    sampler: PromptSampler
    logger: MetricsLogger
    step: int = 0
    probe_monitor: Any = None  # refusal-cliff probe as a training monitor (logging.probe_dir)
    perf: PerfMeter | None = None  # perf/ metrics: model shape and the device's peak FLOP/s


def setup(cfg: RunConfig, *, resume: bool = False) -> Run:
    from transformers import AutoTokenizer

    from rlreason.data import build_dataset, train_test_split
    from rlreason.models import resolve_model

    validate(cfg)
    seed_everything(cfg.seed)
    device = pick_device(cfg.model.device)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = resolve_model(cfg.model.name, dtype="fp32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    env = build_environment(cfg.env.name, tokenizer, cfg.env.args, cfg.env.markovian)  # checks env.args
    rubric = Rubric(cfg.rewards)

    data = build_dataset(cfg.data.train, key="data.train")
    if cfg.data.eval is not None:
        eval_data = build_dataset(cfg.data.eval, key="data.eval")
    elif cfg.data.eval_size > 0:
        data, eval_data = train_test_split(data, test_size=cfg.data.eval_size, seed=cfg.seed)
    else:
        eval_data = None
    eval_rows = [as_example(r) for r in eval_data.select(range(min(len(eval_data), cfg.eval.max_problems)))] \
        if eval_data is not None else []

    # The frozen reference model is never updated, so on GPU it needs no fp32 master copy: bf16 halves it.
    # CPU keeps fp32 (the CPU numerics, and exact resume, are unchanged).
    ref_dtype = torch.bfloat16 if device.type == "cuda" and cfg.model.dtype == "bf16" else torch.float32
    if device.type == "cuda":
        from rlreason.trainer import gpu_memory
        gpu_memory.check(gpu_memory.count_parameters(model_dir), device,
                         gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                         sleep_mode=cfg.rollout.sleep_mode, vllm=cfg.rollout.engine == "vllm",
                         ref_bytes=ref_dtype.itemsize if cfg.algo.kl_coef > 0 else 0, model_name=cfg.model.name,
                         lora=cfg.algorithm == "expert_iteration" and bool(cfg.ei.lora_rank))
    model = load_policy(model_dir, device, cfg.model.gradient_checkpointing, cfg.model.attn_implementation)
    ref_model = None
    if cfg.algo.kl_coef > 0:
        ref_model = load_policy(model_dir, device, False, cfg.model.attn_implementation,
                                dtype=ref_dtype).eval().requires_grad_(False)
    cpu = apply_cpu_optimizations(cfg, device, [model, ref_model])
    value_head = None
    if cfg.algo.advantage == "gae":
        value_head = ValueHead(model.config.hidden_size).to(device)
    params = [*model.parameters(), *(value_head.parameters() if value_head is not None else [])]
    # Fused AdamW: one kernel per parameter instead of foreach temporaries the size of the model.
    optimizer = torch.optim.AdamW(params, lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay,
                                  fused=device.type in ("cpu", "cuda") or None)
    warm = cfg.trainer.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    amp = torch.bfloat16 if cfg.model.dtype == "bf16" else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = UpdateContext(model, optimizer, scheduler, ref_model, device, amp, pad_id, cfg.rollout.temperature,
                        value_head, share_prompts=cpu.share_prompts)

    r = cfg.rollout
    engine = make_engine(r.engine, model_dir=model_dir, model=model, tokenizer=tokenizer,
                         sampling=SamplingConfig(r.temperature, r.top_p), dtype=cfg.model.dtype,
                         max_model_len=r.max_model_len, kv_cache_gb=r.kv_cache_gb,
                         gpu_memory_utilization=r.gpu_memory_utilization,
                         enable_prefix_caching=r.enable_prefix_caching, seed=cfg.seed, sleep_mode=r.sleep_mode)

    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    sampler = PromptSampler(len(data), cfg.seed)
    logger = MetricsLogger(run_dir, config=to_dict(cfg), use_wandb=cfg.logging.wandb,
                           project=cfg.logging.wandb_project, name=cfg.name, resume=resume)
    run = Run(cfg, tokenizer, env, rubric, engine, ctx, data, eval_rows, sampler, logger)
    run.perf = PerfMeter(model, device, amp or torch.float32)
    if cfg.logging.probe_dir:
        from rlreason.probes.data import jbb
        from rlreason.probes.monitor import ProbeMonitor
        prompts = [r["prompt"] for r in jbb()[:cfg.logging.probe_prompts]]
        run.probe_monitor = ProbeMonitor(cfg.logging.probe_dir, prompts)
    if resume:
        _resume(run)
    return run


def restore(run: Run) -> dict | None:
    """Load the newest complete checkpoint into the run: weights, optimizer, scheduler, value head, sampler
    position, environment and reward state, step. Returns the checkpoint's state (trainers keep their own
    extras there), or None when the run has no checkpoint yet (its logs are then cleared: the run starts
    over). Damaged checkpoints are reported and skipped; when every one is damaged this raises."""
    ckpt = latest_checkpoint(run.cfg.run_dir / "checkpoints")
    if ckpt is None:
        log.warning("--resume: no checkpoint under %s; starting from scratch", run.cfg.run_dir / "checkpoints")
        run.logger.truncate_after(-1)
        return None
    state, torch_state = load_checkpoint(ckpt, model=run.ctx.model, verify=False)
    run.ctx.optimizer.load_state_dict(torch_state["optimizer"])
    run.ctx.scheduler.load_state_dict(torch_state["scheduler"])
    _apply_trainer_settings(run)
    if run.ctx.value_head is not None:
        run.ctx.value_head.load_state_dict(torch_state["value_head"])
    run.sampler.load_state_dict(state["sampler"])
    run.env.load_state_dict(state["env"])
    run.rubric.load_state_dict(state["rewards"])
    run.step = state["step"]
    log.info("resumed from %s (step %d)", ckpt, run.step)
    return state


def _apply_trainer_settings(run: Run) -> None:
    """The restored optimizer/scheduler state carries the learning rate and weight decay the checkpoint was
    written with; a resumed config that changes them (`--resume trainer.lr=...`) must take effect."""
    tr, opt, sched = run.cfg.trainer, run.ctx.optimizer, run.ctx.scheduler
    if any(b != tr.lr for b in sched.base_lrs):
        sched.base_lrs = [tr.lr] * len(opt.param_groups)
        for g, factor in zip(opt.param_groups, sched.lr_lambdas):
            g["initial_lr"], g["lr"] = tr.lr, tr.lr * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in opt.param_groups]
    for g in opt.param_groups:
        g["weight_decay"] = tr.weight_decay


def _resume(run: Run) -> None:
    if restore(run) is None:
        return
    run.logger.truncate_after(run.step)
    run.engine.update_weights(run.ctx.model.state_dict().items())


def checkpoint(run: Run) -> None:
    save_checkpoint(run.cfg.run_dir / "checkpoints", run.step, model=run.ctx.model,
                    torch_state={"optimizer": run.ctx.optimizer.state_dict(),
                                 "scheduler": run.ctx.scheduler.state_dict(),
                                 **({"value_head": run.ctx.value_head.state_dict()}
                                    if run.ctx.value_head is not None else {})},
                    state={"sampler": run.sampler.state_dict(), "env": run.env.state_dict(),
                           "rewards": run.rubric.state_dict()},
                    keep=run.cfg.trainer.keep_checkpoints, tokenizer=run.tokenizer)


def train_step(run: Run) -> dict[str, float]:
    cfg, tr, algo = run.cfg, run.cfg.trainer, run.cfg.algo
    t0 = time.perf_counter()
    # Seeds depend only on (run seed, step, round): a resumed run draws the same rollouts.
    step_groups = collect_groups(run, seed=(cfg.seed * 1_000_003 + run.step * 10_007) % (2**31 - 1))
    groups, generated = step_groups.groups, step_groups.generated
    t_rollout = time.perf_counter() - t0
    run.engine.sleep()  # GPU: vLLM's weights and KV cache make room for the update; update_weights wakes it

    episodes = [ep for g in groups for ep in g]
    group_ids = [gi for gi, g in enumerate(groups) for _ in g]
    rewards = torch.tensor([ep.reward for ep in episodes], dtype=torch.float32)
    gids = torch.tensor(group_ids, dtype=torch.long)

    t1 = time.perf_counter()
    ref_logprobs = None
    rows = episodes_to_rows(episodes, [0.0] * len(episodes), group_ids)
    if algo.kl_coef > 0 and run.ctx.ref_model is not None and rows:
        ref_logprobs = compute_logprobs(run.ctx.ref_model, rows, run.ctx, tr.micro_batch_size)
        if algo.kl_in_reward:  # r <- r - beta * sum_t KL(pi || ref) over the trace's trained tokens
            pol = compute_logprobs(run.ctx.model, rows, run.ctx, tr.micro_batch_size)
            pen = torch.zeros(len(episodes))
            for r, lp, ref in zip(rows, pol, ref_logprobs):
                m = torch.tensor(r.response_mask, dtype=torch.float)
                pen[r.trace_id] += float((kl_estimate(lp, ref, algo.kl_estimator) * m).sum())
            rewards = rewards - algo.kl_coef * pen
    if rows and algo.advantage == "gae":
        assign_gae(rows, rewards.tolist(), run.ctx.model, run.ctx.value_head, run.ctx.pad_id, run.ctx.device,
                   gamma=algo.gamma, lam=algo.lam, micro=tr.micro_batch_size)
    elif rows:
        advantages = ADVANTAGES.get(algo.advantage)(rewards, gids, eps=algo.adv_eps)
        for r in rows:
            r.advantage = float(advantages[r.trace_id])
    t_reward = time.perf_counter() - t1

    t2 = time.perf_counter()
    loss_metrics = policy_update(rows, run.ctx, algo, tr, ref_logprobs) if rows else {"loss/skipped_empty": 1.0}
    t_update = time.perf_counter() - t2

    t3 = time.perf_counter()
    run.ctx.optimizer.zero_grad(set_to_none=True)  # gradients are dead until the next update: free them
    run.engine.update_weights(run.ctx.model.state_dict().items())
    t_sync = time.perf_counter() - t3
    run.step += 1

    all_episodes = [ep for g in generated for ep in g]
    metrics = {
        # reward/* over every episode generated this step (what the policy scores), the KL penalty apart
        "reward/total": float(np.mean([ep.reward for ep in all_episodes])) if all_episodes else float("nan"),
        **({"reward/kl_penalty": float((torch.tensor([ep.reward for ep in episodes]) - rewards).mean())}
           if algo.kl_in_reward and len(rewards) else {}),
        **_component_means(all_episodes),
        **{f"reward/{k}/errors": float(v) for k, v in run.rubric.errors.items() if v},
        **loss_metrics,
        "rollout/episodes": float(len(all_episodes)),
        "rollout/env_errors": float(step_groups.env_errors),
        "rollout/rows": float(len(rows)),
        "rollout/prompts": float(len(step_groups.examples)),
        "rollout/sampling_rounds": float(step_groups.rounds),
        "rollout/trained_groups": float(len(groups)),
        "rollout/kept_groups_frac": len(groups) / len(generated) if generated else 0.0,
        "rollout/zero_var_groups_frac": step_groups.zero_variance / len(generated) if generated else 0.0,
        "rollout/response_tokens": float(np.mean([ep.num_trained_tokens for ep in all_episodes]))
        if all_episodes else 0.0,
        **_env_metric_means(run.env.name, all_episodes),
        "time/rollout": t_rollout, "time/reward": t_reward, "time/update": t_update, "time/sync": t_sync,
        "time/step": time.perf_counter() - t0,
        "lr": run.ctx.optimizer.param_groups[0]["lr"],
        **_perf_metrics(run, rows, all_episodes, t_rollout, t_reward + t_update),
    }
    run.env.on_step_end(metrics)
    run.logger.log(run.step, metrics)
    if cfg.logging.log_samples:
        run.logger.log_samples(run.step, [
            {"id": ex.get("id"), "prompt": ex.get("prompt"), "answer": ex.get("answer"),
             "transcript": g[0].transcript, "reward": g[0].reward, "components": g[0].reward_components,
             "info": g[0].info}
            for ex, g in list(zip(step_groups.examples, generated))[:cfg.logging.log_samples]])
    return metrics


def _perf_metrics(run: Run, rows: list, episodes: list[Episode], t_rollout: float,
                  t_trainer: float) -> dict[str, float]:
    """perf/ metrics of the step. Forward-only passes: reference logprobs, the policy's for KL-in-reward and
    the critic's values over the step's rows; old logprobs when the batch takes > 1 update."""
    if run.perf is None:
        return {}
    algo, tr = run.cfg.algo, run.cfg.trainer
    has_ref = algo.kl_coef > 0 and run.ctx.ref_model is not None
    seqs = sequences(rows)  # dynamic sampling drops groups before rows exist: every pass sees the same rows
    forward = [seqs] * (int(has_ref) + int(has_ref and algo.kl_in_reward) + int(algo.advantage == "gae")
                        + int(tr.ppo_epochs * tr.mini_batches > 1))
    shared = run.ctx.share_prompts and algo.advantage != "gae" \
        and not getattr(run.ctx.model, "is_gradient_checkpointing", False)
    return run.perf.step(trained=seqs, epochs=tr.ppo_epochs, forward=forward, share_prompts=shared,
                         generated_tokens=sum(ep.num_trained_tokens for ep in episodes), rollout_s=t_rollout,
                         update_s=t_trainer)


def _component_means(episodes: list[Episode]) -> dict[str, float]:
    keys = {k for ep in episodes for k in ep.reward_components}
    return {f"reward/{k}": float(np.mean([ep.reward_components.get(k, 0.0) for ep in episodes])) for k in keys}


def _env_metric_means(env_name: str, episodes: list[Episode]) -> dict[str, float]:
    keys = {k for ep in episodes for k in ep.metrics}
    return {f"env/{env_name}/{k}": float(np.mean([ep.metrics[k] for ep in episodes if k in ep.metrics]))
            for k in keys}


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> str:
    """Run (or continue) training; returns the text summary written to `<run_dir>/summary.txt`.
    Without `resume` a run directory that already holds a run is refused unless `overwrite`."""
    validate(cfg)
    prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    run = setup(cfg, resume=resume)
    tr = cfg.trainer
    bar = None
    if cfg.logging.progress:
        from tqdm import tqdm
        bar = tqdm(total=tr.steps, initial=run.step, desc=cfg.name, unit="step")
    try:
        if cfg.eval.every and run.step == 0 and run.eval_rows:
            run.logger.log(0, _eval(run))
        while run.step < tr.steps:
            m = train_step(run)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward/total']:.3f}", step_s=f"{m['time/step']:.1f}")
            if cfg.eval.every and run.step % cfg.eval.every == 0 and run.eval_rows:
                run.logger.log(run.step, _eval(run))
            if run.probe_monitor is not None and run.step % cfg.logging.probe_every == 0:
                run.logger.log(run.step, run.probe_monitor(run.ctx.model, run.engine))
            if (tr.checkpoint_every and run.step % tr.checkpoint_every == 0) or run.step == tr.steps:
                checkpoint(run)
    finally:
        if bar is not None:
            bar.close()
    summary = run.logger.finish()
    run.engine.close()
    return summary


def _eval(run: Run) -> dict[str, float]:
    e = run.cfg.eval
    return evaluate(run.engine, run.env, run.rubric, run.eval_rows, k=e.k, temperature=e.temperature,
                    seed=run.cfg.seed + 7)
