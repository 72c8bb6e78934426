"""Pure tensor math for RL on language models: advantage estimators, per-token losses and their
aggregation, KL estimators, dynamic-sampling filters. No trainer, engine or verl imports here."""

from rlreason.algos.advantages import (ADVANTAGES, broadcast_to_tokens, dr_grpo, gae, grpo, masked_whiten,
                                       reinforce_pp_baseline, rloo)
from rlreason.algos.kl import KL_ESTIMATORS, kl_estimate
from rlreason.algos.losses import (LOSS_AGG_MODES, POLICY_LOSSES, aggregate, entropy_from_logits,
                                   logprobs_from_logits, ppo_clip, reinforce, token_weights,
                                   truncated_is_weights, value_loss)
from rlreason.algos.sampling import nonzero_variance_groups

__all__ = [
    "ADVANTAGES", "KL_ESTIMATORS", "LOSS_AGG_MODES", "POLICY_LOSSES", "aggregate",
    "broadcast_to_tokens", "dr_grpo", "entropy_from_logits", "gae", "grpo", "kl_estimate",
    "logprobs_from_logits", "masked_whiten", "nonzero_variance_groups", "ppo_clip", "reinforce",
    "reinforce_pp_baseline", "rloo", "token_weights", "truncated_is_weights", "value_loss",
]
