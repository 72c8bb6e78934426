"""QA rewards (EM, F1, answered) and the search-cost penalties, against hand-computed values:
MASH exp, OTC, OTC-strict, linear, none; n_min remembered across steps and restored from a checkpoint."""

from __future__ import annotations

import math

import pytest

from rlreason.registry import ConfigError
from rlreason.rewards.qa import (extract_answer, f1_score, gold_answers, normalize_answer, qa_answered, qa_em, qa_f1)
from rlreason.rewards.search_cost import SearchCost, otc_tool_reward
from rlreason.rubric import Rubric
from rlreason.types import Episode, Sample

Q = {"id": "q1", "question": "Where is the Eiffel Tower?", "answer": "Paris", "data_source": "t"}


def ep(answer: str | None, searches: int) -> Episode:
    text = "<think> x </think>" + "<search> q </search>" * searches
    text += f"<answer> {answer} </answer>" if answer else ""
    return Episode([Sample([1], [2], [0.0], [1])], transcript=text, metrics={"searches": float(searches)},
                   info={"max_searches": 5})  # as pay_per_search stamps it


def rewards(r: SearchCost, group: list[tuple[str | None, int]], ex=Q) -> list[float]:
    return [round(v["reward"], 6) for v in r.score_group([ex] * len(group), [ep(a, m) for a, m in group])]


# --- EM / F1 --------------------------------------------------------------------------------------------

def test_normalize_and_extract():
    assert normalize_answer("  The Eiffel-Tower!! ") == "eiffeltower"
    assert normalize_answer("An apple a day") == "apple day"
    assert extract_answer("<answer> first </answer> then <answer>\n last \n</answer>") == "last"
    assert extract_answer("<answer> unterminated") is None


def test_em_values():
    assert qa_em("<answer> the  PARIS. </answer>", "Paris").value == 1.0
    assert qa_em("<answer> Paris, France </answer>", "Paris").value == 0.0
    assert qa_em("<answer> wrong </answer> <answer> Paris </answer>", "Paris").value == 1.0  # the last one
    s = qa_em("Paris", "Paris")
    assert s.value == 0.0 and "no <answer>" in s.reason
    assert qa_em("<answer> City of Light </answer>", '["Paris", "City of Light"]').value == 1.0  # JSON list
    assert qa_em("<answer> 1636 </answer>", ["1636"]).value == 1.0


def test_f1_values():
    # pred [eiffel, tower, in, paris] vs gold [eiffel, tower]: P = 2/4, R = 2/2 -> F1 = 2/3
    assert qa_f1("<answer> Eiffel Tower in Paris </answer>", "the Eiffel Tower").value == pytest.approx(2 / 3)
    # best over golds: vs "Tower" -> P = 1/4, R = 1 -> 0.4; vs "Eiffel Tower Paris" -> P = 3/4, R = 1 -> 6/7
    assert f1_score("Eiffel Tower in Paris", ["Tower", "Eiffel Tower Paris"]) == pytest.approx(6 / 7)
    assert f1_score("yes", ["no"]) == 0.0 and f1_score("yes it is", ["yes"]) == 0.0  # yes/no must match
    assert f1_score("x", []) == 0.0
    assert qa_f1("no tags", "Paris").value == 0.0


def test_gold_answers_forms():
    assert gold_answers("Paris") == ["Paris"]
    assert gold_answers('["a", "b"]') == ["a", "b"]
    assert gold_answers("[not json") == ["[not json"]
    assert gold_answers(["a", 1]) == ["a", "1"] and gold_answers(None) == []


def test_answered_format_reward():
    assert qa_answered("<answer> x </answer>").value == 1.0
    assert qa_answered("<answer>  </answer>").value == 0.0 and qa_answered("x").value == 0.0


# --- search cost ----------------------------------------------------------------------------------------

def test_exp_penalty_hand_computed_and_remembered_across_steps():
    r = SearchCost(penalty="exp", lam=0.5)
    # step 1: correct with 2, 3, 4 searches, one wrong with 0 -> n_min = 2
    assert rewards(r, [("Paris", 2), ("Paris", 3), ("Rome", 0), ("Paris", 4)]) == [1.0, 0.5, 0.0, 0.25]
    assert r.n_min == {"t/q1": 2}
    # step 2: best correct rollout needs 3, but n_min stays 2 from step 1: 0.5^(3-2), 0.5^(5-2)
    assert rewards(r, [("Paris", 3), ("Paris", 5), (None, 1)]) == [0.5, 0.125, 0.0]
    # step 3: a correct answer with 1 search lowers n_min for this and later steps
    assert rewards(r, [("Paris", 1), ("Paris", 2)]) == [1.0, 0.5]
    assert r.n_min == {"t/q1": 1}
    # no correct rollout ever for another question: all 0, n_min unknown (-1 in the logs)
    q2 = dict(Q, id="q2")
    out = r.score_group([q2] * 2, [ep("Rome", 0), ep(None, 3)])
    assert [o["reward"] for o in out] == [0.0, 0.0] and out[0]["n_min"] == -1 and "t/q2" not in r.n_min


def test_exp_lambda_08():
    r = SearchCost(penalty="exp", lam=0.8)
    assert rewards(r, [("Paris", 0), ("Paris", 2)]) == [1.0, 0.64]


def test_state_dict_round_trip_resumes_n_min():
    r = SearchCost(penalty="exp", lam=0.5)
    rewards(r, [("Paris", 1), ("Paris", 3)])
    fresh = SearchCost(penalty="exp", lam=0.5)
    assert rewards(fresh, [("Paris", 3)]) == [1.0]       # without the memory: n_min = 3
    resumed = SearchCost(penalty="exp", lam=0.5)
    resumed.load_state_dict(r.state_dict())
    assert resumed.state_dict() == {"n_min": {"t/q1": 1}}
    assert rewards(resumed, [("Paris", 3)]) == [0.25]    # with it: 0.5^(3-1)


def test_otc_hand_computed():
    # n = 2: f(m, 2) = 4m / (m + 2); r = sin(f pi / 4)
    assert otc_tool_reward(2, 2, 5) == pytest.approx(1.0)
    assert otc_tool_reward(1, 2, 5) == pytest.approx(math.sqrt(3) / 2)  # f = 4/3 -> sin(pi/3)
    assert otc_tool_reward(4, 2, 5) == pytest.approx(math.sqrt(3) / 2)  # f = 8/3 -> sin(2pi/3)
    # n = 0: 1 without search, else cos(m pi / (2m + c)) with c = max_searches = 5
    assert otc_tool_reward(0, 0, 5) == 1.0
    assert otc_tool_reward(1, 0, 5) == pytest.approx(math.cos(math.pi / 7))
    assert otc_tool_reward(3, 0, 5) == pytest.approx(math.cos(3 * math.pi / 11))
    r = SearchCost(penalty="otc")  # c = the episodes' max_searches = 5
    assert rewards(r, [("Paris", 2), ("Paris", 4), ("Rome", 0)]) == [1.0, round(math.sqrt(3) / 2, 6), 0.0]


def test_otc_strict_zeroes_searches_when_none_were_needed():
    strict, plain = SearchCost(penalty="otc_strict"), SearchCost(penalty="otc")
    group = [("Paris", 0), ("Paris", 1), ("Rome", 0)]
    assert rewards(strict, group) == [1.0, 0.0, 0.0]
    assert rewards(plain, group) == [1.0, round(math.cos(math.pi / 7), 6), 0.0]
    # with n_min = 1 strict and plain agree
    q = dict(Q, id="q9")
    assert rewards(strict, [("Paris", 1), ("Paris", 3)], q) == rewards(plain, [("Paris", 1), ("Paris", 3)], q)


def test_linear_and_none():
    lin = SearchCost(penalty="linear")  # the episodes' max_searches = 5: cost 1/6
    assert rewards(lin, [("Paris", 0), ("Paris", 3), ("Paris", 6), ("Rome", 0)]) == [1.0, 0.5, 0.0, 0.0]
    assert rewards(SearchCost(penalty="linear", cost=0.25), [("Paris", 2)]) == [0.5]
    assert rewards(SearchCost(penalty="none"), [("Paris", 5), ("Rome", 0), (None, 0)]) == [1.0, 0.0, 0.0]


def test_questions_are_keyed_by_source_and_id():
    r = SearchCost()
    rewards(r, [("Paris", 1)], Q)
    rewards(r, [("Paris", 3)], dict(Q, data_source="other"))
    rewards(r, [("Paris", 4)], {"question": "no id", "answer": "Paris"})
    assert r.n_min == {"t/q1": 1, "other/q1": 3, "/no id": 4}


def test_search_limit_is_the_environments():
    """One limit: the reward has no max_searches of its own (a second hand-set value could disagree with
    env.args.max_searches); OTC's c and the linear cost follow the episode's."""
    with pytest.raises(ConfigError, match=r"rewards.search_cost.args.max_searches.*env.args.max_searches"):
        SearchCost(penalty="otc", max_searches=5)
    with pytest.raises(ConfigError, match=r"max_searches.*env.args.max_searches"):
        Rubric([{"name": "search_cost", "args": {"max_searches": 2}}])
    two = ep("Paris", 1)
    two.info["max_searches"] = 2
    # n = 0 (another rollout answered without search): cos(pi / (2 + c)) with c = 2, not 5
    r = SearchCost(penalty="otc")
    r.score_group([Q], [ep("Paris", 0)])
    assert r.score_group([Q], [two])[0]["reward"] == pytest.approx(math.cos(math.pi / 4))
    # linear: 1 - 1 / (2 + 1)
    assert SearchCost(penalty="linear").score_group([Q], [two])[0]["reward"] == pytest.approx(2 / 3)
    bare = Episode([], "<answer> Paris </answer>", metrics={"searches": 1.0})  # not from pay_per_search
    with pytest.raises(ValueError, match="max_searches"):
        SearchCost(penalty="linear").score_group([Q], [bare])
    assert SearchCost(penalty="exp").score_group([Q], [bare])[0]["reward"] == 1.0  # exp needs no limit


def test_rewards_score_the_answer_the_environment_accepted():
    """With the environment's verdict on the episode the rewards read it, not the transcript: a passage
    between an <answer> opened before a search and a '</answer>' after it is never scored."""
    text = "<answer> x <search> q </search>\n<document>\n(Title: Paris) Paris\n</document>\n</answer>"
    refused = Episode([], text, metrics={"searches": 1.0}, info={"final_answer": None, "max_searches": 5})
    assert extract_answer(text) is not None  # the transcript alone would give an answer
    assert qa_em(text, "Paris", refused).value == 0.0 and qa_answered(text, refused).value == 0.0
    assert qa_f1(text, "Paris", refused).value == 0.0
    assert SearchCost().score_group([Q], [refused])[0]["em"] == 0.0
    accepted = Episode([], text, metrics={"searches": 1.0}, info={"final_answer": "Paris", "max_searches": 5})
    assert qa_em(text, "Paris", accepted).value == 1.0 and qa_answered(text, accepted).value == 1.0
    assert qa_em("<answer> Paris </answer>", "Paris").value == 1.0  # no verdict: the transcript


def test_bad_args():
    with pytest.raises(ConfigError, match="Allowed: exp, otc, otc_strict, linear, none"):
        SearchCost(penalty="cubic")
    with pytest.raises(ConfigError, match="lam"):
        SearchCost(lam=1.5)
    with pytest.raises(ConfigError, match="lamda: unknown argument.*lam"):
        Rubric([{"name": "search_cost", "args": {"lamda": 0.5}}])


def test_through_the_rubric_with_components_and_checkpoint_state():
    rubric = Rubric([{"name": "qa_em", "weight": 0.0}, {"name": "search_cost", "args": {"lam": 0.5}},
                     {"name": "qa_answered", "weight": 0.1}])
    eps = [ep("Paris", 1), ep("Paris", 2), ep("Rome", 0)]
    rubric.score_group([Q] * 3, eps)
    assert [e.reward for e in eps] == pytest.approx([1.1, 0.6, 0.1])
    assert eps[1].reward_components == {"qa_em": 1.0, "search_cost": 0.5, "search_cost/em": 1.0,
                                        "search_cost/penalty": 0.5, "search_cost/n_min": 1.0, "qa_answered": 1.0}
    state = rubric.state_dict()
    assert state == {"search_cost": {"n_min": {"t/q1": 1}}}
    again = Rubric([{"name": "search_cost", "args": {"lam": 0.5}}])
    again.load_state_dict(state)
    e = [ep("Paris", 2)]
    again.score_group([Q], e)
    assert e[0].reward == 0.5
