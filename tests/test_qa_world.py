"""The controlled QA world: a pinned, seeded build; exact type proportions; no entity shared between train
and test; every must-search answer found by the real BM25 index in the top 3; every no-search answer
written in the question; the dispatcher entry; the warm-start SFT lines per type."""

from __future__ import annotations

import hashlib
import json

import pytest

from rlreason.data import build_dataset, loads_info
from rlreason.data.qa_world import (ATTRIBUTES, build_qa_world, build_world, corpus_rows, write_corpus,
                                    write_sft)
from rlreason.environments.pay_per_search import PayPerSearch
from rlreason.registry import ConfigError
from rlreason.rewards.qa import normalize_answer
from rlreason.search.corpus import load_corpus
from rlreason.search.index import load_index

SMALL = {"n_entities": 20, "test_fraction": 0.25, "seed": 0}
# sha256 of the small build (train 40 rows + test 10 rows + the 20-document corpus, as sorted-key JSON lines).
# A change here changes every run's data: update it only on purpose, and say so in the commit.
SMALL_SHA256 = "ed47ab96c2c31d88d3fa132a56044da6751f6dfe0331a604dc2f20d2205c63a0"


def small_build_sha256() -> str:
    train = build_qa_world("train", size=40, **SMALL)
    test = build_qa_world("test", size=10, **SMALL)
    lines = [json.dumps(r, sort_keys=True) for r in list(train) + list(test) + corpus_rows(0, 20)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_small_build_is_pinned():
    assert small_build_sha256() == SMALL_SHA256  # also across processes: no str hash() in the generator


def test_seed_changes_the_world_and_split_settings_do_not_change_the_corpus():
    assert list(build_qa_world("train", size=20, **SMALL)) == list(build_qa_world("train", size=20, **SMALL))
    assert corpus_rows(0, 20) != corpus_rows(1, 20)
    same = lambda w: [(e.name, e.birthplace, e.occupation, e.year, e.in_corpus) for e in w]  # noqa: E731
    assert same(build_world(0, 20, 0.25)) == same(build_world(0, 20, 0.5))


@pytest.mark.parametrize("size,fraction", [(40, 0.5), (30, 0.2), (17, 1 / 3), (12, 0.0), (12, 1.0)])
def test_type_proportions(size, fraction):
    ds = build_qa_world("train", size=size, must_search_fraction=fraction, **SMALL)
    types = [loads_info(i)["type"] for i in ds["info"]]
    assert len(ds) == size
    assert types.count("must_search") == round(size * fraction)
    assert types.count("no_search") == size - round(size * fraction)
    assert len(set(ds["id"])) == size and len({(q, a) for q, a in zip(ds["question"], ds["answer"])}) == size


def test_no_entity_is_shared_between_train_and_test():
    kw = {"n_entities": 40, "test_fraction": 0.25, "seed": 3}
    train = build_qa_world("train", size=90, **kw)
    test = build_qa_world("test", size=30, **kw)
    entities = lambda ds: {loads_info(i)["entity"] for i in ds["info"]}  # noqa: E731
    assert entities(train) and entities(test) and not entities(train) & entities(test)
    tokens = {t.lower() for name in entities(test) for t in name.split()}
    for q in train["question"]:  # not even as a word of another question
        assert not tokens & {w.strip("?,.").lower() for w in q.split()}
    world = build_world(**kw)
    assert sum(e.split == "test" for e in world if e.in_corpus) == 10
    assert len({e.name for e in world}) == len(world) == 80


@pytest.fixture(scope="module")
def world_index(tmp_path_factory):
    """The corpus file served by `rlreason serve-search --corpus`, indexed as the server does (into a temp
    cache, not the user's)."""
    tmp = tmp_path_factory.mktemp("qa_world")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLREASON_CACHE", str(tmp / "cache"))
        write_corpus(tmp / "corpus.jsonl", seed=0, n_entities=100)
        return tmp / "corpus.jsonl", load_index("bm25", tmp / "corpus.jsonl")


@pytest.mark.parametrize("split", ["train", "test"])
def test_every_must_search_answer_is_in_the_bm25_top3(world_index, split):
    path, index = world_index
    ds = build_qa_world(split, size=150 if split == "train" else 50, must_search_fraction=1.0,
                        n_entities=100, seed=0)
    hits = index.search(list(ds["question"]), topk=3)
    for row, top in zip(ds, hits):
        info = loads_info(row["info"])
        assert info["evidence_title"] in [p.title for p, _ in top], row["question"]
        doc = next(p for p, _ in top if p.title == info["evidence_title"])
        assert normalize_answer(row["answer"]) in normalize_answer(doc.text)
    titles = {p.title for p in load_corpus(path)}
    assert {loads_info(i)["entity"] for i in ds["info"]} <= titles


def test_no_search_answers_are_in_the_prompt_and_nowhere_in_the_corpus(world_index):
    path, _ = world_index
    corpus_text = " ".join(f"{p.title} {p.text}" for p in load_corpus(path))
    env = PayPerSearch(None, style="raw")
    for split in ("train", "test"):
        ds = build_qa_world(split, size=40, must_search_fraction=0.0, n_entities=100, seed=0)
        for row in ds:
            info = loads_info(row["info"])
            assert info["type"] == "no_search" and info["attribute"] in ATTRIBUTES
            assert normalize_answer(row["answer"]) in normalize_answer(env.prompt(row))
            assert info["entity"] not in corpus_text  # a search cannot help, only cost


def test_dispatcher_and_config_errors():
    ds = build_dataset({"source": "qa_world", "split": "test", "size": 6, "n_entities": 20, "limit": 4},
                       key="data.eval")
    assert len(ds) == 4 and set(ds["data_source"]) == {"qa_world"}
    with pytest.raises(ConfigError, match="data.train.size: 100 must_search questions asked of split 'train'"):
        build_dataset({"source": "qa_world", "size": 200, "n_entities": 20}, key="data.train")
    with pytest.raises(ConfigError, match="data.eval.split: 'dev' is not allowed"):
        build_dataset({"source": "qa_world", "split": "dev"}, key="data.eval")
    with pytest.raises(ConfigError, match="must_search_fraction: must be in"):
        build_qa_world(must_search_fraction=1.5)


def test_warm_start_sft_searches_exactly_on_must_search_rows(tmp_path):
    out = tmp_path / "sft.jsonl"
    counts = write_sft(out, size=24, must_search_fraction=0.5, n_entities=20, seed=0, max_searches=1,
                       env_args={"style": "raw"})
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    ds = build_qa_world("train", size=24, must_search_fraction=0.5, n_entities=20, seed=0)
    env = PayPerSearch(None, style="raw")
    assert counts["rows"] == len(lines) == 24 and counts["search"] == counts["direct"] == 12
    for row, line in zip(ds, lines):
        assert line["prompt"] == env.prompt(row)
        c = line["completion"]
        assert c.rstrip().endswith(f"<answer> {row['answer']} </answer>")
        if loads_info(row["info"])["type"] == "must_search":
            assert c.count("<search>") == 1
            docs = c.split("<search>", 1)[1].rsplit("<answer>", 1)[0]
            assert normalize_answer(row["answer"]) in normalize_answer(docs)  # the search found it
        else:
            assert "<search>" not in c and "<document>" not in c


def test_corpus_alone_or_with_the_wiki_leads_and_the_repo_config(tmp_path):
    from rlreason.config import load_config
    from rlreason.data.qa_world import main
    from rlreason.search.corpus import wiki_corpus_path

    main(["corpus", "--out", str(tmp_path / "world.jsonl"), "--n-entities", "20"])
    world = load_corpus(tmp_path / "world.jsonl")
    assert [p.title for p in world] == [r["title"] for r in corpus_rows(0, 20)]
    write_corpus(tmp_path / "both.jsonl", n_entities=20, with_wiki=True)
    both = load_corpus(tmp_path / "both.jsonl")  # raises on a duplicate id
    assert len(both) == len(load_corpus(wiki_corpus_path())) + 20 and both[-20:] == world
    cfg = load_config("configs/qa_world_cpu.yaml")
    train, test = build_dataset(cfg.data.train, key="data.train"), build_dataset(cfg.data.eval, key="data.eval")
    assert (len(train), len(test)) == (256, 64)
    assert sum(loads_info(i)["type"] == "must_search" for i in test["info"]) == 32
