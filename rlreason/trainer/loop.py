"""The one training loop, readable top to bottom; the method is a plug-in (trainer/algorithm.py):

    validate -> run directory -> setup (model, engine, optimizer, data, sampler, logger) -> resume
    -> start -> repeat { method step -> metrics, samples -> eval -> probe monitor -> checkpoint }
    -> finish -> summary

`algorithm: grpo | expert_iteration | sft` picks the plug-in (trainer/grpo.py, expert_iteration.py,
sft.py); everything here is shared by all three, so a change to setup, resume, checkpoints, metrics or
evaluation is made once."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from rlreason.config import RunConfig, to_dict
from rlreason.config_checks import check_combinations, check_ranges
from rlreason.cpu import apply_cpu_optimizations
from rlreason.registry import ConfigError, build_environment, suggest
from rlreason.rollout import Engine, SamplingConfig, make_engine
from rlreason.rubric import Rubric
from rlreason.trainer.algorithm import Algorithm, StepResult, make_algorithm
from rlreason.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rlreason.trainer.metrics import MetricsLogger
from rlreason.trainer.perf import PerfMeter
from rlreason.trainer.rollout_phase import as_example
from rlreason.trainer.run_dir import prepare_run_dir
from rlreason.trainer.sampler import PromptSampler
from rlreason.trainer.update import UpdateContext
from rlreason.types import Environment, Episode

log = logging.getLogger(__name__)


def validate(cfg: RunConfig) -> Algorithm:
    """Check every registry-backed name, every numeric range and the combinations that would be silently
    ignored, before anything slow starts; returns the configured method."""
    algorithm = make_algorithm(cfg)
    algorithm.validate()
    _check_attention(cfg.model.attn_implementation)
    check_ranges(cfg)
    check_combinations(cfg)
    return algorithm


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


def step_seed(cfg: RunConfig, step: int) -> int:
    """The rollout seed of a step: it depends only on (run seed, step), so a resumed run draws the same
    rollouts."""
    return (cfg.seed * 1_000_003 + step * 10_007) % (2**31 - 1)


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


def build_optimizer(params: list[torch.nn.Parameter], cfg: RunConfig, device: torch.device, *,
                    fused: bool = True) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up over `trainer.warmup_steps` optimizer steps. Fused AdamW: one kernel per
    parameter instead of foreach temporaries the size of the model."""
    tr = cfg.trainer
    optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay,
                                  fused=(fused and device.type in ("cpu", "cuda")) or None)
    warm = tr.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)
    return optimizer, scheduler


@dataclass
class Run:
    """Everything one training run holds; built by `setup`, advanced by the method's `step`."""

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
    algorithm: Algorithm | None = None
    engine_stale: bool = False  # the method updated the weights without syncing the engine (sft)


def setup(cfg: RunConfig, *, resume: bool = False) -> Run:
    from transformers import AutoTokenizer

    from rlreason.data import build_dataset, train_test_split
    from rlreason.models import compute_dtype, resolve_model

    device = pick_device(cfg.model.device)
    if cfg.model.dtype == "auto":  # resolved once: the method, engine, autocast and recorded config all agree
        cfg = replace(cfg, model=replace(cfg.model, dtype=compute_dtype("auto", device)))
        log.info("model.dtype=auto -> %s on %s", cfg.model.dtype, device.type)
    algorithm = validate(cfg)
    seed_everything(cfg.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model_dir = resolve_model(cfg.model.name, dtype="fp32")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    env = build_environment(cfg.env.name, tokenizer, cfg.env.args, cfg.env.markovian)  # checks env.args
    rubric = Rubric(cfg.rewards)

    data = build_dataset(cfg.data.train, key="data.train")
    if cfg.data.eval is not None:
        eval_data = build_dataset(cfg.data.eval, key="data.eval")
    elif cfg.data.eval_size > 0 and algorithm.splits_train:
        data, eval_data = train_test_split(data, test_size=cfg.data.eval_size, seed=cfg.seed)
    else:
        eval_data = None
    eval_rows = [as_example(r) for r in eval_data.select(range(min(len(eval_data), cfg.eval.max_problems)))] \
        if eval_data is not None else []

    if device.type == "cuda":
        from rlreason.trainer import gpu_memory
        ref_bytes = 2 if cfg.model.dtype == "bf16" else 4  # the frozen reference model (grpo.GRPO.attach)
        gpu_memory.check(gpu_memory.count_parameters(model_dir), device,
                         gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
                         sleep_mode=cfg.rollout.sleep_mode, vllm=cfg.rollout.engine == "vllm",
                         ref_bytes=ref_bytes if algorithm.uses_reference_model() else 0,
                         model_name=cfg.model.name, lora=algorithm.trains_adapters_only())
    model = load_policy(model_dir, device, cfg.model.gradient_checkpointing, cfg.model.attn_implementation)
    amp = torch.bfloat16 if cfg.model.dtype == "bf16" else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ctx = UpdateContext(model, None, None, None, device, amp, pad_id, cfg.rollout.temperature, None)
    algorithm.attach(ctx, model_dir)  # may load a reference model and a value head
    ctx.share_prompts = apply_cpu_optimizations(cfg, device, [model, ctx.ref_model]).share_prompts
    params = [*model.parameters(), *(ctx.value_head.parameters() if ctx.value_head is not None else [])]
    ctx.optimizer, ctx.scheduler = build_optimizer(params, cfg, device)

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
    run = Run(cfg, tokenizer, env, rubric, engine, ctx, data, eval_rows, sampler, logger, algorithm=algorithm)
    run.perf = PerfMeter(model, device, amp or torch.float32)
    if cfg.logging.probe_dir:
        from rlreason.probes.data import jbb
        from rlreason.probes.monitor import ProbeMonitor
        prompts = [r["prompt"] for r in jbb()[:cfg.logging.probe_prompts]]
        run.probe_monitor = ProbeMonitor(cfg.logging.probe_dir, prompts)
    algorithm.prepare(run)
    if resume and restore(run) is not None:
        run.logger.truncate_after(run.step)
        sync(run)
    elif resume:
        run.logger.truncate_after(-1)
    return run


def sync(run: Run) -> None:
    """Load the policy's weights into the rollout engine (waking a sleeping one)."""
    run.engine.update_weights(run.algorithm.engine_weights(run))
    run.engine_stale = False


def fresh_engine(run: Run) -> Engine:
    """The engine, synced first when the method left it behind the trained weights."""
    if run.engine_stale:
        sync(run)
    return run.engine


def restore(run: Run) -> dict | None:
    """Load the newest complete checkpoint into the run: weights, optimizer, scheduler, sampler position,
    environment and reward state, step, and the method's own state. Returns the checkpoint's state, or None
    when the run has no checkpoint yet (the run starts over). Damaged checkpoints are reported and skipped;
    when every one is damaged this raises."""
    ckpt = latest_checkpoint(run.cfg.run_dir / "checkpoints")
    if ckpt is None:
        log.warning("--resume: no checkpoint under %s; starting from scratch", run.cfg.run_dir / "checkpoints")
        return None
    state, torch_state = load_checkpoint(ckpt, model=run.ctx.model, verify=False)
    run.ctx.optimizer.load_state_dict(torch_state["optimizer"])
    run.ctx.scheduler.load_state_dict(torch_state["scheduler"])
    _apply_trainer_settings(run)
    run.sampler.load_state_dict(state["sampler"])
    run.env.load_state_dict(state["env"])
    run.rubric.load_state_dict(state["rewards"])
    run.step = state["step"]
    run.algorithm.load_state(run, state, torch_state)
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


def checkpoint(run: Run) -> None:
    save_checkpoint(run.cfg.run_dir / "checkpoints", run.step, model=run.ctx.model,
                    torch_state={"optimizer": run.ctx.optimizer.state_dict(),
                                 "scheduler": run.ctx.scheduler.state_dict(),
                                 **run.algorithm.torch_state(run)},
                    state={"sampler": run.sampler.state_dict(), "env": run.env.state_dict(),
                           "rewards": run.rubric.state_dict(), **run.algorithm.state()},
                    keep=run.cfg.trainer.keep_checkpoints, tokenizer=run.tokenizer)


# --- metrics every rollout method logs ------------------------------------------------------------------

def component_means(episodes: list[Episode]) -> dict[str, float]:
    keys = {k for ep in episodes for k in ep.reward_components}
    return {f"reward/{k}": float(np.mean([ep.reward_components.get(k, 0.0) for ep in episodes])) for k in keys}


def env_metric_means(env_name: str, episodes: list[Episode]) -> dict[str, float]:
    keys = {k for ep in episodes for k in ep.metrics}
    return {f"env/{env_name}/{k}": float(np.mean([ep.metrics[k] for ep in episodes if k in ep.metrics]))
            for k in keys}


def rollout_metrics(run: Run, episodes: list[Episode], env_errors: int) -> dict[str, float]:
    """reward/* (total, each component, reward-function errors), rollout/episodes, env_errors,
    response_tokens (mean and max) and env/<name>/* over the episodes a step generated."""
    return {
        "reward/total": float(np.mean([ep.reward for ep in episodes])) if episodes else float("nan"),
        **component_means(episodes),
        **{f"reward/{k}/errors": float(v) for k, v in run.rubric.errors.items() if v},
        "rollout/episodes": float(len(episodes)),
        "rollout/env_errors": float(env_errors),
        "rollout/response_tokens": float(np.mean([ep.num_trained_tokens for ep in episodes]))
        if episodes else 0.0,
        "rollout/response_tokens_max": float(max((ep.num_trained_tokens for ep in episodes), default=0)),
        **env_metric_means(run.env.name, episodes),
    }


def _log_step(run: Run, result: StepResult) -> None:
    run.env.on_step_end(result.metrics)  # curricula advance here, adding their quantities to the metrics
    run.logger.log(run.step, result.metrics)
    n = run.cfg.logging.log_samples
    if n and result.samples:
        run.logger.log_samples(run.step, [
            {"id": ex.get("id"), "prompt": ex.get("prompt"), "answer": ex.get("answer"),
             "transcript": g[0].transcript, "reward": g[0].reward, "components": g[0].reward_components,
             "info": g[0].info}
            for ex, g in result.samples[:n]])


# --- the loop -------------------------------------------------------------------------------------------

def train_step(run: Run) -> dict[str, float]:
    """One step of the method; the step is counted, its metrics and samples logged."""
    result = run.algorithm.step(run)
    run.step += 1
    _log_step(run, result)
    return result.metrics


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> str:
    """Run (or continue) training; returns the text summary written to `<run_dir>/summary.txt`.
    Without `resume` a run directory that already holds a run is refused unless `overwrite`."""
    validate(cfg)
    prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    run = setup(cfg, resume=resume)
    algorithm, tr = run.algorithm, cfg.trainer
    total = algorithm.total_steps()
    bar = None
    if cfg.logging.progress:
        from tqdm import tqdm
        bar = tqdm(total=total, initial=run.step, desc=cfg.name, unit=algorithm.unit)
    try:
        algorithm.start(run)
        while run.step < total and not algorithm.done(run):
            m = train_step(run)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({algorithm.reward_key.split("/")[-1]: f"{m.get(algorithm.reward_key, float('nan')):.3f}",
                                 "step_s": f"{m.get('time/step', 0.0):.1f}"})
            if cfg.eval.every and run.step % cfg.eval.every == 0 and run.eval_rows:
                fresh_engine(run)
                run.logger.log(run.step, algorithm.evaluate(run))
            if run.probe_monitor is not None and run.step % cfg.logging.probe_every == 0:
                run.logger.log(run.step, run.probe_monitor(run.ctx.model, fresh_engine(run)))
            if (tr.checkpoint_every and run.step % tr.checkpoint_every == 0) or run.step == total \
                    or algorithm.done(run):
                checkpoint(run)
    finally:
        if bar is not None:
            bar.close()
    tail = algorithm.finish(run)
    summary = run.logger.finish(algorithm.reward_key) + tail
    if tail:
        (cfg.run_dir / "summary.txt").write_text(summary)
    run.engine.close()
    return summary
