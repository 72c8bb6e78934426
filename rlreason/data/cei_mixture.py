"""A solvable/unsolvable arithmetic mixture for Auto-CEI (arXiv 2410.07627) at SmolLM2-135M scale.

Auto-CEI's curriculum moves c1, the number of reasoning steps a refusal must show. That only matters
when the steps before "I don't know" vary, so every problem here has a multi-line worked solution whose
length depends on the problem:

- **solvable**: a chain of k one-digit additions, k drawn from [min_terms - 1, max_terms - 1], one line
  per addition with the running sum written out ("Calculate 3 + 4 + 5." ->
  `s1 = 3 + 4 = 7` / `s2 = 7 + 5 = 12`). One-digit sums are within a 135M model's reach (about half
  solved at T = 1 from a prompt alone; an SFT warm start on these solutions does the rest).
- **unsolvable**: an a_digits-digit x b-digit multiplication, b drawn from [min_b_digits, max_b_digits],
  one line per partial product and one for their sum ("Calculate 347 * 56." -> `p1 = 347 * 6 = 2082` /
  `p2 = 347 * 50 = 17350` / `s = 2082 + 17350 = 19432`). A 135M model solves none of these.

A worked solution is its reasoning lines (`info.solution`) followed by one answer line `\\boxed{answer}`.
`info.steps` is the number of reasoning lines: exactly what the `lines` step counter of the curriculum_ei
environment counts as d for a refusal written in place of the answer line (the answer line itself is
counted only for answered responses). Rows have the standard columns (rlreason.data.schema); `info`
also carries `difficulty` (solvable | unsolvable) and `split`.

Splits: problems are drawn in a seeded order and each distinct problem goes to the test split with
probability `test_fraction` (a hash of the problem and the seed decides, so the same problem is in the
same split whatever `size` is); no problem is in both splits, none twice in one.

    rlreason data source=cei_mixture split=train size=8
    python -m rlreason.data.cei_mixture sft --out runs/cei/warm_start.jsonl --size 500 \
        --config configs/curriculum_ei_mixture_cpu.yaml    # {id, prompt, response}, solvable rows only
    ... sft ... --idk-fraction 0.3     # also the unsolvable rows: 30% of them refuse after k lines

Warm start that can say "I don't know": Auto-CEI initialises c1 and c2 from the initial model's refusals and
expert iteration can only keep what the model samples, so an initial model that never refuses leaves the
curriculum nothing to work on (the paper starts from instruct models that do refuse at times). With
`idk_fraction` the SFT rows also cover the unsolvable rows: that share of them (a seeded choice, exactly
round(n x idk_fraction) rows) is written as an attempt that stops after k of its reasoning lines, k uniform
on 1..steps, and answers `\\boxed{I don't know}` (d = k for the `lines` counter); the rest are full worked
attempts. Solvable rows stay full worked solutions.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from pathlib import Path
from typing import Any

from datasets import Dataset

from rlreason.data.schema import loads_info, make_dataset, make_row
from rlreason.registry import ConfigError
from rlreason.search.corpus import write_jsonl

SOURCE = "cei_mixture"
SPLITS = ("train", "test")
DIFFICULTIES = ("solvable", "unsolvable")


def _rng(*parts: Any) -> random.Random:
    """Seeded from a sha256 of its parts: independent of PYTHONHASHSEED."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _in_test(problem: str, seed: int, test_fraction: float) -> bool:
    digest = hashlib.sha256(f"cei_mixture-split:{seed}:{problem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64 < test_fraction


def addition_chain(terms: list[int]) -> tuple[str, list[str], int]:
    """(question, reasoning lines, answer) of a sum of one-digit terms: line i adds term i + 1 to the
    running sum, `s{i} = {running} + {term} = {new running}`."""
    lines, total = [], terms[0]
    for i, t in enumerate(terms[1:], 1):
        lines.append(f"s{i} = {total} + {t} = {total + t}")
        total += t
    return f"Calculate {' + '.join(map(str, terms))}.", lines, total


def long_multiplication(a: int, b: int) -> tuple[str, list[str], int]:
    """(question, reasoning lines, answer) of a * b: one partial product per digit of b, units first,
    `p{j} = {a} * {digit x 10^(j-1)} = {product}`, then `s = p1 + p2 + ... = {a * b}` when b has more than
    one digit."""
    parts, lines = [], []
    for j, d in enumerate(reversed(str(b)), 1):
        m = int(d) * 10 ** (j - 1)
        parts.append(a * m)
        lines.append(f"p{j} = {a} * {m} = {a * m}")
    if len(parts) > 1:
        lines.append(f"s = {' + '.join(map(str, parts))} = {sum(parts)}")
    return f"Calculate {a} * {b}.", lines, a * b


def _check_range(lo: int, hi: int, what: str, minimum: int) -> None:
    for name, v in ((f"min_{what}", lo), (f"max_{what}", hi)):
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{name}: must be an integer >= {minimum}, got {v!r}.")
    if lo > hi:
        raise ConfigError(f"min_{what}: {lo} is above max_{what} {hi}.")


def _draw(difficulty: str, rng: random.Random, min_terms: int, max_terms: int, a_digits: int,
          min_b_digits: int, max_b_digits: int) -> tuple[str, list[str], int]:
    if difficulty == "solvable":
        return addition_chain([rng.randint(1, 9) for _ in range(rng.randint(min_terms, max_terms))])
    b_digits = rng.randint(min_b_digits, max_b_digits)
    return long_multiplication(rng.randint(10 ** (a_digits - 1), 10 ** a_digits - 1),
                               rng.randint(10 ** (b_digits - 1), 10 ** b_digits - 1))


def build_cei_mixture(split: str = "train", size: int = 200, unsolvable_fraction: float = 0.5,
                      min_terms: int = 2, max_terms: int = 5, a_digits: int = 3, min_b_digits: int = 2,
                      max_b_digits: int = 2, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """`size` rows of `split`: round(size x unsolvable_fraction) multiplications, the rest addition chains
    of min_terms..max_terms one-digit terms (min_terms - 1 .. max_terms - 1 reasoning lines), all distinct,
    in a seeded order. Raises a ConfigError naming `size` when the split has too few distinct problems.
    Chain lengths are drawn uniformly, but a repeated problem is redrawn, so when `size` nears the number of
    distinct short chains (81 two-term sums, 729 three-term ones) longer chains take the surplus."""
    if split not in SPLITS:
        raise ConfigError(f"split: '{split}' is not allowed. Allowed: {', '.join(SPLITS)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size: must be a positive integer, got {size!r}.")
    if not 0.0 <= unsolvable_fraction <= 1.0:
        raise ConfigError(f"unsolvable_fraction: must be in [0, 1], got {unsolvable_fraction}.")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction: must be in (0, 1), got {test_fraction}.")
    _check_range(min_terms, max_terms, "terms", 2)
    _check_range(min_b_digits, max_b_digits, "b_digits", 1)
    if isinstance(a_digits, bool) or not isinstance(a_digits, int) or a_digits < 1:
        raise ConfigError(f"a_digits: must be an integer >= 1, got {a_digits!r}.")
    n_unsolvable = round(size * unsolvable_fraction)
    rows: list[tuple[str, str, list[str], int]] = []
    for difficulty, n in (("solvable", size - n_unsolvable), ("unsolvable", n_unsolvable)):
        rng = _rng(SOURCE, seed, difficulty, min_terms, max_terms, a_digits, min_b_digits, max_b_digits)
        seen: set[str] = set()
        misses = 0
        while len(seen) < n:
            q, lines, ans = _draw(difficulty, rng, min_terms, max_terms, a_digits, min_b_digits, max_b_digits)
            if q in seen or _in_test(q, seed, test_fraction) != (split == "test"):
                misses += 1
                if misses > 200 * n + 10_000:
                    raise ConfigError(f"size: {n} distinct {difficulty} problems asked of split '{split}', "
                                      f"which has fewer (found {len(seen)}); widen the ranges or lower size.")
                continue
            seen.add(q)
            rows.append((difficulty, q, lines, ans))
    _rng(SOURCE, "order", seed, split, size).shuffle(rows)
    return make_dataset([
        make_row(f"{SOURCE}/{seed}/{split}/{i}", q, str(ans), SOURCE,
                 {"difficulty": difficulty, "steps": len(lines), "solution": "\n".join(lines), "split": split})
        for i, (difficulty, q, lines, ans) in enumerate(rows)])


def worked_solution(row: dict[str, Any]) -> str:
    """The full worked response of a row: its reasoning lines, then `\\boxed{answer}` on its own line."""
    return f"{loads_info(row['info'])['solution']}\n\\boxed{{{row['answer']}}}"


def refusal_attempt(row: dict[str, Any], k: int) -> str:
    """An attempt that gives up: the first k reasoning lines of the row's worked solution, then
    `\\boxed{I don't know}` on its own line (the `lines` step counter reads d = k)."""
    from rlreason.rewards.idk import IDK_ANSWER

    lines = loads_info(row["info"])["solution"].split("\n")
    if not 0 <= k <= len(lines):
        raise ValueError(f"k = {k} reasoning lines asked of a solution with {len(lines)}")
    return "\n".join(lines[:k] + [IDK_ANSWER])


def _check_idk_fraction(idk_fraction: float | None) -> None:
    if idk_fraction is not None and (isinstance(idk_fraction, bool) or not isinstance(idk_fraction, (int, float))
                                     or not 0.0 <= idk_fraction <= 1.0):
        raise ConfigError(f"idk_fraction: must be in [0, 1] or null (solvable rows only), got {idk_fraction!r}.")


def sft_rows(ds: Any, env_args: dict[str, Any] | None = None, idk_fraction: float | None = None,
             seed: int = 0) -> list[dict[str, Any]]:
    """Warm-start SFT rows {id, prompt, response} of `ds`: `prompt` is what the curriculum_ei environment
    with `env_args` shows the model (a string for style raw, chat messages otherwise), `response` the text
    the model should continue the prompt with (the format of rlreason.probes.repair.sft; encode the prompt
    with the environment's `encode_prompt`). Solvable rows: the worked solution. Unsolvable rows only when
    `idk_fraction` is given: round(n_unsolvable x idk_fraction) of them, chosen with `seed`, refuse after
    k lines (`refusal_attempt`, k uniform on 1..steps), the others are full worked attempts. Rows keep the
    order of `ds`."""
    from rlreason.environments.curriculum_ei import CurriculumEI

    _check_idk_fraction(idk_fraction)
    env = CurriculumEI(None, **(env_args or {}))
    unsolvable = [i for i, r in enumerate(ds) if loads_info(r["info"])["difficulty"] == "unsolvable"]
    rng = _rng(SOURCE, "idk", seed, len(ds))
    refuse = set(rng.sample(unsolvable, round(len(unsolvable) * idk_fraction))) if idk_fraction else set()
    out = []
    for i, r in enumerate(ds):
        if loads_info(r["info"])["difficulty"] == "solvable":
            response = worked_solution(r)
        elif idk_fraction is None:
            continue
        elif i in refuse:
            response = refusal_attempt(r, rng.randint(1, loads_info(r["info"])["steps"]))
        else:
            response = worked_solution(r)
        out.append({"id": r["id"], "prompt": env.prompt(r), "response": response})
    return out


def write_sft(out: str | Path, *, env_args: dict[str, Any] | None = None, idk_fraction: float | None = None,
              **build: Any) -> dict[str, Any]:
    """Build the mixture (`build`: build_cei_mixture's arguments) and write its SFT jsonl (`sft_rows`)."""
    rows = sft_rows(build_cei_mixture(**build), env_args, idk_fraction, build.get("seed", 0))
    write_jsonl(Path(out), rows)
    from rlreason.rewards.idk import IDK_ANSWER
    return {"rows": len(rows), "refusals": sum(r["response"].endswith(IDK_ANSWER) for r in rows), "path": str(out)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlreason.data.cei_mixture")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sft", help="write warm-start SFT lines ({id, prompt, response}) of the solvable rows "
                                   "(and, with --idk-fraction, of the unsolvable ones)")
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="train", choices=SPLITS)
    s.add_argument("--size", type=int, default=500, help="rows of the mixture; the solvable share is written")
    s.add_argument("--unsolvable-fraction", type=float, help="default: the config's, else 0.5")
    s.add_argument("--seed", type=int, help="default: the config's, else 0")
    s.add_argument("--idk-fraction", type=float, help="also write the unsolvable rows, this share of them as "
                                                      "attempts that stop after k lines with \\boxed{I don't know} "
                                                      "(default: solvable rows only)")
    s.add_argument("--config", help="take the data.train mixture settings and the curriculum_ei env args "
                                     "(template, style, ...) from this config")
    a = ap.parse_args(argv)
    build: dict[str, Any] = {}
    env_args: dict[str, Any] = {}
    where = ""
    try:
        if a.config:
            from rlreason.config import load_config
            from rlreason.data.builders import _check_keys
            where = f"{a.config}: "
            cfg = load_config(a.config)
            spec = dict(cfg.data.train)
            if spec.get("source") != SOURCE:
                raise ConfigError(f"data.train.source: must be {SOURCE} for its SFT rows, got {spec.get('source')!r}.")
            _check_keys(spec, "data.train")
            env_args = dict(cfg.env.args)
            build = {k: v for k, v in spec.items() if k not in ("source", "limit")}
            where += "data.train."
        build.update(split=a.split, size=a.size)
        build.update({k: v for k, v in (("unsolvable_fraction", a.unsolvable_fraction), ("seed", a.seed))
                      if v is not None})
        _check_idk_fraction(a.idk_fraction)
        print(write_sft(a.out, env_args=env_args, idk_fraction=a.idk_fraction, **build))
    except ConfigError as e:  # one line naming the setting (a flag or the config key), exit 2, as `rlreason data`
        key = str(e).split(":")[0]
        flags = {"split": a.split, "size": a.size, "unsolvable_fraction": a.unsolvable_fraction, "seed": a.seed,
                 "idk_fraction": a.idk_fraction}
        msg = f"{where}{e}"
        if flags.get(key) is not None:
            msg = "--" + key.replace("_", "-") + str(e)[len(key):]
        print(f"config error: {msg}".replace("\n", " "), file=sys.stderr)
        raise SystemExit(2) from None

if __name__ == "__main__":
    main()
