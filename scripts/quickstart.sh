#!/usr/bin/env bash
# The main job on a fresh machine: set up, then a short real GRPO run of SmolLM2-135M-Instruct with
# vLLM on CPU (about 10-15 minutes on 2 cores). Extra arguments are config overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec rlreason train configs/quickstart.yaml "$@"
