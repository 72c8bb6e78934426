"""Live performance figures of a training step, the `perf/...` keys verl logs: rollout and update
throughput, the update's achieved TFLOP/s, its model FLOPs utilisation (MFU) against the device's peak,
and peak memory. docs/perf.md explains every key.

Model FLOPs (PaLM, arXiv 2204.02311, appendix B; the count verl's FlopsCounter makes). For one sequence
of T tokens through a decoder with N matmul parameters, L layers, H attention heads of dimension Q:

    forward + backward (trained):              6 N T + 12 L H Q T^2
    forward only (old or reference logprobs):  2 N T +  4 L H Q T^2

less 6 N_head P (2 N_head P forward only) for the P prompt tokens, whose logits the trainer never computes
(N_head: the output projection's weights).

6 N T: every weight does a multiply-add (2 FLOPs) per token forward, and twice that backward (gradients
of inputs and of weights). 12 L H Q T^2: the scores Q K^T and the weighted sum P V, 2 T^2 Q FLOPs each per
head and layer forward, x3 with the backward. T^2 counts the whole score matrix, as PaLM and verl do (no
halving for the causal mask). N counts every linear layer, lm_head included; the embedding lookup is a
gather, not a matmul, so a tied embedding is counted once (as lm_head).

With trainer.share_prompt_forward (the CPU default) the trainer runs each distinct prompt once and the
group's responses on top of its keys and values; the count follows (`pass_flops`): counting each row's
prompt again would put GRPO's MFU above 1 on short-answer tasks (G copies of a long prompt). Otherwise
these are model FLOPs: rematerialisation (gradient checkpointing) is not counted, and LoRA's frozen weights
are counted as if they had gradients.

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
from typing import Any, Hashable, Iterable, Sequence

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
    head_params: int  # N_head: the output projection (lm_head), part of N
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
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return ModelShape(matmul_params=sum(i * o * c for (i, o), c in counts.items()),
                      head_params=head.weight.numel() if head is not None else 0, layers=cfg.num_hidden_layers,
                      heads=heads, head_dim=head_dim,
                      linear_shapes=tuple(sorted((i, o, c) for (i, o), c in counts.items())))


Seq = tuple[Hashable, int, int]  # (prompt key, prompt tokens P, response tokens R) of one trained row


def sequences(rows: Iterable[Any]) -> list[Seq]:
    """(prompt key, P, R) of rows with `prompt_ids` and `response_ids`; rows with equal prompts share a key."""
    return [(tuple(r.prompt_ids), len(r.prompt_ids), len(r.response_ids)) for r in rows]


def pass_flops(shape: ModelShape, seqs: Sequence[Seq], *, backward: bool, share_prompts: bool) -> float:
    """Model FLOPs of one pass over these rows, with (k, a) = (6, 12) forward + backward and (2, 4) forward
    only: per sequence of T = P + R tokens k N T + a L H Q T^2, less k N_head P, since the trainer projects
    only response positions onto the vocabulary (the prompt's logits are never used). With `share_prompts`
    each distinct prompt runs once, k (N - N_head) P + a L H Q P^2, and each row's response on top of it,
    k N R + a L H Q R (P + R) (its R queries against P + R keys)."""
    k, a = (6, 12) if backward else (2, 4)
    n, lhq = shape.matmul_params, shape.layers * shape.heads * shape.head_dim
    body = n - shape.head_params
    if not share_prompts:
        return float(sum(k * body * p + k * n * r + a * lhq * (p + r) ** 2 for _, p, r in seqs))
    prompts = {key: p for key, p, _ in seqs}
    return float(sum(k * body * p + a * lhq * p * p for p in prompts.values())
                 + sum(k * n * r + a * lhq * r * (p + r) for _, p, r in seqs))


def pass_tokens(seqs: Sequence[Seq], *, share_prompts: bool) -> int:
    """Tokens one pass processes: P + R per row, or each distinct prompt once plus every response."""
    if not share_prompts:
        return sum(p + r for _, p, r in seqs)
    return sum({key: p for key, p, _ in seqs}.values()) + sum(r for _, _, r in seqs)


def step_perf(shape: ModelShape, peak_flops: float, *, trained: Sequence[Seq], epochs: int,
              forward: Sequence[Sequence[Seq]], share_prompts: bool, generated_tokens: int, rollout_s: float,
              update_s: float, device: torch.device) -> dict[str, float]:
    """The step's perf/ metrics. `trained`: the rows the update trains, each epoch one forward + backward
    pass over them; `forward`: the extra forward-only passes (old/reference logprobs, KL-in-reward, values),
    each a list of rows; `update_s`: the trainer's time for all of them; `generated_tokens`: response
    tokens the engine sampled in `rollout_s`."""
    flops = epochs * pass_flops(shape, trained, backward=True, share_prompts=share_prompts) \
        + sum(pass_flops(shape, f, backward=False, share_prompts=share_prompts) for f in forward)
    tflops = flops / update_s / 1e12 if update_s > 0 else 0.0
    tokens = epochs * pass_tokens(trained, share_prompts=share_prompts)
    return {
        "perf/rollout_tokens_per_s": generated_tokens / rollout_s if rollout_s > 0 else 0.0,
        "perf/update_tokens_per_s": tokens / update_s if update_s > 0 else 0.0,
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


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timing covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe_flops(linear_shapes: Sequence[tuple[int, int, int]], device: torch.device, dtype: torch.dtype,
                tokens: int = PROBE_TOKENS, repeats: int = PROBE_REPEATS) -> float:
    """FLOP/s of the model's matmul mix: each distinct linear layer as a [tokens, in] x [in, out] matmul,
    weighted by how often it occurs; each shape's best of `repeats` timings after one warm-up."""
    gen = torch.Generator(device).manual_seed(0)  # a private generator: the run's RNG streams stay untouched
    x = {i: torch.randn(tokens, i, device=device, dtype=dtype, generator=gen) for i, _, _ in linear_shapes}
    w = {(i, o): torch.randn(o, i, device=device, dtype=dtype, generator=gen) for i, o, _ in linear_shapes}
    flops = sum(2.0 * tokens * i * o * c for i, o, c in linear_shapes)
    best = {(i, o): float("inf") for i, o, _ in linear_shapes}
    with torch.no_grad():
        for r in range(repeats + 1):
            for i, o, _ in linear_shapes:
                _sync(device)
                t0 = time.perf_counter()
                torch.nn.functional.linear(x[i], w[(i, o)])
                _sync(device)
                if r > 0:  # the first round warms up kernels and caches
                    best[(i, o)] = min(best[(i, o)], time.perf_counter() - t0)
    # Each shape's fastest time: on a shared machine the minimum is the least disturbed measurement.
    return flops / sum(best[(i, o)] * c for i, o, c in linear_shapes)


def probe_copy_bandwidth(device: torch.device, mib: int = 512, repeats: int = PROBE_REPEATS) -> float:
    """Bytes per second of one large copy on `device` (bytes read + bytes written), the best of `repeats`
    after one warm-up: what a decode step that streams every weight once can at most move. A tensor well
    beyond the CPU's caches keeps the figure a DRAM one."""
    n = mib * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for r in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
        if r > 0:
            best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best


def decode_bandwidth_fraction(weight_bytes: float, bandwidth: float, rollout_s: float, decode_steps: int) -> float:
    """How close generation came to the memory-bandwidth bound: every decode step reads all the weights at least
    once, so a step cannot take less than weight_bytes / bandwidth; the fraction is that bound over the
    achieved seconds per decode step (rollout_s / decode_steps, prefill included, so a lower bound on it)."""
    if rollout_s <= 0 or decode_steps <= 0 or bandwidth <= 0:
        return 0.0
    return (weight_bytes / bandwidth) / (rollout_s / decode_steps)


def decode_roofline_fraction(weight_bytes: float, bandwidth: float, flops_per_token: float, peak_flops: float,
                             rollout_s: float, decode_steps: int, generated_tokens: float) -> float:
    """How close generation came to the machine's roofline: it can take no less than the bandwidth bound
    (decode_steps x weight_bytes / bandwidth) nor the compute bound (generated_tokens x flops_per_token /
    peak_flops, flops_per_token = 2 x parameters), so the fraction is the larger of the two over rollout_s.
    Prefill and attention are left out of the compute bound, which keeps it a lower bound on the time. Where
    matmuls are slow (an AVX2-only CPU in fp32: 32 rows x 2 x 135M parameters at 0.14 TFLOP/s is ~60 ms per
    decode step against ~16 ms to read the weights), the compute bound is the one that binds."""
    if rollout_s <= 0 or bandwidth <= 0 or peak_flops <= 0:
        return 0.0
    compute = generated_tokens * flops_per_token / peak_flops / rollout_s
    return max(decode_bandwidth_fraction(weight_bytes, bandwidth, rollout_s, decode_steps), compute)


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
