"""The rollout phase of one training step, with DAPO's dynamic sampling: keep generating until the batch
holds `prompts_per_step` informative groups.

A group whose answers all scored the same has zero group-relative advantage: it adds no gradient and only
dilutes the batch. With `algo.dynamic_sampling` such groups are dropped and further rounds of
`prompts_per_step` fresh prompts are generated until enough informative groups are in hand (the first
`prompts_per_step` of them are kept, the rest discarded, as verl's `filter_groups`), or until
`algo.max_sampling_rounds` rounds have run, when the step trains on what it has and says so. Every prompt a
round draws is consumed from the sampler, so a checkpoint taken after the step resumes with exactly the next
prompts. The filter reads the rubric's reward (what the answers scored), before any KL penalty.
DAPO Sec. 3.2 (dynamic sampling, 0 < |{o_i correct}| < G), arXiv 2503.14476."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch

from rlreason.algos.sampling import nonzero_variance_groups
from rlreason.trainer.rollout_phase import as_example, run_groups
from rlreason.types import Episode

log = logging.getLogger(__name__)


@dataclass
class StepGroups:
    groups: list[list[Episode]] = field(default_factory=list)  # the groups to train on
    generated: list[list[Episode]] = field(default_factory=list)  # every completed group of the step
    examples: list[dict] = field(default_factory=list)  # every prompt drawn this step, in order
    env_errors: int = 0
    rounds: int = 0
    zero_variance: int = 0  # generated groups of two or more samples whose rewards are all equal


def informative(group: list[Episode]) -> bool:
    """Rewards not all equal, or a group of one (its GRPO advantage is the raw reward; verl keeps it too)."""
    rewards = torch.tensor([ep.reward for ep in group], dtype=torch.float64)
    return bool(nonzero_variance_groups(rewards, torch.zeros(len(group), dtype=torch.long))[0])


def collect_groups(run: Any, seed: int) -> StepGroups:
    """Generate and score this step's groups (one round, or DAPO refill rounds). Round r uses seed
    seed + r * 104_729, so round 0 draws what a step without dynamic sampling draws."""
    cfg = run.cfg
    tr, algo = cfg.trainer, cfg.algo
    out = StepGroups()
    while True:
        idx = run.sampler.next_indices(tr.prompts_per_step)
        examples = [as_example(run.train_rows[i]) for i in idx]
        groups, errors = run_groups(run.engine, run.env, run.rubric, examples, tr.samples_per_prompt,
                                    seed=(seed + out.rounds * 104_729) % (2**31 - 1))
        out.rounds += 1
        out.examples += examples
        out.env_errors += errors
        out.generated += groups
        out.zero_variance += sum(len(g) > 1 and not informative(g) for g in groups)
        if not algo.dynamic_sampling:
            out.groups = groups
            return out
        out.groups += [g for g in groups if informative(g)]
        if len(out.groups) >= tr.prompts_per_step:
            out.groups = out.groups[:tr.prompts_per_step]
            return out
        if out.rounds >= algo.max_sampling_rounds:
            log.warning("dynamic sampling: %d of %d informative groups after algo.max_sampling_rounds=%d rounds "
                        "(%d prompts); training on those", len(out.groups), tr.prompts_per_step, out.rounds,
                        len(out.examples))
            return out
