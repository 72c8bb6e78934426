"""The running-sum task for Delethink vs LongCoT: a pinned, seeded build; answers the math reward accepts;
the token-count model against the real SmolLM2 tokenizer; train and test disjoint; held-out problems longer
than training ones; well-formed warm-start SFT lines; and the two experiment configs at one thinking budget."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest

from rlreason.config import load_config, to_dict
from rlreason.data import build_dataset, loads_info
from rlreason.data import running_sum as rs
from rlreason.environments.markovian import delethink_budget
from rlreason.registry import ConfigError, build_environment
from rlreason.rewards.math import math_reward
from rlreason.trainer.loop import validate

# sha256 of the small build (train 20 rows + test 10 rows, sorted-key JSON lines). A change here changes
# every run's data: update it only on purpose, and say so in the commit.
SMALL_SHA256 = "68caec1c51247d3510e6dc856ca09992efd49d76967bc56768edd4c0b3801256"
CONFIGS = ("configs/delethink_small_cpu.yaml", "configs/longcot_small_cpu.yaml")
LINE = re.compile(r"s(\d+) = s(\d+) \+ (\d) = (\d+)")


def small_build_sha256() -> str:
    rows = list(rs.build_running_sum("train", 20, 4, 6)) + list(rs.build_running_sum("test", 10, 8, 9))
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()


def test_small_build_is_pinned_and_seeded():
    assert small_build_sha256() == SMALL_SHA256  # also across processes: no str hash() in the generator
    a = list(rs.build_running_sum("train", 20, 4, 6, seed=0))
    assert a == list(rs.build_running_sum("train", 20, 4, 6, seed=0))
    assert a != list(rs.build_running_sum("train", 20, 4, 6, seed=1))


def _check_trace(text: str, terms: list[int]) -> int:
    """Re-add the trace line by line (an independent reading of it) and return its boxed total."""
    lines = text.split("\n")
    assert lines[0] == f"s1 = {terms[0]}"
    total = terms[0]
    for k, line in enumerate(lines[1:-1], 2):
        m = LINE.fullmatch(line)
        assert m, line
        total += terms[k - 1]
        assert [int(g) for g in m.groups()] == [k, k - 1, terms[k - 1], total]
    assert len(lines) == len(terms) + 1
    assert lines[-1] == f"Answer: \\boxed{{{total}}}"
    return total


def test_answers_are_the_sums_and_the_math_reward_accepts_the_trace():
    for r in rs.build_running_sum("test", 12, 15, 25):
        terms = loads_info(r["info"])["terms"]
        assert r["answer"] == str(sum(terms)) and len(terms) == loads_info(r["info"])["n_terms"]
        assert [int(x) for x in re.findall(r"x\d+=(\d)", r["question"])] == terms
        text = rs.trace(terms)
        assert _check_trace(text, terms) == sum(terms)
        assert math_reward(text, r["answer"]).value == 1.0
        assert math_reward(text.replace(f"{{{r['answer']}}}", f"{{{sum(terms) + 1}}}"), r["answer"]).value == 0.0


def test_no_problem_is_in_both_splits():
    # 3-4 one-digit terms: only 7290 sequences, so two independent draws of 600 would share some
    train = {tuple(loads_info(r["info"])["terms"]) for r in rs.build_running_sum("train", 600, 3, 4)}
    test = {tuple(loads_info(r["info"])["terms"]) for r in rs.build_running_sum("test", 600, 3, 4)}
    assert len(train) == len(test) == 600 and not train & test


def test_dispatcher_and_errors():
    ds = build_dataset({"source": "running_sum", "split": "test", "size": 3, "min_terms": 5, "max_terms": 5})
    assert len(ds) == 3 and all(loads_info(r["info"])["n_terms"] == 5 for r in ds)
    with pytest.raises(ConfigError, match=r"^data.train.split: 'dev' is not allowed"):
        build_dataset({"source": "running_sum", "split": "dev"}, key="data.train")
    with pytest.raises(ConfigError, match=r"^data.max_terms: must be an integer >= 9"):
        build_dataset({"source": "running_sum", "min_terms": 9, "max_terms": 5})
    with pytest.raises(ConfigError, match="could not draw 60 distinct test problems"):
        rs.build_running_sum("test", 60, 2, 2)  # 81 sequences, about half of them test


# ---- token counts ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)  # SmolLM2's tokenizer


def _n(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False).input_ids)


def test_token_counts_match_the_tokenizer(tok):
    rng = random.Random(0)
    for n in [*range(2, 30), 49, 65, 97, 120]:
        for terms in ([1] * n, [9] * n, [rng.randint(1, 9) for _ in range(n)]):
            assert rs.trace_tokens(terms) == _n(tok, rs.trace(terms)), terms
            lines = rs.trace_lines(terms)
            # the last k lines, as a carry would hold them, cost the sum of their own counts
            assert _n(tok, "".join(lines[-3:-1])) == sum(
                rs.line_tokens(k, sum(terms[:k])) for k in (n - 1, n))
    assert rs.max_line_tokens(97) == max(_n(tok, line) for line in rs.trace_lines([9] * 97)[:-1])


@pytest.mark.parametrize("c", [64, 128, 256])
def test_picked_lengths_against_the_tokenizer(tok, c):
    p = rs.pick_terms(c, c // 2)
    assert p.fits and p.test_terms[0] > p.train_terms[1]  # held-out problems are longer than any trained one
    for (lo, hi), (x_lo, x_hi) in ((p.train_terms, (3, 4)), (p.test_terms, (5, 6))):
        for n in (lo, hi):
            assert x_lo * c <= _n(tok, rs.trace([1] * n)) <= _n(tok, rs.trace([9] * n)) <= x_hi * c
        assert _n(tok, rs.trace([1] * (lo - 1))) < x_lo * c and _n(tok, rs.trace([9] * (hi + 1))) > x_hi * c
    assert delethink_budget(c, c // 2, p.max_chunks) >= _n(tok, rs.trace([9] * p.train_terms[1]))
    assert delethink_budget(c, c // 2, p.max_chunks - 1) < _n(tok, rs.trace([9] * p.train_terms[1]))


def test_pick_terms_rejects_impossible_settings():
    with pytest.raises(ConfigError, match="need 0 < keep_head < carryover < chunk_size"):
        rs.pick_terms(64, 64)
    with pytest.raises(ConfigError, match="no N gives a trace of 192-193 tokens"):
        rs.pick_terms(64, 32, train_x=(3, 193 / 64))  # narrower than one line
    assert not rs.pick_terms(64, 32, keep_head=2).fits  # 30 carried tokens cannot always hold a 16-token line


def test_the_docstring_table_is_the_helpers():
    printed = rs.table().splitlines()
    assert all(f"    {row}" in rs.__doc__.splitlines() for row in printed)


# ---- warm-start SFT and the experiment configs ----------------------------------------------------------

def test_sft_lines_show_the_runs_prompt_and_a_correct_trace(tmp_path):
    cfg = load_config(CONFIGS[0])
    out = tmp_path / "sft.jsonl"
    assert rs.write_sft(out, size=5, env_args=dict(cfg.env.args))["rows"] == 5
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    env = build_environment(cfg.env.name, None, dict(cfg.env.args))
    for line, row in zip(lines, rs.build_running_sum("train", 5, 15, 17)):
        assert set(line) == {"prompt", "completion"}
        assert line["prompt"] == env.inner.prompt(dict(row))
        assert line["prompt"].endswith("<|im_start|>assistant\n") and row["question"] in line["prompt"]
        terms = loads_info(row["info"])["terms"]
        assert 15 <= len(terms) <= 17
        assert _check_trace(line["completion"], terms) == int(row["answer"])
        assert math_reward(line["completion"], row["answer"]).value == 1.0


def test_sft_lines_become_trainer_rows(tok):
    from rlreason.trainer.batch import collate

    cfg = load_config(CONFIGS[0])
    args = dict(cfg.env.args)
    ds = rs.build_running_sum("train", 3, 15, 17)
    rows = rs.sft_train_rows(rs.sft_rows(ds, args), tok, args)
    env = build_environment(cfg.env.name, tok, args)
    for row, ex in zip(rows, ds):
        assert row.prompt_ids == env.inner.encode_prompt(env.inner.prompt(dict(ex)))
        assert row.response_ids[-1] == tok.eos_token_id
        assert tok.decode(row.response_ids[:-1]) == rs.trace(loads_info(ex["info"])["terms"])
        assert row.response_mask == [1] * len(row.response_ids)
        assert len(row.response_ids) == rs.trace_tokens(loads_info(ex["info"])["terms"]) + 1
    b = collate(rows, tok.pad_token_id)
    assert int(b.response_mask.sum()) == sum(len(r.response_ids) for r in rows)


def test_the_two_configs_validate_and_share_one_thinking_budget():
    delethink, longcot = (load_config(p) for p in CONFIGS)
    for cfg in (delethink, longcot):
        validate(cfg)
    markov = build_environment("markovian", None, dict(delethink.env.args))
    lc = build_environment("longcot", None, dict(longcot.env.args))
    budget = delethink_budget(markov.C, markov.m, markov.I)
    assert lc.max_tokens == budget == 256
    p = rs.pick_terms(markov.C, markov.m, keep_head=markov.keep_head)
    assert (delethink.data.train["min_terms"], delethink.data.train["max_terms"]) == p.train_terms
    assert markov.I == p.max_chunks and p.fits
    a, b = to_dict(delethink), to_dict(longcot)
    assert a.pop("name") != b.pop("name") and a["env"].pop("name") == "markovian" and b["env"].pop("name") == "longcot"
    assert a == b  # same data, model, rewards, steps, seed: only the environment differs


# ---- Delethink chunk lines of the shared warm start -------------------------------------------------------

VS_CONFIG = "configs/delethink_vs_longcot_cpu.yaml"


def _chunk_reference(q: list[int], t: list[int], C: int, m: int, k: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, chunk) for chunks l >= 2 of a policy writing the tokens t after query q, from the paper's
    description alone: chunk 1 writes t[:C]; chunk l >= 2 sees q + t[:k] + the last m - k tokens written
    after the head, and writes the next C - m tokens."""
    out, pos = [], C
    while pos < len(t):
        out.append((q + t[:k] + t[k:pos][-(m - k):], t[pos:pos + C - m]))
        pos += C - m
    return out


def test_chunk_lines_are_the_wrappers_chunk_prompts_token_for_token(tok, tmp_path):
    """Every chunk line of the warm-start file, as the SFT trainer turns it into a row, has exactly the
    prompt the RL run's Markovian environment builds at that chunk (checked against the chunk prompts
    worked out from the paper's rule, not the wrapper's code) and the next chunk of the trace as its
    response; the last chunk ends in EOS; the whole-trace lines are still there, one per problem."""
    from rlreason.trainer.sft import ids_row

    cfg = load_config(VS_CONFIG)
    env = build_environment(cfg.env.name, tok, cfg.env.args, cfg.env.markovian)  # as the trainer builds it
    C, m, k = env.C, env.m, env.keep_head
    out = tmp_path / "warm.jsonl"
    info = rs.write_sft(out, size=6, min_terms=10, max_terms=12, seed=1, env_args=dict(cfg.env.args),
                        chunk_env=env)
    ds = build_dataset({"source": "sft_jsonl", "path": str(out)}, key="data.train")
    by_id = {r["id"]: r for r in ds}
    problems = rs.build_running_sum("train", 6, 10, 12, seed=1)
    n_chunk_rows = 0
    for ex in problems:
        q = env.inner.encode_prompt(env.inner.prompt(dict(ex)))
        t = tok(rs.trace(loads_info(ex["info"])["terms"]), add_special_tokens=False).input_ids + [tok.eos_token_id]
        ref = _chunk_reference(q, t, C, m, k)
        assert len(ref) >= 2  # these traces are 2-2.6x C: every problem has chunk lines
        for chunk, (prompt, response) in enumerate(ref, 2):
            row = ids_row(by_id[f"{ex['id']}/chunk{chunk}"], 0, len(tok))
            assert row.prompt_ids == prompt and row.response_ids == response
            assert row.response_mask == [1] * len(response)
            n_chunk_rows += 1
        assert row.response_ids[-1] == tok.eos_token_id and f"{ex['id']}/chunk{len(ref) + 2}" not in by_id
    assert info["chunk_rows"] == n_chunk_rows and info["trace_rows"] == 6 == len(ds) - n_chunk_rows
    whole = [r for r in ds if not r["prompt_ids"]]
    assert sorted(r["prompt"] for r in whole) == sorted(env.inner.prompt(dict(ex)) for ex in problems)


def test_chunk_lines_refuse_a_trace_longer_than_the_budget(tok):
    cfg = load_config(VS_CONFIG)
    args = dict(cfg.env.args) | {"max_chunks": 2}  # 64 + 32 = 96 tokens < a trace of 10 terms
    env = build_environment("markovian", tok, args)
    with pytest.raises(ConfigError, match=r"does not fit the Delethink budget C \+ \(I-1\)\(C-m\) = 96"):
        rs.chunk_lines(rs.build_running_sum("train", 2, 10, 12), env)
    with pytest.raises(ConfigError, match="chunk lines need a Delethink environment"):
        rs.chunk_lines(rs.build_running_sum("train", 2, 10, 12), build_environment("longcot", tok, args))
