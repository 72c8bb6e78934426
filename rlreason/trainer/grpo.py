"""`algorithm: grpo`, the GRPO/PPO family as a plug-in of the one loop (trainer/loop.py). One step:

    sample prompts -> G concurrent episodes each (engine) -> group rewards (- beta KL, kl_in_reward)
    -> advantages (registered estimator, or GAE with the critic) -> mini-batched policy update
    -> in-place weight sync

It owns no math: advantages, KL and losses come from `rlreason.algos`, rollouts from the environment."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch

from rlreason.algos.advantages import ADVANTAGES
from rlreason.algos.kl import KL_ESTIMATORS, kl_reward_penalty
from rlreason.algos.losses import LOSS_AGG_MODES, POLICY_LOSSES
from rlreason.trainer.algorithm import Algorithm, StepResult
from rlreason.trainer.batch import episodes_to_rows
from rlreason.trainer.critic import ValueHead, assign_gae
from rlreason.trainer.dynamic_sampling import collect_groups
from rlreason.trainer.perf import sequences
from rlreason.trainer.update import UpdateContext, compute_logprobs, policy_update, rows_with_gradient

if TYPE_CHECKING:
    from rlreason.trainer.loop import Run
    from rlreason.types import Episode


class GRPO(Algorithm):
    name = "grpo"

    def validate(self) -> None:
        algo = self.cfg.algo
        ADVANTAGES.check(algo.advantage, also=("gae",))  # gae needs a critic and lives in trainer/critic.py
        POLICY_LOSSES.check(algo.policy_loss)
        LOSS_AGG_MODES.check(algo.loss_agg_mode)
        KL_ESTIMATORS.check(algo.kl_estimator)

    def attach(self, ctx: UpdateContext, model_dir: str) -> None:
        """The frozen reference model (algo.kl_coef > 0) and the critic's value head (algo.advantage=gae).
        The reference is never updated, so on GPU it needs no fp32 master copy: bf16 halves it; CPU keeps
        fp32 (the CPU numerics, and exact resume, are unchanged)."""
        from rlreason.trainer.loop import load_policy
        cfg = self.cfg
        if self.uses_reference_model():
            dtype = torch.bfloat16 if ctx.device.type == "cuda" and cfg.model.dtype == "bf16" else torch.float32
            ctx.ref_model = load_policy(model_dir, ctx.device, False, cfg.model.attn_implementation,
                                        dtype=dtype).eval().requires_grad_(False)
        if cfg.algo.advantage == "gae":
            ctx.value_head = ValueHead(ctx.model.config.hidden_size).to(ctx.device)

    def uses_reference_model(self) -> bool:
        return self.cfg.algo.kl_coef > 0

    def torch_state(self, run: Run) -> dict[str, Any]:
        return {"value_head": run.ctx.value_head.state_dict()} if run.ctx.value_head is not None else {}

    def load_state(self, run: Run, state: dict[str, Any], torch_state: dict[str, Any]) -> None:
        if run.ctx.value_head is not None:
            run.ctx.value_head.load_state_dict(torch_state["value_head"])

    def step(self, run: Run) -> StepResult:
        from rlreason.trainer.loop import rollout_metrics, step_seed, sync
        cfg, tr, algo, ctx = run.cfg, run.cfg.trainer, run.cfg.algo, run.ctx
        t0 = time.perf_counter()
        step_groups = collect_groups(run, seed=step_seed(cfg, run.step))
        groups, generated = step_groups.groups, step_groups.generated
        t_rollout = time.perf_counter() - t0
        run.engine.sleep()  # GPU: vLLM's weights and KV cache make room for the update; the sync wakes it

        episodes = [ep for g in groups for ep in g]
        group_ids = [gi for gi, g in enumerate(groups) for _ in g]
        rewards = torch.tensor([ep.reward for ep in episodes], dtype=torch.float32)

        t1 = time.perf_counter()
        ref_logprobs = None
        rows = episodes_to_rows(episodes, [0.0] * len(episodes), group_ids)
        if algo.kl_coef > 0 and ctx.ref_model is not None and rows:
            ref_logprobs = compute_logprobs(ctx.ref_model, rows, ctx, tr.micro_batch_size)
            if algo.kl_in_reward:
                pol = compute_logprobs(ctx.model, rows, ctx, tr.micro_batch_size)
                rewards = rewards - algo.kl_coef * kl_reward_penalty(
                    pol, ref_logprobs, [r.response_mask for r in rows], [r.trace_id for r in rows],
                    len(episodes), algo.kl_estimator)
        if rows and algo.advantage == "gae":
            assign_gae(rows, rewards.tolist(), ctx.model, ctx.value_head, ctx.pad_id, ctx.device,
                       gamma=algo.gamma, lam=algo.lam, micro=tr.micro_batch_size)
        elif rows:
            advantages = ADVANTAGES.get(algo.advantage)(rewards, torch.tensor(group_ids, dtype=torch.long),
                                                        eps=algo.adv_eps)
            for r in rows:
                r.advantage = float(advantages[r.trace_id])
        t_reward = time.perf_counter() - t1

        t2 = time.perf_counter()
        loss_metrics = policy_update(rows, ctx, algo, tr, ref_logprobs) if rows else {"loss/skipped_empty": 1.0}
        t_update = time.perf_counter() - t2

        t3 = time.perf_counter()
        ctx.optimizer.zero_grad(set_to_none=True)  # gradients are dead until the next update: free them
        sync(run)
        t_sync = time.perf_counter() - t3

        all_episodes = [ep for g in generated for ep in g]  # reward/* over every episode generated this step
        metrics = {
            **rollout_metrics(run, all_episodes, step_groups.env_errors),
            **({"reward/kl_penalty": float((torch.tensor([ep.reward for ep in episodes]) - rewards).mean())}
               if algo.kl_in_reward and len(rewards) else {}),
            **loss_metrics,
            "rollout/rows": float(len(rows)),
            "rollout/prompts": float(len(step_groups.examples)),
            "rollout/sampling_rounds": float(step_groups.rounds),
            "rollout/trained_groups": float(len(groups)),
            "rollout/kept_groups_frac": len(groups) / len(generated) if generated else 0.0,
            "rollout/zero_var_groups_frac": step_groups.zero_variance / len(generated) if generated else 0.0,
            "time/rollout": t_rollout, "time/reward": t_reward, "time/update": t_update, "time/sync": t_sync,
            "time/step": time.perf_counter() - t0,
            "lr": ctx.optimizer.param_groups[0]["lr"],
            **self._perf(run, rows, all_episodes, t_rollout, t_reward + t_update),
        }
        return StepResult(metrics, list(zip(step_groups.examples, generated)))

    def _perf(self, run: Run, rows: list, episodes: list[Episode], t_rollout: float,
              t_trainer: float) -> dict[str, float]:
        """perf/ metrics of the step. Forward-only passes: reference logprobs, the policy's for KL-in-reward
        and the critic's values over the step's rows; old logprobs when the batch takes > 1 update."""
        if run.perf is None:
            return {}
        algo, tr = run.cfg.algo, run.cfg.trainer
        has_ref = algo.kl_coef > 0 and run.ctx.ref_model is not None
        seqs = sequences(rows)  # dynamic sampling drops groups before rows exist: every pass sees the same rows
        # The update runs only the rows that carry a gradient (zero-advantage rows are left out), old logprobs too.
        live = sequences([rows[i] for i in rows_with_gradient(rows, run.ctx, algo, tr)])
        forward = [seqs] * (int(has_ref) + int(has_ref and algo.kl_in_reward) + int(algo.advantage == "gae")) \
            + [live] * int(tr.ppo_epochs * tr.mini_batches > 1 and bool(live))
        shared = run.ctx.share_prompts and algo.advantage != "gae" \
            and not getattr(run.ctx.model, "is_gradient_checkpointing", False)
        return run.perf.step(trained=live, epochs=tr.ppo_epochs, forward=forward, share_prompts=shared,
                             generated_tokens=sum(ep.num_trained_tokens for ep in episodes), rollout_s=t_rollout,
                             update_s=t_trainer)
