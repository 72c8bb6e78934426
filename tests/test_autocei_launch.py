"""launch/autocei_small_cpu.sh end to end on tiny-random (the CI smoke of the Auto-CEI comparison's pipeline):
warm-start SFT (with worked refusals on part of the unsolvable rows) and its held-out measurement, the three expert-iteration arms, the refuse-when-wrong data / SFT / eval, and the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlreason.config import RunConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif("sft" not in RunConfig.__dataclass_fields__, reason="needs algorithm: sft (the training loop)")
def test_launch_script_smoke(tmp_path):
    extra = ("ei.rounds=1 ei.questions_per_round=2 ei.samples_per_question=2 eval.max_problems=4 eval.k=1 "
             "env.args.max_tokens=12 env.args.min_std=1.0 sft.batch_size=4 rollout.kv_cache_gb=0.25")
    env = {**os.environ, "PY": sys.executable, "SEEDS": "0", "BASE": "tiny-random", "WARM_SIZE": "8",
           "EXTRA": extra, "PYTHONPATH": str(REPO)}
    res = subprocess.run(["bash", str(REPO / "launch/autocei_small_cpu.sh"), str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    warm = [json.loads(x) for x in (tmp_path / "warm_start.jsonl").read_text().splitlines()]
    assert len(warm) == 8 and sum(x["response"].endswith("\\boxed{I don't know}") for x in warm) == 1  # 2 unsolvable x 0.3
    assert "eval/refusal_rate" in json.loads((tmp_path / "warm_eval.json").read_text())  # measured before the arms
    for arm in ("ei", "cei", "frozen"):
        assert (tmp_path / f"{arm}_s0" / "summary.txt").exists()
        assert not (tmp_path / f"{arm}_s0" / "checkpoints").exists()  # dropped after the run
    lines = [json.loads(x) for x in (tmp_path / "rww_s0.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(x["completion"] for x in lines)  # 1 round x 2 questions x 2 answers
    assert "eval/solvable/precision" in json.loads((tmp_path / "rww_s0_eval.json").read_text()) \
        or "eval/unsolvable/precision" in json.loads((tmp_path / "rww_s0_eval.json").read_text())
    table = (tmp_path / "autocei_small_cpu.md").read_text()
    for label in ("(a) expert iteration", "(b) refuse-when-wrong", "(c) Auto-CEI, curriculum", "(d) Auto-CEI, c1 frozen"):
        assert label in table
    assert (tmp_path / "autocei_small_cpu.png").stat().st_size > 0
