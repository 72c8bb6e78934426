"""How the rows of a mini-batch are dealt into micro-batches: the layout that runs the fewest padded tokens.

Every micro-batch is collated to its longest prompt and its longest response, so which rows share a
micro-batch decides how much padding the forward and backward run over. GRPO's samples of one prompt differ
widely in length (on benchmarks/vs_trl.py's workload one sample of a group often runs to the 128-token cap
while most stop near 50), so keeping each prompt's group together -- one prompt forward per group
(shared_prefix.py) -- pads the short samples to the long one, while sorting the rows by response length pads
little but shares fewer prompts. Which wins depends on the prompt and response lengths, so each candidate
layout is costed by the tokens its padded micro-batches run (perf.pass_tokens) and the cheapest is used; ties
keep prompt groups together. Where the mini-batch's prompts run in one pass of their own
(shared_prefix.PromptPass) the choice is simpler: only responses are dealt, sorted by length and cut by a
token budget (`by_tokens`).

The loss is a sum over rows with aggregation weights fixed over the whole mini-batch (update.py), so the
layout changes the work and the float summation order, not the update: the freedom verl's dynamic batch size
(use_dynamic_bsz) uses to pack micro-batches by tokens."""

from __future__ import annotations

from rlreason.trainer.batch import Row, group_order
from rlreason.trainer.perf import pass_tokens
from rlreason.trainer.shared_prefix import worth_sharing


def longest_first(rows: list[Row], idx: list[int]) -> list[int]:
    """`idx` sorted by response length, longest first, with rows of one prompt adjacent where lengths tie."""
    return sorted(idx, key=lambda i: (-len(rows[i].response_ids), len(rows[i].prompt_ids), rows[i].prompt_ids))


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
    by_length = longest_first(rows, idx)
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


def plan(rows: list[Row], idx: list[int], size: int, *, share_prompts: bool,
         prompts_once: bool = False) -> list[list[int]]:
    """The micro-batches (row indices) of the rows `idx`: the layout that runs the fewest padded tokens.
    `prompts_once`: the mini-batch's prompts run in one pass of their own (shared_prefix.PromptPass), so only
    the responses are dealt (`by_tokens`)."""
    if prompts_once:
        return by_tokens(rows, idx, size)
    return min(layouts(rows, idx, size).values(),
               key=lambda micros: sum(padded_tokens(rows, m, share_prompts=share_prompts) for m in micros))


# What one more micro-batch costs beyond its tokens (per-op overheads, one more accumulation of the [V, H]
# embedding gradient), in padded tokens. On update_levers.py's sampled rows (vs_trl.py's workload, fp32, 2 CPU
# cores) 64 gave the fastest update of 0, 16, 64 and 256 (13.6 s; 16 and 256 within 8%; 0, a micro-batch per
# distinct length, 20.5 s); `update_levers.py --variants "baseline (micro 8),micro cost 0,..."` reruns it.
MICRO_BATCH_COST_TOKENS = 64


def by_tokens(rows: list[Row], idx: list[int], size: int) -> list[list[int]]:
    """Micro-batches of responses alone, each costing its rows x its longest response plus
    MICRO_BATCH_COST_TOKENS. The rows sorted by response length (longest first) are cut into the runs of
    least total cost, each holding at most `size` x the longest response's tokens: the memory a micro-batch
    of `size` of the longest rows takes. Shorter rows thus share micro-batches by a token budget, as verl's
    use_dynamic_bsz packs them."""
    order = longest_first(rows, idx)
    lengths = [len(rows[i].response_ids) for i in order]
    n = len(order)
    budget = size * lengths[0]
    # best[j]: (cost, end of the first micro-batch) of the runs that cover order[j:]
    best: list[tuple[int, int]] = [(0, n)] * (n + 1)
    for j in range(n - 1, -1, -1):
        rows_max = max(1, budget // lengths[j])  # order[j] is the micro-batch's longest
        best[j] = min((best[k][0] + (k - j) * lengths[j] + MICRO_BATCH_COST_TOKENS, k)
                      for k in range(j + 1, min(n, j + rows_max) + 1))
    micros, j = [], 0
    while j < n:
        micros.append(order[j:best[j][1]])
        j = best[j][1]
    return micros
