"""CUDA paths of the trainer and the HF engine (skipped without a GPU; CI has none — run on a GPU node with
`pytest tests/test_cuda.py`). Same checks as the CPU tests, on the device the production runs use:
the shared-prefix forward equals the per-row forward, the bf16-autocast update with fused AdamW trains,
and the HF engine's logprobs equal a forward pass."""

import random

import pytest
import torch
from transformers import AutoTokenizer

from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.models import resolve_model
from rlreason.trainer.batch import collate, response_logits
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
        bf_plain = response_logits(model, b, share_prompts=False) * m
        bf_shared = response_logits(model, b, share_prompts=True) * m
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


def test_hf_engine_logprobs_match_a_forward_pass_on_cuda():
    from rlreason.rollout import SamplingConfig, make_engine
    d = resolve_model("tiny-random", dtype="fp32")
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
