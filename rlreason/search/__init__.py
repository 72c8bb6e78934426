"""Retrieval for the pay-per-search environment (MASH, arXiv 2510.01152): a passage corpus
(`corpus`), BM25 / dense indexes built once and cached (`index`), an HTTP server speaking Search-R1's
/retrieve protocol (`server`, `rlreason serve-search`), an async client that never raises into an
episode (`client`), and the search-removed abstention evaluation (`abstention`, `rlreason eval
--abstention`). Heavy imports (bm25s, fastapi, torch) happen inside the functions that need them."""

from rlreason.search.client import Document, SearchClient, SearchResult
from rlreason.search.corpus import Passage, load_corpus, resolve_corpus, wiki_corpus_path

__all__ = ["Document", "Passage", "SearchClient", "SearchResult", "load_corpus", "resolve_corpus",
           "wiki_corpus_path"]
