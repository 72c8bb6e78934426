"""The table and the PNG of launch/delethink_vs_longcot_cpu.sh: Markovian (Delethink) vs LongCoT RL from one
warm start at the same thinking budget.

Reads, under --runs, every `<arm>_s<seed>/metrics.jsonl` (arm: markovian or longcot) and, where present, the
run's `chunked_eval.json` (`rlreason eval --chunked` of its final checkpoint), and writes

    OUT.md    held-out accuracy over training (mean, min-max over seeds), cost per step, test-time scaling
    OUT.png   the same three views
    OUT.json  the numbers behind both

Cost per step is measured, not modelled: wall time of rollout and update (on a shared machine, so it moves
with the load), the rows the update trains, and the tokens and FLOPs of that update from the rows' exact
prompt and response lengths (`perf/update_tokens_per_s x time/update` and `perf/update_tflops x
time/update`, rlreason/trainer/perf.py: 6 N per token plus the attention term 12 L H d (P + R)^2 per row, so
LongCoT's quadratic attention and Markovian's re-read prompts both show). These do not depend on the load.

    python benchmarks/delethink_vs_longcot.py --runs runs/delethink_vs_longcot \\
        --out benchmarks/results/delethink_vs_longcot_cpu
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any

ARMS = ("markovian", "longcot")
LABEL = {"markovian": "Markovian (Delethink)", "longcot": "LongCoT"}
RUN_DIR = re.compile(r"^(markovian|longcot)_s(\d+)$")
MATCH_POINTS = 5.0  # the "matched": final held-out accuracy within 5 points


def read_metrics(path: Path) -> dict[int, dict[str, float]]:
    """step -> every metric logged at that step (evaluation lines merged into the step's line)."""
    steps: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            steps.setdefault(int(row["step"]), {}).update(row)
    return steps


def load_runs(root: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """arm -> seed -> {"metrics": step -> metrics, "chunked": chunked_eval.json or None}."""
    runs: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in ARMS}
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        m = RUN_DIR.match(d.name)
        if not m or not (d / "metrics.jsonl").exists():
            continue
        chunked = d / "chunked_eval.json"
        runs[m.group(1)][int(m.group(2))] = {
            "metrics": read_metrics(d / "metrics.jsonl"),
            "finished": (d / "summary.txt").exists(),
            "chunked": json.loads(chunked.read_text()) if chunked.exists() else None}
    return runs


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values), "n": len(values)}


def accuracy_curve(seeds: dict[int, dict[str, Any]]) -> dict[int, dict[str, float]]:
    """step -> held-out accuracy over the seeds that evaluated at that step."""
    by_step: dict[int, list[float]] = {}
    for run in seeds.values():
        for step, m in run["metrics"].items():
            if "eval/avg@k" in m:
                by_step.setdefault(step, []).append(100.0 * m["eval/avg@k"])
    return {s: spread(v) | {"seeds": v} for s, v in sorted(by_step.items())}


def step_cost(arm: str, seeds: dict[int, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per training step, the mean over steps of each run, then mean and range over seeds."""
    per_run: dict[str, list[float]] = {}
    for run in seeds.values():
        steps = [m for m in run["metrics"].values() if "time/step" in m]
        if not steps:
            continue
        vals = {
            "rollout_s": [m["time/rollout"] for m in steps],
            "update_s": [m["time/update"] for m in steps],
            "step_s": [m["time/step"] for m in steps],
            "rows": [m["rollout/rows"] for m in steps],
            "thinking_tokens": [m.get(f"env/{arm}/thinking_tokens", m.get("rollout/response_tokens", 0.0))
                                for m in steps],
            "chunks": [m.get(f"env/{arm}/chunks", 1.0) for m in steps],
            "update_tokens": [m["perf/update_tokens_per_s"] * m["time/update"] for m in steps],
            "update_tflop": [m["perf/update_tflops"] * m["time/update"] for m in steps],
            "train_reward": [m["reward/total"] for m in steps],
            "steps": [float(len(steps))] * len(steps),
        }
        for k, v in vals.items():
            per_run.setdefault(k, []).append(statistics.fmean(v))
    return {k: spread(v) for k, v in per_run.items()}


def scaling(seeds: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget: accuracy and thinking tokens of this arm's final checkpoints, read both as LongCoT and as
    Markovian, averaged over the seeds that were evaluated."""
    evals = [r["chunked"] for r in seeds.values() if r["chunked"]]
    if not evals:
        return []
    out = []
    for i, row in enumerate(evals[0]["rows"]):
        entry: dict[str, Any] = {k: row[k] for k in ("budget", "chunk_size", "carryover", "max_chunks")}
        for mode in ("markovian", "longcot"):
            accs = [100.0 * e["rows"][i][mode]["acc"] for e in evals]
            toks = [e["rows"][i][mode]["tokens_mean"] for e in evals]
            entry[mode] = {"acc": spread(accs) | {"seeds": accs}, "tokens_mean": statistics.fmean(toks),
                           "eos_rate": statistics.fmean(e["rows"][i][mode]["eos_rate"] for e in evals)}
        entry["problems"] = evals[0]["problems"]
        entry["evaluated_seeds"] = len(evals)
        out.append(entry)
    return out


def summarize(runs: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arm in ARMS:
        seeds = runs[arm]
        out[arm] = {"seeds": sorted(seeds), "finished": sorted(s for s, r in seeds.items() if r["finished"]),
                    "accuracy": accuracy_curve(seeds), "cost": step_cost(arm, seeds), "scaling": scaling(seeds)}
    return out


def _fmt(s: dict[str, float] | None, digits: int = 1) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def markdown(summary: dict[str, Any], runs_dir: str) -> str:
    mk, lc = summary["markovian"], summary["longcot"]
    lines = ["# Delethink vs LongCoT in small (CPU)", "",
             f"Runs: `{runs_dir}`. Markovian seeds {mk['seeds']} (finished {mk['finished']}), LongCoT seeds "
             f"{lc['seeds']} (finished {lc['finished']}). Cells: mean over seeds [min, max].", "",
             "## Held-out accuracy over training (%, greedy)", "",
             "| step | Markovian | LongCoT | per seed (Markovian / LongCoT) |", "|---|---|---|---|"]
    for step in sorted(set(mk["accuracy"]) | set(lc["accuracy"])):
        a, b = mk["accuracy"].get(step), lc["accuracy"].get(step)
        seeds = " / ".join(", ".join(f"{x:.1f}" for x in (c["seeds"] if c else [])) or "-" for c in (a, b))
        lines.append(f"| {step} | {_fmt(a)} | {_fmt(b)} | {seeds} |")
    final = {arm: summary[arm]["accuracy"][max(summary[arm]["accuracy"])] for arm in ARMS
             if summary[arm]["accuracy"]}
    if len(final) == 2:
        d = final["markovian"]["mean"] - final["longcot"]["mean"]
        verdict = "within" if abs(d) <= MATCH_POINTS else "not within"
        lines += ["", f"Final held-out accuracy: Markovian {final['markovian']['mean']:.1f}, LongCoT "
                      f"{final['longcot']['mean']:.1f} (difference {d:+.1f} points, {verdict} {MATCH_POINTS:g})."]
    lines += ["", "## Cost per training step (mean over steps; mean [min, max] over seeds)", "",
              "| | Markovian | LongCoT | ratio M/L |", "|---|---|---|---|"]
    names = [("thinking_tokens", "thinking tokens per trace", 1), ("chunks", "chunks per trace", 2),
             ("rows", "training rows", 1), ("update_tokens", "tokens the update processes", 0),
             ("update_tflop", "update TFLOP (from row lengths)", 3), ("rollout_s", "rollout wall s", 1),
             ("update_s", "update wall s", 1), ("step_s", "step wall s", 1),
             ("train_reward", "training reward", 3), ("steps", "steps", 0)]
    for key, label, digits in names:
        a, b = mk["cost"].get(key), lc["cost"].get(key)
        ratio = f"{a['mean'] / b['mean']:.2f}" if a and b and b["mean"] else "-"
        lines.append(f"| {label} | {_fmt(a, digits)} | {_fmt(b, digits)} | {ratio} |")
    lines += ["", "## Test-time scaling: final checkpoints on longer held-out problems (%)", ""]
    if mk["scaling"] or lc["scaling"]:
        lines += ["| budget (I) | Markovian-trained, Markovian | LongCoT-trained, LongCoT | "
                  "Markovian-trained, LongCoT | LongCoT-trained, Markovian |", "|---|---|---|---|---|"]
        rows = {r["budget"]: r for r in mk["scaling"]}
        rows_l = {r["budget"]: r for r in lc["scaling"]}
        for budget in sorted(set(rows) | set(rows_l)):
            m, l_ = rows.get(budget), rows_l.get(budget)
            cell = lambda r, mode: (f"{_fmt(r[mode]['acc'])} ({r[mode]['tokens_mean']:.0f} tok)" if r else "-")
            i = (m or l_)["max_chunks"]
            lines.append(f"| {budget} ({i}) | {cell(m, 'markovian')} | {cell(l_, 'longcot')} | "
                         f"{cell(m, 'longcot')} | {cell(l_, 'markovian')} |")
        any_row = (mk["scaling"] or lc["scaling"])[0]
        lines += ["", f"{any_row['problems']} problems per budget, greedy; evaluated seeds: Markovian "
                      f"{mk['scaling'][0]['evaluated_seeds'] if mk['scaling'] else 0}, LongCoT "
                      f"{lc['scaling'][0]['evaluated_seeds'] if lc['scaling'] else 0}. (tok) = mean thinking tokens."]
    else:
        lines.append("Not run.")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"markovian": "tab:blue", "longcot": "tab:orange"}
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm in ARMS:
        acc = summary[arm]["accuracy"]
        if acc:
            xs = sorted(acc)
            ax[0].plot(xs, [acc[s]["mean"] for s in xs], "o-", color=colors[arm], label=LABEL[arm])
            ax[0].fill_between(xs, [acc[s]["min"] for s in xs], [acc[s]["max"] for s in xs], color=colors[arm],
                               alpha=0.2)
    ax[0].set(xlabel="RL step", ylabel="held-out accuracy (%)", title="Held-out accuracy (mean, min-max seeds)")
    ax[0].legend()

    keys = [("update_tokens", "update tokens / 1000", 1e-3), ("update_tflop", "update TFLOP", 1.0),
            ("step_s", "step wall s / 100", 1e-2)]
    width = 0.38
    for j, arm in enumerate(ARMS):
        cost = summary[arm]["cost"]
        vals = [cost[k]["mean"] * s if k in cost else 0.0 for k, _, s in keys]
        errs = [[(cost[k]["mean"] - cost[k]["min"]) * s if k in cost else 0.0 for k, _, s in keys],
                [(cost[k]["max"] - cost[k]["mean"]) * s if k in cost else 0.0 for k, _, s in keys]]
        ax[1].bar([i + (j - 0.5) * width for i in range(len(keys))], vals, width, yerr=errs, color=colors[arm],
                  label=LABEL[arm], capsize=3)
    ax[1].set_xticks(range(len(keys)), [label for _, label, _ in keys])
    ax[1].set(title="Cost per RL step (mean over steps and seeds)")
    ax[1].legend()

    for arm in ARMS:
        for mode, style in (("markovian", "o-"), ("longcot", "s--")):
            rows = summary[arm]["scaling"]
            if rows:
                ax[2].plot([r["budget"] for r in rows], [r[mode]["acc"]["mean"] for r in rows], style,
                           color=colors[arm], alpha=1.0 if mode == arm else 0.45,
                           label=f"{LABEL[arm].split()[0]}-trained, {mode} inference")
    ax[2].set(xlabel="thinking budget at test time (tokens)", ylabel="accuracy (%)", xscale="log",
              title="Test-time scaling, longer held-out problems")
    budgets = sorted({r["budget"] for arm in ARMS for r in summary[arm]["scaling"]})
    if budgets:
        ax[2].set_xticks(budgets, [str(b) for b in budgets])
        ax[2].minorticks_off()
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", required=True, help="directory holding <arm>_s<seed>/ run directories")
    ap.add_argument("--out", required=True, help="output prefix: writes OUT.md, OUT.png, OUT.json")
    a = ap.parse_args(argv)
    runs = load_runs(Path(a.runs))
    if not any(runs.values()):
        raise SystemExit(f"--runs: no markovian_s*/ or longcot_s*/ run with metrics.jsonl in {a.runs}")
    summary = summarize(runs)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(summary, a.runs))
    plot(summary, out.with_suffix(".png"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
