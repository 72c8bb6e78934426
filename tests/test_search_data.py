"""Search QA data: FanOutQA sub-questions whose evidence is in the corpus (pinned data -> pinned counts),
the {question, answers} jsonl builder, the dispatcher entries, and the warm-start SFT set."""

from __future__ import annotations

import json

import pytest

from rlreason.data import DataError, build_dataset, loads_info
from rlreason.data.search_qa import build_fanoutqa, build_qa_jsonl, build_warm_start_sft
from rlreason.environments.pay_per_search import PayPerSearch
from rlreason.registry import ConfigError
from rlreason.rewards.qa import extract_answer, gold_answers, normalize_answer
from rlreason.search.corpus import Passage, load_corpus, wiki_corpus_path


@pytest.fixture(scope="module")
def pages():
    return {p.title: p.text for p in load_corpus(wiki_corpus_path())}


def test_fanoutqa_splits_are_disjoint_by_parent_and_answers_are_in_the_corpus(pages):
    train, test, every = build_fanoutqa("train"), build_fanoutqa("test"), build_fanoutqa("all")
    assert (len(train), len(test), len(every)) == (59, 22, 81)  # pinned fanoutqa 1.1.1 x wiki-offline 0.0.7
    parents = lambda ds: {loads_info(i)["parent_id"] for i in ds["info"]}  # noqa: E731
    assert not parents(train) & parents(test)
    assert set(train["id"]) | set(test["id"]) == set(every["id"])
    for row in every:
        info = loads_info(row["info"])
        assert normalize_answer(row["answer"]) in normalize_answer(pages[info["evidence_title"]])
        assert row["data_source"] == "fanoutqa"
    assert len({normalize_answer(q) for q in every["question"]}) == len(every)  # deduplicated


def test_fanoutqa_without_the_passage_filter_and_other_seed():
    assert len(build_fanoutqa("all", answer_in_passage=False)) == 490
    assert set(build_fanoutqa("test", seed=1)["id"]) != set(build_fanoutqa("test", seed=0)["id"])


def test_dispatcher_sources_and_key_errors(tmp_path):
    ds = build_dataset({"source": "fanoutqa", "split": "test", "limit": 5}, key="data.eval")
    assert len(ds) == 5
    with pytest.raises(ConfigError, match="data.eval.splt: unknown key.*Did you mean 'split'"):
        build_dataset({"source": "fanoutqa", "splt": "test"}, key="data.eval")
    with pytest.raises(ConfigError, match="data.eval.split: 'dev' is not allowed"):
        build_dataset({"source": "fanoutqa", "split": "dev"}, key="data.eval")


def test_qa_jsonl(tmp_path):
    p = tmp_path / "qa.jsonl"
    p.write_text(json.dumps({"question": "Capital of Japan?", "answers": ["Tokyo", "Tōkyō"]}) + "\n\n"
                 + json.dumps({"id": "x", "question": "Founded?", "answer": 1636, "topic": "h"}) + "\n")
    ds = build_qa_jsonl(str(p))
    assert ds[0]["id"] == "qa/1" and gold_answers(ds[0]["answer"]) == ["Tokyo", "Tōkyō"]
    assert ds[1]["answer"] == "1636" and loads_info(ds[1]["info"]) == {"topic": "h"}
    assert len(build_dataset({"source": "qa_jsonl", "path": str(p)})) == 2
    p.write_text(json.dumps({"question": "q", "answers": []}) + "\n")
    with pytest.raises(DataError, match="qa.jsonl, line 1: 'answers' must be"):
        build_qa_jsonl(str(p))


class FakeIndex:
    def __init__(self):
        self.queries = []

    def search(self, queries, topk):
        self.queries += queries
        return [[(Passage("1", "Tokyo", "Tokyo is the capital of Japan."), 3.0)] for _ in queries]


def test_warm_start_sft(tmp_path):
    rows = [{"id": str(i), "question": f"Question {i}?", "answer": f"answer {i}",
             "info": json.dumps({"evidence_title": f"Page {i}"})} for i in range(30)]
    out = tmp_path / "sft.jsonl"
    idx = FakeIndex()
    counts = build_warm_start_sft(rows, out, index=idx, direct_fraction=1 / 3, max_searches=2, seed=0,
                                  env_args={"style": "raw"})
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert counts["rows"] == len(lines) == 30 and counts["direct"] + counts["search"] == 30
    assert 5 <= counts["direct"] <= 15
    env = PayPerSearch(None, style="raw")
    n_search = 0
    for row, line in zip(rows, lines):
        assert set(line) == {"prompt", "completion"}
        assert line["prompt"] == env.prompt(dict(row, info={}))
        c = line["completion"]
        assert extract_answer(c) == row["answer"] and c.endswith("</answer>")
        searches = c.count("<search>")
        assert searches <= 2 and c.count("<document>") == searches
        if searches:
            assert f"<search> {row['question']} </search>" in c and "(Title: Tokyo)" in c
        if searches == 2:
            assert f"<search> Page {row['id']} </search>" in c  # the second query is the evidence title
        n_search += searches > 0
    assert n_search == counts["search"]
    assert len(idx.queries) == sum(line["completion"].count("<search>") for line in lines)
