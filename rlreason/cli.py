"""`rlreason train|eval|models|data|config` — the command line.

    rlreason train configs/quickstart.yaml trainer.lr=1e-6 trainer.steps=5
    rlreason train configs/quickstart.yaml --resume
    rlreason eval configs/quickstart.yaml --checkpoint runs/quickstart/checkpoints/step_000040
    rlreason config keys            # every config key with its default and help
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import logging
import os
import re
import sys
from pathlib import Path

PRELOAD_LIBS = ("/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")


def _maybe_preload() -> None:
    """tcmalloc + Intel OpenMP cut a CPU training step by ~40% (CPU_STACK.md). They must be loaded
    before the interpreter starts, so the CLI re-executes itself once with LD_PRELOAD set.
    RLREASON_NO_PRELOAD=1 turns this off."""
    if os.environ.get("RLREASON_NO_PRELOAD") or os.environ.get("_RLREASON_PRELOADED"):
        return
    libs = [p for p in PRELOAD_LIBS if os.path.exists(p)][:1]
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.exists():
        libs.append(str(iomp))
    if not libs:
        return
    env = dict(os.environ, _RLREASON_PRELOADED="1")
    env["LD_PRELOAD"] = ":".join([*libs, *filter(None, [os.environ.get("LD_PRELOAD")])])
    os.execve(sys.executable, [sys.executable, "-m", "rlreason.cli", *sys.argv[1:]], env)


def _config_help() -> str:
    from rlreason import config as C
    lines = []

    def walk(cls: type, prefix: str) -> None:
        src = inspect.getsource(cls)
        comments = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", src, re.M))
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
                walk(getattr(C, f.type) if isinstance(f.type, str) else f.type, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            lines.append(f"  {prefix}{f.name} = {json.dumps(default)}" + (f"    # {comments[f.name]}" if f.name in comments else ""))
    walk(C.RunConfig, "")
    return "\n".join(lines)


def cmd_train(a: argparse.Namespace) -> int:
    from rlreason.config import load_config
    from rlreason.trainer.grpo import train
    cfg = load_config(a.config, a.overrides)
    if cfg.algorithm == "expert_iteration":
        from rlreason.trainer.expert_iteration import train as train_ei
        summary = train_ei(cfg, resume=a.resume)
    else:
        summary = train(cfg, resume=a.resume)
    print(summary)
    print(f"run directory: {cfg.run_dir}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from rlreason.config import load_config
    from rlreason.eval_cli import run_eval
    cfg = load_config(a.config, a.overrides)
    print(json.dumps(run_eval(cfg, checkpoint=a.checkpoint, split=a.split), indent=1))
    return 0


def cmd_models(a: argparse.Namespace) -> int:
    from rlreason import models
    if a.action == "list":
        for m in models.list_models():
            print(f"{m['name']:28s} {m.get('description', '')}")
    else:
        if not a.name:
            raise SystemExit("rlreason models prepare NAME [--dtype bf16|fp32]")
        print(models.prepare(a.name, dtype=a.dtype))
    return 0


def cmd_data(a: argparse.Namespace) -> int:
    from rlreason.config import parse_overrides
    from rlreason.data import build_dataset
    spec = parse_overrides(a.spec)
    ds = build_dataset(spec, key="data")
    if a.out:
        ds.to_json(a.out)
        print(f"wrote {len(ds)} rows to {a.out}")
    for row in ds.select(range(min(a.show, len(ds)))):
        print(json.dumps(row)[:400])
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    if a.action == "keys":
        print(_config_help())
        return 0
    from rlreason.config import load_config, to_dict
    import yaml
    print(yaml.safe_dump(to_dict(load_config(a.config, a.overrides)), sort_keys=False))
    return 0


def _split_config(a: argparse.Namespace) -> None:
    """`rlreason train trainer.steps=2` (no YAML): the first positional is an override, not a file."""
    if getattr(a, "config", None) and "=" in a.config:
        a.overrides = [a.config, *a.overrides]
        a.config = None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlreason", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a policy (GRPO/PPO or expert iteration)",
                       description="Train from a YAML config plus dotted overrides (key=value). "
                                   "All keys: `rlreason config keys`.")
    t.add_argument("config", nargs="?", help="YAML config (e.g. configs/quickstart.yaml)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-6")
    t.add_argument("--resume", action="store_true", help="continue exactly from the run's last checkpoint")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a model/checkpoint on the held-out split (pass@k, avg@k)")
    e.add_argument("config", nargs="?")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", help="a checkpoint directory (default: the config's model)")
    e.add_argument("--split", choices=["eval", "train"], default="eval")
    e.set_defaults(fn=cmd_eval)

    m = sub.add_parser("models", help="list or prepare the offline models")
    m.add_argument("action", choices=["list", "prepare"])
    m.add_argument("name", nargs="?")
    m.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    m.set_defaults(fn=cmd_models)

    d = sub.add_parser("data", help="build a dataset from a spec and preview or save it",
                       description="e.g. rlreason data source=reasoning_gym task=basic_arithmetic size=10")
    d.add_argument("spec", nargs="+", help="builder spec as key=value")
    d.add_argument("--out", help="write the rows as JSONL")
    d.add_argument("--show", type=int, default=3)
    d.set_defaults(fn=cmd_data)

    c = sub.add_parser("config", help="show the merged config or list every key")
    c.add_argument("action", choices=["show", "keys"])
    c.add_argument("config", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _maybe_preload()
    args = build_parser().parse_args(argv)
    _split_config(args)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rlreason.registry import ConfigError
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
