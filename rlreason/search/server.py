"""`rlreason serve-search`: a retrieval index behind HTTP, speaking Search-R1's protocol so the same
environment can talk to this server or to an existing Search-R1 / MASH E5 + wiki-18 server.

    POST /retrieve  {"queries": ["..."], "topk": 3, "return_scores": true}
      -> {"result": [[{"document": {"id": "...", "contents": "\\"Title\\"\\ntext"}, "score": 7.1}, ...], ...]}
         (with "return_scores": false each inner list holds the documents themselves, as Search-R1 does)
    GET  /health    -> {"status": "ok", "index": "bm25", "passages": 10033, "corpus": "..."}

Binds 127.0.0.1 unless told otherwise. Requests are bounded: a body over `max_body_bytes` (counted as it
streams in, chunked or not) or more than `max_queries` queries -> 413; a query longer than
`max_query_chars`, topk outside 1..`max_topk`, or a malformed body (bad JSON, nesting too deep, a
5,000-digit number) -> 422; a request whose headers or body are not in within `read_timeout_s` -> 408 or
the connection closed. Every error body is {"detail": "<what was wrong and the limit>"}. Searching and
encoding the answer run in a worker thread, so one large request does not stall small ones.

fastapi/uvicorn are imported when a server is built, so `rlreason --help` stays fast.
"""

# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations at runtime,
# and `Request` is imported inside create_app.
import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, fields
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_PORT = 8000  # Search-R1's default, so its configs work unchanged


@dataclass(frozen=True)
class Limits:
    max_queries: int = 64  # queries per request (Search-R1 batches a rollout step's searches)
    max_query_chars: int = 2000
    max_topk: int = 50
    max_body_bytes: int = 1 << 20
    default_topk: int = 3  # when a request omits topk (MASH / Search-R1 use top-3)
    read_timeout_s: int = 10  # a request's headers, and then its body, must arrive within this many seconds


class RequestError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else f"{text[:n]}... ({len(text)} characters)"


def parse_request(body: bytes, limits: Limits) -> tuple[list[str], int, bool]:
    """Validate a /retrieve body; raise RequestError(413|422, message) naming the field and the limit."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; at most {limits.max_body_bytes}")
    try:
        req = json.loads(body or b"null")
    except RecursionError:
        raise RequestError(422, "body is not valid JSON: nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer over 4300 digits
        raise RequestError(422, f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(req, dict):
        raise RequestError(422, 'body must be a JSON object {"queries": [...], "topk": k, "return_scores": bool}')
    unknown = sorted(set(req) - {"queries", "topk", "return_scores"})
    if unknown:
        raise RequestError(422, f"unknown fields {_short(unknown)}; allowed: queries, topk, return_scores")
    queries = req.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise RequestError(422, "'queries' must be a list of strings")
    if len(queries) > limits.max_queries:
        raise RequestError(413, f"{len(queries)} queries in one request; at most {limits.max_queries}")
    for i, q in enumerate(queries):
        if len(q) > limits.max_query_chars:
            raise RequestError(422, f"queries[{i}] has {len(q)} characters; at most {limits.max_query_chars}")
    topk = req.get("topk")
    if topk is None:
        topk = limits.default_topk
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= limits.max_topk:
        raise RequestError(422, f"'topk' must be an integer in 1..{limits.max_topk}, got {_short(topk)}")
    return_scores = req.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise RequestError(422, f"'return_scores' must be true or false, got {_short(return_scores)}")
    return queries, topk, return_scores


async def read_body(receive_chunks: Any, limits: Limits) -> bytes:
    """The request body, refused (413) as soon as it passes max_body_bytes, whatever Content-Length said or
    whether it was chunked, and (408) when it has not all arrived within read_timeout_s."""
    deadline = time.monotonic() + limits.read_timeout_s
    body = bytearray()
    chunks = receive_chunks.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), max(0.0, deadline - time.monotonic()))
        except StopAsyncIteration:
            return bytes(body)
        except asyncio.TimeoutError:
            raise RequestError(408, f"request body not received within {limits.read_timeout_s} s "
                                    f"({len(body)} bytes arrived)") from None
        body += chunk
        if len(body) > limits.max_body_bytes:
            raise RequestError(413, f"request body is over {limits.max_body_bytes} bytes; "
                                    f"at most {limits.max_body_bytes}")


# Requests at most this large are searched on the event loop (a rollout's one-query searches: a thread hop
# would double their latency); larger ones in a worker thread. A maximal request (64 queries x 2000
# characters, topk 50) takes ~0.3-0.7 s of BM25 and encoding, and on the loop it held every other
# request for that long (benchmarks/search_server.py, mixed workload: probe p50 462 ms -> 8 ms).
INLINE_MAX_QUERIES = 4
INLINE_MAX_CHARS = 1000


def create_app(index: Any, limits: Limits = Limits(), corpus: str = "") -> Any:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    app = FastAPI(title="rlreason search", docs_url=None, redoc_url=None, openapi_url=None)
    # The dense encoder's tokenizer is not safe to share between threads; BM25 (numpy over a fixed
    # index) is, so its requests search in parallel.
    search_lock = threading.Lock() if getattr(index, "kind", "") == "dense" else None
    from rlreason.search.timed_protocol import TimedHTTPProtocol
    TimedHTTPProtocol.read_timeout_s = limits.read_timeout_s  # per process: each worker builds its app

    def search(queries: list[str], topk: int, return_scores: bool) -> bytes:
        if search_lock is not None:
            with search_lock:
                found = index.search(queries, topk)
        else:
            found = index.search(queries, topk)
        result = []
        for hits in found:
            docs = [{"id": p.id, "contents": p.contents} for p, _ in hits]
            result.append([{"document": d, "score": s} for d, (_, s) in zip(docs, hits)] if return_scores else docs)
        # json.dumps straight to bytes: FastAPI's generic encoder costs more than the BM25 search here.
        return json.dumps({"result": result}, ensure_ascii=False).encode()

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "index": index.kind, "passages": len(index.passages), "corpus": corpus}

    @app.post("/retrieve")
    async def retrieve(request: Request) -> Any:
        declared = request.headers.get("content-length")
        # len() first: int() of a 5,000-digit header would raise.
        if declared and declared.isdigit() and (len(declared) > 15 or int(declared) > limits.max_body_bytes):
            return JSONResponse({"detail": f"request body is {_short(declared, 20)} bytes; "
                                           f"at most {limits.max_body_bytes}"},
                                status_code=413, headers={"connection": "close"})
        try:
            queries, topk, return_scores = parse_request(await read_body(request.stream(), limits), limits)
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            return Response(status_code=400)
        except RequestError as e:
            # 413/408 leave an unread body on the connection: close it rather than parse the rest.
            close = {"connection": "close"} if e.status in (408, 413) else None
            return JSONResponse({"detail": e.detail}, status_code=e.status, headers=close)
        if len(queries) <= INLINE_MAX_QUERIES and sum(map(len, queries)) <= INLINE_MAX_CHARS:
            body = search(queries, topk, return_scores)  # ~0.3 ms: cheaper than the thread hop (~1 ms)
        else:  # off the event loop, so that small requests are not queued behind it
            body = await run_in_threadpool(search, queries, topk, return_scores)
        return Response(body, media_type="application/json")

    return app


WORKER_ENV = "_RLREASON_SEARCH_SERVE"  # how `serve(workers > 1)` hands its settings to worker processes


def app_from_env() -> Any:
    """uvicorn factory for worker processes: each loads the (already built) index from the cache."""
    from pathlib import Path

    from rlreason.search.index import load_index
    cfg = json.loads(os.environ[WORKER_ENV])
    return create_app(load_index(cfg["index"], Path(cfg["corpus"])), Limits(**cfg["limits"]), cfg["corpus"])


def serve(corpus: str | None = None, *, index: str = "bm25", host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          limits: Limits = Limits(), log_level: str = "warning", workers: int = 1) -> None:
    """Load (building once if needed) the index of `corpus` and serve it until interrupted. `workers` > 1
    runs that many server processes on the port (one event loop each, the index loaded in each)."""
    import uvicorn

    from rlreason.search.corpus import resolve_corpus
    from rlreason.search.index import load_index
    from rlreason.search.timed_protocol import TimedHTTPProtocol

    path = resolve_corpus(corpus)
    idx = load_index(index, path)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serve-search is binding %s: the index is then reachable from other machines", host)
    print(f"serve-search: {idx.kind} index of {len(idx.passages)} passages from {path} "
          f"on http://{host}:{port}/retrieve ({workers} worker{'s' if workers > 1 else ''})", flush=True)
    if workers > 1:
        os.environ[WORKER_ENV] = json.dumps({"index": index, "corpus": str(path), "limits": asdict(limits)})
        uvicorn.run("rlreason.search.server:app_from_env", factory=True, workers=workers, host=host, port=port,
                    log_level=log_level, access_log=False, http=TimedHTTPProtocol)
    else:
        uvicorn.run(create_app(idx, limits, str(path)), host=host, port=port, log_level=log_level,
                    access_log=False, http=TimedHTTPProtocol)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default=None,
                   help="jsonl of {id, title, text}; default: the built-in wiki-offline corpus (~10k Wikipedia leads)")
    p.add_argument("--index", choices=["bm25", "dense"], default="bm25",
                   help="bm25 (default) or dense (all-MiniLM-L6-v2 embeddings; first build takes minutes on CPU)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    for f in fields(Limits):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=f.default, dest=f.name,
                       help=f"default {f.default}")
    p.add_argument("--workers", type=int, default=1, help="server processes (each holds the index)")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])


def cli(a: argparse.Namespace) -> int:
    limits = Limits(**{f.name: getattr(a, f.name) for f in fields(Limits)})
    serve(a.corpus, index=a.index, host=a.host, port=a.port, limits=limits, log_level=a.log_level,
          workers=a.workers)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m rlreason.search.server")
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO)
    sys.exit(cli(parser.parse_args()))
