"""A long procedural task for Delethink at small scale: the running sum of N one-digit numbers, written
one indexed line per step,

    s1 = 3
    s2 = s1 + 7 = 10
    ...
    s7 = s6 + 4 = 31
    Answer: \\boxed{31}

The worked solution grows linearly in N (about 15 SmolLM2 tokens a line), so it can be made several times
longer than a chunk of C tokens, while the state needed to continue (the current index and partial sum)
is the last line or two: it fits in a Markovian carryover m. The numbers stay in the query, which every
chunk sees, as `x1=3, x2=7, ...` so the k-th term can be found by its index.

Rows (rlreason.data.schema): `answer` is the sum as a string, checked by the `math` reward; `info` holds
`terms`, `n_terms` and `split`. Which split a sequence belongs to is decided by a sha256 of the sequence, so
train and test never share a problem, whatever their length ranges. Test-time scaling asks the test split
for longer N than training saw (`pick_terms`).

    rlreason data source=running_sum split=train size=8 min_terms=14 max_terms=18
    python -m rlreason.data.running_sum sft --out runs/delethink/warm_start.jsonl --size 500 \
        --config configs/delethink_small_cpu.yaml     # {prompt, completion}: the run's prompt, the trace
    python -m rlreason.data.running_sum sft --out FILE --size 64 --config configs/delethink_vs_longcot_cpu.yaml \
        --min-terms 10 --max-terms 12 --chunks        # + each trace's Delethink chunk lines (token ids)
    python -m rlreason.data.running_sum table             # N ranges for C in {64, 128, 256}, m = C/2

`pick_terms` sizes N for a chunk size C and carryover m from an exact token count of a trace under the
SmolLM2 tokenizer, which writes every digit as its own token (tests compare it with the real tokenizer).
`python -m rlreason.data.running_sum table` prints (keep_head 1, train trace 3-4x C, held-out 5-6x C;
"line" = the longest line at the held-out maximum N, "carry need" = 2 x line - 1, the tokens that always
hold one whole line however a chunk boundary cuts, "carry m-k" = m - keep_head; I = the chunks whose
budget C + (I-1)(C-m) covers the longest training trace):

    C     m     train N    trace tokens    held-out N    trace tokens    line   carry need   carry m-k   I
    64    32    15-17      200-245         23-25         320-373         16     31           31          7
    128   64    28-33      395-501         45-49         650-757         16     31           63          7
    256   128   53-65      770-1013        87-97         1280-1525       16     31           127         7
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from rlreason.data.schema import make_dataset, make_row
from rlreason.registry import ConfigError
from rlreason.search.corpus import write_jsonl

SOURCE = "running_sum"
SPLITS = ("train", "test")
DIGITS = range(1, 10)  # no 0: "+ 0" steps carry no information


# --- the task ------------------------------------------------------------------------------------------

def question(terms: list[int]) -> str:
    listed = ", ".join(f"x{i}={d}" for i, d in enumerate(terms, 1))
    return (f"Add the {len(terms)} numbers in order, one line per step (s1, s2, ...), "
            f"and give the total in \\boxed{{}}. Numbers: {listed}.")


def trace_lines(terms: list[int]) -> list[str]:
    """The worked steps, each ending in a newline, then the answer line (no newline)."""
    lines, total = [], 0
    for k, d in enumerate(terms, 1):
        total += d
        lines.append(f"s1 = {d}\n" if k == 1 else f"s{k} = s{k - 1} + {d} = {total}\n")
    lines.append(f"Answer: \\boxed{{{total}}}")
    return lines


def trace(terms: list[int]) -> str:
    return "".join(trace_lines(terms))


# --- exact token counts under the SmolLM2 tokenizer ----------------------------------------------------
# Digits are single tokens and " =", " s", " +", " " and "\n" one each, so
#   "s1 = 3\n"            -> s 1 Ġ= Ġ 3 Ċ                      = 4 + d(1) + d(S)
#   "s7 = s6 + 4 = 31\n"  -> s 7 Ġ= Ġs 6 Ġ+ Ġ 4 Ġ= Ġ 3 1 Ċ      = 9 + d(k) + d(k-1) + d(S)
#   "Answer: \boxed{31}"  -> Answer : Ġ\ box ed { 3 1 }       = 7 + d(S)
# where d(x) is the number of digits of x.

def _d(x: int) -> int:
    return len(str(x))


def line_tokens(k: int, total: int) -> int:
    """Tokens of step line k whose partial sum is `total`."""
    return 4 + _d(1) + _d(total) if k == 1 else 9 + _d(k) + _d(k - 1) + _d(total)


def answer_tokens(total: int) -> int:
    return 7 + _d(total)


def trace_tokens(terms: list[int]) -> int:
    total, n = 0, 0
    for k, d in enumerate(terms, 1):
        total += d
        n += line_tokens(k, total)
    return n + answer_tokens(total)


def trace_token_range(n_terms: int) -> tuple[int, int]:
    """Fewest and most tokens a trace of `n_terms` terms can take (all ones, all nines): sums only grow
    with the digits, and so does every line."""
    return trace_tokens([1] * n_terms), trace_tokens([9] * n_terms)


def max_line_tokens(n_terms: int) -> int:
    """The longest step line of any trace of `n_terms` terms (the last line of all nines)."""
    return max(line_tokens(k, 9 * k) for k in range(1, n_terms + 1))


@dataclass(frozen=True)
class Lengths:
    """N ranges for one (C, m); `fits` = one whole step line always survives in the carry."""
    chunk_size: int
    carryover: int
    keep_head: int
    train_terms: tuple[int, int]
    train_tokens: tuple[int, int]
    test_terms: tuple[int, int]
    test_tokens: tuple[int, int]
    line: int        # longest step line up to the held-out maximum N
    carry_need: int  # 2 * line - 1: a boundary anywhere still leaves one whole line in the carry
    carry: int       # m - keep_head: the trace tokens a Markovian chunk is shown besides the head
    max_chunks: int  # I: C + (I-1)(C-m) covers the longest training trace

    @property
    def fits(self) -> bool:
        return self.carry_need <= self.carry


def _terms_in(lo_tokens: float, hi_tokens: float) -> tuple[int, int]:
    """Smallest N whose shortest trace reaches lo_tokens, largest N whose longest trace stays <= hi_tokens."""
    n_lo = next(n for n in range(1, 10_000) if trace_token_range(n)[0] >= lo_tokens)
    n_hi = next(n for n in range(1, 10_000) if trace_token_range(n + 1)[1] > hi_tokens)
    if n_lo > n_hi:
        raise ConfigError(f"no N gives a trace of {lo_tokens:g}-{hi_tokens:g} tokens; widen the range.")
    return n_lo, n_hi


def pick_terms(chunk_size: int, carryover: int, *, keep_head: int = 1, train_x: tuple[float, float] = (3, 4),
               test_x: tuple[float, float] = (5, 6)) -> Lengths:
    """N ranges whose traces are train_x[0]..train_x[1] times C (training) and test_x times C (held out,
    for test-time scaling), with the chunk count I whose Delethink budget C + (I-1)(C-m) (the paper's) covers
    the longest training trace. Pure: token counts come from `trace_tokens`, not from a tokenizer."""
    if not 0 < keep_head < carryover < chunk_size:
        raise ConfigError(f"need 0 < keep_head < carryover < chunk_size, got {keep_head}, {carryover}, "
                          f"{chunk_size}.")
    train = _terms_in(train_x[0] * chunk_size, train_x[1] * chunk_size)
    test = _terms_in(test_x[0] * chunk_size, test_x[1] * chunk_size)
    longest = trace_token_range(train[1])[1]
    chunks = 1 + max(0, math.ceil((longest - chunk_size) / (chunk_size - carryover)))
    line = max_line_tokens(test[1])
    return Lengths(chunk_size, carryover, keep_head, train, (trace_token_range(train[0])[0], longest),
                   test, (trace_token_range(test[0])[0], trace_token_range(test[1])[1]), line, 2 * line - 1,
                   carryover - keep_head, chunks)


def table(chunk_sizes: tuple[int, ...] = (64, 128, 256), keep_head: int = 1) -> str:
    """The docstring's table: N ranges for each C with m = C/2."""
    head = ("C", "m", "train N", "trace tokens", "held-out N", "trace tokens", "line", "carry need",
            "carry m-k", "I")
    widths = (4, 4, 9, 14, 12, 14, 5, 11, 10, 2)
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    for c in chunk_sizes:
        p = pick_terms(c, c // 2, keep_head=keep_head)
        cells = (c, c // 2, "%d-%d" % p.train_terms, "%d-%d" % p.train_tokens, "%d-%d" % p.test_terms,
                 "%d-%d" % p.test_tokens, p.line, p.carry_need, p.carry, p.max_chunks)
        out.append("  ".join(str(x).ljust(w) for x, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


# --- the dataset ---------------------------------------------------------------------------------------

def split_of(terms: list[int], test_fraction: float) -> str:
    """A sequence's split, from a sha256 of the sequence alone: the same problem is never in both."""
    h = int.from_bytes(hashlib.sha256(",".join(map(str, terms)).encode()).digest()[:8], "big")
    return "test" if h / 2 ** 64 < test_fraction else "train"


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ConfigError(f"{name}: must be an integer >= {lo}, got {value!r}.")


def build_running_sum(split: str = "train", size: int = 200, min_terms: int = 15, max_terms: int = 17,
                      seed: int = 0, test_fraction: float = 0.5) -> Dataset:
    """`size` distinct problems of `split`, N uniform in [min_terms, max_terms], terms uniform in 1..9.
    The defaults are pick_terms(64, 32)'s training range; ask the test split for a longer range (22-25 at
    C = 64) to measure test-time scaling."""
    if split not in SPLITS:
        raise ConfigError(f"split: '{split}' is not allowed. Allowed: {', '.join(SPLITS)}.")
    _check_int("size", size, 1)
    _check_int("min_terms", min_terms, 2)
    _check_int("max_terms", max_terms, min_terms)
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction: must be in (0, 1), got {test_fraction}.")
    rng = _rng(SOURCE, seed, split, min_terms, max_terms, test_fraction)
    seen: set[tuple[int, ...]] = set()
    rows = []
    for _ in range(size * 1000):
        if len(rows) == size:
            break
        terms = [rng.choice(DIGITS) for _ in range(rng.randint(min_terms, max_terms))]
        if tuple(terms) in seen or split_of(terms, test_fraction) != split:
            continue
        seen.add(tuple(terms))
        info = {"terms": terms, "n_terms": len(terms), "split": split, "seed": seed}
        rows.append(make_row(f"{SOURCE}/{seed}/{split}/{len(rows)}", question(terms), str(sum(terms)),
                             SOURCE, info))
    else:
        raise ConfigError(f"size: could not draw {size} distinct {split} problems with "
                          f"{min_terms}-{max_terms} terms; lower size or widen the range.")
    return make_dataset(rows)


def sft_rows(ds: Dataset, env_args: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """Warm-start SFT lines {prompt, completion}: the prompt the RL run's environment shows (its template
    and style, `env_args`), the completion the worked trace ending in \\boxed{answer} (EOS is the trainer's
    to append, as for the other warm-start sets)."""
    from rlreason.environments.single_turn import SingleTurn

    args = {k: v for k, v in (env_args or {}).items() if k in ("template", "style", "system_prompt")}
    env = SingleTurn(None, **args)
    return [{"prompt": env.prompt(dict(r)), "completion": trace(json.loads(r["info"])["terms"])} for r in ds]


def sft_train_rows(lines: list[dict[str, Any]], tokenizer: Any, env_args: dict[str, Any] | None = None) -> list:
    """{prompt, completion} lines as the rows `algorithm: sft` trains on (`rlreason.trainer.sft.sft_row`):
    prompt ids as the environment encodes them for the policy (so the warm start sees the RL run's exact
    context), response = the completion's tokens then EOS (the model must learn to stop), every response
    token trained. A trace is one LongCoT row; `chunk_lines` gives the rows a Markovian policy sees."""
    from rlreason.environments.single_turn import SingleTurn
    from rlreason.trainer.sft import sft_row

    args = {k: v for k, v in (env_args or {}).items() if k in ("template", "style", "system_prompt")}
    env = SingleTurn(tokenizer, **args)
    return [sft_row(env, line["prompt"], line["completion"], i) for i, line in enumerate(lines)]


class ReplayPolicy:
    """A Policy that writes a given token stream: each call returns the stream's next `max_tokens` tokens,
    finishing "stop" on the call that reaches its end (the stream ends in EOS, which an engine returns as a
    generated token). Run through the Delethink wrapper it is a policy that writes exactly this trace, so
    the wrapper's recorded Samples are the chunk prompts and chunks that trace gets during RL."""

    def __init__(self, stream: list[int]) -> None:
        self.stream, self.pos = list(stream), 0

    async def generate(self, prompt_ids: list[int], *, max_tokens: int, stop: list[str] | None = None) -> Any:
        from rlreason.types import Completion

        y = self.stream[self.pos:self.pos + max(max_tokens, 0)]
        self.pos += len(y)
        return Completion(y, [0.0] * len(y), "stop" if y and self.pos == len(self.stream) else "length", "")


def chunk_lines(ds: Dataset, env: Any) -> list[dict[str, Any]]:
    """Warm-start lines that teach a policy to continue from Delethink chunk prompts: for each problem, its
    worked trace (tokens, then EOS) replayed through `env` (a Delethink-wrapped environment, built from the
    RL config as the trainer builds it), one line per chunk l >= 2 with the wrapper's own chunk prompt
    (query + head + carry) as `prompt_ids` and chunk l as `completion_ids` (the last one ends in EOS). The
    ids are the training row verbatim: decoding and re-encoding a carry that starts mid-line need not give
    the same tokens. Chunk 1 (query, first C tokens) is the start of the whole-trace line, so it is left out.
    A trace longer than the Delethink budget is an error: its chunk lines would teach a cut-off trace."""
    import asyncio

    from rlreason.delethink import Markovian

    if not isinstance(env, Markovian):
        raise ConfigError(f"env: chunk lines need a Delethink environment (env.name markovian, or env.markovian "
                          f"around another), got '{getattr(env, 'name', type(env).__name__)}'.")
    tok = env.tokenizer
    lines = []
    for r in ds:
        stream = tok(trace(json.loads(r["info"])["terms"]), add_special_tokens=False).input_ids + [tok.eos_token_id]
        ep = asyncio.run(env.rollout(dict(r), ReplayPolicy(stream)))
        if [t for s in ep.samples for t in s.response_ids] != stream:
            raise ConfigError(f"env.args: the trace of {r['id']} ({len(stream)} tokens with EOS) does not fit the "
                              f"Delethink budget C + (I-1)(C-m) = {env.budget()}; raise max_chunks or use fewer terms.")
        for chunk, s in enumerate(ep.samples[1:], 2):
            lines.append({"id": f"{r['id']}/chunk{chunk}", "prompt": tok.decode(s.prompt_ids),
                          "completion": tok.decode(s.response_ids), "prompt_ids": list(s.prompt_ids),
                          "completion_ids": list(s.response_ids)})
    return lines


def write_sft(out: str | Path, *, split: str = "train", size: int = 500, min_terms: int = 15,
              max_terms: int = 17, seed: int = 0, env_args: dict[str, Any] | None = None,
              chunk_env: Any = None) -> dict:
    """One whole-trace line per problem; with `chunk_env` (a Delethink environment) also its chunk lines
    (`chunk_lines`), in one shuffled file: one warm start for both the LongCoT and the Markovian arm."""
    ds = build_running_sum(split, size, min_terms, max_terms, seed)
    rows: list[dict[str, Any]] = sft_rows(ds, env_args)
    n_chunks = 0
    if chunk_env is not None:
        chunks = chunk_lines(ds, chunk_env)
        n_chunks = len(chunks)
        rows = rows + chunks
        _rng(SOURCE, "sft", seed).shuffle(rows)
    write_jsonl(Path(out), rows)
    return {"rows": len(rows), "trace_rows": len(rows) - n_chunks, "chunk_rows": n_chunks, "path": str(out)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlreason.data.running_sum")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table", help="N ranges for chunk sizes C with m = C/2")
    t.add_argument("--chunk-sizes", default="64,128,256")
    t.add_argument("--keep-head", type=int, default=1)
    s = sub.add_parser("sft", help="write warm-start SFT lines ({prompt, completion})")
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="train", choices=SPLITS)
    s.add_argument("--size", type=int, default=500)
    s.add_argument("--min-terms", type=int, default=15)
    s.add_argument("--max-terms", type=int, default=17)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--config", help="take the environment's template and style from this config")
    s.add_argument("--chunks", action="store_true",
                   help="also write each trace's Delethink chunk lines, built by --config's environment")
    a = ap.parse_args(argv)
    if a.cmd == "table":
        print(table(tuple(int(c) for c in a.chunk_sizes.split(",")), a.keep_head))
        return
    env_args: dict[str, Any] = {}
    chunk_env = None
    if a.chunks and not a.config:
        ap.error("--chunks needs --config (the RL run whose Delethink chunk prompts the lines must match)")
    if a.config:
        from rlreason.config import load_config
        cfg = load_config(a.config)
        env_args = dict(cfg.env.args)
        if a.chunks:
            from transformers import AutoTokenizer

            from rlreason.models import resolve_model
            from rlreason.registry import build_environment
            tok = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name, dtype="fp32"))  # as the trainer
            chunk_env = build_environment(cfg.env.name, tok, cfg.env.args, cfg.env.markovian)
    print(write_sft(a.out, split=a.split, size=a.size, min_terms=a.min_terms, max_terms=a.max_terms,
                    seed=a.seed, env_args=env_args, chunk_env=chunk_env))


if __name__ == "__main__":
    main()
