"""Retrieval quality of the search tool: recall@k of BM25 vs the dense index (all-MiniLM-L6-v2 + faiss).

    flock /tmp/rlreason-heavy.lock python benchmarks/retrieval_quality.py [--distractors 500] [--k 3] \
        | tee benchmarks/results/retrieval_quality.txt

Question sets (all from pinned pip packages, nothing downloaded):
  fanoutqa-all    FanOutQA dev sub-questions with a single-value answer whose evidence page is in the
                  wiki-offline corpus (build_fanoutqa(split="all", answer_in_passage=False));
  fanoutqa-ans  the subset the pay-per-search config trains/evaluates on (the answer is in the page);
  qa_world        every must-search question of the QA world (seed 0, 200 entities, both splits).
Measures, per index: page recall@k (the evidence page's title among the top k) and, where the answer is
known to be in the page, answer recall@k (the normalised answer in one of the top-k passages).

Corpora: BM25 runs on the full corpora (wiki-offline, ~10k leads; the world's 200 documents; both
together). Encoding 10k passages with MiniLM takes tens of minutes on 2 shared CPU cores, so the dense
index, and BM25 again for a like-for-like figure, run on a subsample: every evidence page plus
--distractors other wiki pages drawn with --seed (a smaller haystack than the real one, so both figures
there are optimistic; the output says so).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlreason.data.qa_world import build_qa_world, corpus_rows  # noqa: E402
from rlreason.data.schema import loads_info  # noqa: E402
from rlreason.data.search_qa import build_fanoutqa  # noqa: E402
from rlreason.rewards.qa import gold_answers, normalize_answer  # noqa: E402
from rlreason.search.corpus import Passage, load_corpus, wiki_corpus_path  # noqa: E402
from rlreason.search.index import BM25Index, DenseIndex, MiniLMEncoder  # noqa: E402

PROBES = [("capital of Japan", "Tokyo", "Tokyo"), ("capital of France", "Paris", "Paris"),
          ("author of Hamlet", "William Shakespeare", "Shakespeare")]  # query, page, answer
PROBE_PAGES = {"Tokyo", "Japan", "Paris", "France", "Hamlet", "William Shakespeare"}


def dense_index(passages: list[Passage], encoder: MiniLMEncoder) -> DenseIndex:
    """DenseIndex.load_or_build's embeddings ("title. text"), encoded shortest first (less padding), in
    memory: a subsampled corpus is not worth a cache entry."""
    texts = [f"{p.title}. {p.text}" for p in passages]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    emb = encoder.encode([texts[i] for i in order])
    out = np.empty_like(emb)
    out[order] = emb
    return DenseIndex(passages, out, encoder)


def recall(index, rows: list[dict], k: int, with_answer: bool) -> tuple[float, float | None]:
    hits = index.search([r["question"] for r in rows], k)
    page = [r["title"] in [p.title for p, _ in top] for r, top in zip(rows, hits)]
    if not with_answer:
        return float(np.mean(page)), None
    ans = [any(any(normalize_answer(a) in normalize_answer(p.text) for a in r["answers"]) for p, _ in top)
           for r, top in zip(rows, hits)]
    return float(np.mean(page)), float(np.mean(ans))


def qa_rows(ds) -> list[dict]:
    return [{"question": r["question"], "answers": gold_answers(r["answer"]),
             "title": loads_info(r["info"])["evidence_title"]} for r in ds]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--distractors", type=int, default=500, help="random wiki pages added to the dense haystack")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    t0 = time.monotonic()
    k = a.k
    wiki = load_corpus(wiki_corpus_path())
    fan_all = qa_rows(build_fanoutqa("all", answer_in_passage=False))
    fan_ans = qa_rows(build_fanoutqa("all"))
    world_ps = [Passage(r["id"], r["title"], r["text"]) for r in corpus_rows(0, 200)]
    world_q = qa_rows(list(build_qa_world("train", size=450, must_search_fraction=1.0, n_entities=200))
                      + list(build_qa_world("test", size=150, must_search_fraction=1.0, n_entities=200)))
    evidence = {r["title"] for r in fan_all}
    rng = random.Random(a.seed)
    others = [p for p in wiki if p.title not in evidence | PROBE_PAGES]
    sub = [p for p in wiki if p.title in evidence | PROBE_PAGES] + rng.sample(others, a.distractors)
    print(f"retrieval quality: recall@{k} (top-{k} passages), BM25 vs dense (all-MiniLM-L6-v2, faiss inner product)")
    print(f"questions: fanoutqa-all {len(fan_all)} sub-questions ({len(evidence)} evidence pages), "
          f"fanoutqa-ans {len(fan_ans)} (answer in page), qa_world {len(world_q)} must-search")
    print(f"corpora: wiki-offline {len(wiki)} passages; qa_world {len(world_ps)}; dense haystack SUBSAMPLED: "
          f"the {len(evidence)} evidence pages + the probes' pages + {a.distractors} other wiki pages "
          f"(random.Random({a.seed})), {len(sub)} passages")
    print()

    bm25_full = BM25Index.build(wiki)
    bm25_sub = BM25Index.build(sub)
    bm25_world = BM25Index.build(world_ps)
    bm25_both = BM25Index.build(wiki + world_ps)
    t_enc = time.monotonic()
    encoder = MiniLMEncoder()
    dense_sub = dense_index(sub, encoder)
    dense_world = dense_index(world_ps, encoder)
    dense_both_sub = DenseIndex(sub + world_ps, np.concatenate([dense_sub.emb, dense_world.emb]), encoder)
    t_enc = time.monotonic() - t_enc

    table = [
        ("fanoutqa-all", "wiki full", bm25_full, None, fan_all, False),
        ("fanoutqa-all", "wiki subsample", bm25_sub, dense_sub, fan_all, False),
        ("fanoutqa-ans", "wiki full", bm25_full, None, fan_ans, True),
        ("fanoutqa-ans", "wiki subsample", bm25_sub, dense_sub, fan_ans, True),
        ("qa_world", "world only", bm25_world, dense_world, world_q, True),
        ("qa_world", "wiki full + world", bm25_both, None, world_q, True),
        ("qa_world", "wiki subsample + world", BM25Index.build(sub + world_ps), dense_both_sub, world_q, True),
    ]
    fmt = lambda x: "   -  " if x is None else f"{x:6.3f}"  # noqa: E731
    print(f"{'questions':15s} {'corpus':24s} {'n':>4s}  {'BM25 page':>9s} {'BM25 ans':>8s}  "
          f"{'dense page':>10s} {'dense ans':>9s}")
    for name, corpus, bm, dn, rows, with_answer in table:
        bp, ba = recall(bm, rows, k, with_answer)
        dp, da = recall(dn, rows, k, with_answer) if dn is not None else (None, None)
        print(f"{name:15s} {corpus:24s} {len(rows):4d}  {fmt(bp):>9s} {fmt(ba):>8s}  {fmt(dp):>10s} {fmt(da):>9s}")
    print("(page = the evidence page among the top k; ans = the gold answer in one of the top-k passages;"
          " '-' = not measured: the dense index of the full wiki is not built here)")
    print()
    print(f"probes: top-{k} titles; page = the answer's own page among them; ans = the answer in one of them "
          f"(BM25 on the full wiki corpus | dense on the subsample):")
    for q, page, want in PROBES:
        line = f"  {q!r} -> {page}:"
        for name, index in (("BM25", bm25_full), ("dense", dense_sub)):
            top = [p for p, _ in index.search([q], k)[0]]
            hit, ans = page in [p.title for p in top], any(want in p.text for p in top)
            line += f" {name} {[p.title for p in top]} page {'hit' if hit else 'MISS'}, ans {'yes' if ans else 'no'};"
        print(line.rstrip(";"))
    print()
    print(f"dense encoding {t_enc:.0f} s; total {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()
