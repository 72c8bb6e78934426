"""Plain transformers generation: the fallback engine and the one unit tests use with the tiny model.

It shares the trainer's model object, so a weight sync is free. Its sampling loop is written out
(rather than `model.generate`) to give each request its own seeded generator, the same processed
logprobs as vLLM (log-softmax of logits / temperature) and the same stop-string rule."""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

import torch

from rlreason.rollout.base import Engine, SamplingConfig
from rlreason.types import Completion


class _Request:
    def __init__(self, prompt_ids: list[int], max_tokens: int, stop: list[str] | None, seed: int | None,
                 sampling: SamplingConfig, fut: asyncio.Future) -> None:
        self.prompt_ids, self.max_tokens, self.stop, self.fut = prompt_ids, max_tokens, stop or [], fut
        self.sampling = sampling
        self.gen = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**31)
        self.token_ids: list[int] = []
        self.logprobs: list[float] = []
        self.finish: str | None = None


class HFEngine(Engine):
    def __init__(self, model: torch.nn.Module, *, tokenizer: Any, sampling: SamplingConfig,
                 max_model_len: int = 2048, max_batch: int = 64) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_model_len = max_model_len
        self.max_batch = max_batch
        eos = getattr(model.generation_config, "eos_token_id", None) or tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        self._pending: list[_Request] = []
        self._wake: asyncio.Event | None = None

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, stop: list[str] | None,
                       seed: int | None, sampling: SamplingConfig) -> Completion:
        fut = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(prompt_ids), max_tokens, stop, seed, sampling, fut))
        if self._wake is not None:
            self._wake.set()
        r = await fut
        return Completion(r.token_ids, r.logprobs, r.finish, self.tokenizer.decode(r.token_ids))

    async def _pump(self) -> None:
        self._wake = asyncio.Event()
        while True:
            await asyncio.sleep(0)  # collect every request the ready episodes are about to make
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
            self._generate(batch)
            for r in batch:
                r.fut.set_result(r)

    @torch.no_grad()
    def _generate(self, reqs: list[_Request]) -> None:
        dev = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        B = len(reqs)
        L = max(len(r.prompt_ids) for r in reqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((B, L), pad, dtype=torch.long)
        attn = torch.zeros((B, L), dtype=torch.long)
        for i, r in enumerate(reqs):  # left padding: every row's next token sits at the same column
            ids[i, L - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            attn[i, L - len(r.prompt_ids):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        past = None
        step_ids = ids
        active = list(range(B))
        for _ in range(max(r.max_tokens for r in reqs)):
            pos = (attn.cumsum(-1) - 1).clamp(min=0)[:, -step_ids.shape[1]:]
            out = self.model(input_ids=step_ids, attention_mask=attn, position_ids=pos,
                             past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1, :].float()
            nxt = torch.full((B,), pad, dtype=torch.long)
            for i in list(active):
                r = reqs[i]
                T = r.sampling.temperature
                logp = torch.log_softmax(logits[i] / T if T > 0 else logits[i], -1).cpu()
                logp = _top_p_filter(logp, r.sampling.top_p)
                tok = int(torch.argmax(logp)) if T == 0 else int(torch.multinomial(logp.exp(), 1, generator=r.gen))
                r.token_ids.append(tok)
                r.logprobs.append(float(logp[tok]))
                nxt[i] = tok
                if (tok in self.eos_ids and not r.sampling.ignore_eos) or self._hit_stop(r):
                    r.finish = "stop"
                elif len(r.token_ids) >= r.max_tokens:
                    r.finish = "length"
                if r.finish:
                    active.remove(i)
            if not active:
                break
            step_ids = nxt.unsqueeze(1).to(dev)
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=dev)], dim=1)
        self.model.train(was_training)

    def _hit_stop(self, r: _Request) -> bool:
        if not r.stop:
            return False
        tail = self.tokenizer.decode(r.token_ids[-16:])
        return any(s in tail for s in r.stop)

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """The engine generates with the trainer's own module: nothing to copy."""


def _top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering, renormalised, so the returned logprob is that of the sampled distribution."""
    if top_p >= 1.0:
        return logp
    sorted_lp, idx = torch.sort(logp, descending=True)
    keep = sorted_lp.exp().cumsum(-1) - sorted_lp.exp() < top_p
    filtered = torch.full_like(logp, float("-inf"))
    filtered[idx[keep]] = logp[idx[keep]]
    return torch.log_softmax(filtered, -1)
