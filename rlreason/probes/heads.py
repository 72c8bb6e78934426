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

Exact attribution costs one forward per head (336 for a 24-block, 14-head model). `head_attribution_linear`
estimates every delta at once from one forward and backward per trace (attribution patching): with
z_bh the head's slice of o_proj's input at every position t,

    delta_lin(b, h) = (s - 1) * sum_t  d score_final / d z_bh[t]  .  z_bh[t]

the first-order change of the score when z_bh is scaled by s. `rerank` then measures the best-estimated
heads exactly, so the heads that get ablated are ranked by their real delta.

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


@contextlib.contextmanager
def ablated_in_place(model: Any, heads: Iterable[Head], scale: float = 1e-3) -> Iterator[None]:
    """The weight edit of `ablated_weights` made on the model itself while the context is open (only the
    touched blocks' o_proj weights are copied, to restore them): for pushing into an engine without
    holding two more copies of every weight."""
    d = head_dim(model)
    saved: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for b, h in heads:
            w = o_proj(model, b).weight
            if b not in saved:
                saved[b] = w.detach().clone()
            w[:, h * d:(h + 1) * d] *= scale
    try:
        yield
    finally:
        with torch.no_grad():
            for b, w in saved.items():
                o_proj(model, b).weight.copy_(w)


def head_attribution(model: Any, probe: LinearProbe, layer: int, seqs: Sequence[Sequence[int]],
                     final_idxs: Sequence[int], *, scale: float = 1e-3, blocks: Sequence[int] | None = None,
                     heads: Sequence[Head] | None = None, progress: bool = False,
                     **capture_kw: Any) -> list[dict[str, float]]:
    """delta of the mean final-token score for each head of `blocks` (default: every block the probe
    can see) or for the listed `heads`, sorted with the largest increase first."""
    n_blocks, n_heads = model.config.num_hidden_layers, model.config.num_attention_heads
    blocks = list(range(min(layer, n_blocks))) if blocks is None else list(blocks)

    def final_scores() -> torch.Tensor:
        return probe.score(states_at(model, seqs, final_idxs, [layer], **capture_kw)[:, 0])

    with torch.no_grad():
        base = final_scores()
        rows = []
        items = [(b, h) for b in blocks for h in range(n_heads)] if heads is None else [tuple(x) for x in heads]
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


def head_attribution_linear(model: Any, probe: LinearProbe, layer: int, seqs: Sequence[Sequence[int]],
                            final_idxs: Sequence[int], *, scale: float = 1e-3) -> list[dict[str, float]]:
    """First-order estimate `delta_lin` of every visible head's delta (module doc), mean over the
    sequences (one forward + backward each, up to the final token), sorted largest first. Parameter
    gradients are not computed: autograd is asked for the o_proj inputs only."""
    n_blocks, n_heads, d = model.config.num_hidden_layers, model.config.num_attention_heads, head_dim(model)
    blocks = list(range(min(layer, n_blocks)))
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    total = torch.zeros(len(blocks), n_heads, dtype=torch.float64)
    per_seq = []
    for seq, f in zip(seqs, final_idxs):
        seen: dict[int, torch.Tensor] = {}

        def pre_hook(_m: Any, args: tuple, b: int) -> None:
            seen[b] = args[0]

        handles = [o_proj(model, b).register_forward_pre_hook(lambda m, a, b=b: pre_hook(m, a, b)) for b in blocks]
        try:
            with torch.enable_grad():
                ids = torch.as_tensor([list(seq[:f + 1])], device=next(model.parameters()).device)
                emb = backbone.get_input_embeddings()(ids).detach().requires_grad_(True)
                hs = backbone(inputs_embeds=emb, output_hidden_states=True, use_cache=False).hidden_states
                score = probe.score(hs[layer][0, -1])
                grads = torch.autograd.grad(score, [seen[b] for b in blocks])
        finally:
            for h in handles:
                h.remove()
        est = torch.stack([(g.double() * seen[b].detach().double())[0].reshape(-1, n_heads, d).sum((0, 2))
                           for b, g in zip(blocks, grads)]) * (scale - 1.0)
        per_seq.append(est)
        total += est
    est = torch.stack(per_seq)  # [n_seqs, blocks, heads]
    mean = est.mean(0)
    std = est.std(0) if len(per_seq) > 1 else torch.zeros_like(mean)
    rows = [{"block": b, "head": h, "delta_lin": float(mean[k, h]), "delta_lin_std": float(std[k, h])}
            for k, b in enumerate(blocks) for h in range(n_heads)]
    rows.sort(key=lambda r: -r["delta_lin"])
    return rows


def rerank_exact(model: Any, probe: LinearProbe, layer: int, seqs: Sequence[Sequence[int]],
                 final_idxs: Sequence[int], linear: list[dict[str, float]], k: int, *, scale: float = 1e-3,
                 progress: bool = False, **capture_kw: Any) -> list[dict[str, float]]:
    """The first k heads of a linear ranking measured exactly (`head_attribution`) and sorted by their
    real delta, followed by the rest in linear order (without `delta`)."""
    exact = head_attribution(model, probe, layer, seqs, final_idxs, scale=scale,
                             heads=[(r["block"], r["head"]) for r in linear[:k]], progress=progress, **capture_kw)
    lin = {(r["block"], r["head"]): r for r in linear}
    top = [{**lin[(r["block"], r["head"])], **r} for r in exact]
    return top + [dict(r) for r in linear[k:]]


def top_heads(ranking: list[dict], p: float, n_total: int) -> list[Head]:
    """The first round(p * n_total) heads of a ranking (at least one)."""
    k = max(1, round(p * n_total))
    return [(r["block"], r["head"]) for r in ranking[:k]]
