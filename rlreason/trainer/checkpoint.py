"""Checkpoints that a kill at any moment cannot corrupt: each is written to a temporary directory and
renamed into place, and `latest` is switched by an atomic rename afterwards. A run killed mid-step
resumes from the last complete checkpoint with model, optimizer, sampler position, RNG states and
environment/reward state, so the continuation is the same run."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def save_checkpoint(root: Path, step: int, *, model: torch.nn.Module, torch_state: dict[str, Any],
                    state: dict[str, Any], keep: int, tokenizer: Any = None) -> Path:
    """`torch_state`: optimizer/scheduler state dicts; `state`: JSON-able (sampler, env, rewards). With the
    `tokenizer`, config and tokenizer files go beside the weights: a Hugging Face model directory
    (rlreason/export.py)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    # Tied embeddings share storage; safetensors wants distinct tensors.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(tmp / "model.safetensors"))
    torch.save({**torch_state, "rng": rng_state()}, tmp / "trainer.pt")
    _write_json(tmp / "state.json", {"step": step, **state})
    if tokenizer is not None:
        from rlreason.export import write_hf_metadata
        write_hf_metadata(tmp, model, tokenizer)
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    _write_json(root / "latest.json", {"step": step, "path": final.name})
    for old in sorted(root.glob("step_*"))[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    marker = root / "latest.json"
    if not marker.exists():
        return None
    path = root / json.loads(marker.read_text())["path"]
    return path if (path / "state.json").exists() else None


def load_checkpoint(path: Path, *, model: torch.nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads the weights into `model`, restores RNG states; returns (JSON state, torch state)."""
    tensors = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise ValueError(f"checkpoint {path} does not match the model: missing {missing}, unexpected {unexpected}")
    blob = torch.load(path / "trainer.pt", weights_only=False)
    set_rng_state(blob.pop("rng"))
    return json.loads((path / "state.json").read_text()), blob
