"""The GRPO-step benchmark under its own name: the same measurements as `benchmarks/rollout.py`
(vLLM vs HF tokens/s with the ratio, weight-sync seconds, one step's rollout/reward/update/sync
breakdown and peak RSS vs the HF-engine step, all measured in one run)."""

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("rollout.py")), run_name="__main__")
