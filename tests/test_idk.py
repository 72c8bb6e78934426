"""The `idk` reward (Auto-CEI, arXiv 2410.07627): values at hand-picked (d, c1, c2), refusal detection,
step counting and the verdict the environment writes; all on literal strings."""

import math

import pytest

from rlreason.registry import ConfigError
from rlreason.rewards.idk import (DEFAULT_PHRASES, STEP_COUNTERS, count_steps, idk_reward, judge, phrase_pattern,
                         refusal_position, refusal_value, register_step_counter)
from rlreason.rubric import Rubric
from rlreason.types import Episode


@pytest.mark.parametrize("d, c1, c2, expected", [
    # d = c1: exp(0) = 1, 2 / (1 + 1) - 1 = 0
    (2.0, 2.0, 0.7, 0.0),
    # c2 = ln 3, d - c1 = 1: exp(-ln 3) = 1/3, 2 / (4/3) - 1 = 1.5 - 1 = 0.5
    (3.0, 2.0, math.log(3), 0.5),
    # c2 = ln 3, d - c1 = -1: exp(ln 3) = 3, 2 / 4 - 1 = -0.5
    (1.0, 2.0, math.log(3), -0.5),
    # c2 = ln 9 / 2, d - c1 = 2: exp(-ln 9) = 1/9, 2 / (10/9) - 1 = 1.8 - 1 = 0.8
    (2.0, 0.0, math.log(9) / 2, 0.8),
    # d = 0 refusal, c1 = 1.2, c2 = ln 4: exp(1.2 ln 4) = 4^1.2 = 5.27803, 2 / 6.27803 = 0.318571, - 1 = -0.681429
    (0.0, 1.2, math.log(4), -0.681429),
])
def test_refusal_value_at_hand_picked_points(d, c1, c2, expected):
    assert refusal_value(d, c1, c2) == pytest.approx(expected, abs=2e-6)


def test_refusal_value_is_bounded_monotone_and_never_overflows():
    vals = [refusal_value(d, 3.0, 0.8) for d in range(10)]
    assert all(a < b for a, b in zip(vals, vals[1:]))
    assert -1 < vals[0] and vals[-1] < 1
    # exp(-c2 (d - c1)) would overflow here; the tanh form saturates instead
    assert refusal_value(0.0, 1000.0, 5.0) == -1.0 and refusal_value(1000.0, 0.0, 5.0) == 1.0


def _ep(correct=0.0, refused=0.0, steps=0.0, c1=2.0, c2=math.log(3)):
    return Episode([], "", metrics={"correct": correct, "refused": refused, "steps": steps},
                   info={"c1": c1, "c2": c2})


def test_idk_reward_reads_verdict_and_stamped_c1_c2():
    assert idk_reward(_ep(correct=1.0)).value == 1.0
    assert idk_reward(_ep()).value == -1.0
    assert idk_reward(_ep(refused=1.0, steps=3.0)).value == pytest.approx(0.5)  # as in the table above
    assert idk_reward(_ep(refused=1.0, steps=3.0, c1=3.0)).value == pytest.approx(0.0)  # c1 from the episode
    s = idk_reward(_ep(refused=1.0, steps=5.0, c1=None, c2=None))  # curriculum not initialised yet
    assert s.value == 0.0 and "before the curriculum" in s.reason


def test_idk_reward_on_an_unjudged_episode_is_counted_as_an_error():
    with pytest.raises(ValueError, match="curriculum_ei"):
        idk_reward(Episode([], "\\boxed{3}"))
    rubric = Rubric([{"name": "idk"}])
    rubric.score_group([{"answer": "3"}], [Episode([], "\\boxed{3}")])
    assert rubric.errors["idk"] == 1


PAT = phrase_pattern(DEFAULT_PHRASES)


@pytest.mark.parametrize("text, refused", [
    ("3 + 4 = 7\n\\boxed{7}", False),
    ("583 - 296 is too hard for me.\n\\boxed{I don't know}", True),
    ("\\boxed{I DON’T KNOW.}", True),  # case, curly apostrophe, punctuation
    ("\\boxed{i  do not\nknow}", True),  # white space between words
    ("Hmm, I am not sure about this one.", True),  # no box: a phrase anywhere
    ("I don't know at first, but 3 + 4 = 7.\n\\boxed{7}", False),  # the final boxed answer decides
    ("\\boxed{I don't know}\nActually \\boxed{7}", False),  # only the last box counts
    ("the kidkids said 7", False),  # 'idk' only as a whole word
    ("3 + 4 = \\boxed{", False),  # truncated: wrong, not a refusal
])
def test_refusal_detection(text, refused):
    assert (refusal_position(text, PAT) is not None) == refused


def test_phrase_set_is_configurable():
    pat = phrase_pattern(["no idea"])
    assert refusal_position("\\boxed{No idea}", pat) == 0
    assert refusal_position("\\boxed{I don't know}", pat) is None
    with pytest.raises(ConfigError, match="at least one phrase"):
        phrase_pattern([])


def test_step_counting_lines_and_sentences():
    text = "First, 3 + 4 = 7.\n\n---\nThen 7 + 2 = 9. So x = 3.5 here! Done?\n"
    # lines with a letter or digit: "First...", "Then ... Done?" (the blank and '---' lines are no steps)
    assert count_steps(text, "lines") == 2
    # sentences: "First, 3 + 4 = 7." | "Then 7 + 2 = 9." | "So x = 3.5 here!" | "Done?" (3.5 is no boundary)
    assert count_steps(text, "sentences") == 4
    with pytest.raises(ConfigError, match="Allowed: .*lines.*sentences"):
        count_steps(text, "paragraphs")


def test_step_counter_is_pluggable_by_name():
    if "_words" not in STEP_COUNTERS:
        register_step_counter("_words")(lambda text: len(text.split()))
    j = judge("one two three\n\\boxed{I don't know}", {"answer": "1"}, steps="_words")
    assert j.refused and j.steps == 3
    with pytest.raises(ValueError, match="already registered"):
        register_step_counter("lines")(lambda text: 0)


def test_judge_counts_steps_before_the_refusal_only():
    j = judge("Step one.\nStep two.\n\\boxed{I don't know}\nextra line after", {"answer": "5"})
    # the boxed refusal is the last box; lines before it: 2
    assert (j.correct, j.refused, j.steps) == (False, True, 2)
    j = judge("Step one. Step two.\nStep three. I'm not sure.\nmore", {"answer": "5"}, steps="sentences")
    # no box; the phrase starts after 3 sentences
    assert (j.refused, j.steps) == (True, 3)
    m = j.metrics()
    assert m == {"correct": 0.0, "refused": 1.0, "answered": 0.0, "steps": 3.0, "steps_sq": 9.0,
                 "refusal_steps": 3.0, "refusal_steps_sq": 9.0}


def test_judge_correct_and_wrong_answers():
    ok = judge("3 + 4 = 7\n\\boxed{7}", {"answer": "7"})
    assert (ok.correct, ok.refused, ok.steps) == (True, False, 2)
    bad = judge("3 + 4 = 8\n\\boxed{8}", {"answer": "7"})
    assert not bad.correct and not bad.refused and "wrong" in bad.reason
    assert bad.metrics()["refusal_steps"] == 0.0 and bad.metrics()["answered"] == 1.0
    none = judge("3 + 4 = ", {"answer": "7"})
    assert not none.correct and not none.refused
    with pytest.raises(ConfigError, match="verifier"):
        judge("\\boxed{7}", {"answer": "7"}, verifier="exact")


def test_a_fixed_refusal_reward_turns_idk_into_a_wrong_answer():
    # args.refusal = -1: expert iteration without IDK (a refusal is never kept, R > -1 fails)
    assert idk_reward(_ep(refused=1.0, steps=3.0), refusal=-1.0).value == -1.0
    assert idk_reward(_ep(refused=1.0, steps=3.0, c1=None, c2=None), refusal=-1.0).value == -1.0
    assert idk_reward(_ep(correct=1.0), refusal=-1.0).value == 1.0
    assert idk_reward(_ep(), refusal=-1.0).value == -1.0
    ep = _ep(refused=1.0, steps=3.0)
    Rubric([{"name": "idk", "args": {"refusal": -1.0}}]).score_group([{"answer": "3"}], [ep])
    assert ep.reward == -1.0
    with pytest.raises(ConfigError, match=r"rewards\[0\].args.refusals"):
        Rubric([{"name": "idk", "args": {"refusals": -1.0}}])
