"""Checkpoints that a kill, a full disk or a damaged file cannot turn into a lost or silently restarted run.

A checkpoint is a directory `step_NNNNNN/` holding
    model.safetensors   the weights
    trainer.pt          optimizer / scheduler / value-head state and the torch RNG: tensors and plain
                        containers only, loaded with `torch.load(weights_only=True)` (no pickled objects,
                        so a crafted file cannot run code on --resume)
    rng.json            the Python and NumPy RNG states
    state.json          the step, sampler / environment / reward state, and the sha256 of every other file
It is written to a temporary directory and renamed into place; `latest.json` is switched afterwards; both
renames are made durable with an fsync of the file and its directory. On resume the newest checkpoint whose
files all match their checksums is used; a damaged one is reported by file and skipped."""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from rlreason.models import sha256_file
from rlreason.registry import ConfigError

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"step_(\d+)$")


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used (damaged, unsafe, not this model's) or could not be written; the
    message names the file."""


def rng_state() -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensors for trainer.pt, JSON for rng.json)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(tensors: dict[str, Any], plain: dict[str, Any]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if tensors.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write, fsync, rename over `path`, fsync the directory: after a crash the file is the old or the new
    one, never a mix, and a completed write survives power loss."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=1, default=float))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(root: Path, step: int, *, model: torch.nn.Module, torch_state: dict[str, Any],
                    state: dict[str, Any], keep: int, tokenizer: Any = None) -> Path:
    """`torch_state`: optimizer/scheduler state dicts (tensors and plain containers); `state`: JSON-able
    (sampler, env, rewards). A failed write raises CheckpointError and leaves the earlier checkpoints as
    they were, with no temporary directory behind. With the `tokenizer`, config and tokenizer files go
    beside the weights: a Hugging Face model directory (rlreason/export.py)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp, old = root / f".{final.name}.tmp", root / f".{final.name}.old"
    for leftover in root.glob(".step_*.tmp"):  # from a run killed mid-write
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        tmp.mkdir()
        # Tied embeddings share storage; safetensors wants distinct tensors.
        tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / "model.safetensors"))
        rng_tensors, rng_plain = rng_state()
        torch.save({**torch_state, "rng": rng_tensors}, tmp / "trainer.pt")
        (tmp / "rng.json").write_text(json.dumps(rng_plain))
        if tokenizer is not None:
            from rlreason.export import write_hf_metadata
            write_hf_metadata(tmp, model, tokenizer)
        files = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        (tmp / "state.json").write_text(json.dumps({"step": step, **state, "files": files}, indent=1, default=float))
        for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        if final.exists():  # the same step again: keep the old copy until the new one is in place
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_json_atomic(root / "latest.json", {"step": step, "path": final.name})
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():  # put the old copy back, or drop it when the new one made it into place
            os.replace(old, final) if not final.exists() else shutil.rmtree(old, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise CheckpointError(f"no space left on {root}: the checkpoint of step {step} was not written "
                                  f"(earlier checkpoints are intact); free space and --resume") from e
        raise
    shutil.rmtree(old, ignore_errors=True)
    for stale in _step_dirs(root)[keep:] if keep > 0 else []:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _step_dirs(root: Path) -> list[Path]:
    """step_* directories, newest first."""
    found = [(int(m.group(1)), p) for p in root.glob("step_*") if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file is damaged") from e


_VERIFIED: dict[Path, tuple] = {}  # checkpoints whose checksums matched, with their files' (size, mtime)


def _signature(path: Path) -> tuple:
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir()))


def check_checkpoint(path: Path) -> str | None:
    """What is wrong with the checkpoint at `path` (naming the file), or None when every file is present
    and matches the sha256 recorded in its state.json. A checkpoint verified once in this process and not
    touched since is not hashed again (the run directory check and the restore both ask)."""
    if not path.is_dir():
        return f"{path} is missing"
    signature = _signature(path)
    if _VERIFIED.get(path) == signature:
        return None
    problem = _check(path)
    if problem is None:
        _VERIFIED[path] = signature
    return problem


def _check(path: Path) -> str | None:
    state_file = path / "state.json"
    if not state_file.exists():
        return f"{state_file} is missing"
    try:
        state = _read_json(state_file)
    except CheckpointError as e:
        return str(e)
    files = state.get("files") if isinstance(state, dict) else None
    if not isinstance(files, dict) or not files:
        return f"{state_file} records no checksums (a checkpoint of an older rlreason, which cannot be loaded safely)"
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            return f"{f} is missing"
        if sha256_file(f) != digest:
            return f"{f} does not match its sha256 in state.json (truncated, zero-filled or altered)"
    return None


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under `root` (the newest step_* directory whose files match their
    checksums; damaged ones are reported by file). latest.json is only a cross-check: a kill between the
    rename of a step directory and the switch of latest.json leaves a newer complete checkpoint, which is
    used. None when there is no checkpoint at all; CheckpointError when there are some but none is complete."""
    steps = _step_dirs(root)
    marker = root / "latest.json"
    if marker.exists():
        try:
            _read_json(marker)["path"]
        except (CheckpointError, KeyError, TypeError) as e:
            log.warning("%s is unreadable (%s); looking for the newest complete checkpoint on disk", marker, e)
    elif steps:
        log.warning("%s is missing; looking for the newest complete checkpoint on disk", marker)
    problems = []
    for path in steps:
        problem = check_checkpoint(path)
        if problem is None:
            if problems:
                log.warning("resuming from %s, the newest complete checkpoint", path)
            return path
        log.warning("checkpoint %s is not usable: %s", path, problem)
        problems.append(problem)
    if steps:
        raise CheckpointError(f"no complete checkpoint under {root}: {'; '.join(problems)}")
    return None


def load_weights(path: Path, model: torch.nn.Module) -> None:
    """Load `path/model.safetensors` into `model`, refusing tensors that do not match it: a checkpoint of
    another model (or another layout, e.g. LoRA) must never quietly leave the base weights in place."""
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f} does not exist")
    try:
        tensors = load_file(str(f))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{f} is not a readable safetensors file ({e})") from e
    expected = model.state_dict()
    tied = bool(getattr(getattr(model, "config", None), "tie_word_embeddings", False))
    missing = [k for k in expected if k not in tensors and not (tied and "lm_head" in k)]
    unexpected = [k for k in tensors if k not in expected]
    reshaped = [k for k in tensors if k in expected and tensors[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        def some(keys: list[str]) -> str:
            return f"{len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
        raise CheckpointError(f"{f} does not match the model: missing {some(missing)}, unexpected "
                              f"{some(unexpected)}, other shape {some(reshaped)}")
    model.load_state_dict(tensors, strict=False)


def load_trainer_state(path: Path) -> dict[str, Any]:
    f = path / "trainer.pt"
    try:
        return torch.load(f, weights_only=True)
    except pickle.UnpicklingError as e:
        found = [ln.strip().split(". ")[0] for ln in str(e).splitlines() if "Unsupported" in ln][:1]
        raise CheckpointError(f"{f}: refusing to load: it holds objects other than tensors and plain containers, "
                              f"which could run code{' (' + found[0][:160] + ')' if found else ''}; rlreason "
                              f"never writes such a file") from e


def load_checkpoint(path: Path, *, model: torch.nn.Module, verify: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """Loads the weights into `model`, restores RNG states; returns (JSON state, torch state). `verify`
    re-checks the checksums (latest_checkpoint has already done so for the path it returns)."""
    if verify and (problem := check_checkpoint(path)) is not None:
        raise CheckpointError(f"checkpoint {path} is not usable: {problem}")
    state = _read_json(path / "state.json")
    load_weights(path, model)
    blob = load_trainer_state(path)
    set_rng_state(blob.pop("rng"), _read_json(path / "rng.json"))
    state.pop("files", None)
    return state, blob
