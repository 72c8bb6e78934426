"""A controlled QA world for pay-per-search (MASH, arXiv 2510.01152) at small scale.

A pretrained model knows nothing about fictional people, so whether a question needs a search is decided
by construction, not guessed:

- **must_search**: "Where was Velmora Quistan born?" about a *corpus entity*, whose facts are written only in
  its one-paragraph corpus document (title = the name). The model cannot know them; a BM25 search for the
  question finds the document (tests check top-3 for every question).
- **no_search**: the question itself states the facts of a *prompt-only entity* ("Dorin Askel is a weaver
  from Ulmabra, born in 1874. In what year was Dorin Askel born?"). The answer is in the prompt; a search
  cannot help (the entity has no document) and only costs. Extraction from given text is what SmolLM2-135M
  does reliably, so both kinds are learnable.

The world is a function of (seed, n_entities) only: names are built from syllables, attributes are a
birthplace (a fictional town), an occupation and a birth year. Corpus entities and prompt-only entities
are each split into train / test by `test_fraction`, so the test split asks about entities no training row
mentions (no entity is shared between splits). The corpus holds every corpus entity, train and test, so a
held-out must-search question is still answerable by searching.

Rows have the standard columns (rlreason.data.schema); `info` carries `type` (must_search | no_search),
`attribute`, `entity`, `split`, and for must-search rows `evidence_title` (the document to retrieve), so
metrics can be split by type and the warm-start SFT builder searches for the right page.

    rlreason data source=qa_world split=train size=8
    python -m rlreason.data.qa_world corpus --out runs/qa_world/corpus.jsonl [--with-wiki]
    python -m rlreason.data.qa_world sft --out runs/qa_world/warm_start.jsonl --size 300 \
        --config configs/qa_world_cpu.yaml   # the prompt of the RL run
    rlreason serve-search --corpus runs/qa_world/corpus.jsonl --port 8765
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset

from rlreason.data.schema import make_dataset, make_row
from rlreason.registry import ConfigError
from rlreason.search.corpus import Passage, load_corpus, wiki_corpus_path, write_jsonl

SOURCE = "qa_world"
SPLITS = ("train", "test")
TYPES = ("must_search", "no_search")
ATTRIBUTES = ("birthplace", "occupation", "year")

SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "dor", "quis", "tal", "bre", "zu", "nor", "fel", "ash", "kel",
             "mor", "sil", "tra", "vo", "gan", "pel", "rin", "sa", "tho", "ul", "wen", "yar", "bex", "cor",
             "dru", "esk", "fin", "hal", "ist", "jor", "lum", "mab", "nev", "oth", "pry", "qua")
TOWN_ENDINGS = ("ford", "mere", "holt", "vale", "wick", "stead", "moor", "bury")
OCCUPATIONS = ("baker", "sailor", "weaver", "painter", "astronomer", "blacksmith", "cartographer",
               "beekeeper", "clockmaker", "glassblower", "botanist", "violinist", "stonemason", "translator",
               "potter", "falconer")
YEARS = (1700, 1999)

MUST_SEARCH_TEMPLATES = {
    "birthplace": ("Where was {name} born?", "In which town was {name} born?"),
    "occupation": ("What is the occupation of {name}?", "What did {name} work as?"),
    "year": ("In what year was {name} born?", "When was {name} born?"),
}
CONTEXT_TEMPLATES = (
    "{name} is {a_occupation} from {birthplace}, born in {year}.",
    "Born in {birthplace} in {year}, {name} works as {a_occupation}.",
)


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


@dataclass(frozen=True)
class Entity:
    name: str
    birthplace: str
    occupation: str
    year: str
    split: str  # train | test
    in_corpus: bool  # False: a prompt-only entity of no-search questions

    def answer(self, attribute: str) -> str:
        return str(getattr(self, attribute))

    def document(self) -> str:
        """The one corpus passage that holds this entity's facts (short: MASH cuts passages to ~50 words)."""
        return (f"{self.name} (born {self.year}) is {_a(self.occupation)} from {self.birthplace}. "
                f"{self.name} was born in the town of {self.birthplace} in {self.year} "
                f"and worked as {_a(self.occupation)}.")

    def context(self, rng: random.Random) -> str:
        return rng.choice(CONTEXT_TEMPLATES).format(name=self.name, birthplace=self.birthplace,
                                                    a_occupation=_a(self.occupation), year=self.year)


def _rng(*parts: Any) -> random.Random:
    """A generator per purpose, seeded from a sha256 of its parts: independent of PYTHONHASHSEED and of the
    order other parts of the world are drawn in."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(lo, hi))).capitalize()


def _check(n_entities: int, test_fraction: float) -> None:
    if isinstance(n_entities, bool) or not isinstance(n_entities, int) or n_entities < 2:
        raise ConfigError(f"n_entities: must be an integer >= 2, got {n_entities!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction: must be in (0, 1), got {test_fraction}.")


def build_world(seed: int = 0, n_entities: int = 200, test_fraction: float = 0.25) -> list[Entity]:
    """`n_entities` corpus entities then `n_entities` prompt-only ones, all names distinct (and no name a
    town). Attributes depend on (seed, n_entities) only; `test_fraction` only decides which are held out,
    so the corpus is the same whatever the split settings."""
    _check(n_entities, test_fraction)
    rng = _rng("qa_world", seed, n_entities)
    towns: list[str] = []
    while len(towns) < max(8, n_entities // 4):
        t = _word(rng, 1, 2) + rng.choice(TOWN_ENDINGS)
        if t not in towns:
            towns.append(t)
    names: list[str] = []
    seen = {t.lower() for t in towns}
    while len(names) < 2 * n_entities:
        first, last = _word(rng, 2, 3), _word(rng, 2, 3)
        if first.lower() in seen or last.lower() in seen or first == last:
            continue  # every name token is unique to its entity: a search for it finds one document
        seen |= {first.lower(), last.lower()}
        names.append(f"{first} {last}")
    n_test = max(1, round(n_entities * test_fraction))
    entities: list[Entity] = []
    for group, in_corpus in ((names[:n_entities], True), (names[n_entities:], False)):
        test = set(_rng("qa_world-split", seed, n_entities, n_test, in_corpus).sample(range(n_entities), n_test))
        for i, name in enumerate(group):
            entities.append(Entity(name, rng.choice(towns), rng.choice(OCCUPATIONS), str(rng.randint(*YEARS)),
                                   "test" if i in test else "train", in_corpus))
    return entities


def corpus_rows(seed: int = 0, n_entities: int = 200) -> list[dict[str, str]]:
    """The world's corpus as {id, title, text} rows, one per corpus entity (both splits)."""
    world = build_world(seed, n_entities)
    return [{"id": f"qaw-{seed}-{i}", "title": e.name, "text": e.document()}
            for i, e in enumerate(x for x in world if x.in_corpus)]


def write_corpus(out: str | Path, *, seed: int = 0, n_entities: int = 200, with_wiki: bool = False) -> dict:
    """Write the corpus jsonl `rlreason serve-search --corpus` reads: the world's documents alone, or
    (`with_wiki`) appended to the built-in Wikipedia leads, so a search can also land on real pages."""
    rows = corpus_rows(seed, n_entities)
    if with_wiki:
        wiki = [{"id": p.id, "title": p.title, "text": p.text} for p in load_corpus(wiki_corpus_path())]
        rows = wiki + rows
    write_jsonl(Path(out), rows)
    return {"passages": len(rows), "world": n_entities, "path": str(out)}


def build_qa_world(split: str = "train", size: int = 200, must_search_fraction: float = 0.5,
                   n_entities: int = 200, test_fraction: float = 0.25, seed: int = 0) -> Dataset:
    """`size` rows of `split`: round(size x must_search_fraction) must-search questions about the split's
    corpus entities, the rest no-search questions about its prompt-only entities, each (entity, attribute)
    pair at most once, rows in a seeded order."""
    if split not in SPLITS:
        raise ConfigError(f"split: '{split}' is not allowed. Allowed: {', '.join(SPLITS)}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"size: must be a positive integer, got {size!r}.")
    if not 0.0 <= must_search_fraction <= 1.0:
        raise ConfigError(f"must_search_fraction: must be in [0, 1], got {must_search_fraction}.")
    world = [e for e in build_world(seed, n_entities, test_fraction) if e.split == split]
    n_must = round(size * must_search_fraction)
    rng = _rng("qa_world-rows", seed, n_entities, test_fraction, split, size, must_search_fraction)
    picked: list[tuple[str, Entity, str]] = []
    for qtype, n, in_corpus in (("must_search", n_must, True), ("no_search", size - n_must, False)):
        pairs = [(e, a) for e in world if e.in_corpus == in_corpus for a in ATTRIBUTES]
        if n > len(pairs):
            raise ConfigError(f"size: {n} {qtype} questions asked of split '{split}', which has only "
                              f"{len(pairs)} ({len(pairs) // len(ATTRIBUTES)} entities x {len(ATTRIBUTES)} "
                              f"attributes); raise n_entities or lower size.")
        picked += [(qtype, e, a) for e, a in rng.sample(pairs, n)]
    rng.shuffle(picked)
    rows = []
    for i, (qtype, e, attr) in enumerate(picked):
        ask = rng.choice(MUST_SEARCH_TEMPLATES[attr]).format(name=e.name)
        info: dict[str, Any] = {"type": qtype, "attribute": attr, "entity": e.name, "split": split,
                                "world_seed": seed, "n_entities": n_entities}
        if qtype == "must_search":
            question = ask
            info["evidence_title"] = e.name
        else:
            question = f"{e.context(rng)} {ask}"
        rows.append(make_row(f"{SOURCE}/{seed}/{split}/{i}", question, e.answer(attr), SOURCE, info))
    return make_dataset(rows)


def write_sft(out: str | Path, *, split: str = "train", size: int = 300, must_search_fraction: float = 0.5,
              n_entities: int = 200, test_fraction: float = 0.25, seed: int = 0, max_searches: int = 1,
              corpus: str | Path | None = None, env_args: dict[str, Any] | None = None) -> dict:
    """Warm-start SFT lines ({prompt, completion}, via search_qa.build_warm_start_sft) that show the right
    behaviour per type: no-search rows answer at once, must-search rows search first (the question, then the
    entity's name) with real passages from a BM25 index of `corpus` (default: the world's own documents)."""
    from rlreason.data.search_qa import build_warm_start_sft
    from rlreason.search.index import BM25Index

    ds = build_qa_world(split, size, must_search_fraction, n_entities, test_fraction, seed)
    if corpus is None:
        passages = [Passage(r["id"], r["title"], r["text"]) for r in corpus_rows(seed, n_entities)]
    else:
        passages = load_corpus(corpus)
    index = BM25Index.build(passages)
    by_type = {t: [r for r in ds if json.loads(r["info"])["type"] == t] for t in TYPES}
    lines: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for t, direct in (("must_search", 0.0), ("no_search", 1.0)):
            path = Path(tmp) / f"{t}.jsonl"
            build_warm_start_sft(by_type[t], path, index=index, direct_fraction=direct,
                                 max_searches=max_searches, seed=seed, env_args=env_args)
            rows = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
            for line in rows:  # a prompt that opens the thought (configs/qa_world_cpu.yaml's) is not reopened
                if line["prompt"].endswith("<think>") and line["completion"].startswith("<think>"):
                    line["completion"] = line["completion"][len("<think>"):]
            lines += [(r["id"], line) for r, line in zip(by_type[t], rows)]
    order = {r["id"]: i for i, r in enumerate(ds)}  # the dataset's own seeded order
    lines.sort(key=lambda x: order[x[0]])
    write_jsonl(Path(out), [line for _, line in lines])
    return {"rows": len(lines), "direct": len(by_type["no_search"]), "search": len(by_type["must_search"]),
            "path": str(out)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m rlreason.data.qa_world")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="write the world's corpus jsonl for `rlreason serve-search --corpus`")
    c.add_argument("--out", required=True)
    c.add_argument("--with-wiki", action="store_true", help="append the documents to the Wikipedia leads")
    s = sub.add_parser("sft", help="write warm-start SFT lines ({prompt, completion})")
    s.add_argument("--out", required=True)
    s.add_argument("--split", default="train", choices=SPLITS)
    s.add_argument("--size", type=int, default=300)
    s.add_argument("--must-search-fraction", type=float, default=0.5)
    s.add_argument("--test-fraction", type=float, default=0.25)
    s.add_argument("--max-searches", type=int, default=1)
    s.add_argument("--corpus", help="corpus jsonl the SFT passages come from (default: the world's own)")
    s.add_argument("--config", help="take the pay_per_search env args (template, style, ...) from this config")
    s.add_argument("--env-args", default="{}", help="pay_per_search env args as JSON (override --config's)")
    for p in (c, s):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--n-entities", type=int, default=200)
    a = ap.parse_args(argv)
    if a.cmd == "corpus":
        print(write_corpus(a.out, seed=a.seed, n_entities=a.n_entities, with_wiki=a.with_wiki))
    else:
        env_args = {}
        if a.config:
            from rlreason.config import load_config
            env_args = dict(load_config(a.config).env.args)
        env_args.update(json.loads(a.env_args))
        print(write_sft(a.out, split=a.split, size=a.size, must_search_fraction=a.must_search_fraction,
                        n_entities=a.n_entities, test_fraction=a.test_fraction, seed=a.seed,
                        max_searches=a.max_searches, corpus=a.corpus, env_args=env_args))


if __name__ == "__main__":
    main()
