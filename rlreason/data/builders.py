"""One entry point from a config block to a Dataset, so YAML can say

    data:
      train: {source: reasoning_gym, task: basic_arithmetic, size: 512, seed: 0,
              difficulty: {min_terms: 2, max_terms: 2, max_digits: 1, operators: ["+"]}}
      test:  {source: math500, limit: 100}

and every mistake (unknown source, misspelt key, missing key) is reported with its full dotted key and
the allowed values before anything is generated.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from datasets import Dataset

from rlreason.data.jsonl import load_jsonl
from rlreason.data.math_sets import build_gsm8k, build_math, build_math500
from rlreason.data.reasoning_gym import build_reasoning_gym, check_difficulty
from rlreason.registry import ConfigError, Registry, suggest

COMMON_KEYS = ("source", "limit")


def _reasoning_gym(task: str, size: int, seed: int = 0, difficulty: Mapping[str, Any] | None = None) -> Dataset:
    """Config form of build_reasoning_gym: the task's settings sit under one `difficulty` key so they
    cannot collide with the builder's own keys. `seed` defaults to 0, so the same spec always makes the
    same problems."""
    difficulty = dict(difficulty or {})
    check_difficulty(task, difficulty)  # before the call: {seed: 1} would be a bare TypeError
    return build_reasoning_gym(task, size, seed, **difficulty)


# `key` names only the tail: build_dataset's errors say where the block sits (data.train.source, ...).
SOURCES: Registry[Callable[..., Dataset]] = Registry("data source", "rlreason.data_sources", key="source")
SOURCES.register("reasoning_gym")(_reasoning_gym)
SOURCES.register("gsm8k")(build_gsm8k)
SOURCES.register("math")(build_math)
SOURCES.register("math500")(build_math500)
SOURCES.register("jsonl")(load_jsonl)

# Search QA sources (pay-per-search), built in rlreason/data/search_qa.py.
from rlreason.data.search_qa import build_fanoutqa, build_qa_jsonl  # noqa: E402

SOURCES.register("fanoutqa")(build_fanoutqa)
SOURCES.register("qa_jsonl")(build_qa_jsonl)

from rlreason.data.qa_world import build_qa_world  # noqa: E402

SOURCES.register("qa_world")(build_qa_world)

from rlreason.data.cei_mixture import build_cei_mixture  # noqa: E402

SOURCES.register("cei_mixture")(build_cei_mixture)

from rlreason.data.running_sum import build_running_sum  # noqa: E402

SOURCES.register("running_sum")(build_running_sum)

from rlreason.data.sft_jsonl import build_sft_jsonl  # noqa: E402

SOURCES.register("sft_jsonl")(build_sft_jsonl)
register_data_source = SOURCES.register


def _params(fn: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _check_keys(spec: Mapping[str, Any], key: str) -> Callable[..., Dataset]:
    if "source" not in spec:
        unknown = "".join(f" Unknown key {key}.{k}." + suggest(k, list(COMMON_KEYS)) for k in spec)
        raise ConfigError(f"{key}.source is required. Allowed: {', '.join(SOURCES.names())}.{unknown}")
    source = spec["source"]
    builder = SOURCES.get(source, f"{key}.source")
    params = _params(builder)
    allowed = list(COMMON_KEYS) + list(params)
    for k in spec:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}: unknown key for source '{source}'. Allowed: {', '.join(allowed)}."
                              + suggest(k, allowed))
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and name not in spec:
            raise ConfigError(f"{key}.{name} is required for source '{source}'. "
                              f"Allowed: {', '.join(allowed)}.")
    return builder


def build_dataset(spec: Mapping[str, Any], *, key: str = "data") -> Dataset:
    """Build the dataset a config block describes; `key` is its dotted place in the config
    (e.g. "data.train"), used in every error message. `limit` keeps the first n rows."""
    builder = _check_keys(spec, key)
    args = {k: v for k, v in spec.items() if k not in COMMON_KEYS}
    try:
        ds = builder(**args)
    except ConfigError as e:  # builders name their own local key; prefix where it sits in the config
        raise ConfigError(f"{key}.{e}") from None
    limit = spec.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"{key}.limit: must be a positive integer or null, got {limit!r}.")
        ds = ds.select(range(min(limit, len(ds))))
    return ds


def train_test_split(ds: Dataset, *, test_size: float | int, seed: int,
                     key: str = "data.eval_size") -> tuple[Dataset, Dataset]:
    """Seeded split (a fraction in (0, 1) or a row count), so a held-out set is the same every run. `key`
    is the config key `test_size` came from, named in errors."""
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ConfigError(f"{key}: a fraction must be in (0, 1), got {test_size}.")
    if isinstance(test_size, int) and not 0 < test_size < len(ds):
        raise ConfigError(f"{key}: a row count must be in 1..{len(ds) - 1} (data.train has {len(ds)} rows), "
                          f"got {test_size}.")
    parts = ds.train_test_split(test_size=test_size, seed=seed)
    return parts["train"], parts["test"]
