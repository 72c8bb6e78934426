#!/usr/bin/env bash
# Multi-node verl: a Ray head that submits the job, and workers that join it.
set -euo pipefail
usage() {
  cat <<'TXT'
usage: launch/verl_multinode.sh head CONFIG --nodes N [--gpus-per-node G] [--port 6379] [rlreason overrides...] [-- verl overrides...]
       launch/verl_multinode.sh worker HEAD_ADDRESS[:6379] [--block]

head    on the first node: checks (nvidia-smi, verl==0.9.1, ray, vllm), prepares the run (model cache, verl
        parquet, `rlreason verl-config --nodes N`), `ray start --head`, starts the retrieval server
        (`rlreason serve-search` on this node, for env pay_per_search; its URL is passed to the environment
        as env.args.server_url), waits until N nodes have joined, then `ray job submit -- python -m
        verl.trainer.main_ppo <overrides>` and follows its logs. Stops Ray and the server at exit.
worker  on every other node: checks, then `ray start --address HEAD` (--block keeps it in the foreground,
        as Slurm needs).

All nodes need the same checkout + venv (`pip install -e ".[verl]" "verl[vllm]==0.9.1"`) and a shared
filesystem for the run directory and RLREASON_CACHE. Environment: PYTHON, SEARCH_PORT (8000),
SEARCH_ARGS, RAY_DASHBOARD_PORT (8265), JOIN_TIMEOUT (600 s).
Example:  node0$ launch/verl_multinode.sh head configs/quickstart.yaml --nodes 2
          node1$ launch/verl_multinode.sh worker node0:6379
TXT
}
[ $# -ge 1 ] || { usage >&2; exit 2; }
case "$1" in -h|--help) usage; exit 0;; esac
cd "$(dirname "$0")/.."
. launch/_verl_common.sh
ROLE=$1; shift

if [ "$ROLE" = worker ]; then
  [ $# -ge 1 ] || die "worker needs the head address (host or host:port)"
  ADDR=$1; shift
  case "$ADDR" in *:*) ;; *) ADDR="$ADDR:6379";; esac
  check_gpu 1; check_python; check_ray_cli
  exec ray start --address "$ADDR" --num-gpus "$NGPU" "$@"
fi
[ "$ROLE" = head ] || { usage >&2; die "unknown role '$ROLE' (head | worker)"; }

[ $# -ge 1 ] || die "head needs a CONFIG"
CONFIG=$1; shift
[ -f "$CONFIG" ] || die "config file '$CONFIG' not found"
NODES=; GPN=; PORT=6379; RL=(); VERL=()
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2;;
    --gpus-per-node) GPN=$2; shift 2;;
    --port) PORT=$2; shift 2;;
    --) shift; VERL=("$@"); break;;
    *) RL+=("$1"); shift;;
  esac
done
[ -n "$NODES" ] || die "head needs --nodes N (the number of nodes including this one)"
check_gpu 1; check_python; check_ray_cli
GPN=${GPN:-$NGPU}
HEAD_IP=${HEAD_IP:-$(hostname -I 2>/dev/null | awk '{print $1}')}
[ -n "$HEAD_IP" ] || die "could not find this node's IP address (set HEAD_IP)"
if [ "$(config_value "$CONFIG" env.name "${RL[@]}")" = pay_per_search ]; then
  RL+=("env.args.server_url=http://$HEAD_IP:${SEARCH_PORT:-8000}/retrieve")  # agent loops run on every node
fi
prepare_run "$CONFIG" "$NODES" "$GPN" "${RL[@]}"

cleanup() { stop_search; ray stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
ray start --head --port "$PORT" --num-gpus "$GPN" --dashboard-host 0.0.0.0 --dashboard-port "${RAY_DASHBOARD_PORT:-8265}"
start_search_if_needed "$CONFIG" 0.0.0.0 "${RL[@]}"

echo "waiting for $NODES nodes to join (workers: launch/verl_multinode.sh worker $HEAD_IP:$PORT)" >&2
deadline=$(( $(date +%s) + ${JOIN_TIMEOUT:-600} ))
while :; do
  alive=$("$PY" -c "import ray; ray.init(address='auto', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))" 2>/dev/null || echo 0)
  [ "$alive" -ge "$NODES" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || die "only $alive of $NODES nodes joined within ${JOIN_TIMEOUT:-600} s"
  sleep 5
done
mapfile -t OVR < "$OVERRIDES_FILE"
echo "submitting: $NODES nodes x $GPN GPUs, overrides in $OVERRIDES_FILE" >&2
ray job submit --address "http://127.0.0.1:${RAY_DASHBOARD_PORT:-8265}" -- \
  "$PY" -m verl.trainer.main_ppo "${OVR[@]}" "${VERL[@]}" 2>&1 | tee "$RUN_DIR/verl/train.log"
