"""`source: sft_jsonl`: supervised fine-tuning lines {"prompt": ..., "completion": ...}, the format the
warm-start writers produce (`python -m rlreason.data.running_sum sft`, `qa_world sft`, `search_qa sft`).

`prompt` is the text the policy sees (raw style) or a list of chat messages {role, content} (chat style:
the environment's chat template renders it); `completion` is the text to learn after it (the trainer adds
EOS). `response` is accepted for `completion` (the spelling of the probe repair sets and cei_mixture's
warm-start lines). A bad line stops the run before training with the file and line."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, Value

from rlreason.data.jsonl import DataError, parse_line, read_lines

FEATURES = Features({"id": Value("string"), "prompt": Value("string"), "completion": Value("string"),
                     "chat": Value("bool")})


def _prompt(value: object, where: str) -> tuple[str, bool]:
    """(prompt text or the messages as JSON, whether they are chat messages)."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: empty prompt")
        return value, False
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return json.dumps(value, ensure_ascii=False), True
    raise DataError(f"{where}: 'prompt' must be a string or a list of {{role, content}} messages, "
                    f"got {type(value).__name__}")


def build_sft_jsonl(path: str) -> Dataset:
    """One {prompt, completion} object per line (blank lines skipped); extra keys are ignored."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"sft jsonl file not found: {file}")
    rows = []
    for lineno, line in read_lines(file):
        if not line.strip():
            continue
        where = f"{file}, line {lineno}"
        row = parse_line(line, where)
        if "prompt" not in row:
            raise DataError(f"{where}: missing key 'prompt'; keys present: {sorted(row)}")
        key = "completion" if "completion" in row or "response" not in row else "response"
        if key not in row:
            raise DataError(f"{where}: missing key 'completion'; keys present: {sorted(row)}")
        completion = row[key]
        if not isinstance(completion, str) or not completion.strip():
            raise DataError(f"{where}: '{key}' must be a non-empty string, got {completion!r:.40}")
        prompt, chat = _prompt(row["prompt"], where)
        rows.append({"id": str(row.get("id", f"{file.stem}/{lineno}")), "prompt": prompt, "completion": completion,
                     "chat": chat})
    if not rows:
        raise DataError(f"{file}: no rows")
    return Dataset.from_list(rows, features=FEATURES)
