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

_RAISED = object()
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
        try:
            return obj(**args)
        except ConfigError:
            raise
        except (TypeError, ValueError) as e:  # the constructor refused a value: a config error, named
            raise ConfigError(f"{key}.args: reward '{name}' rejected its arguments: {e}") from e
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
            weight = spec.get("weight", 1.0)
            if _finite(weight) is None:
                raise ConfigError(f"{key}.weight: must be a finite number (0 logs the reward without "
                                  f"rewarding), got {weight!r}")
            self.terms.append((name, make_reward(name, dict(spec.get("args") or {}), key), float(weight)))
        self.errors: dict[str, int] = {n: 0 for n, _, _ in self.terms}

    def score_group(self, examples: list[dict], episodes: list[Episode]) -> None:
        """A term that raises, returns a list of the wrong length or type, or a value that is not a finite
        number (NaN, inf, None, a string) is an error of that reward, counted per episode by name and logged
        with the bad value; the term is 0 for that episode and never reaches the total."""
        totals = [0.0] * len(episodes)
        for name, reward, weight in self.terms:
            try:
                values = reward.score_group(examples, episodes)
            except Exception:  # noqa: BLE001 - a reward bug must not kill a long run; it is counted
                log.exception("reward '%s' raised on a group of %d episodes", name, len(episodes))
                values = _RAISED
            if not isinstance(values, (list, tuple)) or len(values) != len(episodes):
                if values is not _RAISED:
                    log.error("reward '%s' returned %s for a group of %d episodes; counted as an error",
                              name, _describe(values), len(episodes))
                self.errors[name] += len(episodes)
                for ep in episodes:
                    ep.reward_components[name] = 0.0
                continue
            for i, (ep, v) in enumerate(zip(episodes, values)):
                comps = _components(name, v)
                if comps is None:
                    log.error("reward '%s' returned %r; counted as an error", name, v)
                    self.errors[name] += 1
                    comps = {name: 0.0}
                if isinstance(v, Scored) and v.reason:
                    ep.info.setdefault("reward_reasons", {})[name] = v.reason
                ep.reward_components.update(comps)
                totals[i] += weight * comps[name]
        for ep, t in zip(episodes, totals):
            ep.reward = t

    def state_dict(self) -> dict[str, Any]:
        return {name: r.state_dict() for name, r, _ in self.terms if hasattr(r, "state_dict")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, r, _ in self.terms:
            if name in state and hasattr(r, "load_state_dict"):
                r.load_state_dict(state[name])


def _components(name: str, v: Any) -> dict[str, float] | None:
    """float -> {name: v}; Scored -> {name: v.value}; dict -> its items, `name` from its 'reward' key.
    None when any value is not a finite real number (NaN, inf, None, a string, a dict without 'reward')."""
    if isinstance(v, Scored):
        v = v.value
    if isinstance(v, dict):
        comps = {f"{name}/{k}" if k != "reward" else name: x for k, x in v.items()}
    else:
        comps = {name: v}
    out = {k: _finite(x) for k, x in comps.items()}
    if name not in out or any(x is None for x in out.values()):
        return None
    return out  # type: ignore[return-value]


def _finite(x: Any) -> float | None:
    """float(x) for a finite real number (bool, int, float, numpy or 0-d tensor); None for NaN, inf, None, text."""
    if x is None or isinstance(x, (str, bytes)):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _describe(values: Any) -> str:
    if isinstance(values, (list, tuple)):
        return f"{len(values)} values"
    return f"{type(values).__name__} {values!r:.80}"
