"""Delethink: reason in chunks of at most C tokens over a constant-size state (The Markovian Thinker,
arXiv 2510.06557, Algorithm 1). At each chunk boundary the context is reset to the query plus a short
carryover, so compute is linear in thinking length and memory is constant.

    x_1 = q                                      chunk 1 writes at most C tokens
    after chunk 1:  q <- q + y_1[:keep_head]     the start of the trace joins the query
    x_l = q + carry_l                            chunk l >= 2 writes at most C - m tokens
    carry_l = last (m - keep_head) tokens of (carry_{l-1} + y_{l-1}), with carry_1 = [] and y_1 read
              without its head; equivalently the last (m - keep_head) tokens of the thinking stream
              y_1[keep_head:] + y_2 + ... + y_{l-1}
    stop when a chunk ends with EOS (finish_reason "stop") or after I chunks.

Every context therefore holds at most |q| + C tokens: a state of keep_head + (m - keep_head) = m
tokens plus C - m new ones. The carry never repeats a head token: if chunk 1 stopped early without
EOS (an engine cap), the carry is what follows the head, so the prompt is q + y_1 (nothing deleted,
nothing doubled). This follows the paper's description (docs/methods.md); the reference code (McGill-NLP/the-markovian-thinker,
delethink_tracing_demo.py) instead carries the last m tokens of the newest chunk alone on top of the
head, a state of m + keep_head tokens.

Worked example, C = 8, m = 5, keep_head = 2 (carry of 3 tokens), q = [1, 2, 3]:
    chunk 1  prompt [1,2,3]                  writes [11,...,18] (8 tokens, no EOS)
    chunk 2  prompt [1,2,3, 11,12, 16,17,18] writes [21,22]     (asked for 3, stopped at 2)
    chunk 3  prompt [1,2,3, 11,12, 18,21,22] ...

`markovian` is `single_turn` inside the Delethink wrapper (rlreason/delethink.py), which composes the same
chunking with any environment from a config's `env.markovian`.
"""

from __future__ import annotations

from rlreason.delethink import (CARRYOVER, CHUNK_SIZE, KEEP_HEAD, MAX_CHUNKS, Markovian, check_delethink_args,
                                delethink_budget)
from rlreason.environments.single_turn import DEFAULT_SYSTEM, DEFAULT_TEMPLATE, SingleTurn
from rlreason.registry import register_environment
from rlreason.types import Episode, Policy, RowBound

__all__ = ["CARRYOVER", "CHUNK_SIZE", "KEEP_HEAD", "MAX_CHUNKS", "MarkovianThinking", "check_delethink_args",
           "delethink_budget"]


@register_environment("markovian")
class MarkovianThinking(Markovian):
    """One Sample per chunk (its own prompt, all response tokens trained), one reward per trace.

    The transcript the rewards read is the last chunk's carry + response decoded together, so an
    answer split across the boundary (`\\boxed{` carried over, `42}` new) is still found, and an answer
    the trace deleted is not read. Prompt formatting (`template`, `style`, `system_prompt`) is SingleTurn's."""

    def __init__(self, tokenizer, *, chunk_size: int = CHUNK_SIZE, carryover: int = CARRYOVER,
                 keep_head: int = KEEP_HEAD, max_chunks: int = MAX_CHUNKS,
                 template: str = DEFAULT_TEMPLATE, style: str = "chat",
                 system_prompt: str | None = DEFAULT_SYSTEM) -> None:
        check_delethink_args(chunk_size, carryover, keep_head, max_chunks)  # errors name env.args keys
        inner = SingleTurn(tokenizer, template=template, style=style, system_prompt=system_prompt,
                           max_tokens=chunk_size)
        super().__init__(inner, chunk_size=chunk_size, carryover=carryover, keep_head=keep_head,
                         max_chunks=max_chunks, key="env.args")

    def row_bound(self) -> RowBound:
        """single_turn injects nothing: chunk l >= 2 sees q + head + carry = |q| + m tokens and writes
        <= C - m; chunk 1 writes <= C."""
        return RowBound(prompt_extra=self.m, response=self.C)

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        trace = self.tracer(policy)
        await self.inner.rollout(example, trace)  # its transcript (every chunk) is replaced below
        return Episode(trace.samples, transcript=self.decode(trace.last_state), metrics=trace.metrics())
