"""CUDA paths of the trainer and both engines (skipped without a GPU; CI has none — run on a GPU node with
`pytest tests/test_cuda.py`, docs/gpu.md). Same checks as the CPU tests, on the device the production runs
use: the shared-prefix forward equals the per-row forward, the bf16-autocast update with fused AdamW trains,
the HF engine's logprobs equal a forward pass, the CUDA vLLM's logprobs equal an HF forward before and after
an in-place reload of changed weights (through sleep mode), and one GRPO step runs with vLLM on the GPU."""

import json
import random

import pytest
import torch
from transformers import AutoTokenizer

from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.models import resolve_model
from rlreason.trainer.batch import collate, response_logits
from rlreason.trainer.shared_prefix import shared_response_logits
from rlreason.trainer.update import UpdateContext, policy_update
from test_shared_prefix import _model as shared_model, _rows as shared_rows, assert_shared_equals_plain  # tests/ is on sys.path

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


def _rows(seed: int):
    return shared_rows(seed, groups=3, G=4)


def _model() -> torch.nn.Module:
    return shared_model().to(CUDA)


def test_shared_prefix_equals_plain_forward_on_cuda_fp32_and_bf16():
    model = _model()
    b = collate(_rows(0), pad_id=0).to(CUDA)
    m = (b.attention_mask[:, -b.response_ids.shape[1]:, None] > 0)
    plain = assert_shared_equals_plain(model, b, 0, tol=1e-4)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        bf_plain = response_logits(model, b) * m
        bf_shared = shared_response_logits(model, b) * m
    err_plain, err_shared = (bf_plain - plain.detach()).abs().mean(), (bf_shared - plain.detach()).abs().mean()
    assert err_shared <= 1.5 * err_plain + 1e-3, (err_shared, err_plain)


def test_bf16_autocast_update_with_fused_adamw_trains_on_cuda():
    """The production update (bf16 autocast over fp32 master weights, fused AdamW) on CUDA: finite metrics,
    and most weights move."""
    model = _model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    ctx = UpdateContext(model, opt, None, None, CUDA, torch.bfloat16, 0, 1.0)
    random.seed(0)
    metrics = policy_update(_rows(3), ctx, AlgoConfig(tis_cap=2.0), TrainerConfig(micro_batch_size=4), None)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values()), metrics
    assert metrics["loss/grad_norm"] > 0
    moved = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(moved) > len(before) // 2


def test_policy_update_same_weights_with_and_without_sharing_on_cuda():
    rows = _rows(3)
    delta = {}
    for share in (False, True):
        model = _model()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        ctx = UpdateContext(model, opt, None, None, CUDA, None, 0, 1.0, share_prompts=share)
        random.seed(0)
        policy_update(rows, ctx, AlgoConfig(tis_cap=None), TrainerConfig(micro_batch_size=4), None)
        delta[share] = {n: (p.detach() - before[n]).cpu() for n, p in model.named_parameters()}
    for n, d in delta[False].items():
        scale = float(d.abs().max())
        torch.testing.assert_close(delta[True][n], d, atol=1e-4 * scale + 1e-9, rtol=1e-3)


def test_hf_engine_logprobs_match_a_forward_pass_on_cuda(tiny_model_dir):
    from rlreason.rollout import SamplingConfig, make_engine
    d = tiny_model_dir
    tok = AutoTokenizer.from_pretrained(d)
    model = _model()
    eng = make_engine("hf", model_dir=d, model=model, tokenizer=tok, sampling=SamplingConfig(temperature=0.7),
                      dtype="fp32", max_model_len=256, kv_cache_gb=1, gpu_memory_utilization=0.3,
                      enable_prefix_caching=True, seed=0)
    prompts = [tok.encode("hello there"), tok.encode("a much longer prompt with more tokens in it")]
    for p, group in zip(prompts, eng.generate_batch(prompts, n=2, max_tokens=6, seed=11)):
        for c in group:
            with torch.no_grad():
                logits = model(torch.tensor([p + c.token_ids], device=CUDA)).logits[0, len(p) - 1:-1] / 0.7
            ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(c.token_ids, device=CUDA)[:, None])
            torch.testing.assert_close(ref[:, 0].cpu(), torch.tensor(c.logprobs), atol=1e-3, rtol=1e-3)


def _vllm_engine(model_dir: str, tok):
    from rlreason.rollout import SamplingConfig, make_engine
    return make_engine("vllm", model_dir=model_dir, model=None, tokenizer=tok, sampling=SamplingConfig(1.0),
                       dtype="bf16", max_model_len=512, kv_cache_gb=2.0, gpu_memory_utilization=0.3,
                       enable_prefix_caching=True, seed=0)


def _mean_logprob_gap(model, prompt: list[int], completion) -> float:
    """Mean |engine logprob - HF forward logprob| over the completion's tokens (temperature 1)."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(torch.tensor([prompt + completion.token_ids], device=CUDA)).logits[0, len(prompt) - 1:-1]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(completion.token_ids, device=CUDA)[:, None])
    return float((ref[:, 0].cpu() - torch.tensor(completion.logprobs)).abs().mean())


def test_vllm_logprobs_match_hf_before_and_after_an_in_place_reload_of_changed_weights_on_cuda():
    """The real CUDA vLLM with SmolLM2-135M: behaviour logprobs equal an HF forward; after sleeping, changing
    every weight and reloading in place (streamed, then woken), they equal the forward of the *changed*
    model and no longer the old one's; the rotary cache (not in any checkpoint) survives the level-2 sleep."""
    import vllm
    from transformers import AutoModelForCausalLM
    assert vllm.__version__.startswith("0.32."), vllm.__version__
    d = resolve_model("smollm2-135m-instruct", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(d)
    eng = _vllm_engine(d, tok)
    assert eng.sleep_mode
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(CUDA).eval()
    p = tok.apply_chat_template([{"role": "user", "content": "Count from 1 to 20."}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
    c = eng.generate_batch([p], n=1, max_tokens=32, seed=1)[0][0]
    assert _mean_logprob_gap(model, p, c) < 0.1  # bf16 engine vs bf16-autocast HF forward
    old = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).to(CUDA).eval()
    g = torch.Generator(device=CUDA).manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(torch.randn(prm.shape, device=CUDA, generator=g) * 0.1 * prm.std())
    free_awake = torch.cuda.mem_get_info()[0]
    eng.sleep()
    assert torch.cuda.mem_get_info()[0] > free_awake + 2**28  # weights and KV cache really freed
    eng.update_weights(model.state_dict().items())
    c = eng.generate_batch([p], n=1, max_tokens=32, seed=2)[0][0]
    assert _mean_logprob_gap(model, p, c) < 0.1  # bf16 engine vs bf16-autocast HF forward
    assert _mean_logprob_gap(old, p, c) > 0.5  # the reload took effect (CPU rehearsal: ~0.05 vs 1.1-1.5)
    eng.close()


def test_one_grpo_step_with_vllm_on_cuda(tmp_path):
    """The production path on one GPU: SmolLM2-135M, vLLM rollouts with sleep mode, the bf16 update, the
    streamed in-place sync; the engine generates again after the step."""
    from rlreason.config import load_config
    from rlreason.trainer.loop import setup, train_step
    c = load_config("configs/quickstart.yaml", [f"output_dir={tmp_path}/q", "trainer.steps=1", "eval.every=0",
                                                "logging.wandb=false", "logging.progress=false", "model.device=cuda",
                                                "rollout.gpu_memory_utilization=0.3",
                                                "trainer.prompts_per_step=4", "trainer.samples_per_prompt=4",
                                                # every row trains, whatever the rewards (zero-advantage rows
                                                # would otherwise be left out, and with them the update)
                                                "trainer.skip_zero_advantage=false"])
    run = setup(c)
    assert run.ctx.device.type == "cuda" and run.engine.sleep_mode
    before = {n: p.detach().clone() for n, p in run.ctx.model.named_parameters()}
    m = train_step(run)
    assert all(torch.isfinite(torch.tensor(v)) for v in m.values() if isinstance(v, float)), m
    assert m["loss/engine_trainer_logprob_diff"] < 0.2  # bf16 engine vs bf16-autocast trainer
    assert any(not torch.equal(p.detach(), before[n]) for n, p in run.ctx.model.named_parameters())
    assert all(p.grad is None for p in run.ctx.model.parameters())
    assert run.engine.generate_batch([[1, 2, 3]], n=1, max_tokens=4, seed=0)[0][0].token_ids
    rows = [json.loads(x) for x in (tmp_path / "q/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 1
    run.engine.close()
