"""Short-answer QA rewards: `qa_em` (normalised exact match), `qa_f1` (token F1) and `qa_answered`
(format: an <answer>..</answer> was given).

Normalisation is SQuAD's (lower-case, drop punctuation, drop the articles a/an/the, collapse spaces);
F1 follows the HotpotQA scorer that Search-R1 and MASH use (yes/no/noanswer must match exactly). The
prediction is `final_answer`: the answer the environment accepted when it parses actions itself
(`pay_per_search` writes it to `episode.info["final_answer"]`, None when it accepted none), so a reward
can never disagree with the environment's `answered` nor read a retrieved passage as the answer; for
other environments, the text of the last <answer>..</answer> in the completion. The gold `answer` column
is a string or a JSON list string of accepted answers ('["Paris", "Paris, France"]'); the best match counts.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from typing import Any

from rlreason.registry import register_reward
from rlreason.rubric import Scored
from rlreason.types import Episode

ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_PUNCT = set(string.punctuation)
FINAL_ANSWER = "final_answer"  # episode.info key: the answer a multi-turn environment accepted, or None
MAX_SEARCHES = "max_searches"  # episode.info key: the environment's search limit (read by search_cost)


def extract_answer(completion: str) -> str | None:
    """The last <answer>..</answer>, stripped; None when there is none."""
    found = ANSWER.findall(completion or "")
    return found[-1].strip() if found else None


def final_answer(completion: str, episode: Episode | None = None) -> str | None:
    """The answer to score: the environment's verdict when the episode carries one (see the module doc),
    else the last <answer>..</answer> of the completion."""
    if episode is not None and FINAL_ANSWER in episode.info:
        return episode.info[FINAL_ANSWER]
    return extract_answer(completion)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def gold_answers(answer: Any) -> list[str]:
    """A string, a JSON list string, or a list -> the list of accepted answers (as text)."""
    if answer is None:
        return []
    if isinstance(answer, str):
        text = answer.strip()
        if text.startswith("["):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                return [answer]
            if isinstance(parsed, list):
                return [str(a) for a in parsed]
        return [answer]
    if isinstance(answer, (list, tuple)):
        return [str(a) for a in answer]
    return [str(answer)]


def em_score(prediction: str, golds: list[str]) -> float:
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in golds))


def f1_single(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction), normalize_answer(gold)
    if (p in ("yes", "no", "noanswer") or g in ("yes", "no", "noanswer")) and p != g:
        return 0.0
    pt, gt = p.split(), g.split()
    same = sum((Counter(pt) & Counter(gt)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pt), same / len(gt)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: list[str]) -> float:
    return max((f1_single(prediction, g) for g in golds), default=0.0)


@register_reward("qa_em")
def qa_em(completion: str, answer: Any, episode: Episode | None = None) -> Scored:
    pred = final_answer(completion, episode)
    if pred is None:
        return Scored(0.0, "no <answer>..</answer>")
    return Scored(em_score(pred, gold_answers(answer)))


@register_reward("qa_f1")
def qa_f1(completion: str, answer: Any, episode: Episode | None = None) -> Scored:
    pred = final_answer(completion, episode)
    if pred is None:
        return Scored(0.0, "no <answer>..</answer>")
    return Scored(f1_score(pred, gold_answers(answer)))


@register_reward("qa_answered")
def qa_answered(completion: str, episode: Episode | None = None) -> Scored:
    """Format reward: 1 when a non-empty answer was given (the environment's `answered`, where it has one)."""
    pred = final_answer(completion, episode)
    return Scored(float(bool(pred)), "" if pred else "no <answer>..</answer>")
