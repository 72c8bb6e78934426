"""`source: sft_jsonl`: supervised fine-tuning lines {"prompt": ..., "completion": ...}, the format the
warm-start writers produce (`python -m rlreason.data.running_sum sft`, `qa_world sft`, `search_qa sft`).

`prompt` is the text the policy sees (raw style) or a list of chat messages {role, content} (chat style:
the environment's chat template renders it); `completion` is the text to learn after it (the trainer adds
EOS). `response` is accepted for `completion` (the spelling of the probe repair sets and cei_mixture's
warm-start lines). A bad line stops the run before training with the file and line.

Optional `prompt_ids` and `completion_ids` (both or neither; lists of token ids) are the training row
verbatim: prompt and response tokens as given, no template and no EOS added (the ids carry it where the
row ends the text). They are for rows whose exact tokens text cannot pin down, such as Delethink chunk
prompts whose carry starts mid-line (`python -m rlreason.data.running_sum sft --chunks`); `prompt` and
`completion` then stay as the readable text of the same row."""

from __future__ import annotations

import json
from pathlib import Path

from datasets import Dataset, Features, Sequence, Value

from rlreason.data.jsonl import DataError, parse_line, read_lines

FEATURES = Features({"id": Value("string"), "prompt": Value("string"), "completion": Value("string"),
                     "chat": Value("bool"), "prompt_ids": Sequence(Value("int64")),
                     "completion_ids": Sequence(Value("int64"))})
IDS = ("prompt_ids", "completion_ids")


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


def _ids(row: dict, where: str) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids), both empty when the line has neither."""
    given = [k for k in IDS if k in row]
    if not given:
        return [], []
    if len(given) == 1:
        raise DataError(f"{where}: '{given[0]}' without '{(set(IDS) - set(given)).pop()}'; give both token id "
                        f"lists or neither")
    for k in IDS:
        v = row[k]
        if not (isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0
                                                   for t in v)):
            raise DataError(f"{where}: '{k}' must be a non-empty list of token ids (integers >= 0)")
    return row["prompt_ids"], row["completion_ids"]


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
        prompt_ids, completion_ids = _ids(row, where)
        rows.append({"id": str(row.get("id", f"{file.stem}/{lineno}")), "prompt": prompt, "completion": completion,
                     "chat": chat, "prompt_ids": prompt_ids, "completion_ids": completion_ids})
    if not rows:
        raise DataError(f"{file}: no rows")
    return Dataset.from_list(rows, features=FEATURES)
