"""benchmarks/mash_comparison.py report on hand-written run directories: per-type numbers come from the
read-off's by_type keys, Abs(never)/Abs(always) are the per-type abstention rates, mean/min/max rows span
the seeds, and the PNG is written."""

import importlib.util
import json
import math
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("mash_comparison", REPO / "benchmarks" / "mash_comparison.py")
mc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mc)


def _eval(acc_must, searches_no, abs_must):
    p = "abstention/by_type/"
    return {"abstention/tool/accuracy": 0.5, "abstention/tool/tool_productivity": 0.4,
            "abstention/no_tool/precision": 0.9, "abstention/abs_never": 0.7, "abstention/abs_always": None,
            "abstention/n_never": 40, "abstention/n_always": 0,
            p + "must_search/accuracy": acc_must, p + "no_search/accuracy": 1.0,
            p + "must_search/searches": 1.0, p + "no_search/searches": searches_no,
            p + "must_search/abstention_rate": abs_must, p + "no_search/abstention_rate": 0.25,
            p + "must_search/precision": None, p + "no_search/precision": 1.0}


def _run(root: Path, name: str, ev: dict, searches: list[tuple[float, float]]) -> None:
    d = root / name
    d.mkdir()
    (d / "eval.json").write_text(json.dumps(ev))
    lines = [{"step": i + 1, "reward/total": 0.5, "reward/qa_em": 0.5,
              "env/pay_per_search/must_search/searches": m, "env/pay_per_search/no_search/searches": n}
             for i, (m, n) in enumerate(searches)]
    lines.insert(0, {"step": 0, "eval/pass@k": 0.1})  # a line without rollouts is not a training step
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_report_table_json_and_png(tmp_path):
    (tmp_path / "warm_eval.json").write_text(json.dumps(_eval(0.5, 0.1, 0.5)))
    _run(tmp_path, "em_s0", _eval(0.25, 0.5, 1.0), [(1, 0.5), (1, 0.25)])
    _run(tmp_path, "em_s1", _eval(0.75, 0.0, 0.5), [(1, 0.0)])
    _run(tmp_path, "otc_s0", _eval(0.5, 0.0, 0.75), [(0.5, 0.0)])
    (tmp_path / "mash05_s0").mkdir()  # a run cut short: no eval.json, no metrics
    text = mc.report(tmp_path, tmp_path / "out" / "mash")
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[4:-1]]
            for line in text.splitlines()[2:]}
    heads = [h for h, _ in mc.COLUMNS]
    col = {h: i for i, h in enumerate(heads)}
    em = "(a) Search-R1, EM only"
    assert rows[(em, "0")][col["acc must"]] == "0.250" and rows[(em, "1")][col["acc must"]] == "0.750"
    assert rows[(em, "mean")][col["acc must"]] == "0.500"
    assert rows[(em, "min")][col["searches/q no-search"]] == "0.000"
    assert rows[(em, "max")][col["searches/q no-search"]] == "0.500"
    assert rows[(em, "0")][col["delta"]] == "0.750"  # Abs(must) 1.0 - Abs(no-search) 0.25
    assert rows[(em, "0")][col["closed-book Abs(always)"]] == "n/a"  # no always-answerable question: null
    assert rows[("(b) MASH exp, lambda 0.5", "0")][0] == "n/a"
    assert ("(c) OTC", "mean") not in rows  # one seed: no spread rows
    assert "| warm start (SFT) | - | 0 |" in text
    data = json.loads((tmp_path / "out" / "mash.json").read_text())
    assert [h["step"] for h in data["arms"]["em"]["0"]["history"]] == [1, 2]
    assert math.isclose(data["arms"]["em"]["0"]["history"][1]["searches/no_search"], 0.25)
    assert (tmp_path / "out" / "mash.png").stat().st_size > 0


def test_include_pools_an_earlier_reports_seeds_and_keeps_each_launchs_warm_start(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    for d, searches in ((first, 0.1), (second, 0.2)):  # the second launch's warm start read off differently
        d.mkdir()
        (d / "warm_eval.json").write_text(json.dumps(_eval(0.5, searches, 0.5)))
    _run(first, "em_s0", _eval(0.25, 0.5, 1.0), [(1, 0.5)])
    _run(first, "em_s1", _eval(0.0, 0.5, 1.0), [(1, 0.5)])  # also in the second directory: that one wins
    mc.report(first, tmp_path / "out" / "first")
    _run(second, "em_s1", _eval(0.75, 0.0, 0.5), [(1, 0.0), (1, 0.0)])
    text = mc.report(second, tmp_path / "out" / "both", [tmp_path / "out" / "first.json"])
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:-1]]
            for line in text.splitlines()[2:]}
    col = {h: i for i, (h, _) in enumerate(mc.COLUMNS)}
    em = "(a) Search-R1, EM only"
    assert rows[(em, "0", "1")][col["acc must"]] == "0.250"  # from the earlier report, with its one training step
    assert rows[(em, "1", "2")][col["acc must"]] == "0.750"  # from the runs directory
    assert rows[(em, "mean", "")][col["acc must"]] == "0.500"
    assert rows[("warm start (SFT)", "1", "0")][col["searches/q no-search"]] == "0.200"
    assert rows[("warm start (SFT), earlier launch", "0", "0")][col["searches/q no-search"]] == "0.100"
    both = json.loads((tmp_path / "out" / "both.json").read_text())
    assert sorted(both["arms"]["em"]) == ["0", "1"] and both["earlier_warm"][0]["seeds"] == [0]

    same = mc.report(first, tmp_path / "out" / "same", [tmp_path / "out" / "first.json"])
    assert "earlier launch" not in same and "| warm start (SFT) | - | 0 |" in same  # one warm start: one row

    (tmp_path / "bad.json").write_text("{}")
    assert mc.main(["report", "--runs", str(second), "--out", str(tmp_path / "out" / "y"),
                    "--include", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json: not a mash_comparison report" in err
