"""Config dataclasses of `rlreason probe train` and `rlreason repair` (torch-free, so the CLI parser can
build their options without importing torch). Each field's comment is its --help line."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass


@dataclass
class ProbeConfig:
    lr: float = 1e-3            # Adam learning rate (paper: 1e-3)
    epochs: int = 5             # passes over the training split (paper: 5)
    batch_size: int = 16        # examples per Adam step
    val_frac: float = 0.2       # share of the balanced data used to pick the checkpoint and the layer
    test_frac: float = 0.2      # share held out for the reported accuracy
    standardize: bool = True    # standardise features with training mean/std (still a linear probe)
    seed: int = 0               # split and initialisation seed


@dataclass
class RepairConfig:
    lr: float = 2e-5          # AdamW learning rate (full fine-tuning; ~1e-4 to 3e-4 for LoRA)
    epochs: int = 3           # passes over the SFT set
    batch_size: int = 4       # sequences per optimizer step
    max_len: int = 512        # prompt + response tokens kept (the response end is cut first)
    lora: bool = False        # train a LoRA adapter (peft) instead of all weights, merged at the end
    lora_r: int = 16          # LoRA rank
    lora_alpha: int = 32      # LoRA scale numerator (scale = alpha / r)
    bf16_autocast: bool = False  # forward in bf16 autocast, weights + optimizer fp32 (fast on CPUs with AMX)
    seed: int = 0             # data order


def field_help(cls: type) -> dict[str, str]:
    """{field: its trailing comment}, for argparse help."""
    return dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M))
