"""Training checkpoints as Hugging Face model directories, for use outside rlreason.

Every checkpoint the trainers write carries, beside `model.safetensors` (weights under the transformers
names) and the trainer state, the model's `config.json`, `generation_config.json` and tokenizer files,
so a full fine-tuning checkpoint is already a directory that `AutoModelForCausalLM.from_pretrained`,
`AutoTokenizer.from_pretrained` and vLLM load as is. A LoRA checkpoint keeps peft's layout (the frozen
`base_layer` weights and the `lora_A`/`lora_B` adapters, plus peft's `adapter_config.json`) so training
can resume on the adapters.

`rlreason export --checkpoint DIR --out DIR` writes a clean model directory from any checkpoint: LoRA
merged into the base weights, W' = W + (alpha / r) B A (LoRA, arXiv 2106.09685, eq. 3; alpha / sqrt(r)
with rsLoRA), tied weights stored once, the trainer state left behind, weights in the checkpoint's dtype
(fp32 master weights, lossless) or `--dtype bf16`. Checkpoints from before config files were written there
need `--model` (the run's `model.name`) for the config and tokenizer."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ExportError(ValueError):
    """Bad export input; the message is one line naming the path or option at fault."""


def write_hf_metadata(directory: Path, model: torch.nn.Module, tokenizer: Any) -> None:
    """Write what makes a checkpoint's weights a Hugging Face model directory: the config (architecture and
    the dtype of the saved weights), the generation config, the tokenizer, and peft's adapter config when
    LoRA layers are injected."""
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    config.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    for name, peft_config in (getattr(model, "peft_config", None) or {}).items():
        if name != "default":
            raise ExportError(f"LoRA adapter '{name}': rlreason checkpoints hold the 'default' adapter only")
        peft_config.save_pretrained(directory)


def lora_scale(adapter: dict[str, Any]) -> float:
    """alpha / r (alpha / sqrt(r) with rsLoRA), as peft scales the adapter's output."""
    r, alpha = adapter["r"], adapter["lora_alpha"]
    if adapter.get("use_dora") or adapter.get("rank_pattern") or adapter.get("alpha_pattern"):
        raise ExportError("adapter_config.json: DoRA and per-layer rank/alpha patterns are not supported by export")
    return alpha / r**0.5 if adapter.get("use_rslora") else alpha / r


def merge_lora(tensors: dict[str, torch.Tensor], scale: float,
               adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """peft layout -> plain names with W' = W + scale * B A, computed in float32 and stored in W's dtype.
    `x.base_layer.weight` [out, in], `x.lora_A.<name>.weight` [r, in], `x.lora_B.<name>.weight` [out, r]."""
    out: dict[str, torch.Tensor] = {}
    for key, t in tensors.items():
        if ".lora_" in key:
            continue
        if ".base_layer." not in key:
            out[key] = t
            continue
        name = key.replace(".base_layer.", ".")
        prefix = key[: key.index(".base_layer.")]
        a = tensors.get(f"{prefix}.lora_A.{adapter_name}.weight")
        b = tensors.get(f"{prefix}.lora_B.{adapter_name}.weight")
        if key.endswith(".weight") and a is not None and b is not None:
            t = (t.float() + scale * (b.float() @ a.float())).to(t.dtype)
        out[name] = t
    return out


def _source_dir(checkpoint: Path, model: str | None) -> str:
    if model is not None:
        from rlreason.models import resolve_model
        return resolve_model(model, dtype="fp32")
    if not (checkpoint / "config.json").exists():
        raise ExportError(f"{checkpoint}: no config.json in the checkpoint (written by older versions); pass "
                          f"--model with the run's model.name (e.g. --model smollm2-135m-instruct)")
    return str(checkpoint)


def run_checkpoint(run_dir: Path | str) -> Path:
    """The newest complete checkpoint of a run directory (`--run`)."""
    from rlreason.trainer.checkpoint import CheckpointError, latest_checkpoint
    root = Path(run_dir) / "checkpoints"
    if not Path(run_dir).is_dir():
        raise ExportError(f"--run {run_dir}: no such directory")
    try:
        path = latest_checkpoint(root)
    except CheckpointError as e:
        raise ExportError(f"--run {run_dir}: {e}") from None
    if path is None:
        raise ExportError(f"--run {run_dir}: no checkpoint in {root}")
    return path


def check_paths(checkpoint: Path, out: Path) -> None:
    if not checkpoint.is_dir():
        raise ExportError(f"--checkpoint {checkpoint}: no such directory")
    if not (checkpoint / "model.safetensors").is_file():
        raise ExportError(f"--checkpoint {checkpoint}: not an rlreason checkpoint (no model.safetensors); "
                          f"checkpoints live in <run_dir>/checkpoints/step_NNNNNN")
    if (checkpoint / "state.json").is_file() and "files" in _json_or_empty(checkpoint / "state.json"):
        from rlreason.trainer.checkpoint import check_checkpoint
        if (problem := check_checkpoint(checkpoint)) is not None:  # a torn or altered checkpoint
            raise ExportError(f"--checkpoint {checkpoint}: {problem}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty directory; choose a new path")


def export_checkpoint(checkpoint: Path | str, out: Path | str, *, model: str | None = None,
                      dtype: str | None = None) -> Path:
    """Write the Hugging Face model directory of `checkpoint` to `out` (which must not exist or be empty).
    `model`: where the config and tokenizer come from when the checkpoint lacks them; `dtype`: fp32 |
    bf16 | fp16, default the checkpoint's. Returns `out`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    checkpoint, out = Path(checkpoint), Path(out)
    check_paths(checkpoint, out)
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype}: allowed {', '.join(DTYPES)}")
    src = _source_dir(checkpoint, model)
    try:
        tensors = load_file(str(checkpoint / "model.safetensors"))
    except (SafetensorError, OSError) as e:
        raise ExportError(f"{checkpoint / 'model.safetensors'}: unreadable ({e})") from None
    if any(".lora_" in k for k in tensors):
        adapter_file = checkpoint / ADAPTER_CONFIG
        if not adapter_file.exists():
            raise ExportError(f"{checkpoint}: LoRA weights but no {ADAPTER_CONFIG} to give their scale alpha / r")
        tensors = merge_lora(tensors, lora_scale(json.loads(adapter_file.read_text())))
    try:
        config = AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as e:
        where = f"--model {model}" if model is not None else f"{checkpoint / 'config.json'}"
        raise ExportError(f"{where}: no usable model config ({str(e).splitlines()[0]})") from None
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(config)
    expected = hf_model.state_dict()
    wrong = [k for k, t in tensors.items() if k in expected and t.shape != expected[k].shape]
    unexpected = [k for k in tensors if k not in expected]
    missing = [k for k in expected if k not in tensors and not _tied(config, k)]
    if wrong or unexpected or missing:
        detail = (f"shape of {wrong[0]}" if wrong else f"unexpected {unexpected[0]}" if unexpected
                  else f"missing {missing[0]}")
        raise ExportError(f"{checkpoint / 'model.safetensors'}: does not match the {config.model_type} config "
                          f"of {src} ({detail}; {len(wrong) + len(unexpected) + len(missing)} mismatches)")
    target = DTYPES[dtype] if dtype else next(t.dtype for t in tensors.values() if t.is_floating_point())
    tensors = {k: t.to(target) if t.is_floating_point() else t for k, t in tensors.items()}
    hf_model.load_state_dict(tensors, strict=False, assign=True)
    hf_model.tie_weights()
    hf_model.config.dtype = target
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".export.tmp"
    hf_model.save_pretrained(tmp, safe_serialization=True)
    try:
        GenerationConfig.from_pretrained(src).save_pretrained(tmp)
    except OSError:  # a config without generation defaults: transformers' own are used
        pass
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    for f in tmp.iterdir():
        f.rename(out / f.name)
    shutil.rmtree(tmp)
    return out


def _json_or_empty(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _tied(config: Any, key: str) -> bool:
    return key == "lm_head.weight" and bool(getattr(config, "tie_word_embeddings", False))
