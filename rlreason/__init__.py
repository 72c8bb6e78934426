"""rlreason: reinforcement learning for LLM reasoners (docs/architecture.md describes the layers)."""

from pathlib import Path as _Path

from rlreason import _checkout
from rlreason.registry import register_environment, register_reward
from rlreason.types import Completion, Environment, Episode, Policy, Sample

__all__ = ["Completion", "Environment", "Episode", "Policy", "Sample", "register_environment",
           "register_reward"]
__version__ = "0.1.0"

_checkout.install(_Path(__file__).resolve().parent)  # rlreason.environments/.rewards from a source checkout
