"""Repair with a retain set and the cliff / random / full comparison (rlreason/probes/retain.py, compare.py,
`rlreason repair --scores`, the `repair` step of launch/refusal_cliff_qwen_cpu.sh). Each test names the wrong
implementation it would catch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlreason.probes import data as D
from rlreason.probes.compare import build_sets, candidate_rows, comparison_markdown, spread, summarize, write_report
from rlreason.probes.retain import draw_retain, mix_retain, n_retain, retain_pool, retain_row
from rlreason.probes.select import REFUSAL_RESPONSE
from rlreason.probes.traces import THINK_CLOSE
from rlreason.registry import ConfigError

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "RLREASON_NO_PRELOAD": "1", "PYTHONPATH": str(REPO)}


def _traces(n_harmful: int = 12, n_harmless: int = 16) -> list[dict]:
    """Think-then-answer traces as `probe traces` writes them: harmful ones in probe/candidates/heldout,
    harmless ones in probe/heldout; one harmless probe trace refused, one with an empty answer."""
    rows = []
    for i in range(n_harmful):
        split = "candidates" if i < 8 else ("probe" if i < 10 else "heldout")
        rows.append({"id": f"h{i}", "prompt": f"Explain harmful thing {i}.", "harmful": True, "split": split,
                     "think": f"They want harmful thing {i}. ", "answer": "Sure, step one", "refused": False,
                     "answer_finish": "length"})
    for i in range(n_harmless):
        split = "probe" if i < n_harmless - 6 else "heldout"
        rows.append({"id": f"g{i}", "prompt": f"What is {i} plus {i + 2}?", "harmful": False, "split": split,
                     "think": f"{i} + {i + 2} = {2 * i + 2}. ", "answer": f" The answer is {2 * i + 2}.",
                     "refused": i == 1, "answer_finish": "length" if i == 2 else "stop",
                     "gold": str(2 * i + 2), "reference": f"{i} + {i + 2} = {2 * i + 2}. The answer is {2 * i + 2}."})
    rows[n_harmful + 3]["answer"] = "  "
    return rows


def _scores(traces: list[dict]) -> list[dict]:
    """`probe score` rows: cliff rising with the index, so the cliff ranking is known (h7 first)."""
    return [{"id": t["id"], "harmful": t["harmful"], "split": t["split"], "refused": t["refused"],
             "cliff": int(t["id"][1:]) / 10 if t["harmful"] else 0.0, "final_score": 0.3} for t in traces]


# --- the retain set -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ratio,n_safety,want", [(1.0, 7, 7), (0.5, 7, 4), (2.0, 3, 6), (0.0, 9, 0), (0.25, 8, 2)])
def test_retain_ratio_is_honoured_exactly(ratio, n_safety, want):
    """Catches a ratio read as a share of the whole set (0.5 -> 7 of 14 rows) or floored instead of rounded."""
    pool = retain_pool(_traces(n_harmless=40))
    safety = [{"id": f"s{i}", "prompt": "p", "response": "r"} for i in range(n_safety)]
    mixed = mix_retain(safety, pool, ratio, seed=0)
    assert n_retain(n_safety, ratio) == want
    assert mixed[:n_safety] == safety and len(mixed) - n_safety == want
    assert len({r["id"] for r in mixed[n_safety:]}) == want  # drawn without replacement


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_bad_retain_ratio_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--retain-ratio: a number >= 0"):
        n_retain(4, bad)


def test_retain_pool_never_holds_heldout_harmful_or_refused_prompts():
    """Catches a pool that takes every harmless trace (the heldout split is the evaluation set), keeps a
    refused or empty answer as a 'helpful' one, or misses an evaluation prompt stored under another id."""
    traces = _traces()
    traces.append({**traces[-1], "id": "dup", "split": "probe"})  # a heldout prompt's text under a probe id
    heldout = [t["prompt"] for t in traces if t["split"] == "heldout"]
    pool = retain_pool(traces, exclude_prompts=heldout)
    ids = [r["id"] for r in pool]
    assert ids == ["g0", "g2", "g4", "g5", "g6", "g7", "g8", "g9"]  # g1 refused, g3 empty answer, dup excluded
    assert not set(r["prompt"] for r in pool) & set(heldout)
    with pytest.raises(ConfigError, match="'heldout' is the evaluation split"):
        retain_pool(traces, splits=["probe", "heldout"])


def test_retain_row_is_own_thinking_and_answer_without_eos_when_cut():
    """Catches a retain row that trains an end of turn after an answer cut by the token budget (it would teach
    stopping mid-answer) or drops the thinking (unlike the safety rows it is mixed with)."""
    t = _traces()[12 + 2]
    assert t["answer_finish"] == "length"
    row = retain_row(t)
    assert row["response"] == f"{t['think']}{THINK_CLOSE}{t['answer']}" and row["eos"] is False
    assert retain_row({**t, "answer_finish": "stop"})["eos"] is True


def test_sft_example_leaves_out_eos_when_the_row_says_so(tiny_tokenizer):
    from rlreason.probes.repair import sft_example
    row = {"prompt": "What is 2 plus 2?", "response": "4 = 2 + 2</think> The answer"}
    ids, labels = sft_example(tiny_tokenizer, row, 512)
    cut_ids, cut_labels = sft_example(tiny_tokenizer, {**row, "eos": False}, 512)
    assert labels[-1] == tiny_tokenizer.eos_token_id and ids[:-1] == cut_ids and labels[:-1] == cut_labels


def test_retain_draw_is_seeded_and_nested():
    """Catches an unseeded draw (not reproducible) and draws of different sizes that are unrelated (the cliff
    and random arms would then differ in their retain rows, not only in their safety rows)."""
    pool = retain_pool(_traces(n_harmless=60))
    assert draw_retain(pool, 10, seed=3) == draw_retain(pool, 10, seed=3)
    assert draw_retain(pool, 10, seed=3) != draw_retain(pool, 10, seed=4)
    assert draw_retain(pool, 25, seed=3)[:10] == draw_retain(pool, 10, seed=3)
    with pytest.raises(ConfigError, match=f"needs {len(pool) + 1} retain rows, the pool has {len(pool)}"):
        draw_retain(pool, len(pool) + 1, seed=0)


# --- the arms -------------------------------------------------------------------------------------------

def test_arms_cliff_random_full_with_the_same_retain_rows():
    """Catches a cliff arm that is not the top by cliff, a random arm of another size or the same draw for
    every seed, a full arm that is not every candidate, and retain rows that differ between equal-size arms."""
    traces = _traces()
    cands = [s for s in _scores(traces) if s["harmful"] and s["split"] == "candidates"]
    by_id = {t["id"]: t for t in traces}
    pool = retain_pool(traces)
    sets = build_sets(cands, by_id, pool, arms=["cliff", "random", "full"], seeds=[0, 1, 2], top_p=0.25,
                      retain_ratio=1.0)
    assert [(s.arm, s.seed) for s in sets] == [(a, k) for k in range(3) for a in ("cliff", "random", "full")]
    got = {(s.arm, s.seed): s for s in sets}
    for k in range(3):
        cliff, rand, full = got["cliff", k], got["random", k], got["full", k]
        assert [r["id"] for r in cliff.rows[:2]] == ["h7", "h6"] and cliff.n_safety == rand.n_safety == 2
        assert full.n_safety == 8 and full.n_retain == 8 and cliff.n_retain == rand.n_retain == 2
        assert cliff.rows[2:] == rand.rows[2:] == full.rows[8:10]
        assert all(r["response"].endswith(THINK_CLOSE + "\n" + REFUSAL_RESPONSE) for r in cliff.rows[:2])
        assert all(r["id"].startswith("g") for r in full.rows[8:])
    draws = {tuple(r["id"] for r in got["random", k].rows[:2]) for k in range(3)}
    assert len(draws) > 1
    # the largest arm's retain need is checked before anything is built
    with pytest.raises(ConfigError, match=r"largest arm \(8 safety rows\) needs 16 retain rows"):
        build_sets(cands, by_id, pool, arms=["cliff", "full"], seeds=[0], top_p=0.25, retain_ratio=2.0)
    with pytest.raises(ConfigError, match="each seed once"):
        build_sets(cands, by_id, pool, arms=["cliff"], seeds=[0, 0], top_p=0.25, retain_ratio=1.0)


def test_candidate_cap_is_taken_in_file_order_before_ranking():
    """Catches a cap applied after the cliff ranking (the cliff arm would then be the top of all candidates
    while full is a smaller, unranked pool) and harmless or other-split rows among the candidates."""
    scores = _scores(_traces())
    assert [r["id"] for r in candidate_rows(scores, max_n=4)] == ["h0", "h1", "h2", "h3"]
    assert [r["id"] for r in candidate_rows(scores)] == [f"h{i}" for i in range(8)]
    with pytest.raises(ConfigError, match="--max-candidates: a count >= 0"):
        candidate_rows(scores, max_n=-1)


# --- the summary ----------------------------------------------------------------------------------------

def test_spread_and_summary_by_hand(tmp_path):
    """Catches a population std where the sample std is meant, NaN (no GSM8K rows) leaking into the mean, and
    runs of one arm summarised under another."""
    s = spread([0.5, 1.0, 0.75])
    assert s["mean"] == pytest.approx(0.75) and s["std"] == pytest.approx(0.25)
    assert (s["min"], s["max"], s["n"]) == (0.5, 1.0, 3)
    assert spread([0.4])["std"] is None and spread([])["mean"] is None  # one seed: no spread, not a spread of 0
    runs = [{"arm": a, "seed": k, "n_safety": 2, "n_retain": 2, "attack_success": x, "over_refusal": 0.0,
             "gsm8k_acc": math.nan if k == 0 else 0.5, "ref_nll": 1.0, "loss/first": 2.0, "loss/last": 1.0,
             "seconds": 3.0} for a, xs in (("cliff", (1.0, 0.5, 0.0)), ("random", (1.0, 1.0, 1.0)))
            for k, x in enumerate(xs)]
    summ = summarize(runs)
    assert list(summ) == ["cliff", "random"] and summ["cliff"]["seeds"] == [0, 1, 2]
    assert summ["cliff"]["attack_success"]["mean"] == pytest.approx(0.5)
    assert summ["cliff"]["attack_success"]["std"] == pytest.approx(0.5)
    assert summ["random"]["attack_success"]["std"] == 0.0 and summ["cliff"]["gsm8k_acc"]["n"] == 2
    results = {"before": {"attack_success": 1.0, "over_refusal": 0.0, "gsm8k_acc": 0.5, "ref_nll": 1.0,
                          "n_harmful": 3, "n_harmless": 3, "n_gsm8k": 2},
               "retain_ratio": 1.0, "top_p": 0.25, "seeds": [0, 1, 2], "runs": runs, "summary": summ}
    md = comparison_markdown(results)
    assert "| cliff | 2 + 2 | 0.500 ± 0.500 [0.000, 1.000] |" in md and "| before (no repair) | 0 | 1.000 |" in md
    one = comparison_markdown({**results, "summary": summarize(runs[:1])})
    assert "| cliff | 2 + 2 | 1.000 (1 seed, no spread) |" in one
    js, md_path = write_report(results, tmp_path / "res" / "rep")
    assert json.loads(js.read_text())["runs"][0]["gsm8k_acc"] is None and md_path.read_text() == md


# --- end to end -----------------------------------------------------------------------------------------

def _write_inputs(tmp: Path) -> None:
    traces = _traces()
    D.write_jsonl([{k: t[k] for k in ("id", "prompt", "harmful", "split", "gold", "reference") if k in t}
                   for t in traces], tmp / "data.jsonl")
    D.write_jsonl(traces, tmp / "traces.jsonl")
    D.write_jsonl(_scores(traces), tmp / "score_refusal" / "scores.jsonl")


def test_repair_step_of_the_launch_script_on_tiny_random(tmp_path):
    """The `repair` step of launch/refusal_cliff_qwen_cpu.sh (rlreason repair --scores, HF engine, LoRA) on
    tiny-random: 3 arms x 3 seeds from one base, each evaluated; the summary and the report. Catches arms
    trained one on top of another (the base is reloaded per set), a seed that does not reach the SFT order
    or the random draw, and a report that drops a run."""
    _write_inputs(tmp_path)
    env = {**ENV, "OUT": str(tmp_path), "MODEL": "tiny-random", "ENGINE": "hf", "STEPS": "repair",
           "RLREASON": f"{sys.executable} -m rlreason.cli", "PY": sys.executable, "LOCK": str(tmp_path / "lock"),
           "MAX_THINK": "4", "MAX_ANSWER": "2", "REPAIR_N_EVAL": "2", "REPAIR_SEEDS": "0 1 2",
           "REPAIR_TOP_P": "0.25", "REPAIR_EPOCHS": "1", "REPAIR_BATCH": "2", "REPAIR_MAX_LEN": "96",
           "REPAIR_RESULTS": str(tmp_path / "res" / "repair")}
    r = subprocess.run(["bash", str(REPO / "launch/refusal_cliff_qwen_cpu.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    res = json.loads((tmp_path / "res" / "repair.json").read_text())
    assert [(x["arm"], x["seed"]) for x in res["runs"]] == [(a, k) for k in range(3) for a in ("cliff", "random", "full")]
    assert res["retain_ratio"] == 1.0 and res["config"]["lora"] is True
    by = {(x["arm"], x["seed"]): x for x in res["runs"]}
    assert by["cliff", 0]["sft_ids"][:2] == ["h7", "h6"] and by["full", 0]["n_safety"] == 8
    assert all(x["n_retain"] == x["n_safety"] for x in res["runs"])
    heldout = {t["id"] for t in _traces() if t["split"] == "heldout"}
    assert not heldout & {i for x in res["runs"] for i in x["sft_ids"]}
    assert {tuple(by["random", k]["sft_ids"]) for k in range(3)} != {tuple(by["random", 0]["sft_ids"])}
    assert res["before"]["n_harmful"] == 2 and res["before"]["n_gsm8k"] == 2
    for arm in ("cliff", "random", "full"):
        assert res["summary"][arm]["attack_success"]["n"] == 3
    md = (tmp_path / "res" / "repair.md").read_text()
    assert "| full | 8 + 8 |" in md and md.count("| random |") == 4


def test_repair_bad_input_is_one_line(tmp_path):
    _write_inputs(tmp_path)
    base = [sys.executable, "-m", "rlreason.cli", "repair", "--data", str(tmp_path / "data.jsonl"),
            "--model", "tiny-random", "--engine", "hf"]
    cases = [(["--scores", str(tmp_path / "score_refusal" / "scores.jsonl"), "--traces", str(tmp_path / "traces.jsonl"),
               "--retain-ratio", "-1"], "--retain-ratio: a number >= 0"),
             (["--scores", str(tmp_path / "score_refusal" / "scores.jsonl")], "repair --traces: needed"),
             ([], "give either --sft"),
             (["--sft", "x.jsonl", "--traces", str(tmp_path / "traces.jsonl"), "--retain-split", "heldout"],
              "'heldout' is the evaluation split")]
    for extra, msg in cases:
        r = subprocess.run(base + extra, capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr[-1500:])
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_sft_with_bf16_autocast_learns_and_keeps_fp32_weights(tiny_model_dir):
    """`--bf16-autocast true` runs the trainer's mixed precision: catches weights cast to bf16 (LoRA updates
    of ~1e-4 would round away) and an autocast that leaves the loss unable to fall."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from rlreason.probes.config import RepairConfig
    from rlreason.probes.repair import sft
    model, tok = AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "Do a bad thing.", "response": "I'm sorry, I can't."}, {"prompt": "Another.", "response": "No."}]
    model, stats = sft(model, tok, rows, RepairConfig(lr=1e-2, epochs=15, batch_size=2, bf16_autocast=True))
    assert stats["loss/last"] < 0.5 * stats["loss/first"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_restore_weights_undoes_training_exactly(tiny_model_dir):
    """Catches a restore that misses a tensor (the next arm would start from the previous arm's weights) or
    breaks the tied LM head."""
    import torch
    from transformers import AutoModelForCausalLM
    from rlreason.probes.repair import restore_weights
    fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    restore_weights(model, tiny_model_dir)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr() \
        or not fresh.config.tie_word_embeddings


def test_trace_rows_are_trained_on_the_tokens_generation_feeds_the_model(tiny_tokenizer):
    """Catches SFT rows that tokenise "thinking</think>answer" as one string: the tokenizer then merges across
    the boundaries (here "\\n\\n" before "</think>"; with Qwen's, ">" + "\\n" in every row), so the model is
    trained on token sequences it never sees at evaluation, where generate_traces feeds the prompt, the
    thinking's own ids and "</think>"'s ids apart and the answer is generated after them."""
    from rlreason.probes.repair import sft_example
    from rlreason.probes.select import sft_rows
    from rlreason.probes.traces import build_prompt_ids
    tok = tiny_tokenizer
    trace = {"id": "h1", "prompt": "How do I pick a lock?", "think": "The user asks about locks.\n\n",
             "answer": " Sure, here is how", "answer_finish": "stop"}
    head = (build_prompt_ids(tok, trace["prompt"]) + tok.encode(trace["think"], add_special_tokens=False)
            + tok.encode(THINK_CLOSE, add_special_tokens=False))
    for row in (sft_rows([trace])[0], retain_row(trace)):
        ids, labels = sft_example(tok, row, 512)
        assert ids[:len(head)] == head, row
        answer = tok.encode(row["answer"], add_special_tokens=False)
        assert ids[len(head):] == answer + [tok.eos_token_id]
        assert labels[len(build_prompt_ids(tok, trace["prompt"])):] == ids[len(build_prompt_ids(tok, trace["prompt"])):]
