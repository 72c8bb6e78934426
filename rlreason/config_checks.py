"""The values a run config may hold, checked before any model, engine or dataset loads.

The config loader checks types; this module checks ranges and combinations. A value outside its range
can silently invert training (a negative `trainer.max_grad_norm` flips the gradient inside
`clip_grad_norm_`, a negative `trainer.warmup_steps` makes the learning rate negative: gradient ascent with
exit code 0), so every numeric key has a rule here, and a test fails when a numeric field is added to
`rlreason.config` without one. Combinations where a setting would be silently ignored are errors when
they change what trains, warnings otherwise."""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable

from rlreason.registry import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric key: `lo`/`hi` bounds (open or closed), finite, optionally null."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    nullable: bool = False

    def ok(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def describe(self) -> str:
        if self.lo > -math.inf and self.hi < math.inf:
            text = f"{'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo > -math.inf:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return text + (" or null" if self.nullable else "")


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else str(x)


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
UNIT = Range(0, 1)  # [0, 1]
FRACTION = Range(0, 1, lo_open=True)  # (0, 1]

RANGES: dict[str, Range] = {
    "seed": Range(0, 2**32 - 1),  # numpy's seed range
    "data.eval_size": NON_NEGATIVE,
    "rollout.temperature": POSITIVE,  # T = 0 makes the G samples of a prompt identical: no group signal
    "rollout.top_p": FRACTION,
    "rollout.max_model_len": AT_LEAST_1,
    "rollout.kv_cache_gb": POSITIVE,
    "rollout.gpu_memory_utilization": FRACTION,
    "algo.eps_low": Range(0, 1, hi_open=True),  # the ratio's lower clip 1 - eps_low stays positive
    "algo.eps_high": NON_NEGATIVE,
    "algo.dual_clip_c": Range(1, lo_open=True, nullable=True),
    "algo.tis_cap": Range(0, lo_open=True, nullable=True),
    "algo.kl_coef": NON_NEGATIVE,
    "algo.entropy_coef": NON_NEGATIVE,
    "algo.max_sampling_rounds": AT_LEAST_1,
    "algo.adv_eps": POSITIVE,
    "algo.gamma": UNIT,
    "algo.lam": UNIT,
    "algo.value_coef": NON_NEGATIVE,
    "algo.value_clip": POSITIVE,
    "trainer.steps": AT_LEAST_1,
    "trainer.prompts_per_step": AT_LEAST_1,
    "trainer.samples_per_prompt": AT_LEAST_1,
    "trainer.lr": POSITIVE,
    "trainer.weight_decay": NON_NEGATIVE,
    "trainer.warmup_steps": NON_NEGATIVE,
    "trainer.ppo_epochs": AT_LEAST_1,
    "trainer.mini_batches": AT_LEAST_1,
    "trainer.micro_batch_size": AT_LEAST_1,
    "trainer.max_grad_norm": Range(0, lo_open=True, nullable=True),
    "trainer.max_nonfinite_steps": AT_LEAST_1,
    "trainer.checkpoint_every": NON_NEGATIVE,
    "trainer.keep_checkpoints": AT_LEAST_1,
    "eval.every": NON_NEGATIVE,
    "eval.k": AT_LEAST_1,
    "eval.max_problems": NON_NEGATIVE,
    "eval.temperature": NON_NEGATIVE,  # 0 = greedy evaluation
    "logging.log_samples": NON_NEGATIVE,
    "logging.probe_every": AT_LEAST_1,
    "logging.probe_prompts": AT_LEAST_1,
    "ei.rounds": AT_LEAST_1,
    "ei.questions_per_round": NON_NEGATIVE,
    "ei.samples_per_question": AT_LEAST_1,
    "ei.resample_temperature": Range(0, lo_open=True, nullable=True),
    "ei.resample_factor": NON_NEGATIVE,
    "ei.batch_size": AT_LEAST_1,
    "ei.lora_rank": NON_NEGATIVE,
    "ei.lora_alpha": Range(0, lo_open=True, nullable=True),
    "sft.epochs": AT_LEAST_1,
    "sft.batch_size": AT_LEAST_1,
}


def numeric_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted names of every int/float field (optional ones included) of a config dataclass tree."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        args = set(typing.get_args(tp)) - {type(None)} or {tp}
        if args & {int, float}:
            out.append(f"{prefix}{f.name}")
    return out


def _get(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def check_ranges(cfg: Any) -> None:
    """Raise a ConfigError naming the dotted key and its allowed range for the first value outside it."""
    for key, rule in RANGES.items():
        v = _get(cfg, key)
        if v is None and rule.nullable:
            continue
        if v is None or isinstance(v, bool) or not rule.ok(float(v)):
            raise ConfigError(f"{key}: must be {rule.describe()}, got {v!r}")


def check_combinations(cfg: Any, warn: Callable[[str], None] = log.warning) -> None:
    """Settings that would be silently ignored: an error where it changes what trains, else a warning."""
    a, t, defaults = cfg.algo, cfg.trainer, type(cfg.algo)()
    if cfg.algorithm != "grpo":  # expert iteration reads neither algo.* nor the batch shape of trainer.*
        return
    if a.kl_in_reward and a.kl_coef == 0:
        raise ConfigError("algo.kl_in_reward: true has no effect with algo.kl_coef=0 (no reference model is "
                          "loaded); set algo.kl_coef > 0 or algo.kl_in_reward=false")
    if t.mini_batches > t.prompts_per_step:
        raise ConfigError(f"trainer.mini_batches: {t.mini_batches} mini-batches cannot each hold whole prompt "
                          f"groups of trainer.prompts_per_step={t.prompts_per_step} prompts; allowed: "
                          f"1..{t.prompts_per_step}")

    def changed(*keys: str) -> list[str]:
        return [f"algo.{k}" for k in keys if getattr(a, k) != getattr(defaults, k)]

    ignored: list[tuple[list[str], str]] = [
        (changed("max_sampling_rounds") if not a.dynamic_sampling else [], "algo.dynamic_sampling is false"),
        (changed("kl_estimator") if a.kl_coef == 0 else [], "algo.kl_coef is 0"),
        (changed("eps_low", "eps_high", "dual_clip_c") if a.policy_loss == "reinforce" else [],
         "algo.policy_loss=reinforce has no clipping"),
        (changed("gamma", "lam", "value_coef", "value_clip") if a.advantage != "gae" else [],
         f"algo.advantage={a.advantage} has no critic (only gae uses these)"),
        (changed("adv_eps") if a.advantage not in ("grpo",) else [],
         f"algo.advantage={a.advantage} does not divide by a group std"),
    ]
    for keys, why in ignored:
        if keys:
            warn(f"{', '.join(keys)} ignored: {why}")
    if t.samples_per_prompt == 1 and a.advantage != "gae":
        warn(f"trainer.samples_per_prompt=1: every group has one sample, so algo.advantage={a.advantage} has no "
             "group baseline (the advantage is the raw reward)")
    if a.dynamic_sampling and t.samples_per_prompt == 1:
        warn("algo.dynamic_sampling: groups of one sample are always kept, so nothing is filtered")
    if cfg.eval.every and cfg.data.eval is None and cfg.data.eval_size == 0:
        warn("eval.every ignored: no held-out data (data.eval is null and data.eval_size is 0)")
    if cfg.logging.probe_dir is None and (cfg.logging.probe_every, cfg.logging.probe_prompts) != (
            type(cfg.logging)().probe_every, type(cfg.logging)().probe_prompts):
        warn("logging.probe_every / logging.probe_prompts ignored: logging.probe_dir is null")
