#!/usr/bin/env bash
# The MASH comparison in small (arXiv 2510.01152; docs/qa_world.md, "The comparison"): on the controlled QA
# world (half must-search, half no-search-needed questions), from one SFT warm start, per seed
#   (a) em       Search-R1: EM only, no search cost    search_cost penalty none
#   (b) mash08   MASH exp penalty, lambda 0.8          search_cost penalty exp, lam 0.8
#       mash05   MASH exp penalty, lambda 0.5          search_cost penalty exp, lam 0.5 (configs/mash_small_cpu.yaml)
#   (c) otc      OTC-GRPO's tool reward                search_cost penalty otc
# same data, steps, seeds and prompt for every arm; then the held-out read-off of the warm start and of every
# final checkpoint (`rlreason eval --abstention`: accuracy and searches per question type with the tool,
# abstention and precision with it removed), and one table (markdown + json) and one PNG
# (benchmarks/mash_comparison.py report).
#
#   bash launch/mash_small_cpu.sh [RUNS_DIR]          default runs/mash_small_cpu
#
# Environment: PY (python), SEEDS ("0 1"; "" runs only the warm start and its read-off), ARMS ("em mash08 mash05 otc"), BASE (the model the warm start
# fine-tunes, smollm2-135m-instruct), WARM_SIZE (warm-start rows, half of each type, default 128),
# SEARCH_PORT (8791), OUT (report prefix, default RUNS_DIR/mash_small_cpu), EXTRA (overrides added to every
# training and evaluation, e.g. the CI smoke's sizes; tests/test_mash_launch.py), KEEP_CHECKPOINTS=1 keeps the
# arms' checkpoints (deleted after each arm's evaluation otherwise; the warm start is kept).
# Stages already done (their output exists) are skipped, so an interrupted launch can be re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/mash_small_cpu}
PY=${PY:-python}
SEEDS=${SEEDS-"0 1"}
ARMS=${ARMS:-"em mash08 mash05 otc"}
BASE=${BASE:-smollm2-135m-instruct}
WARM_SIZE=${WARM_SIZE:-128}
PORT=${SEARCH_PORT:-8791}
OUT=${OUT:-$RUNS/mash_small_cpu}
read -r -a EXTRA <<< "${EXTRA:-}"
CFG=configs/mash_small_cpu.yaml
SFT=configs/mash_small_sft_cpu.yaml
BASE_URL="http://127.0.0.1:$PORT"
URL="env.args.server_url=$BASE_URL/retrieve"
mkdir -p "$RUNS"
say() { echo "[$(date -u +%H:%M:%S)] $*"; }

rewards() {  # the arms differ only here: the search_cost penalty (qa_em and qa_answered are logged, weight 0)
  echo "rewards=[{name: search_cost, weight: 1.0, args: {penalty: $1, lam: $2}}, {name: qa_em, weight: 0.0}, {name: qa_answered, weight: 0.0}]"
}
latest() {  # the newest complete checkpoint of a run directory: an HF model directory
  "$PY" -c 'import json, sys, pathlib; r = pathlib.Path(sys.argv[1]) / "checkpoints"; print(r / json.loads((r / "latest.json").read_text())["path"])' "$1"
}

# the world's corpus, served by BM25 for the whole launch (stopped on exit, errors and Ctrl-C included)
[ -f "$RUNS/corpus.jsonl" ] || "$PY" -m rlreason.data.qa_world corpus --out "$RUNS/corpus.jsonl"
# shellcheck source=launch/_search_server.sh
. launch/_search_server.sh
serve_search "$BASE_URL" "$RUNS/serve-search.log" "$PY" -m rlreason.cli serve-search --port "$PORT" --corpus "$RUNS/corpus.jsonl"

# warm start: SFT on rows that show both behaviours, in the RL runs' prompt
if [ ! -f "$RUNS/warm/summary.txt" ]; then
  say "warm start: $WARM_SIZE SFT rows -> $RUNS/warm"
  "$PY" -m rlreason.data.qa_world sft --out "$RUNS/warm_start.jsonl" --size "$WARM_SIZE" --config "$CFG"
  "$PY" -m rlreason.cli train "$SFT" name=warm output_dir="$RUNS/warm" data.train.path="$RUNS/warm_start.jsonl" \
    model.name="$BASE" "${EXTRA[@]}" --overwrite
fi
WARM=$(latest "$RUNS/warm")
say "warm start: $WARM"
if [ ! -f "$RUNS/warm_eval.json" ]; then
  say "held-out read-off of the warm start"
  "$PY" -m rlreason.cli eval "$CFG" "$URL" model.name="$WARM" output_dir="$RUNS/scratch" "${EXTRA[@]}" \
    --abstention --json "$RUNS/warm_eval.json"
fi

# RL, seed by seed (a cut-short launch still has every arm of the seeds it finished), then each final
# checkpoint's read-off
for s in $SEEDS; do
  for arm in $ARMS; do
    run="$RUNS/${arm}_s$s"
    case $arm in
      em) extra=("$(rewards none 0.5)") ;;  # lam is not read by 'none' nor 'otc'
      mash08) extra=("$(rewards exp 0.8)") ;;
      mash05) extra=("$(rewards exp 0.5)") ;;
      otc) extra=("$(rewards otc 0.5)") ;;
      *) echo "launch: unknown arm '$arm' (ARMS: em mash08 mash05 otc)" >&2; exit 2 ;;
    esac
    if [ ! -f "$run/summary.txt" ]; then
      say "train $arm seed $s"
      "$PY" -m rlreason.cli train "$CFG" "$URL" name="${arm}_s$s" output_dir="$run" seed="$s" model.name="$WARM" \
        "${extra[@]}" "${EXTRA[@]}" --overwrite
    fi
    if [ ! -f "$run/eval.json" ]; then
      say "read-off $arm seed $s"
      "$PY" -m rlreason.cli eval "$CFG" "$URL" model.name="$(latest "$run")" output_dir="$RUNS/scratch" seed="$s" \
        "${extra[@]}" "${EXTRA[@]}" --abstention --json "$run/eval.json"
    fi
    [ "${KEEP_CHECKPOINTS:-0}" = 1 ] || rm -rf "$run/checkpoints"
  done
done
rm -rf "$RUNS/scratch"
"$PY" benchmarks/mash_comparison.py report --runs "$RUNS" --out "$OUT"
