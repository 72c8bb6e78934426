#!/usr/bin/env bash
# The refusal-cliff study (docs/probes.md) on the opt-in Qwen2.5-Coder-0.5B-Instruct, sized for a shared
# 2-core CPU box: every heavy step runs under a flock so one at a time uses the CPUs, and each stays under
# ~15 min at the default sizes. Outputs land in $OUT (default runs/probes_qwen).
#
#   bash launch/refusal_cliff_qwen_cpu.sh                       # all steps
#   N_HARMFUL=60 N_HARMLESS=60 bash launch/refusal_cliff_qwen_cpu.sh   # smaller
#   STEPS="score heads" bash launch/refusal_cliff_qwen_cpu.sh   # resume from a step (earlier outputs kept)
#
# Steps: prepare (downloads 491 MB once; fp32, for heads, is converted from it on first use), data, traces (think-then-answer, the probe's input), plain (the
# bare chat-template baseline, refusal counts only), capture (--label refusal: the paper's classes), train,
# score (per-position scores, cliff sizes, right-aligned plot), heads (attribution + ablation of the top
# 3% of heads, attack success before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
[ -f .venv/bin/activate ] && . .venv/bin/activate

MODEL=qwen2.5-coder-0.5b-instruct
OUT=${OUT:-runs/probes_qwen}
N_HARMFUL=${N_HARMFUL:-150}
N_HARMLESS=${N_HARMLESS:-150}
MAX_THINK=${MAX_THINK:-96}
MAX_ANSWER=${MAX_ANSWER:-48}
HEAD_TRACES=${HEAD_TRACES:-4}
N_EVAL=${N_EVAL:-32}
LOCK=${LOCK:-/tmp/rlreason-heavy.lock}
STEPS=${STEPS:-prepare data traces plain capture train score heads}
RLREASON=${RLREASON:-rlreason}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}

heavy() { flock "$LOCK" "$@"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT"
GEN=(--model "$MODEL" --max-think "$MAX_THINK" --max-answer "$MAX_ANSWER")

want prepare && heavy $RLREASON models prepare "$MODEL" --dtype bf16
want data && $RLREASON probe data --n-harmful "$N_HARMFUL" --n-harmless "$N_HARMLESS" --out "$OUT/data.jsonl"
want traces && heavy $RLREASON probe traces --data "$OUT/data.jsonl" "${GEN[@]}" --out "$OUT/traces.jsonl" \
  | tee "$OUT/traces.txt"
want plain && heavy $RLREASON probe traces --template plain --data "$OUT/data.jsonl" --model "$MODEL" \
  --max-answer "$MAX_ANSWER" --out "$OUT/traces_plain.jsonl" | tee "$OUT/traces_plain.txt"
want capture && heavy $RLREASON probe capture --traces "$OUT/traces.jsonl" --model "$MODEL" --label refusal \
  --layers all --out "$OUT/features.safetensors" | tee "$OUT/capture.txt"
want train && $RLREASON probe train --features "$OUT/features.safetensors" --out "$OUT/probe" | tee "$OUT/train.txt"
want score && heavy $RLREASON probe score --traces "$OUT/traces.jsonl" --probe "$OUT/probe" \
  --out "$OUT/scores.jsonl" --plot "$OUT/cliff.png" | tee "$OUT/score.txt"
want heads && heavy $RLREASON probe heads --traces "$OUT/traces.jsonl" --probe "$OUT/probe" --data "$OUT/data.jsonl" \
  --n-traces "$HEAD_TRACES" --top-p 0.03 --n-eval "$N_EVAL" "${GEN[@]:2}" --out "$OUT/heads.json" \
  | tee "$OUT/heads.txt"
echo "launch: done; outputs in $OUT"
