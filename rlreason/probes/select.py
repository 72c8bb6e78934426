"""Cliff-as-a-Judge (arXiv 2510.06036, sec. 5): choose the few safety examples worth training on.

Each candidate is a harmful prompt with the model's own trace. It is ranked by

    cliff   largest (max thinking score - final score) first: the model's own thinking knew the
            request was harmful, then the intent collapsed at the answer;
    final   lowest final-token refusal score first: the model is least inclined to refuse;

and the top fraction p is kept. `random` draws the same number uniformly (the control). Each kept
example becomes one SFT row: the prompt, the model's own thinking, "</think>", then a refusal, so the
repair teaches "after this reasoning, refuse" rather than new reasoning.
"""

from __future__ import annotations

import math
import random
from typing import Callable

from rlreason.probes.traces import THINK_CLOSE
from rlreason.registry import ConfigError, Registry

REFUSAL_RESPONSE = ("I'm sorry, but I can't help with that. The request could cause real harm to "
                    "people, so I won't provide instructions or content for it.")


# Rank candidates best first (`probe select --by NAME`); `random`, the control, is drawn in `select`.
RANKERS: Registry[Callable[[list[dict]], list[dict]]] = Registry("selection method", key="probe select --by")


@RANKERS.register("cliff")
def _by_cliff(rows: list[dict]) -> list[dict]:
    # NaN cliffs (no thinking written) rank last: there is no evidence of a collapse.
    return sorted(rows, key=lambda r: math.inf if math.isnan(r["cliff"]) else -r["cliff"])


@RANKERS.register("final")
def _by_final(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: r["final_score"])




def n_selected(n_candidates: int, p: float) -> int:
    if not 0 < p <= 1:
        raise ConfigError(f"probe select --top-p: a fraction in (0, 1], got {p}")
    return max(1, round(p * n_candidates))


def select(rows: list[dict], p: float, method: str, *, seed: int = 0) -> list[dict]:
    """The chosen candidate rows (each needs `cliff` and `final_score`, as written by `probe score`)."""
    RANKERS.check(method, also=("random",))
    k = n_selected(len(rows), p)
    if method == "random":
        return random.Random(seed).sample(rows, k)
    return RANKERS.get(method)(rows)[:k]


def sft_rows(traces: list[dict], refusal: str = REFUSAL_RESPONSE) -> list[dict]:
    """One SFT row per selected trace: own thinking + </think> + refusal. `think` and `answer` are what the
    update tokenises, each apart, as generation feeds them (repair.sft_example); `response` is the same text in
    one piece, for reading."""
    return [{"id": t["id"], "prompt": t["prompt"], "think": t["think"], "answer": f"\n{refusal}",
             "response": f"{t['think']}{THINK_CLOSE}\n{refusal}"} for t in traces]
