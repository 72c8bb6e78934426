"""Cliff-as-a-Judge against its controls: the SFT sets of a repair comparison and its summary table.

The paper (arXiv 2510.06036, sec. 5) reports that the ~1.7% of safety examples with the largest refusal
cliff repair a model as well as the full set. The comparison that can support or refute that here:

    cliff    the top fraction p of the harmful candidates by cliff (the same rows for every seed)
    random   the same number of candidates drawn uniformly by the seed (does the cliff ranking matter?)
    full     every harmful candidate (what the selection claims to match; larger than the other two)

Every arm's safety rows (own thinking + "</think>" + refusal, `select.sft_rows`) get the same retain ratio
of harmless rows (`retain.mix_retain`), and each (arm, seed) is fine-tuned from the same base weights. The
seed drives the SFT data order, the random arm's draw and the retain draw; with several seeds the table
shows how much of a difference between arms is the seed's.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlreason.probes.retain import mix_retain, n_retain
from rlreason.probes.select import n_selected, select, sft_rows
from rlreason.registry import ConfigError

ARMS = ("cliff", "random", "full")
METRICS = ("attack_success", "over_refusal", "gsm8k_acc", "ref_nll")


@dataclass
class RepairSet:
    """One SFT set of the comparison: an arm at a seed."""
    arm: str
    seed: int
    rows: list[dict]
    n_safety: int
    n_retain: int


def candidate_rows(scores: list[dict], split: str = "candidates", max_n: int = 0) -> list[dict]:
    """The harmful `probe score` rows of `split`, the first `max_n` in file order when max_n > 0. The cap is
    taken before any ranking, so it cannot favour an arm: it only shrinks the pool all of them share."""
    if max_n < 0:
        raise ConfigError(f"repair --max-candidates: a count >= 0 (0: all), got {max_n}")
    rows = [r for r in scores if r["harmful"] and r["split"] == split]
    return rows[:max_n] if max_n else rows


def arm_safety_rows(candidates: list[dict], traces: dict[str, dict], arm: str, *, top_p: float,
                    seed: int) -> list[dict]:
    """The refusal rows of `arm` (candidates: `probe score` rows with cliff and final_score; traces by id)."""
    if arm == "full":
        chosen = list(candidates)
    elif arm in ("cliff", "random"):
        chosen = select(candidates, top_p, arm, seed=seed)
    else:
        raise ConfigError(f"repair --arms: '{arm}' is not an arm; allowed: {', '.join(ARMS)}")
    missing = [c["id"] for c in chosen if c["id"] not in traces]
    if missing:
        raise ConfigError(f"repair --traces: no trace for scored candidate(s) {', '.join(missing[:3])}; pass the "
                          "traces.jsonl the scores were computed from")
    return sft_rows([traces[c["id"]] for c in chosen])


def build_sets(candidates: list[dict], traces: dict[str, dict], retain_pool: list[dict], *, arms: list[str],
               seeds: list[int], top_p: float, retain_ratio: float) -> list[RepairSet]:
    """Every (arm, seed) SFT set, seed-major (all arms of seed 0 first), so a run cut short has whole seeds.
    Every size is checked before any set is built, so a bad ratio fails before hours of training."""
    if not candidates:
        raise ConfigError("repair --scores: no harmful candidates in the chosen split")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"repair --seeds: each seed once, got {seeds}")
    largest = max(len(candidates) if a == "full" else n_selected(len(candidates), top_p) for a in arms)
    if n_retain(largest, retain_ratio) > len(retain_pool):
        raise ConfigError(f"repair --retain-ratio {retain_ratio}: the largest arm ({largest} safety rows) needs "
                          f"{n_retain(largest, retain_ratio)} retain rows, the pool has {len(retain_pool)}")
    out = []
    for seed in seeds:
        for arm in arms:
            safety = arm_safety_rows(candidates, traces, arm, top_p=top_p, seed=seed)
            rows = mix_retain(safety, retain_pool, retain_ratio, seed)
            out.append(RepairSet(arm, seed, rows, len(safety), len(rows) - len(safety)))
    return out


def spread(xs: list[float]) -> dict[str, float | int | None]:
    """mean, sample std (n-1; None for one value: one seed says nothing about the spread), min, max of the
    finite values."""
    xs = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    if not xs:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"n": len(xs), "mean": mean, "std": std, "min": min(xs), "max": max(xs)}


def summarize(runs: list[dict], metrics: tuple[str, ...] = METRICS) -> dict[str, dict[str, Any]]:
    """{arm: {metric: spread over seeds, n_safety, n_retain, seeds}} in the order the arms first appear."""
    out: dict[str, dict[str, Any]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        rs = [r for r in runs if r["arm"] == arm]
        out[arm] = {"seeds": [r["seed"] for r in rs], "n_safety": sorted({r["n_safety"] for r in rs}),
                    "n_retain": sorted({r["n_retain"] for r in rs}),
                    **{m: spread([r.get(m) for r in rs]) for m in metrics}}
    return out


def _cell(s: dict) -> str:
    if not s or s.get("mean") is None:
        return "-"
    if s["n"] < 2:
        return f"{s['mean']:.3f} (1 seed, no spread)"
    return f"{s['mean']:.3f} ± {s['std']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"


def comparison_markdown(results: dict, header: str = "") -> str:
    """The comparison as Markdown: the base model, then per arm mean ± std [min, max] over seeds, then every run."""
    lines = [header.rstrip() + "\n"] if header else []
    before = results.get("before", {})
    n = f"{before.get('n_harmful', '?')} harmful, {before.get('n_harmless', '?')} harmless " \
        f"({before.get('n_gsm8k', 0)} GSM8K)"
    lines += [f"Held-out evaluation: {n} prompts, greedy, think-then-answer template. "
              f"Retain ratio {results.get('retain_ratio')}, top p {results.get('top_p')}, "
              f"seeds {results.get('seeds')}.", "",
              "| arm | SFT rows (safety + retain) | attack success | over-refusal | GSM8K acc | ref NLL |",
              "|---|---|---|---|---|---|"]
    if before:
        lines.append("| before (no repair) | 0 | " + " | ".join(
            f"{before[m]:.3f}" if before.get(m) is not None else "-" for m in METRICS) + " |")
    for arm, s in results.get("summary", {}).items():
        size = "/".join(str(x) for x in s["n_safety"]) + " + " + "/".join(str(x) for x in s["n_retain"])
        lines.append(f"| {arm} | {size} | " + " | ".join(_cell(s[m]) for m in METRICS) + " |")
    lines += ["", "Cells: mean ± sample std [min, max] over seeds.", "",
              "| arm | seed | safety | retain | loss first -> last | SFT s | attack success | over-refusal | "
              "GSM8K acc | ref NLL |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.get("runs", []):
        lines.append(f"| {r['arm']} | {r['seed']} | {r['n_safety']} | {r['n_retain']} | "
                     f"{r['loss/first']:.3f} -> {r['loss/last']:.3f} | {r['seconds']:.0f} | " + " | ".join(
                         f"{r[m]:.3f}" if r.get(m) is not None else "-" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def write_report(results: dict, prefix: str | Path, header: str = "") -> tuple[Path, Path]:
    """PREFIX.json (the results, NaN as null) and PREFIX.md (the tables)."""
    from rlreason.probes.commands import _json_safe
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    js, md = prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")
    js.write_text(json.dumps(_json_safe(results), indent=1, allow_nan=False))
    md.write_text(comparison_markdown(results, header))
    return js, md


def main(argv: list[str] | None = None) -> int:
    """`python -m rlreason.probes.compare --json OUT/repair.json --out PREFIX [--header TEXT]`: the tables again
    from a finished run (e.g. with a reading above them)."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--json", required=True, help="repair.json written by `rlreason repair --scores ...`")
    p.add_argument("--out", required=True, help="output prefix: PREFIX.md and PREFIX.json")
    p.add_argument("--header", default="", help="text above the tables (Markdown)")
    a = p.parse_args(argv)
    results = json.loads(Path(a.json).read_text())
    if "runs" not in results:
        print(f"error: {a.json}: no 'runs' (not written by `rlreason repair`)", file=sys.stderr)
        return 2
    results["summary"] = summarize(results["runs"])  # recomputed: the file may predate a change to the summary
    for path in write_report(results, a.out, a.header):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
