"""rlreason: reinforcement learning for LLM reasoners (docs/architecture.md describes the layers)."""

from rlreason.registry import register_environment, register_reward
from rlreason.types import Completion, Environment, Episode, Policy, Sample

__all__ = ["Completion", "Environment", "Episode", "Policy", "Sample", "register_environment",
           "register_reward"]
__version__ = "0.1.0"
