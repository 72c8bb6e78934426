"""Attention-head attribution for the refusal score (arXiv 2510.06036, sec. 4).

A Llama attention block concatenates its heads before the output projection, o_proj(concat_h z_h), so
scaling head h's slice of o_proj's input by s scales exactly that head's contribution to the residual
stream. One head at a time is scaled by 0.001 and the change of the probe's final-token score is
recorded:

    delta(b, h) = mean over traces [ score_final(head (b, h) x 0.001) - score_final(unchanged) ]

Heads with the largest positive delta suppress refusal (removing them raises it): the paper's
"refusal suppression heads"; ablating the top ~3% lowers attack success.

Heads are named (block, head) with block 0..N-1 the decoder layer. A probe at hidden-state layer l
reads the output of blocks 0..l-1, so only those heads can move its score.

For generation the same ablation is a weight edit, o_proj.weight[:, h*d:(h+1)*d] *= s (o_proj has no
bias in Llama), which a vLLM engine takes through `update_weights` without a restart.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import torch

from rlreason.probes.capture import states_at
from rlreason.probes.probe import LinearProbe

Head = tuple[int, int]  # (block, head)


def head_dim(model: Any) -> int:
    cfg = model.config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def o_proj(model: Any, block: int) -> torch.nn.Linear:
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    return backbone.layers[block].self_attn.o_proj


@contextlib.contextmanager
def scaled_heads(model: Any, heads: Iterable[Head], scale: float = 1e-3) -> Iterator[None]:
    """Scale the o_proj input slice of each (block, head) by `scale` while the context is open."""
    d = head_dim(model)
    by_block: dict[int, list[int]] = {}
    for b, h in heads:
        by_block.setdefault(b, []).append(h)
    handles = []
    for b, hs in by_block.items():
        def pre_hook(_m: Any, args: tuple, hs: list[int] = hs) -> tuple:
            x = args[0].clone()  # [B, T, n_heads * d]
            for h in hs:
                x[..., h * d:(h + 1) * d] *= scale
            return (x, *args[1:])
        handles.append(o_proj(model, b).register_forward_pre_hook(pre_hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ablated_weights(model: Any, heads: Iterable[Head], scale: float = 1e-3) -> dict[str, torch.Tensor]:
    """The model's full state dict with each head's o_proj input columns scaled (for weight sync)."""
    d = head_dim(model)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prefix = next(k for k in sd if k.endswith("layers.0.self_attn.o_proj.weight")).split("layers.0.")[0]
    for b, h in heads:
        sd[f"{prefix}layers.{b}.self_attn.o_proj.weight"][:, h * d:(h + 1) * d] *= scale
    return sd


def head_attribution(model: Any, probe: LinearProbe, layer: int, seqs: Sequence[Sequence[int]],
                     final_idxs: Sequence[int], *, scale: float = 1e-3, blocks: Sequence[int] | None = None,
                     progress: bool = False, **capture_kw: Any) -> list[dict[str, float]]:
    """delta of the mean final-token score for each head of `blocks` (default: every block the probe
    can see), sorted with the largest increase first."""
    n_blocks, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    blocks = list(range(min(layer, n_blocks))) if blocks is None else list(blocks)

    def final_scores() -> torch.Tensor:
        return probe.score(states_at(model, seqs, final_idxs, [layer], **capture_kw)[:, 0])

    with torch.no_grad():
        base = final_scores()
        rows = []
        items = [(b, h) for b in blocks for h in range(n_heads)]
        if progress:
            from tqdm import tqdm
            items = tqdm(items, desc="heads")
        for b, h in items:
            with scaled_heads(model, [(b, h)], scale):
                s = final_scores()
            rows.append({"block": b, "head": h, "delta": float((s - base).mean()),
                         "delta_std": float((s - base).std()) if len(s) > 1 else 0.0})
    rows.sort(key=lambda r: -r["delta"])
    return rows


def top_heads(ranking: list[dict], p: float, n_total: int) -> list[Head]:
    """The first round(p * n_total) heads of a ranking (at least one)."""
    k = max(1, round(p * n_total))
    return [(r["block"], r["head"]) for r in ranking[:k]]
