"""The policy update of one GRPO step on the peer workload (32 rows = 8 prompts x 4 samples, prompts 80-200
tokens, 128-token responses, micro-batch 4, bf16 autocast, fused AdamW), on whatever device is there:
shared-prefix forward (one prompt pass per group) vs one forward per row, interleaved, in one run; on CPU
also the trainer's grouped-matmul attention (model.attn_implementation=auto) vs SDPA on the shared path, and
that plus the fused RMSNorm that the CPU switch applies (rlreason/cpu.py, rlreason/trainer/fused_rms_norm.py).
SmolLM2-135M's architecture with random weights (the time does not depend on their values), so it also runs
where the packaged model is not installed. tcmalloc + Intel OpenMP are preloaded as the CLI does:

    python benchmarks/update_step.py [config.json]
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlreason.config import AlgoConfig, TrainerConfig, load_config
from rlreason.cpu import apply_cpu_optimizations
from rlreason.trainer.fused_rms_norm import fuse_rms_norms
from rlreason.trainer.update import UpdateContext, policy_update

from peer_workload import median, update_rows

REPEATS = 4


def main() -> None:
    if len(sys.argv) > 1:
        cfg = AutoConfig.from_pretrained(sys.argv[1])
    else:
        from rlreason.models import resolve_model
        cfg = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct", dtype="fp32"))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="sdpa").to(dev)
    # What the trainer's default config uses here: rlreason_cpu on CPU, sdpa on GPU.
    grouped = apply_cpu_optimizations(load_config(None, []), dev, []).attention or "sdpa"
    rows = update_rows()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=dev.type in ("cpu", "cuda"))

    def once(share: bool, attn: str = "sdpa", fused_norm: bool = False) -> float:
        model.set_attn_implementation(attn)
        for m in model.modules():
            m.__dict__.pop("forward", None)  # the modules' own forward ...
        if fused_norm:
            fuse_rms_norms(model)  # ... or the fused RMSNorm routed in per instance
        ctx = UpdateContext(model, opt, None, None, dev, torch.bfloat16, 0, 1.0, share_prompts=share)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        policy_update(rows, ctx, AlgoConfig(), TrainerConfig(micro_batch_size=4), None)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    variants = [(False, "sdpa"), (True, "sdpa")]
    if grouped != "sdpa":
        variants += [(True, grouped), (True, grouped, True)]
    for v in variants:
        once(*v)  # warm-up
    runs = []
    for r in range(REPEATS):  # interleaved, every other round in reverse order so no variant always follows another
        order = list(range(len(variants)))[::1 if r % 2 == 0 else -1]
        times = {i: once(*variants[i]) for i in order}
        runs.append([times[i] for i in range(len(variants))])
    med = [median([r[i] for r in runs]) for i in range(len(variants))]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"update on {name}: per-row forward {med[0]:.2f} s   shared prefix {med[1]:.2f} s   "
          f"ratio {med[0] / med[1]:.2f}x (medians of {REPEATS} interleaved runs, SDPA attention)")
    if len(med) > 2:
        print(f"  shared prefix with {grouped} attention {med[2]:.2f} s   ratio vs SDPA {med[1] / med[2]:.2f}x")
        print(f"  ... and the fused RMSNorm {med[3]:.2f} s   ratio vs without {med[2] / med[3]:.2f}x   "
              f"(all together vs per-row SDPA {med[0] / med[3]:.2f}x)")


if __name__ == "__main__":
    from rlreason.cpu import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP on CPU, as the CLI runs
    main()
