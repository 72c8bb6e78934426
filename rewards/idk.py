"""`idk`: the reward of Auto-CEI (arXiv 2410.07627), with the judging it rests on.

    correct answer   R = +1
    wrong answer     R = -1         (no answer, an unparsable one and a truncated one count as wrong)
    refusal          R = 2 / (1 + exp(-c2 (d - c1))) - 1 = tanh(c2 (d - c1) / 2)

d is the number of reasoning steps written before the refusal: a refusal after more effort than c1 earns
more than 0, an early one less (-1 < R < 1). Steps are counted by a named counter (`lines`, `sentences`
for math; add one with `register_step_counter`). A refusal is the answer form the prompt teaches, a final
`\\boxed{I don't know}` (any refusal phrase inside the last box), or, when there is no boxed answer at all,
a refusal phrase anywhere in the text (the first one marks where the refusal starts).

Who decides what (one source of truth each):
- the environment (`curriculum_ei`) judges every episode once with `judge` below, with the phrases and
  step counter its `env.args` name (its prompt teaches the refusal form, so they belong to it), and writes
  the verdict into `episode.metrics`: correct, refused, answered, steps (+ sums for means, see `Judgement`);
- the curriculum (c1, c2) is that environment's state; it stamps the values in force when the episode was
  generated into `episode.info["c1"]`, `["c2"]`;
- this reward is the formula on those two: no parsing, no state, so it cannot disagree with the metrics
  the curriculum climbs on. Before the curriculum is initialised (c1 is None) a refusal scores 0, its
  value at d = c1.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable

from rlreason.registry import ConfigError, Registry, register_reward
from rlreason.rewards.math import extract_answer, math_reward, reasoning_gym_reward
from rlreason.rubric import Scored
from rlreason.types import Episode

IDK_ANSWER = "\\boxed{I don't know}"
DEFAULT_PHRASES = ("i don't know", "i do not know", "i'm not sure", "i am not sure", "i cannot answer",
                   "i can't answer", "idk")


# --- step counting -------------------------------------------------------------------------------------

STEP_COUNTERS: Registry[Callable[[str], int]] = Registry("step counter")
register_step_counter = STEP_COUNTERS.register


def _has_content(piece: str) -> bool:
    return any(ch.isalnum() for ch in piece)


@register_step_counter("lines")
def count_lines(text: str) -> int:
    """Lines holding at least one letter or digit (blank and punctuation-only lines are no steps)."""
    return sum(_has_content(line) for line in text.splitlines())


@register_step_counter("sentences")
def count_sentences(text: str) -> int:
    """Pieces between sentence ends ('.', '!' or '?' followed by white space) and line breaks, for
    math solutions that write several steps per line. `3.5` is not a boundary."""
    return sum(_has_content(s) for s in re.split(r"(?<=[.!?])\s+|\n+", text))


def count_steps(text: str, counter: str = "lines") -> int:
    return STEP_COUNTERS.get(counter, "env.args.steps")(text)


# --- refusal detection ---------------------------------------------------------------------------------

def phrase_pattern(phrases: tuple[str, ...] | list[str]) -> re.Pattern[str]:
    """Case-insensitive, whole words, any white space between words, ' or ’ for the apostrophe."""
    if not phrases:
        raise ConfigError("env.args.refusal_phrases: give at least one phrase, e.g. \"i don't know\".")
    alts = [re.escape(p.strip().lower()).replace("\\ ", r"\s+").replace("'", "['’]") for p in phrases]
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def _last_box(text: str) -> int:
    return max(text.rfind("\\boxed"), text.rfind("\\fbox"))


def refusal_position(text: str, pattern: re.Pattern[str]) -> int | None:
    """Where the refusal starts, or None when the text answers. The last \\boxed{} is the final answer:
    a refusal phrase in it is a refusal at the box; any other box is an answer, even if the reasoning
    said "I don't know" on the way. Without a box, the first refusal phrase counts."""
    answer, _ = extract_answer(text)
    if answer is not None:
        return _last_box(text) if pattern.search(answer) else None
    m = pattern.search(text)
    return m.start() if m else None


# --- the verdict the environment writes into episode.metrics --------------------------------------------

VERIFIERS: dict[str, Callable[[str, dict[str, Any]], Scored]] = {
    "math": lambda completion, example: math_reward(completion, example.get("answer")),
    "reasoning_gym": lambda completion, example: reasoning_gym_reward(completion, example.get("info") or {}),
}


@dataclass(frozen=True)
class Judgement:
    correct: bool
    refused: bool
    steps: int  # d: steps before the refusal when refused, steps of the whole response otherwise
    reason: str

    def metrics(self) -> dict[str, float]:
        """Per-episode numbers whose batch means are all a curriculum needs: the mean and std of d over
        refusals are refusal_steps / refused and refusal_steps_sq / refused - mean^2."""
        r, d = float(self.refused), float(self.steps)
        return {"correct": float(self.correct), "refused": r, "answered": 1.0 - r, "steps": d,
                "steps_sq": d * d, "refusal_steps": r * d, "refusal_steps_sq": r * d * d}


def judge(completion: str, example: dict[str, Any], *, steps: str = "lines",
          phrases: tuple[str, ...] | list[str] = DEFAULT_PHRASES, verifier: str = "math") -> Judgement:
    """Refused (and after how many steps), else correct or wrong by `verifier` (`math`: math-verify on
    the last \\boxed{}; `reasoning_gym`: the task's own scorer, full credit only)."""
    if verifier not in VERIFIERS:
        raise ConfigError(f"env.args.verifier: '{verifier}' is not allowed. Allowed: {', '.join(VERIFIERS)}.")
    pos = refusal_position(completion, phrase_pattern(phrases))
    if pos is not None:
        return Judgement(False, True, count_steps(completion[:pos], steps), "refused")
    s = VERIFIERS[verifier](completion, example)
    return Judgement(s.value >= 1.0, False, count_steps(completion, steps), s.reason or "correct")


# --- the reward ------------------------------------------------------------------------------------------

def refusal_value(d: float, c1: float, c2: float) -> float:
    """2 / (1 + exp(-c2 (d - c1))) - 1, written as tanh(c2 (d - c1) / 2) (the same function; no
    overflow of exp for large |c2 (d - c1)|). Auto-CEI, arXiv 2410.07627, Sec. 3."""
    return math.tanh(c2 * (d - c1) / 2.0)


@register_reward("idk")
def idk_reward(episode: Episode, refusal: float | None = None) -> Scored:
    """+1 correct, -1 wrong, refusal_value(d, c1, c2) for a refusal; reads the verdict the environment
    wrote into `episode.metrics` and the c1, c2 it stamped into `episode.info` (see the module doc).
    `refusal` (args.refusal, default null) replaces the curriculum's value by a fixed one for every
    refusal: -1 scores "I don't know" as a wrong answer, which makes expert iteration (keeps R > -1) the
    plain baseline that never trains on a refusal."""
    m, info = episode.metrics, episode.info
    missing = [k for k in ("correct", "refused", "steps") if k not in m]
    if missing or "c1" not in info:
        raise ValueError(f"the idk reward needs an episode judged by the curriculum_ei environment "
                         f"(missing metrics {missing}{'' if 'c1' in info else ' and info c1/c2'})")
    if m["refused"] and refusal is not None:
        return Scored(float(refusal), f"refused after {m['steps']:g} steps (fixed refusal reward)")
    if m["refused"]:
        d, c1, c2 = m["steps"], info["c1"], info["c2"]
        if c1 is None or c2 is None:
            return Scored(0.0, f"refused after {d:g} steps before the curriculum was initialised")
        return Scored(refusal_value(d, c1, c2), f"refused after {d:g} steps (c1={c1:.3g}, c2={c2:.3g})")
    if m["correct"]:
        return Scored(1.0, "correct")
    return Scored(-1.0, str(info.get("judgement") or "wrong"))
