"""Delethink's linear-compute, constant-memory claim (The Markovian Thinker, arXiv 2510.06557) measured with
vLLM on this machine: SmolLM2-135M-Instruct thinks for exactly L tokens (EOS ignored) as

    longcot    one context that grows to |q| + L tokens
    markovian  chunks of C = 1024 tokens, carryover m = 512, keep_head 100, I = 1 + (L - C)/(C - m) chunks,
               so every context holds at most |q| + C tokens

both through the real environments (`environments/longcot.py`, `environments/markovian.py`) and the real
engine, 4 sequences at a time, L in 1K..16K. Output quality is irrelevant here (EOS is ignored; beyond
SmolLM2's 8,192 trained positions the text is noise): only time and memory are measured.

Per L and method: rollout wall time; peak KV cache, two ways:
  - vLLM: the most KV blocks in use at once (sampled after every engine step) x block size x bytes/token
  - formula: 2 * layers * kv_heads * head_dim * bytes (bf16 = 2) * the most context tokens held at once
    (sum over the concurrent sequences of their longest prompt + response), from the model config
and the process's peak RSS (cumulative over the lengths, which run in increasing order; it includes vLLM's
KV cache, preallocated at start, so it mostly shows the constant part). Each method runs in its own
subprocess with the same engine settings (max_model_len > 16K via VLLM_ALLOW_LONG_MAX_MODEL_LEN=1, the same
KV cache size, prefix caching on, the cache reset between lengths). tcmalloc/iomp are preloaded as the CLI
does (RLREASON_NO_PRELOAD=1 turns that off).

Prints a table, the log-log growth exponent of time in L for each method, the LongCoT/Markovian time and KV
ratios at the largest L against the targets (Markovian exponent <= 1.1; at 16K time ratio >= 2, KV ratio
>= 8), and writes a PNG.

    flock /tmp/rlreason-cpu.lock python benchmarks/markovian_scaling.py            # ~60 min on 2 cores
    python benchmarks/markovian_scaling.py --lengths 1k,2k,4k --out runs/ms_small.png
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

C, M, KEEP_HEAD, BATCH = 1024, 512, 100, 4
LENGTHS = "1k,2k,4k,8k,16k"
QUESTIONS = ["Explain step by step how long it takes to walk 12 km at 4 km per hour, then check the answer.",
             "Work out step by step how many ways 5 books can be ordered on a shelf, then double-check it."]
TEMPLATE = "{question}"
TARGETS = {"markovian_exponent": 1.1, "time_ratio": 2.0, "kv_ratio": 8.0}


def parse_lengths(spec: str) -> list[int]:
    """'1k,2k,16k' -> [1024, 2048, 16384]; plain integers are tokens."""
    out = []
    for x in spec.split(","):
        x = x.strip().lower()
        out.append(int(float(x[:-1]) * 1024) if x.endswith("k") else int(x))
    return sorted(out)


def chunks_for(L: int, C: int, m: int) -> int:
    """I with C + (I - 1)(C - m) = L exactly, so both methods write the same number of tokens."""
    if L < C or (L - C) % (C - m):
        raise SystemExit(f"length {L} is not C + k(C - m) for C={C}, m={m}; choose e.g. {C}, {C + (C - m)}, ...")
    return 1 + (L - C) // (C - m)


def kv_bytes_per_token(model_dir: str, dtype_bytes: int = 2) -> int:
    """K and V of every layer: 2 * layers * kv_heads * head_dim * bytes."""
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * kv_heads * head_dim * dtype_bytes


def rss_now_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def part(method: str, lengths: list[int], batch: int, C: int, m: int, kv_cache_gb: int) -> dict:
    """One method, every length, one engine; runs in its own process."""
    os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"  # 16K > SmolLM2's 8,192 positions (timing only)
    from transformers import AutoTokenizer

    from rlreason.models import resolve_model
    from rlreason.registry import build_environment
    from rlreason.rollout import SamplingConfig, make_engine

    model_dir = resolve_model("smollm2-135m-instruct", dtype="fp32")  # the engine loads it in bf16
    tok = AutoTokenizer.from_pretrained(model_dir)
    per_token = kv_bytes_per_token(model_dir)
    eng = make_engine("vllm", model_dir=model_dir, model=None, tokenizer=tok, sampling=SamplingConfig(),
                      dtype="bf16", max_model_len=max(lengths) + 512, kv_cache_gb=kv_cache_gb,
                      gpu_memory_utilization=0.3, enable_prefix_caching=True, seed=0)
    sched = eng.engine.engine_core.engine_core.scheduler
    pool, block_size = sched.kv_cache_manager.block_pool, sched.block_size
    peak = {"blocks": 0}
    step = eng.engine.step

    def step_and_sample():  # blocks held by running requests; cached-but-free prefix blocks count as free
        out = step()
        peak["blocks"] = max(peak["blocks"], pool.num_gpu_blocks - 1 - pool.get_num_free_blocks())
        return out
    eng.engine.step = step_and_sample

    examples = [{"question": QUESTIONS[i % len(QUESTIONS)] + f" (case {i})"} for i in range(batch)]
    forced = SamplingConfig(temperature=1.0, ignore_eos=True)

    def rollout(L: int) -> tuple[float, list]:
        env = build_environment(method, tok, {"chunk_size": C, "carryover": m, "keep_head": KEEP_HEAD,
                                              "max_chunks": chunks_for(L, C, m), "template": TEMPLATE})
        eng.llm.reset_prefix_cache()
        peak["blocks"] = 0
        t = time.perf_counter()
        eps = eng.run([env.rollout(ex, eng.policy(1000 + i, sampling=forced)) for i, ex in enumerate(examples)])
        return time.perf_counter() - t, eps

    rollout(C)  # warm-up (first-call allocations); not reported
    rows = []
    for L in lengths:
        dt, eps = rollout(L)
        tokens = [int(ep.metrics["thinking_tokens"]) for ep in eps]
        if tokens != [L] * batch:
            raise RuntimeError(f"{method} L={L}: sequences wrote {tokens} tokens, expected {L} each")
        held = sum(max(len(s.prompt_ids) + len(s.response_ids) for s in ep.samples) for ep in eps)
        rows.append({"L": L, "time_s": dt, "tok_s": batch * L / dt,
                     "chunks": sum(len(ep.samples) for ep in eps) / batch,
                     "kv_vllm_mb": peak["blocks"] * block_size * per_token / 1e6,
                     "kv_formula_mb": held * per_token / 1e6, "max_context": held // batch,
                     "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                     "rss_gb": rss_now_gb()})
        print(f"  {method:9s} L={L:6d} {dt:8.1f} s  KV {rows[-1]['kv_vllm_mb']:8.1f} MB", file=sys.stderr, flush=True)
    eng.close()
    return {"method": method, "rows": rows, "kv_bytes_per_token": per_token, "block_size": block_size}


def run_part(*args: str) -> dict:
    env = dict(os.environ)
    if not env.get("RLREASON_NO_PRELOAD"):
        from rlreason.cpu import preload_libs
        env["LD_PRELOAD"] = ":".join(preload_libs())
    p = subprocess.run([sys.executable, __file__, "--part", *args], env=env, stdout=subprocess.PIPE, text=True)
    lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"benchmark part {args} failed (exit {p.returncode}); its stderr is above")
    return json.loads(lines[-1][7:])


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x: the growth exponent."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def plot(lc: list[dict], mk: list[dict], path: str, C: int, m: int, batch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for rows, name in ((lc, "LongCoT"), (mk, f"Markovian (C={C}, m={m})")):
        Ls = [r["L"] for r in rows]
        a.plot(Ls, [r["time_s"] for r in rows], "o-", label=name)
        b.plot(Ls, [r["kv_vllm_mb"] for r in rows], "o-", label=name)
    for ax, ylab in ((a, "rollout wall time (s)"), (b, "peak KV cache in use (MB, vLLM blocks)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("thinking tokens L")
        ax.set_ylabel(ylab)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"SmolLM2-135M, vLLM on CPU, {batch} sequences, EOS ignored")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default=LENGTHS, help="thinking lengths, e.g. 1k,2k,4k (each C + k(C-m))")
    ap.add_argument("--batch", type=int, default=BATCH, help="sequences generated together")
    ap.add_argument("--chunk-size", type=int, default=C, help="Markovian C")
    ap.add_argument("--carryover", type=int, default=M, help="Markovian m")
    ap.add_argument("--out", default="runs/benchmarks/markovian_scaling.png", help="the plot (a .json beside it)")
    a = ap.parse_args()
    lengths = parse_lengths(a.lengths)
    for L in lengths:
        chunks_for(L, a.chunk_size, a.carryover)
    from rlreason.models import resolve_model
    # One KV cache size for both methods: enough for LongCoT's batch x (longest L + prompt) in bf16.
    per_token = kv_bytes_per_token(resolve_model("smollm2-135m-instruct", dtype="fp32"))
    kv_gb = max(1, math.ceil(a.batch * (max(lengths) + 512) * per_token / 2**30 + 0.25))
    print(f"SmolLM2-135M-Instruct, vLLM on CPU ({os.cpu_count()} CPUs), {a.batch} sequences, EOS ignored; "
          f"Markovian C={a.chunk_size} m={a.carryover} keep_head={KEEP_HEAD}; KV cache {kv_gb} GiB; "
          f"preload={'off' if os.environ.get('RLREASON_NO_PRELOAD') else 'tcmalloc+iomp'}", flush=True)
    common = [",".join(map(str, lengths)), str(a.batch), str(a.chunk_size), str(a.carryover), str(kv_gb)]
    lc = run_part("longcot", *common)
    mk = run_part("markovian", *common)
    L_, T_lc, T_mk = [r["L"] for r in lc["rows"]], [r["time_s"] for r in lc["rows"]], [r["time_s"] for r in mk["rows"]]

    print(f"\n{'L':>6s} | {'LongCoT s':>9s} {'Markov s':>9s} {'ratio':>6s} | {'LongCoT KV MB':>13s} "
          f"{'Markov KV MB':>12s} {'ratio':>6s} | {'formula MB (LC / Mk)':>20s} | {'chunks':>6s} | "
          f"{'peak RSS GB (LC / Mk)':>21s}")
    for r, s in zip(lc["rows"], mk["rows"]):
        print(f"{r['L']:6d} | {r['time_s']:9.1f} {s['time_s']:9.1f} {r['time_s'] / s['time_s']:6.2f} | "
              f"{r['kv_vllm_mb']:13.1f} {s['kv_vllm_mb']:12.1f} {r['kv_vllm_mb'] / s['kv_vllm_mb']:6.2f} | "
              f"{r['kv_formula_mb']:9.1f} / {s['kv_formula_mb']:8.1f} | {s['chunks']:6.0f} | "
              f"{r['peak_rss_gb']:9.2f} / {s['peak_rss_gb']:9.2f}")
    e_lc, e_mk = (slope(L_, T_lc), slope(L_, T_mk)) if len(L_) > 1 else (float("nan"),) * 2
    last_lc, last_mk = lc["rows"][-1], mk["rows"][-1]
    t_ratio = last_lc["time_s"] / last_mk["time_s"]
    kv_ratio = last_lc["kv_vllm_mb"] / last_mk["kv_vllm_mb"]
    ok = lambda c: "met" if c else "NOT met"  # noqa: E731
    print(f"\ngrowth exponent of time in L (log-log slope): LongCoT {e_lc:.2f}, Markovian {e_mk:.2f} "
          f"(target Markovian <= {TARGETS['markovian_exponent']}: {ok(e_mk <= TARGETS['markovian_exponent'])})")
    print(f"at L={L_[-1]}: time LongCoT/Markovian = {t_ratio:.2f}x (target >= {TARGETS['time_ratio']}: "
          f"{ok(t_ratio >= TARGETS['time_ratio'])}); peak KV LongCoT/Markovian = {kv_ratio:.2f}x "
          f"(target >= {TARGETS['kv_ratio']}: {ok(kv_ratio >= TARGETS['kv_ratio'])}); formula KV ratio "
          f"{last_lc['kv_formula_mb'] / last_mk['kv_formula_mb']:.2f}x")
    print(f"KV: vLLM blocks in use x {lc['block_size']}-token blocks x {lc['kv_bytes_per_token']} B/token "
          f"(formula: same bytes/token x longest context per sequence x {a.batch})")
    plot(lc["rows"], mk["rows"], a.out, a.chunk_size, a.carryover, a.batch)
    with open(os.path.splitext(a.out)[0] + ".json", "w") as f:
        json.dump({"longcot": lc, "markovian": mk, "exponents": {"longcot": e_lc, "markovian": e_mk},
                   "time_ratio": t_ratio, "kv_ratio": kv_ratio}, f, indent=1)
    print(f"plot: {a.out}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--part":
        method, lengths, batch, c, m, kv = sys.argv[2:8]
        res = part(method, [int(x) for x in lengths.split(",")], int(batch), int(c), int(m), int(kv))
        print("RESULT " + json.dumps(res))
    else:
        main()
