"""`rlreason eval`: pass@k / avg@k of a model or a training checkpoint on a config's held-out split,
with the same environment and rewards the run trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rlreason.config import RunConfig


class CheckpointNotFound(ValueError):
    """`--checkpoint` names no checkpoint; the message lists the ones that exist."""


def _checkpoints_in(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("step_*") if (p / "model.safetensors").exists())


def resolve_checkpoint(cfg: RunConfig, checkpoint: str | None) -> str | None:
    """Check `--checkpoint` before anything loads: a checkpoint directory (with model.safetensors) or
    `latest` (the newest complete checkpoint of the config's run directory). A wrong path raises
    CheckpointNotFound naming the checkpoints that do exist, so the user is not left with a traceback
    after the model has loaded."""
    if checkpoint is None:
        return None
    root = cfg.run_dir / "checkpoints"
    if checkpoint == "latest":
        marker = root / "latest.json"
        if marker.exists():
            path = root / json.loads(marker.read_text())["path"]
            if (path / "model.safetensors").exists():
                return str(path)
        raise CheckpointNotFound(f"--checkpoint latest: no complete checkpoint in {root}"
                                 + (f" (found: {', '.join(_checkpoints_in(root))})" if _checkpoints_in(root) else
                                    "; train first (rlreason train CONFIG)"))
    path = Path(checkpoint)
    if (path / "model.safetensors").exists():
        return checkpoint
    where = path.parent if path.parent.is_dir() and _checkpoints_in(path.parent) else root
    found = _checkpoints_in(where)
    listing = (f"checkpoints in {where}: {', '.join(found)} (or --checkpoint latest)" if found
               else f"no checkpoints in {where}")
    what = "has no model.safetensors" if path.is_dir() else "does not exist"
    raise CheckpointNotFound(f"--checkpoint {checkpoint} {what}; {listing}")


def load_for_eval(cfg: RunConfig, checkpoint: str | None, split: str) -> tuple[Any, list[dict]]:
    """The run of `cfg` as training builds it (engine, environment, rubric), with a checkpoint's weights
    loaded into trainer and engine, and the problems of `split` — shared by every `rlreason eval` mode."""
    from rlreason.trainer.checkpoint import load_weights
    from rlreason.trainer.loop import setup
    from rlreason.trainer.rollout_phase import as_example

    cfg.logging.wandb = False
    cfg.logging.progress = False
    run = setup(cfg)
    if checkpoint:
        load_weights(Path(checkpoint), run.ctx.model)  # strict: never the base model under the checkpoint's name
        run.engine.update_weights(run.ctx.model.state_dict().items())
    rows = run.eval_rows
    if split == "train":
        n = min(len(run.train_rows), cfg.eval.max_problems)
        rows = [as_example(r) for r in run.train_rows.select(range(n))]
    return run, rows


def run_eval(cfg: RunConfig, *, checkpoint: str | None = None, split: str = "eval") -> dict[str, Any]:
    from rlreason.trainer.evaluate import evaluate

    run, rows = load_for_eval(cfg, checkpoint, split)
    out = evaluate(run.engine, run.env, run.rubric, rows, k=cfg.eval.k, temperature=cfg.eval.temperature,
                   seed=cfg.seed + 7)
    run.engine.close()
    return {"model": cfg.model.name, "checkpoint": checkpoint, "split": split, **out}
