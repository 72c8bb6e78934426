"""Users' own question/answer files. A bad row should stop the run before training starts, with the
file, the 1-based line number and what is wrong, not surface hours later as a KeyError in a reward."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from datasets import Dataset

from rlreason.data.schema import make_dataset, make_row
from rlreason.registry import UserError

ANSWER_TYPES = (str, int, float)


class DataError(UserError):
    """A malformed data file; the message names the file and line."""


def _field(row: dict[str, Any], key: str, where: str, types: tuple[type, ...], what: str) -> str:
    if key not in row:
        raise DataError(f"{where}: missing key '{key}' ({what}); keys present: {sorted(row)}")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, types):
        allowed = " or ".join(t.__name__ for t in types)
        raise DataError(f"{where}: '{key}' must be {allowed}, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise DataError(f"{where}: empty {what} ('{key}')")
    return text


def parse_line(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise DataError(f"{where}: invalid JSON ({e})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of a UTF-8 file; a line that is not UTF-8 is a DataError naming it."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                f"{e.start + 1}); re-save the file as UTF-8") from None


def load_jsonl(path: str | Path, *, question_key: str = "question", answer_key: str = "answer",
               data_source: str | None = None) -> Dataset:
    """One JSON object per line. Numeric answers are accepted and stored as text; keys other than
    the question, answer and `id` go into `info`. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"jsonl file not found: {path}")
    source = data_source or path.stem
    rows, seen = [], {}
    for lineno, line in read_lines(path):
        if not line.strip():
            continue
        where = f"{path}, line {lineno}"
        row = parse_line(line, where)
        question = _field(row, question_key, where, (str,), "question")
        answer = _field(row, answer_key, where, ANSWER_TYPES, "answer")
        rid = _field(row, "id", where, (str, int), "id") if "id" in row else f"{source}/{lineno}"
        if rid in seen:
            raise DataError(f"{where}: duplicate id '{rid}' (first on line {seen[rid]})")
        seen[rid] = lineno
        extras = {k: v for k, v in row.items() if k not in (question_key, answer_key, "id")}
        rows.append(make_row(rid, question, answer.strip(), source, extras))
    if not rows:
        raise DataError(f"{path}: no rows")
    return make_dataset(rows)
