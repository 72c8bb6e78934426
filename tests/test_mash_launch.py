"""launch/mash_small_cpu.sh end to end on tiny-random with the HF engine (the CI smoke of the MASH comparison's
pipeline): corpus and search server, warm-start SFT, its read-off, the four arms' RL runs and read-offs, the
report; then a second launch that finds every stage done and only rewrites the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_search_server import free_port

REPO = Path(__file__).resolve().parents[1]
ARMS = ("em", "mash08", "mash05", "otc")


def _launch(runs: Path) -> subprocess.CompletedProcess:
    extra = ("model.dtype=fp32 rollout.engine=hf trainer.steps=1 trainer.prompts_per_step=2 "
             "trainer.samples_per_prompt=2 trainer.micro_batch_size=4 eval.max_problems=4 eval.k=1 "
             "sft.batch_size=4 env.args.max_turn_tokens=8 env.args.max_response_tokens=40")
    env = {**os.environ, "PY": sys.executable, "SEEDS": "0", "BASE": "tiny-random", "WARM_SIZE": "8",
           "EXTRA": extra, "SEARCH_PORT": str(free_port()), "PYTHONPATH": str(REPO)}
    return subprocess.run(["bash", str(REPO / "launch/mash_small_cpu.sh"), str(runs)], env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow  # 15 Python processes (~2 min on a quiet machine; 10 min at load 16 on 2 cores)
def test_launch_script_smoke(tmp_path):
    res = _launch(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "warm" / "checkpoints" / "latest.json").exists()  # the warm start is kept
    warm = json.loads((tmp_path / "warm_eval.json").read_text())
    assert {"abstention/by_type/must_search/searches", "abstention/by_type/no_search/abstention_rate"} <= set(warm)
    for arm in ARMS:
        run = tmp_path / f"{arm}_s0"
        assert (run / "summary.txt").exists() and (run / "eval.json").exists()
        assert not (run / "checkpoints").exists()  # dropped after the read-off
        steps = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("env/pay_per_search/must_search/searches" in r or "env/pay_per_search/no_search/searches" in r
                   for r in steps)
        penalty = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
        assert penalty["rewards"][0]["args"]["penalty"] == {"em": "none", "otc": "otc"}.get(arm, "exp")
    table = (tmp_path / "mash_small_cpu.md").read_text()
    for label in ("warm start", "(a) Search-R1", "lambda 0.8", "lambda 0.5", "(c) OTC"):
        assert label in table
    assert (tmp_path / "mash_small_cpu.png").stat().st_size > 0
    assert json.loads((tmp_path / "mash_small_cpu.json").read_text())["arms"]["otc"]["0"]["final"] is not None

    stamp = (tmp_path / "em_s0" / "eval.json").stat().st_mtime
    again = _launch(tmp_path)  # everything is done: no stage runs again
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train " not in again.stdout and "read-off" not in again.stdout
    assert (tmp_path / "em_s0" / "eval.json").stat().st_mtime == stamp
