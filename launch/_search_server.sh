# Shared by the launchers that train with the search tool (sourced, not run): start the retrieval server in
# the background, wait until it answers /health, and stop it when the launcher exits (errors and Ctrl-C
# included).
#
#   serve_search BASE_URL LOG COMMAND...
#   e.g. serve_search http://127.0.0.1:8765 run/serve-search.log rlreason serve-search --port 8765

serve_search() {
  local base=$1 log=$2 _
  shift 2
  if curl -sf "$base/health" >/dev/null 2>&1; then
    echo "launch: something already answers on $base; set SEARCH_PORT to a free port" >&2
    exit 1
  fi
  "$@" >"$log" 2>&1 &
  SEARCH_SERVER_PID=$!
  trap stop_search_server EXIT INT TERM
  # The first start builds the BM25 index (a few seconds); later starts load it from the cache.
  for _ in $(seq 1 300); do
    curl -sf "$base/health" >/dev/null 2>&1 && return 0
    kill -0 "$SEARCH_SERVER_PID" 2>/dev/null || { echo "launch: serve-search exited; its log:" >&2; cat "$log" >&2; exit 1; }
    sleep 1
  done
  curl -sf "$base/health" >/dev/null 2>&1 || { echo "launch: serve-search not healthy after 300 s" >&2; exit 1; }
}

stop_search_server() {
  kill "$SEARCH_SERVER_PID" 2>/dev/null || true
  wait "$SEARCH_SERVER_PID" 2>/dev/null || true
}
