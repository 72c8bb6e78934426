"""Live performance figures of a training step, the `perf/...` keys verl logs: rollout and update
throughput, the update's achieved TFLOP/s, its model FLOPs utilisation (MFU) against the device's peak,
and peak memory. docs/perf.md explains every key.

Model FLOPs (PaLM, arXiv 2204.02311, appendix B; the count verl's FlopsCounter makes). For one sequence
of T tokens through a decoder with N matmul parameters, L layers, H attention heads of dimension Q:

    forward + backward (trained):              6 N T + 12 L H Q T^2
    forward only (old or reference logprobs):  2 N T +  4 L H Q T^2

6 N T: every weight does a multiply-add (2 FLOPs) per token forward, and twice that backward (gradients
of inputs and of weights). 12 L H Q T^2: the scores Q K^T and the weighted sum P V, 2 T^2 Q FLOPs each per
head and layer forward, x3 with the backward. T^2 counts the whole score matrix, as PaLM and verl do (no
halving for the causal mask). N counts every linear layer, lm_head included; the embedding lookup is a
gather, not a matmul, so a tied embedding is counted once (as lm_head).

These are model FLOPs: the work the tokens need, whatever the implementation saves. The CPU trainer runs
a group's shared prompt once (trainer.share_prompt_forward), so it executes fewer FLOPs than counted and
its MFU reads as useful work per second, which is what MFU measures.

The peak: on CUDA the datasheet's dense bf16 (fp32 without autocast) figure for known GPUs; elsewhere
(CPU, unknown GPUs) a probe: the model's own linear layers as matmuls of a 2048-token micro-batch in the
training dtype, best of a few repetitions, measured once and cached under the rlreason cache directory
(`perf_peak.json`, keyed by device, threads, torch version, dtype and shapes)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

PROBE_TOKENS = 2048  # rows of the probe's matmuls: about one micro-batch of the update
PROBE_REPEATS = 5

# Dense (no sparsity) bf16 tensor-core TFLOP/s from the vendors' datasheets, most specific name first.
# fp32 training without autocast runs on TF32 tensor cores at half these figures.
GPU_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200 NVL", 835.0),
    ("H100", 989.4), ("H200", 989.4), ("H800", 989.4), ("H20", 148.0),
    ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("B200", 2250.0),
)


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs from a model: N, L, H, Q and the distinct (in, out) linear shapes
    with their counts (for the probe)."""

    matmul_params: int  # N
    layers: int  # L
    heads: int  # H
    head_dim: int  # Q
    linear_shapes: tuple[tuple[int, int, int], ...]  # (in_features, out_features, count)


def model_shape(model: torch.nn.Module) -> ModelShape:
    cfg = model.config
    counts: dict[tuple[int, int], int] = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            key = (mod.in_features, mod.out_features)
            counts[key] = counts.get(key, 0) + 1
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return ModelShape(matmul_params=sum(i * o * c for (i, o), c in counts.items()), layers=cfg.num_hidden_layers,
                      heads=heads, head_dim=head_dim,
                      linear_shapes=tuple(sorted((i, o, c) for (i, o), c in counts.items())))


def train_flops(shape: ModelShape, seq_lens: Sequence[int]) -> float:
    """Forward + backward FLOPs of sequences of these lengths: sum_T 6 N T + 12 L H Q T^2."""
    lhq = shape.layers * shape.heads * shape.head_dim
    return float(sum(6 * shape.matmul_params * t + 12 * lhq * t * t for t in seq_lens))


def forward_flops(shape: ModelShape, seq_lens: Sequence[int]) -> float:
    """Forward-only FLOPs (old/reference logprobs, values): sum_T 2 N T + 4 L H Q T^2."""
    lhq = shape.layers * shape.heads * shape.head_dim
    return float(sum(2 * shape.matmul_params * t + 4 * lhq * t * t for t in seq_lens))


def step_perf(shape: ModelShape, peak_flops: float, *, trained_lens: Sequence[int], epochs: int,
              forward_lens: Sequence[int], generated_tokens: int, rollout_s: float, update_s: float,
              device: torch.device) -> dict[str, float]:
    """The step's perf/ metrics. `trained_lens`: prompt+response length of each row the update trains
    (each goes through `epochs` forward+backward passes); `forward_lens`: one entry per row and per extra
    forward pass (old/reference logprobs, KL-in-reward, values); `update_s`: the trainer's time for all of
    them; `generated_tokens`: response tokens the engine sampled in `rollout_s`."""
    flops = epochs * train_flops(shape, trained_lens) + forward_flops(shape, forward_lens)
    tflops = flops / update_s / 1e12 if update_s > 0 else 0.0
    return {
        "perf/rollout_tokens_per_s": generated_tokens / rollout_s if rollout_s > 0 else 0.0,
        "perf/update_tokens_per_s": epochs * sum(trained_lens) / update_s if update_s > 0 else 0.0,
        "perf/update_tflops": tflops,
        "perf/mfu": tflops * 1e12 / peak_flops if peak_flops > 0 else 0.0,
        "perf/peak_tflops": peak_flops / 1e12,
        **peak_memory_gb(device),
    }


def peak_memory_gb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (host; in-process vLLM included) and, on CUDA, the peak of
    tensors allocated on the device."""
    out = {"perf/peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30}  # Linux: KiB
    if device.type == "cuda":
        out["perf/max_memory_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def datasheet_flops(device_name: str, dtype: torch.dtype) -> float | None:
    """FLOP/s of a known GPU in `dtype` (bf16/fp16 tensor cores; fp32 as TF32, half of it), else None."""
    for name, tflops in GPU_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops * 1e12 * (0.5 if dtype == torch.float32 else 1.0)
    return None


def probe_flops(linear_shapes: Sequence[tuple[int, int, int]], device: torch.device, dtype: torch.dtype,
                tokens: int = PROBE_TOKENS, repeats: int = PROBE_REPEATS) -> float:
    """FLOP/s of the model's matmul mix: each distinct linear layer as a [tokens, in] x [in, out] matmul,
    weighted by how often it occurs; each shape's best of `repeats` timings after one warm-up."""
    gen = torch.Generator(device).manual_seed(0)  # a private generator: the run's RNG streams stay untouched
    x = {i: torch.randn(tokens, i, device=device, dtype=dtype, generator=gen) for i, _, _ in linear_shapes}
    w = {(i, o): torch.randn(o, i, device=device, dtype=dtype, generator=gen) for i, o, _ in linear_shapes}
    flops = sum(2.0 * tokens * i * o * c for i, o, c in linear_shapes)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = {(i, o): float("inf") for i, o, _ in linear_shapes}
    with torch.no_grad():
        for r in range(repeats + 1):
            for i, o, _ in linear_shapes:
                sync()
                t0 = time.perf_counter()
                torch.nn.functional.linear(x[i], w[(i, o)])
                sync()
                if r > 0:  # the first round warms up kernels and caches
                    best[(i, o)] = min(best[(i, o)], time.perf_counter() - t0)
    # Each shape's fastest time: on a shared machine the minimum is the least disturbed measurement.
    return flops / sum(best[(i, o)] * c for i, o, c in linear_shapes)


def device_peak_flops(shape: ModelShape, device: torch.device, dtype: torch.dtype,
                      cache_dir: Path | None = None) -> tuple[float, str]:
    """(FLOP/s, where it came from: 'datasheet' or 'probe'). Probes are cached; the key holds everything
    the figure depends on, so a new machine, thread count or torch build measures again."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = datasheet_flops(name, dtype)
        if known is not None:
            return known, "datasheet"
    else:
        name = _cpu_name()
    from rlreason.models import cache_dir as default_cache_dir
    path = (cache_dir or default_cache_dir()) / "perf_peak.json"
    key_src = json.dumps({"device": name, "type": device.type, "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "dtype": str(dtype), "tokens": PROBE_TOKENS,
                          "shape": asdict(shape)["linear_shapes"]}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache = _read_json(path)
    if key in cache:
        return float(cache[key]["flops"]), "probe"
    flops = probe_flops(shape.linear_shapes, device, dtype)
    cache[key] = {"flops": flops, "device": name, "threads": torch.get_num_threads(), "dtype": str(dtype)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)
    return flops, "probe"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class PerfMeter:
    """The run's model shape and device peak, measured once at start-up; `step` turns one step's
    lengths and timings into perf/ metrics."""

    def __init__(self, model: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                 cache_dir: Path | None = None) -> None:
        self.shape = model_shape(model)
        self.device = device
        self.peak_flops, self.peak_source = device_peak_flops(self.shape, device, dtype, cache_dir)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def step(self, **kw) -> dict[str, float]:
        return step_perf(self.shape, self.peak_flops, device=self.device, **kw)
