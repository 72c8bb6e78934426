"""`rlreason eval --chunked CONFIG --budgets 1,2,4`: zero-shot Markovian evaluation (The Markovian Thinker,
arXiv 2510.06557, "off-the-shelf reasoning models are already Markovian").

The same held-out problems, with the same per-episode seeds, run twice at each thinking budget B:

    longcot    one context, at most B tokens
    markovian  Delethink chunks (C, m, keep_head, I) with B = C + (I - 1)(C - m)

and one table gives the accuracy of each per budget. Budgets are either iteration caps I at the config's
C and m (`--vary max_chunks`, the default) or chunk sizes C with m = C/2 at the config's I
(`--vary chunk_size`, the paper's C ablation). Accuracy is `rlreason.trainer.evaluate.evaluate`'s
(avg@k: the first reward term reaching 1); the token columns are each episode's `thinking_tokens`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from rlreason.config import RunConfig
from rlreason.registry import ConfigError, build_environment
from rlreason.types import Episode, Policy

log = logging.getLogger(__name__)

Vary = Literal["max_chunks", "chunk_size"]
VARY = ("max_chunks", "chunk_size")
# env.args both environments accept; `max_tokens` (longcot only) is replaced by the budget.
SHARED_ARGS = ("chunk_size", "carryover", "keep_head", "max_chunks", "template", "style", "system_prompt")


class RecordingEnv:
    """Delegates to an environment and keeps every episode it returns, so token usage can be read after
    `evaluate` (which returns only means). The rubric scores the same Episode objects afterwards."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.name = env.name
        self.episodes: list[Episode] = []

    async def rollout(self, example: dict, policy: Policy) -> Episode:
        ep = await self.env.rollout(example, policy)
        self.episodes.append(ep)
        return ep


def budget_settings(env_args: dict[str, Any], budgets: list[int], vary: Vary) -> list[dict[str, int]]:
    """One {chunk_size, carryover, max_chunks, budget} per requested budget, in the order given."""
    if vary not in VARY:
        raise ConfigError(f"--vary: '{vary}' is not allowed. Allowed: {', '.join(VARY)}.")
    if not budgets:
        raise ConfigError("--budgets: give at least one value")
    from rlreason.environments.markovian import CARRYOVER, CHUNK_SIZE, MAX_CHUNKS, delethink_budget
    C, m, I = (env_args.get("chunk_size", CHUNK_SIZE), env_args.get("carryover", CARRYOVER),
               env_args.get("max_chunks", MAX_CHUNKS))
    out = []
    for b in budgets:
        if not isinstance(b, int) or b < 1:
            raise ConfigError(f"--budgets: every value must be a positive integer, got {b!r}")
        c, mm, i = (C, m, b) if vary == "max_chunks" else (b, b // 2, I)
        out.append({"chunk_size": c, "carryover": mm, "max_chunks": i, "budget": delethink_budget(c, mm, i)})
    return out


def shared_env_args(cfg: RunConfig) -> dict[str, Any]:
    """The config's env.args that both `markovian` and `longcot` take (raises on any other key, e.g. a
    single_turn `stop`, rather than silently evaluating a different prompt)."""
    if cfg.env.markovian is not None:
        raise ConfigError("env.markovian: --chunked compares the `markovian` and `longcot` environments; give "
                          "chunk_size, carryover, keep_head, max_chunks as env.args with env.name markovian.")
    extra = sorted(set(cfg.env.args) - set(SHARED_ARGS) - {"max_tokens"})
    if extra:
        raise ConfigError(f"env.args: {', '.join(extra)} cannot be passed to both markovian and longcot. "
                          f"Allowed for --chunked: {', '.join(SHARED_ARGS)}.")
    return {k: v for k, v in cfg.env.args.items() if k in SHARED_ARGS}


def _token_stats(episodes: list[Episode]) -> dict[str, float]:
    toks = [ep.metrics["thinking_tokens"] for ep in episodes]
    n = max(len(episodes), 1)
    return {"tokens_mean": sum(toks) / n, "tokens_max": max(toks, default=0.0),
            "chunks_mean": sum(ep.metrics["chunks"] for ep in episodes) / n,
            "eos_rate": sum(ep.metrics["ended_by_eos"] for ep in episodes) / n}


def run_chunked_eval(cfg: RunConfig, budgets: list[int] | None = None, *, vary: Vary = "max_chunks",
                     checkpoint: str | None = None, split: str = "eval") -> dict[str, Any]:
    """Accuracy and token use of longcot vs markovian at each budget; `budgets` None = I in 1..I."""
    from rlreason.environments.markovian import CHUNK_SIZE, MAX_CHUNKS
    from rlreason.trainer.evaluate import evaluate

    args = shared_env_args(cfg)
    if budgets is None:
        budgets = list(range(1, args.get("max_chunks", MAX_CHUNKS) + 1)) if vary == "max_chunks" else \
            [args.get("chunk_size", CHUNK_SIZE)]
    settings = budget_settings(args, budgets, vary)
    for s in settings:  # a bad C / m / keep_head fails here, before the model loads (constructors only
        for name in ("longcot", "markovian"):  # store the tokenizer)
            build_environment(name, None, {**args, **_env_args(s)})

    run, rows = _load(cfg, checkpoint, split)
    try:
        probe = build_environment("longcot", run.tokenizer, args)
        longest_prompt = max((len(probe.encode_prompt(probe.prompt(ex))) for ex in rows), default=0)
        need = longest_prompt + max(max(s["budget"] for s in settings), max(s["chunk_size"] for s in settings))
        if need > run.engine.max_model_len:
            raise ConfigError(f"rollout.max_model_len: {run.engine.max_model_len} is too short for a "
                              f"{longest_prompt}-token prompt plus a {need - longest_prompt}-token budget; "
                              f"set rollout.max_model_len={need} (LongCoT would be cut silently otherwise).")
        table = []
        for s in settings:
            row: dict[str, Any] = dict(s)
            for name in ("longcot", "markovian"):
                env = RecordingEnv(build_environment(name, run.tokenizer, {**args, **_env_args(s)}))
                res = evaluate(run.engine, env, run.rubric, rows, k=cfg.eval.k,
                               temperature=cfg.eval.temperature, seed=cfg.seed + 7)
                row[name] = {"acc": res["eval/avg@k"], "pass@k": res["eval/pass@k"],
                             "reward": res["eval/reward"], "env_errors": res["eval/env_errors"],
                             **_token_stats(env.episodes)}
            table.append(row)
            log.info("budget %d: %s", s["budget"], format_table([row]).splitlines()[-1])
    finally:
        run.engine.close()
    return {"model": cfg.model.name, "checkpoint": checkpoint, "split": split, "vary": vary,
            "keep_head": args.get("keep_head"), "k": cfg.eval.k, "problems": len(rows),
            "temperature": cfg.eval.temperature, "rows": table}


def _env_args(s: dict[str, int]) -> dict[str, int]:
    return {"chunk_size": s["chunk_size"], "carryover": s["carryover"], "max_chunks": s["max_chunks"]}


def _load(cfg: RunConfig, checkpoint: str | None, split: str) -> tuple[Any, list[dict]]:
    """The engine, tokenizer and rubric of `cfg` (as `rlreason eval` builds them) and the problems."""
    from rlreason.eval_cli import load_for_eval
    return load_for_eval(cfg, checkpoint, split)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'C':>6s} {'m':>6s} {'I':>3s} {'budget':>7s} | {'LongCoT acc':>11s} {'tokens':>8s} | "
            f"{'Markovian acc':>13s} {'tokens':>8s} {'chunks':>6s} {'EOS':>5s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lc, mk = r["longcot"], r["markovian"]
        lines.append(f"{r['chunk_size']:6d} {r['carryover']:6d} {r['max_chunks']:3d} {r['budget']:7d} | "
                     f"{lc['acc']:11.3f} {lc['tokens_mean']:8.1f} | {mk['acc']:13.3f} {mk['tokens_mean']:8.1f} "
                     f"{mk['chunks_mean']:6.2f} {mk['eos_rate']:5.2f}")
    return "\n".join(lines)
