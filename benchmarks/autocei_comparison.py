"""The Auto-CEI comparison's steps that are not a training run (launch/autocei_small_cpu.sh runs them all):

    rww-data   the refuse-when-wrong baseline's SFT lines (R-Tuning style, rlreason.data.refuse_when_wrong):
               the warm start answers the very questions an expert-iteration arm of the same seed trains on
               (its prompt sampler, rounds x questions_per_round, samples_per_question answers each, the
               rollout temperature); every wrong answer's final box becomes \\boxed{I don't know}, its
               reasoning kept; correct answers and the model's own refusals pass unchanged
    eval       a model's held-out statistics exactly as an expert-iteration run measures them (eval.k
               answers per problem, seed + 7, eval.temperature), split by env.args.split_by
    report     one table (markdown + json) and one PNG (precision vs refusal rate, one point per round per
               arm) from the runs' metrics.jsonl and the eval outputs

    python benchmarks/autocei_comparison.py rww-data configs/autocei_small_cpu.yaml model.name=WARM seed=0 \\
        output_dir=/tmp/x --out rww_s0.jsonl
    python benchmarks/autocei_comparison.py eval configs/autocei_small_cpu.yaml model.name=RWW_MODEL seed=0 \\
        output_dir=/tmp/x --out rww_s0_eval.json
    python benchmarks/autocei_comparison.py report --runs /work/runs_autocei --out benchmarks/results/autocei_small_cpu
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any

ARMS = {  # run-directory prefix -> label, in the table's order
    "ei": "(a) expert iteration, no IDK",
    "rww": "(b) refuse-when-wrong SFT",
    "cei": "(c) Auto-CEI, curriculum",
    "frozen": "(d) Auto-CEI, c1 frozen",
}
GROUPS = ("", "solvable/", "unsolvable/")


def _load(config: str, overrides: list[str], split: str = "eval"):
    from rlreason.config import load_config
    from rlreason.eval_cli import load_for_eval

    cfg = load_config(config, overrides)
    run, rows = load_for_eval(cfg, None, split)
    return cfg, run, rows


def rww_data(config: str, overrides: list[str], out: Path) -> dict[str, Any]:
    from rlreason.data.refuse_when_wrong import refuse_when_wrong
    from rlreason.trainer.loop import env_metric_means
    from rlreason.trainer.rollout_phase import as_example, run_groups

    cfg, run, _ = _load(config, overrides)
    e = cfg.ei
    examples = [as_example(run.train_rows[i])
                for _ in range(e.rounds) for i in run.sampler.next_indices(e.questions_per_round)]
    groups, errors = run_groups(run.engine, run.env, run.rubric, examples, e.samples_per_question,
                                seed=cfg.seed * 1_000_003 + 10_007)
    lines, episodes = [], []
    for ex, g in zip(examples, groups):
        texts = [ep.transcript.removesuffix("\nQ:") for ep in g]  # stopped at the next example's start
        ok = [bool(ep.metrics["correct"]) or bool(ep.metrics["refused"]) for ep in g]  # refusals stay as they are
        for ep, text in zip(g, refuse_when_wrong(texts, ok)):
            lines.append({"id": ex["id"], "prompt": run.env.prompt(ex), "completion": text})
        episodes += g
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    p = f"env/{run.env.name}/"
    means = env_metric_means(run.env.name, episodes)
    stats = run.env.summarize({k[len(p):]: v for k, v in means.items()})
    run.engine.close()
    res = {"lines": len(lines), "questions": len(examples), "env_errors": errors,
           "rewritten": sum(not (ep.metrics["correct"] or ep.metrics["refused"]) for ep in episodes),
           **{f"samples/{k}": v for k, v in stats.items()}}
    out.with_suffix(".stats.json").write_text(json.dumps(res, indent=1) + "\n")
    return res


def evaluate(config: str, overrides: list[str], out: Path) -> dict[str, Any]:
    from rlreason.rollout import SamplingConfig
    from rlreason.trainer.expert_iteration import measure

    cfg, run, rows = _load(config, overrides)
    e = cfg.eval
    sampling = SamplingConfig(temperature=e.temperature, top_p=run.engine.sampling.top_p,
                              top_k=run.engine.sampling.top_k)
    _, res = measure(run, rows, k=e.k, seed=cfg.seed + 7, sampling=sampling)
    run.engine.close()
    res = {"model": cfg.model.name, "seed": cfg.seed, **res}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    return res


# --- report ----------------------------------------------------------------------------------------------

def _history(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def ei_run(run_dir: Path, env: str = "curriculum_ei") -> dict[str, Any]:
    """Held-out initial/final, the per-round (training samples) points and the c1 path of one EI run."""
    h = _history(run_dir)
    p = f"env/{env}/"
    evals = [r for r in h if "eval/precision" in r]
    rounds = [{"round": r["step"], "precision": r[p + "precision"], "refusal_rate": r[p + "refusal_rate"]}
              for r in h if "reward/total" in r and p + "precision" in r]
    c1 = [r[p + "c1"] for r in h if p + "c1" in r]  # after the initial measurement, then after every round
    return {"initial": evals[0] if evals else None, "final": evals[-1] if len(evals) > 1 else None,
            "rounds": rounds, "c1": c1}


def _cells(s: dict[str, Any] | None) -> list[float]:
    if s is None:
        return [math.nan] * 10
    g = lambda k: float(s.get(f"eval/{k}", math.nan))  # noqa: E731
    return [g("accuracy"), g("precision"), g("refusal_rate"), g("f"),
            g("solvable/accuracy"), g("solvable/precision"), g("solvable/refusal_rate"),
            g("unsolvable/accuracy"), g("unsolvable/refusal_rate"), g("unsolvable/steps_before_refusal")]


HEAD = ["acc", "prec", "refusal", "f", "solv acc", "solv prec", "solv refusal", "unsolv acc", "unsolv refusal",
        "unsolv steps before IDK"]


def collect(runs: Path) -> dict[str, Any]:
    arms: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in ARMS}
    warm = []
    for d in sorted(runs.iterdir()):
        m = re.fullmatch(r"(ei|cei|frozen)_s(\d+)", d.name)
        if m and (d / "metrics.jsonl").exists():
            r = ei_run(d)
            arms[m[1]][int(m[2])] = r
            if r["initial"] is not None:
                warm.append(r["initial"])
        m = re.fullmatch(r"rww_s(\d+)_eval\.json", d.name)
        if m:
            final = json.loads(d.read_text())
            st = runs / f"rww_s{m[1]}.stats.json"
            stats = json.loads(st.read_text()) if st.exists() else {}
            rounds = [{"round": 0, "precision": stats["samples/precision"],
                       "refusal_rate": stats["samples/refusal_rate"]}] if stats else []
            arms["rww"][int(m[1])] = {"initial": None, "final": final, "rounds": rounds, "c1": [],
                                      "rewritten": stats.get("rewritten"), "lines": stats.get("lines")}
    w = runs / "warm_eval.json"  # the launch script's measurement of the warm start, before any arm
    if w.exists():
        warm.insert(0, json.loads(w.read_text()))
    return {"arms": arms, "warm": warm}


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def table(data: dict[str, Any]) -> str:
    rows = ["| arm | seed | rounds | " + " | ".join(HEAD) + " | c1 path |", "|" + "---|" * (len(HEAD) + 4)]
    for i, w in enumerate(data["warm"][:1]):
        rows.append("| warm start | - | 0 | " + " | ".join(map(_fmt, _cells(w))) + " | |")
    for arm, label in ARMS.items():
        per_seed = data["arms"][arm]
        cells = []
        for seed, r in sorted(per_seed.items()):
            c = _cells(r["final"])
            cells.append(c)
            # (a) scores every refusal -1 whatever c1 is: its c1 is not a setting of the run
            path = " -> ".join(f"{x:.2f}" for x in r["c1"]) if r["c1"] and arm in ("cei", "frozen") else ""
            rounds = "1 (SFT)" if arm == "rww" else str(len(r["rounds"]))
            rows.append(f"| {label} | {seed} | {rounds} | " + " | ".join(map(_fmt, c)) + f" | {path} |")
        if len(cells) > 1:
            mean = [statistics.fmean(col) if not any(math.isnan(x) for x in col) else math.nan
                    for col in zip(*cells)]
            rows.append(f"| {label} | mean | | " + " | ".join(map(_fmt, mean)) + " | |")
    return "\n".join(rows) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    markers = ["o", "s", "^", "D"]
    for ci, (arm, label) in enumerate(ARMS.items()):
        for si, (seed, r) in enumerate(sorted(data["arms"][arm].items())):
            xs = [p["refusal_rate"] for p in r["rounds"]]
            ys = [p["precision"] for p in r["rounds"]]
            ax.plot(xs, ys, "-", marker=markers[si % 4], color=f"C{ci}", alpha=0.6, ms=5,
                    label=f"{label}, seed {seed}: rounds" if si == 0 else None)
            for p in r["rounds"]:
                ax.annotate(str(p["round"]), (p["refusal_rate"], p["precision"]), fontsize=6, color=f"C{ci}",
                            xytext=(2, 2), textcoords="offset points")
            if r["final"] is not None:
                ax.scatter([r["final"]["eval/refusal_rate"]], [r["final"]["eval/precision"]], marker="*", s=180,
                           color=f"C{ci}", edgecolor="k", zorder=4,
                           label=f"{label}: held-out final" if si == 0 else None)
    for w in data["warm"][:1]:
        ax.scatter([w["eval/refusal_rate"]], [w["eval/precision"]], marker="P", s=160, color="k", zorder=4,
                   label="warm start: held-out")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("refusal rate")
    ax.set_ylabel("precision (correct / answered)")
    ax.set_title("Auto-CEI comparison (SmolLM2-135M, cei_mixture, 30% unsolvable)\n"
                 "lines: each round's training samples (number = round); stars: held-out after training",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: Path, out: Path) -> str:
    data = collect(runs)
    text = table(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    plot(data, out.with_suffix(".png"))
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python benchmarks/autocei_comparison.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("rww-data", "eval"):
        s = sub.add_parser(name)
        s.add_argument("config")
        s.add_argument("overrides", nargs="*")
        s.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("--runs", required=True)
    r.add_argument("--out", required=True, help="path prefix: .md, .json and .png are written")
    a = ap.parse_args(argv)
    if a.cmd == "rww-data":
        print(json.dumps(rww_data(a.config, a.overrides, Path(a.out))))
    elif a.cmd == "eval":
        print(json.dumps(evaluate(a.config, a.overrides, Path(a.out))))
    else:
        print(report(Path(a.runs), Path(a.out)))


if __name__ == "__main__":
    sys.exit(main())
