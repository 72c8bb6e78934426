"""The trainer's fused SwiGLU MLP is transformers' MLP with half its intermediate activations kept: outputs and
gradients bit for bit those of autograd through the original module (float32, and bf16 autocast over float32
weights), checked against a float64 reference as well, and the original forward wherever the fusion does not
apply (other activations, biases, an adapter-wrapped projection)."""

import pytest
import torch

from rlreason.trainer.fused_mlp import fuse_mlps
from test_shared_prefix import _model  # tests/ is on sys.path


def _logits_and_grads(model, ids, autocast: bool) -> tuple[torch.Tensor, dict]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1))
    (logits.float() * w).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _ids() -> torch.Tensor:
    return torch.randint(5, 1000, (4, 64), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast"])
def test_fused_mlp_matches_the_module_bit_for_bit(autocast):
    ref_logits, ref = _logits_and_grads(_model(), _ids(), autocast)
    fused_model = _model()
    assert fuse_mlps(fused_model) == fused_model.config.num_hidden_layers
    logits, grads = _logits_and_grads(fused_model, _ids(), autocast)
    assert torch.equal(logits, ref_logits)
    for name in ref:
        assert torch.equal(grads[name], ref[name]), name


def test_fused_mlp_gradients_match_a_float64_reference():
    """One MLP, its gradients written out by hand in float64: y = down(silu(gate x) * up x)."""
    mlp = _model().model.layers[0].mlp
    for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        torch.nn.init.normal_(lin.weight, 0.0, 0.3)
    fuse_mlps(mlp)
    x = torch.randn(3, 5, mlp.hidden_size, generator=torch.Generator().manual_seed(2), requires_grad=True)
    dy = torch.randn(3, 5, mlp.hidden_size, generator=torch.Generator().manual_seed(3))
    (mlp(x) * dy).sum().backward()

    Wg, Wu, Wd = (lin.weight.detach().double() for lin in (mlp.gate_proj, mlp.up_proj, mlp.down_proj))
    X, DY = x.detach().double().reshape(-1, x.shape[-1]), dy.double().reshape(-1, dy.shape[-1])
    g, u = X @ Wg.T, X @ Wu.T
    sig = 1 / (1 + torch.exp(-g))
    s = g * sig
    p = s * u
    dp = DY @ Wd
    dg = dp * u * (sig + g * sig * (1 - sig))
    du = dp * s
    torch.testing.assert_close(mlp.down_proj.weight.grad.double(), DY.T @ p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlp.gate_proj.weight.grad.double(), dg.T @ X, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mlp.up_proj.weight.grad.double(), du.T @ X, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double().reshape(X.shape), dg @ Wg + du @ Wu, rtol=1e-5, atol=1e-5)


def _saved_bytes(module: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward of `module(x)`, parameters and x not counted."""
    seen = {p.untyped_storage().data_ptr() for p in module.parameters()} | {x.untyped_storage().data_ptr()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x)
    return total


def test_fused_mlp_keeps_two_intermediate_tensors_instead_of_four():
    mlp = _model().model.layers[0].mlp
    x = torch.randn(2, 7, mlp.hidden_size, requires_grad=True)
    one = 2 * 7 * mlp.intermediate_size * 4  # one float32 [tokens, intermediate] tensor
    assert _saved_bytes(mlp, x) == 4 * one  # gate(x), silu(gate(x)), up(x), their product
    fuse_mlps(mlp)
    assert _saved_bytes(mlp, x) == 2 * one  # gate(x), up(x)


def test_the_module_forward_where_the_fusion_does_not_apply():
    gelu = _model()
    for layer in gelu.model.layers:
        layer.mlp.config = type(layer.mlp.config)(**{**layer.mlp.config.to_dict(), "hidden_act": "gelu"})
    assert fuse_mlps(gelu) == 0
    biased = _model()
    biased.model.layers[0].mlp.down_proj.bias = torch.nn.Parameter(torch.zeros(biased.config.hidden_size))
    assert fuse_mlps(biased) == biased.config.num_hidden_layers - 1

    wrapped = _model()
    fuse_mlps(wrapped)
    mlp = wrapped.model.layers[0].mlp
    calls = []

    class Adapter(torch.nn.Module):  # what LoRA does to a projection after the model is patched
        def __init__(self, base: torch.nn.Linear) -> None:
            super().__init__()
            self.base = base

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(1)
            return self.base(x)
    mlp.down_proj = Adapter(mlp.down_proj)
    x = torch.randn(2, 3, mlp.hidden_size)
    ref = _model().model.layers[0].mlp
    assert torch.equal(mlp(x), ref(x)) and calls == [1]
