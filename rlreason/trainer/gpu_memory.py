"""Will the local trainer fit on this GPU? Checked at start-up from the parameter count, so a model that is
too large fails with a message that says what to change instead of an out-of-memory error at the first
optimizer step (AdamW's states are allocated lazily there).

The arithmetic, per parameter N (docs/gpu.md works it through for 80 GB):

    trainer, resident           fp32 master weights 4 B + AdamW exp_avg/exp_avg_sq 8 B          = 12 B
    trainer, during the update  + fp32 gradients 4 B + autocast's bf16 weight copies 2 B        = 18 B
    reference model (kl_coef>0) bf16 weights (fp32 when model.dtype=fp32: 4 B)                   =  2 B
    vLLM                        gpu_memory_utilization x total (its bf16 weights 2 B + KV cache),
                                freed during the update in sleep mode

    rollout phase:  12 N + ref + vLLM share          + reserve <= total
    update phase:   18 N + ref + (0 in sleep mode, else vLLM share) + reserve <= total

With LoRA (expert iteration's `ei.lora_rank`) only the adapters train: 4 B/param resident (fp32 weights),
6 B/param during the update (+ the bf16 copies); the adapters themselves are negligible.
Activations are not counted (they depend on micro-batch size and sequence length); the reserve covers
the CUDA context, vLLM's CUDA graphs and allocator slack, nothing more."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlreason.registry import ConfigError

GIB = 2**30
RESERVE_BYTES = 3 * GIB  # CUDA context + vLLM's CUDA graphs + allocator slack
TRAINER_RESIDENT = 12  # bytes per parameter: fp32 weights 4 + AdamW moments 8
TRAINER_UPDATE = 18  # + fp32 gradients 4 + bf16 autocast weight copies 2
LORA_RESIDENT, LORA_UPDATE = 4, 6  # frozen fp32 weights (+ bf16 copies while updating); adapters negligible
ENGINE_BF16 = 2


@dataclass(frozen=True)
class MemoryPlan:
    total: int  # bytes on the device
    rollout: int  # bytes needed while vLLM generates
    update: int  # bytes needed during the policy update
    engine: int  # vLLM's share (gpu_memory_utilization x total)

    @property
    def fits(self) -> bool:
        return max(self.rollout, self.update) <= self.total


def plan(n_params: int, total: int, *, gpu_memory_utilization: float, sleep_mode: bool,
         ref_bytes: int = 0, vllm: bool = True, lora: bool = False) -> MemoryPlan:
    """ref_bytes: bytes per parameter of the reference model (0 without one)."""
    engine = int(gpu_memory_utilization * total) if vllm else 0
    ref = ref_bytes * n_params
    resident, updating = (LORA_RESIDENT, LORA_UPDATE) if lora else (TRAINER_RESIDENT, TRAINER_UPDATE)
    rollout = resident * n_params + ref + engine + RESERVE_BYTES
    update = updating * n_params + ref + (0 if sleep_mode else engine) + RESERVE_BYTES
    return MemoryPlan(total, rollout, update, engine)


def check(n_params: int, device: torch.device, *, gpu_memory_utilization: float, sleep_mode: bool,
          ref_bytes: int, vllm: bool, model_name: str, lora: bool = False) -> MemoryPlan:
    """Raise a ConfigError naming the model size and what to change when the estimate exceeds the device."""
    total = torch.cuda.get_device_properties(device).total_memory
    p = plan(n_params, total, gpu_memory_utilization=gpu_memory_utilization, sleep_mode=sleep_mode,
             ref_bytes=ref_bytes, vllm=vllm, lora=lora)
    if vllm and ENGINE_BF16 * n_params + GIB > p.engine:
        raise ConfigError(
            f"rollout.gpu_memory_utilization: {gpu_memory_utilization} gives vLLM {p.engine / GIB:.1f} GiB, less "
            f"than {model_name}'s {n_params / 1e9:.2f}B parameters need as bf16 weights "
            f"({ENGINE_BF16 * n_params / GIB:.1f} GiB) plus a KV cache; raise it.")
    if not p.fits:
        resident, updating = (LORA_RESIDENT, LORA_UPDATE) if lora else (TRAINER_RESIDENT, TRAINER_UPDATE)
        phase = "update" if p.update >= p.rollout else "rollout"
        fixes = ["rollout.sleep_mode=true (vLLM frees its share during the update)"] if not sleep_mode and vllm else []
        if vllm and (phase == "rollout" or not sleep_mode):  # in sleep mode the update does not see vLLM's share
            fixes.append(f"a lower rollout.gpu_memory_utilization (now {gpu_memory_utilization}; vLLM needs "
                         f"~{(ENGINE_BF16 * n_params + GIB) / total:.2f} for its weights and a 1 GiB KV cache)")
        if ref_bytes:
            fixes.append("algo.kl_coef=0 (no reference model)")
        fixes.append("a smaller model, or several GPUs through verl (docs/verl.md)")
        raise ConfigError(
            f"model.name: {model_name} has {n_params / 1e9:.2f}B parameters; the {phase} phase needs "
            f"~{max(p.rollout, p.update) / GIB:.1f} GiB (trainer {resident} B/param, "
            f"{updating} B/param while updating, vLLM {p.engine / GIB:.1f} GiB"
            f"{' freed during the update' if sleep_mode else ''}) but the GPU has {total / GIB:.1f} GiB. "
            f"Change: {'; or '.join(fixes)}. Arithmetic: docs/gpu.md.")
    return p


def count_parameters(model_dir: str) -> int:
    """Parameters of a model directory without loading its weights (built on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
