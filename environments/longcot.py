"""LongCoT, the baseline Delethink is compared with (arXiv 2510.06557): one context that keeps every
thinking token, with the same total budget C + (I - 1)(C - m) as a Markovian trace, so the two differ
only in what the policy sees, not in how much it may write."""

from __future__ import annotations

from rlreason.environments.markovian import (CARRYOVER, CHUNK_SIZE, KEEP_HEAD, MAX_CHUNKS, check_delethink_args,
                                    delethink_budget)
from rlreason.environments.single_turn import DEFAULT_SYSTEM, DEFAULT_TEMPLATE, SingleTurn
from rlreason.registry import ConfigError, register_environment
from rlreason.types import Episode, Policy


@register_environment("longcot")
class LongCoT(SingleTurn):
    """Takes the same args as `markovian` (keep_head is accepted so one config can switch env.name),
    or an explicit `max_tokens`; one Sample. Reports the same metrics as `markovian` (chunks = 1)."""

    def __init__(self, tokenizer, *, chunk_size: int = CHUNK_SIZE, carryover: int = CARRYOVER,
                 keep_head: int = KEEP_HEAD, max_chunks: int = MAX_CHUNKS, max_tokens: int | None = None,
                 template: str = DEFAULT_TEMPLATE, style: str = "chat",
                 system_prompt: str | None = DEFAULT_SYSTEM) -> None:
        check_delethink_args(chunk_size, carryover, keep_head, max_chunks)
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise ConfigError(f"env.args.max_tokens: must be a positive integer or null (null = "
                              f"C + (I-1)(C-m) from chunk_size, carryover, max_chunks), got {max_tokens!r}.")
        budget = delethink_budget(chunk_size, carryover, max_chunks) if max_tokens is None else max_tokens
        super().__init__(tokenizer, template=template, style=style, system_prompt=system_prompt,
                         max_tokens=budget)

    def budget(self) -> int:
        return self.max_tokens

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        ep = await super().rollout(example, policy)
        ep.metrics.update(chunks=1.0, thinking_tokens=float(ep.metrics["response_tokens"]),
                          ended_by_eos=1.0 - ep.metrics["truncated"])
        return ep
