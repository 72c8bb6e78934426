"""`rlreason eval`: pass@k / avg@k of a model or a training checkpoint on a config's held-out split,
with the same environment and rewards the run trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlreason.config import RunConfig


def run_eval(cfg: RunConfig, *, checkpoint: str | None = None, split: str = "eval") -> dict[str, Any]:
    from safetensors.torch import load_file

    from rlreason.trainer.evaluate import evaluate
    from rlreason.trainer.grpo import setup

    cfg.logging.wandb = False
    cfg.logging.progress = False
    run = setup(cfg)
    if checkpoint:
        path = Path(checkpoint)
        tensors = load_file(str(path / "model.safetensors"))
        run.ctx.model.load_state_dict(tensors, strict=False)
        run.engine.update_weights(run.ctx.model.state_dict().items())
    rows = run.eval_rows
    if split == "train":
        from rlreason.trainer.rollout_phase import as_example
        rows = [as_example(r) for r in run.train_rows.select(range(min(len(run.train_rows), cfg.eval.max_problems)))]
    out = evaluate(run.engine, run.env, run.rubric, rows, k=cfg.eval.k, temperature=cfg.eval.temperature,
                   seed=cfg.seed + 7)
    run.engine.close()
    return {"model": cfg.model.name, "checkpoint": checkpoint, "split": split, **out}
