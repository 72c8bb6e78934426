"""The standard columns every builder returns, so environments, rewards and the verl parquet export
read one shape whatever the source: `id`, `question`, `answer` (the gold answer as a string),
`data_source`, and `info` (a JSON string of source-specific extras; JSON because Arrow needs one
schema per column and the extras differ between sources and even between reasoning-gym tasks)."""

from __future__ import annotations

import enum
import json
from typing import Any

from datasets import Dataset, Features, Value

COLUMNS = ("id", "question", "answer", "data_source", "info")
FEATURES = Features({c: Value("string") for c in COLUMNS})


def to_jsonable(x: Any) -> Any:
    """JSON has no sets or enums: sets are sorted for a stable text, enums become their value,
    anything else its repr."""
    if isinstance(x, (set, frozenset)):
        return sorted((to_jsonable(v) for v in x), key=repr)
    if isinstance(x, enum.Enum):
        return to_jsonable(x.value) if not isinstance(x.value, (str, int, float, bool)) else x.value
    return repr(x)


def dumps_info(info: dict[str, Any]) -> str:
    return json.dumps(info, ensure_ascii=False, sort_keys=True, default=to_jsonable)


def loads_info(info: str | dict[str, Any] | None) -> dict[str, Any]:
    """Rewards get `info` as stored (a JSON string) or already decoded; accept both."""
    if info is None or info == "":
        return {}
    return json.loads(info) if isinstance(info, str) else dict(info)


def make_row(id: str, question: str, answer: str, data_source: str, info: dict[str, Any]) -> dict[str, str]:
    return {"id": str(id), "question": question, "answer": answer, "data_source": data_source,
            "info": dumps_info(info)}


def make_dataset(rows: list[dict[str, str]]) -> Dataset:
    return Dataset.from_list(rows, features=FEATURES)
