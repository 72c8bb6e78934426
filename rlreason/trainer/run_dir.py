"""The run directory, checked before anything slow loads: where it is (never outside the runs folder by
accident), that it can be written, that a new run does not write over an old one, and which config a run
continues.

A run stores its resolved config in `<run_dir>/config.yaml`. `--resume` continues that config, not the
YAML file's current values: overrides given with `--resume` change it explicitly and are printed as a diff
(extending `trainer.steps` is the common case); values that cannot change mid-run are refused."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from rlreason.config import RunConfig, deep_merge, from_dict, parse_overrides, to_dict
from rlreason.registry import ConfigError
from rlreason.trainer.checkpoint import latest_checkpoint

CONFIG_FILE = "config.yaml"
# What a run writes into its directory; --overwrite removes these and nothing else.
RUN_OUTPUTS = ("checkpoints", "metrics.jsonl", "samples.jsonl", "summary.txt", "reward_curve.png",
               "precision_refusal.png", CONFIG_FILE, "wandb_id.txt", "wandb")
# Values a checkpoint is tied to: the weights' shapes, the prompts' order, the group structure.
FIXED_MID_RUN = ("algorithm", "seed", "model.name", "env.name", "data.train", "data.eval", "data.eval_size",
                 "trainer.samples_per_prompt", "algo.advantage", "ei.lora_rank", "ei.lora_alpha", "name",
                 "output_dir")


def check_location(cfg: RunConfig) -> Path:
    """`name` and a relative `output_dir` may not climb out of the runs folder through `..` (a typo or a
    pasted name would write a run anywhere); an absolute `output_dir` is taken as meant."""
    out = cfg.output_dir
    if "${name}" in out:
        name = Path(cfg.name)
        if name.is_absolute() or ".." in name.parts:
            raise ConfigError(f"name: '{cfg.name}' would place the run outside "
                              f"{out.split('${name}')[0] or 'the runs folder'}; use a plain name, or set "
                              f"output_dir to an absolute path")
    if not Path(out).is_absolute() and ".." in Path(out).parts:
        raise ConfigError(f"output_dir: '{out}' climbs out of the working directory through '..'; give an "
                          f"absolute path to place a run there")
    return cfg.run_dir


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir: cannot create the run directory {run_dir}: {e.strerror or e}") from e
    try:
        with tempfile.NamedTemporaryFile(dir=run_dir, prefix=".write_test") as f:
            f.write(b"x")
            f.flush()
    except OSError as e:
        raise ConfigError(f"output_dir: the run directory {run_dir} is not writable: {e.strerror or e}") from e


def holds_run(run_dir: Path) -> bool:
    ck = run_dir / "checkpoints"
    has_ckpt = ck.is_dir() and any(p.name.startswith("step_") or p.name == "latest.json" for p in ck.iterdir())
    metrics = run_dir / "metrics.jsonl"
    return has_ckpt or (metrics.exists() and metrics.stat().st_size > 0)


def prepare_run_dir(cfg: RunConfig, *, resume: bool, overwrite: bool) -> None:
    """Create and test the run directory and settle the run's config; call before any model loads."""
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: give one")
    run_dir = check_location(cfg)
    _check_writable(run_dir)
    stored = run_dir / CONFIG_FILE
    if resume:
        if stored.exists():
            _apply_changes(load_stored(stored), to_dict(cfg), stored)
        latest_checkpoint(run_dir / "checkpoints")  # a run with only damaged checkpoints fails here, not after loading
    elif holds_run(run_dir):
        if not overwrite:
            raise ConfigError(f"output_dir: {run_dir} already holds a run (checkpoints or metrics); "
                              f"continue it with --resume, or start over with --overwrite (deletes it)")
        for name in RUN_OUTPUTS:
            p = run_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    _write_config(stored, to_dict(cfg))


def load_stored(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected the run's config (a mapping)")
    return raw


def config_for_resume(cfg: RunConfig, overrides: list[str], source: str | None = None) -> RunConfig:
    """The config `--resume` continues: the run's stored config with the command line's `overrides` on
    top. `cfg` (the YAML plus overrides) only locates the run; values where the YAML has since changed
    are named and not taken."""
    stored = cfg.run_dir / CONFIG_FILE
    if not stored.exists():
        return cfg
    raw = deep_merge(load_stored(stored), parse_overrides(overrides))
    raw["name"], raw["output_dir"] = cfg.name, cfg.output_dir  # the directory that was found
    try:
        resumed = from_dict(RunConfig, raw, "")
    except ConfigError as e:  # the command line's overrides were checked by load_config already
        raise ConfigError(f"{stored}: {e}") from e
    ignored = _diff(to_dict(resumed), to_dict(cfg))
    if ignored:
        print(f"--resume: {source or 'the config'} differs from the run's {stored} in {', '.join(ignored)}; "
              f"the run's values continue (give key=value after --resume to change one)", file=sys.stderr)
    return resumed


def _apply_changes(old: dict[str, Any], new: dict[str, Any], stored: Path) -> None:
    changes = _diff(old, new)
    fixed = [k for k in changes if any(k == f or k.startswith(f + ".") for f in FIXED_MID_RUN)]
    if fixed:
        k = fixed[0]
        raise ConfigError(f"{k}: cannot change mid-run ({_get(old, k)!r} in {stored}, {_get(new, k)!r} now); "
                          f"start a new run (another output_dir) instead")
    if changes:
        print(f"--resume: changes to the run's config ({stored}):", file=sys.stderr)
        for k in changes:
            print(f"  {k}: {_get(old, k)} -> {_get(new, k)}", file=sys.stderr)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flat(old), _flat(new)
    return [k for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]


def _get(d: dict[str, Any], dotted: str) -> Any:
    return _flat(d).get(dotted, "<unset>")


def _write_config(path: Path, cfg: dict[str, Any]) -> None:
    tmp = path.with_suffix(".yaml.tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
