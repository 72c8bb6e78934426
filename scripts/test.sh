#!/usr/bin/env bash
# Set up, then run the test suite (fast tests + the real-model/real-engine tests marked slow).
# Extra arguments go to pytest (e.g. -m "not slow" for the quick set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# verl 0.9.1 pins transformers <5.11, so its adapter tests run in their own venv (tests/test_verl_bridge.py).
bash scripts/setup_verl_venv.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
