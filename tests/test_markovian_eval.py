"""`rlreason eval --chunked`: the budget grid, the argument checks, and the whole table on the tiny model
with the HF engine (seconds): structure, budgets honoured, LongCoT really given its budget, and chunked
inference with I = 1 identical to LongCoT at budget C (same prompt, same seed)."""

from __future__ import annotations

import json

import pytest

from rlreason.config import load_config
from rlreason.markovian_eval import budget_settings, format_table, run_chunked_eval, shared_env_args
from rlreason.registry import REWARDS, ConfigError

TINY = [
    "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf", "rollout.max_model_len=96",
    "data.train={source: reasoning_gym, task: basic_arithmetic, size: 12, seed: 1, difficulty: {min_terms: 2, "
    "max_terms: 2, min_digits: 1, max_digits: 1, operators: ['+']}}",
    "data.eval_size=3", "eval.k=2", "eval.temperature=1.0", "logging.wandb=false", "logging.progress=false",
    "env.name=markovian", "env.args={chunk_size: 8, carryover: 4, keep_head: 2, max_chunks: 3, style: raw, "
    "template: '{question}'}",
    "rewards=[{name: _even_chars, weight: 1.0}]",
]


def _even_chars(completion: str) -> float:
    """1 on transcripts of even length: about half of the tiny model's samples, so accuracies differ."""
    return float(len(completion) % 2 == 0)


@pytest.fixture(autouse=True)
def _rewards(registered):
    registered(REWARDS, "_even_chars", _even_chars)


def cfg(tmp_path, *extra):
    return load_config(None, [*TINY, f"output_dir={tmp_path}/run", *extra])


# ---- the budget grid -----------------------------------------------------------------------------------

def test_budgets_vary_iteration_cap_at_fixed_c_m():
    s = budget_settings({"chunk_size": 8, "carryover": 4, "max_chunks": 3}, [1, 2, 5], "max_chunks")
    assert [(x["chunk_size"], x["carryover"], x["max_chunks"], x["budget"]) for x in s] == \
        [(8, 4, 1, 8), (8, 4, 2, 12), (8, 4, 5, 24)]


def test_budgets_vary_chunk_size_with_half_carryover():
    s = budget_settings({"chunk_size": 8, "carryover": 4, "max_chunks": 3}, [16, 64], "chunk_size")
    assert [(x["chunk_size"], x["carryover"], x["max_chunks"], x["budget"]) for x in s] == \
        [(16, 8, 3, 32), (64, 32, 3, 128)]


@pytest.mark.parametrize("budgets,vary,match", [([0], "max_chunks", "positive integer"),
                                                 ([], "max_chunks", "at least one"),
                                                 ([2], "carryover", "Allowed: max_chunks, chunk_size")])
def test_bad_budgets_raise(budgets, vary, match):
    with pytest.raises(ConfigError, match=match):
        budget_settings({}, budgets, vary)


def test_env_args_both_environments_cannot_take_raise(tmp_path):
    c = cfg(tmp_path, "env.args.stop=['}']", "env.args.max_tokens=5")
    with pytest.raises(ConfigError, match="env.args: stop cannot be passed"):
        shared_env_args(c)
    c = cfg(tmp_path, "env.args.max_tokens=5")  # replaced by the budget, dropped
    assert "max_tokens" not in shared_env_args(c) and shared_env_args(c)["chunk_size"] == 8


def test_bad_chunk_setting_fails_before_the_model_loads(tmp_path):
    # C = 4 gives m = 2, not above keep_head = 2; the model name would fail later, at load time.
    with pytest.raises(ConfigError, match="keep_head"):
        run_chunked_eval(cfg(tmp_path, "model.name=no-such-model"), [4], vary="chunk_size")


# ---- the table on the tiny model ------------------------------------------------------------------------

def test_table_on_tiny_model_budgets_honoured(tmp_path):
    res = run_chunked_eval(cfg(tmp_path), [1, 2, 3])
    assert res["problems"] == 3 and res["k"] == 2
    rows = res["rows"]
    assert [r["budget"] for r in rows] == [8, 12, 16] and [r["max_chunks"] for r in rows] == [1, 2, 3]
    for r in rows:
        for name in ("longcot", "markovian"):
            m = r[name]
            assert set(m) >= {"acc", "pass@k", "tokens_mean", "tokens_max", "chunks_mean", "eos_rate"}
            assert 0.0 <= m["acc"] <= m["pass@k"] <= 1.0
            assert 0 < m["tokens_mean"] <= m["tokens_max"] <= r["budget"], (name, r)
            assert m["env_errors"] == 0
        assert r["longcot"]["chunks_mean"] == 1.0
        assert 1.0 <= r["markovian"]["chunks_mean"] <= r["max_chunks"]
    # The random tiny model almost never emits EOS: both use their whole budget, so LongCoT was not cut
    # by max_model_len and Markovian ran all I chunks (C + (I-1)(C-m) tokens).
    assert [r["longcot"]["tokens_max"] for r in rows] == [8, 12, 16]
    assert [r["markovian"]["tokens_max"] for r in rows] == [8, 12, 16]
    assert rows[2]["markovian"]["chunks_mean"] == 3.0
    # I = 1 is LongCoT with budget C: same prompt, same seeds, the same episodes.
    assert rows[0]["markovian"]["acc"] == rows[0]["longcot"]["acc"]
    assert rows[0]["markovian"]["tokens_mean"] == rows[0]["longcot"]["tokens_mean"]
    assert any(r[n]["acc"] not in (0.0, 1.0) for r in rows for n in ("longcot", "markovian"))
    table = format_table(rows)
    assert len(table.splitlines()) == 2 + 3 and "LongCoT acc" in table and "Markovian acc" in table


def test_max_model_len_too_short_for_longcot_budget_raises(tmp_path):
    with pytest.raises(ConfigError, match=r"set rollout.max_model_len=\d+"):
        run_chunked_eval(cfg(tmp_path, "rollout.max_model_len=20"), [3])


def test_cli_chunked_flag_prints_table_and_writes_json(tmp_path, capsys):
    from rlreason.cli import main
    args = [a for a in TINY if not a.startswith("rewards=")] + [f"output_dir={tmp_path}/run",
                                                               "rewards=[{name: _even_chars}]"]
    assert main(["eval", "--chunked", *args, "--budgets", "1,2", "--vary", "max_chunks"]) == 0
    out = capsys.readouterr().out
    assert "Markovian acc" in out and "3 problems x k=2" in out
    saved = json.loads((tmp_path / "run" / "chunked_eval.json").read_text())
    assert [r["budget"] for r in saved["rows"]] == [8, 12]
