"""Property tests: over random batches, the trainer's advantages and its policy update equal a straightforward
float64 reference written from the formulas with explicit loops.

Batches have random group sizes (groups of one included), Delethink traces of several chunk rows, random
masks (fully masked rows included), rewards with all-equal groups of inexact values (1.2, 0.2, 0.64, 0.1),
every advantage estimator, every loss aggregation mode, both policy losses, 1-2 epochs and random
mini/micro-batch splits. The policy is `token_table_policy.TokenTable` at lr 0, whose gradient reveals each
token's weight, so the reference is the gradient and loss themselves, not a re-use of `token_weights`."""

from __future__ import annotations

import math
import random
from unittest import mock

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, example, given, settings, strategies as st  # noqa: E402

from rlreason.algos import ADVANTAGES, LOSS_AGG_MODES  # noqa: E402
from rlreason.config import AlgoConfig, TrainerConfig  # noqa: E402
from rlreason.trainer import update  # noqa: E402
from rlreason.trainer.batch import Row  # noqa: E402
from rlreason.trainer.update import UpdateContext, policy_update  # noqa: E402
from token_table_policy import RecordingSGD, TokenTable  # noqa: E402

EQUAL_VALUES = (1.2, 0.2, 0.64, 0.1)
ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
EPS = 1e-6


@st.composite
def batches(draw):
    """(rows, vocab, rewards per trace, group of each trace)."""
    n_groups = draw(st.integers(1, 3))
    rows: list[Row] = []
    rewards: list[float] = []
    group_of: list[int] = []
    tok = 1000
    for g in range(n_groups):
        size = draw(st.sampled_from((1, 2, 3, 6, 8)))  # float32 sums of equal values go wrong from G = 6
        equal = draw(st.sampled_from((None, *EQUAL_VALUES)))
        prompt = draw(st.lists(st.integers(1, 999), min_size=1, max_size=3))
        for _ in range(size):
            trace = len(rewards)
            rewards.append(equal if equal is not None else draw(st.floats(-2, 2, allow_nan=False, width=32)))
            group_of.append(g)
            for _ in range(draw(st.integers(1, 3))):
                t = draw(st.integers(1, 5))
                mask = draw(st.lists(st.integers(0, 1), min_size=t, max_size=t))
                rows.append(Row(prompt, list(range(tok, tok + t)), [0.0] * t, mask, 0.0, trace, g))
                tok += t
    order = draw(st.permutations(range(len(rows))))
    rows = [rows[i] for i in order]
    for r in rows:  # sampled from the stub's uniform distribution: IS weights 1
        r.rollout_logprobs = [-math.log(tok)] * len(r.response_ids)
    return rows, tok, rewards, group_of


def single_episode_batch():
    """One prompt, one sample: the batch REINFORCE++ whitening once crashed on (always tried, not left to chance)."""
    tok = 1003
    row = Row([5], [1000, 1001, 1002], [0.0] * 3, [1, 1, 0], 0.0, 0, 0)
    row.rollout_logprobs = [-math.log(tok)] * 3
    return [row], tok, [1.5], [0]


def reference_advantages(rewards: list[float], group_of: list[int], estimator: str) -> list[float]:
    """Float64 loops: mean and unbiased std per group; a group of one has mean 0, std 1 (verl); an all-equal
    group is centred to exactly 0."""
    r = [float(torch.tensor(x, dtype=torch.float32)) for x in rewards]  # what the trainer passes: float32
    out = []
    for i, x in enumerate(r):
        members = [r[j] for j in range(len(r)) if group_of[j] == group_of[i]]
        n = len(members)
        if n == 1:
            mean, std = 0.0, 1.0
        elif len(set(members)) == 1:
            mean, std = members[0], 0.0
        else:
            mean = sum(members) / n
            std = math.sqrt(sum((m - mean) ** 2 for m in members) / (n - 1))
        if estimator == "grpo":
            out.append((x - mean) / (std + EPS))
        elif estimator == "dr_grpo":
            out.append(x - mean)
        elif estimator == "rloo":
            out.append(x if n == 1 else (x - mean) * n / (n - 1))
        else:
            out.append(x - mean)
    if estimator == "reinforce_pp_baseline" and len(out) == 1:
        out = [0.0]  # one episode: x - batch mean = 0, the variance is undefined
    elif estimator == "reinforce_pp_baseline":
        n = len(out)
        mean = sum(out) / (n + 1e-8)
        var = sum((a - mean) ** 2 for a in out) / (n + 1e-8) * (n / (n - 1))
        out = [(a - mean) / math.sqrt(var + 1e-8) for a in out]
    return out


def reference_weights(rows: list[Row], part: list[int], mode: str) -> dict[int, float]:
    """{token id: weight} of one mini-batch's valid tokens, each mode from its formula; l_g counts trace g's
    valid tokens over the whole batch."""
    valid = [i for i in part if sum(rows[i].response_mask) > 0]
    n_tokens = sum(sum(rows[i].response_mask) for i in part)
    trace_len: dict[int, int] = {}
    for r in rows:
        trace_len[r.trace_id] = trace_len.get(r.trace_id, 0) + sum(r.response_mask)
    traces = {rows[i].trace_id for i in valid}
    w = {}
    for i in valid:
        r = rows[i]
        for tok, m in zip(r.response_ids, r.response_mask):
            if not m:
                continue
            if mode == "token-mean":
                w[tok] = 1 / n_tokens
            elif mode == "seq-mean-token-sum":
                w[tok] = 1 / len(valid)
            elif mode == "seq-mean-token-mean":
                w[tok] = 1 / (sum(r.response_mask) * len(valid))
            else:
                w[tok] = 1 / (trace_len[r.trace_id] * len(traces))
    return w


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), estimator=st.sampled_from(ESTIMATORS), mode=st.sampled_from(LOSS_AGG_MODES.names()),
       loss=st.sampled_from(("ppo_clip", "reinforce")), epochs=st.integers(1, 2), micro=st.integers(1, 7),
       mini=st.integers(1, 4), seed=st.integers(0, 2**16))
@example(batch=single_episode_batch(), estimator="reinforce_pp_baseline", mode="token-mean", loss="ppo_clip",
         epochs=1, micro=1, mini=1, seed=0)
def test_policy_update_equals_float64_single_batch_reference(batch, estimator, mode, loss, epochs, micro, mini,
                                                             seed):
    rows, vocab, rewards, group_of = batch
    n_groups = len(set(group_of))
    mini = min(mini, n_groups)  # the config refuses more mini-batches than prompt groups

    adv = ADVANTAGES.get(estimator)(torch.tensor(rewards, dtype=torch.float32), torch.tensor(group_of), eps=EPS)
    ref_adv = reference_advantages(rewards, group_of, estimator)
    for g in range(len(rewards)):
        members = [rewards[j] for j in range(len(rewards)) if group_of[j] == group_of[g]]
        if len(members) > 1 and len(set(members)) == 1 and estimator != "reinforce_pp_baseline":
            assert float(adv[g]) == 0.0  # an all-equal group: exactly 0
        assert float(adv[g]) == pytest.approx(ref_adv[g], rel=1e-5, abs=1e-5)
    for r in rows:
        r.advantage = float(adv[r.trace_id])

    parts: list[list[int]] = []
    real = update.minibatch_indices

    def spy(rows_, n):
        out = real(rows_, n)
        parts.extend(p for p in out if p)
        return out

    random.seed(seed)
    model = TokenTable(vocab)
    opt = RecordingSGD(model.parameters())
    ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), None, 0, 1.0, share_prompts=False)
    algo = AlgoConfig(advantage=estimator, policy_loss=loss, loss_agg_mode=mode)
    tr = TrainerConfig(mini_batches=mini, micro_batch_size=micro, ppo_epochs=epochs, max_grad_norm=None)
    with mock.patch.object(update, "minibatch_indices", spy):
        metrics = policy_update(rows, ctx, algo, tr, None)

    assert len(parts) == len(opt.grads) == epochs * mini
    adv_of = {tok: r.advantage for r in rows for tok in r.response_ids}
    groups_seen, ref_losses = [], []
    for part, grad in zip(parts, opt.grads):
        groups_seen += sorted({rows[i].group_id for i in part})
        w = reference_weights(rows, part, mode)
        # on-policy (ratio 1, IS weight 1): d loss / d logprob = -A w, and d logprob_y / d theta_y = 1 - 1/V
        expected = torch.zeros(vocab, dtype=torch.float64)
        for tok, wt in w.items():
            expected[tok] = -adv_of[tok] * wt * (1 - 1 / vocab)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)
        ref_losses.append(sum(-adv_of[tok] * wt for tok, wt in w.items()))
    # every pass over the batch holds each prompt group (so each trace) in exactly one mini-batch
    assert sorted(groups_seen) == sorted(list(set(group_of)) * epochs)
    assert metrics["loss/policy"] == pytest.approx(sum(ref_losses) / len(ref_losses), rel=1e-5, abs=1e-7)
