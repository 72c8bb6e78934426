"""Refusal score at every position, cliff size per trace, and the cliff plot (arXiv 2510.06036, sec. 3).

    score_t   = probe(h_t) at the probe's layer, for every token t of the trace
    cliff     = max_{t in thinking} score_t - score_{final}      (final = last token of "</think>")
    curve     = score over [first thinking token, final token], linearly resampled to 100 points, so
                every trace is aligned at its final token (point 99) and its first thinking token (0)

A positive cliff means the model's refusal intent during thinking was higher than at the moment it
starts answering; the paper finds large cliffs on harmful prompts that the model then answers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import torch

from rlreason.probes.capture import iter_chunks
from rlreason.probes.probe import LinearProbe


def score_positions(model: Any, probe: LinearProbe, layer: int, seqs: Sequence[Sequence[int]],
                    **capture_kw: Any) -> list[torch.Tensor]:
    """[T_i] refusal scores per sequence; states are reduced chunk by chunk, never all held."""
    return score_positions_many(model, [(probe, layer)], seqs, **capture_kw)[0]


def score_positions_many(model: Any, probes: Sequence[tuple[LinearProbe, int]], seqs: Sequence[Sequence[int]],
                         **capture_kw: Any) -> list[list[torch.Tensor]]:
    """Several probes (each at its own layer) over the same sequences in one forward pass, which runs
    to the deepest of their layers: out[k][i] = scores of probe k on sequence i."""
    layers = sorted({layer for _, layer in probes})
    scores = [[torch.empty(len(s)) for s in seqs] for _ in probes]
    with torch.no_grad():
        for c in iter_chunks(model, seqs, layers, **capture_kw):
            for k, (probe, layer) in enumerate(probes):
                scores[k][c.index][c.start:c.start + c.states.shape[1]] = probe.score(c.states[layers.index(layer)])
    return scores


def cliff_size(scores: torch.Tensor, think_start: int, think_end: int, final_idx: int) -> float:
    """max over the thinking span [think_start, think_end) minus the final-token score; NaN when the
    model wrote no thinking (there is no span to take a maximum over)."""
    if think_end <= think_start:
        return float("nan")
    return float(scores[think_start:think_end].max() - scores[final_idx])


def right_aligned_curve(scores: torch.Tensor, start: int, final_idx: int, n: int = 100) -> torch.Tensor:
    """scores[start..final_idx] resampled to n points (linear; endpoints kept exactly)."""
    span = scores[start:final_idx + 1].float()
    if span.numel() == 1:
        return span.expand(n).clone()
    return torch.nn.functional.interpolate(span[None, None], size=n, mode="linear", align_corners=True)[0, 0]


def trace_cliff(trace: dict, scores: torch.Tensor, n_points: int = 100) -> dict[str, Any]:
    """Per-trace numbers saved by `rlreason probe score`."""
    p, te, f = trace["prompt_len"], trace["think_end"], trace["final_idx"]
    think = scores[p:te]
    return {"id": trace["id"], "harmful": trace["harmful"], "refused": trace["refused"],
            "cliff": cliff_size(scores, p, te, f),
            "think_max": float(think.max()) if think.numel() else float("nan"),
            "final_score": float(scores[f]), "prompt_last_score": float(scores[p - 1]),
            "curve": right_aligned_curve(scores, p, f, n_points).tolist(),
            "tail": scores[max(0, f - 39):f + 1].tolist()}


def group_name(r: dict, refused_key: str = "refused") -> str:
    """harmless / harmful, refused / harmful, answered; `refused_key` names the row's refusal label
    (e.g. `refused_plain`: whether the same prompt was refused under another template)."""
    if not r["harmful"]:
        return "harmless"
    return "harmful, refused" if r[refused_key] else "harmful, answered"


def _finite(xs: list[float]) -> list[float]:
    return [x for x in xs if not math.isnan(x)]


def cliff_stats(rows: list[dict], refused_key: str = "refused") -> dict[str, dict[str, float]]:
    """Mean/median cliff, mean think-max and final score per group (harmless / harmful refused /
    harmful answered), and the share of traces whose thinking ever reaches a score above 0.5 (the
    probe's decision threshold: refusal intent appears somewhere in the thinking)."""
    out = {}
    for g in ("harmful, refused", "harmful, answered", "harmless"):
        rs = [r for r in rows if group_name(r, refused_key) == g]
        cl = sorted(_finite([r["cliff"] for r in rs]))
        out[g] = {"n": len(rs), "cliff_mean": sum(cl) / len(cl) if cl else float("nan"),
                  "cliff_median": cl[len(cl) // 2] if cl else float("nan"),
                  "think_max_mean": _mean(_finite([r["think_max"] for r in rs])),
                  "final_score_mean": _mean([r["final_score"] for r in rs]),
                  "share_cliff_gt_0.5": sum(c > 0.5 for c in cl) / len(cl) if cl else float("nan"),
                  "share_think_max_gt_0.5": _share([r["think_max"] for r in rs], 0.5)}
    return out


def _share(xs: list[float], threshold: float) -> float:
    xs = _finite(xs)
    return sum(x > threshold for x in xs) / len(xs) if xs else float("nan")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def plot_cliff(rows: list[dict], path: str | Path, title: str = "", refused_key: str = "refused",
               legend_title: str | None = None) -> Path:
    """Left: the mean right-aligned curve (100 points) per group with a +-1 s.e. band. Right: the last
    40 tokens up to the final token, unresampled, to show the drop at token resolution. Groups follow
    `group_name(row, refused_key)`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    colors = {"harmful, refused": "tab:red", "harmful, answered": "tab:orange", "harmless": "tab:blue"}
    for g, color in colors.items():
        rs = [r for r in rows if group_name(r, refused_key) == g]
        if not rs:
            continue
        curves = torch.tensor([r["curve"] for r in rs])
        m = curves.mean(0)
        se = curves.std(0) / len(rs) ** 0.5 if len(rs) > 1 else torch.zeros_like(m)
        x = torch.arange(curves.shape[1])
        ax.plot(x, m, color=color, label=f"{g} (n={len(rs)})")
        ax.fill_between(x, m - se, m + se, color=color, alpha=0.2)
        tails = torch.full((len(rs), 40), float("nan"))
        for k, r in enumerate(rs):
            tails[k, 40 - len(r["tail"]):] = torch.tensor(r["tail"])
        ax2.plot(torch.arange(-39, 1), tails.nanmean(0), color=color)
    ax.set_xlabel("position in thinking, resampled (99 = last token of </think>)")
    ax.set_ylabel("probe refusal score")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, title=legend_title, title_fontsize=8)
    ax.set_title(title or "refusal score along the trace")
    ax2.set_xlabel("tokens before the final token")
    ax2.set_ylim(-0.02, 1.02)
    ax2.set_title("last 40 tokens")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
