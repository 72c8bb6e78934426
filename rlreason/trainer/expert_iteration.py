"""Expert iteration with an "I don't know" curriculum (Auto-CEI, arXiv 2410.07627), top to bottom:

    round 0   measure the initial model on the held-out set (eval.k answers per problem):
              T = its precision; env.on_step_end(stats) initialises c1, c2 from its refusals
    round r   sample N answers to each of the round's questions                       engine, run_groups
              R: +1 correct, -1 wrong, 2 / (1 + exp(-c2 (d - c1))) - 1 refusal        `idk` reward
              keep every original, add draws in proportion to exp(R / T); keep R > -1   resample
              fine-tune one epoch on them (full or LoRA), sync weights into the engine  sft_epoch
              env.on_step_end(round stats): stage end -> c1 += / -= step, stop rule     curriculum_ei
              metrics, checkpoint (exact resume)
    end       measure again on the held-out set; precision-vs-refusal PNG; summary

Setup is the GRPO trainer's (`grpo.setup`: model, engine, env, rubric, data, sampler, logger); the
policy update is `sft.sft_epoch`. The environment must judge refusals (`summarize`, as curriculum_ei).
With LoRA the checkpoints hold the adapter layout (base weights + lora_A/B); the engine gets the merged
weights W + (alpha / r) B A.

Metrics (metrics.jsonl; step = round, 0 = the initial measurement):
    env/<env>/accuracy, precision, refusal_rate, f, steps_before_refusal   this round's samples
    env/<env>/c1, c2, stage, done                                          the curriculum after the round
    eval/accuracy, precision, refusal_rate, f, steps_before_refusal        held-out, rounds 0 and last
    ei/originals_kept (R > -1), ei/sft_rows (after resampling), ei/temperature (T)
    loss/sft, loss/grad_norm, loss/sft_steps; reward/total, reward/idk; time/...
and <run_dir>/precision_refusal.png plots precision against refusal rate over the rounds."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from rlreason.config import RunConfig
from rlreason.registry import ENVIRONMENTS, ConfigError
from rlreason.rollout import SamplingConfig
from rlreason.trainer.batch import episodes_to_rows
from rlreason.trainer.checkpoint import save_checkpoint
from rlreason.trainer.grpo import Run, _component_means, _env_metric_means, restore, setup as grpo_setup
from rlreason.trainer.grpo import validate as grpo_validate
from rlreason.trainer.perf import sequences
from rlreason.trainer.run_dir import prepare_run_dir
from rlreason.trainer.rollout_phase import as_example, run_groups
from rlreason.trainer.sft import sft_epoch

log = logging.getLogger(__name__)

MIN_TEMPERATURE = 0.05  # floor of the automatic T: an initial precision of 0 would divide by 0


@dataclass
class EIState:
    """What expert iteration keeps beyond the GRPO Run (saved in checkpoints)."""

    temperature: float | None = None  # T of the resampling, set by the initial measurement
    initial: dict[str, float] | None = None  # the initial model's held-out stats


def resample(rewards: list[float], T: float, num_draws: int, rng: random.Random) -> list[int]:
    """Indices of the fine-tuning set before filtering: every original once (0..n-1), then `num_draws`
    draws with replacement, P(i) = exp(R_i / T) / sum_j exp(R_j / T) (Auto-CEI, arXiv 2410.07627)."""
    n = len(rewards)
    if n == 0:
        return []
    top = max(rewards)
    weights = [math.exp((r - top) / T) for r in rewards]  # shifted by max R: same ratios, no overflow
    return list(range(n)) + rng.choices(range(n), weights=weights, k=num_draws)


def fine_tuning_set(rewards: list[float], T: float, num_draws: int, rng: random.Random) -> list[int]:
    """Indices of one round's fine-tuning set: `resample` (every original, then draws by exp(R / T)),
    keeping only R > -1, i.e. correct answers and refusals; a wrong answer is never trained on."""
    return [i for i in resample(rewards, T, num_draws, rng) if rewards[i] > -1.0]


# --- LoRA --------------------------------------------------------------------------------------------

def add_lora(run: Run) -> None:
    """Inject LoRA adapters into every linear layer of the policy in place (the HF engine generates with
    the same module), freeze the rest, and rebuild the optimizer over the adapters."""
    from peft import LoraConfig, inject_adapter_in_model

    e, tr = run.cfg.ei, run.cfg.trainer
    alpha = e.lora_alpha if e.lora_alpha is not None else 2.0 * e.lora_rank
    model = run.ctx.model
    inject_adapter_in_model(LoraConfig(r=e.lora_rank, lora_alpha=alpha, lora_dropout=0.0,
                                       target_modules="all-linear"), model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    run.ctx.optimizer = torch.optim.AdamW(params, lr=tr.lr, weight_decay=tr.weight_decay)
    warm = tr.warmup_steps  # the same schedule grpo.setup builds
    run.ctx.scheduler = torch.optim.lr_scheduler.LambdaLR(
        run.ctx.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0)


@torch.no_grad()
def engine_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the base model's names; LoRA layers merged (W + scale B A) without
    touching the module, so training continues on the unmerged adapters."""
    from peft.tuners.lora import LoraLayer

    deltas = {f"{name}.weight": mod.get_delta_weight("default") for name, mod in model.named_modules()
              if isinstance(mod, LoraLayer)}
    for name, t in model.state_dict().items():
        if "lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        yield name, (t + deltas[name].to(t.dtype)) if name in deltas else t


def sync(run: Run) -> None:
    model = run.ctx.model
    run.engine.update_weights(engine_weights(model) if run.cfg.ei.lora_rank else model.state_dict().items())


# --- measurement and one round -----------------------------------------------------------------------

def measure(run: Run, rows: list[dict], *, k: int, seed: int, sampling: SamplingConfig | None = None,
            prefix: str = "eval/") -> tuple[dict[str, float], dict[str, float]]:
    """k answers per row -> (env metric means as `env/<name>/...`, accuracy/precision/refusal_rate/f/
    steps_before_refusal under `prefix`)."""
    groups, errors = run_groups(run.engine, run.env, run.rubric, rows, k, seed=seed, sampling=sampling)
    episodes = [ep for g in groups for ep in g]
    means = _env_metric_means(run.env.name, episodes)
    p = f"env/{run.env.name}/"
    out = run.env.summarize({name[len(p):]: v for name, v in means.items()})
    return means, {**{prefix + name: v for name, v in out.items()},
                   prefix + "reward": float(np.mean([ep.reward for ep in episodes])),
                   prefix + "episodes": float(len(episodes)), prefix + "env_errors": float(errors)}


def _eval(run: Run) -> tuple[dict[str, float], dict[str, float]]:
    e = run.cfg.eval
    sampling = SamplingConfig(temperature=e.temperature, top_p=run.engine.sampling.top_p,
                              top_k=run.engine.sampling.top_k)
    return measure(run, run.eval_rows, k=e.k, seed=run.cfg.seed + 7, sampling=sampling)


def initial_measurement(run: Run, ei: EIState) -> None:
    """Round 0: the initial model's held-out stats give T and initialise the curriculum."""
    means, out = _eval(run)
    ei.initial = out
    precision = out["eval/precision"]
    T = run.cfg.ei.resample_temperature
    ei.temperature = T if T is not None else max(precision, MIN_TEMPERATURE)
    stats = {**means, "rollout/episodes": out["eval/episodes"]}  # the count: the refusals' sample std
    run.env.on_step_end(stats)  # first call: initialise c1, c2 from these refusals
    run.logger.log(0, {**out, **stats, "ei/temperature": ei.temperature})


def train_round(run: Run, ei: EIState) -> dict[str, float]:
    cfg, e = run.cfg, run.cfg.ei
    t0 = time.perf_counter()
    n_questions = e.questions_per_round or len(run.train_rows)
    examples = [as_example(run.train_rows[i]) for i in run.sampler.next_indices(n_questions)]
    seed = (cfg.seed * 1_000_003 + run.step * 10_007) % (2**31 - 1)  # resumed runs draw the same rollouts
    groups, env_errors = run_groups(run.engine, run.env, run.rubric, examples, e.samples_per_question, seed=seed)
    episodes = [ep for g in groups for ep in g]
    rewards = [ep.reward for ep in episodes]
    t_rollout = time.perf_counter() - t0

    picked = fine_tuning_set(rewards, ei.temperature, round(e.resample_factor * len(rewards)), random.Random(seed))
    kept = [episodes[i] for i in picked]
    rows = episodes_to_rows(kept, [0.0] * len(kept), list(range(len(kept))))
    t1 = time.perf_counter()
    loss_metrics = sft_epoch(rows, run.ctx, cfg.trainer, batch_size=e.batch_size) if rows \
        else {"loss/skipped_empty": 1.0}
    t_update = time.perf_counter() - t1
    t2 = time.perf_counter()
    sync(run)
    t_sync = time.perf_counter() - t2
    run.step += 1

    metrics = {
        "reward/total": float(np.mean(rewards)) if rewards else float("nan"),
        **_component_means(episodes),
        **{f"reward/{k}/errors": float(v) for k, v in run.rubric.errors.items() if v},
        **loss_metrics,
        "rollout/episodes": float(len(episodes)),
        "rollout/env_errors": float(env_errors),
        "rollout/response_tokens": float(np.mean([ep.num_trained_tokens for ep in episodes])),
        "ei/originals_kept": float(sum(r > -1.0 for r in rewards)),
        "ei/sft_rows": float(len(rows)),
        "ei/temperature": ei.temperature,
        **_env_metric_means(run.env.name, episodes),
        "time/rollout": t_rollout, "time/update": t_update, "time/sync": t_sync,
        "time/step": time.perf_counter() - t0,
        "lr": run.ctx.optimizer.param_groups[0]["lr"],
        **(run.perf.step(trained=sequences(rows), epochs=1, forward=[], share_prompts=run.ctx.share_prompts,
                         generated_tokens=sum(ep.num_trained_tokens for ep in episodes), rollout_s=t_rollout,
                         update_s=t_update) if run.perf is not None else {}),
    }
    run.env.on_step_end(metrics)  # one curriculum round; adds accuracy, precision, ..., c1, c2, stage
    run.logger.log(run.step, metrics)
    if cfg.logging.log_samples:
        run.logger.log_samples(run.step, [
            {"id": ex.get("id"), "prompt": ex.get("prompt"), "answer": ex.get("answer"),
             "transcript": g[0].transcript, "reward": g[0].reward, "components": g[0].reward_components,
             "info": g[0].info}
            for ex, g in list(zip(examples, groups))[:cfg.logging.log_samples]])
    return metrics


# --- checkpoints ----------------------------------------------------------------------------------------

def checkpoint(run: Run, ei: EIState) -> None:
    save_checkpoint(run.cfg.run_dir / "checkpoints", run.step, model=run.ctx.model,
                    torch_state={"optimizer": run.ctx.optimizer.state_dict(),
                                 "scheduler": run.ctx.scheduler.state_dict()},
                    state={"sampler": run.sampler.state_dict(), "env": run.env.state_dict(),
                           "rewards": run.rubric.state_dict(), "ei": ei.__dict__},
                    keep=run.cfg.trainer.keep_checkpoints, tokenizer=run.tokenizer)


def _resume(run: Run, ei: EIState) -> None:
    state = restore(run)
    if state is None:
        return
    ei.__dict__.update(state["ei"])
    # grpo.setup opened the logger without history (it cannot resume before LoRA is injected): reload it.
    run.logger.history = run.logger.load_history()
    run.logger.truncate_after(run.step)
    sync(run)


# --- the loop ----------------------------------------------------------------------------------------------

def setup(cfg: RunConfig, *, resume: bool = False) -> tuple[Run, EIState]:
    e = cfg.ei
    for key in ("rounds", "samples_per_question", "batch_size"):
        if getattr(e, key) < 1:
            raise ConfigError(f"ei.{key}: must be >= 1, got {getattr(e, key)}")
    if e.questions_per_round < 0 or e.lora_rank < 0 or e.resample_factor < 0:
        raise ConfigError("ei.questions_per_round, ei.lora_rank and ei.resample_factor must be >= 0")
    if e.resample_temperature is not None and e.resample_temperature <= 0:
        raise ConfigError(f"ei.resample_temperature: must be > 0 or null, got {e.resample_temperature}")
    if not hasattr(ENVIRONMENTS.get(cfg.env.name, "env.name"), "summarize"):
        raise ConfigError(f"env.name: algorithm=expert_iteration needs an environment that judges refusals "
                          f"(curriculum_ei or a subclass); '{cfg.env.name}' does not.")
    if cfg.data.eval is None and cfg.data.eval_size <= 0 or cfg.eval.max_problems < 1:
        raise ConfigError("data.eval_size: algorithm=expert_iteration measures the initial model on the held-out "
                          "set; set data.eval or data.eval_size > 0 (and eval.max_problems >= 1).")
    run = grpo_setup(cfg, resume=False)
    if e.lora_rank:
        add_lora(run)
    ei = EIState()
    if resume:
        _resume(run, ei)
    return run, ei


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False) -> str:
    """Run (or continue) expert iteration; returns the summary written to `<run_dir>/summary.txt`.
    Without `resume` a run directory that already holds a run is refused unless `overwrite`."""
    grpo_validate(cfg)
    prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
    run, ei = setup(cfg, resume=resume)
    e, tr = cfg.ei, cfg.trainer
    bar = None
    if cfg.logging.progress:
        from tqdm import tqdm
        bar = tqdm(total=e.rounds, initial=run.step, desc=cfg.name, unit="round")
    try:
        if ei.temperature is None:
            initial_measurement(run, ei)
            checkpoint(run, ei)
        while run.step < e.rounds and not getattr(run.env, "done", False):
            m = train_round(run, ei)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(reward=f"{m['reward/total']:.3f}", step_s=f"{m['time/step']:.1f}")
            if cfg.eval.every and run.step % cfg.eval.every == 0:
                run.logger.log(run.step, _eval(run)[1])
            if (tr.checkpoint_every and run.step % tr.checkpoint_every == 0) or run.step == e.rounds \
                    or getattr(run.env, "done", False):
                checkpoint(run, ei)
    finally:
        if bar is not None:
            bar.close()
    final = _eval(run)[1]
    if not cfg.eval.every or run.step % cfg.eval.every:
        run.logger.log(run.step, final)
    summary = run.logger.finish() + report(run, ei.initial or {}, final)
    (cfg.run_dir / "summary.txt").write_text(summary)
    try:
        plot_precision_refusal(run.logger.history, cfg.run_dir / "precision_refusal.png", run.env.name)
    except Exception as exc:  # noqa: BLE001 - a plot must not fail a finished run
        log.warning("could not plot precision vs refusal rate: %s", exc)
    run.engine.close()
    return summary


def report(run: Run, initial: dict[str, float], final: dict[str, float]) -> str:
    def line(name: str, s: dict[str, float]) -> str:
        return (f"{name} (held-out): accuracy {s.get('eval/accuracy', math.nan):.3f}, precision "
                f"{s.get('eval/precision', math.nan):.3f}, refusal rate {s.get('eval/refusal_rate', math.nan):.3f}, "
                f"f {s.get('eval/f', math.nan):.3f}, steps before refusal {s.get('eval/steps_before_refusal', math.nan):.2f}")
    cur = getattr(run.env, "curriculum", None)
    stages = " -> ".join(f"{h['c1']:.3f}" for h in cur.history) if cur is not None else "n/a"
    return (f"{line('initial', initial)}\n{line('final', final)}\n"
            f"rounds: {run.step}; c1 over stages: {stages}" + (" (stopped: neighbour tried and worse)"
                                                            if getattr(run.env, 'done', False) else "") + "\n")


def plot_precision_refusal(history: list[dict[str, Any]], path: Path, env_name: str) -> None:
    """Precision against refusal rate of each round's samples (colour = round, label = the c1 it was
    sampled under), and the held-out measurements before and after."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = f"env/{env_name}/"
    rounds, c1_in_force, c1 = [], [], None
    for h in history:  # a row logs c1 after its round; the round sampled under the previous row's
        if p + "precision" in h and "reward/total" in h:
            rounds.append(h)
            c1_in_force.append(c1)
        c1 = h.get(p + "c1", c1)
    evals = [h for h in history if "eval/precision" in h]
    fig, ax = plt.subplots(figsize=(6, 5))
    if rounds:
        x, y = [h[p + "refusal_rate"] for h in rounds], [h[p + "precision"] for h in rounds]
        ax.plot(x, y, "-", color="0.7", lw=1)
        sc = ax.scatter(x, y, c=[h["step"] for h in rounds], cmap="viridis", zorder=3)
        fig.colorbar(sc, ax=ax, label="round")
        for xi, yi, c in zip(x, y, c1_in_force):
            if c is not None:
                ax.annotate(f"c1={c:.2f}", (xi, yi), fontsize=6, xytext=(3, 3), textcoords="offset points")
    for h, label, marker in ((evals[0], "held-out, initial", "*"), (evals[-1], "held-out, final", "P"))[:len(evals)]:
        ax.scatter([h["eval/refusal_rate"]], [h["eval/precision"]], marker=marker, s=160, color="C3", label=label, zorder=4)
    ax.set_xlabel("refusal rate")
    ax.set_ylabel("precision (correct / answered)")
    ax.set_title("Auto-CEI: precision vs refusal rate")
    ax.grid(alpha=0.3)
    if evals:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
