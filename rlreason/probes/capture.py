"""Hidden states at every token position, at chosen layers, in bounded memory.

Layer numbering follows transformers' `output_hidden_states`: layer 0 is the embedding output, layer l
(1 <= l < N) the output of decoder block l, and layer N the final-norm output (what the LM head reads).

Why not `output_hidden_states=True`: it keeps every layer for every position, runs the LM head (a
[T, vocab] logits tensor, 49k floats per token for SmolLM2) and attends over the whole sequence at
once. Here forward hooks copy only the chosen layers, the forward stops after the deepest chosen block,
the LM head never runs, and a long sequence goes through in `chunk_len` pieces with a KV cache, so the
attention and activation memory are bounded by chunk_len x length instead of length^2.

Batching uses RIGHT padding: real tokens keep positions 0..T-1 and, under the causal mask, never attend
to the pads after them, so row b's first len(seq_b) states equal the unpadded forward of seq_b (the
reference code read a fixed column under left padding, i.e. the wrong token for shorter prompts).
Sequences are sorted by length so a batch carries little padding.

Output is streamed as `Chunk(index, start, states[n_layers, t, H])` pieces in the coordinates of the
unpadded sequence; consumers that need whole tensors use `capture()`, those that only need a score per
position (the cliff) or one position (the probe features) reduce each chunk as it comes.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch


@dataclass
class Chunk:
    index: int             # which input sequence
    start: int             # position of states[:, 0] in that (unpadded) sequence
    states: torch.Tensor   # [n_layers, t, H], layers in the order asked for


class _Stop(Exception):
    """Raised by the hook of the deepest wanted block: nothing after it is needed."""


def num_layers(model: Any) -> int:
    return model.config.num_hidden_layers


def resolve_layers(spec: str | int | Sequence[int], n_layers: int) -> list[int]:
    """'all' -> 0..N, 'last' -> [N], '3,-1' -> [3, N]; negative indices count from N+1 like a list."""
    if isinstance(spec, int):
        items = [spec]
    elif isinstance(spec, str):
        if spec == "all":
            return list(range(n_layers + 1))
        if spec == "last":
            return [n_layers]
        items = [int(x) for x in spec.split(",") if x.strip()]
    else:
        items = list(spec)
    out = [x + n_layers + 1 if x < 0 else x for x in items]
    bad = [x for x in items if not -(n_layers + 1) <= x <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: this model has hidden states 0..{n_layers}")
    return out


def _hook_points(model: Any) -> tuple[Any, dict[int, torch.nn.Module]]:
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    points = {0: backbone.embed_tokens, len(backbone.layers): backbone.norm}
    points.update({l: backbone.layers[l - 1] for l in range(1, len(backbone.layers))})
    return backbone, points


@contextlib.contextmanager
def _recording(model: Any, layers: list[int]) -> Iterator[tuple[Any, dict[int, torch.Tensor]]]:
    backbone, points = _hook_points(model)
    got: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []
    for l in sorted(set(layers)):
        def hook(_m: Any, _inp: Any, out: Any, l: int = l) -> None:
            got[l] = out[0] if isinstance(out, tuple) else out
            if l == deepest and l < len(backbone.layers):
                raise _Stop
        handles.append(points[l].register_forward_hook(hook))
    try:
        yield backbone, got
    finally:
        for h in handles:
            h.remove()


def _batches(order: list[int], lengths: list[int], max_batch_tokens: int, chunk_len: int) -> Iterator[list[int]]:
    """Consecutive groups of `order` (longest first) with batch * min(longest, chunk_len) <= budget."""
    batch: list[int] = []
    for i in order:
        width = min(lengths[batch[0] if batch else i], chunk_len)
        if batch and (len(batch) + 1) * width > max_batch_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


@torch.inference_mode()
def iter_chunks(model: Any, seqs: Sequence[Sequence[int]], layers: Sequence[int], *,
                max_batch_tokens: int = 4096, chunk_len: int = 512, pad_id: int = 0,
                out_dtype: torch.dtype = torch.float32) -> Iterator[Chunk]:
    """Stream hidden states of `layers` for every position of every sequence (see module doc)."""
    from transformers import DynamicCache

    layers = list(layers)
    if not layers:
        raise ValueError("iter_chunks: no layers asked for")
    lengths = [len(s) for s in seqs]
    if min(lengths, default=1) == 0:
        raise ValueError("iter_chunks: empty sequence")
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -lengths[i])
    with _recording(model, layers) as (backbone, got):
        for batch in _batches(order, lengths, max_batch_tokens, chunk_len):
            B, T = len(batch), lengths[batch[0]]
            ids = torch.full((B, T), pad_id, dtype=torch.long)
            mask = torch.zeros((B, T), dtype=torch.long)
            for b, i in enumerate(batch):  # right padding: real tokens at columns 0..len-1
                ids[b, :lengths[i]] = torch.as_tensor(list(seqs[i]), dtype=torch.long)
                mask[b, :lengths[i]] = 1
            ids, mask = ids.to(device), mask.to(device)
            cache = DynamicCache() if T > chunk_len else None
            for s in range(0, T, chunk_len):
                e = min(T, s + chunk_len)
                got.clear()
                pos = torch.arange(s, e, device=device).expand(B, -1)
                try:
                    backbone(input_ids=ids[:, s:e], attention_mask=mask[:, :e], position_ids=pos,
                             past_key_values=cache, use_cache=cache is not None)
                except _Stop:
                    pass
                states = torch.stack([got[l] for l in layers], dim=1)  # [B, n_layers, e-s, H]
                for b, i in enumerate(batch):
                    t = min(e, lengths[i]) - s
                    if t > 0:
                        yield Chunk(i, s, states[b, :, :t].to(out_dtype))


def capture(model: Any, seqs: Sequence[Sequence[int]], layers: Sequence[int], **kw: Any) -> list[torch.Tensor]:
    """Whole tensors [n_layers, T_i, H], one per sequence, in input order (small inputs, tests)."""
    parts: list[list[Chunk]] = [[] for _ in seqs]
    for c in iter_chunks(model, seqs, layers, **kw):
        parts[c.index].append(c)
    return [torch.cat([c.states for c in sorted(p, key=lambda c: c.start)], dim=1) for p in parts]


def states_at(model: Any, seqs: Sequence[Sequence[int]], positions: Sequence[int], layers: Sequence[int],
              **kw: Any) -> torch.Tensor:
    """[N, n_layers, H]: the states at one position per sequence (the probe's features). Tokens after
    that position cannot influence it under the causal mask, so they are not run."""
    feats: list[torch.Tensor | None] = [None] * len(seqs)
    cut = [list(s[:p + 1]) for s, p in zip(seqs, positions)]
    for c in iter_chunks(model, cut, layers, **kw):
        k = positions[c.index] - c.start
        if 0 <= k < c.states.shape[1]:
            feats[c.index] = c.states[:, k]
    return torch.stack(feats)  # type: ignore[arg-type]
