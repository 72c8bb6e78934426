"""QA data for the pay-per-search environment, and MASH's warm-start SFT set.

- `build_fanoutqa`: FanOutQA (pinned wheel `fanoutqa==1.1.1`, `data/fanout-final-dev.json`; its test
  file has no answers) decomposes each question into sub-questions that each name their evidence
  Wikipedia page. Kept: sub-questions whose page is in the search corpus and whose answer is a single
  value (lists and tables are dropped; booleans become yes/no). With `answer_in_passage` (default) the
  normalised answer must also appear in that page's text in the corpus, so a search can find it (the
  wiki-offline corpus holds lead paragraphs only: 89 of 496 single-value sub-questions pass). Train/test
  is split by the parent question (hashed with `seed`), so sibling sub-questions never straddle it.
- `build_qa_jsonl`: any jsonl of {question, answers} ({question, answer} also works; `id` optional).
- `build_warm_start_sft`: templated trajectories as jsonl of {prompt, completion}: a `direct_fraction`
  answer at once, the rest search 1..max_searches times first, with real passages from the index. The
  prompt is exactly the environment's. MASH warm-starts on 1,000 such trajectories, a third without search.

Rows have the standard columns (rlreason.data.schema); `answer` is one string or a JSON list string of
accepted answers, which rewards/qa.py reads either way.

    python -m rlreason.data.search_qa sft --out warm_start.jsonl        # the SFT set from FanOutQA train
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path
from typing import Any

from datasets import Dataset

from rlreason.data.jsonl import DataError, parse_line, read_lines
from rlreason.data.schema import loads_info, make_dataset, make_row
from rlreason.models import package_dir, verified_file
from rlreason.registry import ConfigError
from rlreason.search.corpus import load_corpus, resolve_corpus, write_jsonl

FANOUTQA_PACKAGE = "fanoutqa"
FANOUTQA_VERSION = "1.1.1"
FANOUTQA_FILE = "data/fanout-final-dev.json"
FANOUTQA_SHA256 = "359300b029c6891567816f351bf8786e9b018d7af8a1a44b7da9ba5ef4651288"
SPLITS = ("train", "test", "all")


def fanoutqa_file() -> Path:
    pip_spec = f"fanoutqa=={FANOUTQA_VERSION}"
    return verified_file(package_dir(FANOUTQA_PACKAGE, pip_spec) / FANOUTQA_FILE, FANOUTQA_SHA256, pip_spec)


def _answer_text(a: Any) -> str | None:
    if isinstance(a, bool):
        return "yes" if a else "no"
    if isinstance(a, (int, float)):
        return str(a)
    if isinstance(a, str) and a.strip():
        return a.strip()
    return None  # lists / dicts: several values, not a short answer


def _in_test(parent_id: str, seed: int, test_fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{parent_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < test_fraction


def build_fanoutqa(split: str = "train", test_fraction: float = 0.25, seed: int = 0,
                   answer_in_passage: bool = True, corpus: str | None = None) -> Dataset:
    """FanOutQA sub-questions whose evidence page is in the corpus (default: the wiki-offline corpus)."""
    from rlreason.rewards.qa import normalize_answer

    if split not in SPLITS:
        raise ConfigError(f"split: '{split}' is not allowed. Allowed: {', '.join(SPLITS)}.")
    if not 0.0 <= test_fraction < 1.0:
        raise ConfigError(f"test_fraction: must be in [0, 1), got {test_fraction}.")
    pages = {p.title: p.text for p in load_corpus(resolve_corpus(corpus))}
    rows, seen = [], set()

    def walk(node: dict, parent: dict) -> None:
        for sq in node.get("decomposition") or []:
            walk(sq, parent)
            title = (sq.get("evidence") or {}).get("title")
            answer = _answer_text(sq.get("answer"))
            if title not in pages or answer is None:
                continue
            if answer_in_passage and normalize_answer(answer) not in normalize_answer(pages[title]):
                continue
            qnorm = normalize_answer(sq["question"])
            if qnorm in seen:
                continue
            seen.add(qnorm)
            test = _in_test(parent["id"], seed, test_fraction)
            if split == "all" or (split == "test") == test:
                rows.append(make_row(sq["id"], sq["question"].strip(), answer, "fanoutqa",
                                     {"evidence_title": title, "parent_id": parent["id"],
                                      "parent_question": parent["question"]}))

    for q in json.loads(fanoutqa_file().read_text(encoding="utf-8")):
        walk(q, q)
    if not rows:
        raise ConfigError(f"split: no FanOutQA sub-questions in split '{split}' for this corpus")
    return make_dataset(rows)


def build_qa_jsonl(path: str, data_source: str | None = None) -> Dataset:
    """jsonl of {question, answers: [..]} (or answer: "..."), optional id; a bad line names file and line."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"jsonl file not found: {p}")
    source, rows, seen = data_source or p.stem, [], set()
    for lineno, line in read_lines(p):
        if not line.strip():
            continue
        where = f"{p}, line {lineno}"
        row = parse_line(line, where)
        if not isinstance(row.get("question"), str) or not row["question"].strip():
            raise DataError(f"{where}: expected an object with a non-empty 'question' string")
        raw = row.get("answers", row.get("answer"))
        answers = [_answer_text(a) for a in (raw if isinstance(raw, list) else [raw])]
        if not answers or any(a is None for a in answers):
            raise DataError(f"{where}: 'answers' must be a non-empty list of strings/numbers (or 'answer' one)")
        rid = str(row.get("id", f"{source}/{lineno}"))
        if rid in seen:
            raise DataError(f"{where}: duplicate id '{rid}'")
        seen.add(rid)
        extras = {k: v for k, v in row.items() if k not in ("question", "answers", "answer", "id")}
        answer = answers[0] if len(answers) == 1 else json.dumps(answers, ensure_ascii=False)
        rows.append(make_row(rid, row["question"].strip(), answer, source, extras))
    if not rows:
        raise DataError(f"{p}: no rows")
    return make_dataset(rows)


# --- warm-start SFT -------------------------------------------------------------------------------------

DIRECT_THOUGHTS = ["I know this.", "I remember the answer to this.", "This is something I know."]
SEARCH_THOUGHTS = ["I am not sure about this, so I will search for it.", "I need to look this up.",
                   "I do not know this; let me search."]
AGAIN_THOUGHTS = ["The documents do not settle it yet. Let me search again.", "I need more information."]
FOUND_THOUGHTS = ["The documents contain the answer.", "I found the answer in the documents."]


def build_warm_start_sft(rows: Any, out: str | Path, *, index: Any = None, direct_fraction: float = 1 / 3,
                         max_searches: int = 2, seed: int = 0, env_args: dict[str, Any] | None = None) -> dict:
    """Write {prompt, completion} lines for `rows` (dicts with question, answer, optional info); returns
    counts. `index` is anything with `.search(queries, topk)` (default: the BM25 index of the corpus);
    `env_args` are the pay_per_search args the RL run uses, so prompt and passages match it."""
    from rlreason.environments.pay_per_search import PayPerSearch, format_documents
    from rlreason.rewards.qa import gold_answers

    env = PayPerSearch(None, **(env_args or {}))
    if index is None:
        from rlreason.search.index import load_index
        index = load_index("bm25", resolve_corpus(None))
    rng = random.Random(seed)
    lines, n_direct = [], 0
    for row in rows:
        ex = dict(row, info=loads_info(row.get("info")))
        answer = gold_answers(ex["answer"])[0]
        think = lambda options: f"<think> {rng.choice(options)} </think>\n"  # noqa: E731
        if rng.random() < direct_fraction:
            completion = think(DIRECT_THOUGHTS) + f"<answer> {answer} </answer>"
            n_direct += 1
        else:
            queries = [ex["question"], ex["info"].get("evidence_title") or ex["question"]]
            completion = think(SEARCH_THOUGHTS)
            for i in range(rng.randint(1, max_searches)):
                if i:
                    completion += think(AGAIN_THOUGHTS)
                q = queries[min(i, len(queries) - 1)]
                hits = index.search([q], env.client.topk)[0]
                docs = [_doc(p) for p, _ in hits]
                completion += f"<search> {q} </search>" + format_documents(docs, env.max_doc_words)
            completion += think(FOUND_THOUGHTS) + f"<answer> {answer} </answer>"
        lines.append({"prompt": env.prompt(ex), "completion": completion})
    write_jsonl(Path(out), lines)
    return {"rows": len(lines), "direct": n_direct, "search": len(lines) - n_direct, "path": str(out)}


def _doc(p: Any) -> Any:
    from rlreason.search.client import Document
    return Document(p.id, p.title, p.text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlreason.data.search_qa")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sft", help="write the warm-start SFT jsonl ({prompt, completion})")
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="train", choices=SPLITS)
    s.add_argument("--qa-jsonl", help="use this {question, answers} file instead of FanOutQA")
    s.add_argument("--direct-fraction", type=float, default=1 / 3)
    s.add_argument("--max-searches", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--env-args", default="{}", help="pay_per_search env args as JSON (template, style, ...)")
    a = ap.parse_args(argv)
    ds = build_qa_jsonl(a.qa_jsonl) if a.qa_jsonl else build_fanoutqa(a.split)
    print(build_warm_start_sft(list(ds), a.out, direct_fraction=a.direct_fraction, max_searches=a.max_searches,
                               seed=a.seed, env_args=json.loads(a.env_args)))


if __name__ == "__main__":
    main()
