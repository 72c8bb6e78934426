"""The refusal-cliff study's additions (docs/probes.md, launch/refusal_cliff_qwen_cpu.sh) on the tiny random
Llama: probes trained on plain-template rows (label `refused-vs-answered`, the last prompt token), several
probes scored in one pass, grouping by the plain template's refusal, the linear head attribution, and the
report. Each test names the wrong implementation it would catch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rlreason.probes import data as D
from rlreason.probes.capture import capture, states_at
from rlreason.probes.cliff import cliff_stats, score_positions, score_positions_many
from rlreason.probes.heads import (ablated_in_place, ablated_weights, head_attribution, head_attribution_linear,
                                   rerank_exact)
from rlreason.probes.probe import LinearProbe
from rlreason.probes.traces import probe_label, probe_position

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _random_probe(h=64, seed=0):
    probe = LinearProbe(h)
    with torch.no_grad():
        probe.linear.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
    return probe


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 40000, (n,), generator=g).tolist() for n in lengths]


def test_refused_vs_answered_labels_and_the_plain_rows_position():
    """Catches harmless prompts leaking into the within-harmful control (it would then separate harmfulness
    again), and a plain row read at its last generated token instead of the last token before the answer."""
    assert probe_label({"harmful": True, "refused": True}, "refused-vs-answered") == 1
    assert probe_label({"harmful": True, "refused": False}, "refused-vs-answered") == 0
    assert probe_label({"harmful": False, "refused": False}, "refused-vs-answered") is None
    assert probe_label({"harmful": False, "refused": True}, "refused-vs-answered") is None
    with pytest.raises(ValueError, match="allowed"):
        probe_label({"harmful": True, "refused": True}, "refused_vs_answered")
    assert probe_position({"template": "plain", "prompt_len": 9, "ids": list(range(20))}) == 8
    assert probe_position({"template": "plain", "prompt_len": 9, "final_idx": 8}) == 8
    assert probe_position({"prompt_len": 9, "think_end": 12, "final_idx": 14}) == 14


def test_score_positions_many_equals_one_probe_at_a_time(tiny):
    """Catches a probe scored on another probe's layer (the layer list is sorted and deduplicated)."""
    model, _ = tiny
    seqs = _seqs([9, 21, 4], seed=3)
    probes = [(_random_probe(seed=1), 2), (_random_probe(seed=2), 1), (_random_probe(seed=3), 2)]
    many = score_positions_many(model, probes, seqs, chunk_len=5, max_batch_tokens=12)
    for (probe, layer), got in zip(probes, many):
        for s, g, h in zip(seqs, got, capture(model, seqs, [layer])):
            torch.testing.assert_close(g, probe.score(h[0]).detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(many[1][1], score_positions(model, probes[1][0], 1, seqs)[1], atol=1e-6, rtol=0)


def test_linear_attribution_is_the_first_order_change_of_the_exact_one(tiny):
    """For a scale near 1 the linear estimate must equal the exact delta to first order: catches a wrong
    head slice, a missing (s - 1) factor or sign, and gradients taken at the wrong position or layer."""
    model, _ = tiny
    seqs = _seqs([11, 17], seed=7)
    finals = [8, 16]
    probe = _random_probe(seed=4)
    scale = 0.95
    exact = {(r["block"], r["head"]): r["delta"] for r in head_attribution(model, probe, 2, seqs, finals, scale=scale)}
    lin = head_attribution_linear(model, probe, 2, seqs, finals, scale=scale)
    assert {(r["block"], r["head"]) for r in lin} == set(exact) and len(lin) == 8
    assert [r["delta_lin"] for r in lin] == sorted((r["delta_lin"] for r in lin), reverse=True)
    worst = max(abs(exact[(r["block"], r["head"])]) for r in lin)
    assert worst > 1e-5  # the heads do move the score
    for r in lin:
        assert r["delta_lin"] == pytest.approx(exact[(r["block"], r["head"])], abs=0.1 * worst)
    # a probe on layer 1 sees block 0 only
    assert {r["block"] for r in head_attribution_linear(model, probe, 1, seqs, finals)} == {0}


def test_rerank_measures_the_top_k_exactly_and_keeps_the_rest(tiny):
    """Catches reranked heads keeping their estimated order or value, and heads lost from the ranking."""
    model, _ = tiny
    seqs, finals = _seqs([10, 13], seed=9), [9, 12]
    probe = _random_probe(seed=5)
    lin = head_attribution_linear(model, probe, 2, seqs, finals)
    ranked = rerank_exact(model, probe, 2, seqs, finals, lin, 3)
    full = {(r["block"], r["head"]): r["delta"] for r in head_attribution(model, probe, 2, seqs, finals)}
    top = ranked[:3]
    assert {(r["block"], r["head"]) for r in top} == {(r["block"], r["head"]) for r in lin[:3]}
    assert [r["delta"] for r in top] == sorted((r["delta"] for r in top), reverse=True)
    for r in top:
        assert r["delta"] == pytest.approx(full[(r["block"], r["head"])], abs=1e-6) and "delta_lin" in r
    assert ranked[3:] == lin[3:] and all("delta" not in r for r in ranked[3:])


def test_ablation_in_place_is_the_weight_edit_and_is_undone(tiny):
    """Catches an edit that misses a head of a block named twice, or one not restored after the arm (the
    next arm would then ablate the union)."""
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    heads = [(1, 2), (0, 1), (1, 0)]
    want = ablated_weights(model, heads, 1e-3)
    with ablated_in_place(model, heads, 1e-3):
        got = model.state_dict()
        for k in want:
            torch.testing.assert_close(got[k], want[k], atol=0, rtol=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_cliff_stats_by_another_templates_refusal():
    """Catches the grouping key ignored (every harmful trace here was answered in its own trace) and the
    think-max share computed on the cliff instead."""
    rows = [{"harmful": True, "refused": False, "refused_plain": True, "cliff": 0.6, "think_max": 0.9,
             "final_score": 0.3},
            {"harmful": True, "refused": False, "refused_plain": False, "cliff": 0.1, "think_max": 0.2,
             "final_score": 0.1},
            {"harmful": False, "refused": False, "refused_plain": False, "cliff": 0.0, "think_max": 0.4,
             "final_score": 0.4}]
    own = cliff_stats(rows)
    assert own["harmful, refused"]["n"] == 0 and own["harmful, answered"]["n"] == 2
    other = cliff_stats(rows, "refused_plain")
    assert other["harmful, refused"]["n"] == 1 and other["harmful, refused"]["cliff_mean"] == pytest.approx(0.6)
    assert other["harmful, refused"]["share_think_max_gt_0.5"] == 1.0
    assert other["harmful, answered"]["share_think_max_gt_0.5"] == 0.0
    assert math.isnan(other["harmful, answered"]["share_cliff_gt_0.5"]) is False


def test_report_numbers_by_hand():
    from rlreason.probes.report import auroc, quantiles, score_summary
    assert auroc([0.9, 0.4], [0.1, 0.4]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)
    assert auroc([], [0.1]) is None
    q = quantiles([3.0, 1.0, float("nan"), 2.0, 4.0])
    assert (q["n"], q["min"], q["median"], q["max"], q["mean"]) == (4, 1.0, 3.0, 4.0, 2.5)
    rows = [{"harmful": True, "refused_plain": True, "cliff": 0.5, "think_max": 0.9, "final_score": 0.4,
             "prompt_last_score": 0.8, "curve": [0.9] * 80 + [0.95] + [0.9] * 19},
            {"harmful": True, "refused_plain": False, "cliff": 0.0, "think_max": 0.3, "final_score": 0.3,
             "prompt_last_score": 0.2, "curve": [0.3] * 100},
            {"harmful": False, "refused_plain": False, "cliff": 0.05, "think_max": 0.2, "final_score": 0.15,
             "prompt_last_score": 0.1, "curve": [0.2] * 100}]
    s = score_summary(rows)
    assert s["groups"]["harmful, refused plainly"]["share_cliff_gt_0.1"] == 1.0
    assert s["groups"]["harmless"]["curve"]["99"] == pytest.approx(0.2)
    assert s["groups"]["harmful, refused plainly"]["peak_position_mean"] == 80
    assert s["groups"]["harmful, refused plainly"]["share_peak_in_last_quarter"] == 1.0
    assert s["groups"]["harmless"]["share_peak_in_last_quarter"] == 0.0  # a flat curve peaks at its first point
    assert s["auroc"]["harmful vs harmless"]["think_max"] == 1.0
    assert s["auroc"]["refused plainly vs answered plainly"]["final_score"] == 1.0


def _write_study_inputs(tmp: Path, model, tok) -> None:
    """data.jsonl, think-then-answer traces (HF engine) and plain rows for 8 harmful + 6 harmless prompts;
    the tiny model never refuses, so the plain rows' refusal labels are assigned here (alternating)."""
    from rlreason.probes.traces import generate_plain, generate_traces
    from rlreason.rollout import SamplingConfig
    from rlreason.rollout.hf_engine import HFEngine
    rows = [{"id": f"h{i}", "source": "advbench", "prompt": f"Explain how to do harmful thing number {i}.",
             "harmful": True, "split": "probe" if i < 5 else "heldout"} for i in range(8)]
    rows += [{"id": f"g{i}", "source": "gsm8k", "prompt": f"What is {i} plus {i + 2}?", "harmful": False,
              "split": "probe" if i < 4 else "heldout", "gold": str(2 * i + 2),
              "reference": f"{i} + {i + 2} = {2 * i + 2}. The answer is {2 * i + 2}."} for i in range(6)]
    D.write_jsonl(rows, tmp / "data.jsonl")
    engine = HFEngine(model, tokenizer=tok, sampling=SamplingConfig(temperature=0.0), max_model_len=512)
    D.write_jsonl(generate_traces(engine, rows, max_think_tokens=6, max_answer_tokens=3), tmp / "traces.jsonl")
    plain = generate_plain(engine, rows, max_answer_tokens=3)
    for k, t in enumerate(plain):
        t["refused"] = t["harmful"] and k % 2 == 0
    D.write_jsonl(plain, tmp / "traces_plain.jsonl")


@pytest.mark.slow
def test_study_steps_end_to_end_on_tiny_random(tiny, tmp_path):
    """launch/refusal_cliff_qwen_cpu.sh from capture to report on tiny-random (HF engine): the probes are
    trained on the plain rows at their last prompt token, both are scored in one pass and grouped by the
    plain refusal, the heads step ranks linearly and evaluates the ablation, the report has every section."""
    model, tok = tiny
    _write_study_inputs(tmp_path, model, tok)
    env = {**os.environ, "RLREASON_NO_PRELOAD": "1", "PYTHONPATH": str(REPO), "OUT": str(tmp_path),
           "MODEL": "tiny-random", "ENGINE": "hf", "STEPS": "capture train score heads report",
           "RLREASON": f"{sys.executable} -m rlreason.cli", "PY": sys.executable, "LOCK": str(tmp_path / "lock"),
           "MAX_THINK": "6", "MAX_ANSWER": "3", "HEAD_TRACES": "2", "RERANK": "2", "N_EVAL": "3",
           "SCORE_HARMLESS": "4", "RESULTS": str(tmp_path / "res" / "study")}
    r = subprocess.run(["bash", str(REPO / "launch/refusal_cliff_qwen_cpu.sh")], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    from safetensors import safe_open
    plain = D.read_jsonl(tmp_path / "traces_plain.jsonl")
    with safe_open(str(tmp_path / "features_plain_refused-vs-answered.safetensors"), "pt") as f:
        feats, labels, meta = f.get_tensor("features"), f.get_tensor("labels"), f.metadata()
    harmful = [t for t in plain if t["harmful"]]
    assert json.loads(meta["ids"]) == [t["id"] for t in harmful]
    assert labels.tolist() == [int(t["refused"]) for t in harmful]
    # the step ran the model in bf16 (its default dtype): compare with the same dtype, and check that the
    # states are the last prompt token's, not the previous one's (that differs far more than bf16 rounding;
    # the tiny model answers with repeats of the prompt's last token, "\n", so the next one cannot be told apart)
    import copy
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ids = [t["ids"] for t in harmful]
    at = {d: states_at(bf16, ids, [t["prompt_len"] - 1 + d for t in harmful], [0, 1, 2]) for d in (-1, 0)}
    torch.testing.assert_close(feats, at[0], atol=2e-2, rtol=2e-2)
    assert ((feats - at[-1]).abs().amax(-1) > 10 * (feats - at[0]).abs().amax(-1).clamp_min(1e-3)).all()
    scores = D.read_jsonl(tmp_path / "score_refusal" / "scores.jsonl")
    assert len(scores) == 8 + 4 and all("refused_plain" in s for s in scores)
    stats = json.loads((tmp_path / "score_refusal" / "cliff_stats.json").read_text())
    assert stats["by_refusal_plain"]["harmful, refused"]["n"] == sum(t["refused"] for t in harmful)
    heads = json.loads((tmp_path / "heads.json").read_text())
    assert heads["method"] == "linear" and "delta" in heads["ranking"][0]
    assert len(heads["ranking"]) == 4 * min(heads["layer"], 2)  # 4 heads per block the probe can see
    assert set(heads["ablation"]) == {"none", "top 1", "random 1"}
    # --ranking-from: the ablation alone on an earlier ranking; a ranking for another probe layer is refused
    cli = [sys.executable, "-m", "rlreason.cli", "probe", "heads", "--probe", str(tmp_path / "probe_refusal"),
           "--traces", str(tmp_path / "traces.jsonl"), "--engine", "hf", "--max-think", "4", "--max-answer", "2"]
    again = subprocess.run(cli + ["--ranking-from", str(tmp_path / "heads.json"), "--data", str(tmp_path / "data.jsonl"),
                                  "--n-eval", "1", "--out", str(tmp_path / "heads2.json")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    heads2 = json.loads((tmp_path / "heads2.json").read_text())
    assert heads2["ranking"] == heads["ranking"] and heads2["ablated_heads"] == heads["ablated_heads"]
    assert heads2["ablation"]["none"]["n_harmful"] == 1
    (tmp_path / "other.json").write_text(json.dumps({**heads, "layer": heads["layer"] + 7}))
    bad = subprocess.run(cli + ["--ranking-from", str(tmp_path / "other.json"), "--out", str(tmp_path / "h3.json")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "this probe reads layer" in bad.stderr and "Traceback" not in bad.stderr
    report = json.loads((tmp_path / "res" / "study.json").read_text())
    assert set(report) == {"refusals", "probes", "scores", "heads"}
    assert set(report["probes"]) == {"refusal", "refused-vs-answered"}
    md = (tmp_path / "res" / "study.md").read_text()
    assert "## Probe `refused-vs-answered`" in md and "| none |" in md
    assert (tmp_path / "res" / "study_cliff_refusal.png").stat().st_size > 0


def test_score_refuses_mismatched_outputs_and_missing_plain_rows(tmp_path):
    D.write_jsonl([{"id": "a", "split": "probe", "harmful": True}], tmp_path / "t.jsonl")
    D.write_jsonl([{"id": "b", "refused": True}], tmp_path / "p.jsonl")
    env = {**os.environ, "RLREASON_NO_PRELOAD": "1", "PYTHONPATH": str(REPO)}
    base = [sys.executable, "-m", "rlreason.cli", "probe", "score", "--traces", str(tmp_path / "t.jsonl")]
    r = subprocess.run(base + ["--probe", "x", "y", "--out", "o.jsonl", "--plot", "a.png"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "one --out and one --plot per probe" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(base + ["--refused-from", str(tmp_path / "p.jsonl")], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "no row for 1 scored trace" in r.stderr and "Traceback" not in r.stderr
