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

A plug-in of the one loop (trainer/loop.py: setup, resume, checkpoints, metrics, samples); the policy
update is `sft.sft_epoch`. The environment must be a `rlreason.types.CurriculumEnvironment` (it judges
refusals and owns the curriculum, as curriculum_ei). With LoRA the checkpoints hold the adapter layout
(base weights + lora_A/B); the engine gets the merged weights W + (alpha / r) B A.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import torch

from rlreason.registry import ENVIRONMENTS, ConfigError
from rlreason.rollout import SamplingConfig
from rlreason.trainer.algorithm import Algorithm, StepResult
from rlreason.trainer.batch import episodes_to_rows
from rlreason.trainer.perf import sequences
from rlreason.trainer.rollout_phase import as_example, run_groups
from rlreason.trainer.sft import sft_epoch
from rlreason.types import CurriculumEnvironment

if TYPE_CHECKING:
    from rlreason.trainer.loop import Run

log = logging.getLogger(__name__)

MIN_TEMPERATURE = 0.05  # floor of the automatic T: an initial precision of 0 would divide by 0


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


def measure(run: Run, rows: list[dict], *, k: int, seed: int, sampling: SamplingConfig | None = None,
            prefix: str = "eval/") -> tuple[dict[str, float], dict[str, float]]:
    """k answers per row -> (env metric means as `env/<name>/...`, accuracy/precision/refusal_rate/f/
    steps_before_refusal under `prefix`)."""
    from rlreason.trainer.loop import env_metric_means
    groups, errors = run_groups(run.engine, run.env, run.rubric, rows, k, seed=seed, sampling=sampling)
    episodes = [ep for g in groups for ep in g]
    means = env_metric_means(run.env.name, episodes)
    p = f"env/{run.env.name}/"
    out = run.env.summarize({name[len(p):]: v for name, v in means.items()})
    return means, {**{prefix + name: v for name, v in out.items()},
                   prefix + "reward": float(np.mean([ep.reward for ep in episodes])),
                   prefix + "episodes": float(len(episodes)), prefix + "env_errors": float(errors)}


class ExpertIteration(Algorithm):
    """`algorithm: expert_iteration`; one loop step is one round. Keeps T and the initial measurement in
    the checkpoint."""

    name = "expert_iteration"
    unit = "round"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.temperature: float | None = None  # T of the resampling, set by the initial measurement
        self.initial: dict[str, float] | None = None  # the initial model's held-out stats

    def validate(self) -> None:
        cfg, e = self.cfg, self.cfg.ei
        for key in ("rounds", "samples_per_question", "batch_size"):
            if getattr(e, key) < 1:
                raise ConfigError(f"ei.{key}: must be >= 1, got {getattr(e, key)}")
        if e.questions_per_round < 0 or e.lora_rank < 0 or e.resample_factor < 0:
            raise ConfigError("ei.questions_per_round, ei.lora_rank and ei.resample_factor must be >= 0")
        if e.resample_temperature is not None and e.resample_temperature <= 0:
            raise ConfigError(f"ei.resample_temperature: must be > 0 or null, got {e.resample_temperature}")
        env_cls = ENVIRONMENTS.get(cfg.env.name, "env.name")
        if not (isinstance(env_cls, type) and issubclass(env_cls, CurriculumEnvironment)):
            raise ConfigError(f"env.name: algorithm=expert_iteration needs an environment that judges refusals "
                              f"(curriculum_ei or a subclass); '{cfg.env.name}' does not.")
        if cfg.data.eval is None and cfg.data.eval_size <= 0 or cfg.eval.max_problems < 1:
            raise ConfigError("data.eval_size: algorithm=expert_iteration measures the initial model on the "
                              "held-out set; set data.eval or data.eval_size > 0 (and eval.max_problems >= 1).")

    def total_steps(self) -> int:
        return self.cfg.ei.rounds

    def prepare(self, run: Run) -> None:
        if self.trains_adapters_only():
            self._add_lora(run)

    def _add_lora(self, run: Run) -> None:
        """Inject LoRA adapters into every linear layer of the policy in place (the HF engine generates
        with the same module), freeze the rest, and rebuild the optimizer over the adapters."""
        from peft import LoraConfig, inject_adapter_in_model

        from rlreason.trainer.loop import build_optimizer
        e = self.cfg.ei
        alpha = e.lora_alpha if e.lora_alpha is not None else 2.0 * e.lora_rank
        model = run.ctx.model
        inject_adapter_in_model(LoraConfig(r=e.lora_rank, lora_alpha=alpha, lora_dropout=0.0,
                                           target_modules="all-linear"), model)
        for name, p in model.named_parameters():
            p.requires_grad_("lora_" in name)
        params = [p for p in model.parameters() if p.requires_grad]
        # Unfused over the adapters (small tensors), as LoRA runs have always been: the same numbers on resume.
        run.ctx.optimizer, run.ctx.scheduler = build_optimizer(params, self.cfg, run.ctx.device, fused=False)

    def trains_adapters_only(self) -> bool:
        return bool(self.cfg.ei.lora_rank)

    def engine_weights(self, run: Run) -> Iterator[tuple[str, torch.Tensor]]:
        model = run.ctx.model
        return engine_weights(model) if self.trains_adapters_only() else model.state_dict().items()

    def state(self) -> dict[str, Any]:
        return {"ei": {"temperature": self.temperature, "initial": self.initial}}

    def load_state(self, run: Run, state: dict[str, Any], torch_state: dict[str, Any]) -> None:
        self.temperature, self.initial = state["ei"]["temperature"], state["ei"]["initial"]

    def done(self, run: Run) -> bool:
        return run.env.done

    def _measure(self, run: Run) -> tuple[dict[str, float], dict[str, float]]:
        e = self.cfg.eval
        sampling = SamplingConfig(temperature=e.temperature, top_p=run.engine.sampling.top_p,
                                  top_k=run.engine.sampling.top_k)
        return measure(run, run.eval_rows, k=e.k, seed=self.cfg.seed + 7, sampling=sampling)

    def evaluate(self, run: Run) -> dict[str, float]:
        return self._measure(run)[1]

    def start(self, run: Run) -> None:
        """Round 0: the initial model's held-out stats give T and initialise the curriculum."""
        from rlreason.trainer.loop import checkpoint
        if self.temperature is not None:
            return
        means, out = self._measure(run)
        self.initial = out
        T = self.cfg.ei.resample_temperature
        self.temperature = T if T is not None else max(out["eval/precision"], MIN_TEMPERATURE)
        stats = {**means, "rollout/episodes": out["eval/episodes"]}  # the count: the refusals' sample std
        run.env.on_step_end(stats)  # first call: initialise c1, c2 from these refusals
        run.logger.log(0, {**out, **stats, "ei/temperature": self.temperature})
        checkpoint(run)

    def step(self, run: Run) -> StepResult:
        from rlreason.trainer.loop import rollout_metrics, step_seed, sync
        cfg, e = self.cfg, self.cfg.ei
        t0 = time.perf_counter()
        n_questions = e.questions_per_round or len(run.train_rows)
        examples = [as_example(run.train_rows[i]) for i in run.sampler.next_indices(n_questions)]
        seed = step_seed(cfg, run.step)
        groups, env_errors = run_groups(run.engine, run.env, run.rubric, examples, e.samples_per_question,
                                        seed=seed)
        episodes = [ep for g in groups for ep in g]
        rewards = [ep.reward for ep in episodes]
        t_rollout = time.perf_counter() - t0

        picked = fine_tuning_set(rewards, self.temperature, round(e.resample_factor * len(rewards)),
                                 random.Random(seed))
        kept = [episodes[i] for i in picked]
        rows = episodes_to_rows(kept, [0.0] * len(kept), list(range(len(kept))))
        t1 = time.perf_counter()
        loss_metrics = sft_epoch(rows, run.ctx, cfg.trainer, batch_size=e.batch_size) if rows \
            else {"loss/skipped_empty": 1.0}
        t_update = time.perf_counter() - t1
        t2 = time.perf_counter()
        sync(run)
        t_sync = time.perf_counter() - t2

        metrics = {
            **rollout_metrics(run, episodes, env_errors),
            **loss_metrics,
            "ei/originals_kept": float(sum(r > -1.0 for r in rewards)),
            "ei/sft_rows": float(len(rows)),
            "ei/temperature": self.temperature,
            "time/rollout": t_rollout, "time/update": t_update, "time/sync": t_sync,
            "time/step": time.perf_counter() - t0,
            "lr": run.ctx.optimizer.param_groups[0]["lr"],
            **(run.perf.step(trained=sequences(rows), epochs=1, forward=[], share_prompts=run.ctx.share_prompts,
                             generated_tokens=sum(ep.num_trained_tokens for ep in episodes), rollout_s=t_rollout,
                             update_s=t_update) if run.perf is not None else {}),
        }
        return StepResult(metrics, list(zip(examples, groups)))  # env.on_step_end: one curriculum round

    def finish(self, run: Run) -> str:
        """The final held-out measurement, the precision-vs-refusal plot, and the report."""
        final = self.evaluate(run)
        if not self.cfg.eval.every or run.step % self.cfg.eval.every:
            run.logger.log(run.step, final)
        try:
            plot_precision_refusal(run.logger.history, self.cfg.run_dir / "precision_refusal.png", run.env.name)
        except Exception as exc:  # noqa: BLE001 - a plot must not fail a finished run
            log.warning("could not plot precision vs refusal rate: %s", exc)
        return report(run, self.initial or {}, final)


def report(run: Run, initial: dict[str, float], final: dict[str, float]) -> str:
    def line(name: str, s: dict[str, float]) -> str:
        return (f"{name} (held-out): accuracy {s.get('eval/accuracy', math.nan):.3f}, precision "
                f"{s.get('eval/precision', math.nan):.3f}, refusal rate {s.get('eval/refusal_rate', math.nan):.3f}, "
                f"f {s.get('eval/f', math.nan):.3f}, steps before refusal {s.get('eval/steps_before_refusal', math.nan):.2f}")
    stages = " -> ".join(f"{c1:.3f}" for c1 in run.env.stage_thresholds()) or "n/a"
    return (f"{line('initial', initial)}\n{line('final', final)}\n"
            f"rounds: {run.step}; c1 over stages: {stages}" + (" (stopped: neighbour tried and worse)"
                                                            if run.env.done else "") + "\n")


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
