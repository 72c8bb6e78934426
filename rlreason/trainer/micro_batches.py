"""How the rows of a mini-batch are dealt into micro-batches: the layout that runs the fewest padded tokens.

Every micro-batch is collated to its longest prompt and its longest response, so which rows share a
micro-batch decides how much padding the forward and backward run over. GRPO's samples of one prompt differ
widely in length (on benchmarks/vs_trl.py's workload one sample of a group often runs to the 128-token cap
while most stop near 50), so keeping each prompt's group together -- one prompt forward per group
(shared_prefix.py) -- pads the short samples to the long one, while sorting the rows by response length pads
little but shares fewer prompts. Which wins depends on the prompt and response lengths, so each candidate
layout is costed by the tokens its padded micro-batches run (perf.pass_tokens) and the cheapest is used; ties
keep prompt groups together.

The loss is a sum over rows with aggregation weights fixed over the whole mini-batch (update.py), so the
layout changes the work and the float summation order, not the update: the freedom verl's dynamic batch size
(use_dynamic_bsz) uses to pack micro-batches by tokens."""

from __future__ import annotations

from rlreason.trainer.batch import Row, group_order
from rlreason.trainer.perf import pass_tokens
from rlreason.trainer.shared_prefix import worth_sharing


def layouts(rows: list[Row], idx: list[int], size: int) -> dict[str, list[list[int]]]:
    """The candidate layouts of the rows `idx` in micro-batches of `size` rows (the last may be short):
    `grouped`, prompt groups together in group_order; `groups by length`, the same groups ordered by their
    longest response, so groups of similar length meet; `by length`, rows sorted by response length, longest
    first, with rows of one prompt adjacent where lengths tie."""
    grouped = group_order(rows, idx)
    longest: dict[tuple[int, ...], int] = {}
    for i in grouped:
        key = tuple(rows[i].prompt_ids)
        longest[key] = max(longest.get(key, 0), len(rows[i].response_ids))
    groups_by_length = sorted(grouped, key=lambda i: -longest[tuple(rows[i].prompt_ids)])  # stable: groups stay whole
    by_length = sorted(idx, key=lambda i: (-len(rows[i].response_ids), len(rows[i].prompt_ids), rows[i].prompt_ids))
    return {name: [order[s:s + size] for s in range(0, len(order), size)]
            for name, order in (("grouped", grouped), ("groups by length", groups_by_length),
                                ("by length", by_length))}


def padded_tokens(rows: list[Row], micro: list[int], *, share_prompts: bool) -> int:
    """Tokens one pass over a micro-batch runs as collated: every row padded to the longest prompt and the
    longest response; with `share_prompts` each distinct prompt once where the shared forward would share
    (shared_prefix.worth_sharing)."""
    P = max(len(rows[i].prompt_ids) for i in micro)
    T = max(len(rows[i].response_ids) for i in micro)
    keys = [tuple(rows[i].prompt_ids) for i in micro]
    shared = share_prompts and worth_sharing(len(set(keys)), len(keys), T)
    return pass_tokens([(k, P, T) for k in keys], share_prompts=shared)


def plan(rows: list[Row], idx: list[int], size: int, *, share_prompts: bool) -> list[list[int]]:
    """The micro-batches (row indices) of the rows `idx`: the layout that runs the fewest padded tokens."""
    return min(layouts(rows, idx, size).values(),
               key=lambda micros: sum(padded_tokens(rows, m, share_prompts=share_prompts) for m in micros))
