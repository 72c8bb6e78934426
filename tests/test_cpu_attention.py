"""The CPU trainer attention (grouped bf16 matmuls) is the same function as transformers' SDPA path: same
response logits and gradients through the shared-prefix pass (explicit mask over cached prompt keys, left-
padded prompts, right-padded responses), SDPA itself for large score matrices, and `auto` selects it on CPU."""

import pytest
import torch

from rlreason.trainer import cpu_attention
from rlreason.trainer.batch import collate
from rlreason.trainer.shared_prefix import distinct_prompts, shared_response_logits
from test_shared_prefix import _model, _rows  # tests/ is on sys.path


def _logits_and_grads(model, b, attn: str, autocast: bool):
    model.set_attn_implementation(attn)
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = shared_response_logits(model, b)
    m = b.attention_mask[:, -logits.shape[1]:, None] > 0
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(0))
    (logits.float() * m * weights).sum().backward()
    return (logits.float() * m).detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("seed", [0, 1])
def test_grouped_attention_equals_sdpa_in_fp32(seed):
    cpu_attention.register()
    model = _model()
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # grouped query heads
    b = collate(_rows(seed, groups=3, G=3), pad_id=0)  # 3 prompts of different lengths: left padding
    ref, g_ref = _logits_and_grads(model, b, "sdpa", False)
    got, g_got = _logits_and_grads(model, b, cpu_attention.NAME, False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    for n, g in g_ref.items():
        torch.testing.assert_close(g_got[n], g, atol=1e-5 * float(g.abs().max()) + 1e-9, rtol=1e-3, msg=n)


def test_unpadded_causal_pass_takes_the_matmul_path_and_equals_sdpa(monkeypatch):
    """One prompt, no padding: transformers hands over no mask (causal); it is built here, not sent to SDPA."""
    cpu_attention.register()
    model = _model()
    b = collate(_rows(4, groups=1, G=3), pad_id=0)
    assert bool(distinct_prompts(b)[1].all())
    ref, g_ref = _logits_and_grads(model, b, "sdpa", False)
    calls = []
    real = cpu_attention.sdpa_attention_forward
    monkeypatch.setattr(cpu_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, g_got = _logits_and_grads(model, b, cpu_attention.NAME, False)
    assert calls == []
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    for n, g in g_ref.items():
        torch.testing.assert_close(g_got[n], g, atol=1e-5 * float(g.abs().max()) + 1e-9, rtol=1e-3, msg=n)


def test_mask_bias_is_built_once_per_mask_and_rebuilt_for_a_new_one():
    mask = torch.ones(2, 1, 3, 5, dtype=torch.bool).tril(diagonal=2)
    mask[1, :, :, 0] = False
    a = cpu_attention._mask_bias(mask, 2, 3, 2, torch.bfloat16)
    assert cpu_attention._mask_bias(mask, 2, 3, 2, torch.bfloat16) is a
    assert a.shape == (2 * 3, 2 * 3, 5)
    expect = torch.zeros(2, 1, 1, 3, 5, dtype=torch.bfloat16).masked_fill(~mask[:, :, None], torch.finfo(torch.bfloat16).min)
    assert torch.equal(a, expect.expand(2, 3, 2, 3, 5).reshape(6, 6, 5))
    other = mask.clone()
    other[0, :, :, 1] = False
    b = cpu_attention._mask_bias(other, 2, 3, 2, torch.bfloat16)
    assert b is not a and bool((b[0, :, 1] < 0).all()) and bool((a[0, :, 1] == 0).all())


def test_grouped_attention_under_bf16_autocast_is_as_close_as_sdpa():
    cpu_attention.register()
    model = _model()
    b = collate(_rows(2, groups=3, G=3), pad_id=0)
    exact, _ = _logits_and_grads(model, b, "sdpa", False)
    err_sdpa = (_logits_and_grads(model, b, "sdpa", True)[0] - exact).abs().mean()
    err_ours = (_logits_and_grads(model, b, cpu_attention.NAME, True)[0] - exact).abs().mean()
    assert torch.isfinite(err_ours)  # fully masked (left-padding) rows stay finite under bf16
    assert err_ours <= 1.5 * err_sdpa + 1e-4, (err_ours, err_sdpa)


def test_large_score_matrices_go_to_sdpa(monkeypatch):
    cpu_attention.register()
    calls = []
    real = cpu_attention.sdpa_attention_forward
    monkeypatch.setattr(cpu_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _model()
    b = collate(_rows(3), pad_id=0)
    _logits_and_grads(model, b, cpu_attention.NAME, False)
    small = len(calls)  # only the mask-free causal passes, if any
    monkeypatch.setattr(cpu_attention, "MAX_SCORES", 0)
    _logits_and_grads(model, b, cpu_attention.NAME, False)
    assert len(calls) - small > small  # every layer of every pass went to SDPA


def test_auto_picks_it_on_cpu_and_checkpoints_stay_loadable(tmp_path, tiny_model_dir):
    from transformers import AutoConfig

    from rlreason.config import load_config
    from rlreason.cpu import apply_cpu_optimizations
    from rlreason.trainer.loop import load_policy
    model = load_policy(tiny_model_dir, torch.device("cpu"), False)
    assert model.config._attn_implementation == "sdpa"  # as transformers loads it; the switch comes next
    apply_cpu_optimizations(load_config(None, []), torch.device("cpu"), [model])
    assert model.config._attn_implementation == cpu_attention.NAME
    model.save_pretrained(tmp_path)  # vLLM and plain transformers load checkpoints: no custom name inside
    assert cpu_attention.NAME not in (tmp_path / "config.json").read_text()
    AutoConfig.from_pretrained(tmp_path)
