"""Retrieval: corpus, BM25/dense indexes, the real `rlreason serve-search` server on loopback (a
subprocess on a free port), its request bounds, and the client's retries/timeouts/error results.

`start_server` is imported by test_search_env.py as well."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rlreason.search.client import SearchClient, parse_document
from rlreason.search.corpus import WIKI_SHA256, load_corpus, wiki_corpus_path, wiki_source_file
from rlreason.search.server import Limits, RequestError, parse_request

REPO = Path(__file__).resolve().parents[1]
PASSAGES = [
    ("p-paris", "Paris", "Paris is the capital and largest city of France, on the Seine."),
    ("p-tokyo", "Tokyo", "Tokyo is the capital of Japan and its most populous city."),
    ("p-everest", "Mount Everest", "Mount Everest is Earth's highest mountain above sea level, 8,849 m."),
    ("p-apple", "Apple Inc.", "Apple Inc. is a technology company headquartered in Cupertino, California."),
    ("p-amazon", "Amazon (company)", "Amazon is an American company founded by Jeff Bezos in 1994."),
    ("p-cat", "Cat", "The cat is a small domesticated carnivorous mammal, a popular pet."),
    ("p-nile", "Nile", "The Nile is a major river in northeastern Africa flowing into the Mediterranean."),
    ("p-harvard", "Harvard University", "Harvard University is a private university founded in 1636."),
]


def write_corpus(path: Path, passages=PASSAGES) -> Path:
    path.write_text("".join(json.dumps({"id": i, "title": t, "text": x}) + "\n" for i, t, x in passages))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(corpus: Path, cache: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`rlreason serve-search` in a subprocess on a free loopback port; returns (process, /retrieve url)
    once /health answers."""
    port = free_port()
    env = dict(os.environ, RLREASON_CACHE=str(cache), RLREASON_NO_PRELOAD="1")
    proc = subprocess.Popen([sys.executable, "-m", "rlreason.cli", "serve-search", "--corpus", str(corpus),
                             "--port", str(port), *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"serve-search exited: {proc.stdout.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=1.0, trust_env=False).status_code == 200:
                return proc, f"{base}/retrieve"
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("serve-search did not become healthy within 60 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("search")
    proc, url = start_server(write_corpus(d / "corpus.jsonl"), d / "cache", "--max-queries", "4",
                             "--max-query-chars", "50", "--max-topk", "5", "--max-body-bytes", "2000")
    yield url
    stop_server(proc)


def post(url: str, body) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url, content=content, headers={"content-type": "application/json"}, timeout=5,
                      trust_env=False)


# --- corpus and index -----------------------------------------------------------------------------------

def test_wiki_corpus_is_pinned_and_converted(tmp_path, monkeypatch):
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    assert wiki_source_file().name == "summaries_en-us.json"  # sha256-checked against WIKI_SHA256
    assert len(WIKI_SHA256) == 64
    passages = load_corpus(wiki_corpus_path())
    assert len(passages) == 10033
    assert len({p.id for p in passages}) == len(passages)
    assert {"Paris", "Mount Everest", "Apple Inc."} <= {p.title for p in passages}


def test_bm25_index_is_cached_and_ranks(tmp_path, monkeypatch):
    from rlreason.search.index import BM25Index, index_dir
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    corpus = write_corpus(tmp_path / "c.jsonl")
    idx = BM25Index.load_or_build(corpus)
    marker = index_dir(corpus, "bm25") / "marker.json"
    assert marker.is_file()
    built_at = marker.stat().st_mtime_ns
    again = BM25Index.load_or_build(corpus)  # loads, does not rebuild
    assert marker.stat().st_mtime_ns == built_at
    hits = again.search(["capital of Japan", "who founded amazon", "", "the of and", "qwertyzzz"], 3)
    assert hits[0][0][0].title == "Tokyo"
    assert hits[1][0][0].title == "Amazon (company)"
    assert hits[2] == [] and hits[3] == [] and hits[4] == []
    assert [p.id for p, _ in idx.search(["capital of Japan"], 3)[0]] == [p.id for p, _ in hits[0]]
    scores = [s for _, s in hits[0]]
    assert scores == sorted(scores, reverse=True) and len(hits[0]) <= 3


def test_bad_corpus_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"id": 1, "title": "a", "text": "b"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="bad.jsonl, line 2"):
        load_corpus(p)


@pytest.mark.slow  # ~15 s: loads MiniLM through transformers
def test_dense_index_finds_by_meaning(tmp_path, monkeypatch):
    from rlreason.search.index import DenseIndex
    monkeypatch.setenv("RLREASON_CACHE", str(tmp_path))
    idx = DenseIndex.load_or_build(write_corpus(tmp_path / "c.jsonl"))
    hits = idx.search(["feline animal kept at home", "longest river in Africa"], 2)
    assert hits[0][0][0].title == "Cat" and hits[1][0][0].title == "Nile"


# --- request bounds (pure) ------------------------------------------------------------------------------

@pytest.mark.parametrize("body,status,msg", [
    (b"x" * 3000, 413, "at most 2000"),
    (b"{nope", 422, "not valid JSON"),
    (b"[1]", 422, "JSON object"),
    (json.dumps({"queries": "a"}).encode(), 422, "list of strings"),
    (json.dumps({"queries": ["a"] * 5}).encode(), 413, "5 queries in one request; at most 4"),
    (json.dumps({"queries": ["a" * 51]}).encode(), 422, "queries[0] has 51 characters; at most 50"),
    (json.dumps({"queries": ["a"], "topk": 0}).encode(), 422, "1..5"),
    (json.dumps({"queries": ["a"], "topk": 6}).encode(), 422, "1..5"),
    (json.dumps({"queries": ["a"], "return_scores": "yes"}).encode(), 422, "true or false"),
    (json.dumps({"queries": ["a"], "k": 3}).encode(), 422, "unknown fields"),
])
def test_parse_request_bounds(body, status, msg):
    limits = Limits(max_queries=4, max_query_chars=50, max_topk=5, max_body_bytes=2000)
    with pytest.raises(RequestError) as e:
        parse_request(body, limits)
    assert e.value.status == status and msg in e.value.detail


def test_parse_request_defaults():
    assert parse_request(b'{"queries": ["a", "b"]}', Limits()) == (["a", "b"], 3, False)


# --- the real server ------------------------------------------------------------------------------------

def test_health(server):
    r = httpx.get(server.replace("/retrieve", "/health"), trust_env=False)
    assert r.json() == {"status": "ok", "index": "bm25", "passages": len(PASSAGES),
                        "corpus": r.json()["corpus"]}


def test_retrieve_search_r1_shape_with_scores(server):
    r = post(server, {"queries": ["capital of France", "highest mountain"], "topk": 2, "return_scores": True})
    assert r.status_code == 200
    result = r.json()["result"]
    assert len(result) == 2 and len(result[0]) == 2 and len(result[1]) == 1  # only passages that match
    top = result[0][0]
    assert set(top) == {"document", "score"} and set(top["document"]) == {"id", "contents"}
    assert top["document"] == {"id": "p-paris", "contents": '"Paris"\n' + PASSAGES[0][2]}
    assert result[0][0]["score"] >= result[0][1]["score"] > 0
    assert result[1][0]["document"]["id"] == "p-everest"


def test_retrieve_without_scores_returns_documents_and_default_topk(server):
    result = post(server, {"queries": ["capital city company"]}).json()["result"]
    assert len(result[0]) == 3  # Search-R1 default top-3
    assert all(set(d) == {"id", "contents"} for d in result[0])


def test_server_rejects_oversized_requests(server):
    r = post(server, {"queries": ["a"] * 5})
    assert r.status_code == 413 and "at most 4" in r.json()["detail"]
    r = post(server, {"queries": ["q" * 60]})
    assert r.status_code == 422 and "at most 50" in r.json()["detail"]
    r = post(server, {"queries": ["a"], "topk": 99})
    assert r.status_code == 422
    r = post(server, b"{" + b" " * 5000 + b"}")
    assert r.status_code == 413


# --- client ---------------------------------------------------------------------------------------------

def test_client_against_real_server(server):
    async def go():
        async with SearchClient(server, topk=2) as c:
            return await c.search("Apple headquarters"), await c.search_batch(["Nile river", "Harvard founded"])
    one, two = asyncio.run(go())
    assert one.ok and one.attempts == 1 and one.docs[0].title == "Apple Inc."
    assert "Cupertino" in one.docs[0].text and one.docs[0].score > 0
    assert [r.docs[0].title for r in two] == ["Nile", "Harvard University"]


def test_client_server_down_returns_error_after_bounded_retries():
    url = f"http://127.0.0.1:{free_port()}/retrieve"  # nothing listens there
    t0 = time.monotonic()
    r = asyncio.run(SearchClient(url, retries=2, backoff_s=0.01, timeout_s=1.0).search("x"))
    assert not r.ok and r.attempts == 3 and "Connect" in r.error and r.docs == []
    assert time.monotonic() - t0 < 5


def test_client_slow_server_times_out():
    with socket.socket() as s:  # accepts connections (kernel backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/retrieve"
        t0 = time.monotonic()
        r = asyncio.run(SearchClient(url, retries=1, backoff_s=0.01, timeout_s=0.3).search("x"))
        elapsed = time.monotonic() - t0
    assert not r.ok and r.attempts == 2 and "Timeout" in r.error
    assert 0.5 < elapsed < 3.0


def test_client_retries_5xx_not_4xx_and_rejects_garbage():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        status = {1: 503, 2: 200}.get(len(calls), 200)
        return httpx.Response(status, json={"result": [[{"id": "1", "contents": '"T"\nbody'}]]})
    r = asyncio.run(SearchClient("http://x/retrieve", backoff_s=0, transport=httpx.MockTransport(handler)).search("q"))
    assert r.ok and r.attempts == 2 and r.docs[0].title == "T" and r.docs[0].text == "body"
    assert calls[0] == {"queries": ["q"], "topk": 3, "return_scores": True}

    calls.clear()
    bad = httpx.MockTransport(lambda req: (calls.append(1), httpx.Response(422, json={"detail": "no"}))[1])
    r = asyncio.run(SearchClient("http://x/retrieve", backoff_s=0, transport=bad).search("q"))
    assert not r.ok and len(calls) == 1 and "422" in r.error

    garbage = httpx.MockTransport(lambda req: httpx.Response(200, text="<html>"))
    r = asyncio.run(SearchClient("http://x/retrieve", retries=1, backoff_s=0, transport=garbage).search("q"))
    assert not r.ok and r.attempts == 2


def test_parse_document_accepts_both_shapes():
    d = parse_document({"document": {"id": "7", "contents": '"Title A"\nline1\nline2'}, "score": 1.5})
    assert (d.id, d.title, d.text, d.score) == ("7", "Title A", "line1\nline2", 1.5)
    d = parse_document({"id": "8", "title": "B", "text": "t"})
    assert (d.title, d.text, d.score) == ("B", "t", None)
    with pytest.raises(ValueError):
        parse_document({"id": "9"})
