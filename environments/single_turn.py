"""One prompt, one answer: the simplest environment, and the template for writing your own."""

from __future__ import annotations

from rlreason.registry import ConfigError, register_environment
from rlreason.types import Environment, Episode, Policy, RowBound, Sample

DEFAULT_SYSTEM = None
DEFAULT_TEMPLATE = "{question}\nPut the final answer in \\boxed{{}}."


@register_environment("single_turn")
class SingleTurn(Environment):
    """Format the question, generate once, return one trained sample.

    `style="chat"` wraps the prompt in the model's chat template; `style="raw"` feeds it as plain
    text, which with a few-shot `template` is how a 135M model first produces parseable answers.
    The template is `str.format`ted with the example's columns (`{question}`, `{info[expression]}`)."""

    def __init__(self, tokenizer, *, template: str = DEFAULT_TEMPLATE, style: str = "chat",
                 system_prompt: str | None = DEFAULT_SYSTEM, max_tokens: int = 256,
                 stop: list[str] | None = None, transcript_prefix: str = "") -> None:
        super().__init__(tokenizer)
        if style not in ("chat", "raw"):
            raise ConfigError(f"env.args.style: '{style}' is not allowed. Allowed: chat, raw.")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ConfigError(f"env.args.max_tokens: must be an integer >= 1, got {max_tokens!r}.")
        if not isinstance(template, str):
            raise ConfigError(f"env.args.template: must be a string, got {template!r}.")
        if stop is not None and not (isinstance(stop, list) and all(isinstance(x, str) for x in stop)):
            raise ConfigError(f"env.args.stop: must be a list of strings or null, got {stop!r}.")
        self.template, self.style, self.system_prompt = template, style, system_prompt
        self.max_tokens, self.stop = max_tokens, stop
        # Text the prompt ends with that belongs to the answer (a raw prompt ending in "\boxed{"):
        # the reward must see it, so it is prepended to the transcript.
        self.transcript_prefix = transcript_prefix

    def prompt(self, example: dict) -> str | list[dict[str, str]]:
        text = self.template.format(**example)
        if self.style == "raw":
            return text
        sys = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return sys + [{"role": "user", "content": text}]

    def row_bound(self) -> RowBound:
        return RowBound(prompt_extra=0, response=self.max_tokens)

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        prompt_ids = self.encode_prompt(self.prompt(example))
        out = await policy.generate(prompt_ids, max_tokens=self.max_tokens, stop=self.stop)
        sample = Sample(prompt_ids, out.token_ids, out.logprobs, [1] * len(out.token_ids))
        return Episode([sample], transcript=self.transcript_prefix + self.decode(out.token_ids),
                       metrics={"response_tokens": len(out.token_ids),
                                "truncated": float(out.finish_reason == "length")})
