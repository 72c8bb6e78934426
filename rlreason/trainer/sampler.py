"""Seeded, resumable prompt order: an epoch is a permutation drawn from (seed, epoch), so the position
(epoch, index) is all a checkpoint needs to continue with exactly the same prompts."""

from __future__ import annotations

import random
from typing import Any


class PromptSampler:
    def __init__(self, num_rows: int, seed: int) -> None:
        if num_rows <= 0:
            raise ValueError("the training dataset is empty")
        self.num_rows, self.seed = num_rows, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def next_indices(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.index >= self.num_rows:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            out.append(self._order[self.index])
            self.index += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "num_rows": self.num_rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_rows"] != self.num_rows or state["seed"] != self.seed:
            raise ValueError(f"checkpoint sampler was for {state['num_rows']} rows / seed {state['seed']}, "
                             f"this run has {self.num_rows} rows / seed {self.seed}: the data changed")
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)
