"""`rlreason train|eval|models|data|config` — the command line.

    rlreason train configs/quickstart.yaml trainer.lr=1e-6 trainer.steps=5
    rlreason train configs/quickstart.yaml --resume
    rlreason eval configs/quickstart.yaml --checkpoint latest   # or a checkpoint directory
    rlreason eval --chunked configs/markovian_cpu.yaml --budgets 1,2,3  # LongCoT vs Delethink per budget
    rlreason config keys            # every config key with its default and help
    rlreason verl-config configs/quickstart.yaml --nodes 2 --gpus-per-node 8 --out runs/quickstart/verl/overrides.txt
    rlreason data export --format verl --config configs/quickstart.yaml --out runs/quickstart/verl/train.parquet
    rlreason serve-search --port 8000   # retrieval server for pay_per_search (Search-R1 protocol)
    rlreason export --run runs/quickstart --out models/quickstart   # latest checkpoint -> Hugging Face dir
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


def _maybe_preload() -> None:
    from rlreason.cpu import reexec_preloaded  # light: torch is imported only on a GPU build
    reexec_preloaded(["-m", "rlreason.cli", *sys.argv[1:]])


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
    from rlreason.trainer.loop import train
    cfg = load_config(a.config, a.overrides)
    if a.resume:  # the run's stored config, with this command line's overrides on top
        from rlreason.trainer.run_dir import config_for_resume
        cfg = config_for_resume(cfg, a.overrides, source=a.config)
    summary = train(cfg, resume=a.resume, overwrite=a.overwrite)
    print(summary)
    print(f"run directory: {cfg.run_dir}")
    return 0


def cmd_eval(a: argparse.Namespace) -> int:
    from rlreason.config import load_config
    from rlreason.eval_cli import CheckpointNotFound, resolve_checkpoint, run_eval
    cfg = load_config(a.config, a.overrides)
    try:
        a.checkpoint = resolve_checkpoint(cfg, a.checkpoint)
    except CheckpointNotFound as e:
        print(f"rlreason eval: {e}", file=sys.stderr)
        return 2
    if a.abstention:  # MASH's read-off with the search tool removed
        from rlreason.search.abstention import run_abstention_eval
        _emit(run_abstention_eval(cfg, checkpoint=a.checkpoint, split=a.split), a.json)
        return 0
    if a.chunked:  # zero-shot Markovian evaluation (rlreason/markovian_eval.py)
        from rlreason.markovian_eval import format_table, run_chunked_eval
        res = run_chunked_eval(cfg, a.budgets, vary=a.vary, checkpoint=a.checkpoint, split=a.split)
        out = cfg.run_dir / "chunked_eval.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(format_table(res["rows"]))
        print(f"{res['problems']} problems x k={res['k']}, temperature {res['temperature']}; json: {out}")
        return 0
    _emit(run_eval(cfg, checkpoint=a.checkpoint, split=a.split), a.json)
    return 0


def _emit(result: dict, path: str | None) -> None:
    """Print the result; with --json also write it to a file (engine logs share stdout, so a launcher
    that wants clean JSON should use --json rather than redirecting stdout)."""
    text = json.dumps(result, indent=1)
    print(text)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text + "\n")


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
    if a.spec and a.spec[0] == "export":  # `rlreason data export [SPEC...] --format verl --out x.parquet`
        return _cmd_data_export(a)
    spec = parse_overrides(a.spec)
    ds = build_dataset(spec, key="data")
    if a.out:
        ds.to_json(a.out)
        print(f"wrote {len(ds)} rows to {a.out}")
    shown = min(a.show, len(ds))
    for row in ds.select(range(shown)):
        print(json.dumps(row)[:400])
    print(f"showing {shown} of {len(ds)} rows" + (" (--show N for more)" if shown < len(ds) else ""))
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    if a.action == "keys":
        print(_config_help())
        return 0
    from rlreason.config import load_config, to_dict
    import yaml
    print(yaml.safe_dump(to_dict(load_config(a.config, a.overrides)), sort_keys=False))
    return 0


def _cmd_data_export(a: argparse.Namespace) -> int:
    """Build a dataset and write it in another format: `--format verl` writes verl's parquet for the
    environment of `--config` (its prompt rendering and agent loop name)."""
    from rlreason.config import load_config, parse_overrides
    from rlreason.data import build_dataset
    from rlreason.verl.export import export_verl_parquet
    if a.format != "verl" or not a.out:
        raise SystemExit("rlreason data export [SPEC...] --format verl --out FILE.parquet [--config CFG] [--split train|eval]")
    cfg = load_config(a.config) if a.config else None
    if a.spec[1:]:
        ds = build_dataset(parse_overrides(a.spec[1:]), key="data")
    elif cfg is not None:  # the config's own train / eval split, made exactly as the local trainer makes it
        from rlreason.data import train_test_split
        ds, held_out = build_dataset(cfg.data.train, key="data.train"), None
        if cfg.data.eval is not None:
            held_out = build_dataset(cfg.data.eval, key="data.eval")
        elif cfg.data.eval_size > 0:
            ds, held_out = train_test_split(ds, test_size=cfg.data.eval_size, seed=cfg.seed)
        if a.split == "eval":
            if held_out is None:
                raise SystemExit("rlreason data export --split eval: the config has no eval data (data.eval_size 0)")
            ds = held_out
    else:
        raise SystemExit("rlreason data export: give a builder spec (key=value ...) or --config")
    env_name, env_args = (cfg.env.name, cfg.env.args) if cfg else ("single_turn", {})
    path = export_verl_parquet(ds, a.out, env_name=env_name, env_args=env_args, split=a.split)
    print(f"wrote {len(ds)} verl rows to {path}")
    return 0


def cmd_verl_config(a: argparse.Namespace) -> int:
    """Print (and with --out write) the `python -m verl.trainer.main_ppo` overrides for a config."""
    from pathlib import Path as _P

    from rlreason.config import load_config
    from rlreason.verl.config_map import verl_overrides, write_agent_loop_yaml
    cfg = load_config(a.config, a.overrides)
    # The workers import what this process imported: `imports:` and `--import` (rlreason.verl.hooks).
    cfg = dataclasses.replace(cfg, imports=[*cfg.imports, *(m for m in a.imports if m not in cfg.imports)])
    run_dir = cfg.run_dir.resolve()  # absolute: Ray workers on other nodes do not share our cwd
    agent_yaml = (_P(a.out).resolve().parent if a.out else run_dir / "verl") / "agent_loops.yaml"
    overrides = verl_overrides(
        cfg, nodes=a.nodes, gpus_per_node=a.gpus_per_node, rollout_tp=a.rollout_tp, run_dir=str(run_dir),
        train_files=str(_P(a.train_files).resolve()) if a.train_files else None,
        val_files=str(_P(a.val_files).resolve()) if a.val_files else None,
        agent_loop_config=str(agent_yaml))
    if a.out:
        write_agent_loop_yaml(cfg, agent_yaml)
        _P(a.out).write_text("\n".join(overrides) + "\n")
        print(f"wrote {len(overrides)} overrides to {a.out} and the agent loops to {agent_yaml}", file=sys.stderr)
    else:
        print(f"# agent loops: run with --out to write {agent_yaml}", file=sys.stderr)
    print("\n".join(overrides))
    return 0


def cmd_export(a: argparse.Namespace) -> int:
    """A checkpoint as a Hugging Face model directory (LoRA merged) that transformers and vLLM load."""
    from rlreason.export import ExportError, export_checkpoint, run_checkpoint
    try:
        checkpoint = run_checkpoint(a.run) if a.run else a.checkpoint
        out = export_checkpoint(checkpoint, a.out, model=a.model, dtype=a.dtype)
    except ExportError as e:
        print(f"rlreason export: {e}", file=sys.stderr)
        return 2
    print(f"wrote a Hugging Face model directory to {out}")
    return 0


def _split_config(a: argparse.Namespace) -> None:
    """`rlreason train trainer.steps=2` (no YAML): the first positional is an override, not a file."""
    if getattr(a, "config", None) and "=" in a.config:
        a.overrides = [a.config, *a.overrides]
        a.config = None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Flags anywhere: `rlreason train cfg.yaml --resume trainer.steps=40` (argparse stops collecting
    positionals at the first flag, so later key=value overrides come back unrecognised: they are overrides)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if getattr(args, "config", None) is None and "=" not in extra[0]:
            args.config, extra = extra[0], extra[1:]
        args.overrides = [*args.overrides, *extra]
    _split_config(args)
    return args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rlreason", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback of a config/data error too (or set RLREASON_DEBUG=1)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module before anything is looked up (your @register_environment / "
                        "@register_reward); repeatable, like the config key `imports:`")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a policy (GRPO/PPO or expert iteration)",
                       description="Train from a YAML config plus dotted overrides (key=value). "
                                   "All keys: `rlreason config keys`.")
    t.add_argument("config", nargs="?", help="YAML config (e.g. configs/quickstart.yaml)")
    t.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.lr=1e-6")
    t.add_argument("--resume", action="store_true",
                   help="continue exactly from the run's newest complete checkpoint, with the run's stored config "
                        "(overrides given with --resume change it and are printed)")
    t.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that already holds a run (deletes its checkpoints and logs)")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a model/checkpoint on the held-out split (pass@k, avg@k)")
    e.add_argument("config", nargs="?")
    e.add_argument("overrides", nargs="*")
    e.add_argument("--checkpoint", help="a checkpoint directory, or `latest` for the run's newest "
                                         "(default: the config's model)")
    e.add_argument("--split", choices=["eval", "train"], default="eval")
    e.add_argument("--json", help="also write the result as JSON to this file")
    e.add_argument("--abstention", action="store_true",
                   help="pay_per_search configs: accuracy/searches with the tool, then abstention with it removed")
    # `rlreason eval --chunked CONFIG --budgets 1,2,4`: LongCoT vs Delethink per budget
    e.add_argument("--chunked", action="store_true",
                   help="the same problems as plain LongCoT and as Markovian chunked inference at each budget")
    e.add_argument("--budgets", type=lambda v: [int(x) for x in v.split(",")],
                   help="with --chunked: comma-separated iteration caps I (default 1..I of the config) or, "
                        "with --vary chunk_size, chunk sizes C (m = C/2), e.g. 1,2,4")
    e.add_argument("--vary", choices=["max_chunks", "chunk_size"], default="max_chunks",
                   help="with --chunked: what --budgets lists")
    e.set_defaults(fn=cmd_eval)

    m = sub.add_parser("models", help="list or prepare the offline models")
    m.add_argument("action", choices=["list", "prepare"])
    m.add_argument("name", nargs="?")
    m.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    m.set_defaults(fn=cmd_models)

    d = sub.add_parser("data", help="build a dataset from a spec and preview or save it",
                       description="e.g. rlreason data source=reasoning_gym task=basic_arithmetic size=10 "
                                   "(seed defaults to 0)")
    d.add_argument("spec", nargs="+", help="builder spec as key=value")
    d.add_argument("--out", help="write the rows as JSONL")
    d.add_argument("--show", type=int, default=3, help="print the first N rows (default 3)")
    d.add_argument("--format", choices=["jsonl", "verl"], default="jsonl",
                   help="with `export`: verl = verl's parquet (prompt, data_source, reward_model, extra_info, agent_name)")
    d.add_argument("--config", help="with `export`: run config whose env renders prompts / names the agent loop")
    d.add_argument("--split", choices=["train", "eval"], default="train",
                   help="with `export --config`: the config's train rows or its held-out eval rows")
    d.set_defaults(fn=cmd_data)

    v = sub.add_parser("verl-config", help="print/write the verl main_ppo overrides for a config (multi-GPU)",
                       description="rlreason verl-config CONFIG [overrides] [--nodes N --gpus-per-node G] "
                                   "[--out FILE]. See docs/verl.md.")
    v.add_argument("config", nargs="?")
    v.add_argument("overrides", nargs="*")
    v.add_argument("--nodes", type=int, default=1)
    v.add_argument("--gpus-per-node", type=int, default=8)
    v.add_argument("--rollout-tp", type=int, default=1, help="vLLM tensor parallel size per replica")
    v.add_argument("--train-files", help="verl parquet (default <run_dir>/verl/train.parquet)")
    v.add_argument("--val-files", help="verl parquet (default <run_dir>/verl/val.parquet)")
    v.add_argument("--out", help="write the overrides here (one per line) and agent_loops.yaml beside it")
    v.set_defaults(fn=cmd_verl_config)

    # The retrieval server; its arguments live with it (rlreason/search/server.py).
    from rlreason.search import server as search_server
    s = sub.add_parser("serve-search", help="serve a retrieval index over HTTP (Search-R1 /retrieve protocol)")
    search_server.add_arguments(s)
    s.set_defaults(fn=search_server.cli)

    x = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory (LoRA merged)",
                       description="config, tokenizer and safetensors that AutoModelForCausalLM, AutoTokenizer "
                                   "and vLLM load directly")
    which = x.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="a checkpoint directory (<run_dir>/checkpoints/step_N)")
    which.add_argument("--run", help="a run directory: export its newest complete checkpoint")
    x.add_argument("--out", required=True, help="the model directory to write (new or empty)")
    x.add_argument("--model", help="config and tokenizer from this model (the run's model.name) when the "
                                   "checkpoint has no config.json")
    x.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], help="weight dtype (default: the checkpoint's)")
    x.set_defaults(fn=cmd_export)

    c = sub.add_parser("config", help="show the merged config or list every key")
    c.add_argument("action", choices=["show", "keys"])
    c.add_argument("config", nargs="?")
    c.add_argument("overrides", nargs="*")
    c.set_defaults(fn=cmd_config)

    # Refusal-cliff probes: `rlreason probe data|traces|capture|train|score|heads|select` and
    # `rlreason repair`; the commands live in rlreason/probes/commands.py.
    from rlreason.probes.commands import add_parsers as add_probe_parsers
    add_probe_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        _maybe_preload()
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rlreason.registry import UserError, import_modules
    try:
        import_modules(args.imports, "--import")
        return args.fn(args)
    except UserError as e:
        return _user_error(e, debug=args.debug)


def _user_error(e: Exception, *, debug: bool) -> int:
    """Bad input is one line and exit code 2; RLREASON_DEBUG=1 or --debug prints the traceback as well."""
    if debug or os.environ.get("RLREASON_DEBUG", "") not in ("", "0"):
        import traceback
        traceback.print_exception(e, file=sys.stderr)
    kind = "data" if type(e).__name__ == "DataError" else "config"
    message = " ".join(str(e).split())  # one line, whatever the message held
    print(f"{kind} error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
