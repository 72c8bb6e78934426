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
"""

from __future__ import annotations

from environments.single_turn import DEFAULT_SYSTEM, DEFAULT_TEMPLATE, SingleTurn
from rlreason.registry import ConfigError, register_environment
from rlreason.types import Episode, Policy, RowBound, Sample

# The paper's 24K setting: C = 8192, m = C/2, I = 5 (I = 23 gives 96K); the first 100 tokens are kept.
CHUNK_SIZE, CARRYOVER, KEEP_HEAD, MAX_CHUNKS = 8192, 4096, 100, 5


def delethink_budget(chunk_size: int, carryover: int, max_chunks: int) -> int:
    """Most tokens one trace can generate: C + (I - 1)(C - m)."""
    return chunk_size + (max_chunks - 1) * (chunk_size - carryover)


def check_delethink_args(chunk_size: int, carryover: int, keep_head: int, max_chunks: int) -> None:
    """0 < keep_head < carryover < chunk_size and max_chunks >= 1; each error names its env.args key."""
    for key, v in (("chunk_size", chunk_size), ("carryover", carryover), ("keep_head", keep_head),
                   ("max_chunks", max_chunks)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"env.args.{key}: must be an integer, got {v!r}.")
    if not 0 < keep_head < carryover:
        raise ConfigError(f"env.args.keep_head: must satisfy 0 < keep_head < carryover (the head is part "
                          f"of the m-token state), got keep_head={keep_head}, carryover={carryover}.")
    if not carryover < chunk_size:
        raise ConfigError(f"env.args.carryover: must be < chunk_size (later chunks write chunk_size - "
                          f"carryover tokens), got carryover={carryover}, chunk_size={chunk_size}.")
    if max_chunks < 1:
        raise ConfigError(f"env.args.max_chunks: must be >= 1, got {max_chunks}.")


@register_environment("markovian")
class MarkovianThinking(SingleTurn):
    """One Sample per chunk (its own prompt, all response tokens trained), one reward per trace.

    The transcript the rewards read is the last chunk's carry + response decoded together, so an
    answer split across the boundary (`\\boxed{` carried over, `42}` new) is still found. Prompt
    formatting (`template`, `style`, `system_prompt`) is SingleTurn's."""

    def __init__(self, tokenizer, *, chunk_size: int = CHUNK_SIZE, carryover: int = CARRYOVER,
                 keep_head: int = KEEP_HEAD, max_chunks: int = MAX_CHUNKS,
                 template: str = DEFAULT_TEMPLATE, style: str = "chat",
                 system_prompt: str | None = DEFAULT_SYSTEM) -> None:
        check_delethink_args(chunk_size, carryover, keep_head, max_chunks)
        # max_tokens = C: the most any single generate call asks for.
        super().__init__(tokenizer, template=template, style=style, system_prompt=system_prompt,
                         max_tokens=chunk_size)
        self.C, self.m, self.keep_head, self.I = chunk_size, carryover, keep_head, max_chunks

    def budget(self) -> int:
        return delethink_budget(self.C, self.m, self.I)

    def row_bound(self) -> RowBound:
        """Chunk l >= 2 sees q + head + carry = |q| + m tokens and writes <= C - m; chunk 1 writes <= C."""
        return RowBound(prompt_extra=self.m, response=self.C)

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        q = self.encode_prompt(self.prompt(example))
        samples: list[Sample] = []
        carry: list[int] = []
        for l in range(1, self.I + 1):
            x = q + carry
            out = await policy.generate(x, max_tokens=self.C if l == 1 else self.C - self.m)
            y = out.token_ids
            samples.append(Sample(x, y, out.logprobs, [1] * len(y)))
            final_text_ids = carry + y  # what the reward reads if this chunk is the last
            if out.finish_reason == "stop":
                break
            if l == 1:  # fold the head into the query; the carry is drawn from what follows it
                q, y = q + y[:self.keep_head], y[self.keep_head:]
            carry = (carry + y)[-(self.m - self.keep_head):]
        return Episode(samples, transcript=self.decode(final_text_ids),
                       metrics={"chunks": float(len(samples)),
                                "thinking_tokens": float(sum(len(s.response_ids) for s in samples)),
                                "ended_by_eos": float(out.finish_reason == "stop")})
