"""`rlreason eval --abstention`: MASH's read-off (arXiv 2510.01152, Sec. 5). A pay-per-search policy
searches when it does not know; remove the tool and a search attempt becomes an abstention.

Three passes of k samples per question through the same engine:

    with tool      pay_per_search as trained   -> accuracy (EM), searches/question,
                                                  tool productivity = accuracy / (1 + searches)
    answerability  closed_book (default): k answers with no tool and a plain "answer directly" prompt,
                   as MASH estimates what the model knows; or tool: the with-tool samples reused.
                   a_q = share of the k samples that are right; never-answerable: a_q = 0, always: a_q = 1
    tool removed   search_enabled = False      -> abstention rate overall, on never- vs always-answerable
                                                  questions (MASH's Abs(0), Abs(1); delta = their
                                                  difference, higher is better), precision = right / answered

A model that abstains exactly when it does not know has abs_never = 1, abs_always = 0, precision 1.

With `env.args.split_by` set (e.g. `type` on the QA world, whose questions are must-search or answerable from
the question by construction), the with-tool and tool-removed numbers are also reported per value of that
info key: `abstention/by_<split_by>/<value>/{accuracy, searches, tool_productivity, abstention_rate,
answered_rate, precision, questions}`.
"""

from __future__ import annotations

from typing import Any

from rlreason.registry import ConfigError, build_environment
from rlreason.rollout.base import Engine, SamplingConfig
from rlreason.types import Episode

CLOSED_BOOK_TEMPLATE = (
    "Answer the given question. Think briefly inside <think> and </think>, then give the final answer inside "
    "<answer> and </answer>, for example <answer> Beijing </answer>. Question: {question}\n")
ANSWERABILITY = ("closed_book", "tool")


def _correct(ex: dict, ep: Episode | None) -> float:
    if ep is None:
        return 0.0
    from rlreason.rewards.qa import em_score, final_answer, gold_answers  # shipped rewards load on use
    pred = final_answer(ep.transcript, ep)
    return 0.0 if pred is None else em_score(pred, gold_answers(ex.get("answer")))


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _run(engine: Engine, env: Any, examples: list[dict], k: int, seed: int,
         sampling: SamplingConfig) -> list[list[Episode | None]]:
    async def one(ex: dict, s: int) -> Episode | None:
        try:
            return await env.rollout(ex, engine.policy(seed=s, sampling=sampling))
        except Exception:  # noqa: BLE001 - counted as env_errors in the result
            import logging
            logging.getLogger(__name__).exception("abstention eval: episode of %s raised", ex.get("id"))
            return None
    flat = engine.run([one(ex, seed + i * k + j) for i, ex in enumerate(examples) for j in range(k)])
    return [flat[i * k:(i + 1) * k] for i in range(len(examples))]


def abstention_eval(engine: Engine, env_args: dict[str, Any], tokenizer: Any, examples: list[dict], *, k: int,
                    temperature: float = 1.0, seed: int = 0, answerability: str = "closed_book",
                    markovian: dict[str, Any] | None = None) -> dict[str, Any]:
    if answerability not in ANSWERABILITY:
        raise ConfigError(f"answerability: '{answerability}' is not allowed. Allowed: {', '.join(ANSWERABILITY)}.")
    if k < 1 or not examples:
        raise ConfigError(f"abstention eval needs k >= 1 and at least one question (k={k}, {len(examples)} questions)")
    sampling = SamplingConfig(temperature=temperature, top_p=engine.sampling.top_p, top_k=engine.sampling.top_k)
    args = {a: v for a, v in env_args.items() if a != "search_enabled"}
    def env(a: dict[str, Any]) -> Any:  # `markovian`: the config's env.markovian, as training runs it
        return build_environment("pay_per_search", tokenizer, a, markovian)
    with_tool = _run(engine, env({**args, "search_enabled": True}), examples, k, seed, sampling)
    no_tool = _run(engine, env({**args, "search_enabled": False}), examples, k, seed + 1, sampling)
    if answerability == "closed_book":
        cb_args = {**args, "search_enabled": False, "template": CLOSED_BOOK_TEMPLATE}
        probe = _run(engine, env(cb_args), examples, k, seed + 2, sampling)
    else:
        probe = with_tool

    tool_eps = [(ex, ep) for ex, g in zip(examples, with_tool) for ep in g]
    acc = _mean([_correct(ex, ep) for ex, ep in tool_eps])
    searches = _mean([ep.metrics["searches"] if ep else 0.0 for _, ep in tool_eps])
    a_q = [_mean([_correct(ex, ep) for ep in g]) for ex, g in zip(examples, probe)]

    abst = [[float(ep is not None and ep.metrics["abstained"] > 0) for ep in g] for g in no_tool]
    answered = [(ex, ep) for ex, g in zip(examples, no_tool) for ep in g
                if ep is not None and ep.metrics["answered"] > 0]
    never = [x for q, a in zip(abst, a_q) if a == 0.0 for x in q]
    always = [x for q, a in zip(abst, a_q) if a == 1.0 for x in q]
    buckets: dict[str, list[float]] = {}
    for q, a in zip(abst, a_q):
        buckets.setdefault(f"{round(a * k)}/{k}", []).extend(q)
    errors = sum(ep is None for run in (with_tool, no_tool, probe) for g in run for ep in g)
    out = {
        "abstention/questions": len(examples), "abstention/k": k, "abstention/answerability": answerability,
        "abstention/tool/accuracy": acc,
        "abstention/tool/searches": searches,
        "abstention/tool/tool_productivity": acc / (1.0 + searches),
        "abstention/tool/tool_errors": _mean([ep.metrics["tool_errors"] if ep else 0.0 for _, ep in tool_eps]),
        "abstention/no_tool/accuracy": _mean([_correct(ex, ep) for ex, g in zip(examples, no_tool) for ep in g]),
        "abstention/no_tool/abstention_rate": _mean([x for q in abst for x in q]),
        "abstention/no_tool/answered_rate": len(answered) / (len(examples) * k),
        "abstention/no_tool/precision": _mean([_correct(ex, ep) for ex, ep in answered]),
        "abstention/abs_never": _mean(never), "abstention/abs_always": _mean(always),
        "abstention/delta": _mean(never) - _mean(always),
        "abstention/n_never": sum(a == 0.0 for a in a_q), "abstention/n_always": sum(a == 1.0 for a in a_q),
        "abstention/by_answerability": {b: _mean(v) for b, v in sorted(buckets.items())},  # never empty
        "abstention/env_errors": errors,
    }
    split_by = args.get("split_by")
    if split_by:
        for g in sorted({str((ex.get("info") or {}).get(split_by)) for ex in examples}):
            sel = [i for i, ex in enumerate(examples) if str((ex.get("info") or {}).get(split_by)) == g]
            t = [(examples[i], ep) for i in sel for ep in with_tool[i]]
            nt = [(examples[i], ep) for i in sel for ep in no_tool[i]]
            ans = [(ex, ep) for ex, ep in nt if ep is not None and ep.metrics["answered"] > 0]
            g_acc = _mean([_correct(ex, ep) for ex, ep in t])
            g_searches = _mean([ep.metrics["searches"] if ep else 0.0 for _, ep in t])
            p = f"abstention/by_{split_by}/{g}/"
            out.update({p + "questions": len(sel), p + "accuracy": g_acc, p + "searches": g_searches,
                        p + "tool_productivity": g_acc / (1.0 + g_searches),
                        p + "abstention_rate": _mean([float(ep is not None and ep.metrics["abstained"] > 0)
                                                      for _, ep in nt]),
                        p + "answered_rate": len(ans) / len(nt),
                        p + "precision": _mean([_correct(ex, ep) for ex, ep in ans])})
    # A rate over no questions (e.g. no always-answerable one) is undefined: null in the JSON, not NaN.
    return {key: (None if isinstance(v, float) and v != v else v) for key, v in out.items()}


def run_abstention_eval(cfg: Any, *, checkpoint: str | None = None, split: str = "eval") -> dict[str, Any]:
    """The CLI path: the config's model (or a checkpoint), environment args and held-out split."""
    from rlreason.eval_cli import load_for_eval

    if cfg.env.name != "pay_per_search":
        raise ConfigError(f"env.name: --abstention needs 'pay_per_search', got '{cfg.env.name}'.")
    run, rows = load_for_eval(cfg, checkpoint, split)
    try:
        out = abstention_eval(run.engine, cfg.env.args, run.tokenizer, rows, k=cfg.eval.k,
                              temperature=cfg.eval.temperature, seed=cfg.seed + 7, markovian=cfg.env.markovian)
    finally:
        run.engine.close()
    return {"model": cfg.model.name, "checkpoint": checkpoint, "split": split, **out}
