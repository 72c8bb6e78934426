"""benchmarks/delethink_vs_longcot.py: the Delethink vs LongCoT table reads run directories as the trainer and
`rlreason eval --chunked` write them, and aggregates over seeds correctly (checked against numbers worked
out by hand)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("delethink_vs_longcot", REPO / "benchmarks/delethink_vs_longcot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _step(arm: str, step: int, *, update_s: float, rows: float, tokens: float) -> dict:
    return {"step": step, "time/rollout": 10.0, "time/update": update_s, "time/step": 10.0 + update_s,
            "rollout/rows": rows, f"env/{arm}/thinking_tokens": tokens, f"env/{arm}/chunks": rows / 16,
            "perf/update_tokens_per_s": 100.0, "perf/update_tflops": 0.5, "reward/total": 0.25}


def _write_run(root: Path, arm: str, seed: int, accs: list[float], update_s: float, chunked_acc: float | None):
    d = root / f"{arm}_s{seed}"
    d.mkdir(parents=True)
    lines = [{"step": 0, "eval/avg@k": accs[0]}]
    for s, acc in enumerate(accs[1:], 1):
        lines.append(_step(arm, s, update_s=update_s, rows=64.0 if arm == "markovian" else 16.0, tokens=150.0))
        lines.append({"step": s, "eval/avg@k": acc})  # evaluation logged as its own line of the same step
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "summary.txt").write_text("done\n")
    if chunked_acc is not None:
        row = {"budget": 192, "chunk_size": 64, "carryover": 32, "max_chunks": 5}
        mode = {"acc": chunked_acc, "tokens_mean": 180.0, "eos_rate": 1.0}
        (d / "chunked_eval.json").write_text(json.dumps({"problems": 32, "rows": [
            row | {"markovian": mode, "longcot": mode | {"acc": chunked_acc / 2}}]}))


def test_seeds_aggregate_to_mean_and_range(report, tmp_path):
    _write_run(tmp_path, "markovian", 0, [0.25, 0.5], update_s=30.0, chunked_acc=0.5)
    _write_run(tmp_path, "markovian", 1, [0.25, 0.75], update_s=50.0, chunked_acc=None)
    _write_run(tmp_path, "longcot", 0, [0.25, 0.625], update_s=10.0, chunked_acc=0.25)
    s = report.summarize(report.load_runs(tmp_path))
    final = s["markovian"]["accuracy"][1]
    assert (final["mean"], final["min"], final["max"], final["n"]) == (62.5, 50.0, 75.0, 2)
    assert s["markovian"]["cost"]["update_s"]["mean"] == 40.0
    assert s["markovian"]["cost"]["update_tokens"]["mean"] == pytest.approx(100.0 * 40.0)  # tokens/s x seconds
    assert s["longcot"]["cost"]["rows"]["mean"] == 16.0
    assert s["markovian"]["scaling"][0]["evaluated_seeds"] == 1  # only seed 0 has chunked_eval.json
    assert s["markovian"]["scaling"][0]["longcot"]["acc"]["mean"] == 25.0
    md = report.markdown(s, str(tmp_path))
    assert "difference +0.0 points, within 5" in md  # 62.5 vs 62.5
    assert "| 1 | 62.5 [50.0, 75.0] | 62.5 |" in md


def test_no_runs_is_an_error(report, tmp_path):
    with pytest.raises(SystemExit, match="no markovian_s"):
        report.main(["--runs", str(tmp_path), "--out", str(tmp_path / "out")])
