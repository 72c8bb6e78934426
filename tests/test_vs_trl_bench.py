"""benchmarks/vs_trl.py's workload and result arithmetic, without TRL or a model: the prompt set both systems
train on, the rlreason config it builds, the TRL-side reward, and the median/ratio summary of interleaved runs."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def vs_trl():
    spec = importlib.util.spec_from_file_location("vs_trl", REPO / "benchmarks" / "vs_trl.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_questions_are_the_fixed_single_digit_sums(vs_trl):
    qs = vs_trl.questions()
    assert len(qs) == 32 and qs == vs_trl.questions()  # deterministic: both systems and reruns see the same
    for q in qs:
        a, b = q["question"].removeprefix("What is ").removesuffix("?").split(" + ")
        assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9 and q["answer"] == str(int(a) + int(b))
    assert vs_trl.prompt_text(qs[0]) == qs[0]["question"] + " Put the final answer in \\boxed{}."
    assert len({q["question"] for q in qs}) > 16  # not one repeated prompt


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_rlreason_config_renders_the_same_prompt(vs_trl, tmp_path, dtype):
    from rlreason.config import load_config
    from rlreason.data import build_dataset

    data = tmp_path / "q.jsonl"
    vs_trl.write_jsonl(data, vs_trl.questions())
    cfg = load_config(None, vs_trl.rlreason_overrides(data, tmp_path / "out", dtype))
    assert cfg.model.dtype == dtype  # the dtype TRL's side gets too (bf16 autocast / a bf16 vLLM, or fp32)
    assert (cfg.trainer.prompts_per_step, cfg.trainer.samples_per_prompt, cfg.env.args["max_tokens"]) == (8, 4, 128)
    assert cfg.trainer.lr == 1e-6 and cfg.algo.kl_coef == 0.0 and cfg.env.args["style"] == "chat"
    # every row runs through the update, as in TRL (rlreason-skip: the default, zero-advantage rows left out)
    assert cfg.trainer.skip_zero_advantage is False
    skip = load_config(None, vs_trl.rlreason_overrides(data, tmp_path / "out", dtype, skip_zero_advantage=True))
    assert skip.trainer.skip_zero_advantage is True
    ds = build_dataset(cfg.data.train, key="data.train")
    assert [r["question"] for r in ds] == [q["question"] for q in vs_trl.questions()]
    q = vs_trl.questions()[3]
    assert cfg.env.args["template"].format(question=q["question"]) == vs_trl.prompt_text(q)


@pytest.mark.parametrize("text, answer, want", [
    ("so \\boxed{7}", "7", 1.1),
    ("\\boxed{3} no, \\boxed{7}", "7", 1.1),  # the last box counts
    ("\\boxed{7} no, \\boxed{8}", "7", 0.1),
    ("\\boxed{}", "7", 0.0),  # an empty box is no answer
    ("7", "7", 0.0),
])
def test_trl_reward_matches_math_plus_tenth_format(vs_trl, text, answer, want):
    assert vs_trl.reward(text, answer) == pytest.approx(want)


def _run(steps, scale=1.0):
    return {"steps": [s * scale for s in steps], "tokens": [100.0 + i for i in range(6)],
            "phases": {"rollout": [s * scale / 2 for s in steps], "sync": [0.1] * 6}, "peak_rss_gb": 5.0 * scale}


def test_summary_is_the_median_of_steps_2_to_6_and_ratios_per_round(vs_trl):
    ours = [[50, 10, 11, 12, 13, 30], [40, 20, 21, 22, 23, 24]]  # step 1 (warm-up) never counts
    trl = [[90, 30, 30, 33, 36, 90], [90, 40, 44, 42, 46, 48]]
    runs = {"rlreason": [_run(s) for s in ours], "trl-vllm": [_run(s, 2.0) for s in trl]}
    s = vs_trl.summarize(runs)
    round_medians = [statistics.median(r[1:6]) for r in ours]
    assert s["rlreason"]["rounds"] == round_medians == [12, 22]
    assert s["rlreason"]["s_per_step"] == statistics.median(round_medians)
    assert s["rlreason"]["phases"]["rollout"] == statistics.median([6, 11])
    assert s["rlreason"]["tokens_per_step"] == 103.0
    assert s["trl-vllm"]["peak_rss_gb"] == 10.0
    ratios = [statistics.median([2 * x for x in t[1:6]]) / statistics.median(o[1:6]) for t, o in zip(trl, ours)]
    med, lo, hi = vs_trl.speedups(runs, "trl-vllm")
    assert (med, lo, hi) == pytest.approx((statistics.median(ratios), min(ratios), max(ratios)))
    text = vs_trl.report(runs, [])
    assert f"{med:.2f}x faster" in text and "0.50x of trl-vllm's" in text


def test_too_few_steps_and_missing_result_are_errors(vs_trl):
    with pytest.raises(ValueError, match="expected 6 step times"):
        vs_trl.timed([1.0, 2.0])
    with pytest.raises(ValueError, match="no RESULT"):
        vs_trl.parse_result("vLLM noise\n")
    out = "noise\nRESULT " + json.dumps({"steps": [1]}) + "\nRESULT " + json.dumps({"steps": [2]}) + "\n"
    assert vs_trl.parse_result(out) == {"steps": [2]}


def _rounded(x):
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return round(x, 2)


def test_printed_rounds_summarise_again(vs_trl):
    """A printed run (or one cut short at a round boundary) gives the same summary as the run itself."""
    runs = {"rlreason": [_run([50, 10, 11, 12, 13, 30]), _run([40, 20, 21, 22, 23, 24])],
            "trl-vllm": [_run([90, 30, 30, 33, 36, 90], 2.0)]}
    text = "\n".join(["header", *[line for x, rs in runs.items() for i, r in enumerate(rs)
                                  for line in (vs_trl.round_line(i + 1, x, r), vs_trl.phase_line(i + 1, x, r))]])
    back = vs_trl.parse_rounds(text)
    assert _rounded(vs_trl.summarize(back)) == _rounded(vs_trl.summarize(runs))
    # an older output without phase lines still gives s/step, tokens and RSS
    bare = vs_trl.parse_rounds("\n".join(line for line in text.splitlines() if " phases " not in line))
    assert vs_trl.summarize(bare)["trl-vllm"]["s_per_step"] == 2 * 33 and bare["trl-vllm"][0]["phases"] == {}


def test_machine_limit_targets_from_the_runs_perf_and_the_probed_limits(vs_trl):
    """Rollout: bound (weights / bandwidth) over achieved seconds per decode step; MFU: update TFLOP/s over the
    probed peak; each the median of steps 2-6 per round, and the printed output gives them back."""
    # 10 ms per decode step at best; bf16 weights: 0.135e9 parameters, 0.27 GFLOP per token
    lim = {"bandwidth": 27e9, "peak_flops": 2e12, "weight_bytes": 0.27e9, "flops_per_token": 0.27e9}
    r = _run([50, 10, 11, 12, 13, 30])
    # 128 decode steps each; steps 2-6 take 20, 20, 40, 20, 70 ms per decode step: 0.5, 0.5, 0.25, 0.5, 0.14
    r["phases"]["rollout"] = [1.0, 2.56, 2.56, 5.12, 2.56, 8.96]
    r["perf"] = {"update_tflops": [9.0, 0.4, 0.5, 0.6, 0.7, 0.1], "decode_steps": [128.0] * 6}
    f = vs_trl.limit_fractions({"rlreason": [r]}, lim)
    assert f["rollout_bw"] == pytest.approx([0.5])
    assert f["mfu"] == pytest.approx([0.5 / 2])  # median of steps 2-6 (step 1's 9.0 never counts)
    # _run's tokens: 1000 per step, 0.135 s of matmuls at 2 TFLOP/s, far under the 1.28 s of weight reads: the
    # roofline is the bandwidth bound here
    assert f["rollout_roofline"] == pytest.approx(f["rollout_bw"])
    runs = {"rlreason": [r], "trl-vllm": [_run([90, 30, 30, 33, 36, 90], 2.0)]}
    text = vs_trl.report(runs, [], lim)
    assert "rollout >= 40% of the bandwidth bound -> met (50.0%" in text and "update MFU >= 40% -> NOT met (25.0%" in text
    printed = "\n".join([vs_trl.limits_line(lim, "bf16"), vs_trl.round_line(1, "rlreason", r),
                         vs_trl.phase_line(1, "rlreason", r), vs_trl.perf_line(1, "rlreason", r)])
    assert vs_trl.parse_limits(printed) == pytest.approx(lim)
    back = vs_trl.parse_rounds(printed)
    again = vs_trl.limit_fractions(back, vs_trl.parse_limits(printed))
    assert again["rollout_bw"] == pytest.approx(f["rollout_bw"]) and again["mfu"] == pytest.approx(f["mfu"])
    assert again["rollout_roofline"] == pytest.approx(f["rollout_roofline"])


def test_rollout_roofline_is_the_compute_bound_where_matmuls_are_slow(vs_trl):
    """fp32 on an AVX2 CPU: 0.14 TFLOP/s. 2000 tokens x 0.27 GFLOP = 3.86 s of matmuls, against 128 x 0.54 GB /
    34 GB/s = 2.03 s of weight reads; over a 12 s rollout: 32.1% of the roofline, 16.9% of the bandwidth bound."""
    lim = {"bandwidth": 34e9, "peak_flops": 0.14e12, "weight_bytes": 0.54e9, "flops_per_token": 0.27e9}
    r = _run([50, 30, 30, 30, 30, 30])
    r["phases"]["rollout"] = [12.0] * 6
    r["tokens"] = [2000.0] * 6
    r["perf"] = {"update_tflops": [0.07] * 6, "decode_steps": [128.0] * 6}
    f = vs_trl.limit_fractions({"rlreason": [r]}, lim)
    assert f["rollout_roofline"] == pytest.approx([2000 * 0.27e9 / 0.14e12 / 12.0])
    assert f["rollout_bw"] == pytest.approx([128 * 0.54e9 / 34e9 / 12.0])
    text = vs_trl.report({"rlreason": [r]}, [], lim)
    assert "rollout against its roofline" in text and "peak): 32.1% (rounds 32.1%-32.1%)" in text


def test_limits_of_either_dtype_parse_back(vs_trl):
    """--summarize reads the limits of an fp32 run and of the bf16 outputs committed before --dtype existed."""
    lim = {"bandwidth": 25.37e9, "peak_flops": 1.796e12, "weight_bytes": 0.269e9}
    for dtype, width in (("bf16", 2), ("fp32", 4)):  # the FLOPs per token come from the weights' bytes and width
        want = {**lim, "flops_per_token": 2 * 0.269e9 / width}
        assert vs_trl.parse_limits(vs_trl.limits_line(lim, dtype)) == pytest.approx(want)
    old = (REPO / "benchmarks" / "results" / "vs_trl_cpu_2026-12-07.txt").read_text()
    assert vs_trl.parse_limits(old) == pytest.approx({**lim, "flops_per_token": 0.269e9})
