"""benchmarks/autocei_comparison.py report: the table and plot of the Auto-CEI comparison are built from the
runs' metrics.jsonl and the refuse-when-wrong eval outputs (written here by hand, numbers checked in the table)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("autocei_comparison", REPO / "benchmarks/autocei_comparison.py")
ac = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ac)

P = "env/curriculum_ei/"


def held_out(acc, prec, ref, solv_acc):
    return {"eval/accuracy": acc, "eval/precision": prec, "eval/refusal_rate": ref, "eval/f": 0.8 * prec + 0.2 * (1 - ref),
            "eval/solvable/accuracy": solv_acc, "eval/solvable/precision": 0.9, "eval/solvable/refusal_rate": 0.1,
            "eval/unsolvable/accuracy": 0.0, "eval/unsolvable/refusal_rate": 0.7,
            "eval/unsolvable/steps_before_refusal": 2.5}


def write_ei(d: Path, c1s, final):
    d.mkdir(parents=True)
    rows = [{"step": 0, **held_out(0.2, 0.25, 0.2, 0.3), P + "c1": c1s[0]}]
    for i, c1 in enumerate(c1s[1:], 1):
        rows.append({"step": i, "reward/total": 0.1, P + "precision": 0.3 + 0.1 * i, P + "refusal_rate": 0.1 * i,
                     P + "c1": c1})
    rows.append({"step": len(c1s) - 1, **final})
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_table_and_plot(tmp_path):
    write_ei(tmp_path / "cei_s0", [1.5, 2.0, 1.5], held_out(0.5, 0.7, 0.3, 0.6))
    write_ei(tmp_path / "cei_s1", [1.5, 1.0], held_out(0.4, 0.5, 0.2, 0.5))
    write_ei(tmp_path / "ei_s0", [1.5, 1.5, 1.5], held_out(0.3, 0.35, 0.05, 0.45))
    (tmp_path / "rww_s0_eval.json").write_text(json.dumps(held_out(0.1, 0.8, 0.9, 0.12)))
    (tmp_path / "rww_s0.stats.json").write_text(json.dumps({"samples/precision": 0.4, "samples/refusal_rate": 0.15,
                                                             "rewritten": 5, "lines": 12}))
    data = ac.collect(tmp_path)
    assert [p["round"] for p in data["arms"]["cei"][0]["rounds"]] == [1, 2]
    assert data["arms"]["cei"][0]["c1"] == [1.5, 2.0, 1.5]
    assert data["arms"]["rww"][0]["rounds"] == [{"round": 0, "precision": 0.4, "refusal_rate": 0.15}]
    text = ac.report(tmp_path, tmp_path / "out" / "cmp")
    lines = text.splitlines()
    cei0 = next(x for x in lines if x.startswith("| (c) Auto-CEI, curriculum | 0 | 2 |"))
    # f = 0.8 * 0.7 + 0.2 * 0.7
    assert "| 0.500 | 0.700 | 0.300 | 0.700 | 0.600 |" in cei0 and cei0.endswith("| 1.50 -> 2.00 -> 1.50 |")
    mean = next(x for x in lines if x.startswith("| (c) Auto-CEI, curriculum | mean | |"))
    assert "| 0.450 | 0.600 | 0.250 |" in mean  # (0.5 + 0.4) / 2, (0.7 + 0.5) / 2, (0.3 + 0.2) / 2
    assert any(x.startswith("| (b) refuse-when-wrong SFT | 0 | 1 (SFT) | 0.100 | 0.800 | 0.900 |") for x in lines)
    ei0 = next(x for x in lines if x.startswith("| (a) expert iteration, no IDK | 0 | 2 |"))
    assert ei0.endswith("| 2.500 |  |")  # c1 plays no part in (a): no path
    assert lines[2].startswith("| warm start") and "| 0.200 | 0.250 | 0.200 |" in lines[2]
    assert not any(x.startswith("| (d)") for x in lines)  # no runs, no rows
    for ext in (".md", ".json", ".png"):
        assert (tmp_path / "out" / f"cmp{ext}").stat().st_size > 0


def test_warm_row_is_the_launch_scripts_warm_start_measurement_when_there_is_one(tmp_path):
    write_ei(tmp_path / "cei_s0", [1.5, 2.0], held_out(0.5, 0.7, 0.3, 0.6))
    assert ac.table(ac.collect(tmp_path)).splitlines()[2].startswith("| warm start | - | 0 | 0.200 | 0.250 | 0.200 |")
    (tmp_path / "warm_eval.json").write_text(json.dumps({"model": "w", "seed": 0, **held_out(0.4, 0.45, 0.11, 0.6)}))
    assert ac.table(ac.collect(tmp_path)).splitlines()[2].startswith("| warm start | - | 0 | 0.400 | 0.450 | 0.110 |")
