"""Per-token policy and value losses, kept apart from how they are summed into one scalar.

Every policy loss returns the per-token loss [B,T] (0 on masked tokens) and float metrics; `token_weights`
turns a loss-aggregation mode into per-token weights w over the whole mini-batch, and the scalar loss is
(loss * w).sum(). Computing w once per mini-batch and summing (loss_mb * w_mb) over micro-batches gives
the same gradient as one big batch, whatever the micro-batch split.

Shapes: B or R rows, T tokens, V vocabulary."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from rlreason.registry import Registry

PolicyLossFn = Callable[..., tuple[Tensor, dict[str, float]]]
POLICY_LOSSES: Registry[PolicyLossFn] = Registry("policy loss", "rlreason.policy_losses", key="algo.policy_loss")


def _masked_mean(x: Tensor, mask: Tensor) -> float:
    m = mask.to(x.dtype)
    return float((torch.where(mask.bool(), x, 0.0) * m).sum() / (m.sum() + 1e-8))


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    # Clamped as in verl so one wild token cannot overflow exp().
    return torch.clamp(logprobs - old_logprobs, min=-20.0, max=20.0)


def _finish(pg_losses: Tensor, response_mask: Tensor, is_weights: Tensor | None) -> Tensor:
    if is_weights is not None:
        pg_losses = pg_losses * is_weights.detach()
    return torch.where(response_mask.bool(), pg_losses, torch.zeros_like(pg_losses))


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor, *,
             eps_low: float = 0.2, eps_high: float = 0.2, dual_clip_c: float | None = 3.0,
             is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Clipped surrogate: the ratio may not move the loss past [1-eps_low, 1+eps_high], which keeps the update
    near the sampling policy. eps_high > eps_low (clip-higher, DAPO arXiv 2503.14476) lets rare tokens gain
    probability and slows entropy collapse. For A < 0 the dual clip caps the loss at -c A, so a token whose
    ratio has exploded cannot dominate the batch (arXiv 1912.09729); dual_clip_c None turns it off.
    is_weights [B,T] (detached) rescale each token, e.g. truncated IS for rollout/trainer mismatch.
    All tensors [B,T]; returns (loss [B,T], {clipfrac, clipfrac_dual, approx_kl, ratio_mean}).
    PPO Eq. 7, L = -min(r A, clip(r, 1-eps_low, 1+eps_high) A), arXiv 1707.06347."""
    if dual_clip_c is not None and dual_clip_c <= 1.0:
        raise ValueError(f"dual_clip_c must be > 1.0 (it bounds the loss at -c A), got {dual_clip_c}")
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clipped = torch.maximum(pg_loss1, pg_loss2)
    if dual_clip_c is not None:
        pg_loss3 = -advantages * dual_clip_c
        dual_hit = (clipped > pg_loss3) & (advantages < 0)
        pg_losses = torch.where(advantages < 0, torch.minimum(clipped, pg_loss3), clipped)
    else:
        dual_hit = torch.zeros_like(clipped, dtype=torch.bool)
        pg_losses = clipped
    metrics = {
        "clipfrac": _masked_mean((pg_loss2 > pg_loss1).to(ratio.dtype), response_mask),
        "clipfrac_dual": _masked_mean(dual_hit.to(ratio.dtype), response_mask),
        "approx_kl": _masked_mean(-log_ratio.detach(), response_mask),
        "ratio_mean": _masked_mean(ratio.detach(), response_mask),
    }
    return _finish(pg_losses, response_mask, is_weights), metrics


@POLICY_LOSSES.register("reinforce")
def reinforce(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor, *,
              eps_low: float = 0.2, eps_high: float = 0.2, dual_clip_c: float | None = 3.0,
              is_weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Unclipped importance-weighted policy gradient: on-policy (r = 1) its gradient is exactly REINFORCE's
    -A grad log pi; the ratio keeps it correct over several updates on one batch. eps_low, eps_high and
    dual_clip_c are accepted for the shared signature and ignored.
    All tensors [B,T]; returns (loss [B,T], metrics as ppo_clip with clip fractions 0).
    REINFORCE (Williams 1992) with IS ratio, L = -r A, r = exp(logprobs - old_logprobs), arXiv 2402.14740."""
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    metrics = {
        "clipfrac": 0.0,
        "clipfrac_dual": 0.0,
        "approx_kl": _masked_mean(-log_ratio.detach(), response_mask),
        "ratio_mean": _masked_mean(ratio.detach(), response_mask),
    }
    return _finish(-advantages * ratio, response_mask, is_weights), metrics


# Losses whose every term is the advantage times something finite, so a row with A = 0 has loss and gradient
# exactly 0 (tests/test_zero_advantage.py checks each one): the update may leave such rows out. A user's
# registered loss is not listed, so its rows are all kept.
ZERO_GRADIENT_AT_ZERO_ADVANTAGE = frozenset({"ppo_clip", "reinforce"})


def truncated_is_weights(old_logprobs: Tensor, rollout_logprobs: Tensor, response_mask: Tensor, *,
                         cap: float = 2.0) -> Tensor:
    """min(pi_old / pi_rollout, cap), detached, 0 on masked tokens: the inference engine's probabilities
    differ from the trainer's, so the rollout is slightly off-policy; truncating the weight corrects most of
    that bias without the variance of an unbounded ratio. All tensors [B,T] -> [B,T].
    TIS, w = min(pi_fsdp/pi_vllm, C) (Yao et al. 2025, "Your efficient RL framework secretly brings you
    off-policy RL training", fengyao.notion.site; no arXiv id)."""
    with torch.no_grad():
        w = torch.clamp(torch.exp(old_logprobs - rollout_logprobs), max=cap)
        return torch.where(response_mask.bool(), w, torch.zeros_like(w))


# ---- aggregation -------------------------------------------------------------------------------------

# A mode maps (response_mask [R,T] float, trace_ids [R] or None) to the per-token weights w [R,T].
AggregationFn = Callable[[Tensor, Tensor | None], Tensor]
LOSS_AGG_MODES: Registry[AggregationFn] = Registry("loss aggregation mode", "rlreason.loss_agg_modes",
                                                   key="algo.loss_agg_mode")


def _n_valid_rows(mask: Tensor) -> Tensor:
    return (mask.sum(-1) > 0).sum().clamp_min(1).to(mask.dtype)


@LOSS_AGG_MODES.register("token-mean")
def _token_mean(mask: Tensor, trace_ids: Tensor | None) -> Tensor:
    return mask / mask.sum().clamp_min(1)


@LOSS_AGG_MODES.register("seq-mean-token-sum")
def _seq_mean_token_sum(mask: Tensor, trace_ids: Tensor | None) -> Tensor:
    return mask / _n_valid_rows(mask)


@LOSS_AGG_MODES.register("seq-mean-token-mean")
def _seq_mean_token_mean(mask: Tensor, trace_ids: Tensor | None) -> Tensor:
    lengths = mask.sum(-1, keepdim=True).clamp_min(1)
    return mask / (lengths * _n_valid_rows(mask))


@LOSS_AGG_MODES.register("trace-length-norm")
def _trace_length_norm(mask: Tensor, trace_ids: Tensor | None) -> Tensor:
    if trace_ids is None:
        raise ValueError("loss_agg_mode 'trace-length-norm' needs trace_ids [R], the trace of each row")
    _, inv = torch.unique(trace_ids, return_inverse=True)
    n_traces = int(inv.max()) + 1 if inv.numel() else 0
    lengths = torch.zeros(n_traces, dtype=mask.dtype, device=mask.device).index_add_(0, inv, mask.sum(-1))
    n_valid = (lengths > 0).sum().clamp_min(1).to(mask.dtype)
    return mask / (lengths[inv].clamp_min(1).unsqueeze(-1) * n_valid)


def token_weights(response_mask: Tensor, mode: str, *, trace_ids: Tensor | None = None) -> Tensor:
    """Per-token weights w [R,T] with aggregated loss = (loss * w).sum(); computed once per mini-batch so
    micro-batches can each add (loss_mb * w_mb).sum() and the total is exact. Rows with no valid token get
    weight 0 and are not counted as sequences.
    token-mean: mask / sum(mask). seq-mean-token-sum: mask / R_valid. seq-mean-token-mean:
    mask / (T_i R_valid). trace-length-norm: mask / (l_g G), l_g the valid tokens over all chunks (rows)
    of trace g (trace_ids [R] long), G the traces with l_g > 0, so long traces are not up-weighted per chunk.
    Delethink Eq. 3, J = (1/G) sum_g (1/l(tau_g)) sum_chunks sum_t U, arXiv 2510.06557."""
    fn = LOSS_AGG_MODES.get(mode)
    mask = response_mask.to(torch.get_default_dtype() if not response_mask.is_floating_point()
                            else response_mask.dtype)
    return fn(mask, trace_ids)


def aggregate(loss: Tensor, response_mask: Tensor, mode: str, *, trace_ids: Tensor | None = None) -> Tensor:
    """Scalar loss = (loss * token_weights(response_mask, mode)).sum(); loss, response_mask [R,T].
    Masked positions are zeroed first so a NaN in padding cannot leak into the sum.
    Aggregation modes as in verl's agg_loss plus Delethink Eq. 3, arXiv 2510.06557."""
    w = token_weights(response_mask, mode, trace_ids=trace_ids).to(loss.dtype)
    return (torch.where(w != 0, loss, torch.zeros_like(loss)) * w).sum()


# ---- value, entropy, log-probabilities ----------------------------------------------------------------

def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, response_mask: Tensor, *,
               clip: float = 0.2) -> Tensor:
    """0.5 max((v - R)^2, (clip(v, v_old - c, v_old + c) - R)^2) per token, 0 on masked tokens: the clipped
    term keeps the critic from moving far from the values that produced the advantages.
    All tensors [B,T] -> [B,T]. PPO value clipping (Engstrom et al., "Implementation Matters"),
    arXiv 2005.12729."""
    clipped = torch.maximum(torch.minimum(values, old_values + clip), old_values - clip)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return torch.where(response_mask.bool(), loss, torch.zeros_like(loss))


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """H = logsumexp(z) - sum softmax(z) z with z = logits / T, which never takes log of a probability that
    underflowed to 0; z is first shifted by its max (H is shift-invariant) so large logits do not cancel
    catastrophically. Without grad it runs per row in float32 (no [B,T,V] float32 copy of bf16 logits).
    logits [B,T,V] -> [B,T] float32. Entropy bonus as in A3C, arXiv 1602.01783."""
    def rows_entropy(x: Tensor) -> Tensor:
        z = _scaled(x.to(torch.promote_types(x.dtype, torch.float32)), temperature)
        z = z - z.max(dim=-1, keepdim=True).values.detach()
        return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)
    if torch.is_grad_enabled() and logits.requires_grad:
        return rows_entropy(logits)
    return torch.stack([rows_entropy(row) for row in logits])


def _scaled(z: Tensor, temperature: float) -> Tensor:
    # Greedy sampling (T <= 0) is scored with the model's own distribution, as the engine reports it.
    return z / temperature if temperature > 0 and temperature != 1.0 else z


_CHUNK_ELEMENTS = 1 << 24  # float32 working set per chunk: 64 MB


def _token_chunks(logits: Tensor):
    """(row, token slice) pieces of [B,T,V] holding at most _CHUNK_ELEMENTS logits each."""
    B, T, V = logits.shape
    step = max(1, _CHUNK_ELEMENTS // V)
    for b in range(B):
        for t in range(0, T, step):
            yield b, slice(t, t + step)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(z/T)[y] chunk by chunk in float32, saving only the logits as given (bf16 under autocast)
    and one logsumexp per token: the naive path keeps float32 copies of the [B,T,V] logits, their
    scaled version and their gradient alive at once (~0.6 GB at 8 x 128 x 49k)."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, temperature: float) -> Tensor:
        dtype = torch.promote_types(logits.dtype, torch.float32)  # float32, or float64 when given
        out = torch.empty(labels.shape, dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for b, t in _token_chunks(logits):
            z = _scaled(logits[b, t].to(dtype), temperature)
            lse[b, t] = torch.logsumexp(z, dim=-1)
            out[b, t] = z.gather(-1, labels[b, t, None]).squeeze(-1) - lse[b, t]
        ctx.save_for_backward(logits, labels, lse)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        logits, labels, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        for b, t in _token_chunks(logits):
            g = grad[b, t, None]
            # d/dz (z_y - logsumexp z) = onehot(y) - softmax(z); then through z = logits / T.
            d = (_scaled(logits[b, t].to(lse.dtype), ctx.temperature) - lse[b, t, None]).exp_().mul_(-g)
            d.scatter_add_(-1, labels[b, t, None], g)
            grad_logits[b, t] = _scaled(d, ctx.temperature)
        return grad_logits, None, None


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(z/T)[y] = z_y/T - logsumexp(z/T), in float32 (float64 for float64 logits), chunked so no
    [B,T,V] float32 tensor is ever materialised (forward or backward). T is the sampling temperature, so
    the result is the log-probability under the distribution the engine sampled from.
    logits [B,T,V], labels [B,T] long -> [B,T]. Policy log-likelihood, PPO arXiv 1707.06347."""
    return _TokenLogprobs.apply(logits, labels, float(temperature))
