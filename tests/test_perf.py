"""perf/ metrics: the FLOP count against hand-computed values, the datasheet table, the cached probe."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from rlreason.models import tiny_random_config
from rlreason.trainer import perf
from rlreason.trainer.perf import ModelShape, model_shape, step_perf


def test_model_shape_tiny_random_by_hand():
    """tiny-random: hidden 64, 4 heads x 32, 2 KV heads, MLP 128, 2 layers, vocab 49152, tied embeddings.
    Per layer q 64x128 + k 64x64 + v 64x64 + o 128x64 + gate/up 64x128 + down 128x64 = 49152; lm_head
    64 x 49152 = 3145728 (the tied embedding counted once)."""
    torch.manual_seed(0)
    s = model_shape(AutoModelForCausalLM.from_config(tiny_random_config(49152)))
    assert s.matmul_params == 2 * 49152 + 3145728 == 3244032 and s.head_params == 3145728
    assert (s.layers, s.heads, s.head_dim) == (2, 4, 32)
    assert s.linear_shapes == ((64, 64, 4), (64, 128, 6), (64, 49152, 1), (128, 64, 4))


def test_model_shape_smollm2_135m_on_meta():
    """SmolLM2-135M: 30 layers x (2 x 576^2 + 2 x 576 x 192 + 3 x 576 x 1536) + 49152 x 576 = 134,479,872
    (its whole parameter count minus the norms: the embedding is tied to lm_head)."""
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True)
    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(cfg)
    s = model_shape(m)
    assert s.matmul_params == 30 * (2 * 576**2 + 2 * 576 * 192 + 3 * 576 * 1536) + 49152 * 576 == 134_479_872
    assert s.head_dim == 64 and s.head_params == 49152 * 576


SHAPE = ModelShape(matmul_params=1000, head_params=200, layers=3, heads=2, head_dim=5, linear_shapes=((10, 100, 1),))
# Two rows share prompt "a" (P = 4), one has prompt "b" (P = 6): (key, P, R).
SEQS = [("a", 4, 3), ("a", 4, 5), ("b", 6, 2)]


def test_flops_by_hand():
    # Unshared, T = 7, 9, 8: 6 (N - N_head) T = 4800 * 24; 6 N_head R = 1200 * 10 (logits of responses only);
    # 12 L H Q T^2 = 360 * (49 + 81 + 64)
    assert perf.pass_flops(SHAPE, SEQS, backward=True, share_prompts=False) == 115200 + 12000 + 69840
    # Shared: prompts 4 and 6 once, 4800 * 10 + 360 * (16 + 36); responses 6000 * 10 + 360 * (3*7 + 5*9 + 2*8)
    assert perf.pass_flops(SHAPE, SEQS, backward=True, share_prompts=True) == 48000 + 18720 + 60000 + 29520
    for shared in (False, True):  # forward only: exactly a third (2 N T + 4 L H Q T^2)
        assert perf.pass_flops(SHAPE, SEQS, backward=True, share_prompts=shared) == \
            3 * perf.pass_flops(SHAPE, SEQS, backward=False, share_prompts=shared)
    assert perf.pass_tokens(SEQS, share_prompts=False) == 24 and perf.pass_tokens(SEQS, share_prompts=True) == 20
    assert perf.pass_flops(SHAPE, [], backward=True, share_prompts=True) == 0.0


def test_flops_loop_reference_float64():
    """pass_flops against an explicit per-query-token loop in float64: each query token costs 6 N plus 12 L H Q
    per key it is scored against; unshared, a row's queries see all its P + R keys (no causal halving);
    shared, a prompt's queries see its P keys once per distinct prompt, a response's queries P + R keys."""
    import random
    rng = random.Random(5)
    seqs = [(rng.randrange(3), 0, rng.randrange(1, 40)) for _ in range(11)]
    seqs = [(k, 7 + 5 * k, r) for k, _, r in seqs]  # equal prompts share a key and a length
    n, lhq = SHAPE.matmul_params, SHAPE.layers * SHAPE.heads * SHAPE.head_dim
    body = n - SHAPE.head_params
    full = 0.0
    for _, p, r in seqs:
        for t in range(p + r):  # every query token: 6 N (no lm_head for prompt tokens), 12 L H Q per key
            full += 6.0 * (body if t < p else n) + 12.0 * lhq * (p + r)
    assert perf.pass_flops(SHAPE, seqs, backward=True, share_prompts=False) == pytest.approx(full, rel=1e-12)
    shared, seen = 0.0, set()
    for k, p, r in seqs:
        if k not in seen:
            seen.add(k)
            for _t in range(p):
                shared += 6.0 * body + 12.0 * lhq * p
        for _t in range(r):
            shared += 6.0 * n + 12.0 * lhq * (p + r)
    assert perf.pass_flops(SHAPE, seqs, backward=True, share_prompts=True) == pytest.approx(shared, rel=1e-12)


def test_sequences_key_rows_by_prompt():
    class R:
        def __init__(self, p, r):
            self.prompt_ids, self.response_ids = p, r
    seqs = perf.sequences([R([1, 2], [3]), R([1, 2], [4, 5]), R([1, 3], [6])])
    assert [(p, r) for _, p, r in seqs] == [(2, 1), (2, 2), (2, 1)] and seqs[0][0] == seqs[1][0] != seqs[2][0]


def test_step_perf_by_hand():
    m = step_perf(SHAPE, peak_flops=2e6, trained=SEQS, epochs=2, forward=[SEQS, SEQS[:1]], share_prompts=False,
                  generated_tokens=50, rollout_s=2.5, update_s=0.5, device=torch.device("cpu"))
    # two epochs of fwd+bwd (197040 each), a forward over all rows (65680) and one over the first row
    # (2 * 800 * 7 + 2 * 200 * 3 + 4 * 30 * 49 = 18280)
    flops = 2 * 197040 + 65680 + 18280
    assert m["perf/update_tflops"] == pytest.approx(flops / 0.5 / 1e12)
    assert m["perf/mfu"] == pytest.approx(flops / 0.5 / 2e6)
    assert m["perf/rollout_tokens_per_s"] == pytest.approx(20.0)
    assert m["perf/update_tokens_per_s"] == pytest.approx(2 * 24 / 0.5)
    assert m["perf/peak_tflops"] == pytest.approx(2e-6)
    assert 0.01 < m["perf/peak_rss_gb"] < 1024 and "perf/max_memory_allocated_gb" not in m
    zero = step_perf(SHAPE, peak_flops=0.0, trained=[], epochs=1, forward=[], share_prompts=True,
                     generated_tokens=0, rollout_s=0.0, update_s=0.0, device=torch.device("cpu"))
    assert zero["perf/mfu"] == zero["perf/update_tflops"] == zero["perf/rollout_tokens_per_s"] == 0.0


@pytest.mark.parametrize("name,dtype,tflops", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4), ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
    ("NVIDIA H200", torch.bfloat16, 989.4), ("NVIDIA H200 NVL", torch.bfloat16, 835.0),
    ("NVIDIA H20", torch.bfloat16, 148.0), ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
    ("NVIDIA A100-SXM4-80GB", torch.float32, 156.0), ("Tesla T4", torch.bfloat16, None)])
def test_datasheet_table(name, dtype, tflops):
    got = perf.datasheet_flops(name, dtype)
    assert got == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_cpu_peak_is_probed_once_and_cached(tmp_path, monkeypatch):
    shape = ModelShape(matmul_params=0, head_params=0, layers=1, heads=1, head_dim=1,
                       linear_shapes=((64, 128, 3), (128, 64, 1)))
    calls = []
    real = perf.probe_flops

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, tokens=256, repeats=2)
    monkeypatch.setattr(perf, "probe_flops", counting)
    first, src = perf.device_peak_flops(shape, torch.device("cpu"), torch.bfloat16, cache_dir=tmp_path)
    again, _ = perf.device_peak_flops(shape, torch.device("cpu"), torch.bfloat16, cache_dir=tmp_path)
    assert src == "probe" and first == again and len(calls) == 1 and first > 1e8
    assert (tmp_path / "perf_peak.json").exists()
    perf.device_peak_flops(shape, torch.device("cpu"), torch.float32, cache_dir=tmp_path)  # other dtype: new key
    assert len(calls) == 2


def test_probe_flops_counts_the_weighted_matmul_mix(monkeypatch):
    """Each matmul is charged 2 * tokens * in * out FLOPs times its count; with a fake clock of 1 s per
    call the result is total FLOPs / (sum of counts)."""
    clock = iter(range(10**6))
    monkeypatch.setattr(perf.time, "perf_counter", lambda: float(next(clock)))
    got = perf.probe_flops(((4, 8, 3), (8, 4, 1)), torch.device("cpu"), torch.float32, tokens=16, repeats=2)
    assert got == pytest.approx((2 * 16 * 32 * 3 + 2 * 16 * 32 * 1) / 4.0)


def test_probe_leaves_the_global_rng_alone():
    """A run whose first start probes and whose second start reads the cache must draw the same numbers."""
    torch.manual_seed(3)
    state = torch.get_rng_state()
    perf.probe_flops(((16, 32, 1),), torch.device("cpu"), torch.float32, tokens=8, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)


def _tiny_grpo_step(run_dir, *overrides: str) -> dict[str, float]:
    """The metrics of one GRPO step on the tiny model (HF engine); its rewards are all 0 (it never answers)."""
    import json

    from rlreason.config import load_config
    from rlreason.trainer.loop import train
    c = load_config(None, [
        "model.name=tiny-random", "model.dtype=bf16", "rollout.engine=hf", "rollout.max_model_len=256",
        "data.train={source: reasoning_gym, task: basic_arithmetic, size: 12, seed: 1}", "data.eval_size=2",
        "env.args.max_tokens=5", "trainer.prompts_per_step=2", "trainer.samples_per_prompt=3", "trainer.steps=1",
        "trainer.ppo_epochs=2", "logging.wandb=false", "logging.progress=false", f"output_dir={run_dir}",
        *overrides])
    train(c)
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


def test_grpo_step_logs_perf_metrics(tmp_path):
    """Every perf/ key is logged, with sane values (every row trained: the tiny model's advantages are all 0)."""
    row = _tiny_grpo_step(tmp_path / "run", "trainer.skip_zero_advantage=false")
    for k in ("perf/rollout_tokens_per_s", "perf/update_tokens_per_s", "perf/update_tflops", "perf/mfu",
              "perf/peak_tflops", "perf/peak_rss_gb"):
        assert row[k] > 0, k
    assert row["perf/mfu"] == pytest.approx(row["perf/update_tflops"] / row["perf/peak_tflops"])
    assert row["perf/mfu"] < 1.0


def test_update_flops_count_only_the_rows_the_update_ran(tmp_path):
    """Rows with advantage 0 are left out of the update (trainer.skip_zero_advantage), so they are not counted as
    work done: with every reward 0 the update ran nothing and perf/update_tflops is 0, not an inflated MFU."""
    row = _tiny_grpo_step(tmp_path / "run")
    assert row["rollout/zero_var_groups_frac"] == 1.0 and row["loss/rows_skipped_frac"] == 1.0
    assert row["perf/update_tflops"] == 0.0 and row["perf/update_tokens_per_s"] == 0.0
    assert row["perf/rollout_tokens_per_s"] > 0


def test_decode_bandwidth_fraction_is_the_bound_over_the_achieved_step_time():
    # 0.27 GB of weights at 27 GB/s: 10 ms per decode step at best; 128 steps in 2.56 s is 20 ms each -> 50%
    assert perf.decode_bandwidth_fraction(0.27e9, 27e9, 2.56, 128) == pytest.approx(0.5)
    assert perf.decode_bandwidth_fraction(0.27e9, 27e9, 0.0, 128) == 0.0


def test_decode_roofline_fraction_takes_whichever_bound_binds():
    """Reference by hand: 128 decode steps x 0.5 GB / 25 GB/s = 2.56 s to read the weights; 2000 tokens x
    0.27 GFLOP / 0.135 TFLOP/s = 4.0 s of matmuls. The larger bound, over a 10 s rollout, is 40%."""
    args = dict(weight_bytes=0.5e9, bandwidth=25e9, flops_per_token=0.27e9, decode_steps=128, rollout_s=10.0)
    assert perf.decode_roofline_fraction(**args, peak_flops=0.135e12, generated_tokens=2000) == pytest.approx(0.4)
    # fast matmuls: the bandwidth bound binds and the fraction is decode_bandwidth_fraction's
    fast = perf.decode_roofline_fraction(**args, peak_flops=100e12, generated_tokens=2000)
    assert fast == pytest.approx(perf.decode_bandwidth_fraction(0.5e9, 25e9, 10.0, 128)) == pytest.approx(0.256)
    assert perf.decode_roofline_fraction(**{**args, "rollout_s": 0.0}, peak_flops=1e12, generated_tokens=1) == 0.0


def test_copy_bandwidth_probe_counts_read_and_write():
    bw = perf.probe_copy_bandwidth(torch.device("cpu"), mib=8, repeats=2)
    assert 1e8 < bw < 1e13  # bytes/s: a plausible range for any machine
