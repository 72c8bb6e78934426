#!/usr/bin/env bash
# Pay-per-search GRPO on CPU: start `rlreason serve-search` (BM25 over the built-in wiki corpus) in the
# background, wait for /health, train configs/pay_per_search_cpu.yaml, then run the abstention evaluation
# (search tool removed) on the initial model and on the last checkpoint; the server stops on exit, also
# on errors and Ctrl-C. Extra arguments are config overrides (e.g. trainer.steps=4).
#
#   flock /tmp/rlreason-cpu.lock bash launch/pay_per_search_cpu.sh
#   SEARCH_PORT=8766 ABSTENTION=0 bash launch/pay_per_search_cpu.sh trainer.steps=2
#   CONFIG=configs/qa_world_cpu.yaml RUN_DIR=runs/qa_world_cpu SEARCH_CORPUS=runs/qa_world_cpu/corpus.jsonl \
#       bash launch/pay_per_search_cpu.sh      # another config, served another corpus (docs/qa_world.md)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
[ -f .venv/bin/activate ] && . .venv/bin/activate

CONFIG=${CONFIG:-configs/pay_per_search_cpu.yaml}
PORT=${SEARCH_PORT:-8765}
BASE="http://127.0.0.1:$PORT"
ABSTENTION=${ABSTENTION:-1}
RUN_DIR=${RUN_DIR:-runs/pay_per_search_cpu}   # must match the config's name/output_dir
mkdir -p "$RUN_DIR"
LOG="$RUN_DIR/serve-search.log"

# shellcheck source=launch/_search_server.sh
. launch/_search_server.sh
serve_search "$BASE" "$LOG" rlreason serve-search --port "$PORT" ${SEARCH_CORPUS:+--corpus "$SEARCH_CORPUS"}
curl -sf "$BASE/health"
echo

URL_OVERRIDE="env.args.server_url=$BASE/retrieve"
if [ "$ABSTENTION" = 1 ]; then
  rlreason eval "$CONFIG" "$URL_OVERRIDE" "$@" --abstention --json "$RUN_DIR/abstention_initial.json"
fi
rlreason train "$CONFIG" "$URL_OVERRIDE" "$@"
if [ "$ABSTENTION" = 1 ]; then
  CKPT=$(ls -d "$RUN_DIR"/checkpoints/step_* 2>/dev/null | sort | tail -1 || true)
  if [ -n "$CKPT" ]; then
    rlreason eval "$CONFIG" "$URL_OVERRIDE" "$@" --abstention --checkpoint "$CKPT" --json "$RUN_DIR/abstention_final.json"
  else
    echo "launch: no checkpoint under $RUN_DIR/checkpoints; skipping the final abstention evaluation" >&2
  fi
fi
