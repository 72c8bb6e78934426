#!/usr/bin/env bash
# The refusal-cliff study (docs/probes.md) on the opt-in Qwen2.5-Coder-0.5B-Instruct, sized for a shared
# 2-core CPU box: every heavy step runs under a flock so one at a time uses the CPUs. Outputs land in $OUT
# (default runs/probes_qwen); the report step writes $RESULTS.{md,json} and copies the plots beside it.
#
#   bash launch/refusal_cliff_qwen_cpu.sh                       # all steps
#   N_HARMFUL=60 N_HARMLESS=60 bash launch/refusal_cliff_qwen_cpu.sh   # smaller
#   STEPS="score heads report" bash launch/refusal_cliff_qwen_cpu.sh   # some steps (earlier outputs kept)
#
# The model refuses about half of the harmful prompts when asked plainly and none once it thinks first,
# so the probes are trained where both classes exist and read where the model complies:
#   prepare   the model (downloads 491 MB once; fp32, for heads, is converted from it on first use)
#   data      150 harmful + 150 harmless prompts with splits
#   traces    think-then-answer traces (what the probes score)
#   plain     the same prompts in the bare chat template (refusal labels + the probes' training states)
#   capture   states at the last token before the answer of the plain rows (every layer), twice:
#             --label refusal (paper: harmful+refused vs harmless) and --label refused-vs-answered (control:
#             harmful+refused vs harmful+answered, harmfulness equal on both sides)
#   train     one probe per layer for each label set; held-out (test split) accuracy per layer
#   score     both probes at every position of the think-then-answer traces (one forward pass), cliff per
#             trace, right-aligned curves grouped by whether the prompt was refused when asked plainly
#   heads     head attribution for the paper-label probe (linear estimate of all heads, the top RERANK
#             measured exactly), ablation of the top 3% vs 3% random heads: attack success before/after
#             on held-out prompts with the think-then-answer template
#             (RANKING_FROM=an earlier heads.json: reuse its ranking and run the ablation only)
#   report    $RESULTS.md/.json + plots (python -m rlreason.probes.report)
#   repair    Cliff-as-a-Judge against its controls (rlreason repair --scores): LoRA SFT from the same base on
#             the top REPAIR_TOP_P of the first REPAIR_CANDIDATES harmful candidates (0: all) by the paper-label
#             probe's cliff, as many drawn at random, and all of them (full), each mixed with RETAIN_RATIO harmless retain rows per safety row
#             (the model's own answers to probe-split prompts), once per seed in REPAIR_SEEDS; attack success,
#             over-refusal and GSM8K accuracy on REPAIR_N_EVAL held-out prompts per class;
#             $REPAIR_RESULTS.md/.json (mean, std, min/max over seeds per arm)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
[ -f .venv/bin/activate ] && . .venv/bin/activate

MODEL=${MODEL:-qwen2.5-coder-0.5b-instruct}
OUT=${OUT:-runs/probes_qwen}
N_HARMFUL=${N_HARMFUL:-150}
N_HARMLESS=${N_HARMLESS:-150}
MAX_THINK=${MAX_THINK:-96}
MAX_ANSWER=${MAX_ANSWER:-48}
HEAD_TRACES=${HEAD_TRACES:-4}
RERANK=${RERANK:-20}
N_EVAL=${N_EVAL:-32}
SCORE_HARMLESS=${SCORE_HARMLESS:-75}
RESULTS=${RESULTS:-$OUT/refusal_cliff_qwen_cpu}
LOCK=${LOCK:-/tmp/rlreason-heavy.lock}
STEPS=${STEPS:-prepare data traces plain capture train score heads report repair}
REPAIR_SEEDS=${REPAIR_SEEDS:-0 1 2}
REPAIR_TOP_P=${REPAIR_TOP_P:-0.25}
REPAIR_CANDIDATES=${REPAIR_CANDIDATES:-8}
RETAIN_RATIO=${RETAIN_RATIO:-1.0}
REPAIR_N_EVAL=${REPAIR_N_EVAL:-8}
REPAIR_LR=${REPAIR_LR:-3e-4}
REPAIR_EPOCHS=${REPAIR_EPOCHS:-2}
REPAIR_BATCH=${REPAIR_BATCH:-1}
REPAIR_MAX_LEN=${REPAIR_MAX_LEN:-320}
REPAIR_RESULTS=${REPAIR_RESULTS:-$OUT/refusal_repair_qwen_cpu}
RLREASON=${RLREASON:-rlreason}
PY=${PY:-python}
ENGINE=${ENGINE:-vllm}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}

heavy() { flock "$LOCK" "$@"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
mkdir -p "$OUT"
GEN=(--model "$MODEL" --max-think "$MAX_THINK" --max-answer "$MAX_ANSWER" --engine "$ENGINE")

want prepare && heavy $RLREASON models prepare "$MODEL" --dtype bf16
want data && $RLREASON probe data --n-harmful "$N_HARMFUL" --n-harmless "$N_HARMLESS" --out "$OUT/data.jsonl"
want traces && heavy $RLREASON probe traces --data "$OUT/data.jsonl" "${GEN[@]}" --out "$OUT/traces.jsonl" \
  | tee "$OUT/traces.txt"
want plain && heavy $RLREASON probe traces --template plain --data "$OUT/data.jsonl" --model "$MODEL" --engine "$ENGINE" \
  --max-answer "$MAX_ANSWER" --out "$OUT/traces_plain.jsonl" | tee "$OUT/traces_plain.txt"
if want capture; then
  for label in refusal refused-vs-answered; do
    heavy $RLREASON probe capture --traces "$OUT/traces_plain.jsonl" --model "$MODEL" --label "$label" --split all \
      --layers all --out "$OUT/features_plain_$label.safetensors" | tee "$OUT/capture_$label.txt"
  done
fi
if want train; then
  for label in refusal refused-vs-answered; do
    $RLREASON probe train --features "$OUT/features_plain_$label.safetensors" --out "$OUT/probe_$label" \
      | tee "$OUT/train_$label.txt"
  done
fi
want score && heavy $RLREASON probe score --traces "$OUT/traces.jsonl" --max-harmless "$SCORE_HARMLESS" \
  --refused-from "$OUT/traces_plain.jsonl" --probe "$OUT/probe_refusal" "$OUT/probe_refused-vs-answered" \
  --out "$OUT/score_refusal/scores.jsonl" "$OUT/score_refused-vs-answered/scores.jsonl" \
  --plot "$OUT/score_refusal/cliff.png" "$OUT/score_refused-vs-answered/cliff.png" | tee "$OUT/score.txt"
want heads && heavy $RLREASON probe heads --traces "$OUT/traces.jsonl" --probe "$OUT/probe_refusal" --data "$OUT/data.jsonl" \
  --method linear --rerank "$RERANK" --n-traces "$HEAD_TRACES" --top-p 0.03 --n-eval "$N_EVAL" "${GEN[@]:2}" \
  ${RANKING_FROM:+--ranking-from "$RANKING_FROM"} --out "$OUT/heads.json" | tee "$OUT/heads.txt"
want report && $PY -m rlreason.probes.report --dir "$OUT" --out "$RESULTS"
if want repair; then
  # shellcheck disable=SC2086  # REPAIR_SEEDS is a list
  heavy $RLREASON repair --scores "$OUT/score_refusal/scores.jsonl" --traces "$OUT/traces.jsonl" \
    --data "$OUT/data.jsonl" --arms cliff random full --top-p "$REPAIR_TOP_P" --max-candidates "$REPAIR_CANDIDATES" --seeds $REPAIR_SEEDS \
    --retain-ratio "$RETAIN_RATIO" --n-eval "$REPAIR_N_EVAL" --lora true --bf16-autocast true --lr "$REPAIR_LR" \
    --epochs "$REPAIR_EPOCHS" --batch-size "$REPAIR_BATCH" --max-len "$REPAIR_MAX_LEN" "${GEN[@]}" \
    --out "$OUT/repair" | tee "$OUT/repair.txt"
  $PY -m rlreason.probes.compare --json "$OUT/repair/repair.json" --out "$REPAIR_RESULTS"
fi
echo "launch: done; outputs in $OUT"
