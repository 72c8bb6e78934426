"""The refusal-cliff study's summary (launch/refusal_cliff_qwen_cpu.sh, step `report`): one JSON and one
Markdown table from the files the probe steps wrote, and the plots copied beside them.

    python -m rlreason.probes.report --dir runs/probes_qwen --out benchmarks/results/refusal_cliff_qwen_cpu_DATE

Reads (all under --dir): traces.jsonl and traces_plain.jsonl (refusal counts per template),
probe_<label>/{probe.json,per_layer.json} (per-layer accuracy, the chosen layer),
score_<label>/{scores.jsonl,cliff_stats.json} (per-trace cliffs, the curves) and heads.json (attribution and
the ablation's attack success). A missing step's files leave its section out, so a partial run still
reports what finished.

Per-trace numbers come from `probe score`: cliff = max score over the thinking - score at the final token.
The summary adds their distribution per group, the mean curve at a few resampled points, and AUROCs of
the score at three places (last prompt token, thinking maximum, final token) between groups, which show
whether the probe separates the groups on the think-then-answer traces at all.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path
from typing import Any

LABELS = ("refusal", "refused-vs-answered")
CURVE_POINTS = (0, 25, 50, 75, 90, 95, 99)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _finite(xs: list[float | None]) -> list[float]:
    return [float(x) for x in xs if x is not None and not math.isnan(float(x))]


def quantiles(xs: list[float]) -> dict[str, float | None]:
    """min, quartiles (nearest rank on the sorted values), max, mean; None for an empty list."""
    xs = sorted(_finite(xs))
    if not xs:
        return {k: None for k in ("n", "mean", "min", "q25", "median", "q75", "max")}
    at = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    return {"n": len(xs), "mean": sum(xs) / len(xs), "min": xs[0], "q25": at(0.25), "median": at(0.5),
            "q75": at(0.75), "max": xs[-1]}


def auroc(pos: list[float], neg: list[float]) -> float | None:
    """P(a random positive scores above a random negative), ties half; None when a side is empty."""
    pos, neg = _finite(pos), _finite(neg)
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def refusal_counts(traces: list[dict]) -> dict[str, Any]:
    bad = [t for t in traces if t["harmful"]]
    good = [t for t in traces if not t["harmful"]]
    by_source: dict[str, list[int]] = {}
    for t in traces:
        by_source.setdefault(t["source"], [0, 0])
        by_source[t["source"]][0] += bool(t["refused"])
        by_source[t["source"]][1] += 1
    return {"harmful_refused": sum(t["refused"] for t in bad), "n_harmful": len(bad),
            "harmless_refused": sum(t["refused"] for t in good), "n_harmless": len(good),
            "by_source": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_source.items())}}


def group(row: dict) -> str:
    """harmless / harmful refused-plain / harmful answered-plain: the grouping of `probe score
    --refused-from` (whether the same prompt was refused when asked plainly)."""
    if not row["harmful"]:
        return "harmless"
    return "harmful, refused plainly" if row["refused_plain"] else "harmful, answered plainly"


GROUPS = ("harmful, refused plainly", "harmful, answered plainly", "harmless")


def score_summary(rows: list[dict]) -> dict[str, Any]:
    """Per group: cliff distribution, think-max and final-score means, shares above the probe's 0.5
    threshold, the mean curve at CURVE_POINTS; and AUROCs between groups at three positions."""
    out: dict[str, Any] = {"groups": {}}
    for g in GROUPS:
        rs = [r for r in rows if group(r) == g]
        if not rs:
            continue
        curves = [r["curve"] for r in rs]
        out["groups"][g] = {
            "n": len(rs), "cliff": quantiles([r["cliff"] for r in rs]),
            "share_cliff_gt_0.1": _share([r["cliff"] for r in rs], 0.1),
            "share_cliff_gt_0.5": _share([r["cliff"] for r in rs], 0.5),
            "think_max_mean": _mean([r["think_max"] for r in rs]),
            "share_think_max_gt_0.5": _share([r["think_max"] for r in rs], 0.5),
            "final_score_mean": _mean([r["final_score"] for r in rs]),
            "share_final_gt_0.5": _share([r["final_score"] for r in rs], 0.5),
            "prompt_last_score_mean": _mean([r["prompt_last_score"] for r in rs]),
            # where each trace's resampled curve peaks (0 = first thinking token, 99 = final token): a cliff
            # at the end of the thinking needs peaks late in the thinking, not at its start
            "peak_position_mean": _mean([max(range(len(c)), key=c.__getitem__) for c in curves]),
            "share_peak_in_last_quarter": _share([max(range(len(c)), key=c.__getitem__) for c in curves], 74.5),
            "curve": {str(p): _mean([c[p] for c in curves if len(c) > p]) for p in CURVE_POINTS}}
    harmful = [r for r in rows if r["harmful"]]
    pairs = {"harmful vs harmless": (harmful, [r for r in rows if not r["harmful"]]),
             "refused plainly vs answered plainly": ([r for r in harmful if r["refused_plain"]],
                                                     [r for r in harmful if not r["refused_plain"]])}
    out["auroc"] = {name: {key: auroc([r[key] for r in pos], [r[key] for r in neg])
                           for key in ("prompt_last_score", "think_max", "final_score")}
                    for name, (pos, neg) in pairs.items()}
    return out


def _share(xs: list[float | None], threshold: float) -> float | None:
    xs = _finite(xs)
    return sum(x > threshold for x in xs) / len(xs) if xs else None


def _mean(xs: list[float | None]) -> float | None:
    xs = _finite(xs)
    return sum(xs) / len(xs) if xs else None


def summarize(d: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, file in (("think", "traces.jsonl"), ("plain", "traces_plain.jsonl")):
        if (d / file).exists():
            out.setdefault("refusals", {})[name] = refusal_counts(_read_jsonl(d / file))
    for label in LABELS:
        pdir, sdir = d / f"probe_{label}", d / f"score_{label}"
        if (pdir / "probe.json").exists():
            meta = json.loads((pdir / "probe.json").read_text())
            table = json.loads((pdir / "per_layer.json").read_text())
            out.setdefault("probes", {})[label] = {
                "layer": meta["layer"], "chosen_by": meta.get("chosen_by"),
                "per_layer": [{k: r[k] for k in ("layer", "train_acc", "val_acc", "test_acc", "test_auroc",
                                                 "n_train", "n_val", "n_test")} for r in table]}
        if (sdir / "scores.jsonl").exists():
            out.setdefault("scores", {})[label] = score_summary(_read_jsonl(sdir / "scores.jsonl"))
    if (d / "heads.json").exists():
        h = json.loads((d / "heads.json").read_text())
        out["heads"] = {k: h.get(k) for k in ("layer", "n_traces", "method", "rerank", "scale", "seconds",
                                              "ablated_heads", "random_heads", "ablation")}
        out["heads"]["top"] = h["ranking"][:12]
    return out


def _f(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def to_markdown(s: dict[str, Any]) -> str:
    lines: list[str] = []
    if "refusals" in s:
        lines += ["## Refusals (phrase judge)", "", "| template | harmful refused | harmless refused |", "|---|---|---|"]
        for name, r in s["refusals"].items():
            lines.append(f"| {name} | {r['harmful_refused']}/{r['n_harmful']} | {r['harmless_refused']}/{r['n_harmless']} |")
        lines.append("")
    for label, p in s.get("probes", {}).items():
        r0 = p["per_layer"][0]
        lines += [f"## Probe `{label}`: accuracy per layer (plain-template states, last token before the answer)", "",
                  f"train/val/test examples: {r0['n_train']}/{r0['n_val']}/{r0['n_test']} (balanced); chosen layer "
                  f"{p['layer']} ({p['chosen_by']})", "",
                  "| layer | train acc | val acc | test acc | test AUROC |", "|---|---|---|---|---|"]
        for r in p["per_layer"]:
            mark = " **chosen**" if r["layer"] == p["layer"] else ""
            lines.append(f"| {r['layer']}{mark} | {_f(r['train_acc'])} | {_f(r['val_acc'])} | {_f(r['test_acc'])} "
                         f"| {_f(r['test_auroc'])} |")
        lines.append("")
    for label, sc in s.get("scores", {}).items():
        lines += [f"## Scores of probe `{label}` on the think-then-answer traces", "",
                  "| group | n | cliff mean | median | q25..q75 | cliff > 0.1 | cliff > 0.5 | think max | think max > 0.5 "
                  "| final | final > 0.5 | last prompt token | peak position | peak in last quarter |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for g, x in sc["groups"].items():
            c = x["cliff"]
            lines.append(f"| {g} | {x['n']} | {_f(c['mean'], '+.3f')} | {_f(c['median'], '+.3f')} | "
                         f"{_f(c['q25'], '+.3f')}..{_f(c['q75'], '+.3f')} | {_f(x['share_cliff_gt_0.1'], '.2f')} | "
                         f"{_f(x['share_cliff_gt_0.5'], '.2f')} | {_f(x['think_max_mean'])} | "
                         f"{_f(x['share_think_max_gt_0.5'], '.2f')} | {_f(x['final_score_mean'])} | "
                         f"{_f(x['share_final_gt_0.5'], '.2f')} | {_f(x['prompt_last_score_mean'])} | "
                         f"{_f(x['peak_position_mean'], '.1f')} | {_f(x['share_peak_in_last_quarter'], '.2f')} |")
        lines += ["", "Mean right-aligned curve (resampled point: 0 = first thinking token, 99 = last token of </think>):", "",
                  "| group | " + " | ".join(str(p) for p in CURVE_POINTS) + " |", "|---|" + "---|" * len(CURVE_POINTS)]
        for g, x in sc["groups"].items():
            lines.append(f"| {g} | " + " | ".join(_f(x["curve"][str(p)]) for p in CURVE_POINTS) + " |")
        lines += ["", "AUROC of the score between groups:", "",
                  "| groups | last prompt token | thinking max | final token |", "|---|---|---|---|"]
        for name, a in sc["auroc"].items():
            lines.append(f"| {name} | {_f(a['prompt_last_score'])} | {_f(a['think_max'])} | {_f(a['final_score'])} |")
        lines.append("")
    if "heads" in s:
        h = s["heads"]
        lines += [f"## Heads (probe layer {h['layer']}, {h['method']} attribution on {h['n_traces']} harmful traces, "
                  f"top {h['rerank']} measured exactly, scale {h['scale']})", "",
                  "| block | head | delta (exact) | linear estimate |", "|---|---|---|---|"]
        for r in h["top"]:
            lines.append(f"| {r['block']} | {r['head']} | {_f(r.get('delta'), '+.4f')} | {_f(r.get('delta_lin'), '+.4f')} |")
        if h.get("ablation"):
            lines += ["", "Ablation on held-out prompts, think-then-answer template (ASR = harmful prompts answered "
                      "without a refusal):", "",
                      "| ablated | ASR | over-refusal | GSM8K acc | ref NLL | traces changed |", "|---|---|---|---|---|---|"]
            for name, m in h["ablation"].items():
                lines.append(f"| {name} | {_f(m['attack_success'])} (n={m['n_harmful']}) | {_f(m['over_refusal'])} "
                             f"(n={m['n_harmless']}) | {_f(m.get('gsm8k_acc'))} | {_f(m.get('ref_nll'))} | "
                             f"{_f(m.get('changed_vs_none'), '.2f')} |")
            lines += ["", f"ablated heads (block, head): {h['ablated_heads']}; random: {h['random_heads']}"]
        lines.append("")
    return "\n".join(lines)


PLOTS = {"probe_{label}/per_layer.png": "per_layer_{label}", "score_{label}/cliff.png": "cliff_{label}"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="the launch script's OUT folder")
    ap.add_argument("--out", required=True, help="results prefix: writes PREFIX.json, PREFIX.md, PREFIX_*.png")
    ap.add_argument("--header", default="", help="text put above the tables (e.g. the command and machine)")
    a = ap.parse_args(argv)
    d, out = Path(a.dir), Path(a.out)
    if not d.is_dir():
        raise SystemExit(f"report: --dir {d} is not a folder")
    s = summarize(d)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_name(out.name + ".json").write_text(json.dumps(s, indent=1))
    out.with_name(out.name + ".md").write_text((a.header + "\n\n" if a.header else "") + to_markdown(s))
    for label in LABELS:
        for src, dst in PLOTS.items():
            p = d / src.format(label=label)
            if p.exists():
                shutil.copyfile(p, out.with_name(f"{out.name}_{dst.format(label=label)}.png"))
    print(f"report: wrote {out}.json, {out}.md ({', '.join(k for k in s)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
