"""The CPU speed-ups sit behind one switch, `rlreason.cpu.apply_cpu_optimizations`: off CPU it changes nothing
(the generic path: plain attention and norms, one forward per row), on CPU it swaps in the grouped-matmul
attention and the fused RMSNorms and turns on shared-prompt forwards per `trainer.share_prompt_forward`.
`Batch`/`collate` carry no shared-prefix fields; the shared-prefix forward finds the distinct prompts itself.
Numerics with and without the switch: tests/test_shared_prefix.py, test_cpu_attention.py, test_fused_rms_norm.py."""

import dataclasses

import pytest
import torch

from rlreason.config import load_config
from rlreason.trainer.batch import Batch, Row, collate
from test_shared_prefix import _model, _rows  # tests/ is on sys.path

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _is_fused(norm: torch.nn.Module) -> bool:
    return "forward" in vars(norm)  # fuse_rms_norms binds its forward on the instance


def test_collate_is_generic():
    fields = {f.name for f in dataclasses.fields(Batch)}
    assert not fields & {"prompts", "prompt_mask", "prompt_index"}
    b = collate(_rows(0), pad_id=0)
    assert not any(hasattr(b, k) for k in ("prompts", "prompt_mask", "prompt_index"))


def test_shared_forward_finds_the_distinct_prompts_of_a_batch():
    from rlreason.trainer.shared_prefix import distinct_prompts
    rows = _rows(0)
    b = collate(rows, pad_id=0)
    prompts, mask, index = distinct_prompts(b)
    assert prompts.shape[0] == 3
    firsts = []
    for i, r in enumerate(rows):
        u = int(index[i])
        assert prompts[u][mask[u] > 0].tolist() == r.prompt_ids
        assert mask[u, :prompts.shape[1] - len(r.prompt_ids)].sum() == 0  # left-padded
        if u not in firsts:
            firsts.append(u)
    assert firsts == [0, 1, 2]  # numbered in order of first appearance, as the rows come


def test_prompts_that_differ_only_in_a_leading_pad_token_stay_distinct():
    """Left padding writes pad_id; a prompt that starts with the pad token (pad = eos is common) has the same
    ids as the shorter prompt without it, but not the same mask: two prompts, not one."""
    from rlreason.trainer.shared_prefix import distinct_prompts
    rows = [Row([0, 7, 8], [5, 6], [0.0] * 2, [1, 1], 1.0, i, 0) for i in range(2)] \
        + [Row([7, 8], [5, 6], [0.0] * 2, [1, 1], 1.0, 2 + i, 1) for i in range(2)]
    prompts, mask, index = distinct_prompts(collate(rows, pad_id=0))
    assert prompts.shape[0] == 2 and index.tolist() == [0, 0, 1, 1]
    assert mask.sum(-1).tolist() == [3, 2]


def test_off_cpu_the_switch_changes_nothing():
    from rlreason.cpu import CpuOptimizations, apply_cpu_optimizations
    model, ref = _model(), _model()
    before = model.config._attn_implementation
    opts = apply_cpu_optimizations(load_config(None, []), CUDA, [model, ref])
    assert opts == CpuOptimizations(attention=None, fused_rms_norms=0, fused_mlps=0, share_prompts=False)
    assert model.config._attn_implementation == before
    assert not any(_is_fused(m) for m in model.modules() if type(m).__name__.endswith(("RMSNorm", "MLP")))
    forced = apply_cpu_optimizations(load_config(None, ["trainer.share_prompt_forward=true"]), CUDA, [model])
    assert forced.share_prompts  # an explicit setting is honoured on any device


def test_on_cpu_the_switch_turns_on_attention_norms_mlps_and_shared_prompts():
    from rlreason.cpu import apply_cpu_optimizations
    from rlreason.trainer import cpu_attention
    model, ref = _model(), _model()
    opts = apply_cpu_optimizations(load_config(None, []), CPU, [model, None, ref])  # None: no reference model
    n_norms = 2 * model.config.num_hidden_layers + 1
    assert opts.attention == cpu_attention.NAME and opts.share_prompts and opts.fused_rms_norms == 2 * n_norms
    assert opts.fused_mlps == 2 * model.config.num_hidden_layers
    for m in (model, ref):
        assert m.config._attn_implementation == cpu_attention.NAME
        assert _is_fused(m.model.norm) and _is_fused(m.model.layers[0].input_layernorm)
        assert all(_is_fused(layer.mlp) for layer in m.model.layers)
    off = apply_cpu_optimizations(load_config(None, ["trainer.share_prompt_forward=false",
                                                     "model.attn_implementation=eager"]), CPU, [_model()])
    assert not off.share_prompts and off.attention is None  # an explicit attention is kept


def test_share_prompts_default_is_decided_once():
    """`auto` (the config's default) resolves in one function; code that builds an UpdateContext without the
    switch gets the generic per-row forward on every device, never a hard-coded `True` that contradicts
    `auto` on GPUs."""
    from rlreason.trainer.update import UpdateContext
    assert load_config(None, []).trainer.share_prompt_forward == "auto"  # resolved by rlreason.cpu.share_prompts
    model = _model()
    ctx = UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, CUDA, None, 0, 1.0)
    assert ctx.share_prompts is False


def test_response_logits_has_no_sharing_knob():
    """The generic forward is one pass per row; sharing is UpdateContext's choice (set by the switch)."""
    import inspect

    from rlreason.trainer.batch import response_logits
    assert "share_prompts" not in inspect.signature(response_logits).parameters


@pytest.mark.parametrize("share", [False, True])
def test_update_context_picks_the_forward(monkeypatch, share):
    from rlreason.trainer import shared_prefix, update
    calls = []
    real = shared_prefix.prompt_cache  # the prompt pass of either shared forward (per micro-batch or PromptPass)
    monkeypatch.setattr(shared_prefix, "prompt_cache", lambda *a: calls.append(1) or real(*a))
    model = _model()
    ctx = update.UpdateContext(model, torch.optim.SGD(model.parameters(), lr=0.1), None, None, CPU, None, 0, 1.0,
                               share_prompts=share)
    rows = _rows(2)
    update.compute_logprobs(model, rows, ctx, micro=len(rows))
    assert bool(calls) == share


@pytest.mark.parametrize("dtype,native,warns", [("bf16", False, True), ("bf16", True, False), ("fp32", False, False)])
def test_bf16_on_a_cpu_without_native_bf16_matmuls_says_so_once(monkeypatch, caplog, dtype, native, warns):
    """On an AVX2-only CPU torch's bf16 matmuls are scalar fallbacks (1-16 GFLOP/s against ~100 for float32):
    the default model.dtype=bf16 then trains many times slower. The switch says so in one line naming the key
    and the fix; it does not change the dtype behind the user's back."""
    import logging

    from rlreason import cpu
    from rlreason.cpu import apply_cpu_optimizations
    monkeypatch.setattr(cpu, "native_bf16_matmuls", lambda: native)
    with caplog.at_level(logging.WARNING, logger="rlreason.cpu"):
        apply_cpu_optimizations(load_config(None, [f"model.dtype={dtype}"]), CPU, [_model()])
    lines = [r.getMessage() for r in caplog.records if r.name == "rlreason.cpu"]
    assert len(lines) == int(warns)
    if warns:
        assert "model.dtype=bf16" in lines[0] and "model.dtype=auto or fp32" in lines[0] and "\n" not in lines[0]


def test_native_bf16_matmuls_is_torchs_own_answer():
    from rlreason import cpu
    assert cpu.native_bf16_matmuls() is bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize("native,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_dtype_is_bf16_only_where_bf16_matmuls_run_in_hardware(monkeypatch, native, expected):
    from rlreason import cpu
    from rlreason.models import compute_dtype
    assert load_config(None, []).model.dtype == "auto"
    monkeypatch.setattr(cpu, "native_bf16_matmuls", lambda: native)
    assert compute_dtype("auto", CPU) == expected
    assert (compute_dtype("bf16", CPU), compute_dtype("fp32", CPU)) == ("bf16", "fp32")  # an explicit dtype stays
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert compute_dtype("auto", CUDA) == "bf16"


def test_trainer_resolves_auto_dtype_once_for_the_whole_run(monkeypatch, tmp_path):
    """The method (reference-model dtype), the engine, autocast and the logged config all see the resolved
    dtype, never 'auto'."""
    from rlreason import cpu
    from rlreason.trainer.loop import setup
    monkeypatch.setattr(cpu, "native_bf16_matmuls", lambda: False)
    cfg = load_config(None, ["model.name=tiny-random", "rollout.engine=hf", "rollout.max_model_len=128",
                             "logging.wandb=false", "logging.progress=false", f"output_dir={tmp_path}",
                             "data.train={source: reasoning_gym, task: basic_arithmetic, size: 16, seed: 1}",
                             "data.eval_size=0", "eval.every=0", "trainer.steps=1", "algo.kl_coef=0.1"])
    run = setup(cfg)
    try:
        assert run.cfg.model.dtype == "fp32" and run.algorithm.cfg.model.dtype == "fp32"
        assert run.ctx.amp_dtype is None and run.ctx.ref_model is not None
    finally:
        run.engine.close()
