"""One epoch of supervised fine-tuning on (prompt, response) rows, the update of expert iteration.

Per optimizer batch of rows, the mean negative log-likelihood of the trained response tokens,

    L = - sum_{i,t} m_it log pi(y_it | x_i, y_i<t) / sum_{i,t} m_it,

accumulated over micro-batches with the batch's token count as the divisor, so micro-batching does not
change it. Clipping and the non-finite guard are the policy update's (`update._step`)."""

from __future__ import annotations

import random
from collections import defaultdict

from rlreason.algos.losses import logprobs_from_logits
from rlreason.config import TrainerConfig
from rlreason.trainer.batch import Row, collate, group_order
from rlreason.trainer.update import UpdateContext, _step, autocast, full_precision


def sft_epoch(rows: list[Row], ctx: UpdateContext, tr: TrainerConfig, *, batch_size: int) -> dict[str, float]:
    """Shuffle (python RNG, checkpointed), then one optimizer step per `batch_size` rows. Returns
    loss/sft (mean over steps), loss/grad_norm, loss/sft_steps."""
    model = ctx.model
    model.train()
    order = list(range(len(rows)))
    random.shuffle(order)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for s in range(0, len(order), batch_size):
        batch = [rows[i] for i in group_order(rows, order[s:s + batch_size])]  # same-prompt rows together
        n_tokens = max(sum(sum(r.response_mask) for r in batch), 1)
        ctx.optimizer.zero_grad(set_to_none=True)
        total, finite = 0.0, True
        with autocast(ctx):  # one region per optimizer step: weights are cast to bf16 once
            for m in range(0, len(batch), tr.micro_batch_size):
                b = collate(batch[m:m + tr.micro_batch_size], ctx.pad_id).to(ctx.device)
                logits = ctx.response_logits(model, b)
                with full_precision(ctx):
                    logprobs = logprobs_from_logits(logits, b.response_ids)  # [B, T], the model's own distribution
                    loss = -(logprobs * b.response_mask).sum() / n_tokens
                    if not loss.isfinite():
                        finite = False
                        break
                    total += float(loss.detach())
                    loss.backward()
        _step(ctx, tr, sums, counts, total if finite else float("nan"))
    out = {("sft" if k == "policy" else k): v / max(counts[k], 1) for k, v in sums.items()}
    out["sft_steps"] = float(counts["grad_norm"])
    return {f"loss/{k}": v for k, v in out.items()}
