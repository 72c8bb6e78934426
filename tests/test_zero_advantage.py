"""Rows whose advantage is exactly 0 (every sample of a GRPO group scored alike) add nothing to the gradient of an
advantage-proportional loss, so the update leaves them out: the weights after the update must be the ones the
update over every row gives, in float64, AdamW included (a mini-batch with no row left still takes its step:
zero gradients move the weights through the moments and weight decay); and a row is kept whenever the loss has
a term without the advantage (entropy bonus, KL to a reference) or a loss nobody has checked."""

import random

import pytest
import torch

from rlreason.algos.losses import POLICY_LOSSES, ZERO_GRADIENT_AT_ZERO_ADVANTAGE
from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.trainer.update import UpdateContext, policy_update, rows_with_gradient
from test_shared_prefix import _model, _rows  # tests/ is on sys.path


def _zero_groups(rows, groups: set[int]):
    for r in rows:
        if r.group_id in groups:
            r.advantage = 0.0
    return rows


def _update(rows, tr: TrainerConfig, algo: AlgoConfig, ref=None, share: bool = False):
    """(weight deltas, rows run through the model, metrics) of one policy_update with AdamW in float64."""
    model = _model().double()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ran = []
    forward = model.forward

    def spy(*args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        ran.append(int(ids.shape[0]))
        return forward(*args, **kwargs)
    model.forward = spy
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ctx = UpdateContext(model, opt, None, None, torch.device("cpu"), None, 0, 0.8, share_prompts=share)
    random.seed(0)
    metrics = policy_update(rows, ctx, algo, tr, ref)
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}, sum(ran), metrics


@pytest.mark.parametrize("groups,zero,share", [(4, {0, 2}, False), (2, {1}, False), (4, {1, 3}, True)])
def test_rows_without_gradient_are_left_out_and_the_update_is_unchanged(groups, zero, share):
    """Two epochs of two mini-batches (old logprobs from a pass of their own), TIS on. With 2 groups one
    mini-batch holds only the zero group: its optimizer step must still run on zero gradients."""
    rows = _zero_groups(_rows(3, groups=groups, G=3), zero)
    algo = AlgoConfig(tis_cap=2.0)
    tr = TrainerConfig(micro_batch_size=2, mini_batches=2, ppo_epochs=2)
    skipped, ran_skipped, m = _update(rows, tr, algo, share=share)
    full, ran_full, m_full = _update(rows, TrainerConfig(micro_batch_size=2, mini_batches=2, ppo_epochs=2,
                                                         skip_zero_advantage=False), algo, share=share)
    for n, d in full.items():
        torch.testing.assert_close(skipped[n], d, atol=1e-6 * float(d.abs().max()) + 1e-12, rtol=1e-6, msg=n)
    assert any(float(d.abs().max()) > 0 for d in full.values())
    live = sum(1 for r in rows if r.group_id not in zero)
    assert m["loss/rows_skipped_frac"] == pytest.approx(1 - live / len(rows))
    assert "loss/rows_skipped_frac" not in m_full
    assert m["loss/policy"] == pytest.approx(m_full["loss/policy"], rel=1e-6, abs=1e-12)
    if not share:  # 3 passes over the rows (old logprobs, 2 epochs); only the live ones run
        assert (ran_full, ran_skipped) == (3 * len(rows), 3 * live)


def test_a_batch_with_no_signal_runs_no_forward_and_still_steps():
    rows = _zero_groups(_rows(1, groups=2, G=3), {0, 1})
    tr = TrainerConfig(micro_batch_size=4)
    skipped, ran, m = _update(rows, tr, AlgoConfig())
    full, _, _ = _update(rows, TrainerConfig(micro_batch_size=4, skip_zero_advantage=False), AlgoConfig())
    assert ran == 0 and m["loss/rows_skipped_frac"] == 1.0 and m["loss/policy"] == 0.0
    for n, d in full.items():  # a fresh AdamW's first zero-gradient step: weight decay only
        torch.testing.assert_close(skipped[n], d, atol=1e-15, rtol=1e-12, msg=n)


def test_terms_without_the_advantage_keep_every_row():
    rows = _zero_groups(_rows(2, groups=3, G=2), {0})
    tr = TrainerConfig(micro_batch_size=4)
    ctx = UpdateContext(torch.nn.Linear(1, 1), None, None, None, torch.device("cpu"), None, 0, 1.0)
    live = [i for i, r in enumerate(rows) if r.group_id != 0]
    assert rows_with_gradient(rows, ctx, AlgoConfig(), tr) == live
    for algo in (AlgoConfig(entropy_coef=0.01), AlgoConfig(kl_coef=0.1), AlgoConfig(policy_loss="a_users_loss")):
        assert rows_with_gradient(rows, ctx, algo, tr) == list(range(len(rows))), algo
    assert rows_with_gradient(rows, ctx, AlgoConfig(kl_coef=0.1, kl_in_reward=True), tr) == live  # KL in A
    assert rows_with_gradient(rows, ctx, AlgoConfig(), TrainerConfig(skip_zero_advantage=False)) == list(range(6))
    critic = UpdateContext(torch.nn.Linear(1, 1), None, None, None, torch.device("cpu"), None, 0, 1.0,
                           value_head=torch.nn.Linear(1, 1))
    assert rows_with_gradient(rows, critic, AlgoConfig(advantage="gae"), tr) == list(range(len(rows)))
    # the entropy bonus moves the weights through the zero group too: the update runs every row
    _, ran, _ = _update(rows, tr, AlgoConfig(entropy_coef=0.01))
    assert ran == len(rows)


@pytest.mark.parametrize("name", sorted(ZERO_GRADIENT_AT_ZERO_ADVANTAGE))
def test_listed_losses_have_no_gradient_at_zero_advantage(name):
    assert name in POLICY_LOSSES.names()
    g = torch.Generator().manual_seed(0)
    logprobs = (-torch.rand(4, 7, generator=g, dtype=torch.float64) * 5).requires_grad_()
    old = logprobs.detach() + torch.randn(4, 7, generator=g, dtype=torch.float64)  # ratios far from 1 too
    mask = (torch.rand(4, 7, generator=g) > 0.2).long()
    is_w = torch.rand(4, 7, generator=g, dtype=torch.float64) * 2
    for dual in (3.0, None):
        loss, _ = POLICY_LOSSES.get(name)(logprobs, old, torch.zeros(4, 7, dtype=torch.float64), mask,
                                           eps_low=0.2, eps_high=0.28, dual_clip_c=dual, is_weights=is_w)
        (grad,) = torch.autograd.grad(loss.sum(), logprobs)
        assert torch.count_nonzero(grad) == 0 and torch.count_nonzero(loss) == 0
