"""The policy update of one GRPO step on the peer workload (32 rows = 8 prompts x 4 samples, prompts 80-200
tokens, 128-token responses, micro-batch 4, bf16 autocast, fused AdamW), on whatever device is there:
shared-prefix forward (one prompt pass per group) vs one forward per row, interleaved, in one run.
SmolLM2-135M's architecture with random weights (the time does not depend on their values), so it also runs
where the packaged model is not installed. tcmalloc + Intel OpenMP are preloaded as the CLI does:

    python benchmarks/update_step.py [config.json]
"""

from __future__ import annotations

import random
import sys
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rlreason.config import AlgoConfig, TrainerConfig
from rlreason.trainer.batch import Row
from rlreason.trainer.update import UpdateContext, policy_update

REPEATS = 3


def main() -> None:
    if len(sys.argv) > 1:
        cfg = AutoConfig.from_pretrained(sys.argv[1])
    else:
        from rlreason.models import resolve_model
        cfg = AutoConfig.from_pretrained(resolve_model("smollm2-135m-instruct", dtype="fp32"))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(dev)
    random.seed(0)
    rows = []
    for i in range(32):
        if i % 4 == 0:
            prompt = [random.randrange(100, 40_000) for _ in range(random.randint(80, 200))]
        rows.append(Row(prompt, [random.randrange(100, 40_000) for _ in range(128)], [-2.0] * 128, [1] * 128,
                        random.choice([-1.0, 1.0]), i, i // 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-7, fused=dev.type in ("cpu", "cuda"))

    def once(share: bool) -> float:
        ctx = UpdateContext(model, opt, None, None, dev, torch.bfloat16, 0, 1.0, share_prompts=share)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        policy_update(rows, ctx, AlgoConfig(), TrainerConfig(micro_batch_size=4), None)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    once(True), once(False)  # warm-up
    pairs = [(once(False), once(True)) for _ in range(REPEATS)]
    plain = sorted(p for p, _ in pairs)[REPEATS // 2]
    shared = sorted(s for _, s in pairs)[REPEATS // 2]
    name = torch.cuda.get_device_name() if dev.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    print(f"update on {name}: per-row forward {plain:.2f} s   shared prefix {shared:.2f} s   "
          f"ratio {plain / shared:.2f}x (median of {REPEATS} interleaved pairs)")


if __name__ == "__main__":
    from rlreason.cli import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP on CPU, as the CLI runs
    main()
