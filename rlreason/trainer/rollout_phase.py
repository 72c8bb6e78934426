"""Run G episodes for each prompt concurrently through the engine, then score each group."""

from __future__ import annotations

import json
import logging
from typing import Any

from rlreason.rollout.base import Engine, SamplingConfig
from rlreason.rubric import Rubric
from rlreason.types import Environment, Episode

log = logging.getLogger(__name__)


def as_example(row: dict[str, Any]) -> dict[str, Any]:
    """Dataset rows keep `info` as a JSON string (Arrow-friendly); environments get a dict."""
    ex = dict(row)
    if isinstance(ex.get("info"), str):
        ex["info"] = json.loads(ex["info"]) if ex["info"] else {}
    return ex


def run_groups(engine: Engine, env: Environment, rubric: Rubric, examples: list[dict], G: int, *,
               seed: int, sampling: SamplingConfig | None = None) -> tuple[list[list[Episode]], int]:
    """Returns the scored groups that completed and the number of episodes that raised.

    An environment exception loses only its group (logged with the traceback and counted in
    `rollout/env_errors`); the step goes on with the rest."""

    async def one(ex: dict, s: int) -> Episode | None:
        try:
            return await env.rollout(ex, engine.policy(seed=s, sampling=sampling))
        except Exception:  # noqa: BLE001 - counted and logged, never silent
            log.exception("environment '%s' raised on example %s", env.name, ex.get("id"))
            return None

    flat = engine.run([one(ex, seed + i * G + j) for i, ex in enumerate(examples) for j in range(G)])
    groups, errors = [], 0
    for i, ex in enumerate(examples):
        eps = flat[i * G:(i + 1) * G]
        bad = sum(e is None for e in eps)
        errors += bad
        if bad:
            continue
        rubric.score_group([ex] * G, eps)
        groups.append(eps)
    if not groups and examples:
        raise RuntimeError(f"every episode of the step failed in environment '{env.name}'; see the log")
    return groups, errors
