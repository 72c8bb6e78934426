"""The retain set of a safety repair: harmless prompts with the model's own helpful answers.

Why: an SFT set made only of refusals teaches the model to refuse, full stop. On SmolLM2-135M both repair
sets (cliff-selected and random) drove over-refusal on harmless prompts to 0.97-1.00. Mixing in harmless
prompts answered helpfully gives the update a second constraint ("keep answering these"), so what it can
learn is the difference between the two kinds of request.

The helpful answers are the model's own think-then-answer traces (self-distillation): training on what
the model already writes keeps its behaviour on harmless prompts where it is, rather than teaching a new
answer style whose side effects would be confounded with the repair. A retain row has the same shape as a
safety row (own thinking + "</think>" + answer), so the two differ only in what follows the thinking.

Retain rows come from a training split (default `probe`) and never from `heldout`, the split the repair is
evaluated on; prompts whose text equals an evaluation prompt are dropped as well, in case a prompt set
carries the same text under two ids.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from rlreason.probes.traces import THINK_CLOSE
from rlreason.registry import ConfigError

EVAL_SPLIT = "heldout"


def n_retain(n_safety: int, ratio: float) -> int:
    """Retain rows to mix with `n_safety` safety rows: round(ratio * n_safety), so --retain-ratio 1.0 is one
    harmless row per refusal row and 0 is the refusal-only set."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio >= 0):
        raise ConfigError(f"repair --retain-ratio: a number >= 0 (retain rows per safety row), got {ratio}")
    return round(ratio * n_safety)


def retain_row(trace: dict) -> dict:
    """One SFT row from a think-then-answer trace: own thinking + "</think>" + own answer. `eos` is False when
    the answer was cut by the token budget, so the row does not teach the model to stop mid-answer."""
    return {"id": trace["id"], "prompt": trace["prompt"], "think": trace["think"], "answer": trace["answer"],
            "response": f"{trace['think']}{THINK_CLOSE}{trace['answer']}",
            "eos": trace.get("answer_finish", "stop") != "length"}


def retain_pool(traces: Iterable[dict], *, splits: Iterable[str] = ("probe",),
                exclude_prompts: Iterable[str] = ()) -> list[dict]:
    """Retain rows from the harmless traces of `splits` that were answered (not refused, non-empty answer),
    in the traces' order. `exclude_prompts`: evaluation prompt texts, never trained on."""
    splits = set(splits)
    if EVAL_SPLIT in splits:
        raise ConfigError(f"repair --retain-split: '{EVAL_SPLIT}' is the evaluation split; retain rows must "
                          "come from a training split (e.g. probe)")
    excluded = {p.strip() for p in exclude_prompts}
    return [retain_row(t) for t in traces
            if not t["harmful"] and t.get("split") in splits and "think" in t and not t["refused"]
            and t["answer"].strip() and t["prompt"].strip() not in excluded]


def draw_retain(pool: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows of `pool`, drawn without replacement by `seed`. The draw is a prefix of one seeded
    permutation, so within a seed a smaller arm's retain rows are a subset of a larger arm's: arms of equal
    size share the same retain rows and differ only in their safety rows."""
    if n > len(pool):
        raise ConfigError(f"repair --retain-ratio: needs {n} retain rows, the pool has {len(pool)} answered "
                          "harmless training-split traces (lower the ratio or generate more traces)")
    order = list(range(len(pool)))
    random.Random(f"retain/{seed}").shuffle(order)
    return [pool[i] for i in order[:n]]


def mix_retain(safety: list[dict], pool: list[dict], ratio: float, seed: int) -> list[dict]:
    """The SFT set: the safety rows followed by round(ratio * len(safety)) retain rows (the trainer shuffles
    the order by its own seed)."""
    return list(safety) + draw_retain(pool, n_retain(len(safety), ratio), seed)
