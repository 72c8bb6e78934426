"""Refusal-cliff probes (rlreason/probes/) on the tiny random Llama (2 blocks, 4 heads of 32, hidden 64)
and on literal numbers. Each test names the wrong implementation it would catch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from rlreason.probes import data as D
from rlreason.probes.capture import capture, resolve_layers, states_at
from rlreason.probes.cliff import cliff_size, right_aligned_curve, score_positions, trace_cliff
from rlreason.probes.config import ProbeConfig, RepairConfig
from rlreason.probes.heads import ablated_weights, head_attribution, o_proj, scaled_heads, top_heads
from rlreason.probes.probe import LinearProbe, balanced_split, load_probe, save_probe, train_probe
from rlreason.probes.select import select, sft_rows
from rlreason.probes.traces import THINK_CLOSE, generate_traces, phrase_judge, probe_label


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = tiny_model_dir
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _random_probe(h=64, seed=0):
    """A probe with random weights (a trained one starts at zero and would score 0.5 everywhere)."""
    probe = LinearProbe(h)
    with torch.no_grad():
        probe.linear.weight.normal_(0, 1, generator=torch.Generator().manual_seed(seed))
    return probe


def _seqs(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 40000, (n,), generator=g).tolist() for n in lengths]


# --- capture ------------------------------------------------------------------------------------------

def test_capture_right_padded_batches_equal_unpadded_forward(tiny):
    """Catches left padding (positions shift), a wrong row/sequence mapping after the length sort, a
    chunked forward that loses the KV cache (later chunks would differ) and off-by-one layer numbering."""
    model, _ = tiny
    seqs = _seqs([7, 23, 15, 1, 40])
    got = capture(model, seqs, resolve_layers("all", 2), chunk_len=6, max_batch_tokens=18)
    for s, h in zip(seqs, got):
        with torch.no_grad():
            ref = model.model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states
        assert h.shape == (3, len(s), 64)
        for layer in range(3):
            torch.testing.assert_close(h[layer], ref[layer][0], atol=2e-5, rtol=1e-4)


def test_early_stop_and_states_at_match_full_capture(tiny):
    """One shallow layer (the forward stops after block 1) and one position per sequence (the tail is
    cut off) must read exactly what the full capture reads."""
    model, _ = tiny
    seqs = _seqs([9, 30, 12], seed=1)
    full = capture(model, seqs, [0, 1, 2])
    shallow = capture(model, seqs, [1], chunk_len=8)
    pos = [3, 29, 0]
    at = states_at(model, seqs, pos, [2, 1], max_batch_tokens=64)
    for i, s in enumerate(seqs):
        torch.testing.assert_close(shallow[i][0], full[i][1], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(at[i, 0], full[i][2, pos[i]], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(at[i, 1], full[i][1, pos[i]], atol=2e-5, rtol=1e-4)


def test_resolve_layers():
    assert resolve_layers("all", 2) == [0, 1, 2]
    assert resolve_layers("last", 30) == [30]
    assert resolve_layers("0,-1", 30) == [0, 30]
    with pytest.raises(ValueError):
        resolve_layers("31", 30)


# --- probe --------------------------------------------------------------------------------------------

def _separable(n=240, h=32, shift=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    direction = torch.randn(h, generator=g)
    X = torch.randn(n, h, generator=g) * 5 + 40 + shift * y[:, None] * direction / direction.norm() * 5
    return X, y


def test_probe_separates_separable_data_and_not_noise():
    X, y = _separable()
    probe, m = train_probe(X, y.tolist())
    assert m["test_acc"] >= 0.9 and m["test_auroc"] >= 0.95
    # best validation checkpoint kept: its accuracy is the best over the epochs
    assert m["val_acc"] == max(e["val_acc"] for e in m["history"] + [{"val_acc": m["val_acc"]}])
    # labels independent of X: a probe that reported train accuracy or leaked labels would still score
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    _, noise = train_probe(torch.randn(240, 32), shuffled.tolist())
    assert noise["test_acc"] < 0.75


def test_balanced_split_is_balanced_and_disjoint():
    y = [1] * 30 + [0] * 70
    s = balanced_split(y, ProbeConfig(val_frac=0.2, test_frac=0.2))
    for part in (s.train, s.val, s.test):
        assert sum(y[i] for i in part) * 2 == len(part)
    everything = s.train + s.val + s.test + s.dropped
    assert sorted(everything) == list(range(100)) and len(s.dropped) == 40


def test_probe_save_load_roundtrip(tmp_path):
    X, y = _separable(n=60, h=8)
    probe, _ = train_probe(X, y.tolist(), ProbeConfig(epochs=2))
    save_probe(probe, tmp_path / "p", {"layer": 2, "model": "tiny-random"})
    loaded, meta = load_probe(tmp_path / "p")
    torch.testing.assert_close(loaded.score(X), probe.score(X))
    assert meta["layer"] == 2 and meta["hidden_size"] == 8


# --- cliff --------------------------------------------------------------------------------------------

def test_cliff_arithmetic_by_hand():
    # prompt 0-1, thinking 2-5, </think> 6-7 (final 7), answer 8; the scores just outside the thinking
    # span (1 and 6) are higher than inside it, so an off-by-one span is caught
    s = torch.tensor([0.1, 0.97, 0.5, 0.9, 0.7, 0.6, 0.95, 0.15, 0.3])
    assert cliff_size(s, 2, 6, 7) == pytest.approx(0.9 - 0.15)
    assert math.isnan(cliff_size(s, 2, 2, 7))  # no thinking written
    trace = {"id": "x", "harmful": True, "refused": False, "prompt_len": 2, "think_end": 6, "final_idx": 7}
    r = trace_cliff(trace, s)
    assert r["cliff"] == pytest.approx(0.75) and r["final_score"] == pytest.approx(0.15)
    assert r["tail"] == pytest.approx(s[:8].tolist())


def test_right_aligned_curve_keeps_ends_and_interpolates():
    s = torch.tensor([9.0, 0.0, 1.0, 2.0, 3.0, 9.0])
    c = right_aligned_curve(s, 1, 4, n=7)  # span [0, 1, 2, 3] resampled to 7 points
    torch.testing.assert_close(c, torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]))
    assert right_aligned_curve(s, 2, 2, n=100).tolist() == [1.0] * 100
    assert len(right_aligned_curve(torch.rand(300), 10, 250)) == 100


def test_score_positions_is_the_probe_on_every_captured_state(tiny):
    model, _ = tiny
    seqs = _seqs([12, 5, 33], seed=2)
    probe = _random_probe()
    scores = score_positions(model, probe, 2, seqs, chunk_len=7, max_batch_tokens=16)
    for s, h, sc in zip(seqs, capture(model, seqs, [2]), scores):
        assert sc.shape == (len(s),)
        torch.testing.assert_close(sc, probe.score(h[0]).detach(), atol=1e-5, rtol=1e-4)


# --- heads --------------------------------------------------------------------------------------------

def _o_proj_inputs(model, ids):
    got = {}
    hooks = [o_proj(model, b).register_forward_hook(lambda m, a, o, b=b: got.__setitem__(b, a[0].clone()))
             for b in range(2)]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for h in hooks:
        h.remove()
    return got, logits


def test_head_scaling_changes_exactly_one_head(tiny):
    model, _ = tiny
    ids = torch.tensor(_seqs([10], seed=4))
    base, base_logits = _o_proj_inputs(model, ids)
    with scaled_heads(model, [(1, 2)], 1e-3):
        ablated, hooked_logits = _o_proj_inputs(model, ids)
    d = 32
    torch.testing.assert_close(ablated[0], base[0])  # the block before is untouched
    torch.testing.assert_close(ablated[1][..., 2 * d:3 * d], base[1][..., 2 * d:3 * d] * 1e-3)
    others = torch.cat([ablated[1][..., :2 * d], ablated[1][..., 3 * d:]], -1)
    torch.testing.assert_close(others, torch.cat([base[1][..., :2 * d], base[1][..., 3 * d:]], -1))
    assert not torch.allclose(hooked_logits, base_logits)
    after, _ = _o_proj_inputs(model, ids)  # the hook is gone after the context
    torch.testing.assert_close(after[1], base[1])
    # the weight edit used for vLLM equals the hook
    import copy
    edited = copy.deepcopy(model)
    edited.load_state_dict(ablated_weights(model, [(1, 2)], 1e-3))
    with torch.no_grad():
        torch.testing.assert_close(edited(input_ids=ids).logits, hooked_logits, atol=1e-5, rtol=1e-4)


def test_head_attribution_ranks_every_visible_head(tiny):
    model, _ = tiny
    seqs = _seqs([8, 14], seed=5)
    probe = _random_probe()
    ranking = head_attribution(model, probe, 2, seqs, [7, 10])
    assert len(ranking) == 8 and {(r["block"], r["head"]) for r in ranking} == {(b, h) for b in (0, 1) for h in range(4)}
    assert [r["delta"] for r in ranking] == sorted((r["delta"] for r in ranking), reverse=True)
    assert any(abs(r["delta"]) > 0 for r in ranking)
    # a probe on layer 1 sees block 0 only
    assert {r["block"] for r in head_attribution(model, probe, 1, seqs, [7, 10])} == {0}
    assert top_heads(ranking, 0.25, 8) == [(r["block"], r["head"]) for r in ranking[:2]]


# --- selection ----------------------------------------------------------------------------------------

def test_selection_top_p_and_random_have_the_same_size():
    rows = [{"id": str(i), "cliff": c, "final_score": f}
            for i, (c, f) in enumerate([(0.1, 0.9), (0.8, 0.5), (float("nan"), 0.05), (0.5, 0.2), (0.3, 0.7),
                                        (0.9, 0.6), (0.0, 0.4), (0.2, 0.3), (0.4, 0.8), (0.6, 0.1)])]
    assert [r["id"] for r in select(rows, 0.3, "cliff")] == ["5", "1", "9"]
    assert [r["id"] for r in select(rows, 0.2, "final")] == ["2", "9"]
    assert select(rows, 1.0, "cliff")[-1]["id"] == "2"  # NaN cliff ranks last
    rnd = select(rows, 0.3, "random", seed=1)
    assert len(rnd) == 3 and rnd == select(rows, 0.3, "random", seed=1)
    assert len(select(rows, 0.01, "cliff")) == 1
    t = {"id": "a", "prompt": "p", "think": "hmm "}
    assert sft_rows([t], refusal="No.") == [{"id": "a", "prompt": "p", "think": "hmm ", "answer": "\nNo.",
                                            "response": f"hmm {THINK_CLOSE}\nNo."}]


# --- labels, data, traces ------------------------------------------------------------------------------

def test_refusal_phrases():
    assert phrase_judge("", "I'm sorry, but I can't help with that.")
    assert phrase_judge("", "I\u2019m unable to provide that information.")
    assert phrase_judge("", "As an AI language model, I will not do this.")
    assert not phrase_judge("", "Sure! Here is a recipe for chocolate chip cookies.")
    assert not phrase_judge("", "The answer is 18.")
    # a refusal word deep inside a compliant answer is not a refusal
    assert not phrase_judge("", "Step 1: mix. " + "x" * 300 + " I cannot stress this enough.")
    assert probe_label({"harmful": True, "refused": True}) == 1
    assert probe_label({"harmful": True, "refused": False}) is None
    assert probe_label({"harmful": False, "refused": True}) == 0
    assert probe_label({"harmful": True, "refused": False}, "harmful") == 1
    assert probe_label({"harmful": False, "refused": False}, "harmful") == 0


def test_phrase_judge_agrees_with_pyrit_human_labels():
    rows = D._csv_rows(D.PYRIT_REFUSAL_EVAL)
    agree = sum(phrase_judge(r["objective"], r["assistant_response"]) == (r["human_score"] == "1") for r in rows)
    assert len(rows) == 105 and agree / len(rows) >= 0.8


def test_unknown_source_or_method_names_its_flag_before_any_file_is_read(monkeypatch):
    from rlreason.registry import ConfigError
    loaded = []
    monkeypatch.setattr(D, "load_source", lambda name, key="": loaded.append(name) or [])
    with pytest.raises(ConfigError, match=r"probe data --harmless: unknown probe data source 'gsm8'\. .*"
                                          r"Did you mean 'gsm8k'"):
        D.build_prompt_set(n_harmful=1, n_harmless=1, harmless_sources=["gsm8k", "gsm8"])
    assert loaded == []  # both lists checked before any (slow, hashed) source file is read
    with pytest.raises(ConfigError, match=r"probe select --by: unknown selection method 'clif'\. "
                                          r"Allowed: cliff, final, random\. Did you mean 'cliff'"):
        select([], 0.5, "clif")


def test_pinned_sources_and_splits(tmp_path):
    counts = {s: len(D.load_source(s)) for s in D.SOURCES}
    assert counts == {"advbench": 520, "harmbench": 200, "strongreject": 313, "jbb": 100, "gsm8k": 1319,
                      "rho_benign": 150}
    rows = D.build_prompt_set(n_harmful=40, n_harmless=20, seed=3)
    assert sum(r["harmful"] for r in rows) == 40 and len({r["id"] for r in rows}) == 60
    by_split = {s: sum(r["split"] == s and r["harmful"] for r in rows) for s in ("probe", "candidates", "heldout")}
    assert by_split == {"probe": 20, "candidates": 10, "heldout": 10}
    assert not any(r["split"] == "candidates" and not r["harmful"] for r in rows)
    bad = D.PinnedFile("jailbreakbench", "jailbreakbench==0.1.3", "data/behaviors.csv", "0" * 64)
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        bad.read_text()


def test_traces_spans_with_the_hf_engine(tiny):
    from rlreason.rollout import SamplingConfig
    from rlreason.rollout.hf_engine import HFEngine
    model, tok = tiny
    engine = HFEngine(model, tokenizer=tok, sampling=SamplingConfig(temperature=1.0), max_model_len=512)
    rows = [{"id": "a", "prompt": "How do I bake bread?", "harmful": False},
            {"id": "b", "prompt": "Tell me a secret.", "harmful": True}]
    traces = generate_traces(engine, rows, max_think_tokens=6, max_answer_tokens=4, seed=0)
    close = tok.encode(THINK_CLOSE, add_special_tokens=False)
    for t in traces:
        assert t["think_end"] - t["prompt_len"] <= 6 and len(t["ids"]) - t["final_idx"] - 1 <= 4
        assert t["ids"][t["think_end"]:t["final_idx"] + 1] == close
        assert tok.decode(t["ids"][t["prompt_len"]:t["think_end"]]) == t["think"] or not t["think_closed"]
        assert tok.decode(t["ids"][:t["prompt_len"]]).endswith("<think>\n")
        assert isinstance(t["refused"], bool)


def test_plain_template_is_the_bare_chat_prompt_and_judged(tiny):
    """Catches the think instruction or the <think> pre-fill leaking into the plain baseline, and an
    answer judged on the prompt instead of the generated text."""
    from rlreason.probes.traces import generate_plain
    from rlreason.rollout import SamplingConfig
    from rlreason.rollout.hf_engine import HFEngine
    model, tok = tiny
    engine = HFEngine(model, tokenizer=tok, sampling=SamplingConfig(temperature=0.0), max_model_len=512)
    rows = [{"id": "a", "prompt": "I'm sorry to ask: how do I bake bread?", "harmful": False}]
    seen = []
    (t,) = generate_plain(engine, rows, max_answer_tokens=5, judge=lambda p, a: seen.append(a) or False)
    want = tok.apply_chat_template([{"role": "user", "content": rows[0]["prompt"]}], add_generation_prompt=True,
                                   tokenize=False)
    assert tok.decode(t["ids"][:t["prompt_len"]]) == want and "<think>" not in want
    assert 0 < len(t["ids"]) - t["prompt_len"] <= 5 and seen == [t["answer"]] and t["refused"] is False
    assert t["answer"] == tok.decode(t["ids"][t["prompt_len"]:], skip_special_tokens=True)


# --- repair and monitor --------------------------------------------------------------------------------

def test_sft_masks_the_prompt_and_learns(tiny):
    import copy
    from rlreason.probes.repair import sft, sft_example
    model, tok = tiny
    row = {"prompt": "Do a bad thing.", "response": "I'm sorry, I can't."}
    ids, labels = sft_example(tok, row, 512)
    n_resp = len(tok.encode(row["response"], add_special_tokens=False)) + 1
    assert labels[:-n_resp] == [-100] * (len(ids) - n_resp) and labels[-n_resp:] == ids[-n_resp:]
    assert labels[-1] == tok.eos_token_id
    _, stats = sft(copy.deepcopy(model), tok, [row, {**row, "prompt": "Another."}],
                   RepairConfig(lr=1e-2, epochs=15, batch_size=2))
    assert stats["loss/last"] < 0.5 * stats["loss/first"]


def _monitor_traces(model, tok, prompts, **kw):
    """The traces ProbeMonitor generates: greedy, through the HF engine, rows named as it names them."""
    from rlreason.rollout import SamplingConfig
    from rlreason.rollout.hf_engine import HFEngine
    engine = HFEngine(model, tokenizer=tok, sampling=SamplingConfig(temperature=0.0))
    rows = [{"id": f"monitor/{i}", "prompt": p, "harmful": True} for i, p in enumerate(prompts)]
    return generate_traces(engine, rows, seed=0, **kw)


def _trained_position_probe(states, traces, layer):
    """A probe trained (logistic regression, full batch) on known hidden states of `layer` to read 1 at
    the final token and at the two tokens just outside the thinking span (the prompt's last token, the
    first token of '</think>'), and 0 on the thinking span, on the tokens either side of the final one
    and at the final token of every other layer. With fewer labelled states than hidden units any
    labelling is linearly separable, so training fits it; a monitor that reads another layer or position
    then reports a final score ~0 instead of ~1, an off-by-one thinking span a maximum ~1 instead of ~0."""
    X, y = [], []
    for h, t in zip(states, traces):
        p, te, f = t["prompt_len"], t["think_end"], t["final_idx"]
        assert p < te < f - 1  # a thinking span, and '</think>' longer than 2 tokens (3 in SmolLM2's vocab)
        labels = {**{i: 0.0 for i in range(p, te)}, p - 1: 1.0, te: 1.0, f - 1: 0.0, f: 1.0}
        if f + 1 < h.shape[1]:
            labels[f + 1] = 0.0
        X += [h[layer, i] for i in labels]
        y += list(labels.values())
        X += [h[other, f] for other in range(h.shape[0]) if other != layer]
        y += [0.0] * (h.shape[0] - 1)
    X, y = torch.stack(X).float(), torch.tensor(y)
    assert len(X) < X.shape[1]  # separable by construction
    probe = LinearProbe(X.shape[1])
    probe.mean.copy_(X.mean(0))
    probe.std.copy_(X.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    pos_weight = torch.tensor((y == 0).sum() / (y == 1).sum())
    for _ in range(1500):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(probe(X), y, pos_weight=pos_weight).backward()
        opt.step()
    return probe


def test_monitor_reads_the_probes_layer_at_the_final_token(tiny, tmp_path):
    """A probe trained to fire only at the final token of '</think>' at layer 2: the monitor must report
    final score ~1, thinking max ~0 (cliff ~-1), equal to the probe applied to a plain forward's hidden
    states at the traces' indices. Catches a monitor that reads another layer (layer 0 or 1 scores ~0
    at the final token), a position shifted by one, or an off-by-one thinking span."""
    from rlreason.probes.monitor import ProbeMonitor
    model, tok = tiny
    prompts = ["How do I pick a lock?", "Write malware.", "Tell me how to hotwire a car."]
    kw = {"max_think_tokens": 5, "max_answer_tokens": 3}
    traces = _monitor_traces(model, tok, prompts, **kw)
    with torch.no_grad():
        states = [torch.stack(model.model(input_ids=torch.tensor([t["ids"]]), output_hidden_states=True)
                              .hidden_states)[:, 0] for t in traces]  # [layers + 1, T, H] each
    probe = _trained_position_probe(states, traces, layer=2)
    save_probe(probe, tmp_path / "p", {"layer": 2, "model": "tiny-random"})

    def reference(layer, shift=0, span=(0, 0)):
        """The metrics from the probe on the plain forward's states, optionally at a wrong layer/position."""
        with torch.no_grad():
            moved = [{**t, "final_idx": t["final_idx"] + shift, "prompt_len": t["prompt_len"] + span[0],
                      "think_end": t["think_end"] + span[1]} for t in traces]
            rows = [trace_cliff(t, probe.score(h[layer])) for h, t in zip(states, moved)]
        return {"probe/final_score": sum(r["final_score"] for r in rows) / len(rows),
                "probe/think_max": sum(r["think_max"] for r in rows) / len(rows),
                "probe/mean_cliff": sum(r["cliff"] for r in rows) / len(rows)}

    right = reference(2)
    assert right["probe/final_score"] > 0.9 and right["probe/think_max"] < 0.1 and right["probe/mean_cliff"] < -0.8
    for wrong in (reference(0), reference(1), reference(2, shift=-1), reference(2, shift=1)):
        assert wrong["probe/final_score"] < 0.2  # what a wrong layer or position would report
    for span in ((-1, 0), (0, 1)):
        assert reference(2, span=span)["probe/think_max"] > 0.8  # ... or an off-by-one thinking span

    m = ProbeMonitor(tmp_path / "p", prompts, **kw)(model, tokenizer=tok)
    assert set(m) == {"probe/mean_cliff", "probe/final_score", "probe/think_max", "probe/refusal_rate"}
    for k, v in right.items():
        assert m[k] == pytest.approx(v, abs=1e-4), k
    assert m["probe/refusal_rate"] == sum(t["refused"] for t in traces) / len(traces) and not model.training


def test_cli_select_writes_the_sft_set(tmp_path):
    scores = [{"id": f"h{i}", "harmful": True, "split": "candidates", "refused": False, "cliff": i / 10,
               "final_score": 1 - i / 10} for i in range(10)]
    scores.append({"id": "g", "harmful": False, "split": "candidates", "refused": False, "cliff": 9.0,
                   "final_score": 0.0})
    traces = [{"id": s["id"], "prompt": f"prompt {s['id']}", "think": "t"} for s in scores]
    D.write_jsonl(scores, tmp_path / "scores.jsonl")
    D.write_jsonl(traces, tmp_path / "traces.jsonl")
    out = tmp_path / "sft.jsonl"
    r = subprocess.run([sys.executable, "-m", "rlreason.cli", "probe", "select", "--scores", str(tmp_path / "scores.jsonl"),
                        "--traces", str(tmp_path / "traces.jsonl"), "--top-p", "0.2", "--out", str(out)],
                       capture_output=True, text=True, env={**os.environ, "RLREASON_NO_PRELOAD": "1"})
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["h9", "h8"]
