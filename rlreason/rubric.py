"""Rewards and how they are combined.

A reward is either a plain function of named fields (verifiers-style; testable on a literal string)

    @register_reward("math")
    def math_reward(completion: str, answer: str) -> float: ...

or a group-level object with `score_group(examples, episodes)` (MASH's n_min needs every rollout of
the question) and optionally `state_dict`/`load_state_dict`. The Rubric combines them with weights;
weight 0 logs a component without rewarding it. A reward that raises is counted in
`reward/<name>/errors` and logged with its traceback, never silently turned into 0.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from rlreason.registry import REWARDS, ConfigError, check_kwargs
from rlreason.types import Episode

log = logging.getLogger(__name__)

FIELDS = ("completion", "answer", "example", "episode", "metrics", "prompt", "info")


@dataclass
class Scored:
    """A reward value with a human-readable reason (e.g. 'no \\boxed{} answer found')."""

    value: float
    reason: str = ""


def _fields(example: dict, episode: Episode) -> dict[str, Any]:
    return {"completion": episode.transcript, "answer": example.get("answer"), "example": example,
            "episode": episode, "metrics": episode.metrics, "prompt": example.get("prompt"),
            "info": example.get("info") or {}}


class FunctionReward:
    """Adapts a per-episode function of named fields to the group interface."""

    def __init__(self, name: str, fn: Callable[..., Any], args: dict[str, Any]) -> None:
        self.name = name
        self.fn = functools.partial(fn, **args) if args else fn
        params = inspect.signature(fn).parameters
        self.wants = [p for p in params if p in FIELDS and p not in args]
        self.wants_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def score_group(self, examples: list[dict], episodes: list[Episode]) -> list[Any]:
        out = []
        for ex, ep in zip(examples, episodes):
            f = _fields(ex, ep)
            out.append(self.fn(**({k: f[k] for k in FIELDS} if self.wants_kwargs
                                  else {k: f[k] for k in self.wants})))
        return out


def make_reward(name: str, args: dict[str, Any], key: str) -> Any:
    obj = REWARDS.get(name, f"{key}.name")
    if inspect.isclass(obj):
        check_kwargs(obj.__init__, args, f"{key}.args")
        return obj(**args)
    check_kwargs(obj, args, f"{key}.args", skip=FIELDS)
    return FunctionReward(name, obj, args)


class Rubric:
    """Weighted sum of named rewards; fills `episode.reward` and `episode.reward_components`."""

    def __init__(self, specs: list[dict[str, Any]]) -> None:
        if not specs:
            raise ConfigError("rewards: at least one reward is required. Allowed names: "
                              + ", ".join(REWARDS.names()))
        self.terms: list[tuple[str, Any, float]] = []
        for i, spec in enumerate(specs):
            key = f"rewards[{i}]"
            unknown = set(spec) - {"name", "weight", "args"}
            if unknown:
                raise ConfigError(f"{key}: unknown keys {sorted(unknown)}. Allowed: name, weight, args.")
            if "name" not in spec:
                raise ConfigError(f"{key}.name is required. Allowed: {', '.join(REWARDS.names())}.")
            name = spec["name"]
            self.terms.append((name, make_reward(name, dict(spec.get("args") or {}), key),
                               float(spec.get("weight", 1.0))))
        self.errors: dict[str, int] = {n: 0 for n, _, _ in self.terms}

    def score_group(self, examples: list[dict], episodes: list[Episode]) -> None:
        totals = [0.0] * len(episodes)
        for name, reward, weight in self.terms:
            try:
                values = reward.score_group(examples, episodes)
            except Exception:  # noqa: BLE001 - a reward bug must not kill a long run; it is counted
                log.exception("reward '%s' raised on a group of %d episodes", name, len(episodes))
                self.errors[name] += len(episodes)
                values = [Scored(0.0, f"reward '{name}' raised")] * len(episodes)
            for i, (ep, v) in enumerate(zip(episodes, values)):
                comps = _components(name, v)
                if isinstance(v, Scored) and v.reason:
                    ep.info.setdefault("reward_reasons", {})[name] = v.reason
                for k, x in comps.items():
                    if not math.isfinite(x):
                        log.warning("reward '%s' returned %s; counted as an error", k, x)
                        self.errors[name] += 1
                        x = 0.0
                    ep.reward_components[k] = x
                totals[i] += weight * comps[name] if name in comps else 0.0
        for ep, t in zip(episodes, totals):
            ep.reward = t

    def state_dict(self) -> dict[str, Any]:
        return {name: r.state_dict() for name, r, _ in self.terms if hasattr(r, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, r, _ in self.terms:
            if name in state and hasattr(r, "load_state_dict"):
                r.load_state_dict(state[name])


def _components(name: str, v: Any) -> dict[str, float]:
    """float -> {name: v}; Scored -> {name: v.value}; dict -> its items, `name` from its 'reward' key."""
    if isinstance(v, Scored):
        return {name: float(v.value)}
    if isinstance(v, dict):
        comps = {f"{name}/{k}" if k != "reward" else name: float(x) for k, x in v.items()}
        if name not in comps:
            raise ValueError(f"reward '{name}' returned a dict without a 'reward' key: {sorted(v)}")
        return comps
    return {name: float(v)}
