"""The Auto-CEI mixture: a pinned, seeded build; exact difficulty proportions; no problem shared between train
and test; every answer equal to Python's arithmetic and accepted by the math reward; every worked solution's
line count equal to what the curriculum_ei environment counts as d; the registered source and the mixture
config; the warm-start SFT rows; the refuse-when-wrong (R-Tuning) transform."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from rlreason.config import load_config
from rlreason.data import build_dataset, loads_info
from rlreason.data.cei_mixture import (addition_chain, build_cei_mixture, long_multiplication, sft_rows,
                                       worked_solution, write_sft)
from rlreason.data.refuse_when_wrong import refuse_when_wrong
from rlreason.environments.curriculum_ei import CurriculumEI
from rlreason.registry import ConfigError
from rlreason.rewards.idk import IDK_ANSWER, judge
from rlreason.rewards.math import math_reward

SMALL = {"min_terms": 2, "max_terms": 5, "a_digits": 3, "min_b_digits": 2, "max_b_digits": 3,
         "test_fraction": 0.2, "seed": 0}
# sha256 of the small build (train 40 rows + test 12 rows as sorted-key JSON lines). A change here changes
# every run's data: update it only on purpose, and say so in the commit.
SMALL_SHA256 = "df9b2a8f3ef7494b4417ce1be3103fc6cb8a875b4f4b4903025489fac5912583"
CONFIG = "configs/curriculum_ei_mixture_cpu.yaml"


def small_build_sha256() -> str:
    rows = list(build_cei_mixture("train", 40, 0.5, **SMALL)) + list(build_cei_mixture("test", 12, 0.25, **SMALL))
    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True) for r in rows).encode()).hexdigest()


def test_small_build_is_pinned_and_seeded():
    assert small_build_sha256() == SMALL_SHA256  # also across processes: no str hash() in the generator
    assert list(build_cei_mixture("train", 20, **SMALL)) == list(build_cei_mixture("train", 20, **SMALL))
    assert build_cei_mixture("train", 20, **SMALL)["question"] != \
        build_cei_mixture("train", 20, **{**SMALL, "seed": 1})["question"]


@pytest.mark.parametrize("size,fraction", [(40, 0.5), (30, 0.3), (17, 1 / 3), (12, 0.0), (12, 1.0)])
def test_difficulty_proportions_are_exact(size, fraction):
    ds = build_cei_mixture("train", size, fraction, **SMALL)
    kinds = [loads_info(i)["difficulty"] for i in ds["info"]]
    assert len(ds) == size
    assert kinds.count("unsolvable") == round(size * fraction)
    assert kinds.count("solvable") == size - round(size * fraction)
    assert len(set(ds["id"])) == size and len(set(ds["question"])) == size


def test_no_problem_is_shared_between_train_and_test():
    train = build_cei_mixture("train", 300, 0.5, **SMALL)
    test = build_cei_mixture("test", 60, 0.5, **SMALL)
    assert not set(train["question"]) & set(test["question"])
    assert {loads_info(i)["split"] for i in train["info"]} == {"train"}
    # a problem's split does not depend on size: a larger build only adds rows of the same split
    assert not set(build_cei_mixture("train", 500, 0.5, **SMALL)["question"]) & set(test["question"])


def _reference(question: str) -> int:
    """The answer by Python arithmetic on the question's numbers, not by the worked solution."""
    nums = [int(x) for x in re.findall(r"\d+", question)]
    if " * " in question:
        assert len(nums) == 2
        return nums[0] * nums[1]
    return sum(nums)


def test_answers_are_correct_and_verify_with_the_math_reward():
    ds = build_cei_mixture("train", 120, 0.5, **SMALL)
    for r in ds:
        info = loads_info(r["info"])
        assert int(r["answer"]) == _reference(r["question"])
        nums = [int(x) for x in re.findall(r"\d+", r["question"])]
        if info["difficulty"] == "solvable":
            assert all(1 <= n <= 9 for n in nums) and 2 <= len(nums) <= 5 and info["steps"] == len(nums) - 1
        else:
            assert 100 <= nums[0] <= 999 and 10 <= nums[1] <= 999 and info["steps"] == len(str(nums[1])) + 1
        # every line of the worked solution is true arithmetic
        for line in info["solution"].splitlines():
            lhs, expr, value = (s.strip() for s in line.split("="))
            assert re.fullmatch(r"[sp]\d*", lhs) and eval(expr) == int(value)  # noqa: S307 (digits and + *)
        assert math_reward(worked_solution(r), r["answer"]).value == 1.0
        assert math_reward(worked_solution(r).replace(r["answer"] + "}", f"{int(r['answer']) + 1}}}"),
                           r["answer"]).value == 0.0


def test_worked_solutions_by_hand():
    assert addition_chain([3, 4, 5]) == ("Calculate 3 + 4 + 5.", ["s1 = 3 + 4 = 7", "s2 = 7 + 5 = 12"], 12)
    assert long_multiplication(347, 56) == ("Calculate 347 * 56.", ["p1 = 347 * 6 = 2082", "p2 = 347 * 50 = 17350",
                                                                     "s = 2082 + 17350 = 19432"], 19432)


def test_steps_agree_with_the_environments_step_counter():
    """d of a refusal written after the whole worked solution is info.steps; after its first j lines, j;
    the full answered solution is judged correct (its answer line counts as one more line)."""
    ds = build_cei_mixture("train", 80, 0.5, **SMALL)
    steps = set()
    for r in ds:
        info = loads_info(r["info"])
        lines = info["solution"].splitlines()
        steps.add(info["steps"])
        full = judge(f"{info['solution']}\n{IDK_ANSWER}", r)
        assert full.refused and full.steps == info["steps"] == len(lines)
        for j in range(len(lines)):
            assert judge("\n".join(lines[:j] + [IDK_ANSWER]), r).steps == j
        answered = judge(worked_solution(r), r)
        assert answered.correct and not answered.refused and answered.steps == info["steps"] + 1
    assert steps == {1, 2, 3, 4}  # the number of lines before a refusal varies


def test_registered_source_and_errors():
    ds = build_dataset({"source": "cei_mixture", "split": "test", "size": 10, "seed": 2}, key="data.eval")
    assert len(ds) == 10 and set(ds["data_source"]) == {"cei_mixture"}
    with pytest.raises(ConfigError, match="data.train.split: 'dev' is not allowed"):
        build_dataset({"source": "cei_mixture", "split": "dev"}, key="data.train")
    with pytest.raises(ConfigError, match="data.train.min_terms: 4 is above max_terms 3"):
        build_dataset({"source": "cei_mixture", "min_terms": 4, "max_terms": 3}, key="data.train")
    with pytest.raises(ConfigError, match="data.train.size: .*distinct solvable problems"):
        build_dataset({"source": "cei_mixture", "size": 200, "unsolvable_fraction": 0.0, "max_terms": 2},
                      key="data.train")  # only 81 two-term one-digit sums exist


def test_mixture_config_loads_and_its_data_builds():
    cfg = load_config(CONFIG)
    assert cfg.algorithm == "expert_iteration" and cfg.env.name == "curriculum_ei"
    train = build_dataset(cfg.data.train, key="data.train")
    test = build_dataset(cfg.data.eval, key="data.eval")
    assert len(train) == cfg.data.train["size"] and len(test) == cfg.data.eval["size"]
    assert not set(train["question"]) & set(test["question"])
    env = CurriculumEI(None, **cfg.env.args)
    prompt = env.prompt(test[0])
    assert isinstance(prompt, str) and prompt.endswith(f"Q: {test[0]['question']}\nA:\n")


def test_sft_rows_are_solvable_worked_solutions_in_the_environments_prompt(tmp_path):
    cfg = load_config(CONFIG)
    ds = build_cei_mixture("train", 30, 0.4, **SMALL)
    rows = sft_rows(ds, dict(cfg.env.args))
    solvable = [r for r in ds if loads_info(r["info"])["difficulty"] == "solvable"]
    assert len(rows) == len(solvable) == 18
    env = CurriculumEI(None, **cfg.env.args)
    for row, ex in zip(rows, solvable):
        assert set(row) == {"id", "prompt", "response"} and row["id"] == ex["id"]
        assert row["prompt"] == env.prompt(ex)
        assert row["response"] == worked_solution(ex)
        verdict = judge(row["response"], ex)
        assert verdict.correct and verdict.steps == loads_info(ex["info"])["steps"] + 1
    chat = sft_rows(ds)  # default env args: chat style, the prompt is a message list
    assert chat[0]["prompt"][-1]["role"] == "user" and solvable[0]["question"] in chat[0]["prompt"][-1]["content"]
    out = tmp_path / "warm.jsonl"
    assert write_sft(out, env_args=dict(cfg.env.args), split="train", size=30, unsolvable_fraction=0.4,
                     **{k: v for k, v in SMALL.items()})["rows"] == 18
    assert [json.loads(x) for x in out.read_text().splitlines()] == rows


def test_refuse_when_wrong_replaces_only_incorrect_answers():
    responses = ["s1 = 3 + 4 = 7\n\\boxed{7}", "s1 = 3 + 4 = 8\ns2 = 8 + 1 = 9\n\\boxed{9}",
                 "p1 = 123 * 4 = 492", "\\boxed{12}", "s1 = 2 + 2 = 4 \\boxed{5}",
                 "s1 = 2 + 2 = 4 \\boxed{4}\ns2 = 4 + 1 = 6\n\\boxed{6}"]
    correct = [True, False, False, False, False, False]
    kept = refuse_when_wrong(responses, correct)
    assert kept == [responses[0], f"s1 = 3 + 4 = 8\ns2 = 8 + 1 = 9\n{IDK_ANSWER}", f"p1 = 123 * 4 = 492\n{IDK_ANSWER}",
                    IDK_ANSWER, f"s1 = 2 + 2 = 4\n{IDK_ANSWER}",
                    f"s1 = 2 + 2 = 4 \\boxed{{4}}\ns2 = 4 + 1 = 6\n{IDK_ANSWER}"]  # only the last box is the answer
    ex = {"answer": "7"}
    assert [judge(t, ex).refused for t in kept] == [False] + [True] * 5
    assert [judge(t, ex).steps for t in kept[1:]] == [2, 1, 0, 1, 2]  # d = the reasoning lines kept
    assert refuse_when_wrong(responses, correct, keep_reasoning=False) == [responses[0]] + [IDK_ANSWER] * 5
    with pytest.raises(ValueError, match="2 responses but 1"):
        refuse_when_wrong(responses[:2], correct[:1])


def test_sft_command_bad_input_is_one_line_exit_2(tmp_path, capsys):
    from rlreason.data.cei_mixture import main
    with pytest.raises(SystemExit) as e:
        main(["sft", "--out", str(tmp_path / "w.jsonl"), "--size", "300", "--config", CONFIG,
              "--unsolvable-fraction", "1.5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert err.startswith("config error: --unsolvable-fraction: must be in [0, 1], got 1.5")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: {source: cei_mixture, max_term: 3}\n")
    with pytest.raises(SystemExit) as e:
        main(["sft", "--out", str(tmp_path / "w.jsonl"), "--config", str(bad)])
    assert e.value.code == 2 and "data.train.max_term: unknown key for source 'cei_mixture'" in capsys.readouterr().err
    main(["sft", "--out", str(tmp_path / "w.jsonl"), "--size", "20", "--config", CONFIG])
    assert len((tmp_path / "w.jsonl").read_text().splitlines()) == 14  # 20 rows, 0.3 unsolvable


def test_sft_command_names_the_config_key_a_bad_value_came_from(tmp_path, capsys):
    from rlreason.data.cei_mixture import main
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: {source: cei_mixture, min_terms: 1}\n")
    with pytest.raises(SystemExit) as e:
        main(["sft", "--out", str(tmp_path / "w.jsonl"), "--config", str(bad)])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"config error: {bad}: data.train.min_terms: must be an integer >= 2, got 1.\n"


def test_sft_rows_with_idk_fraction_refuse_on_a_seeded_share_of_the_unsolvable_rows_after_k_lines():
    cfg = load_config(CONFIG)
    ds = build_cei_mixture("train", 60, 0.5, **SMALL)  # 30 unsolvable, 2- or 3-digit b: 3 or 4 reasoning lines
    by_id = {r["id"]: r for r in ds}
    rows = sft_rows(ds, dict(cfg.env.args), idk_fraction=0.3, seed=0)
    assert [r["id"] for r in rows] == list(ds["id"])  # every row, in the mixture's order
    assert sft_rows(ds, dict(cfg.env.args), idk_fraction=0.3, seed=0) == rows  # seeded
    assert sft_rows(ds, dict(cfg.env.args), idk_fraction=0.3, seed=1) != rows
    refusals, ks = [], []
    for row in rows:
        ex = by_id[row["id"]]
        info = loads_info(ex["info"])
        lines = info["solution"].split("\n")
        if not row["response"].endswith(IDK_ANSWER):
            assert row["response"] == worked_solution(ex)  # solvable rows and the other unsolvable ones: full
            continue
        assert info["difficulty"] == "unsolvable"  # a solvable row never refuses
        body = row["response"].split("\n")
        k = len(body) - 1
        assert 1 <= k <= info["steps"] and body == lines[:k] + [IDK_ANSWER]  # the first k lines, then IDK
        verdict = judge(row["response"], ex)
        assert verdict.refused and verdict.steps == k  # d = k for the environment's step counter
        refusals.append(row["id"])
        ks.append(k)
    assert len(refusals) == round(30 * 0.3) == 9
    assert len(set(ks)) > 1  # the amount of reasoning before the refusal varies
    assert sum(r["response"].endswith(IDK_ANSWER) for r in sft_rows(ds, None, 1.0)) == 30
    assert sum(r["response"].endswith(IDK_ANSWER) for r in sft_rows(ds, None, 0.0)) == 0
    assert len(sft_rows(ds, None, 0.0)) == 60 and len(sft_rows(ds, None)) == 30  # None: solvable rows only
    with pytest.raises(ConfigError, match="idk_fraction: must be in"):
        sft_rows(ds, None, 1.5)


def test_sft_command_idk_fraction(tmp_path, capsys):
    from rlreason.data.cei_mixture import main
    out = tmp_path / "w.jsonl"
    main(["sft", "--out", str(out), "--size", "20", "--config", CONFIG, "--idk-fraction", "0.5"])
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 20 and sum(x["response"].endswith(IDK_ANSWER) for x in lines) == 3  # 6 unsolvable
    with pytest.raises(SystemExit) as e:
        main(["sft", "--out", str(out), "--config", CONFIG, "--idk-fraction", "2"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("config error: --idk-fraction: must be in [0, 1]") and err.count("\n") == 1
