"""Supervised fine-tuning on (prompt, completion) rows: the `sft` plug-in of the loop (warm starts, repair,
baselines) and the update of expert iteration (`sft_epoch`).

Per optimizer batch of rows, the mean negative log-likelihood of the trained response tokens,

    L = - sum_{i,t} m_it log pi(y_it | x_i, y_i<t) / sum_{i,t} m_it,

accumulated over micro-batches with the batch's token count as the divisor, so micro-batching does not
change it. The prompt x_i is never trained (it is the row's prompt, not part of its response); the response
y_i is the completion's tokens followed by EOS, so the model learns to stop. Clipping and the non-finite
guard are the policy update's (`update._step`)."""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from rlreason.algos.losses import logprobs_from_logits
from rlreason.config import TrainerConfig
from rlreason.registry import ConfigError
from rlreason.trainer import micro_batches
from rlreason.trainer.algorithm import Algorithm, StepResult
from rlreason.trainer.batch import Row, collate, group_order
from rlreason.trainer.perf import sequences
from rlreason.trainer.sampler import PromptSampler
from rlreason.trainer.update import UpdateContext, _step, autocast, full_precision

if TYPE_CHECKING:
    from rlreason.trainer.loop import Run
    from rlreason.types import Environment


def sft_row(env: Environment, prompt: str | list[dict[str, str]], completion: str, index: int) -> Row:
    """One training row: the prompt encoded as `env` encodes it for the policy (so a warm start sees the RL
    run's exact context), the response the completion's tokens then EOS, every response token trained."""
    tok = env.tokenizer
    response = tok(completion, add_special_tokens=False).input_ids + [tok.eos_token_id]
    return Row(env.encode_prompt(prompt), response, [0.0] * len(response), [1] * len(response), 0.0, index, index)


def ids_row(row: dict[str, Any], index: int, vocab_size: int) -> Row:
    """A line given as token ids (sft_jsonl `prompt_ids` / `completion_ids`): the row verbatim, every
    response token trained. An id outside the tokenizer's vocabulary names the line's id."""
    for k in ("prompt_ids", "completion_ids"):
        bad = [t for t in row[k] if t >= vocab_size]
        if bad:
            raise ConfigError(f"data.train: line '{row['id']}': {k} has id {bad[0]}, outside the model's "
                              f"vocabulary of {vocab_size} tokens (ids written for another tokenizer?)")
    response = list(row["completion_ids"])
    return Row(list(row["prompt_ids"]), response, [0.0] * len(response), [1] * len(response), 0.0, index, index)


def sft_batch(batch: list[Row], ctx: UpdateContext, tr: TrainerConfig, sums: dict, counts: dict) -> None:
    """One optimizer step on `batch`, in micro-batches of trainer.micro_batch_size rows dealt by
    micro_batches.plan (completions differ in length, so sorting by length can pad far less than batch
    order); accumulates the loss and gradient norm into `sums` / `counts` as `update._step` does."""
    model = ctx.model
    model.train()
    n_tokens = max(sum(sum(r.response_mask) for r in batch), 1)
    ctx.optimizer.zero_grad(set_to_none=True)
    total, finite = 0.0, True
    with autocast(ctx):  # one region per optimizer step: weights are cast to bf16 once
        micros = micro_batches.plan(batch, list(range(len(batch))), tr.micro_batch_size,
                                    share_prompts=ctx.share_prompts)
        for micro in micros:
            b = collate([batch[i] for i in micro], ctx.pad_id).to(ctx.device)
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


def _loss_metrics(sums: dict, counts: dict) -> dict[str, float]:
    out = {("sft" if k == "policy" else k): v / max(counts[k], 1) for k, v in sums.items()}
    out["sft_steps"] = float(counts["grad_norm"])
    return {f"loss/{k}": v for k, v in out.items()}


def sft_epoch(rows: list[Row], ctx: UpdateContext, tr: TrainerConfig, *, batch_size: int) -> dict[str, float]:
    """Shuffle (python RNG, checkpointed), then one optimizer step per `batch_size` rows. Returns
    loss/sft (mean over steps), loss/grad_norm, loss/sft_steps."""
    order = list(range(len(rows)))
    random.shuffle(order)
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for s in range(0, len(order), batch_size):
        sft_batch([rows[i] for i in group_order(rows, order[s:s + batch_size])], ctx, tr, sums, counts)
    return _loss_metrics(sums, counts)


def epoch_batch(sampler: PromptSampler, rows: list[Row], batch_size: int) -> list[Row]:
    """The next batch of the sampler's seeded epoch order; an epoch's last batch is its remainder, so an
    epoch is ceil(rows / batch_size) optimizer steps and no row is seen twice within one."""
    n = len(rows)
    left = n - sampler.index if sampler.index < n else n
    picked = sampler.next_indices(min(batch_size, left))
    return [rows[i] for i in group_order(rows, picked)]  # same-prompt rows together


def fit(rows: list[Row], ctx: UpdateContext, tr: TrainerConfig, *, epochs: int, batch_size: int,
        seed: int) -> list[dict[str, float]]:
    """SFT outside a run directory (probe repair: a model in memory, no checkpoints): the plug-in's batches
    and update for `epochs` passes; returns each step's loss metrics."""
    sampler = PromptSampler(len(rows), seed)
    out = []
    for _ in range(epochs * math.ceil(len(rows) / batch_size)):
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        sft_batch(epoch_batch(sampler, rows, batch_size), ctx, tr, sums, counts)
        out.append(_loss_metrics(sums, counts))
    ctx.optimizer.zero_grad(set_to_none=True)
    return out


def prompt_of(row: dict[str, Any]) -> str | list[dict[str, str]]:
    """A row's prompt: text, or chat messages (sft_jsonl keeps those as JSON text with `chat` set)."""
    import json
    return json.loads(row["prompt"]) if row.get("chat") else row["prompt"]


class SFT(Algorithm):
    """`algorithm: sft`: `sft.epochs` passes over data.train's (prompt, completion) rows, `sft.batch_size`
    rows per optimizer step (ceil(rows / batch_size) steps per epoch, the last batch of an epoch smaller).
    Each epoch's order is the prompt sampler's seeded permutation, so a resumed run trains on exactly the
    batches an uninterrupted one would. data.train is not split: the held-out set is data.eval."""

    name = "sft"
    reward_key = "loss/sft"
    splits_train = False

    def validate(self) -> None:
        if self.cfg.eval.every and self.cfg.data.eval is None:
            raise ConfigError("eval.every: algorithm=sft evaluates on data.eval (a question/answer builder, as "
                              "the RL run's); set data.eval or eval.every=0")

    def prepare(self, run: Run) -> None:
        columns = set(run.train_rows.column_names)
        if not {"prompt", "completion"} <= columns:
            raise ConfigError(f"data.train: algorithm=sft trains on rows with 'prompt' and 'completion' columns "
                              f"(source: sft_jsonl); source '{self.cfg.data.train.get('source')}' has "
                              f"{', '.join(sorted(columns))}")
        self.rows = [sft_row(run.env, prompt_of(r), r["completion"], i) if not r.get("prompt_ids")
                     else ids_row(r, i, len(run.env.tokenizer)) for i, r in enumerate(run.train_rows)]
        self.steps_per_epoch = math.ceil(len(self.rows) / self.cfg.sft.batch_size)

    def total_steps(self) -> int:
        n = len(getattr(self, "rows", [])) or 1
        return self.cfg.sft.epochs * math.ceil(n / self.cfg.sft.batch_size)

    def step(self, run: Run) -> StepResult:
        t0 = time.perf_counter()
        run.engine.sleep()  # GPU: the engine generates only to evaluate; the sync before that wakes it
        batch = epoch_batch(run.sampler, self.rows, self.cfg.sft.batch_size)
        sums: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        sft_batch(batch, run.ctx, self.cfg.trainer, sums, counts)
        run.ctx.optimizer.zero_grad(set_to_none=True)
        run.engine_stale = True
        t_update = time.perf_counter() - t0
        metrics = {
            **_loss_metrics(sums, counts),
            "sft/epoch": (run.step + 1) / self.steps_per_epoch,  # epochs trained after this step
            "sft/rows": float(len(batch)),
            "sft/tokens": float(sum(sum(r.response_mask) for r in batch)),
            "time/update": t_update, "time/step": time.perf_counter() - t0,
            "lr": run.ctx.optimizer.param_groups[0]["lr"],
            **(run.perf.step(trained=sequences(batch), epochs=1, forward=[], share_prompts=run.ctx.share_prompts,
                             generated_tokens=0, rollout_s=0.0, update_s=t_update) if run.perf is not None else {}),
        }
        return StepResult(metrics)
