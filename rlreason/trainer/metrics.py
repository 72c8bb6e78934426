"""Where metrics go: a local JSONL of every step (always), wandb (offline automatically when no API
key is set, so a laptop run never blocks on a login), a reward-curve PNG and a text summary at the end.

Metric keys: `loss/...` (policy update), `reward/<name>` (mean of each reward term), `rollout/...`
(tokens, lengths, prompts, DAPO sampling rounds, zero-variance groups), `env/<name>/...` (environment metrics), `eval/...` (held-out pass@k),
`time/...` (seconds per phase)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, run_dir: Path, *, config: dict[str, Any], use_wandb: bool, project: str,
                 name: str, resume: bool) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self.history: list[dict[str, Any]] = []
        if resume and self.path.exists():
            self.history = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        self.wandb = None
        if use_wandb:
            try:
                import wandb
                if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") is None:
                    os.environ["WANDB_MODE"] = "offline"
                self.wandb = wandb.init(project=project, name=name, config=config, dir=str(run_dir),
                                        resume="allow", id=_wandb_id(run_dir))
            except Exception as e:  # noqa: BLE001 - monitoring must not stop training
                log.warning("wandb disabled: %s", e)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows of steps after the checkpoint (they will be recomputed)."""
        self.history = [h for h in self.history if h["step"] <= step]
        self.path.write_text("".join(json.dumps(h) + "\n" for h in self.history))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def log_samples(self, step: int, samples: list[dict[str, Any]]) -> None:
        with self.samples_path.open("a") as f:
            for s in samples:
                f.write(json.dumps({"step": step, **s}) + "\n")

    def finish(self, reward_key: str = "reward/total") -> str:
        summary = summarize(self.history, reward_key)
        (self.run_dir / "summary.txt").write_text(summary)
        try:
            plot_rewards(self.history, self.run_dir / "reward_curve.png")
        except Exception as e:  # noqa: BLE001
            log.warning("could not plot the reward curve: %s", e)
        if self.wandb is not None:
            self.wandb.finish()
        return summary


def _wandb_id(run_dir: Path) -> str:
    f = run_dir / "wandb_id.txt"
    if not f.exists():
        import uuid
        f.write_text(uuid.uuid4().hex[:12])
    return f.read_text().strip()


def _plain(v: Any) -> Any:
    try:
        return float(v) if not isinstance(v, (str, bool, int)) else v
    except (TypeError, ValueError):
        return str(v)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(history: list[dict[str, Any]], reward_key: str = "reward/total", window: int = 5) -> str:
    rows = [h for h in history if reward_key in h]
    if not rows:
        return "no training steps logged\n"
    lines = [f"steps: {len(rows)}"]
    keys = [reward_key] + sorted({k for h in rows for k in h if k.startswith("reward/") and k != reward_key
                                  and not k.endswith("/errors")})
    w = min(window, max(1, len(rows) // 2))
    for k in keys:
        vals = [h[k] for h in rows if k in h]
        first, last = _mean(vals[:w]), _mean(vals[-w:])
        lines.append(f"{k}: first-{w} mean {first:.3f} -> last-{w} mean {last:.3f} ({last - first:+.3f})")
    evals = [h for h in history if any(k.startswith("eval/") for k in h)]
    if evals:
        ek = sorted(k for k in evals[-1] if k.startswith("eval/") and ("@" in k or k.endswith("reward")))
        lines.append("eval first -> last: " + ", ".join(
            f"{k} {evals[0].get(k, float('nan')):.3f} -> {evals[-1][k]:.3f}" for k in ek))
    t = [h["time/step"] for h in rows if "time/step" in h]
    if t:
        lines.append(f"mean step time: {_mean(t):.1f} s")
    z = [h["rollout/zero_var_groups_frac"] for h in rows if "rollout/zero_var_groups_frac" in h]
    if z:  # groups whose rewards were all equal: no gradient signal (DAPO's dynamic sampling refills them)
        lines.append(f"zero-variance groups per step: mean {_mean(z):.3f}")
    return "\n".join(lines) + "\n"


def plot_rewards(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "reward/total" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    keys = ["reward/total"] + sorted({k for h in rows for k in h if k.startswith("reward/")
                                      and k != "reward/total" and not k.endswith("/errors")})
    for k in keys:
        pts = [(h["step"], h[k]) for h in rows if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=2 if k == "reward/total" else 1)
    ev = [(h["step"], h[k]) for h in history for k in h if k.startswith("eval/") and k.endswith("avg@k")]
    if ev:
        ax.plot([p[0] for p in ev], [p[1] for p in ev], "o--", label="eval avg@k")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
