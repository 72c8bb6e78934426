"""The peer workload the engine benchmarks share: SmolLM2-135M-Instruct, 8 chat prompts x 4 samples x 128 new
tokens (EOS ignored, so every sample is 128 tokens), and how an interleaved A/B of it is summarised."""

from __future__ import annotations

import time
from typing import Any

PROMPTS, SAMPLES, NEW_TOKENS = 8, 4, 128
MAX_MODEL_LEN = 512
KV_CACHE_GB = 0.5  # the workload holds ~32 x 260 tokens x 23 KB = 0.2 GB of KV
QUESTIONS = [f"Explain step by step how to compute {a} + {b}." for a, b in
             [(3, 5), (12, 7), (21, 4), (8, 9), (15, 15), (6, 30), (44, 2), (9, 1)]]


def model_and_prompts() -> tuple[str, Any, list[list[int]]]:
    """(fp32 model dir, tokenizer, the PROMPTS chat prompts as token ids)."""
    from transformers import AutoTokenizer

    from rlreason.models import resolve_model
    d = resolve_model("smollm2-135m-instruct", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(d)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for q in QUESTIONS]
    return d, tok, prompts


def vllm_engine(model_dir: str, tok: Any, **overrides: Any) -> Any:
    """The vLLM engine the CPU A/B benchmarks time: the workload's sampling (temperature 1, EOS ignored), context
    and KV cache; `overrides` are VLLMEngine arguments (the variant under test)."""
    from rlreason.rollout import SamplingConfig
    from rlreason.rollout.vllm_engine import VLLMEngine
    return VLLMEngine(model_dir, tokenizer=tok, sampling=SamplingConfig(temperature=1.0, ignore_eos=True),
                      max_model_len=MAX_MODEL_LEN, kv_cache_gb=KV_CACHE_GB, seed=0, **overrides)


def engine_tok_s(eng: Any, prompts: list[list[int]], seed: int) -> float:
    """Generated tokens per second of one generate_batch of the workload."""
    t = time.perf_counter()
    outs = eng.generate_batch(prompts, n=SAMPLES, max_tokens=NEW_TOKENS, seed=seed)
    return sum(len(c.token_ids) for g in outs for c in g) / (time.perf_counter() - t)


def median(xs: list[float]) -> float:
    r = sorted(xs)
    return (r[(len(r) - 1) // 2] + r[len(r) // 2]) / 2


def pair_ratios(base: list[float], ours: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of the per-pair ratios ours/base of interleaved runs."""
    r = [o / b for b, o in zip(base, ours)]
    return median(r), min(r), max(r)


def update_rows() -> list:
    """The update benchmarks' batch (update_step.py, update_levers.py): 32 rows = 8 prompts x 4 samples, prompts
    of 80-200 random tokens, 128-token responses, advantages +-1, seeded (the time does not depend on the ids)."""
    import random

    from rlreason.trainer.batch import Row
    rng = random.Random(0)
    rows = []
    for i in range(32):
        if i % 4 == 0:
            prompt = [rng.randrange(100, 40_000) for _ in range(rng.randint(80, 200))]
        rows.append(Row(prompt, [rng.randrange(100, 40_000) for _ in range(128)], [-2.0] * 128, [1] * 128,
                        rng.choice([-1.0, 1.0]), i, i // 4))
    return rows
