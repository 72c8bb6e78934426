"""Rollout engines behind the `Policy` handle: vLLM (default) and HF transformers (fallback, tests)."""

from __future__ import annotations

from typing import Any

import torch

from rlreason.rollout.base import Engine, EnginePolicy, SamplingConfig

__all__ = ["Engine", "EnginePolicy", "SamplingConfig", "make_engine"]


def make_engine(kind: str, *, model_dir: str, model: torch.nn.Module | None, tokenizer: Any,
                sampling: SamplingConfig, dtype: str, max_model_len: int, kv_cache_gb: float,
                gpu_memory_utilization: float, enable_prefix_caching: bool, seed: int,
                sleep_mode: bool = True) -> Engine:
    if kind == "vllm":
        from rlreason.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model_dir, tokenizer=tokenizer, sampling=sampling, dtype=dtype,
                          max_model_len=max_model_len, kv_cache_gb=kv_cache_gb,
                          gpu_memory_utilization=gpu_memory_utilization,
                          enable_prefix_caching=enable_prefix_caching, seed=seed, sleep_mode=sleep_mode)
    if kind == "hf":
        from rlreason.rollout.hf_engine import HFEngine
        if model is None:
            raise ValueError("the hf engine generates with the trainer's model; pass it")
        return HFEngine(model, tokenizer=tokenizer, sampling=sampling, max_model_len=max_model_len)
    from rlreason.registry import ConfigError
    raise ConfigError(f"rollout.engine: unknown engine '{kind}'. Allowed: vllm, hf.")
