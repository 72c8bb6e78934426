"""What every rollout engine provides. Episodes are coroutines; the engine's pump advances all
in-flight requests together (continuous batching), so a multi-turn episode waiting on a tool call
never stalls the others."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Awaitable, Iterable, Sequence

import torch

from rlreason.types import Completion


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    ignore_eos: bool = False  # benchmarks force a length; training never sets it


class EnginePolicy:
    """The `Policy` handed to one episode. Each call gets a seed derived from the episode's seed and
    the call index, so rollouts are reproducible whatever order the engine schedules them in (this
    is what makes `--resume` exact)."""

    def __init__(self, engine: "Engine", seed: int | None, sampling: SamplingConfig | None = None) -> None:
        self.engine = engine
        self.seed = seed
        self.sampling = sampling or engine.sampling
        self.calls = 0
        self.tokenizer = engine.tokenizer

    async def generate(self, prompt_ids: list[int], *, max_tokens: int,
                       stop: list[str] | None = None) -> Completion:
        seed = None if self.seed is None else (self.seed * 1_000_003 + self.calls) % (2**31 - 1)
        self.calls += 1
        if max_tokens <= 0:
            return Completion([], [], "length", "")
        room = self.engine.max_model_len - len(prompt_ids)
        if room <= 0:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit max_model_len="
                             f"{self.engine.max_model_len} (rollout.max_model_len)")
        return await self.engine.generate(prompt_ids, max_tokens=min(max_tokens, room), stop=stop, seed=seed,
                                          sampling=self.sampling)


class Engine(ABC):
    tokenizer: Any
    max_model_len: int
    sampling: SamplingConfig

    def policy(self, seed: int | None = None, sampling: SamplingConfig | None = None) -> EnginePolicy:
        return EnginePolicy(self, seed, sampling)

    @abstractmethod
    async def generate(self, prompt_ids: list[int], *, max_tokens: int, stop: list[str] | None,
                       seed: int | None, sampling: SamplingConfig) -> Completion: ...

    @abstractmethod
    async def _pump(self) -> None:
        """Advance in-flight requests forever; cancelled when the episodes are done."""

    def run(self, coros: Sequence[Awaitable[Any]]) -> list[Any]:
        """Drive episode coroutines to completion concurrently; exceptions propagate."""

        async def main() -> list[Any]:
            pump = asyncio.create_task(self._pump())
            try:
                tasks = [asyncio.ensure_future(c) for c in coros]
                done = asyncio.gather(*tasks)
                # If the pump dies (engine error), fail the episodes instead of hanging.
                finished, _ = await asyncio.wait({done, pump}, return_when=asyncio.FIRST_COMPLETED)
                if pump in finished:
                    for t in tasks:
                        t.cancel()
                    pump.result()
                    raise RuntimeError("rollout engine pump stopped unexpectedly")
                return done.result()
            finally:
                pump.cancel()
                try:
                    await pump
                except (asyncio.CancelledError, Exception):
                    pass
        return asyncio.run(main())

    def generate_batch(self, prompts: list[list[int]], *, n: int, max_tokens: int,
                       stop: list[str] | None = None, seed: int | None = None) -> list[list[Completion]]:
        """n samples for each prompt (evaluation, benchmarks); prefix caching shares the prompt."""
        async def one(i: int, j: int) -> Completion:
            s = None if seed is None else seed + i * 7919 + j
            return await self.policy(s).generate(prompts[i], max_tokens=max_tokens, stop=stop)
        flat = self.run([one(i, j) for i in range(len(prompts)) for j in range(n)])
        return [flat[i * n:(i + 1) * n] for i in range(len(prompts))]

    def sleep(self) -> None:
        """Free the accelerator memory the engine holds (weights, KV cache) for the policy update; the next
        `update_weights` brings it back. A no-op for engines with nothing to free (CPU, the HF engine, which
        generates with the trainer's own model)."""

    @abstractmethod
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load new policy weights in place (no restart, no disk round trip where possible); wakes a
        sleeping engine."""

    def close(self) -> None:
        pass
