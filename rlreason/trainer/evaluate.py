"""Held-out evaluation: k samples per problem; pass@k = share of problems with at least one correct
sample, avg@k = mean correctness over all samples. "Correct" is the first reward term reaching 1
(the task's verifier, e.g. `math`); the mean total reward is reported too."""

from __future__ import annotations

from typing import Any

from rlreason.rollout.base import Engine, SamplingConfig
from rlreason.rubric import Rubric
from rlreason.trainer.rollout_phase import run_groups
from rlreason.types import Environment


def evaluate(engine: Engine, env: Environment, rubric: Rubric, examples: list[dict[str, Any]], *, k: int,
             temperature: float, seed: int) -> dict[str, float]:
    sampling = SamplingConfig(temperature=temperature, top_p=engine.sampling.top_p, top_k=engine.sampling.top_k)
    groups, errors = run_groups(engine, env, rubric, examples, k, seed=seed, sampling=sampling)
    primary = rubric.terms[0][0]
    correct = [[ep.reward_components.get(primary, 0.0) >= 1.0 - 1e-6 for ep in g] for g in groups]
    n = max(len(groups), 1)
    return {
        "eval/pass@k": sum(any(c) for c in correct) / n,
        "eval/avg@k": sum(sum(c) / len(c) for c in correct) / n,
        "eval/reward": sum(ep.reward for g in groups for ep in g) / max(sum(len(g) for g in groups), 1),
        "eval/k": float(k),
        "eval/problems": float(len(groups)),
        "eval/env_errors": float(errors),
    }
