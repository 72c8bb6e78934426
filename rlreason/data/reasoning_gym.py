"""reasoning-gym tasks as standard rows.

reasoning-gym generates problems offline with difficulty knobs, which is what a 135M model on a CPU
needs: single-digit additions it can actually learn, then harder settings for a curriculum (Auto-CEI).
Each row's `info` keeps the task name, the full generator config and the item index (enough to
regenerate the exact entry) plus the entry itself, so a reward can call the task's own `score_answer`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import reasoning_gym
from datasets import Dataset
from reasoning_gym.factory import DATASETS

from rlreason.data.schema import make_dataset, make_row, to_jsonable
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


def _restore(value: Any, default: Any) -> Any:
    """Undo what JSON did to one config value, guided by the field's default: nested config
    dataclasses (rearc's board_format_opts) come back as dataclasses, enums (word_sorting's
    transformation) as enums, tuples as tuples."""
    if dataclasses.is_dataclass(default) and isinstance(value, dict):
        return _restore_dataclass(type(default), value)
    if isinstance(default, enum.Enum):
        return type(default)(value)
    if isinstance(default, (list, tuple)) and isinstance(value, list):
        kinds = {type(d) for d in default}
        if len(kinds) == 1 and issubclass(next(iter(kinds)), enum.Enum):  # aiw's task_types
            value = [next(iter(kinds))(v) for v in value]
        return tuple(value) if isinstance(default, tuple) else value
    return value


def _restore_dataclass(cls: type, stored: dict[str, Any]) -> Any:
    return cls(**_restored_fields(cls, stored))


def _restored_fields(cls: type, stored: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in stored:
            default = (f.default if f.default is not dataclasses.MISSING else
                       f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            out[f.name] = _restore(stored[f.name], default)
    return out


def rebuild(task: str, config: dict[str, Any]) -> Any:
    """The generator a row came from, from the config stored in its `info` (for scoring)."""
    return reasoning_gym.create_dataset(task, **_restored_fields(config_class(task), config))


def generator_config(ds: Any) -> dict[str, Any]:
    """The config as JSON data (tuples become lists), enough to rebuild the generator."""
    return json.loads(json.dumps(dataclasses.asdict(ds.config), default=to_jsonable))


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
