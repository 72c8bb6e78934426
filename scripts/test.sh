#!/usr/bin/env bash
# Set up, then run the test suite (fast tests + the real-model/real-engine tests marked slow).
# Extra arguments go to pytest (e.g. -m "not slow" for the quick set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
