"""rlreason datasets -> verl's parquet (the schema `verl.utils.dataset.RLHFDataset` reads).

One row per example:

    prompt        list of {role, content}: the messages the environment would send (verl uses them to
                  filter over-long prompts and to log; the adapter re-renders the prompt from extra_info)
    data_source   the rlreason data_source
    reward_model  {"style": "rule", "ground_truth": answer}
    extra_info    {"index", "id", "question", "answer", "info" (JSON string), "split"}: everything the
                  adapter needs to rebuild rlreason's example dict
    agent_name    the agent loop that runs the row (`rlreason_<env name>`, see agent_loop.py)

This module never imports verl: it only writes parquet with pyarrow, so it runs in the main venv.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

AGENT_PREFIX = "rlreason_"


def agent_name(env_name: str) -> str:
    """Name of the agent loop registered for an environment in the agent-loop yaml."""
    return f"{AGENT_PREFIX}{env_name}"


def example_from_extra_info(extra_info: dict[str, Any], data_source: str | None = None) -> dict[str, Any]:
    """The rlreason example dict (info decoded, as environments expect) from a verl row's extra_info."""
    info = extra_info.get("info")
    ex = {"id": extra_info.get("id"), "question": extra_info.get("question"),
          "answer": extra_info.get("answer"), "data_source": data_source,
          "info": json.loads(info) if isinstance(info, str) and info else dict(info or {})}
    return ex


def _messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _prompt_renderer(env_name: str | None, env_args: dict[str, Any] | None):
    """The environment's own `prompt(example)` when it has one (SingleTurn and its subclasses), built
    without a tokenizer: formatting a prompt needs none. Otherwise the bare question as one user turn."""
    if env_name is None:
        return None
    from rlreason.registry import build_environment
    env = build_environment(env_name, None, dict(env_args or {}))
    return getattr(env, "prompt", None)


def to_verl_rows(rows: Iterable[dict[str, Any]], *, env_name: str = "single_turn",
                 env_args: dict[str, Any] | None = None, split: str = "train") -> list[dict[str, Any]]:
    """Standard-column rows (id, question, answer, data_source, info JSON) -> verl rows (see module doc)."""
    render = _prompt_renderer(env_name, env_args)
    out = []
    for i, row in enumerate(rows):
        info = row.get("info") or ""
        info_json = info if isinstance(info, str) else json.dumps(info, sort_keys=True)
        extra = {"index": i, "id": str(row.get("id", i)), "question": row.get("question") or "",
                 "answer": "" if row.get("answer") is None else str(row["answer"]),
                 "info": info_json, "split": split}
        example = example_from_extra_info(extra, row.get("data_source"))
        prompt = render(example) if render is not None else example["question"]
        out.append({"prompt": _messages(prompt), "data_source": row.get("data_source") or "",
                    "reward_model": {"style": "rule", "ground_truth": extra["answer"]},
                    "extra_info": extra, "agent_name": agent_name(env_name)})
    return out


def export_verl_parquet(rows: Iterable[dict[str, Any]], path: str | Path, *, env_name: str = "single_turn",
                        env_args: dict[str, Any] | None = None, split: str = "train") -> Path:
    """Write `rows` (a `datasets.Dataset` or dicts with the standard columns) as verl parquet at `path`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    verl_rows = to_verl_rows(rows, env_name=env_name, env_args=env_args, split=split)
    if not verl_rows:
        raise ValueError(f"no rows to export to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(pa.Table.from_pylist(verl_rows), tmp)
    tmp.replace(path)  # atomic: a reader never sees half a file
    log.info("wrote %d verl rows to %s", len(verl_rows), path)
    return path
