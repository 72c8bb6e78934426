"""Dealing a mini-batch into micro-batches: every layout holds each row once, the plan runs the fewest padded
tokens (prompt groups kept together on ties), and the update it trains is the one of the old grouped layout."""

import random
from collections import defaultdict
from unittest import mock

import pytest
import torch

from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.trainer import micro_batches
from rlreason.trainer.batch import Row, group_order
from rlreason.trainer.update import UpdateContext, policy_update
from test_shared_prefix import _model  # tests/ is on sys.path

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


def _grpo_rows(lengths: list[list[int]], prompt_len: int = 6, seed: int = 0) -> list[Row]:
    """One prompt group per entry of `lengths`, a sample per response length, random ids below 1000."""
    rng = random.Random(seed)
    rows = []
    for g, group in enumerate(lengths):
        prompt = [rng.randrange(5, 1000) for _ in range(prompt_len)]
        for t in group:
            rows.append(Row(prompt, [rng.randrange(5, 1000) for _ in range(t)], [-1.0] * t, [1] * t,
                            rng.choice([-1.0, 1.0]), len(rows), g))
    return rows


def _padded(rows, micros, share):
    return sum(micro_batches.padded_tokens(rows, m, share_prompts=share) for m in micros)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=6), min_size=1, max_size=6),
       size=st.integers(1, 9), share=st.booleans(), data=st.data())
def test_every_layout_holds_each_row_once_and_the_plan_is_the_cheapest(lengths, size, share, data):
    rows = _grpo_rows(lengths, prompt_len=data.draw(st.integers(1, 30)))
    idx = data.draw(st.lists(st.sampled_from(range(len(rows))), unique=True, min_size=1))
    cands = micro_batches.layouts(rows, idx, size)
    for micros in cands.values():
        assert sorted(i for m in micros for i in m) == sorted(idx)
        assert all(1 <= len(m) <= size for m in micros)
    chosen = micro_batches.plan(rows, idx, size, share_prompts=share)
    assert _padded(rows, chosen, share) == min(_padded(rows, m, share) for m in cands.values())


def test_padded_tokens_counts_what_collate_and_the_shared_forward_run():
    rows = _grpo_rows([[3, 10], [7]], prompt_len=5)
    rows[2].prompt_ids = rows[2].prompt_ids[:4]
    assert micro_batches.padded_tokens(rows, [0, 1, 2], share_prompts=False) == 3 * (5 + 10)
    assert micro_batches.padded_tokens(rows, [0, 1, 2], share_prompts=True) == 2 * 5 + 3 * 10
    assert micro_batches.padded_tokens(rows, [0, 2], share_prompts=True) == 2 * (5 + 10 - 3)  # nothing repeats


def test_one_long_sample_per_group_is_padded_alone_not_with_its_group():
    """The vs_trl shape: short prompts, 4 samples per prompt, one of them at the 128-token cap. Groups kept
    together pad every sample to 128; sorted by length, the capped samples share micro-batches."""
    rows = _grpo_rows([[128, 40, 35, 30], [128, 50, 20, 25], [45, 30, 60, 20], [128, 33, 41, 38]], prompt_len=45)
    grouped = [group_order(rows)[s:s + 8] for s in range(0, 16, 8)]
    chosen = micro_batches.plan(rows, list(range(16)), 8, share_prompts=True)
    assert _padded(rows, chosen, True) < 0.8 * _padded(rows, grouped, True)
    assert chosen == micro_batches.layouts(rows, list(range(16)), 8)["by length"]


def test_equal_lengths_keep_prompt_groups_together():
    """Nothing to save on padding: each prompt runs once per micro-batch, as before."""
    rows = _grpo_rows([[16] * 4] * 4, prompt_len=45)
    random.Random(0).shuffle(rows)
    order = group_order(rows)
    assert micro_batches.plan(rows, list(range(16)), 8, share_prompts=True) == [order[:8], order[8:]]


def test_update_with_the_planned_layout_equals_the_grouped_layout():
    """float64, no autocast: the layout the plan picks (by length here) trains the same weights as the
    grouped layout did, so the choice is a matter of speed only (the tolerance of test_update's micro-batch
    split: +/- advantages cancel in the tiny random model, so summation order shows at ~1e-7 of the update)."""
    rows = _grpo_rows([[9, 2, 3, 2], [2, 9, 3, 2], [3, 2, 2, 9]], prompt_len=4, seed=1)
    assert micro_batches.plan(rows, list(range(12)), 4, share_prompts=True) != \
        micro_batches.layouts(rows, list(range(12)), 4)["grouped"]

    def update(plan) -> dict[str, torch.Tensor]:
        model = _model().double()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ctx = UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, torch.device("cpu"),
                            None, 0, 0.8, share_prompts=True)
        random.seed(0)
        with mock.patch.object(micro_batches, "plan", plan):
            policy_update(rows, ctx, AlgoConfig(tis_cap=2.0), TrainerConfig(micro_batch_size=4), None)
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    planned = update(micro_batches.plan)
    grouped = update(lambda rows_, idx, size, **_: micro_batches.layouts(rows_, idx, size)["grouped"])
    for n, d in grouped.items():
        torch.testing.assert_close(planned[n], d, atol=1e-6 * float(d.abs().max()) + 1e-12, rtol=1e-6, msg=n)
    assert any(float(d.abs().max()) > 0 for d in grouped.values())


def test_sft_trains_the_planned_layout_and_the_same_step_as_the_grouped_one():
    """SFT rows differ in length too (a completion per row): sft_batch deals them by the plan, and in float64
    the step equals the grouped layout's (the NLL's divisor is the batch's token count, fixed over micro-batches)."""
    from rlreason.trainer.sft import sft_batch
    rows = _grpo_rows([[9, 2, 3, 2], [2, 9, 3, 2], [3, 2, 2, 9]], prompt_len=4, seed=2)
    seen: list[list[int]] = []

    def step(plan) -> dict[str, torch.Tensor]:
        model = _model().double()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        ctx = UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, torch.device("cpu"),
                            None, 0, 0.8, share_prompts=True)

        def spy(rows_, idx, size, **kw):
            seen.append(plan(rows_, idx, size, **kw))
            return seen[-1]

        with mock.patch.object(micro_batches, "plan", spy):
            sft_batch(rows, ctx, TrainerConfig(micro_batch_size=4), defaultdict(float), defaultdict(int))
        return {n: p.detach() - before[n] for n, p in model.named_parameters()}

    planned = step(micro_batches.plan)
    assert seen == [micro_batches.plan(rows, list(range(12)), 4, share_prompts=True)]
    assert seen[0] != micro_batches.layouts(rows, list(range(12)), 4)["grouped"]
    grouped = step(lambda rows_, idx, size, **_: micro_batches.layouts(rows_, idx, size)["grouped"])
    for n, d in grouped.items():
        torch.testing.assert_close(planned[n], d, atol=1e-6 * float(d.abs().max()) + 1e-12, rtol=1e-6, msg=n)
    assert any(float(d.abs().max()) > 0 for d in grouped.values())


def _cuts(n: int):
    """Every way to cut n ordered rows into consecutive runs (as lists of run lengths)."""
    if n == 0:
        yield []
        return
    for first in range(1, n + 1):
        for rest in _cuts(n - first):
            yield [first, *rest]


@settings(max_examples=80, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=9), size=st.integers(1, 5))
def test_by_tokens_is_the_cheapest_cut_within_the_token_budget(lengths, size):
    """Brute force over every cut of the rows sorted by length: by_tokens finds the least padded tokens +
    MICRO_BATCH_COST_TOKENS per micro-batch among the cuts whose micro-batches hold at most size x the
    longest response's tokens."""
    rows = _grpo_rows([lengths])
    idx = list(range(len(rows)))
    micros = micro_batches.by_tokens(rows, idx, size)
    assert sorted(i for m in micros for i in m) == idx
    budget = size * max(lengths)
    cost = micro_batches.MICRO_BATCH_COST_TOKENS

    def tokens(m: list[int]) -> int:
        return len(m) * max(len(rows[i].response_ids) for i in m)
    assert all(tokens(m) <= budget for m in micros)
    ordered = sorted(lengths, reverse=True)
    best = None
    for cut in _cuts(len(ordered)):
        runs, s = [], 0
        for k in cut:
            runs.append(ordered[s:s + k])
            s += k
        if all(len(r) * r[0] <= budget for r in runs):
            c = sum(len(r) * r[0] + cost for r in runs)
            best = c if best is None else min(best, c)
    assert sum(tokens(m) + cost for m in micros) == best


def test_by_tokens_on_the_vs_trl_shape_pads_less_than_rows_of_eight():
    """The lengths of a sampled vs_trl.py batch (8 prompts x 4 samples, EOS honoured): the token budget cuts
    where the lengths drop instead of every 8 rows: 1744 padded response tokens instead of 2008 (1569 real)."""
    lengths = [128, 128, 128, 124, 123, 102, 80, 77, 76, 52, 49, 46, 42, 41, 40, 38,
               32, 32, 30, 30, 29, 26, 23, 18, 15, 12, 12, 11, 10, 9, 4, 2]
    rows = _grpo_rows([lengths[g::8] for g in range(8)])
    idx = list(range(len(rows)))

    def padded(micros):
        return sum(len(m) * max(len(rows[i].response_ids) for i in m) for m in micros)
    fixed = micro_batches.layouts(rows, idx, 8)["by length"]
    cut = micro_batches.by_tokens(rows, idx, 8)
    assert (padded(cut), padded(fixed)) == (1744, 2008)
    assert len(cut) <= len(fixed) + 1
    assert micro_batches.plan(rows, idx, 8, share_prompts=True, prompts_once=True) == cut
