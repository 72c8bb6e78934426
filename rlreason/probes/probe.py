"""Linear refusal probe (arXiv 2510.06036, sec. 3): logistic regression on one hidden state.

    p(refuse | h) = sigmoid(w . (h - mu) / sigma + b)

Features are standardised with the training split's mean and std (kept in the saved probe), which
leaves the probe linear in h but makes one learning rate work at every layer (hidden-state norms grow
with depth). Training follows the paper: balanced classes, Adam lr 1e-3, 5 epochs, the checkpoint with
the best validation accuracy kept. A third, untouched split gives the accuracy that is reported, since
the validation split has been used twice (checkpoint and layer choice).

Saved as `probe.safetensors` (weight [H], bias [], mean [H], std [H]) + `probe.json` (layer, model,
metrics, data provenance).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlreason.probes.config import ProbeConfig


class LinearProbe(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, 1)
        # Logistic regression is convex: start from w = 0 (p = 0.5 everywhere) rather than nn.Linear's
        # random init, which with the paper's few Adam steps (5 epochs at lr 1e-3) would still dominate.
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.register_buffer("mean", torch.zeros(hidden))
        self.register_buffer("std", torch.ones(hidden))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., H] -> logits [...]"""
        return self.linear((h.float() - self.mean) / self.std).squeeze(-1)

    def score(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., H] -> refusal probability [...]"""
        return torch.sigmoid(self(h))


@dataclass
class Split:
    train: list[int]
    val: list[int]
    test: list[int]
    dropped: list[int] = field(default_factory=list)  # majority-class examples removed to balance


def balanced_split(y: list[int], cfg: ProbeConfig) -> Split:
    """Downsample the majority class to the minority's size, then split each class the same way
    (stratified), so every split is balanced."""
    rng = random.Random(cfg.seed)
    by_class = {c: [i for i, v in enumerate(y) if v == c] for c in (0, 1)}
    n = min(len(v) for v in by_class.values())
    if n < 3:
        raise ValueError(f"probe needs >= 3 examples per class, got {[len(v) for v in by_class.values()]}")
    out = Split([], [], [])
    for idx in by_class.values():
        rng.shuffle(idx)
        out.dropped += idx[n:]
        n_val, n_test = max(1, round(cfg.val_frac * n)), max(1, round(cfg.test_frac * n))
        out.val += idx[:n_val]
        out.test += idx[n_val:n_val + n_test]
        out.train += idx[n_val + n_test:n]
    return out


def auroc(scores: torch.Tensor, y: torch.Tensor) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    pos, neg = scores[y == 1], scores[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def evaluate(probe: LinearProbe, X: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = probe(X)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y.float())
    return {"acc": float(((logits > 0).long() == y).float().mean()), "loss": float(loss),
            "auroc": auroc(logits, y)}


def train_probe(X: torch.Tensor, y: list[int] | torch.Tensor, cfg: ProbeConfig | None = None,
                split: Split | None = None) -> tuple[LinearProbe, dict[str, Any]]:
    """X [N, H] features, y [N] in {0, 1}. Returns the best-validation probe and its metrics."""
    cfg = cfg or ProbeConfig()
    y = torch.as_tensor(y, dtype=torch.long)
    split = split or balanced_split(y.tolist(), cfg)
    X = X.float()
    tr, va, te = (torch.tensor(s) for s in (split.train, split.val, split.test))
    torch.manual_seed(cfg.seed)
    probe = LinearProbe(X.shape[1])
    if cfg.standardize:
        probe.mean.copy_(X[tr].mean(0))
        probe.std.copy_(X[tr].std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(probe.linear.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    best = {"epoch": 0, **{f"val_{k}": v for k, v in evaluate(probe, X[va], y[va]).items()}}
    best_state = {k: v.clone() for k, v in probe.state_dict().items()}
    history = []
    for epoch in range(1, cfg.epochs + 1):
        for b in tr[torch.randperm(len(tr), generator=gen)].split(cfg.batch_size):
            loss = nn.functional.binary_cross_entropy_with_logits(probe(X[b]), y[b].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
        val = evaluate(probe, X[va], y[va])
        history.append({"epoch": epoch, **{f"val_{k}": v for k, v in val.items()}})
        if (val["acc"], -val["loss"]) > (best["val_acc"], -best["val_loss"]):
            best = history[-1]
            best_state = {k: v.clone() for k, v in probe.state_dict().items()}
    probe.load_state_dict(best_state)
    metrics = {"best_epoch": best["epoch"], "val_acc": best["val_acc"], "val_loss": best["val_loss"],
               "val_auroc": best["val_auroc"],
               **{f"train_{k}": v for k, v in evaluate(probe, X[tr], y[tr]).items()},
               **{f"test_{k}": v for k, v in evaluate(probe, X[te], y[te]).items()},
               "n_train": len(tr), "n_val": len(va), "n_test": len(te), "n_dropped": len(split.dropped),
               "history": history}
    return probe, metrics


def train_per_layer(feats: torch.Tensor, y: list[int], layers: list[int],
                    cfg: ProbeConfig | None = None) -> tuple[int, dict[int, LinearProbe], list[dict]]:
    """feats [N, n_layers, H]. One probe per layer on the same split; the layer is chosen by validation
    accuracy (ties: lower validation loss), never by the test split. Returns (layer, probes, table)."""
    cfg = cfg or ProbeConfig()
    split = balanced_split(list(y), cfg)
    probes, table = {}, []
    for k, layer in enumerate(layers):
        probes[layer], m = train_probe(feats[:, k], y, cfg, split)
        table.append({"layer": layer, **{k2: v for k2, v in m.items() if k2 != "history"}})
    chosen = max(table, key=lambda r: (r["val_acc"], -r["val_loss"]))["layer"]
    return chosen, probes, table


def save_probe(probe: LinearProbe, directory: str | Path, meta: dict[str, Any]) -> Path:
    from safetensors.torch import save_file
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tensors = {"weight": probe.linear.weight.detach()[0].contiguous(), "bias": probe.linear.bias.detach()[0],
               "mean": probe.mean.contiguous(), "std": probe.std.contiguous()}
    save_file(tensors, str(d / "probe.safetensors.tmp"))
    (d / "probe.safetensors.tmp").replace(d / "probe.safetensors")
    (d / "probe.json.tmp").write_text(json.dumps({"hidden_size": probe.mean.numel(), **meta}, indent=1))
    (d / "probe.json.tmp").replace(d / "probe.json")
    return d


def load_probe(directory: str | Path) -> tuple[LinearProbe, dict[str, Any]]:
    from safetensors.torch import load_file
    d = Path(directory)
    meta = json.loads((d / "probe.json").read_text())
    t = load_file(str(d / "probe.safetensors"))
    probe = LinearProbe(t["weight"].numel())
    with torch.no_grad():
        probe.linear.weight.copy_(t["weight"][None])
        probe.linear.bias.copy_(t["bias"].reshape(1))
        probe.mean.copy_(t["mean"])
        probe.std.copy_(t["std"])
    return probe.eval(), meta
