"""Hidden-state capture: throughput (tokens/s) and peak memory, bounded capture vs the naive way.

    flock /tmp/rlreason-cpu.lock python benchmarks/probe_capture.py [--model smollm2-135m-instruct]

Each case runs in a fresh subprocess; "peak MB" is its peak resident memory during the capture (VmHWM,
reset after the model is loaded and warmed up) minus the resident memory at that point, i.e. what the
capture itself costs.

    naive/*     model(ids, output_hidden_states=True): the LM head runs, every layer of every position is
                returned at once (the reference code's way), then the asked-for layers are copied out
    bounded/*   rlreason.probes.capture.iter_chunks: hooks on the asked-for layers, the forward stops
                after the deepest one, no LM head, KV-cached chunks of --chunk-len positions; each chunk
                is reduced as it arrives (a dot product per layer and position, as `probe score` does)

Cases: a batch of --batch sequences x --seq-len tokens at the final layer, at a middle layer and at all
layers; then one long trace (--long-len tokens) at all layers. The naive long case is skipped when
--long-len exceeds --naive-max-len (it would hold a [T, vocab] logits tensor and T^2 attention).
The CLI preloads tcmalloc + Intel OpenMP; the children here get the same LD_PRELOAD when the libraries
exist (printed at the top).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> None:
    """Writing 5 to clear_refs resets VmHWM (Linux >= 4.0), so the peak excludes model loading."""
    Path("/proc/self/clear_refs").write_text("5")


def run_case(a: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from rlreason.models import resolve_model, torch_dtype
    from rlreason.probes.capture import iter_chunks

    model = AutoModelForCausalLM.from_pretrained(resolve_model(a.model, dtype=a.dtype),
                                                 dtype=torch_dtype(a.dtype)).eval()
    n = model.config.num_hidden_layers
    layers = {"final": [n], "middle": [n // 2], "all": list(range(n + 1))}[a.layers]
    g = torch.Generator().manual_seed(0)
    B, T = (1, a.long_len) if a.long else (a.batch, a.seq_len)
    ids = torch.randint(100, model.config.vocab_size, (B, T), generator=g)
    w = torch.randn(model.config.hidden_size)
    # warm-up on a short input (kernels, allocator) before measuring
    with torch.inference_mode():
        model(input_ids=ids[:1, :32])
    base = _status_mb("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    with torch.inference_mode():
        if a.method == "naive":
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
            kept = [hs[l].float() for l in layers]
            check = sum(float((h @ w).sum()) for h in kept)
        else:
            check = 0.0
            for c in iter_chunks(model, ids.tolist(), layers, chunk_len=a.chunk_len,
                                 max_batch_tokens=a.max_batch_tokens):
                check += float((c.states @ w).sum())
    dt = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    return {"tokens": B * T, "seconds": dt, "tok_s": B * T / dt, "peak_mb": peak - base, "check": check}


def _preload_env() -> dict[str, str]:
    from rlreason.cpu import preload_libs
    libs = preload_libs()
    return {**os.environ, "LD_PRELOAD": ":".join(libs)} if libs else dict(os.environ)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--long-len", type=int, default=8192)
    p.add_argument("--naive-max-len", type=int, default=8192)
    p.add_argument("--chunk-len", type=int, default=512)
    p.add_argument("--max-batch-tokens", type=int, default=4096)
    p.add_argument("--case", help=argparse.SUPPRESS)  # child mode: method,layers,long
    a = p.parse_args()
    if a.case:
        a.method, a.layers, long = a.case.split(",")
        a.long = long == "long"
        print(json.dumps(run_case(a)))
        return

    env = _preload_env()
    print(f"model {a.model} ({a.dtype}), {os.cpu_count()} CPUs, LD_PRELOAD={env.get('LD_PRELOAD', '') or 'none'}")
    cases = [(m, l, "batch") for l in ("final", "middle", "all") for m in ("naive", "bounded")]
    cases += [("naive", "all", "long")] if a.long_len <= a.naive_max_len else []
    cases += [("bounded", "all", "long")]
    results = {}
    for case in cases:
        argv = [sys.executable, __file__, "--case", ",".join(case)] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items() if k != "case" and v is not None]
        out = subprocess.run(argv, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            results[case] = None
            print(f"{'/'.join(case)} failed (rc {out.returncode}): {out.stderr.strip().splitlines()[-1:]}")
            continue
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    shape = {"batch": f"{a.batch}x{a.seq_len}", "long": f"1x{a.long_len}"}
    print(f"\n{'case':28s} {'tokens':>7s} {'tok/s':>8s} {'peak MB':>8s}   bounded vs naive (speed x, memory x)")
    for (m, l, kind), r in results.items():
        if r is None:
            continue
        ratio = ""
        ref = results.get(("naive", l, kind))
        if m == "bounded" and ref:
            mem = (f"{ref['peak_mb'] / r['peak_mb']:.1f}x less memory" if r["peak_mb"] >= 1
                   else f"<1 MB vs {ref['peak_mb']:.0f} MB")
            ratio = f"   {r['tok_s'] / ref['tok_s']:.2f}x faster, {mem}"
        print(f"{m + '/' + l + ' ' + shape[kind]:28s} {r['tokens']:7d} {r['tok_s']:8.0f} {r['peak_mb']:8.0f}{ratio}")


if __name__ == "__main__":
    main()
