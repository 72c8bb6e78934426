#!/usr/bin/env bash
# The Auto-CEI comparison in small (docs/methods.md section 3, "The comparison"): from one SFT warm start on
# the mixture's worked solutions, where a share (IDK_FRACTION) of the unsolvable rows stops after k lines with
# \boxed{I don't know} (so the initial model refuses at times, after a varying amount of reasoning), measured
# on the held-out set first (RUNS_DIR/warm_eval.json), then per seed
#   (a) expert iteration without IDK      a refusal scores -1 (rewards[0].args.refusal), so it is never kept
#   (b) refuse-when-wrong SFT             R-Tuning style: the warm start answers the questions (a) trains on,
#                                         wrong answers' final box becomes \boxed{I don't know}, one SFT pass
#   (c) Auto-CEI with its curriculum      configs/autocei_small_cpu.yaml
#   (d) Auto-CEI with c1 frozen           env.args.freeze_c1=true
# then one table and one PNG from the runs (benchmarks/autocei_comparison.py report).
#
#   launch/autocei_small_cpu.sh [RUNS_DIR]          default runs/autocei_small_cpu
# Environment: PY (python), SEEDS ("0 1"), BASE (the model the warm start fine-tunes, smollm2-135m-instruct), WARM_SIZE (mixture rows for the warm start, default 274),
# IDK_FRACTION (share of the warm start's unsolvable rows written as refusals after k lines, default 0.6: 0.3 refused 2/120 held-out), RWW_LR (2e-5, expert iteration's), OUT (report prefix, default RUNS_DIR/autocei_small_cpu),
# EXTRA (overrides added to every step, e.g. the CI smoke's sizes; tests/test_autocei_launch.py), KEEP_CHECKPOINTS=1
# keeps the arms' checkpoints (deleted after each run otherwise; the warm start is kept).
# Steps already done (their output exists) are skipped, so an interrupted launch can be re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/autocei_small_cpu}
PY=${PY:-python}
SEEDS=${SEEDS:-"0 1"}
BASE=${BASE:-smollm2-135m-instruct}
WARM_SIZE=${WARM_SIZE:-274}
IDK_FRACTION=${IDK_FRACTION:-0.6}
RWW_LR=${RWW_LR:-2.0e-5}
OUT=${OUT:-$RUNS/autocei_small_cpu}
read -r -a EXTRA <<< "${EXTRA:-}"
CFG=configs/autocei_small_cpu.yaml
SFT=configs/autocei_small_sft_cpu.yaml
mkdir -p "$RUNS"

latest() {  # the newest complete checkpoint of a run directory: an HF model directory
  "$PY" -c 'import json, sys, pathlib; r = pathlib.Path(sys.argv[1]) / "checkpoints"; print(r / json.loads((r / "latest.json").read_text())["path"])' "$1"
}
drop_checkpoints() { [ "${KEEP_CHECKPOINTS:-0}" = 1 ] || rm -rf "$1/checkpoints"; }

# warm start: SFT on worked solutions (some unsolvable ones refusing after k lines), in the runs' prompt
if [ ! -f "$RUNS/warm/summary.txt" ]; then
  "$PY" -m rlreason.data.cei_mixture sft --out "$RUNS/warm_start.jsonl" --size "$WARM_SIZE" --config "$CFG" \
    --idk-fraction "$IDK_FRACTION"
  "$PY" -m rlreason.cli train "$SFT" name=warm output_dir="$RUNS/warm" data.train.path="$RUNS/warm_start.jsonl" \
    model.name="$BASE" "${EXTRA[@]}" --overwrite
fi
WARM=$(latest "$RUNS/warm")
echo "warm start: $WARM"
# its held-out refusal rate per difficulty, before any arm (the same measurement every arm starts from)
if [ ! -f "$RUNS/warm_eval.json" ]; then
  "$PY" benchmarks/autocei_comparison.py eval "$CFG" output_dir="$RUNS/scratch" seed=0 model.name="$WARM" \
    "${EXTRA[@]}" --out "$RUNS/warm_eval.json"
fi

rww() {  # (b) for seed $1: the warm start's answers to (a)'s questions, wrong ones refused; one SFT pass; held-out
  local s=$1
  [ -f "$RUNS/rww_s${s}_eval.json" ] && return 0
  "$PY" benchmarks/autocei_comparison.py rww-data "$CFG" output_dir="$RUNS/scratch" "${common[@]}" --out "$RUNS/rww_s$s.jsonl"
  "$PY" -m rlreason.cli train "$SFT" name="rww_s$s" output_dir="$RUNS/rww_s$s" seed="$s" model.name="$WARM" \
    data.train.path="$RUNS/rww_s$s.jsonl" trainer.lr="$RWW_LR" "${EXTRA[@]}" --overwrite
  "$PY" benchmarks/autocei_comparison.py eval "$CFG" output_dir="$RUNS/scratch" seed="$s" \
    model.name="$(latest "$RUNS/rww_s$s")" "${EXTRA[@]}" --out "$RUNS/rww_s${s}_eval.json"
  drop_checkpoints "$RUNS/rww_s$s"
}

# per seed, the ablation (d) last: a run cut short by the clock loses the least informative arm first
for s in $SEEDS; do
  common=(seed="$s" model.name="$WARM" "${EXTRA[@]}")
  for arm in ei cei rww frozen; do
    [ "$arm" = rww ] && { rww "$s"; continue; }
    [ -f "$RUNS/${arm}_s$s/summary.txt" ] && continue
    case $arm in
      ei) extra=('rewards=[{name: idk, args: {refusal: -1.0}}]' env.args.freeze_c1=true) ;;  # c1 is moot; frozen it cannot end the run early
      cei) extra=() ;;
      frozen) extra=(env.args.freeze_c1=true) ;;
    esac
    "$PY" -m rlreason.cli train "$CFG" name="${arm}_s$s" output_dir="$RUNS/${arm}_s$s" "${common[@]}" "${extra[@]}" --overwrite
    drop_checkpoints "$RUNS/${arm}_s$s"
  done
done
rm -rf "$RUNS/scratch"
"$PY" benchmarks/autocei_comparison.py report --runs "$RUNS" --out "$OUT"
