"""The MASH comparison's report (launch/mash_small_cpu.sh runs the training and evaluation stages first):
one table (markdown + json) and one PNG from a runs directory.

Per arm and seed, from `<arm>_s<seed>/eval.json` (`rlreason eval --abstention` of the final checkpoint on the
held-out split, split by question type) and `<arm>_s<seed>/metrics.jsonl` (the training run):

    acc                 held-out EM with the search tool (all questions; must-search; no-search-needed)
    searches/q          searches per question with the tool, on must-search and on no-search-needed questions
    tool productivity   accuracy / (1 + searches/question), MASH's TP
    abstention          with the tool removed, a search attempt is an abstention; the QA world knows which
                        questions are never answerable without the tool (must-search) and which always are
                        (no-search-needed: the question states the facts), so Abs(never) = abstention on
                        must-search, Abs(always) = on no-search-needed, delta = their difference (MASH's
                        measure, higher is better), precision = right / answered with the tool removed
    closed-book Abs     the same read-off with MASH's own answerability estimate (closed-book samples,
                        `abstention/abs_never|abs_always`, n_never / n_always questions)

The PNG plots searches per question of each training step's rollouts, must-search and no-search-needed
panels, one line per arm and seed.

    python benchmarks/mash_comparison.py report --runs /work/runs_mash --out benchmarks/results/mash_small_cpu

`--include EARLIER.json` adds the arm/seed runs of an earlier report (its .json) that the runs directory does
not hold, e.g. the seeds of a launch whose run directories are gone. Every arm of a seed starts from that
seed's warm start, so the comparison between arms stays within one warm start; when the earlier launch's warm
start read off differently (the same command retrained on CPU is not bit-reproducible), the table shows one
warm-start row per launch, each with the seeds it started.
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
    "em": "(a) Search-R1, EM only",
    "mash08": "(b) MASH exp, lambda 0.8",
    "mash05": "(b) MASH exp, lambda 0.5",
    "otc": "(c) OTC",
}
TYPES = ("must_search", "no_search")
ENV = "env/pay_per_search/"
COLUMNS = [  # (header, key in the flat per-run record)
    ("acc", "acc"), ("acc must", "acc/must_search"), ("acc no-search", "acc/no_search"),
    ("searches/q must", "searches/must_search"), ("searches/q no-search", "searches/no_search"),
    ("TP", "tool_productivity"),
    ("Abs(never) = must", "abs/must_search"), ("Abs(always) = no-search", "abs/no_search"), ("delta", "delta"),
    ("precision no tool", "precision"),
    ("closed-book Abs(never)", "cb/abs_never"), ("closed-book Abs(always)", "cb/abs_always"),
]


def _f(v: Any) -> float:
    return math.nan if v is None else float(v)


def flat(ev: dict[str, Any]) -> dict[str, float]:
    """The table's numbers from one `rlreason eval --abstention` result (env.args.split_by = type)."""
    p = "abstention/by_type/"
    out = {"acc": _f(ev.get("abstention/tool/accuracy")),
           "tool_productivity": _f(ev.get("abstention/tool/tool_productivity")),
           "precision": _f(ev.get("abstention/no_tool/precision")),
           "cb/abs_never": _f(ev.get("abstention/abs_never")), "cb/abs_always": _f(ev.get("abstention/abs_always")),
           "cb/n_never": _f(ev.get("abstention/n_never")), "cb/n_always": _f(ev.get("abstention/n_always"))}
    for t in TYPES:
        out[f"acc/{t}"] = _f(ev.get(f"{p}{t}/accuracy"))
        out[f"searches/{t}"] = _f(ev.get(f"{p}{t}/searches"))
        out[f"abs/{t}"] = _f(ev.get(f"{p}{t}/abstention_rate"))
        out[f"precision/{t}"] = _f(ev.get(f"{p}{t}/precision"))
    out["delta"] = out["abs/must_search"] - out["abs/no_search"]
    return out


def history(run_dir: Path) -> list[dict[str, float]]:
    """Per training step: searches/question of the step's rollouts per question type, reward and EM."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        r = json.loads(line) if line.strip() else {}
        if "reward/total" not in r:
            continue
        out.append({"step": r["step"], "reward": r["reward/total"], "em": r.get("reward/qa_em", math.nan),
                    **{f"searches/{t}": r.get(f"{ENV}{t}/searches", math.nan) for t in TYPES}})
    return out


def collect(runs: Path) -> dict[str, Any]:
    arms: dict[str, dict[int, dict[str, Any]]] = {a: {} for a in ARMS}
    for d in sorted(runs.iterdir()):
        m = re.fullmatch(r"(" + "|".join(ARMS) + r")_s(\d+)", d.name)
        if not (m and d.is_dir()):
            continue
        ev = json.loads((d / "eval.json").read_text()) if (d / "eval.json").exists() else None
        arms[m[1]][int(m[2])] = {"final": flat(ev) if ev else None, "history": history(d), "eval": ev}
    warm_path = runs / "warm_eval.json"
    warm = json.loads(warm_path.read_text()) if warm_path.exists() else None
    return {"arms": arms, "warm": {"final": flat(warm), "eval": warm} if warm else None}


class ReportError(Exception):
    """A report input that cannot be used (printed as one line, exit status 2)."""


def include(data: dict[str, Any], earlier: Path) -> list[str]:
    """Add the runs of an earlier report (`report`'s .json) that `data` lacks; returns "arm seed" of each added.
    An earlier warm start whose read-off differs from this directory's is kept beside it (`earlier_warm`)."""
    try:
        old = json.loads(earlier.read_text())
        old_arms, old_warm = old["arms"], old["warm"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReportError(f"{earlier}: not a mash_comparison report .json ({type(e).__name__}: {e})") from None
    added = []
    for arm, seeds in old_arms.items():
        if arm not in ARMS:
            raise ReportError(f"{earlier}: unknown arm '{arm}' (known: {', '.join(ARMS)})")
        for seed, rec in seeds.items():
            if int(seed) not in data["arms"][arm]:
                data["arms"][arm][int(seed)] = rec
                added.append(f"{arm} {seed}")
    here = data["warm"]["eval"] if data["warm"] else None
    if old_warm is not None and old_warm.get("eval") != here:
        data.setdefault("earlier_warm", []).append(
            {**old_warm, "file": str(earlier), "seeds": sorted({int(a.split()[1]) for a in added})})
    return added


def _fmt(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.3f}"


def _row(label: str, seed: str, steps: str, rec: dict[str, float] | None) -> str:
    cells = [_fmt(rec[k]) if rec else "n/a" for _, k in COLUMNS]
    return f"| {label} | {seed} | {steps} | " + " | ".join(cells) + " |"


def _own_seeds(data: dict[str, Any]) -> str:
    """The seeds the runs directory's own warm start began (those not taken from an earlier report)."""
    theirs = {s for w in data.get("earlier_warm", []) for s in w["seeds"]}
    return ", ".join(map(str, sorted({int(s) for runs in data["arms"].values() for s in runs} - theirs)))


def table(data: dict[str, Any]) -> str:
    rows = ["| arm | seed | RL steps | " + " | ".join(h for h, _ in COLUMNS) + " |",
            "|" + "---|" * (len(COLUMNS) + 3)]
    earlier = data.get("earlier_warm", [])
    if data["warm"]:
        rows.append(_row("warm start (SFT)", _own_seeds(data) if earlier else "-", "0", data["warm"]["final"]))
    for w in earlier:
        rows.append(_row("warm start (SFT), earlier launch", ", ".join(map(str, w["seeds"])), "0", w["final"]))
    for arm, label in ARMS.items():
        finals = []
        for seed, r in sorted(data["arms"][arm].items()):
            rows.append(_row(label, str(seed), str(len(r["history"])), r["final"]))
            if r["final"]:
                finals.append(r["final"])
        if len(finals) > 1:
            for name, fn in (("mean", statistics.fmean), ("min", min), ("max", max)):
                agg = {k: (math.nan if any(math.isnan(f[k]) for f in finals) else fn([f[k] for f in finals]))
                       for _, k in COLUMNS}
                rows.append(_row(label, name, "", agg))
    return "\n".join(rows) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    styles = ["-", "--", ":", "-."]
    for ax, t in zip(axes, TYPES):
        for ci, (arm, label) in enumerate(ARMS.items()):
            for si, (seed, r) in enumerate(sorted(data["arms"][arm].items())):
                h = r["history"]
                if not h:
                    continue
                dx = (ci - 1.5) * 0.05  # a small offset per arm: equal counts stay visible, not hidden under one line
                ax.plot([x["step"] + dx for x in h], [x[f"searches/{t}"] for x in h], styles[si % 4],
                        marker="osD^"[ci % 4], ms=4, color=f"C{ci}", alpha=0.8, label=f"{label}, seed {seed}")
        if data["warm"]:
            own = f" of seed(s) {_own_seeds(data)}" if data.get("earlier_warm") else ""
            ax.axhline(data["warm"]["final"][f"searches/{t}"], color="k", lw=0.8, alpha=0.5,
                       label=f"warm start{own}, held-out")
        for w in data.get("earlier_warm", []):
            ax.axhline(w["final"][f"searches/{t}"], color="k", ls="--", lw=0.8, alpha=0.5,
                       label=f"warm start of seed(s) {', '.join(map(str, w['seeds']))}, held-out")
        ax.set_title({"must_search": "must-search questions (facts only in the corpus)",
                      "no_search": "no-search-needed questions (facts in the question)"}[t], fontsize=9)
        ax.set_xlabel("RL step (mean searches over the step's rollouts of this type)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("searches per question")
    axes[1].legend(fontsize=6, loc="best")
    fig.suptitle("MASH comparison on the QA world (SmolLM2-135M, SFT warm start): searches per question during RL",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(runs: Path, out: Path, earlier: list[Path] = ()) -> str:
    data = collect(runs)
    for e in earlier:
        include(data, e)
    text = table(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    plot(data, out.with_suffix(".png"))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/mash_comparison.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report", help="one table (.md, .json) and one PNG from a launch's runs directory")
    r.add_argument("--runs", required=True)
    r.add_argument("--out", required=True, help="path prefix: .md, .json and .png are written")
    r.add_argument("--include", action="append", default=[], metavar="EARLIER.json",
                   help="also the arm/seed runs of an earlier report of the same warm start (repeatable)")
    a = ap.parse_args(argv)
    try:
        print(report(Path(a.runs), Path(a.out), [Path(p) for p in a.include]))
    except ReportError as e:
        print(f"mash_comparison: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
