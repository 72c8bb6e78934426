"""How close vs_trl.py's rollout can come to issue 20's bandwidth bound with the engine's own matmuls: the time
vLLM's linear layers alone take for the decode steps of a real rollout, against the time that reading every
weight once per step at the probed copy bandwidth takes.

One process, preloaded as the CLI (tcmalloc + Intel OpenMP), fp32 weights (what vs_trl.py trains in on a CPU
without native bf16 matmuls):
1. the copy bandwidth, probed as vs_trl.py does (rlreason.trainer.perf.probe_copy_bandwidth);
2. --rollouts rollouts of vs_trl.py's first 8 chat prompts x 4 samples (temperature 1, EOS honoured, <= 128 new
   tokens) in rlreason's vLLM engine: wall time, decode steps and, from the response lengths, the number of
   live sequences in each decode step;
3. the engine's own 120 layer projections (qkv, o, gate_up, down; vLLM's oneDNN handles on its packed weights)
   and its LM head, called back to back on M rows for every M the rollouts decoded, best of --repeats;
4. per rollout: the matmul floor (sum over its decode steps of the time at that step's M; prefill, attention,
   sampling and scheduling left out, so the floor is a lower bound; their time is printed as the rest) and
   the bandwidth bound (decode steps x weight bytes / bandwidth). bound / floor is the largest fraction of
   the bandwidth bound a rollout could reach if everything but these matmuls took no time.

    python benchmarks/decode_floor.py [--rollouts 3] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time

from peer_workload import PROMPTS, SAMPLES, NEW_TOKENS, median

TARGET = 0.40  # the share of the bandwidth bound the rollout is asked to reach (vs_trl.py prints the same target)


def live_per_step(lengths: list[int]) -> list[int]:
    """Sequences still decoding at each decode step: step t (0-based) runs every response longer than t."""
    return [sum(n > t for n in lengths) for t in range(max(lengths, default=0))]


def matmul_seconds(calls: list, widths: list[int], ms: list[int], repeats: int) -> dict[int, float]:
    """Best time of one pass through `calls` (each on an [M, width] input) for every M; the Ms are visited in
    turn within each repeat, so a slow spell of the machine is spread over all of them."""
    import torch
    xs = {m: [torch.randn(m, w) for w in widths] for m in ms}
    best = {m: float("inf") for m in ms}
    with torch.no_grad():
        for r in range(repeats + 1):
            for m in ms:
                t = time.perf_counter()
                for f, x in zip(calls, xs[m]):
                    f(x)
                if r > 0:  # the first pass builds oneDNN's primitive for this M
                    best[m] = min(best[m], time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/decode_floor.py")
    ap.add_argument("--rollouts", type=int, default=3, help="rollouts of the vs_trl workload (seeds 1..N)")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes through the matmuls per M (best kept)")
    a = ap.parse_args(argv)

    import torch

    from rlreason.rollout import SamplingConfig
    from rlreason.rollout.vllm_engine import VLLMEngine
    from rlreason.trainer.perf import probe_copy_bandwidth
    from peer_workload import model_and_prompts, vs_trl_prompts
    from vs_trl import KV_CACHE_GB, MAX_MODEL_LEN, WIDTH, meta_model

    d, tok, _ = model_and_prompts()
    bandwidth = probe_copy_bandwidth(torch.device("cpu"))
    prompts = vs_trl_prompts(tok)
    eng = VLLMEngine(d, tokenizer=tok, sampling=SamplingConfig(temperature=1.0), dtype="fp32",
                     max_model_len=MAX_MODEL_LEN, kv_cache_gb=KV_CACHE_GB, seed=0)
    eng.generate_batch(prompts, n=SAMPLES, max_tokens=NEW_TOKENS, seed=0)  # warm-up
    rollouts = []
    for seed in range(1, a.rollouts + 1):
        t = time.perf_counter()
        outs = eng.generate_batch(prompts, n=SAMPLES, max_tokens=NEW_TOKENS, seed=seed)
        wall = time.perf_counter() - t
        rollouts.append((wall, live_per_step([len(c.token_ids) for g in outs for c in g])))

    worker = eng.llm.llm_engine.model_executor.driver_worker
    model = getattr(worker, "worker", worker).model_runner.model
    layers = [m for n, m in model.named_modules() if ".layers." in n and hasattr(m, "input_size_per_partition")]
    weight_bytes = float(WIDTH["fp32"] * sum(p.numel() for p in meta_model(d).parameters()))  # as vs_trl.py
    calls = [lambda x, m=m: m(x) for m in layers] + [model.compute_logits]
    widths = [m.input_size_per_partition for m in layers] + [model.config.hidden_size]
    ms = sorted({m for _, live in rollouts for m in live})
    per_m = matmul_seconds(calls, widths, ms, a.repeats)

    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"decode_floor ({when}): SmolLM2-135M-Instruct fp32 in rlreason's vLLM engine, vs_trl.py's rollout "
          f"({PROMPTS} chat prompts x {SAMPLES} samples, temperature 1, EOS honoured, <= {NEW_TOKENS} new tokens), "
          f"{a.rollouts} rollouts; cpu {torch.backends.cpu.get_cpu_capability()} x{torch.get_num_threads()}")
    print(f"copy bandwidth {bandwidth / 1e9:.2f} GB/s; fp32 weights read per decode step {weight_bytes / 1e9:.4f} GB "
          f"-> bandwidth bound {weight_bytes / bandwidth * 1e3:.1f} ms per decode step")
    print(f"engine matmuls ({len(layers)} layer projections + LM head) per decode step, best of {a.repeats}: "
          + ", ".join(f"M={m} {per_m[m] * 1e3:.1f} ms ({weight_bytes / per_m[m] / 1e9:.1f} GB/s)"
                      for m in ms if m in (1, 2, 4, 8, 16, 24, 32) or m in (ms[0], ms[-1])))
    print(f"\n{'rollout':8s} {'wall s':>7s} {'decode steps':>12s} {'tokens':>7s} {'bw bound s':>10s} "
          f"{'matmul floor s':>14s} {'rest s':>6s} {'bound/wall':>10s} {'bound/floor':>11s}")
    rows = []  # per rollout: wall, bandwidth bound, matmul floor
    for i, (wall, live) in enumerate(rollouts):
        bound, floor = len(live) * weight_bytes / bandwidth, sum(per_m[m] for m in live)
        rows.append((wall, bound, floor))
        print(f"{i + 1:<8d} {wall:7.2f} {len(live):12d} {sum(live):7d} {bound:10.2f} {floor:14.2f} "
              f"{wall - floor:6.2f} {bound / wall:10.1%} {bound / floor:11.1%}")
    fracs = [bound / wall for wall, bound, _ in rows]
    ceilings = [bound / floor for _, bound, floor in rows]
    budget = [bound / TARGET - floor for _, bound, floor in rows]
    rest = [wall - floor for wall, _, floor in rows]
    print(f"\nrollout: {median(fracs):.1%} of the bandwidth bound (median; {min(fracs):.1%}-{max(fracs):.1%}); "
          f"the engine's matmuls alone allow at most {median(ceilings):.1%} ({min(ceilings):.1%}-{max(ceilings):.1%})")
    print(f"issue-20 target {TARGET:.0%}: a rollout may take bound / {TARGET:.2f}; after the matmul floor that "
          f"leaves {median(budget):.2f} s (median; {min(budget):.2f} to {max(budget):.2f}) for prefill, attention, "
          f"sampling and scheduling, which take {median(rest):.2f} s ({min(rest):.2f}-{max(rest):.2f}) now")


if __name__ == "__main__":
    from rlreason.cpu import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP on CPU, as the CLI runs
    main()
