#!/usr/bin/env bash
# Set up, then run the test suite (fast tests + the real-model/real-engine tests marked slow).
# Extra arguments go to pytest (e.g. -m "not slow" for the quick set).
set -euo pipefail
cd "$(dirname "$0")/.."
# Two venvs (~5.6 GB), the converted model (~0.8 GB) and the tests' checkpoints (~3 GB in /tmp at peak):
# say so up front rather than fail with ENOSPC half-way through.
for d in . "${TMPDIR:-/tmp}"; do
  free_gb=$(df -Pk "$d" | awk 'NR==2 {print int($4 / 1048576)}')
  [ "$free_gb" -ge 10 ] || echo "test.sh: WARNING: only ${free_gb} GB free on $(df -P "$d" | awk 'NR==2 {print $6}')" \
    "(for $d); set-up and tests need ~10 GB" >&2
done
bash scripts/setup.sh
# verl 0.9.1 pins transformers <5.11, so its adapter tests run in their own venv (tests/test_verl_bridge.py).
bash scripts/setup_verl_venv.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
