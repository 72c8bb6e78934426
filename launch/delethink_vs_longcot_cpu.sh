#!/usr/bin/env bash
# Delethink (Markovian thinking, arXiv 2510.06557) vs LongCoT in small, on CPU: does RL with chunked thinking
# match ordinary long chain-of-thought RL at the same thinking budget, at what cost, and what happens when
# both get more budget at test time than in training?
#
#   1. warm start: SFT of SmolLM2-135M-Instruct on code-written running-sum traces (configs/running_sum_sft_cpu.yaml),
#      exported as a Hugging Face directory: per trace one whole-trace line (what LongCoT sees) and its
#      Delethink chunk lines (what the Markovian arm sees at chunks 2, 3, ...: the chunk prompt the RL
#      config's wrapper builds, as token ids, and the next chunk), one shared warm start for both arms
#   2. benchmarks/delethink_chunk_continuation.py: from a correct state, does the warm start write each next
#      chunk right from the Delethink chunk prompt, and from the whole context so far (LongCoT's view)?
#   3. RL from that warm start, per seed: the Markovian arm (configs/delethink_vs_longcot_cpu.yaml) and the
#      LongCoT arm (the same file with env.name=longcot, nothing else changed): same data, steps, seeds and
#      budget C + (I-1)(C-m) = 192 tokens
#   4. after all seeds' RL, `rlreason eval --chunked` of each final checkpoint at 1x, 2x, 4x that budget
#      (I = 5, 11, 23) on held-out problems longer than any trained (14-16 terms instead of 10-12), both as
#      LongCoT and Markovian
#   5. benchmarks/delethink_vs_longcot.py: one table (markdown) and one PNG
#
#   bash launch/delethink_vs_longcot_cpu.sh                       # everything: ~1 h on 2 busy CPU cores
#   SEEDS="0" bash launch/delethink_vs_longcot_cpu.sh                  # one seed
#
# Every stage skips what a previous invocation finished (a run with summary.txt, an eval with its json), so
# re-running continues. Environment: PYTHON (default python), RUNS (run directories, default
# runs/delethink_vs_longcot), OUT (results prefix, default benchmarks/results/delethink_vs_longcot_cpu),
# SEEDS (default "0 1"), EVAL_SEEDS (seeds whose final checkpoints get the test-time evaluation,
# default 0), SFT_ROWS, NICE (niceness of the training processes, default 5). Extra arguments are
# passed to both RL arms as config overrides (e.g. trainer.steps=4).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
RUNS=${RUNS:-runs/delethink_vs_longcot}
OUT=${OUT:-benchmarks/results/delethink_vs_longcot_cpu}
SEEDS=${SEEDS:-"0 1"}
EVAL_SEEDS=${EVAL_SEEDS:-0}
SFT_ROWS=${SFT_ROWS:-64}     # traces; each also gives its 3-4 chunk lines (64 -> ~275 lines)
NICE=${NICE:-5}
CFG=configs/delethink_vs_longcot_cpu.yaml
SFT_CFG=configs/running_sum_sft_cpu.yaml
BUDGETS=5,11,23           # I at C = 64, m = 32: 192, 384, 768 tokens = 1x, 2x, 4x the training budget
HELD_OUT="data.eval.min_terms=14 data.eval.max_terms=16"
WARM="$RUNS/warm_start_model"

rl() { nice -n "$NICE" "$PY" -m rlreason.cli "$@"; }
say() { echo "[$(date -u +%H:%M:%S)] $*"; }
mkdir -p "$RUNS"

# 1. warm start
if [ ! -f "$RUNS/warm_start.jsonl" ]; then
  say "SFT lines -> $RUNS/warm_start.jsonl"
  "$PY" -m rlreason.data.running_sum sft --out "$RUNS/warm_start.jsonl" --size "$SFT_ROWS" \
    --min-terms 10 --max-terms 12 --seed 1 --config "$CFG" --chunks
fi
if [ ! -f "$WARM/config.json" ]; then
  say "SFT -> $RUNS/sft"
  rl train "$SFT_CFG" output_dir="$RUNS/sft" data.train.path="$RUNS/warm_start.jsonl" > "$RUNS/sft.log" 2>&1
  rl export --run "$RUNS/sft" --out "$WARM" --dtype bf16 >> "$RUNS/sft.log" 2>&1
  rm -rf "$RUNS/sft/checkpoints"   # the exported directory is what the RL runs load
fi

# 2. where the warm start stands: from a correct state, does it write each next chunk right, given the
# Delethink chunk prompt vs the whole context so far (benchmarks/delethink_chunk_continuation.py)
if [ ! -f "$RUNS/continuation.json" ]; then
  say "chunk continuation of the warm start -> $RUNS/continuation.json"
  nice -n "$NICE" "$PY" benchmarks/delethink_chunk_continuation.py --model "$WARM" --config "$CFG" \
    --out "$RUNS/continuation.json" > "$RUNS/continuation.log" 2>&1
fi

# 3. RL, both arms per seed (seed by seed, so a cut-short session still has matched pairs)
for seed in $SEEDS; do
  for arm in markovian longcot; do
    run="$RUNS/${arm}_s$seed"
    [ -f "$run/summary.txt" ] && continue
    say "RL $arm seed $seed -> $run"
    rl train "$CFG" output_dir="$run" seed="$seed" env.name="$arm" model.name="$WARM" "$@" \
      > "$RUNS/${arm}_s$seed.log" 2>&1
  done
done

# 4. test-time scaling of the final checkpoints of the seeds in EVAL_SEEDS
for seed in $EVAL_SEEDS; do
  case " $SEEDS " in *" $seed "*) ;; *) continue ;; esac
  for arm in markovian longcot; do
    run="$RUNS/${arm}_s$seed"
    [ -f "$run/chunked_eval.json" ] && continue
    say "eval --chunked $arm seed $seed"
    rl eval --chunked "$CFG" --budgets "$BUDGETS" --checkpoint latest output_dir="$run" seed="$seed" \
      model.name="$WARM" $HELD_OUT > "$RUNS/tts_${arm}_s$seed.log" 2>&1
  done
done

# 5. one table, one PNG
say "results -> $OUT.{md,png,json}"
"$PY" benchmarks/delethink_vs_longcot.py --runs "$RUNS" --out "$OUT"
