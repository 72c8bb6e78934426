"""reasoning-gym tasks as standard rows.

reasoning-gym generates problems offline with difficulty knobs, which is what a 135M model on a CPU
needs: single-digit additions it can actually learn, then harder settings for a curriculum (Auto-CEI).
Each row's `info` keeps the task name, the full generator config and the item index (enough to
regenerate the exact entry) plus the entry itself, so a reward can call the task's own `score_answer`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import reasoning_gym
from datasets import Dataset
from reasoning_gym.factory import DATASETS

from rlreason.data.schema import make_dataset, make_row
from rlreason.registry import ConfigError, suggest

RESERVED = ("seed", "size")


def config_class(task: str) -> type:
    if task not in DATASETS:
        allowed = sorted(DATASETS)
        raise ConfigError(f"task: unknown reasoning-gym task '{task}'. Allowed: {', '.join(allowed)}."
                          + suggest(task, allowed))
    return DATASETS[task][1]


def check_difficulty(task: str, difficulty: dict[str, Any]) -> None:
    """reasoning-gym would raise a bare TypeError; name the field and list the real ones."""
    fields = [f.name for f in dataclasses.fields(config_class(task)) if f.name not in RESERVED]
    for k in difficulty:
        if k in RESERVED:
            raise ConfigError(f"difficulty.{k}: set '{k}' next to 'task', not inside difficulty.")
        if k not in fields:
            raise ConfigError(f"difficulty.{k}: not a setting of reasoning-gym task '{task}'. "
                              f"Allowed: {', '.join(fields)}." + suggest(k, fields))


def create(task: str, size: int, seed: int, **difficulty: Any) -> Any:
    check_difficulty(task, difficulty)
    try:
        return reasoning_gym.create_dataset(task, size=size, seed=seed, **difficulty)
    except AssertionError as e:  # reasoning-gym validates its configs with asserts
        raise ConfigError(f"difficulty: invalid settings for '{task}': {e}") from None


def generator_config(ds: Any) -> dict[str, Any]:
    """The config as JSON data (tuples become lists), enough to rebuild the generator."""
    return json.loads(json.dumps(dataclasses.asdict(ds.config), default=repr))


def build_reasoning_gym(task: str, size: int, seed: int, **difficulty: Any) -> Dataset:
    """`size` items of `task` generated with `seed`; `difficulty` are fields of the task's config
    dataclass (for basic_arithmetic: min_terms, max_terms, min_digits, max_digits, operators, ...)."""
    ds = create(task, size, seed, **difficulty)
    config = generator_config(ds)
    rows = []
    for i in range(size):
        entry = ds[i]
        answer = "" if entry["answer"] is None else str(entry["answer"])
        rows.append(make_row(f"reasoning_gym/{task}/{seed}/{i}", entry["question"], answer,
                             f"reasoning_gym/{task}",
                             {"task": task, "config": config, "index": i, "entry": entry}))
    return make_dataset(rows)
