"""The policy update of one training step: mini-batches, gradient accumulation over micro-batches,
clipping, and a guard against non-finite losses. All math comes from `rlreason.algos`."""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections import defaultdict
from dataclasses import dataclass

import torch

from rlreason.algos.kl import kl_estimate
from rlreason.algos.losses import POLICY_LOSSES, ZERO_GRADIENT_AT_ZERO_ADVANTAGE, PolicyLossFn, \
    entropy_from_logits, logprobs_from_logits, token_weights, truncated_is_weights, value_loss
from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.trainer import micro_batches, shared_prefix
from rlreason.trainer.batch import Batch, Row, collate, response_logits
from rlreason.trainer.critic import response_hidden

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class UpdateContext:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    ref_model: torch.nn.Module | None
    device: torch.device
    amp_dtype: torch.dtype | None
    pad_id: int
    temperature: float
    value_head: torch.nn.Module | None = None  # PPO with a critic (algo.advantage=gae)
    nonfinite_streak: int = 0
    # One prompt forward per group of rows (shared_prefix.py); off is the generic path. Set from
    # trainer.share_prompt_forward by rlreason.cpu.apply_cpu_optimizations, the one place that decides it.
    share_prompts: bool = False

    def response_logits(self, model: torch.nn.Module, b: Batch) -> torch.Tensor:
        """The response logits of a micro-batch by the forward this run uses (per row, or shared prompts)."""
        return shared_prefix.shared_response_logits(model, b) if self.share_prompts else response_logits(model, b)


def autocast(ctx: UpdateContext) -> contextlib.AbstractContextManager:
    """Mixed precision for the model's forward. Opened once around all micro-batches of an optimizer step
    (with `full_precision` inside for the loss and backward), autocast's cache keeps the bf16 copy of each
    fp32 weight for the whole step instead of re-casting all 135M parameters per micro-batch (40-95 ms
    each on 2 CPU cores); the cache is dropped when the outermost region closes, so no copy outlives the weights."""
    if ctx.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, dtype=ctx.amp_dtype)


def full_precision(ctx: UpdateContext) -> contextlib.AbstractContextManager:
    """Autocast off (loss math, value head, backward) without leaving the enclosing region: nested
    regions keep its weight cache."""
    if ctx.amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=ctx.device.type, enabled=False)


@torch.no_grad()
def compute_logprobs(model: torch.nn.Module, rows: list[Row], ctx: UpdateContext, micro: int) -> list[torch.Tensor]:
    """Per-row response logprobs (no grad): old policy for multi-update PPO, or the reference model."""
    out: list[torch.Tensor | None] = [None] * len(rows)
    once = ctx.share_prompts and shared_prefix.once_per_minibatch(model, rows, micro)
    micros = micro_batches.plan(rows, list(range(len(rows))), micro, share_prompts=ctx.share_prompts,
                                prompts_once=once)
    with autocast(ctx):
        prompts = shared_prefix.PromptPass(model, collate([rows[k] for m in micros for k in m], ctx.pad_id)
                                           .to(ctx.device)) if once else None
        s = 0
        for chunk in micros:
            sl, s = slice(s, s + len(chunk)), s + len(chunk)
            b = collate([rows[k] for k in chunk], ctx.pad_id).to(ctx.device)
            logits = prompts.response_logits(model, b, sl) if prompts is not None else ctx.response_logits(model, b)
            with full_precision(ctx):
                lp = logprobs_from_logits(logits, b.response_ids, ctx.temperature)
            for j, k in enumerate(chunk):
                out[k] = lp[j, :len(rows[k].response_ids)].float().cpu()
    return out  # type: ignore[return-value]


def _pad_rows(values: list[torch.Tensor], T: int) -> torch.Tensor:
    out = torch.zeros((len(values), T))
    for i, v in enumerate(values):
        out[i, :len(v)] = v[:T]
    return out


def minibatch_indices(rows: list[Row], mini_batches: int) -> list[list[int]]:
    """Row indices of each mini-batch of one pass: the prompt groups are shuffled and dealt into `mini_batches`
    parts whose sizes differ by at most one group. A group holds whole traces (every chunk row of a Delethink
    episode), so each trace lands in exactly one mini-batch and Eq. 3's l_g is its whole length, never the
    few chunks a row-level shuffle happened to put there; whole groups also match verl, whose mini-batches are
    ppo_mini_batch_size prompts x n responses. Shuffles with python's RNG (checkpointed), so a resumed run
    deals identically. Delethink Eq. 3, J = (1/G) sum_g (1/l(tau_g)) sum_chunks sum_t U, arXiv 2510.06557."""
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(r.group_id, []).append(i)
    keys = list(groups)
    random.shuffle(keys)
    bounds = [len(keys) * m // mini_batches for m in range(mini_batches + 1)]
    return [[i for k in keys[bounds[m]:bounds[m + 1]] for i in groups[k]] for m in range(mini_batches)]


def rows_with_gradient(rows: list[Row], ctx: UpdateContext, algo: AlgoConfig, tr: TrainerConfig) -> list[int]:
    """Indices of the rows the update has to run. A row whose advantage is exactly 0 (every sample of its GRPO
    group scored alike) contributes loss and gradient exactly 0 when every term of the loss is the advantage times
    something finite: a listed policy loss, and no entropy bonus, KL-to-reference loss or critic. Such rows are
    left out (trainer.skip_zero_advantage); their tokens still count in the aggregation weights."""
    skip = _skips_zero_advantage(ctx, algo, tr)
    return [i for i, r in enumerate(rows) if not skip or r.token_advantages is not None or r.advantage != 0.0]


def _skips_zero_advantage(ctx: UpdateContext, algo: AlgoConfig, tr: TrainerConfig) -> bool:
    return (tr.skip_zero_advantage and ctx.value_head is None and algo.entropy_coef <= 0
            and (algo.kl_coef <= 0 or algo.kl_in_reward) and algo.policy_loss in ZERO_GRADIENT_AT_ZERO_ADVANTAGE)


def policy_update(rows: list[Row], ctx: UpdateContext, algo: AlgoConfig, tr: TrainerConfig,
                  ref_logprobs: list[torch.Tensor] | None) -> dict[str, float]:
    """PPO-style update on one rollout batch; returns `loss/...` metrics: per-token terms as means over the
    response tokens of every mini-batch, per-step ones (policy, grad_norm) as means over optimizer steps."""
    model = ctx.model
    model.train()
    updates = tr.ppo_epochs * tr.mini_batches
    live = rows_with_gradient(rows, ctx, algo, tr)
    skipping, live_set = _skips_zero_advantage(ctx, algo, tr), set(live)
    # With a single update the sampling policy equals the current one: old = new.detach(), no extra pass.
    old_logprobs = (dict(zip(live, compute_logprobs(model, [rows[i] for i in live], ctx, tr.micro_batch_size)))
                    if updates > 1 and live else None)
    loss_fn = POLICY_LOSSES.get(algo.policy_loss, "algo.policy_loss")
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for _epoch in range(tr.ppo_epochs):
        for part in minibatch_indices(rows, tr.mini_batches):
            if not part:
                continue
            # Aggregation weights over the whole mini-batch, skipped rows included, make micro-batching and
            # skipping exact.
            whole = collate([rows[i] for i in part], ctx.pad_id)
            weight_of = dict(zip(part, token_weights(whole.response_mask, algo.loss_agg_mode,
                                                     trace_ids=whole.trace_ids)))
            part = [i for i in part if i in live_set]
            if skipping:
                _acc(sums, counts, {"rows_skipped_frac": 1 - len(part) / len(weight_of)}, weight=len(weight_of))
            ctx.optimizer.zero_grad(set_to_none=True)
            if not part:  # nothing carries a gradient: the step still runs on zeros (moments, weight decay)
                for p in ctx.model.parameters():
                    if p.requires_grad:
                        p.grad = torch.zeros_like(p)
                _step(ctx, tr, sums, counts, 0.0)
                continue
            # The weighted loss sum does not depend on how rows are dealt into micro-batches, only the
            # padding does (micro_batches.py).
            once = (ctx.share_prompts and ctx.value_head is None
                    and shared_prefix.once_per_minibatch(model, [rows[i] for i in part], tr.micro_batch_size))
            micros = micro_batches.plan(rows, part, tr.micro_batch_size, share_prompts=ctx.share_prompts,
                                        prompts_once=once)
            idx = [i for m in micros for i in m]
            mb_rows = [rows[i] for i in idx]
            full = collate(mb_rows, ctx.pad_id)
            weights = torch.stack([weight_of[i] for i in idx])
            mb_loss, finite = 0.0, True
            with autocast(ctx):
                prompts = shared_prefix.PromptPass(model, full.to(ctx.device)) if once else None
                s = 0
                for m in micros:
                    sl, s = slice(s, s + len(m)), s + len(m)
                    b = collate(mb_rows[sl], ctx.pad_id).to(ctx.device)
                    if ctx.value_head is not None:
                        logits, hidden = response_hidden(model, b)
                    elif prompts is not None:
                        logits, hidden = prompts.response_logits(model, b, sl), None
                    else:
                        logits, hidden = ctx.response_logits(model, b), None
                    with full_precision(ctx):
                        T = b.response_ids.shape[1]
                        old = (_pad_rows([old_logprobs[i] for i in idx[sl]], T).to(ctx.device)
                               if old_logprobs is not None else None)
                        ref = (_pad_rows([ref_logprobs[i] for i in idx[sl]], T).to(ctx.device)
                               if algo.kl_coef > 0 and not algo.kl_in_reward and ref_logprobs is not None else None)
                        loss = _micro_loss(ctx, algo, loss_fn, b, logits, hidden, weights[sl, :T].to(ctx.device),
                                           old, ref, sums, counts, entropy_metric=sl.start == 0)
                        if not torch.isfinite(loss):
                            finite = False
                            break
                        mb_loss += float(loss.detach())
                        loss.backward()
                if prompts is not None and finite:
                    prompts.backward()
                del prompts
            _step(ctx, tr, sums, counts, mb_loss if finite else float("nan"))
    return {f"loss/{k}": v / max(counts[k], 1) for k, v in sums.items()}


def _micro_loss(ctx: UpdateContext, algo: AlgoConfig, loss_fn: PolicyLossFn, b: Batch, logits: torch.Tensor,
                hidden: torch.Tensor | None, w: torch.Tensor, old: torch.Tensor | None, ref: torch.Tensor | None,
                sums: dict, counts: dict, *, entropy_metric: bool) -> torch.Tensor:
    """The weighted loss of one micro-batch (policy + optional value, KL and entropy terms); metrics go to
    sums/counts. `old` None means a single update: the sampling policy is the current one."""
    logprobs = logprobs_from_logits(logits, b.response_ids, ctx.temperature)
    old = logprobs.detach() if old is None else old
    is_w = (truncated_is_weights(old, b.rollout_logprobs, b.response_mask, cap=algo.tis_cap)
            if algo.tis_cap is not None else None)
    pg, m_pg = loss_fn(logprobs, old, b.advantages, b.response_mask, eps_low=algo.eps_low,
                       eps_high=algo.eps_high, dual_clip_c=algo.dual_clip_c, is_weights=is_w)
    loss = (pg * w).sum()
    n = float(b.response_mask.sum())  # each metric is a token mean: micro-batches weigh by their tokens
    tokens = max(n, 1.0)

    def masked_mean(x: torch.Tensor) -> float:
        return float((x.detach() * b.response_mask).sum() / tokens)
    if hidden is not None:
        vl = value_loss(ctx.value_head(hidden), b.old_values, b.returns, b.response_mask, clip=algo.value_clip)
        loss = loss + algo.value_coef * (vl * w).sum()
        _acc(sums, counts, {"value": masked_mean(vl)}, weight=n)
    if ref is not None:
        kl = kl_estimate(logprobs, ref, algo.kl_estimator)
        loss = loss + algo.kl_coef * (kl * w).sum()
        _acc(sums, counts, {"kl": masked_mean(kl)}, weight=n)
    if algo.entropy_coef > 0:
        ent = entropy_from_logits(logits, ctx.temperature)
        loss = loss - algo.entropy_coef * (ent * w).sum()
        _acc(sums, counts, {"entropy": masked_mean(ent)}, weight=n)
    elif entropy_metric:  # as a metric only, one micro-batch per mini-batch is enough: it costs a [B,T,V] softmax
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach(), ctx.temperature)
            _acc(sums, counts, {"entropy": masked_mean(ent)}, weight=n)
    _acc(sums, counts, m_pg, weight=n)
    if is_w is not None:
        _acc(sums, counts, {"tis_weight": masked_mean(is_w)}, weight=n)
    _acc(sums, counts, {"engine_trainer_logprob_diff": masked_mean((logprobs - b.rollout_logprobs).abs())}, weight=n)
    return loss


def _acc(sums: dict, counts: dict, m: dict[str, float], weight: float = 1.0) -> None:
    for k, v in m.items():
        sums[k] += float(v) * weight
        counts[k] += weight


def _step(ctx: UpdateContext, tr: TrainerConfig, sums: dict, counts: dict, loss: float) -> None:
    """Clip, check, step. A non-finite loss or gradient skips the step (weights untouched) and is
    counted; `max_nonfinite_steps` in a row stops the run with a clear error rather than training
    on garbage."""
    params = [*ctx.model.parameters(), *(ctx.value_head.parameters() if ctx.value_head is not None else [])]
    max_norm = tr.max_grad_norm if tr.max_grad_norm is not None else math.inf  # inf: measure, do not clip
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not torch.isfinite(grad_norm) or not math.isfinite(loss):
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.nonfinite_streak += 1
        sums["nonfinite_skipped"] += 1
        counts["nonfinite_skipped"] = 1
        log.warning("non-finite loss/gradient: optimizer step skipped (%d in a row)", ctx.nonfinite_streak)
        if ctx.nonfinite_streak >= tr.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{ctx.nonfinite_streak} consecutive non-finite losses/gradients "
                f"(trainer.max_nonfinite_steps={tr.max_nonfinite_steps}); lower trainer.lr or check rewards. "
                "The last checkpoint is intact; resume with --resume after fixing.")
        return
    ctx.nonfinite_streak = 0
    _acc(sums, counts, {"policy": loss})
    ctx.optimizer.step()
    if ctx.scheduler is not None:
        ctx.scheduler.step()
    sums["grad_norm"] += float(grad_norm)
    counts["grad_norm"] += 1
