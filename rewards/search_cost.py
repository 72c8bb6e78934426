"""`search_cost`: correctness times a per-search penalty, a group-level reward (MASH, arXiv 2510.01152).

With C = EM(answer) in {0, 1}, m = the episode's searches (`episode.metrics["searches"]`) and n = n_min,
the fewest searches any correct rollout of this question has needed (this group included), remembered
across training steps per question and saved in checkpoints (`state_dict`):

    exp        R = C * lam^(m - n)                        MASH's penalty; lam 0.5 single-hop, 0.8 multi-hop
    otc        R = C * r_tool(m, n)                       OTC-GRPO (arXiv 2504.14870), below
    otc_strict R = otc, but 0 for any search when n = 0   (a question answered without search once must
                                                           never be searched again)
    linear     R = C * max(0, 1 - cost * m)               cost defaults to 1 / (max_searches + 1)
    none       R = C                                      Search-R1

C is EM of the answer the environment accepted (`rlreason.rewards.qa.final_answer`), and max_searches is the
environment's `env.args.max_searches`, which pay_per_search stamps on every episode
(`episode.info["max_searches"]`): one value, so the reward's limit cannot drift from the environment's.

OTC, as read from the paper (section 3.2) and MASH's code (reward_functions.py, otc_grpo_penalty):
f(m, n) = 0 if m = n = 0; m if n = 0; 2nm / (m + n) otherwise (it equals n exactly when m = n), and

    r_tool = 1                          if f(m, n) = n = 0
           = cos(m pi / (2m + c))       if n = 0      (c = max_searches, as MASH sets it)
           = sin(f(m, n) pi / (2n))     otherwise     (1 at m = n, less for fewer or more searches)

MASH multiplies r_tool into the correctness (0 when wrong), which is what `otc` does here; OTC-GRPO's
alpha scale is 1. `linear` is MASH's linear penalty, max(0, 1 - m / (max_searches + 1)) — the same as
"EM - cost * m, clipped at 0, and 0 when wrong". n is keyed by `data_source` + example `id` (the
question text when there is no id), as MASH keys its tracker by dataset and question.

Returns {"reward": R, "em": C, "penalty": factor, "n_min": n or -1 when no correct rollout yet}.
"""

from __future__ import annotations

import math
from typing import Any

from rlreason.registry import ConfigError, register_reward
from rlreason.rewards.qa import MAX_SEARCHES, em_score, final_answer, gold_answers
from rlreason.types import Episode

PENALTIES = ("exp", "otc", "otc_strict", "linear", "none")


def otc_tool_reward(m: int, n: int, c: float) -> float:
    """r_tool(m, n) of OTC-GRPO (arXiv 2504.14870, Sec. 3.2)."""
    if n == 0:
        return 1.0 if m == 0 else math.cos(m * math.pi / (2 * m + c))
    f = 2 * n * m / (m + n)
    return math.sin(f * math.pi / (2 * n))


def _limit(max_searches: int | None, penalty: str) -> int:
    if max_searches is None:
        raise ValueError(f"search_cost penalty '{penalty}' needs the environment's search limit "
                         f"(episode.info['{MAX_SEARCHES}'], written by pay_per_search)")
    return int(max_searches)


@register_reward("search_cost")
class SearchCost:
    """Group-level: needs every rollout of the question to find this group's n_min."""

    def __init__(self, penalty: str = "exp", lam: float = 0.5, cost: float | None = None,
                 max_searches: int | None = None) -> None:
        if penalty not in PENALTIES:
            raise ConfigError(f"rewards.search_cost.args.penalty: '{penalty}' is not allowed. "
                              f"Allowed: {', '.join(PENALTIES)}.")
        if not 0.0 < lam <= 1.0:
            raise ConfigError(f"rewards.search_cost.args.lam: must be in (0, 1], got {lam}.")
        if max_searches is not None:  # a second hand-set limit could disagree with the environment's
            raise ConfigError(f"rewards.search_cost.args.max_searches: remove it ({max_searches}); the search "
                              f"cost uses the environment's env.args.max_searches, which every episode carries.")
        self.penalty, self.lam = penalty, float(lam)
        self.cost = None if cost is None else float(cost)
        self.n_min: dict[str, int] = {}  # question key -> fewest searches of any correct rollout so far

    @staticmethod
    def key(example: dict) -> str:
        qid = example.get("id")
        return f"{example.get('data_source', '')}/{qid if qid not in (None, '') else example.get('question', '')}"

    def factor(self, m: int, n: int, max_searches: int | None) -> float:
        if self.penalty == "exp":
            return self.lam ** (m - n)
        if self.penalty in ("otc", "otc_strict"):
            r = otc_tool_reward(m, n, _limit(max_searches, self.penalty))
            return 0.0 if self.penalty == "otc_strict" and n == 0 and m > 0 else r
        if self.penalty == "linear":
            cost = self.cost if self.cost is not None else 1.0 / (_limit(max_searches, "linear") + 1)
            return max(0.0, 1.0 - cost * m)
        return 1.0

    def score_group(self, examples: list[dict], episodes: list[Episode]) -> list[dict[str, float]]:
        ems, ms = [], []
        for ex, ep in zip(examples, episodes):
            pred = final_answer(ep.transcript, ep)
            ems.append(0.0 if pred is None else em_score(pred, gold_answers(ex.get("answer"))))
            ms.append(int(ep.metrics["searches"]))
        # Every example of a group is the same question; the loop also serves mixed batches.
        for k in {self.key(ex) for ex in examples}:
            correct = [m for ex, m, c in zip(examples, ms, ems) if c > 0 and self.key(ex) == k]
            if correct:
                self.n_min[k] = min(correct + ([self.n_min[k]] if k in self.n_min else []))
        out = []
        for ex, ep, m, c in zip(examples, episodes, ms, ems):
            n = self.n_min.get(self.key(ex))
            f = self.factor(m, n, ep.info.get(MAX_SEARCHES)) if c > 0 and n is not None else 0.0
            out.append({"reward": c * f, "em": c, "penalty": f, "n_min": float(-1 if n is None else n)})
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"n_min": dict(self.n_min)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_min = {str(k): int(v) for k, v in (state.get("n_min") or {}).items()}
