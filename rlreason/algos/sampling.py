"""Batch filtering before the update. Shapes: N episodes."""

from __future__ import annotations

import torch
from torch import Tensor


def nonzero_variance_groups(rewards: Tensor, group_ids: Tensor, *, keep_singletons: bool = True) -> Tensor:
    """Bool [N]: True for episodes whose group's rewards are not all equal. A group where every answer scored
    the same has zero group-relative advantage, so it only dilutes the batch; DAPO resamples until the batch
    is full of informative groups. A group of one has no spread but a nonzero GRPO advantage (mean 0, std 1);
    it is kept by default, as in verl's DAPO recipe (`std > 0 or len == 1`).
    rewards [N], group_ids [N] long (need not be contiguous).
    DAPO Sec. 3.2, constraint 0 < |{o_i correct}| < G, arXiv 2503.14476."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    lo = torch.full((n_groups,), float("inf"), dtype=torch.float64, device=rewards.device)
    hi = torch.full((n_groups,), float("-inf"), dtype=torch.float64, device=rewards.device)
    r = rewards.to(torch.float64)
    lo = lo.scatter_reduce(0, inv, r, reduce="amin")
    hi = hi.scatter_reduce(0, inv, r, reduce="amax")
    keep = hi > lo
    if keep_singletons:
        count = torch.bincount(inv, minlength=n_groups)
        keep = keep | (count == 1)
    return keep[inv]
