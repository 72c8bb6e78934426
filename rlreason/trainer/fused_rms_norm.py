"""RMSNorm for the CPU policy update (rlreason/cpu.py applies it on CPU): float32 statistics, output straight in
autocast's compute dtype.

Under bf16 autocast with float32 master weights, transformers' Llama RMSNorm returns float32 (weight * x_hat,
both float32) and autocast then casts that output to bf16 once per consuming linear: three copies before
q/k/v, two before gate/up, each kept for the backward next to the float32 x_hat that the weight's product
keeps. Here one autograd function computes the same float32 math, keeps only its input and the per-row
1/rms, and returns the result already rounded to bf16 (exactly what each linear would have cast it to),
so every consumer shares one bf16 tensor: ~3% of a decoder layer's forward + backward on 2 CPU cores, and
less kept for the backward. Applied only to norms whose output feeds linears
(`input_layernorm`, `post_attention_layernorm`, the final `norm`) of the Llama-family classes below,
and only while a float32 input meets an enabled autocast; anything else runs the module's own forward."""

from __future__ import annotations

import types

import torch

# Classes whose forward is exactly transformers' LlamaRMSNorm: x / rms(x) * weight, statistics in float32.
CLASSES = {"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"}
NAMES = ("input_layernorm", "post_attention_layernorm", "norm")


class _RMSNorm(torch.autograd.Function):
    """y = x * rsqrt(mean(x^2) + eps) * w, float32 math, y returned in `out_dtype`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype) -> torch.Tensor:
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        ctx.save_for_backward(x, weight, rstd)
        return (x * rstd * weight).to(out_dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        g = grad.float()
        x_hat = x * rstd
        grad_w = (g * x_hat).reshape(-1, x.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        gx_hat = g * weight
        # d/dx of x_hat = rstd * (gx_hat - x_hat * mean(gx_hat * x_hat))
        grad_x = rstd * (gx_hat - x_hat * (gx_hat * x_hat).mean(-1, keepdim=True))
        return grad_x, grad_w, None, None


def _forward(self: torch.nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    device = hidden_states.device.type
    if (hidden_states.dtype != torch.float32 or self.weight.dtype != torch.float32
            or not torch.is_autocast_enabled(device)):
        return type(self).forward(self, hidden_states)
    return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon, torch.get_autocast_dtype(device))


def fuse_rms_norms(model: torch.nn.Module) -> int:
    """Route the model's eligible RMSNorms through `_RMSNorm` (instance-level; weights, state dict and saved
    checkpoints are untouched). Returns how many were routed."""
    n = 0
    for name, module in model.named_modules():
        if type(module).__name__ in CLASSES and name.rsplit(".", 1)[-1] in NAMES:
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n
