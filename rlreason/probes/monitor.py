"""The refusal probe as a training monitor: the mean refusal cliff of the current policy on a fixed
prompt set, logged every N steps (beyond arXiv 2510.06036, which probes a finished model).

    from rlreason.probes.monitor import ProbeMonitor
    monitor = ProbeMonitor("runs/probes/probe", prompts)           # once, at setup
    if step % every == 0:                                          # after the engine's weight sync
        metrics.update(monitor(model, engine))

Metric keys (all `probe/...`):
    probe/mean_cliff     mean over prompts of max(thinking score) - final-token score
    probe/final_score    mean final-token refusal score
    probe/think_max      mean of the max thinking score
    probe/refusal_rate   share of answers the refusal judge marks as refusals
The traces are generated greedily by the engine (the trainer's own, already holding the new weights;
without one, the model itself through the HF engine), so the numbers move only when the policy does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlreason.probes.cliff import score_positions, trace_cliff
from rlreason.probes.probe import load_probe
from rlreason.probes.traces import generate_traces
from rlreason.rollout.base import SamplingConfig


class ProbeMonitor:
    def __init__(self, probe_dir: str | Path, prompts: list[str], *, max_think_tokens: int = 64,
                 max_answer_tokens: int = 32, seed: int = 0) -> None:
        self.probe, self.meta = load_probe(probe_dir)
        self.layer = int(self.meta["layer"])
        self.rows = [{"id": f"monitor/{i}", "prompt": p, "harmful": True} for i, p in enumerate(prompts)]
        self.max_think_tokens, self.max_answer_tokens, self.seed = max_think_tokens, max_answer_tokens, seed

    def __call__(self, model: Any, engine: Any | None = None, tokenizer: Any | None = None) -> dict[str, float]:
        if engine is None:
            from rlreason.rollout.hf_engine import HFEngine
            engine = HFEngine(model, tokenizer=tokenizer, sampling=SamplingConfig(temperature=0.0))
        # Greedy regardless of the training temperature, so the metric does not jitter with sampling.
        greedy = SamplingConfig(temperature=0.0)
        old, engine.sampling = engine.sampling, greedy
        was_training = model.training
        model.eval()
        try:
            traces = generate_traces(engine, self.rows, max_think_tokens=self.max_think_tokens,
                                     max_answer_tokens=self.max_answer_tokens, seed=self.seed)
            pad = engine.tokenizer.pad_token_id or 0
            scores = score_positions(model, self.probe, self.layer, [t["ids"] for t in traces], pad_id=pad)
        finally:
            engine.sampling = old
            model.train(was_training)
        rows = [trace_cliff(t, s) for t, s in zip(traces, scores)]
        cliffs = [r["cliff"] for r in rows if not math.isnan(r["cliff"])]
        return {"probe/mean_cliff": sum(cliffs) / len(cliffs) if cliffs else float("nan"),
                "probe/final_score": sum(r["final_score"] for r in rows) / len(rows),
                "probe/think_max": sum(r["think_max"] for r in rows if not math.isnan(r["think_max"]))
                                   / max(1, len(cliffs)),
                "probe/refusal_rate": sum(t["refused"] for t in traces) / len(traces)}


def probe_metrics(model: Any, probe_dir: str | Path, prompts: list[str], *, engine: Any | None = None,
                  tokenizer: Any | None = None, **kw: Any) -> dict[str, float]:
    """One-shot form of ProbeMonitor (loads the probe each call)."""
    return ProbeMonitor(probe_dir, prompts, **kw)(model, engine, tokenizer)
