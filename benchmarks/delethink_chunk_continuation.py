"""Why a Markovian trace fails where a LongCoT trace succeeds: continuation from a correct state, chunk by
chunk, with and without the deleted context.

For held-out running-sum problems, the worked trace (tokens, then EOS) is replayed through the RL config's
Delethink wrapper (`rlreason.data.running_sum.chunk_lines`, the code that writes the warm start's chunk
lines), which gives, for every chunk l >= 2, the exact prompt a Markovian policy sees there if everything it
wrote before was right: query + head + carry. The model then writes that chunk greedily from

    markovian   the wrapper's chunk prompt (query + head + the last m - k tokens)
    full        the query + the whole correct trace so far (what LongCoT sees at the same point)

and a chunk counts as right when it is token for token the worked chunk. Same positions, same model, same
tokens to write: the only difference is the deleted context. Chunk 1 (the query alone) is the same for
both and is scored once.

    python benchmarks/delethink_chunk_continuation.py --model RUNS/warm_start_model \\
        --config configs/delethink_vs_longcot_cpu.yaml --out RESULTS/continuation.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="a Hugging Face model directory (the warm start)")
    ap.add_argument("--config", required=True, help="the RL config whose Delethink environment is replayed")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--min-terms", type=int, default=10)
    ap.add_argument("--max-terms", type=int, default=12)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from rlreason.config import load_config
    from rlreason.data import running_sum as rs
    from rlreason.registry import build_environment
    from rlreason.rollout import make_engine
    from rlreason.rollout.base import SamplingConfig

    cfg = load_config(a.config)
    tok = AutoTokenizer.from_pretrained(a.model)
    env = build_environment(cfg.env.name, tok, cfg.env.args, cfg.env.markovian)
    C, m = env.C, env.m
    ds = rs.build_running_sum("test", a.size, a.min_terms, a.max_terms, seed=0)  # the RL runs' data.eval
    lines = {x["id"]: x for x in rs.chunk_lines(ds, env)}
    jobs = []  # (problem, chunk, mode, prompt ids, target ids)
    for ex in ds:
        q = env.inner.encode_prompt(env.inner.prompt(dict(ex)))
        t = tok(rs.trace(json.loads(ex["info"])["terms"]), add_special_tokens=False).input_ids + [tok.eos_token_id]
        jobs.append((ex["id"], 1, "both", q, t[:C]))
        chunk = 2
        while (line := lines.get(f"{ex['id']}/chunk{chunk}")) is not None:
            pos = C + (chunk - 2) * (C - m)
            assert line["completion_ids"] == t[pos:pos + C - m]
            jobs.append((ex["id"], chunk, "markovian", line["prompt_ids"], line["completion_ids"]))
            jobs.append((ex["id"], chunk, "full", q + t[:pos], line["completion_ids"]))
            chunk += 1

    r = cfg.rollout
    engine = make_engine("vllm", model_dir=a.model, model=None, tokenizer=tok, sampling=SamplingConfig(0.0),
                         dtype=cfg.model.dtype, max_model_len=r.max_model_len, kv_cache_gb=r.kv_cache_gb,
                         gpu_memory_utilization=r.gpu_memory_utilization,
                         enable_prefix_caching=r.enable_prefix_caching, seed=0, sleep_mode=False)

    async def one(job):
        out = await engine.policy(0).generate(job[3], max_tokens=len(job[4]))
        return list(out.token_ids)

    outs = engine.run([one(j) for j in jobs])
    right: dict[tuple[int, str], list[int]] = defaultdict(list)
    per_problem: dict[tuple[str, str], bool] = {}
    for (pid, chunk, mode, _, target), got in zip(jobs, outs):
        ok = got == target
        for md in (("markovian", "full") if mode == "both" else (mode,)):
            right[(chunk, md)].append(int(ok))
            per_problem[(pid, md)] = per_problem.get((pid, md), True) and ok
    table = [{"chunk": c, "n": len(right[(c, "markovian")]),
              "markovian": sum(right[(c, "markovian")]) / len(right[(c, "markovian")]),
              "full": sum(right[(c, "full")]) / len(right[(c, "full")])}
             for c in sorted({c for c, _ in right})]
    result = {"model": a.model, "config": a.config, "problems": len(ds), "terms": [a.min_terms, a.max_terms],
              "C": C, "m": m, "keep_head": env.keep_head, "per_chunk": table,
              "all_chunks_right": {md: sum(v for (p, mm), v in per_problem.items() if mm == md) / len(ds)
                                   for md in ("markovian", "full")}}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print("chunk  n   markovian  full")
    for row in table:
        print(f"{row['chunk']:>5} {row['n']:>3}   {row['markovian']:.3f}      {row['full']:.3f}")
    print("every chunk right (teacher-forced):", result["all_chunks_right"])
    engine.close()


if __name__ == "__main__":
    main()
