"""CPU tests for rlreason.algos: hand-computed tiny cases (2 prompts x 3 samples) and loop references."""

from __future__ import annotations

import math

import pytest
import torch

from rlreason.algos import (ADVANTAGES, KL_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES, aggregate,
                            broadcast_to_tokens, dr_grpo, entropy_from_logits, gae, grpo, kl_estimate,
                            logprobs_from_logits, nonzero_variance_groups, ppo_clip, reinforce,
                            reinforce_pp_baseline, rloo, token_weights, truncated_is_weights, value_loss)
from rlreason.registry import ConfigError, Registry

T = torch.tensor


def close(a, b, atol=1e-5):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                          atol=atol, rtol=0)


# Prompt A answers score [1, 0, 0]; prompt B answers score [0, 2, 4].
# A: mean 1/3, unbiased var = ((2/3)^2 + (1/3)^2 + (1/3)^2) / 2 = 1/3, std = 1/sqrt(3) = 0.57735.
# B: mean 2,   unbiased var = (4 + 0 + 4) / 2 = 4, std = 2.
REWARDS = T([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
GROUPS = T([0, 0, 0, 1, 1, 1])


# ---- registry ---------------------------------------------------------------------------------------

def test_registry_duplicate_unknown_and_names():
    reg = Registry("thing")

    @reg.register("alpha")
    def alpha():
        return 1

    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(lambda: 2)
    assert reg.get("alpha") is alpha
    assert reg.names() == ["alpha"]
    msg = r"algo\.x: unknown thing 'alpah'\. Allowed: alpha\. Did you mean 'alpha'"
    with pytest.raises(ConfigError, match=msg):
        reg.get("alpah", key="algo.x")


def test_registry_temporary_restores_what_was_there():
    reg = Registry("thing")
    reg.register("alpha")(len)
    with reg.temporary({"beta": abs, "gamma": min}):
        assert reg.names() == ["alpha", "beta", "gamma"]
        reg.register("delta")(max)  # e.g. a plug-in module imported inside the block
    assert reg.names() == ["alpha"]
    with pytest.raises(ValueError, match="already registered"), reg.temporary("alpha", len):
        pass
    assert reg.get("alpha") is len  # a refused temporary entry removes nothing
    with pytest.raises(ConfigError, match=r"algo\.x: unknown thing 'omega'\. Allowed: alpha, beta\."), \
            reg.temporary("beta", abs):
        reg.check("omega", "algo.x")
    reg.check("extra", "algo.x", also=("extra",))  # names the caller handles itself
    with pytest.raises(ConfigError, match=r"algo\.x: expected a thing name, got \['alpha'\]"):
        reg.get(["alpha"], "algo.x")


def test_registered_fixture_is_per_test(registered):
    registered(POLICY_LOSSES, "_fixture_loss", lambda *a, **k: None)
    assert "_fixture_loss" in POLICY_LOSSES


def test_registered_fixture_left_nothing_behind():
    assert "_fixture_loss" not in POLICY_LOSSES


def test_builtin_registries_hold_the_methods():
    # No test registers anything outside its own test (tests/conftest.py `registered`), so these are exact.
    assert ADVANTAGES.names() == ["dr_grpo", "grpo", "reinforce_pp_baseline", "rloo"]
    assert POLICY_LOSSES.names() == ["ppo_clip", "reinforce"]
    assert LOSS_AGG_MODES.names() == ["seq-mean-token-mean", "seq-mean-token-sum", "token-mean", "trace-length-norm"]
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    with pytest.raises(ConfigError, match="Did you mean 'grpo'"):
        ADVANTAGES.get("grp", key="algo.adv_estimator")


# ---- outcome advantages -----------------------------------------------------------------------------

def test_grpo_hand_computed():
    # A: (1 - 1/3) / 0.57735 = 1.15470, (0 - 1/3) / 0.57735 = -0.57735; B: (0-2)/2, (2-2)/2, (4-2)/2.
    expected = [1.154701, -0.577350, -0.577350, -1.0, 0.0, 1.0]
    assert close(grpo(REWARDS, GROUPS), expected)


def test_dr_grpo_hand_computed():
    # r - group mean, no std: A: 2/3, -1/3, -1/3; B: -2, 0, 2.
    assert close(dr_grpo(REWARDS, GROUPS), [0.666667, -0.333333, -0.333333, -2.0, 0.0, 2.0])


def test_rloo_hand_computed():
    # r_i - mean of the other two: A: 1 - 0 = 1, 0 - 0.5, 0 - 0.5; B: 0 - 3, 2 - 2, 4 - 1.
    assert close(rloo(REWARDS, GROUPS), [1.0, -0.5, -0.5, -3.0, 0.0, 3.0])


def test_reinforce_pp_baseline_hand_computed():
    # Centred: [2/3, -1/3, -1/3, -2, 0, 2], batch mean 0, unbiased var = (6/9 + 8) / 5 = 26/15,
    # std = 1.316561; 2/3 / std = 0.506370, 1/3 / std = 0.253185, 2 / std = 1.519109.
    expected = [0.506370, -0.253185, -0.253185, -1.519109, 0.0, 1.519109]
    assert close(reinforce_pp_baseline(REWARDS, GROUPS), expected)


def test_reinforce_pp_baseline_token_weighted_matches_tiled_tokens():
    # verl whitens over tokens: an episode with k response tokens counts k times. Reference: expand by hand.
    counts = [3, 1, 2, 1, 4, 1]
    centred = [2 / 3, -1 / 3, -1 / 3, -2.0, 0.0, 2.0]
    tokens = torch.tensor([c for c, k in zip(centred, counts) for _ in range(k)], dtype=torch.float64)
    mean, std = tokens.mean(), tokens.std()
    expected = [(c - mean) / std for c in centred]
    got = reinforce_pp_baseline(REWARDS.double(), GROUPS, token_counts=T(counts))
    assert close(got, expected)
    assert not close(got, reinforce_pp_baseline(REWARDS, GROUPS))  # the weighting matters here


def test_reinforce_pp_baseline_single_episode_batch_is_zero():
    # One episode: the batch mean is its own centred reward, so whitening leaves x - mean = 0; the unbiased
    # variance (n / (n - 1)) is undefined for a total weight of 1, which must not raise.
    assert reinforce_pp_baseline(T([3.0]), T([0])).tolist() == [0.0]
    assert reinforce_pp_baseline(T([3.0]), T([7]), token_counts=T([1])).tolist() == [0.0]
    # Two episodes, one of them with no response tokens: total weight 1, same case.
    assert reinforce_pp_baseline(T([3.0, 1.0]), T([0, 1]), token_counts=T([1, 0])).tolist() == [0.0, 0.0]


def test_singleton_groups_follow_verl():
    # Group of one: mean 0, std 1 -> grpo = r / (1 + eps); dr_grpo = r; rloo keeps r; rpp centres by 0.
    rewards, groups = T([5.0, 1.0, 3.0]), T([0, 1, 1])
    # grpo, eps 0.5: singleton 5 / 1.5 = 3.33333; pair [1, 3]: mean 2, std sqrt(2) -> -+1 / (1.414214 + 0.5).
    assert close(grpo(rewards, groups, eps=0.5), [3.333333, -0.522407, 0.522407])
    assert close(dr_grpo(rewards, groups)[0], 5.0)
    assert close(rloo(rewards, groups), [5.0, -2.0, 2.0])  # pair: 1 - 3, 3 - 1
    # rpp: centred [5, -1, 1], mean 5/3, unbiased var = ((10/3)^2 + (8/3)^2 + (2/3)^2)/2 = 28/3 -> std 3.05505
    assert close(reinforce_pp_baseline(rewards, groups), [1.091089, -0.872872, -0.218218])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("value", [1.2, 0.2, 0.64, 0.1, 1e-3, 0.0, 1.0])
def test_equal_rewards_give_exactly_zero_advantage(value, dtype):
    """An all-equal group has no signal: every member gets exactly 0, whatever the value (float32 sums of 8 x 1.2
    gave +0.1057 under GRPO). Inexact values, G = 8 and G = 3, beside an informative group and a singleton."""
    rewards = torch.tensor([value] * 8 + [value] * 3 + [0.3, 0.7, 0.9] + [value], dtype=dtype)
    groups = T([0] * 8 + [1] * 3 + [2] * 3 + [3])
    for name in ("grpo", "dr_grpo", "rloo"):
        adv = ADVANTAGES.get(name)(rewards, groups)
        assert adv[:11].tolist() == [0.0] * 11, (name, adv[:11].tolist())
        assert adv[11:14].abs().min() > 0.01 and torch.isfinite(adv).all()
    # REINFORCE++ baseline: the group-centred reward of an equal group is exactly 0; whitening over a batch of
    # only such groups keeps 0, and beside an informative group every member shares one advantage.
    only_equal = reinforce_pp_baseline(rewards[:11], groups[:11])
    assert only_equal.tolist() == [0.0] * 11
    mixed = reinforce_pp_baseline(rewards, groups)
    assert len(set(mixed[:11].tolist())) == 1


def test_non_contiguous_group_ids():
    # Same two prompts, interleaved and with arbitrary ids: each episode keeps its hand-computed advantage.
    perm = T([0, 3, 1, 4, 2, 5])
    rewards, groups = REWARDS[perm], T([7, 3, 7, 3, 7, 3])
    assert close(grpo(rewards, groups), T([1.154701, -0.577350, -0.577350, -1.0, 0.0, 1.0])[perm])
    assert close(rloo(rewards, groups), T([1.0, -0.5, -0.5, -3.0, 0.0, 3.0])[perm])


def test_vectorised_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    rewards = torch.rand(40, generator=g, dtype=torch.float64)
    groups = torch.randint(0, 9, (40,), generator=g) * 11  # sparse ids, random sizes, some singletons likely
    groups[0] = 1000  # a guaranteed singleton
    ref_grpo, ref_rloo = torch.empty_like(rewards), torch.empty_like(rewards)
    for i in range(40):
        members = rewards[groups == groups[i]]
        if len(members) == 1:
            ref_grpo[i], ref_rloo[i] = rewards[i] / (1 + 1e-6), rewards[i]
        else:
            ref_grpo[i] = (rewards[i] - members.mean()) / (members.std() + 1e-6)
            ref_rloo[i] = rewards[i] - (members.sum() - rewards[i]) / (len(members) - 1)
    assert torch.allclose(grpo(rewards, groups), ref_grpo)
    assert torch.allclose(rloo(rewards, groups), ref_rloo)


def test_integer_rewards_are_accepted():
    assert close(grpo(T([1, 0, 0, 0, 2, 4]), GROUPS), grpo(REWARDS, GROUPS))


# ---- GAE and broadcasting ---------------------------------------------------------------------------

def test_gae_hand_computed_with_masked_position():
    # gamma 0.9, lam 0.8; rewards [0, 0, 1], values [0.5, 9.0, 0.8], mask [1, 0, 1] (position 1 skipped).
    # t=2: delta = 1 + 0 - 0.8 = 0.2, A2 = 0.2.
    # t=1: masked -> carries A = 0.2 and next value 0.8 through; its value 9.0 is never used.
    # t=0: delta = 0 + 0.9 * 0.8 - 0.5 = 0.22, A0 = 0.22 + 0.9 * 0.8 * 0.2 = 0.364.
    rewards, values, mask = T([[0.0, 0.0, 1.0]]), T([[0.5, 9.0, 0.8]]), T([[1, 0, 1]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8, whiten=False)
    assert close(adv, [[0.364, 0.2, 0.2]])
    assert close(ret, [[0.864, 9.2, 1.0]])  # returns = raw advantages + values
    # Whitened over the two valid tokens {0.364, 0.2}: mean 0.282, the two sit at +-1/sqrt(2) std.
    adv_w, ret_w = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    assert close(adv_w, [[0.707107, -0.707107, -0.707107]], atol=1e-4)
    assert torch.equal(ret_w, ret)


def test_broadcast_to_tokens_shares_episode_advantage_over_chunks():
    adv = T([1.5, -2.0])
    rows = T([0, 1, 0])  # episode 0 has two chunks (rows 0 and 2)
    mask = T([[1, 1, 0], [1, 0, 0], [1, 1, 1]])
    assert torch.equal(broadcast_to_tokens(adv, rows, mask),
                       T([[1.5, 1.5, 0.0], [-2.0, 0.0, 0.0], [1.5, 1.5, 1.5]]))


# ---- policy losses ----------------------------------------------------------------------------------

def _ppo(ratios, advs, **kw):
    logprobs = torch.log(T(ratios)).unsqueeze(0)
    old = torch.zeros_like(logprobs)
    return ppo_clip(logprobs, old, T(advs).unsqueeze(0), torch.ones_like(logprobs), **kw)


def test_ppo_clip_active_for_positive_and_negative_advantage():
    # A=+1, r=1.5 -> -min(1.5, 1.2) = -1.2 (clipped); A=+1, r=1.1 -> -1.1 (inside the trust region);
    # A=-1, r=0.5 -> -min(-0.5, -0.8) = 0.8 (clipped); A=-1, r=1.1 -> -min(-1.1, -1.1) = 1.1.
    loss, m = _ppo([1.5, 1.1, 0.5, 1.1], [1.0, 1.0, -1.0, -1.0])
    assert close(loss, [[-1.2, -1.1, 0.8, 1.1]])
    assert m["clipfrac"] == pytest.approx(0.5)
    assert m["clipfrac_dual"] == 0.0
    assert m["ratio_mean"] == pytest.approx((1.5 + 1.1 + 0.5 + 1.1) / 4)
    assert m["approx_kl"] == pytest.approx(-(math.log(1.5) + 2 * math.log(1.1) + math.log(0.5)) / 4, abs=1e-6)


def test_ppo_clip_higher_is_asymmetric():
    # eps_high 0.28: A=+1, r=1.25 is no longer clipped (-1.25, was -1.2); the low side still clips at 0.8.
    sym, _ = _ppo([1.25, 0.75], [1.0, -1.0])
    asym, _ = _ppo([1.25, 0.75], [1.0, -1.0], eps_low=0.2, eps_high=0.28)
    assert close(sym, [[-1.2, 0.8]])
    assert close(asym, [[-1.25, 0.8]])


def test_ppo_dual_clip_caps_negative_advantage_loss():
    # A=-1, r=5: standard clip gives -min(-5, -1.2) = 5; dual clip caps it at -c A = 3.
    loss, m = _ppo([5.0, 5.0], [-1.0, 2.0], dual_clip_c=3.0)
    assert close(loss, [[3.0, -2.4]])  # A=+2 keeps the ordinary clip: -2 * 1.2
    assert m["clipfrac_dual"] == pytest.approx(0.5)
    off, m_off = _ppo([5.0], [-1.0], dual_clip_c=None)
    assert close(off, [[5.0]]) and m_off["clipfrac_dual"] == 0.0
    with pytest.raises(ValueError, match="dual_clip_c"):
        _ppo([1.0], [1.0], dual_clip_c=1.0)


@pytest.mark.parametrize("name", ["ppo_clip", "reinforce"])
def test_gradient_sign(name):
    # Raising the logprob of a positive-advantage token must lower the loss, and the reverse for A < 0.
    logprobs = torch.zeros(1, 2, requires_grad=True)
    loss, _ = POLICY_LOSSES.get(name)(logprobs, torch.zeros(1, 2), T([[1.0, -1.0]]), torch.ones(1, 2))
    loss.sum().backward()
    assert logprobs.grad[0, 0] < 0 and logprobs.grad[0, 1] > 0
    assert close(logprobs.grad, [[-1.0, 1.0]])  # d(-r A)/dlogp = -r A with r = 1


def test_ppo_clipped_token_has_no_gradient():
    logprobs = torch.log(T([[1.5]])).requires_grad_()
    loss, _ = ppo_clip(logprobs, torch.zeros(1, 1), T([[1.0]]), torch.ones(1, 1))
    loss.sum().backward()
    assert logprobs.grad.item() == 0.0


def test_reinforce_is_unclipped():
    loss, m = reinforce(torch.log(T([[1.5, 5.0]])), torch.zeros(1, 2), T([[1.0, -1.0]]), torch.ones(1, 2))
    assert close(loss, [[-1.5, 5.0]])
    assert m["clipfrac"] == 0.0 and m["ratio_mean"] == pytest.approx(3.25)


def test_is_weights_scale_loss_detached_and_mask_zeroes():
    logprobs = torch.zeros(1, 3, requires_grad=True)
    w = T([[0.5, 2.0, 7.0]], requires_grad=True)
    mask = T([[1, 1, 0]])
    loss, m = ppo_clip(logprobs, torch.zeros(1, 3), T([[1.0, -1.0, 1.0]]), mask, is_weights=w)
    assert close(loss, [[-0.5, 2.0, 0.0]])  # third token masked out
    loss.sum().backward()
    assert w.grad is None  # the weights are a fixed correction, not a parameter
    assert close(logprobs.grad, [[-0.5, 2.0, 0.0]])


def test_truncated_is_weights_cap_and_mask():
    # Ratios 0.3 and 0.05 lie below 1/cap = 0.5: truncation is one-sided, so they pass unchanged (a two-sided
    # clamp to [1/cap, cap] would lift them); 3 is capped at 2; the masked ratio 4 -> 0.
    old = torch.log(T([[1.0, 3.0, 0.3, 0.05, 4.0]]))
    rollout = torch.zeros(1, 5, requires_grad=True)
    w = truncated_is_weights(old, rollout, T([[1, 1, 1, 1, 0]]), cap=2.0)
    assert close(w, [[1.0, 2.0, 0.3, 0.05, 0.0]], atol=1e-6)
    assert not w.requires_grad
    w3 = truncated_is_weights(old, rollout.detach(), T([[1, 1, 1, 1, 1]]), cap=3.5)
    assert close(w3, [[1.0, 3.0, 0.3, 0.05, 3.5]], atol=1e-6)


@pytest.mark.parametrize("name", ["ppo_clip", "reinforce"])
def test_log_ratio_is_clamped_to_plus_minus_20(name):
    """log(pi/pi_old) is clamped to [-20, 20] (as verl): without it a masked token whose logprob is garbage
    (here 1e4 nats above the old one) makes exp() overflow, and inf * 0 turns the whole gradient NaN; and an
    unmasked token with a log-ratio of 25 would carry exp(25) instead of exp(20)."""
    logprobs = T([[25.0, -30.0, -1.0, 1e4]], dtype=torch.float64).requires_grad_()
    old = torch.zeros(1, 4, dtype=torch.float64)
    adv = T([[-1.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, m = POLICY_LOSSES.get(name)(logprobs, old, adv, T([[1, 1, 1, 0]]), dual_clip_c=None, eps_low=0.2,
                                      eps_high=0.2)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(logprobs.grad).all()
    assert loss[0, 3].item() == 0.0 and logprobs.grad[0, 3].item() == 0.0
    assert m["ratio_mean"] == pytest.approx((math.exp(20) + math.exp(-20) + math.exp(-1)) / 3, rel=1e-7)
    if name == "reinforce":  # -A r, unclipped: the clamped ratio shows in the value; no gradient past the clamp
        assert close(loss[0, :3], [math.exp(20), -math.exp(-20), -math.exp(-1)], atol=1e-3)
        assert logprobs.grad[0, 0].item() == 0.0 and logprobs.grad[0, 1].item() == 0.0


# ---- aggregation ------------------------------------------------------------------------------------

# Row 0 has 3 valid tokens (sum 6), row 1 is fully masked, row 2 has 2 valid tokens (sum 10).
AGG_LOSS = T([[1.0, 2.0, 3.0, 100.0], [50.0, 50.0, 50.0, 50.0], [4.0, 6.0, 100.0, 100.0]])
AGG_MASK = T([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])


@pytest.mark.parametrize("mode,expected", [
    ("token-mean", 16 / 5),                  # (1+2+3+4+6) / 5 tokens
    ("seq-mean-token-sum", (6 + 10) / 2),    # 2 valid rows; the masked row is not a sequence
    ("seq-mean-token-mean", (6 / 3 + 10 / 2) / 2),
])
def test_aggregation_modes_hand_computed(mode, expected):
    assert aggregate(AGG_LOSS, AGG_MASK, mode).item() == pytest.approx(expected)


def test_trace_length_norm_skips_empty_trace():
    # Rows 0 and 2 form trace 5 (l = 5 tokens, sum 16); trace 9 is the fully masked row -> not counted.
    got = aggregate(AGG_LOSS, AGG_MASK, "trace-length-norm", trace_ids=T([5, 9, 5]))
    assert got.item() == pytest.approx(16 / 5)


def test_trace_length_norm_matches_eq3_loops():
    # Trace 0 has two chunks (rows 0 and 2), trace 1 one chunk (row 1); J = (1/G) sum_g (1/l_g) sum U.
    g = torch.Generator().manual_seed(1)
    loss = torch.randn(3, 5, generator=g, dtype=torch.float64)
    mask = T([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    trace_ids = T([0, 1, 0])
    total = 0.0
    for trace in (0, 1):
        length, summed = 0, 0.0
        for r in range(3):
            if trace_ids[r] == trace:
                for t in range(5):
                    if mask[r, t]:
                        length += 1
                        summed += float(loss[r, t])
        total += summed / length
    expected = total / 2
    assert aggregate(loss, mask, "trace-length-norm", trace_ids=trace_ids).item() == pytest.approx(expected)
    # Per-chunk normalisation would differ: the trace, not the chunk, is the unit.
    assert aggregate(loss, mask, "seq-mean-token-mean").item() != pytest.approx(expected)


def _agg_reference(loss: torch.Tensor, mask: torch.Tensor, mode: str, trace_ids: list[int]) -> torch.Tensor:
    """Each aggregation mode as an explicit loop over rows and tokens, written from its formula, not from
    token_weights: differentiable in `loss`, float64."""
    R, Tn = mask.shape
    valid_rows = [r for r in range(R) if any(mask[r, t] for t in range(Tn))]
    total = loss.new_zeros(())
    if mode == "token-mean":
        n = sum(int(mask[r, t]) for r in range(R) for t in range(Tn))
        for r in valid_rows:
            for t in range(Tn):
                if mask[r, t]:
                    total = total + loss[r, t] / n
    elif mode == "seq-mean-token-sum":
        for r in valid_rows:
            for t in range(Tn):
                if mask[r, t]:
                    total = total + loss[r, t] / len(valid_rows)
    elif mode == "seq-mean-token-mean":
        for r in valid_rows:
            length = sum(int(mask[r, t]) for t in range(Tn))
            for t in range(Tn):
                if mask[r, t]:
                    total = total + loss[r, t] / (length * len(valid_rows))
    else:  # trace-length-norm, Eq. 3: (1/G) sum_g (1/l_g) sum over g's rows and tokens
        traces = sorted({trace_ids[r] for r in valid_rows})
        for g in traces:
            rows = [r for r in valid_rows if trace_ids[r] == g]
            length = sum(int(mask[r, t]) for r in rows for t in range(Tn))
            for r in rows:
                for t in range(Tn):
                    if mask[r, t]:
                        total = total + loss[r, t] / (length * len(traces))
    return total


@pytest.mark.parametrize("mode", LOSS_AGG_MODES.names())
def test_aggregation_and_micro_batch_split_match_loop_reference(mode):
    """aggregate() and the trainer's way (weights once per mini-batch, summed over micro-batches) both equal
    an explicit loop of the mode's formula, in value and gradient, whatever the split."""
    g = torch.Generator().manual_seed(2)
    logprobs = torch.randn(7, 5, generator=g, dtype=torch.float64)
    mask = (torch.rand(7, 5, generator=g) > 0.3).double()  # float64 weights: exact to rounding
    mask[3] = 0  # a fully masked row
    mask[5, :] = torch.tensor([1, 0, 0, 0, 0])
    trace_ids = [0, 0, 1, 1, 2, 3, 0]  # trace 0 has three chunk rows, trace 1 one empty and one valid chunk
    adv = torch.randn(7, 5, generator=g, dtype=torch.float64)

    def loss_of(lp, rows=slice(None)):
        return ppo_clip(lp, torch.zeros_like(lp) + 0.1, adv[rows], mask[rows])[0]

    ref_lp = logprobs.clone().requires_grad_()
    ref = _agg_reference(loss_of(ref_lp), mask, mode, trace_ids)
    ref.backward()
    assert ref_lp.grad.abs().sum() > 0

    whole_lp = logprobs.clone().requires_grad_()
    whole = aggregate(loss_of(whole_lp), mask, mode, trace_ids=T(trace_ids))
    whole.backward()
    assert whole.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(whole_lp.grad, ref_lp.grad, rtol=1e-12, atol=0)

    w = token_weights(mask, mode, trace_ids=T(trace_ids))
    for split in ([slice(0, 2), slice(2, 3), slice(3, 7)], [slice(i, i + 1) for i in range(7)]):
        split_lp = logprobs.clone().requires_grad_()
        total = 0.0
        for rows in split:
            part = (loss_of(split_lp[rows], rows) * w[rows]).sum()
            part.backward()
            total += part.item()
        assert total == pytest.approx(ref.item(), rel=1e-12)
        assert torch.allclose(split_lp.grad, ref_lp.grad, rtol=1e-12, atol=0)


def test_token_weights_errors():
    with pytest.raises(ConfigError, match=r"algo\.loss_agg_mode.*token-mean.*Did you mean 'token-mean'"):
        token_weights(AGG_MASK, "token_mean")
    with pytest.raises(ValueError, match="trace_ids"):
        token_weights(AGG_MASK, "trace-length-norm")


def test_token_weights_all_masked_is_zero_not_nan():
    for mode in LOSS_AGG_MODES.names():
        w = token_weights(torch.zeros(2, 3), mode, trace_ids=T([0, 1]))
        assert torch.equal(w, torch.zeros(2, 3)), mode


# ---- value loss, KL, entropy, logprobs, sampling ------------------------------------------------------

def test_value_loss_hand_computed():
    # tok 0: (1-2)^2 = 1; clipped v = 0.5 + 0.2 = 0.7, (0.7-2)^2 = 1.69 -> 0.5 * 1.69 = 0.845.
    # tok 1: (1-0)^2 = 1; clip(1.0, 0.7, 1.1) = 1.0 -> 0.5. tok 2 masked -> 0.
    v = value_loss(T([[1.0, 1.0, 1.0]]), T([[0.5, 0.9, 0.0]]), T([[2.0, 0.0, 5.0]]), T([[1, 1, 0]]), clip=0.2)
    assert close(v, [[0.845, 0.5, 0.0]])


def test_kl_estimators():
    logprobs, ref = T([0.0, -1.0]), T([-1.0, 0.0])
    assert close(kl_estimate(logprobs, ref, "k1"), [1.0, -1.0])
    assert close(kl_estimate(logprobs, ref, "k2"), [0.5, 0.5])
    # k3: ref - logp = -1 -> e^-1 + 1 - 1 = 0.367879; ref - logp = 1 -> e - 2 = 0.718282.
    assert close(kl_estimate(logprobs, ref, "k3"), [0.367879, 0.718282])
    assert kl_estimate(T([0.0]), T([30.0]), "k3").item() == 10.0  # clamped as in verl
    with pytest.raises(ConfigError, match=r"algo\.kl_estimator.*k1, k2, k3"):
        kl_estimate(logprobs, ref, "k4")


def test_entropy_and_logprobs_match_naive():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 7, generator=g) * 3
    labels = torch.randint(0, 7, (2, 3), generator=g)
    logp = torch.log_softmax(logits, -1)
    assert torch.allclose(entropy_from_logits(logits), -(logp.exp() * logp).sum(-1), atol=1e-5)
    assert torch.allclose(logprobs_from_logits(logits, labels), logp.gather(-1, labels[..., None])[..., 0],
                          atol=1e-5)
    naive_bf16 = torch.log_softmax(logits.bfloat16().float(), -1).gather(-1, labels[..., None])[..., 0]
    assert torch.allclose(logprobs_from_logits(logits.bfloat16(), labels).float(), naive_bf16, atol=2e-2)
    # Uniform logits have entropy log V; a huge offset must not overflow.
    assert close(entropy_from_logits(torch.full((1, 1, 7), 1e4)), [[math.log(7)]])
    assert torch.isfinite(logprobs_from_logits(logits + 1e4, labels)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_chunked_logprobs_match_autograd_of_log_softmax(monkeypatch, dtype, temperature):
    """Values and gradients of the chunked float32 log-prob equal autograd through a plain float32
    log_softmax of the (bf16 or fp32) logits divided by T, across chunk boundaries (4 tokens per chunk
    here); T <= 0 (greedy) scores the undivided logits."""
    import rlreason.algos.losses as L
    monkeypatch.setattr(L, "_CHUNK_ELEMENTS", 4 * 11)
    g = torch.Generator().manual_seed(5)
    base = (torch.randn(3, 10, 11, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 11, (3, 10), generator=g)
    upstream = torch.randn(3, 10, generator=g)
    scale = temperature if temperature > 0 else 1.0

    a = base.clone().requires_grad_(True)
    ref = torch.log_softmax(a.float() / scale, -1).gather(-1, labels[..., None])[..., 0]
    (ref * upstream).sum().backward()
    b = base.clone().requires_grad_(True)
    got = logprobs_from_logits(b, labels, temperature)
    (got * upstream).sum().backward()
    assert got.dtype == torch.float32 and b.grad.dtype == dtype
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-3 if dtype == torch.float32 else 1e-2)
    assert (b.grad != 0).any()


def test_entropy_takes_temperature_and_matches_with_and_without_grad():
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 5, 9, generator=g) * 3
    logp = torch.log_softmax(logits / 0.5, -1)
    naive = -(logp.exp() * logp).sum(-1)
    with torch.no_grad():
        no_grad = entropy_from_logits(logits.bfloat16(), 0.5)
    with_grad = entropy_from_logits(logits.clone().requires_grad_(True), 0.5)
    assert no_grad.dtype == torch.float32
    torch.testing.assert_close(with_grad.detach(), naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_grad, naive, atol=0.05, rtol=0.05)
    assert with_grad.requires_grad


def test_nonzero_variance_groups():
    rewards = T([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 3.0, 3.0])
    groups = T([4, 4, 4, 1, 1, 1, 9, 0, 0])  # 9 is a singleton
    keep = nonzero_variance_groups(rewards, groups)
    assert keep.tolist() == [False, False, False, True, True, True, True, False, False]
    keep_strict = nonzero_variance_groups(rewards, groups, keep_singletons=False)
    assert keep_strict.tolist() == [False, False, False, True, True, True, False, False, False]
    # Interleaved ids give the same answer per episode.
    perm = T([0, 3, 6, 1, 4, 7, 2, 5, 8])
    assert nonzero_variance_groups(rewards[perm], groups[perm]).tolist() == keep[perm].tolist()
