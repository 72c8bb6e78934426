"""What a training method plugs into the one loop (trainer/loop.py) with.

The loop owns everything methods share: the model, engine, optimizer and device, the data and the prompt
sampler, resume and checkpoints, metrics and samples, evaluation, the probe monitor, the progress bar and
the summary. A method is a small object: per step it turns the step's rollouts (or a batch of a dataset)
into training rows, performs the update and returns the step's metrics; it can keep state of its own in the
checkpoint. Three ship: `grpo` (GRPO/PPO, trainer/grpo.py), `expert_iteration` (trainer/expert_iteration.py)
and `sft` (trainer/sft.py); `algorithm:` in the config picks one.

Call order (loop.setup / loop.train):
    validate(cfg)                 before the run directory is touched or a model loads
    attach(ctx, model_dir)        after the policy loads, before the optimizer is built (reference model,
                                  value head: modules whose parameters the optimizer must see)
    prepare(run)                  the Run exists, before a resume restores it (LoRA, tokenising a dataset)
    load_state(state, torch_state) on resume, with what `state()` / `torch_state()` saved
    start(run)                    before the first step of this process (initial measurement or evaluation)
    step(run) -> StepResult       until `run.step == total_steps()` or `done(run)`; the loop counts the step
    finish(run) -> str            after the last step; text appended to the summary
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import torch

from rlreason.config import RunConfig
from rlreason.registry import ConfigError
from rlreason.types import Episode

if TYPE_CHECKING:
    from rlreason.trainer.loop import Run
    from rlreason.trainer.update import UpdateContext


@dataclass
class StepResult:
    """One step's metrics and the (example, episode group) pairs whose first transcripts go to
    samples.jsonl (`logging.log_samples` of them); a dataset method has none."""

    metrics: dict[str, float]
    samples: list[tuple[dict, list[Episode]]] = field(default_factory=list)


class Algorithm:
    """Base class of the loop's plug-ins; every hook but `step` has a default that does nothing."""

    name = ""
    unit = "step"  # what the progress bar counts
    reward_key = "reward/total"  # the metric the summary and the reward curve follow
    splits_train = True  # data.eval_size rows are held out of data.train when data.eval is not given

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def validate(self) -> None:
        """Refuse settings this method cannot train with (ConfigError naming the key)."""

    def total_steps(self) -> int:
        return self.cfg.trainer.steps

    def attach(self, ctx: UpdateContext, model_dir: str) -> None:
        """Add modules to the update context before the optimizer is built over its parameters."""

    def uses_reference_model(self) -> bool:
        """Whether `attach` loads a frozen reference model (the GPU memory check counts its weights)."""
        return False

    def trains_adapters_only(self) -> bool:
        """Whether only LoRA adapters train (the GPU memory check then counts no optimizer state)."""
        return False

    def prepare(self, run: Run) -> None:
        """Adapt the Run before a resume restores it (LoRA adapters, tokenised training rows)."""

    def start(self, run: Run) -> None:
        """Before the first step this process runs; by default the step-0 evaluation (`eval.every`)."""
        if self.cfg.eval.every and run.step == 0 and run.eval_rows:
            run.logger.log(0, self.evaluate(run))

    def step(self, run: Run) -> StepResult:
        raise NotImplementedError

    def done(self, run: Run) -> bool:
        """True ends the run before `total_steps()` (a curriculum's stop rule)."""
        return False

    def evaluate(self, run: Run) -> dict[str, float]:
        from rlreason.trainer.evaluate import evaluate
        e = run.cfg.eval
        return evaluate(run.engine, run.env, run.rubric, run.eval_rows, k=e.k, temperature=e.temperature,
                        seed=run.cfg.seed + 7)

    def engine_weights(self, run: Run) -> Iterable[tuple[str, torch.Tensor]]:
        """The weights the rollout engine generates with (LoRA merges its adapters here)."""
        return run.ctx.model.state_dict().items()

    def state(self) -> dict[str, Any]:
        """JSON-able state saved in the checkpoint's state.json (merged at its top level)."""
        return {}

    def torch_state(self, run: Run) -> dict[str, Any]:
        """Tensor state saved in the checkpoint's trainer.pt."""
        return {}

    def load_state(self, run: Run, state: dict[str, Any], torch_state: dict[str, Any]) -> None:
        """Restore what `state()` and `torch_state()` saved."""

    def finish(self, run: Run) -> str:
        """After the last step: final measurements, plots; returns text appended to the summary."""
        return ""


# algorithm name -> "module:class"; imported on use, so a method's dependencies load only when it trains.
ALGORITHMS = {
    "grpo": "rlreason.trainer.grpo:GRPO",
    "expert_iteration": "rlreason.trainer.expert_iteration:ExpertIteration",
    "sft": "rlreason.trainer.sft:SFT",
}


def make_algorithm(cfg: RunConfig) -> Algorithm:
    if cfg.algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm: '{cfg.algorithm}' is not allowed. Allowed: {', '.join(ALGORITHMS)}.")
    module, cls = ALGORITHMS[cfg.algorithm].split(":")
    return getattr(importlib.import_module(module), cls)(cfg)
