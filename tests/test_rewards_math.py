"""Math rewards on literal strings: \\boxed{} extraction edge cases, math-verify equivalences, reasons for
every 0, timeouts from the main thread / other threads / asyncio, and reasoning-gym's own scorers."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time

import pytest

from rlreason.data import build_reasoning_gym, loads_info
from rlreason.registry import REWARDS
from rlreason.rewards.math import (boxed_format, check_answer, extract_answer, extract_final_answer, math_reward,
                          reasoning_gym_reward)
from rlreason.rubric import Rubric, Scored
from rlreason.types import Episode

HUGE = "\\boxed{9^{9^{9^{9}}}}"  # sympy tries to evaluate it: only a deadline stops it


# --- extraction --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,answer", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{a^{b^{c}} + \\sqrt{x_{1}}}", "a^{b^{c}} + \\sqrt{x_{1}}"),
    ("first \\boxed{1}, finally \\boxed{2}", "2"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{ 7 }", "7"),
    ("MATH style $\\boxed 9$.", "9"),
    ("\\fbox{3}", "3"),
    ("<think>maybe \\boxed{1}</think> so \\boxed{2}", "2"),
    ("<think>a</think><think>b</think>\\boxed{3}", "3"),
])
def test_extract_answer_finds_last_box(text, answer):
    assert extract_answer(text) == (answer, "")


@pytest.mark.parametrize("text,reason", [
    ("The answer is 4.", "no \\boxed{} answer found"),
    ("<think>it is \\boxed{4}</think> I said it above.", "no \\boxed{} answer found after </think>"),
    ("<think>it is \\boxed{4} and then I ran out of tok", "thinking never closed (no </think>)"),
    ("<think>a</think> \\boxed{1} <think>again", "thinking never closed (no </think>)"),
    ("\\boxed{}", "last \\boxed{} is empty"),
    ("\\boxed{1} then \\boxed{  }", "last \\boxed{} is empty"),
    ("\\boxed{1} then \\boxed{\\frac{2}{3}", "last \\boxed{ is never closed"),
    ("\\boxedfoo{1}", "no \\boxed{} answer found"),
])
def test_extract_answer_reasons(text, reason):
    assert extract_answer(text) == (None, reason)


def test_extract_final_answer_fallbacks():
    assert extract_final_answer("work\n\\boxed{5}\ntrailing") == ("5", "")
    assert extract_final_answer("work <answer> cat </answer>\nbye") == ("cat", "")
    assert extract_final_answer("work\n  ainomma  \n\n") == ("ainomma", "")
    assert extract_final_answer("<think>x</think>\n") == (None, "empty completion")
    assert extract_final_answer("<think>x \n 5") == (None, "thinking never closed (no </think>)")
    assert extract_final_answer("\\boxed{}") == (None, "last \\boxed{} is empty")


# --- math ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pred", ["1/2", "0.5", "\\frac{1}{2}", "\\dfrac12", "0.50"])
@pytest.mark.parametrize("gold", ["1/2", "0.5", "\\frac{1}{2}"])
def test_equivalent_forms_are_correct(pred, gold):
    assert math_reward(f"The answer is \\boxed{{{pred}}}.", gold) == Scored(1.0, "correct")


@pytest.mark.parametrize("pred,gold", [("70,000", "70000"), ("\\$18", "18"), ("90", "90^\\circ"),
                                       ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
                                       ("Evelyn", "\\text{Evelyn}"), ("x^2 + 2x + 1", "(x+1)^2")])
def test_gold_formats_from_gsm8k_and_math(pred, gold):
    assert math_reward(f"\\boxed{{{pred}}}", gold).value == 1.0


def test_wrong_and_missing_answers_score_zero_with_reason():
    assert math_reward("\\boxed{0.49}", "1/2") == Scored(0.0, "wrong: '0.49', expected '1/2'")
    assert math_reward("I think it is 1/2", "1/2") == Scored(0.0, "no \\boxed{} answer found")
    assert math_reward("<think>\\boxed{1/2}", "1/2").reason == "thinking never closed (no </think>)"


def test_unparsable_prediction_is_a_zero_not_a_crash():
    assert check_answer("}{", "1") == Scored(0.0, "math-verify could not parse the answer '}{'")


def test_missing_gold_raises_so_the_rubric_counts_it():
    with pytest.raises(ValueError, match="no usable gold 'answer'"):
        math_reward("\\boxed{1}", None)  # type: ignore[arg-type]


def test_timeout_in_main_thread_is_a_zero_with_reason():
    t0 = time.monotonic()
    s = math_reward(HUGE, "1", timeout_s=1)
    assert s.value == 0.0 and s.reason.startswith("math-verify timed out after 1s")
    assert time.monotonic() - t0 < 5


def test_someone_elses_alarm_survives():
    fired = []
    old = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        assert math_reward("\\boxed{2/4}", "0.5").value == 1.0
        time.sleep(0.5)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _in_thread(fn, *args, **kwargs):
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args, **kwargs)))
    t.start()
    t.join(timeout=120)
    return out[0]


def test_non_main_thread_uses_worker_with_deadline():
    """One test because each worker start costs seconds (imports): correct, wrong, timed out, and a
    worker that died is replaced."""
    from rlreason.rewards import math as rm

    assert _in_thread(math_reward, "\\boxed{\\frac{2}{4}}", "0.5") == Scored(1.0, "correct")
    assert _in_thread(math_reward, "\\boxed{3}", "4").reason.startswith("wrong")
    huge = _in_thread(math_reward, HUGE, "1", timeout_s=1)
    assert huge.value == 0.0 and "timed out" in huge.reason
    rm._worker.proc.kill()
    rm._worker.proc.wait()
    assert _in_thread(math_reward, "\\boxed{3/6}", "0.5") == Scored(1.0, "correct")


def test_inside_asyncio_loop_and_to_thread():
    async def main() -> tuple[Scored, Scored]:
        return (math_reward("\\boxed{0.5}", "\\frac{1}{2}"),
                await asyncio.to_thread(math_reward, "\\boxed{\\frac{1}{2}}", "0.5"))

    assert asyncio.run(main()) == (Scored(1.0, "correct"), Scored(1.0, "correct"))


def test_boxed_format():
    assert boxed_format("\\boxed{wrong}") == Scored(1.0, "")
    assert boxed_format("no box") == Scored(0.0, "no \\boxed{} answer found")


def test_registered_and_combined_by_rubric():
    assert REWARDS.get("math") is math_reward and REWARDS.get("boxed_format") is boxed_format
    rubric = Rubric([{"name": "math"}, {"name": "boxed_format", "weight": 0.5}])
    episodes = [Episode(samples=[], transcript=t) for t in ("\\boxed{5}", "\\boxed{6}", "5")]
    rubric.score_group([{"answer": "5"}] * 3, episodes)
    assert [e.reward for e in episodes] == [1.5, 0.5, 0.0]
    assert episodes[2].info["reward_reasons"]["math"] == "no \\boxed{} answer found"


# --- reasoning-gym ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("task,difficulty", [
    ("basic_arithmetic", dict(min_terms=2, max_terms=2, min_digits=1, max_digits=1, operators=["+"])),
    ("letter_counting", {}), ("spell_backward", {}), ("leg_counting", {}), ("chain_sum", {}),
])
def test_reasoning_gym_scorer_accepts_gold(task, difficulty):
    for row in build_reasoning_gym(task, 4, 0, **difficulty):
        assert reasoning_gym_reward(f"so \\boxed{{{row['answer']}}}", row["info"]) == Scored(1.0, "correct")
        assert reasoning_gym_reward(f"thinking...\n{row['answer']}", loads_info(row["info"])).value == 1.0


def test_reasoning_gym_wrong_missing_and_bad_info():
    row = build_reasoning_gym("basic_arithmetic", 1, 0)[0]
    wrong = reasoning_gym_reward("\\boxed{not a number}", row["info"])
    assert wrong.value == 0.0 and "not a number" in wrong.reason
    assert reasoning_gym_reward("<think>" + row["answer"], row["info"]).value == 0.0
    with pytest.raises(ValueError, match="missing \\['config', 'index', 'entry'\\]"):
        reasoning_gym_reward("\\boxed{1}", json.dumps({"task": "basic_arithmetic"}))


def test_reasoning_gym_regenerates_entries_that_json_cannot_hold():
    """rearc's scorer compares tuple grids; the JSON copy holds lists and would score ~0.05."""
    row = build_reasoning_gym("rearc", 1, 0)[0]
    assert reasoning_gym_reward(f"<answer>{row['answer']}</answer>", row["info"]).value == 1.0
