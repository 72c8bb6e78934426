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

from rlreason.registry import ConfigError

log = logging.getLogger(__name__)


class MetricsLogger:
    def __init__(self, run_dir: Path, *, config: dict[str, Any], use_wandb: bool, project: str,
                 name: str, resume: bool) -> None:
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / "samples.jsonl"
        self.history: list[dict[str, Any]] = self.load_history() if resume else []
        self.wandb = None
        self._samples_table: Any = None  # wandb.Table of the transcripts (log_samples); False once it failed
        self._sample_components: list[str] = []
        if use_wandb:
            try:
                import wandb
                if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") is None:
                    os.environ["WANDB_MODE"] = "offline"
                self.wandb = wandb.init(project=project, name=name, config=config, dir=str(run_dir),
                                        resume="allow", id=_wandb_id(run_dir))
            except Exception as e:  # noqa: BLE001 - monitoring must not stop training
                log.warning("wandb disabled: %s", e)

    def load_history(self) -> list[dict[str, Any]]:
        """The rows a resumed run continues from; a missing file or a torn last line is a warning."""
        if not self.path.exists():
            log.warning("--resume: %s is missing; the metrics of the steps before the checkpoint are lost",
                        self.path)
            return []
        return read_jsonl(self.path)

    def truncate_after(self, step: int) -> None:
        """On resume, drop rows (metrics and samples) of steps after the checkpoint: they will be
        recomputed, and a second copy would make two histories of the same steps."""
        self.history = [h for h in self.history if h["step"] <= step]
        _write_jsonl(self.path, self.history)
        if self.samples_path.exists():
            _write_jsonl(self.samples_path, [s for s in read_jsonl(self.samples_path) if s.get("step", 0) <= step])

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
        if self.wandb is not None and samples and self._samples_table is not False:
            try:
                self._log_sample_table(step, samples)
            except Exception as e:  # noqa: BLE001 - monitoring must not stop training
                log.warning("wandb samples table disabled: %s", e)
                self._samples_table = False

    def _log_sample_table(self, step: int, samples: list[dict[str, Any]]) -> None:
        """The transcripts as one wandb table, `samples`, growing by this step's rows (INCREMENTAL mode
        uploads only the new rows). Its columns are fixed by the first call: the reward components of the
        rubric, which do not change during a run."""
        import wandb
        if self._samples_table is None:
            keys = sorted({k for s in samples for k in (s.get("components") or {})})
            self._samples_table = wandb.Table(columns=sample_columns(keys), log_mode="INCREMENTAL")
            self._sample_components = keys
        for row in sample_rows(step, samples, self._sample_components):
            self._samples_table.add_data(*row)
        self.wandb.log({"samples": self._samples_table}, step=step)

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


def sample_columns(components: list[str]) -> list[str]:
    return ["step", "id", "prompt", "completion", "reward", *(f"reward/{k}" for k in components)]


def sample_rows(step: int, samples: list[dict[str, Any]], components: list[str]) -> list[list[Any]]:
    """One table row per sample: step, id, prompt (chat messages as `role: content` lines), completion (the
    episode's transcript), reward, and each reward component (None where a sample lacks it)."""
    return [[step, None if s.get("id") is None else str(s["id"]), _prompt_text(s.get("prompt")),
             s.get("transcript"), s.get("reward"), *((s.get("components") or {}).get(k) for k in components)]
            for s in samples]


def _prompt_text(prompt: Any) -> str | None:
    if prompt is None or isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(m, dict) and "content" in m for m in prompt):
        return "\n".join(f"{m.get('role', '?')}: {m['content']}" for m in prompt)
    return json.dumps(prompt)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a log this package appends to. A torn last line (a write cut short by a kill, a power loss
    or a full disk) is dropped with a warning; a damaged line before it is an error naming the line."""
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):
                log.warning("%s:%d: dropped a torn last line (a write cut short)", path, i)
                break
            raise ConfigError(f"{path}:{i}: not valid JSON ({e}); remove or repair the line to resume") from e
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise ConfigError(f"{path}:{i}: not a log row (an object with an integer 'step')")
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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

    from matplotlib.ticker import MaxNLocator

    rows = [h for h in history if "reward/total" in h]
    fig, ax = plt.subplots(figsize=(7, 4))
    # Only the reward terms `reward/<name>` share the reward axis; deeper keys (`reward/search_cost/n_min`,
    # a search count with -1 for "none yet", or `/errors`) are diagnostics on other scales.
    keys = ["reward/total"] + sorted({k for h in rows for k in h if k.startswith("reward/")
                                      and k != "reward/total" and k.count("/") == 1})
    for k in keys:
        pts = [(h["step"], h[k]) for h in rows if k in h]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, lw=2 if k == "reward/total" else 1)
    ev = [(h["step"], h[k]) for h in history for k in h if k.startswith("eval/") and k.endswith("avg@k")]
    if ev:
        ax.plot([p[0] for p in ev], [p[1] for p in ev], "o--", label="eval avg@k")
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("mean reward")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
