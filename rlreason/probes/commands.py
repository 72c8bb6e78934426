"""`rlreason probe data|traces|capture|train|score|heads|select` and `rlreason repair`.

Each step reads the previous step's files and writes its own (default folder runs/probes/):

    rlreason probe data    --out runs/probes/data.jsonl                       prompts + splits
    rlreason probe traces  --data runs/probes/data.jsonl                      -> traces.jsonl (vLLM)
    rlreason probe capture --traces runs/probes/traces.jsonl --layers all     -> features.safetensors
    rlreason probe train   --features runs/probes/features.safetensors        -> probe/ + per_layer.json
    rlreason probe score   --traces ... --probe runs/probes/probe             -> scores.jsonl, cliff.png
    rlreason probe heads   --traces ... --probe ... --data ...                -> heads.json (+ ablation)
    rlreason probe select  --scores runs/probes/scores.jsonl --by cliff       -> sft_cliff.jsonl
    rlreason repair        --scores runs/probes/scores.jsonl --traces runs/probes/traces.jsonl --seeds 0 1 2
                                                                              -> repair/repair.{json,md}

Heavy steps (traces, capture, score, heads, repair) should run one at a time on a shared CPU box.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from rlreason.probes.config import ProbeConfig, RepairConfig, field_help
from rlreason.registry import ConfigError

log = logging.getLogger(__name__)
OUT = Path("runs/probes")


# --- shared helpers -------------------------------------------------------------------------------------

def load_model(name: str, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from rlreason.models import resolve_model, torch_dtype
    path = resolve_model(name, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).eval()
    return model, AutoTokenizer.from_pretrained(path)


def load_model_tokenizer(name: str, dtype: str) -> Any:
    from transformers import AutoTokenizer
    from rlreason.models import resolve_model
    return AutoTokenizer.from_pretrained(resolve_model(name, dtype=dtype))


def make_trace_engine(kind: str, model_name: str, model: Any, tokenizer: Any, *, dtype: str,
                      temperature: float, max_model_len: int, seed: int) -> Any:
    from rlreason.models import resolve_model
    from rlreason.rollout import SamplingConfig, make_engine
    return make_engine(kind, model_dir=resolve_model(model_name, dtype=dtype), model=model, tokenizer=tokenizer,
                       sampling=SamplingConfig(temperature=temperature), dtype=dtype,
                       max_model_len=max_model_len, kv_cache_gb=1.0, gpu_memory_utilization=0.3,
                       enable_prefix_caching=True, seed=seed)


def _json_safe(obj: Any) -> Any:
    """NaN/inf (an empty group's mean) become null: bare NaN is not JSON and breaks other readers."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _write_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(_json_safe(obj), indent=1, allow_nan=False))
    path.with_suffix(".tmp").replace(path)


def _rate(rows: list[dict], key: str = "refused") -> str:
    return f"{sum(r[key] for r in rows)}/{len(rows)}" if rows else "0/0"


def _split_rows(rows: list[dict], split: str) -> tuple[list[dict], list[dict]]:
    rs = [r for r in rows if r["split"] == split]
    return [r for r in rs if r["harmful"]], [r for r in rs if not r["harmful"]]


# --- probe data / traces --------------------------------------------------------------------------------

def cmd_data(a: argparse.Namespace) -> int:
    from collections import Counter
    from rlreason.probes.data import build_prompt_set, prompt_set_digest, write_jsonl
    rows = build_prompt_set(n_harmful=a.n_harmful, n_harmless=a.n_harmless, harmful_sources=a.harmful.split(","),
                            harmless_sources=a.harmless.split(","), seed=a.seed)
    write_jsonl(rows, a.out)
    for (h, split, src), n in sorted(Counter((r["harmful"], r["split"], r["source"]) for r in rows).items()):
        print(f"{'harmful ' if h else 'harmless'} {split:10s} {src:12s} {n}")
    print(f"wrote {len(rows)} prompts (set {prompt_set_digest(rows)}) to {a.out}")
    return 0


def cmd_traces(a: argparse.Namespace) -> int:
    from rlreason.probes.data import read_jsonl, write_jsonl
    from rlreason.probes.traces import generate_plain, generate_traces
    rows = read_jsonl(a.data)
    if a.splits:
        rows = [r for r in rows if r["split"] in a.splits.split(",")]
    model, tok = load_model(a.model, a.dtype) if a.engine == "hf" else (None, load_model_tokenizer(a.model, a.dtype))
    engine = make_trace_engine(a.engine, a.model, model, tok, dtype=a.dtype, temperature=a.temperature,
                               max_model_len=a.max_model_len, seed=a.seed)
    t0 = time.monotonic()
    if a.template == "plain":
        traces = generate_plain(engine, rows, max_answer_tokens=a.max_answer, seed=a.seed, judge=a.judge)
    else:
        traces = generate_traces(engine, rows, max_think_tokens=a.max_think, max_answer_tokens=a.max_answer,
                                 seed=a.seed, judge=a.judge)
    dt = time.monotonic() - t0
    for t in traces:
        t.update(model=a.model, dtype=a.dtype)
    write_jsonl(traces, a.out)
    gen = sum(len(t["ids"]) - t["prompt_len"] for t in traces)
    bad = [t for t in traces if t["harmful"]]
    good = [t for t in traces if not t["harmful"]]
    print(f"{len(traces)} traces, {gen} generated tokens in {dt:.0f} s ({gen / dt:.0f} tok/s)")
    print(f"refused: harmful {_rate(bad)}, harmless {_rate(good)}"
          + ("" if a.template == "plain" else f"; thinking closed by the model: {_rate(traces, 'think_closed')}"))
    for src in sorted({t["source"] for t in traces}):
        print(f"  {src:12s} refused {_rate([t for t in traces if t['source'] == src])}")
    print(f"wrote {a.out}")
    return 0


# --- capture / train ------------------------------------------------------------------------------------

def cmd_capture(a: argparse.Namespace) -> int:
    import torch
    from safetensors.torch import save_file
    from rlreason.probes.capture import resolve_layers, states_at
    from rlreason.probes.data import read_jsonl
    from rlreason.probes.traces import probe_label, probe_position
    splits = None if a.split == "all" else set(a.split.split(","))
    traces = [t for t in read_jsonl(a.traces)
              if (splits is None or t["split"] in splits) and probe_label(t, a.label) is not None]
    labels = [probe_label(t, a.label) for t in traces]
    if min(labels.count(0), labels.count(1)) < 3:
        raise SystemExit(f"probe capture: class sizes {labels.count(1)} (1) / {labels.count(0)} (0) with "
                         f"--label {a.label}; a model that (almost) never refuses needs --label harmful")
    model, _ = load_model(a.model, a.dtype)
    layers = resolve_layers(a.layers, model.config.num_hidden_layers)
    t0 = time.monotonic()
    positions = [probe_position(t) for t in traces]
    feats = states_at(model, [t["ids"] for t in traces], positions, layers,
                      max_batch_tokens=a.max_batch_tokens, chunk_len=a.chunk_len)
    dt = time.monotonic() - t0
    tokens = sum(p + 1 for p in positions)
    meta = {"model": a.model, "dtype": a.dtype, "layers": json.dumps(layers), "traces": a.traces,
            "label": a.label, "ids": json.dumps([t["id"] for t in traces])}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({"features": feats.contiguous(), "labels": torch.tensor(labels)}, a.out, metadata=meta)
    print(f"features {tuple(feats.shape)} (traces x layers x hidden) from {tokens} tokens in {dt:.1f} s "
          f"({tokens / dt:.0f} tok/s); label {a.label}: class 1 {labels.count(1)}, class 0 {labels.count(0)}; "
          f"wrote {a.out}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    from safetensors import safe_open
    from rlreason.probes.probe import save_probe, train_per_layer
    with safe_open(a.features, "pt") as f:
        feats, labels, meta = f.get_tensor("features"), f.get_tensor("labels"), f.metadata()
    layers = json.loads(meta["layers"])
    cfg = ProbeConfig(**{f.name: getattr(a, f.name) for f in dataclasses.fields(ProbeConfig)})
    chosen, probes, table = train_per_layer(feats, labels.tolist(), layers, cfg)
    if a.layer is not None:
        chosen = a.layer
    row = next(r for r in table if r["layer"] == chosen)
    out = Path(a.out)
    save_probe(probes[chosen], out, {"layer": chosen, "model": meta["model"], "dtype": meta["dtype"],
                                      "features": a.features, "label": meta["label"],
                                      "config": dataclasses.asdict(cfg),
                                      "metrics": row, "chosen_by": "fixed" if a.layer is not None else "val_acc"})
    _write_json(table, out / "per_layer.json")
    _plot_per_layer(table, chosen, out / "per_layer.png")
    print(f"{'layer':>5s} {'val_acc':>7s} {'test_acc':>8s} {'test_auroc':>10s}")
    for r in table:
        print(f"{r['layer']:5d} {r['val_acc']:7.3f} {r['test_acc']:8.3f} {r['test_auroc']:10.3f}"
              + ("   <- chosen" if r["layer"] == chosen else ""))
    print(f"train/val/test per class: {row['n_train'] // 2}/{row['n_val'] // 2}/{row['n_test'] // 2}; "
          f"probe saved to {out}")
    return 0


def _plot_per_layer(table: list[dict], chosen: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [r["layer"] for r in table]
    for key, style in (("val_acc", "-o"), ("test_acc", "-s"), ("train_acc", ":")):
        ax.plot(x, [r[key] for r in table], style, label=key, markersize=3)
    ax.axvline(chosen, color="gray", ls="--", lw=0.8)
    ax.set_xlabel("hidden-state layer (0 = embeddings)")
    ax.set_ylabel("probe accuracy")
    lowest = min((r[k] for r in table for k in ("val_acc", "test_acc", "train_acc") if r.get(k) is not None),
                 default=0.4)
    ax.set_ylim(min(0.4, lowest) - 0.02, 1.02)  # chance is 0.5; show every point, also the ones below
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- score / heads / select -----------------------------------------------------------------------------

def cmd_score(a: argparse.Namespace) -> int:
    from rlreason.probes.cliff import cliff_stats, plot_cliff, score_positions_many, trace_cliff
    from rlreason.probes.data import read_jsonl, write_jsonl
    from rlreason.probes.probe import load_probe
    outs, plots = a.out or [str(OUT / "scores.jsonl")], a.plot or [str(OUT / "cliff.png")]
    if not len(a.probe) == len(outs) == len(plots):
        raise ConfigError(f"probe score: {len(a.probe)} --probe, {len(outs)} --out and {len(plots)} --plot; "
                         "give one --out and one --plot per probe")
    traces = read_jsonl(a.traces)
    if a.splits:
        traces = [t for t in traces if t["split"] in a.splits.split(",")]
    if a.max_harmless is not None:
        harmless = [t for t in traces if not t["harmful"]][:a.max_harmless]
        traces = [t for t in traces if t["harmful"]] + harmless
    plain = _refused_plain(a.refused_from, traces) if a.refused_from else None
    loaded = [load_probe(p) for p in a.probe]
    metas = [m for _, m in loaded]
    if len({(m["model"], m["dtype"]) for m in metas}) > 1:
        raise ConfigError(f"probe score: the probes {a.probe} were trained on different models/dtypes; score "
                         "them one at a time")
    model, _ = load_model(metas[0]["model"], metas[0]["dtype"])
    t0 = time.monotonic()
    scores = score_positions_many(model, [(p, m["layer"]) for p, m in loaded], [t["ids"] for t in traces],
                                  max_batch_tokens=a.max_batch_tokens, chunk_len=a.chunk_len)
    dt = time.monotonic() - t0
    tokens = sum(len(t["ids"]) for t in traces)
    print(f"scored {tokens} positions of {len(traces)} traces with {len(loaded)} probe(s) in {dt:.1f} s "
          f"({tokens / dt:.0f} tok/s)")
    for probe_dir, meta, sc, out, plot in zip(a.probe, metas, scores, outs, plots):
        rows = [{**trace_cliff(t, s), "split": t["split"], "source": t["source"],
                 **({"refused_plain": plain[t["id"]]} if plain else {}),
                 "scores": [round(x, 4) for x in s.tolist()]} for t, s in zip(traces, sc)]
        write_jsonl(rows, out)
        stats: dict[str, Any] = cliff_stats(rows)
        title = f"{meta['model']}: probe at layer {meta['layer']} ({meta.get('label', 'refusal')} labels)"
        if plain:
            stats = {"by_refusal_in_trace": stats, "by_refusal_plain": cliff_stats(rows, "refused_plain")}
            plot_cliff(rows, plot, title, refused_key="refused_plain",
                       legend_title=f"refused when asked plainly ({Path(a.refused_from).name})")
        else:
            plot_cliff(rows, plot, title)
        _write_json(stats, Path(out).with_name("cliff_stats.json"))
        print(f"probe {probe_dir} (layer {meta['layer']}):")
        for grouping, st in (stats.items() if plain else [("", stats)]):
            if grouping:
                print(f"  grouped {grouping}:")
            for g, x in st.items():
                if x["n"]:
                    print(f"  {g:18s} n={x['n']:3d} cliff mean {x['cliff_mean']:+.3f} median "
                          f"{x['cliff_median']:+.3f}  think max {x['think_max_mean']:.3f} (>0.5: "
                          f"{x['share_think_max_gt_0.5']:.2f})  final {x['final_score_mean']:.3f}  "
                          f"cliff>0.5 {x['share_cliff_gt_0.5']:.2f}")
        print(f"  wrote {out}, {plot}")
    return 0


def _refused_plain(path: str, traces: list[dict]) -> dict[str, bool]:
    """{trace id: refused under the other template} from a traces file (e.g. --template plain) of the
    same prompts; every scored trace must have a row there."""
    from rlreason.probes.data import read_jsonl
    other = {r["id"]: bool(r["refused"]) for r in read_jsonl(path)}
    missing = [t["id"] for t in traces if t["id"] not in other]
    if missing:
        raise ConfigError(f"probe score: --refused-from {path} has no row for {len(missing)} scored trace(s), "
                         f"e.g. id {missing[0]!r}; it must be generated from the same data.jsonl")
    return {t["id"]: other[t["id"]] for t in traces}


def cmd_heads(a: argparse.Namespace) -> int:
    import random
    from rlreason.probes.data import read_jsonl
    from rlreason.probes.heads import ablated_in_place, top_heads
    from rlreason.probes.probe import load_probe
    from rlreason.probes.repair import evaluate_model
    probe, meta = load_probe(a.probe)
    if a.ranking_from:
        result = _read_ranking(a.ranking_from, meta["layer"])
        ranking = result["ranking"]
        tok = load_model_tokenizer(meta["model"], meta["dtype"])
        print(f"ranking of {len(ranking)} heads read from {a.ranking_from} ({result.get('method', 'ablate')})")
    else:
        ranking, result, tok = _attribute(a, probe, meta)
    _write_json(result, Path(a.out))  # the ranking is kept even if the slower ablation below is cut short
    if a.data and a.top_p > 0:
        from transformers import AutoConfig
        from rlreason.models import resolve_model
        cfg = AutoConfig.from_pretrained(resolve_model(meta["model"], dtype=meta["dtype"]))
        heads = top_heads(ranking, a.top_p, cfg.num_hidden_layers * cfg.num_attention_heads)
        rand = random.Random(a.seed + 1).sample([(r["block"], r["head"]) for r in ranking], len(heads))
        harmful, harmless = _split_rows(read_jsonl(a.data), "heldout")
        harmful, harmless = harmful[:a.n_eval], harmless[:a.n_eval]
        fp32, _ = load_model(meta["model"], "fp32")  # the reference NLL is computed in fp32
        engine = make_trace_engine(a.engine, meta["model"], fp32 if a.engine == "hf" else None, tok,
                                   dtype=meta["dtype"], temperature=0.0, max_model_len=a.max_model_len, seed=a.seed)
        evals, base_traces = {}, None
        for name, hs in (("none", []), (f"top {len(heads)}", heads), (f"random {len(heads)}", rand)):
            with ablated_in_place(fp32, hs, a.scale):
                engine.update_weights(fp32.state_dict().items())
                evals[name], traces = evaluate_model(engine, fp32, harmful, harmless, max_think_tokens=a.max_think,
                                                     max_answer_tokens=a.max_answer, seed=a.seed)
            base_traces = base_traces or traces
            evals[name]["changed_vs_none"] = _changed(traces, base_traces)
            print(f"  ablate {name:10s} {_fmt_eval(evals[name])}", flush=True)
            result.update(ablated_heads=heads, random_heads=rand, ablation=evals)
            _write_json(result, Path(a.out))
    _write_json(result, Path(a.out))
    print(f"wrote {a.out}")
    return 0


def _attribute(a: argparse.Namespace, probe: Any, meta: dict) -> tuple[list[dict], dict[str, Any], Any]:
    """Head attribution on --n-traces harmful traces; the model is dropped before the ablation loads its own."""
    import random
    from rlreason.probes.data import read_jsonl
    from rlreason.probes.heads import head_attribution, head_attribution_linear, rerank_exact
    model, tok = load_model(meta["model"], meta["dtype"])
    pool = [t for t in read_jsonl(a.traces) if t["harmful"] and t["split"] == a.split]
    traces = random.Random(a.seed).sample(pool, min(a.n_traces, len(pool)))
    n_total = model.config.num_hidden_layers * model.config.num_attention_heads
    if a.method == "linear" and 0 < a.rerank < max(1, round(a.top_p * n_total)):
        raise ConfigError(f"probe heads: --rerank {a.rerank} measures fewer heads exactly than --top-p "
                          f"{a.top_p} ablates ({max(1, round(a.top_p * n_total))}); raise --rerank or give 0")
    seqs, finals = [t["ids"] for t in traces], [t["final_idx"] for t in traces]
    t0 = time.monotonic()
    if a.method == "linear":
        ranking = head_attribution_linear(model, probe, meta["layer"], seqs, finals, scale=a.scale)
        if a.rerank:
            ranking = rerank_exact(model, probe, meta["layer"], seqs, finals, ranking, a.rerank, scale=a.scale,
                                   progress=True)
    else:
        ranking = head_attribution(model, probe, meta["layer"], seqs, finals, scale=a.scale, progress=True)
    dt = time.monotonic() - t0
    result: dict[str, Any] = {"probe": a.probe, "layer": meta["layer"], "n_traces": len(traces),
                              "scale": a.scale, "method": a.method, "rerank": a.rerank if a.method == "linear" else None,
                              "seconds": round(dt, 1), "ranking": ranking}
    print(f"attribution ({a.method}) of {len(ranking)} heads on {len(traces)} harmful traces in {dt:.0f} s; top 10:")
    for r in ranking[:10]:
        print(f"  block {r['block']:2d} head {r['head']}"
              + (f" delta {r['delta']:+.4f} (sd {r['delta_std']:.4f})" if "delta" in r else "")
              + (f" linear estimate {r['delta_lin']:+.4f}" if "delta_lin" in r else ""))
    del model
    return ranking, result, tok


def _read_ranking(path: str, layer: int) -> dict[str, Any]:
    """An earlier heads.json (its ranking, without the ablation results); its probe layer must match."""
    try:
        result = json.loads(Path(path).read_text())
        ranking = result["ranking"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"probe heads: --ranking-from {path}: not a heads.json with a ranking ({e})") from None
    if result.get("layer") != layer:
        raise ConfigError(f"probe heads: --ranking-from {path} ranks heads for a probe at layer "
                          f"{result.get('layer')}, this probe reads layer {layer}")
    return {k: v for k, v in result.items() if k not in ("ablated_heads", "random_heads", "ablation")}


def _changed(traces: list[dict], base: list[dict]) -> float:
    """Share of traces whose thinking or answer differs from the baseline's (greedy decoding): shows
    that new weights reached the engine even when no rate moves."""
    return sum((t["think"], t["answer"]) != (b["think"], b["answer"]) for t, b in zip(traces, base)) / len(base)


def _fmt_eval(m: dict) -> str:
    s = f"ASR {m['attack_success']:.3f} (n={m['n_harmful']})  over-refusal {m['over_refusal']:.3f}"
    if "gsm8k_acc" in m:
        s += f"  gsm8k acc {m['gsm8k_acc']:.3f}  ref NLL {m['ref_nll']:.3f} (n={m['n_gsm8k']})"
    if "changed_vs_none" in m or "changed_vs_before" in m:
        s += f"  traces changed {m.get('changed_vs_none', m.get('changed_vs_before')):.2f}"
    return s


def cmd_select(a: argparse.Namespace) -> int:
    from rlreason.probes.data import read_jsonl, write_jsonl
    from rlreason.probes.select import select, sft_rows
    scores = [r for r in read_jsonl(a.scores) if r["harmful"] and r["split"] == a.split]
    traces = {t["id"]: t for t in read_jsonl(a.traces)}
    chosen = select(scores, a.top_p, a.by, seed=a.seed)
    write_jsonl(sft_rows([traces[r["id"]] for r in chosen]), a.out)
    cl = [r["cliff"] for r in chosen]
    print(f"selected {len(chosen)} of {len(scores)} candidates by {a.by}: mean cliff "
          f"{sum(cl) / len(cl):+.3f}, mean final score {sum(r['final_score'] for r in chosen) / len(chosen):.3f}, "
          f"already refused {sum(r['refused'] for r in chosen)}; wrote {a.out}")
    return 0


# --- repair ---------------------------------------------------------------------------------------------

def _repair_sets(a: argparse.Namespace, heldout_prompts: list[str]) -> list[Any]:
    """The (arm, seed) SFT sets of `rlreason repair`, each with its retain rows; checked before any model loads.

    --sft FILE...: each file is an arm (named by its stem) trained once per seed.
    --scores + --traces: the arms of `compare.build_sets` (cliff / random / full) from the scored candidates.
    A retain ratio > 0 needs --traces (the harmless traces the retain rows come from)."""
    from rlreason.probes.compare import RepairSet, build_sets, candidate_rows
    from rlreason.probes.data import read_jsonl
    from rlreason.probes.retain import mix_retain, n_retain, retain_pool
    if bool(a.sft) == bool(a.scores):
        raise ConfigError("repair: give either --sft FILE... (ready SFT sets) or --scores (arms selected from the "
                          "scored candidates), not both or neither")
    n_retain(1, a.retain_ratio)  # the ratio's own check, before any file is read
    if (a.scores or a.retain_ratio > 0) and not a.traces:
        raise ConfigError(f"repair --traces: needed with --scores and with --retain-ratio > 0 (got "
                          f"{a.retain_ratio}); the think-then-answer traces.jsonl of the probe data")
    traces = read_jsonl(a.traces) if a.traces else []
    pool = retain_pool(traces, splits=a.retain_split.split(","), exclude_prompts=heldout_prompts)
    if a.scores:
        candidates = candidate_rows(read_jsonl(a.scores), a.candidate_split, a.max_candidates)
        return build_sets(candidates, {t["id"]: t for t in traces}, pool, arms=a.arms, seeds=a.seeds,
                          top_p=a.top_p, retain_ratio=a.retain_ratio)
    sets = []
    for seed in a.seeds:
        for path in a.sft:
            safety = read_jsonl(path)
            rows = mix_retain(safety, pool, a.retain_ratio, seed) if a.retain_ratio > 0 else safety
            sets.append(RepairSet(Path(path).stem, seed, rows, len(safety), len(rows) - len(safety)))
    return sets


def cmd_repair(a: argparse.Namespace) -> int:
    from rlreason.models import resolve_model
    from rlreason.probes.compare import summarize, write_report
    from rlreason.probes.data import read_jsonl
    from rlreason.probes.repair import evaluate_model, restore_weights, sft
    all_harmful, all_harmless = _split_rows(read_jsonl(a.data), "heldout")
    sets = _repair_sets(a, [r["prompt"] for r in all_harmful + all_harmless])  # every check before the model loads
    harmful, harmless = all_harmful[:a.n_eval], all_harmless[:a.n_eval]
    model, tok = load_model(a.model, "fp32")
    base_dir = resolve_model(a.model, dtype="fp32")
    engine = make_trace_engine(a.engine, a.model, model if a.engine == "hf" else None, tok, dtype=a.dtype,
                               temperature=0.0, max_model_len=a.max_model_len, seed=a.seed)
    kw = dict(max_think_tokens=a.max_think, max_answer_tokens=a.max_answer, seed=a.seed)
    out = Path(a.out)
    base_cfg = {f.name: getattr(a, f.name) for f in dataclasses.fields(RepairConfig) if f.name != "seed"}
    results: dict[str, Any] = {"config": base_cfg, "n_eval": a.n_eval, "retain_ratio": a.retain_ratio,
                               "retain_split": a.retain_split, "top_p": a.top_p if a.scores else None,
                               "max_candidates": a.max_candidates if a.scores else None,
                               "seeds": a.seeds, "arms": list(dict.fromkeys(s.arm for s in sets)), "runs": []}
    t0 = time.monotonic()
    results["before"], before_traces = evaluate_model(engine, model, harmful, harmless, **kw)
    results["before"]["eval_seconds"] = round(time.monotonic() - t0, 1)
    print(f"before               {_fmt_eval(results['before'])}", flush=True)
    for s in sets:
        restore_weights(model, base_dir)
        t0 = time.monotonic()
        model, stats = sft(model, tok, s.rows, RepairConfig(**base_cfg, seed=s.seed))
        stats["seconds"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        engine.update_weights(model.state_dict().items())
        m, traces = evaluate_model(engine, model, harmful, harmless, **kw)
        m["eval_seconds"] = round(time.monotonic() - t0, 1)
        m["changed_vs_before"] = _changed(traces, before_traces)
        results["runs"].append({"arm": s.arm, "seed": s.seed, "n_safety": s.n_safety, "n_retain": s.n_retain,
                                "sft_ids": [r["id"] for r in s.rows], **stats, **m,
                                "samples": [{"prompt": t["prompt"], "answer": t["answer"][:200]}
                                            for t in traces[:2] + traces[len(harmful):len(harmful) + 2]]})
        results["summary"] = summarize(results["runs"])
        _write_json(results, out / "repair.json")  # after every run: a run cut short keeps what finished
        print(f"after {s.arm:8s} seed {s.seed} {_fmt_eval(m)}  (SFT on {s.n_safety} + {s.n_retain} rows, loss "
              f"{stats['loss/first']:.2f} -> {stats['loss/last']:.2f}, {stats['seconds']:.0f} s)", flush=True)
        if a.save_models:
            model.save_pretrained(out / f"model_{s.arm}_seed{s.seed}")
            tok.save_pretrained(out / f"model_{s.arm}_seed{s.seed}")
    results["summary"] = summarize(results["runs"])
    for path in write_report(results, out / "repair"):
        print(f"wrote {path}")
    return 0


# --- parsers --------------------------------------------------------------------------------------------

def _model_args(p: argparse.ArgumentParser, dtype: str = "bf16") -> None:
    p.add_argument("--model", default="smollm2-135m-instruct", help="model name or directory")
    p.add_argument("--dtype", default=dtype, choices=["bf16", "fp32"])


def _capture_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-batch-tokens", type=int, default=4096, help="batch x min(longest, chunk) bound")
    p.add_argument("--chunk-len", type=int, default=512, help="positions per forward (KV-cached chunks)")


def _gen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--max-think", type=int, default=128, help="thinking token budget")
    p.add_argument("--max-answer", type=int, default=96, help="answer token budget")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    probe = sub.add_parser("probe", help="refusal-cliff probes (arXiv 2510.06036): data, traces, capture, "
                                         "train, score, heads, select", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    ps = probe.add_subparsers(dest="probe_cmd", required=True)

    p = ps.add_parser("data", help="harmful + harmless prompts from the pinned data packages, with splits")
    p.add_argument("--n-harmful", type=int, default=300)
    p.add_argument("--n-harmless", type=int, default=150)
    p.add_argument("--harmful", default="advbench,harmbench,strongreject,jbb")
    p.add_argument("--harmless", default="gsm8k,rho_benign")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT / "data.jsonl"))
    p.set_defaults(fn=cmd_data)

    p = ps.add_parser("traces", help="think-then-answer traces + refusal labels")
    p.add_argument("--data", default=str(OUT / "data.jsonl"))
    p.add_argument("--splits", default="", help="comma list of splits to keep (default: all)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--judge", default="phrases", help="refusal judge (registry name)")
    p.add_argument("--template", default="think", choices=["think", "plain"],
                   help="think: think-then-answer traces (what the probe steps read); plain: the bare prompt "
                        "in the chat template, one answer of --max-answer tokens (refusal baseline only)")
    p.add_argument("--out", default=str(OUT / "traces.jsonl"))
    _model_args(p)
    _gen_args(p)
    p.set_defaults(fn=cmd_traces)

    p = ps.add_parser("capture", help="hidden states at the final token (</think>) of probe-split traces "
                                      "(the last prompt token of --template plain rows)")
    p.add_argument("--traces", default=str(OUT / "traces.jsonl"))
    p.add_argument("--split", default="probe", help="a split, a comma list of splits, or 'all'")
    p.add_argument("--layers", default="all", help="'all', 'last' or a comma list (0 = embeddings)")
    p.add_argument("--label", default="refusal", choices=["refusal", "harmful", "refused-vs-answered"],
                   help="refusal: the paper's classes (harmful+refused vs harmless); harmful: harmful vs "
                        "harmless prompts, for models that never refuse; refused-vs-answered: harmful+refused "
                        "vs harmful+answered (harmfulness is the same on both sides)")
    p.add_argument("--out", default=str(OUT / "features.safetensors"))
    _model_args(p)
    _capture_args(p)
    p.set_defaults(fn=cmd_capture)

    p = ps.add_parser("train", help="one logistic-regression probe per layer; keep the best-validation layer")
    p.add_argument("--features", default=str(OUT / "features.safetensors"))
    p.add_argument("--out", default=str(OUT / "probe"))
    p.add_argument("--layer", type=int, default=None, help="force this layer instead of choosing by val acc")
    _config_args(p, ProbeConfig)
    p.set_defaults(fn=cmd_train)

    p = ps.add_parser("score", help="refusal score at every position, cliff sizes, the cliff plot")
    p.add_argument("--traces", default=str(OUT / "traces.jsonl"))
    p.add_argument("--splits", default="", help="comma list of splits to score (default: all)")
    p.add_argument("--max-harmless", type=int, default=None,
                   help="score only the first N harmless traces (all harmful ones are scored)")
    p.add_argument("--probe", nargs="+", default=[str(OUT / "probe")],
                   help="one or more probes, scored in one forward pass (same model)")
    p.add_argument("--out", nargs="+", default=None, help="scores.jsonl per probe (cliff_stats.json lands "
                                                          "beside it; default runs/probes/scores.jsonl)")
    p.add_argument("--plot", nargs="+", default=None, help="cliff plot per probe (default runs/probes/cliff.png)")
    p.add_argument("--refused-from", default="",
                   help="traces of the same prompts under another template (e.g. --template plain): group "
                        "the stats and the plot by whether the prompt was refused there")
    _capture_args(p)
    p.set_defaults(fn=cmd_score)

    p = ps.add_parser("heads", help="rank attention heads by their effect on the final refusal score; "
                                    "ablate the top p%% and evaluate")
    p.add_argument("--traces", default=str(OUT / "traces.jsonl"))
    p.add_argument("--split", default="probe", help="split whose harmful traces drive the attribution")
    p.add_argument("--probe", default=str(OUT / "probe"))
    p.add_argument("--n-traces", type=int, default=16)
    p.add_argument("--scale", type=float, default=1e-3)
    p.add_argument("--method", default="ablate", choices=["ablate", "linear"],
                   help="ablate: one forward per head (exact, the paper's); linear: a first-order estimate of "
                        "every head from one forward+backward per trace, then --rerank heads measured exactly")
    p.add_argument("--rerank", type=int, default=32, help="with --method linear: heads measured exactly")
    p.add_argument("--ranking-from", default="", help="an earlier heads.json: reuse its ranking (no attribution) "
                                                      "and run only the ablation")
    p.add_argument("--top-p", type=float, default=0.03, help="share of all heads to ablate (0: skip)")
    p.add_argument("--data", default="", help="data.jsonl: evaluate the ablation on its heldout split")
    p.add_argument("--n-eval", type=int, default=64, help="held-out prompts per class")
    p.add_argument("--out", default=str(OUT / "heads.json"))
    _gen_args(p)
    p.set_defaults(fn=cmd_heads)

    p = ps.add_parser("select", help="Cliff-as-a-Judge: write the SFT set of the top-p candidates")
    p.add_argument("--scores", default=str(OUT / "scores.jsonl"))
    p.add_argument("--traces", default=str(OUT / "traces.jsonl"))
    p.add_argument("--split", default="candidates")
    p.add_argument("--by", default="cliff", choices=["cliff", "final", "random"])
    p.add_argument("--top-p", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(OUT / "sft.jsonl"))
    p.set_defaults(fn=cmd_select)

    r = sub.add_parser("repair", help="safety SFT (+ a retain set of harmless rows) on selected sets, over "
                                      "seeds; attack success, over-refusal, GSM8K before/after")
    r.add_argument("--sft", nargs="+", default=[], help="ready SFT sets (probe select), each an arm trained "
                                                        "from the base")
    r.add_argument("--scores", default="", help="instead of --sft: scores.jsonl of `probe score`; the arms "
                                                "(--arms) are selected from its harmful --candidate-split rows")
    r.add_argument("--traces", default="", help="think-then-answer traces.jsonl: the candidates' thinking (with "
                                                "--scores) and the retain rows' harmless answers")
    r.add_argument("--arms", nargs="+", default=["cliff", "random", "full"], choices=["cliff", "random", "full"],
                   help="cliff: top --top-p by cliff; random: as many, drawn by the seed; full: every candidate")
    r.add_argument("--top-p", type=float, default=0.25, help="share of the candidates the cliff/random arms keep")
    r.add_argument("--candidate-split", default="candidates", help="split of the harmful candidates")
    r.add_argument("--max-candidates", type=int, default=0,
                   help="keep only the first N candidates (file order; 0: all): the pool every arm, full "
                        "included, is drawn from, for a smaller compute budget")
    r.add_argument("--retain-ratio", type=float, default=1.0,
                   help="harmless retain rows per safety row (0: refusals only)")
    r.add_argument("--retain-split", default="probe",
                   help="split(s) the retain rows come from (comma list; never heldout, the evaluation split)")
    r.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="each set is trained once per seed (data order, random arm, retain draw)")
    r.add_argument("--data", default=str(OUT / "data.jsonl"), help="prompts; the heldout split is evaluated")
    r.add_argument("--n-eval", type=int, default=64, help="held-out prompts per class")
    r.add_argument("--out", default=str(OUT / "repair"))
    r.add_argument("--save-models", action="store_true")
    _model_args(r)
    _gen_args(r)
    _config_args(r, RepairConfig, skip=("seed",))  # the SFT seed is --seeds; --seed is the generation seed
    r.set_defaults(fn=cmd_repair)


def _config_args(p: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """One option per dataclass field; the default and the help line come from the dataclass."""
    helps = field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name not in skip:
            p.add_argument(f"--{f.name.replace('_', '-')}", type=_bool if f.type == "bool" else type(f.default),
                           default=f.default, help=f"{helps.get(f.name, '')} (default: {f.default})")


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes"):
        return True
    if s.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")
