# Shared by launch/verl_*.sh (sourced, not run): checks that fail with a clear message, and the
# preparation every launcher does before verl starts. See docs/verl.md.
VERL_VERSION_PINNED=0.9.1
PY=${PYTHON:-python}

die() { echo "error: $*" >&2; exit 1; }

check_gpu() {  # check_gpu [min_count] -> sets NGPU
  command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: verl training needs NVIDIA GPUs (this machine has none or no driver). Use 'rlreason train' for CPU / one device."
  NGPU=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [ "${NGPU:-0}" -ge "${1:-1}" ] || die "nvidia-smi lists ${NGPU:-0} GPUs, need at least ${1:-1}"
}

check_python() {  # verl at the pinned version, ray, vllm and rlreason importable from $PY
  command -v "$PY" >/dev/null 2>&1 || die "python '$PY' not found (set PYTHON=/path/to/venv/bin/python)"
  "$PY" - "$VERL_VERSION_PINNED" <<'PYEOF' || exit 1
import importlib.util, sys
want = sys.argv[1]
def need(mod, hint):
    if importlib.util.find_spec(mod) is None:
        sys.exit(f"error: python module '{mod}' is missing: {hint}")
need("verl", f"pip install 'verl[vllm]=={want}' (or: pip install -e '.[verl]')")
need("ray", "pip install 'ray[default]' (verl installs it)")
need("vllm", f"pip install 'verl[vllm]=={want}' (verl's vllm pin)")
need("rlreason", "pip install -e . in this checkout")
import verl
if verl.__version__ != want:
    sys.exit(f"error: verl {verl.__version__} is installed but rlreason's adapter is pinned to verl=={want}: "
             f"pip install 'verl[vllm]=={want}'")
PYEOF
}

check_ray_cli() { command -v ray >/dev/null 2>&1 || die "the 'ray' command is not on PATH (activate the verl venv; pip install 'ray[default]')"; }

# config_value CONFIG KEY [overrides...]: one value of the merged rlreason config (e.g. env.name)
config_value() {
  local cfg=$1 key=$2; shift 2
  "$PY" -c "import sys; from rlreason.config import load_config, to_dict
d = to_dict(load_config(sys.argv[1], sys.argv[3:]))
for p in sys.argv[2].split('.'): d = d[p]
print(d)" "$cfg" "$key" "$@"
}

# prepare_run CONFIG NODES GPUS [rlreason overrides...]: model cache, parquet, overrides -> sets OVERRIDES_FILE
prepare_run() {
  local cfg=$1 nodes=$2 gpus=$3; shift 3
  local run_dir name
  run_dir=$("$PY" -c "import sys; from rlreason.config import load_config; print(load_config(sys.argv[1], sys.argv[2:]).run_dir.resolve())" "$cfg" "$@") || die "could not load $cfg"
  name=$(config_value "$cfg" model.name "$@")
  mkdir -p "$run_dir/verl"
  if "$PY" -c "import sys; from rlreason.models import MODELS; sys.exit(0 if sys.argv[1] in MODELS else 1)" "$name"; then
    "$PY" -m rlreason.cli models prepare "$name" --dtype "$(config_value "$cfg" model.dtype "$@")" >/dev/null || die "rlreason models prepare $name failed"
  fi
  local tmpcfg="$run_dir/verl/config.yaml"
  "$PY" -m rlreason.cli config show "$cfg" "$@" > "$tmpcfg" || die "rlreason config show failed"
  "$PY" -m rlreason.cli data export --format verl --config "$tmpcfg" --split train --out "$run_dir/verl/train.parquet" || die "data export (train) failed"
  if ! "$PY" -m rlreason.cli data export --format verl --config "$tmpcfg" --split eval --out "$run_dir/verl/val.parquet" 2>/dev/null; then
    echo "note: the config has no held-out rows; validating on the train parquet" >&2
    cp "$run_dir/verl/train.parquet" "$run_dir/verl/val.parquet"
  fi
  OVERRIDES_FILE="$run_dir/verl/overrides.txt"
  "$PY" -m rlreason.cli verl-config "$tmpcfg" --nodes "$nodes" --gpus-per-node "$gpus" --out "$OVERRIDES_FILE" >/dev/null || die "rlreason verl-config failed"
  RUN_DIR=$run_dir
}

# start_search_if_needed CONFIG HOST [overrides...]: pay_per_search needs the retrieval server
SEARCH_PID=
start_search_if_needed() {
  local cfg=$1 host=$2; shift 2
  [ "$(config_value "$cfg" env.name "$@")" = pay_per_search ] || return 0
  local port=${SEARCH_PORT:-8000}
  echo "starting the retrieval server (rlreason serve-search) on $host:$port" >&2
  "$PY" -m rlreason.cli serve-search --host "$host" --port "$port" ${SEARCH_ARGS:-} > "${RUN_DIR:-.}/search_server.log" 2>&1 &
  SEARCH_PID=$!
  for _ in $(seq 1 120); do
    "$PY" -c "import httpx,sys; sys.exit(0 if httpx.get('http://$host:$port/health', timeout=1).status_code == 200 else 1)" 2>/dev/null && return 0
    kill -0 "$SEARCH_PID" 2>/dev/null || die "the retrieval server exited; see ${RUN_DIR:-.}/search_server.log"
    sleep 1
  done
  die "the retrieval server did not answer /health within 120 s"
}
stop_search() { [ -n "$SEARCH_PID" ] && kill "$SEARCH_PID" 2>/dev/null || true; }
