#!/usr/bin/env bash
# Train an rlreason config with verl on the GPUs of this machine.
set -euo pipefail
usage() {
  cat <<'TXT'
usage: launch/verl_single_node.sh CONFIG [rlreason overrides...] [-- verl overrides...]

Runs, on one machine with NVIDIA GPUs:
  1. checks: nvidia-smi lists GPUs; $PYTHON (default: python) has verl==0.9.1, ray, vllm, rlreason
  2. rlreason models prepare (known model names), data export --format verl (train/val parquet)
  3. rlreason verl-config CONFIG --nodes 1 --gpus-per-node <all GPUs> --out <run_dir>/verl/overrides.txt
  4. for env pay_per_search: rlreason serve-search on 127.0.0.1:${SEARCH_PORT:-8000} (stopped at exit)
  5. python -m verl.trainer.main_ppo <overrides> [verl overrides after --]

Environment: PYTHON, GPUS (default: all nvidia-smi lists), SEARCH_PORT, SEARCH_ARGS (e.g. "--corpus x.jsonl").
Example: launch/verl_single_node.sh configs/quickstart.yaml trainer.steps=100 -- trainer.save_freq=20
Setup on a GPU node: pip install -e ".[verl]" "verl[vllm]==0.9.1"   (docs/verl.md)
TXT
}
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0;; esac
cd "$(dirname "$0")/.."
. launch/_verl_common.sh
CONFIG=$1; shift
RL=(); VERL=()
while [ $# -gt 0 ]; do [ "$1" = "--" ] && { shift; VERL=("$@"); break; }; RL+=("$1"); shift; done
[ -f "$CONFIG" ] || die "config file '$CONFIG' not found"

check_gpu 1
check_python
GPUS=${GPUS:-$NGPU}
prepare_run "$CONFIG" 1 "$GPUS" "${RL[@]}"
trap stop_search EXIT
start_search_if_needed "$CONFIG" 127.0.0.1 "${RL[@]}"
mapfile -t OVR < "$OVERRIDES_FILE"
echo "verl: $GPUS GPUs, $(wc -l < "$OVERRIDES_FILE") overrides from $OVERRIDES_FILE" >&2
"$PY" -m verl.trainer.main_ppo "${OVR[@]}" "${VERL[@]}" 2>&1 | tee "$RUN_DIR/verl/train.log"
