"""Async client of a Search-R1-protocol retrieval server (`rlreason serve-search`, or Search-R1's own).

`search()` never raises into an episode: a server that is down, slow, or answers garbage yields a
`SearchResult` with `error` set after a bounded number of attempts (timeout per attempt, exponential
backoff between attempts), and the environment turns that into a tool message and a `tool_errors`
count. Only 5xx answers, timeouts and connection failures are retried; a 4xx is final (the same
request would fail again).

    async with SearchClient("http://127.0.0.1:8000/retrieve") as c:   # one connection pool
        r = await c.search("capital of france")                       # r.docs, r.error
    r = await SearchClient(url).search(q)                              # or a short-lived client
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import httpx

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000/retrieve"


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    score: float | None = None


@dataclass
class SearchResult:
    docs: list[Document] = field(default_factory=list)
    error: str | None = None
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_document(item: Any) -> Document:
    """One entry of a result list: {"document": {...}, "score": s} (return_scores) or the document
    itself; a document is {"id", "contents": '"Title"\\ntext'} (Search-R1) or {"id", "title", "text"}."""
    score = None
    if isinstance(item, dict) and "document" in item:
        score = item.get("score")
        item = item["document"]
    if not isinstance(item, dict):
        raise ValueError(f"a result entry must be an object, got {type(item).__name__}")
    if "contents" in item:
        title, _, text = str(item["contents"]).partition("\n")
        title = title.strip().strip('"')
    elif "text" in item:
        title, text = str(item.get("title", "")), str(item["text"])
    else:
        raise ValueError(f"a document needs 'contents' or 'text', got keys {sorted(item)}")
    return Document(str(item.get("id", "")), title, text.strip(),
                    float(score) if isinstance(score, (int, float)) else None)


class SearchClient:
    def __init__(self, url: str = DEFAULT_URL, *, topk: int = 3, timeout_s: float = 5.0, retries: int = 2,
                 backoff_s: float = 0.1, max_backoff_s: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        if retries < 0 or timeout_s <= 0 or topk < 1:
            raise ValueError(f"SearchClient needs retries >= 0, timeout_s > 0, topk >= 1; "
                             f"got {retries}, {timeout_s}, {topk}")
        self.url, self.topk, self.timeout_s, self.retries = url, topk, timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.transport = transport  # tests inject httpx.MockTransport
        self._client: httpx.AsyncClient | None = None

    def _new_client(self) -> httpx.AsyncClient:
        # trust_env=False: a proxy from the environment must not intercept a loopback retrieval server.
        return httpx.AsyncClient(timeout=self.timeout_s, trust_env=False, transport=self.transport)

    async def __aenter__(self) -> "SearchClient":
        self._client = self._new_client()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def search(self, query: str) -> SearchResult:
        return (await self.search_batch([query]))[0]

    async def search_batch(self, queries: list[str]) -> list[SearchResult]:
        """One request for all `queries`; on failure every query gets the same error."""
        payload = {"queries": list(queries), "topk": self.topk, "return_scores": True}
        error = "no attempt made"
        for attempt in range(1, self.retries + 2):
            try:
                if self._client is not None:
                    body = await self._post(self._client, payload)
                else:
                    async with self._new_client() as c:
                        body = await self._post(c, payload)
                results = body["result"]
                if not isinstance(results, list) or len(results) != len(queries):
                    raise ValueError(f"expected {len(queries)} result lists, got {type(results).__name__}")
                return [SearchResult([parse_document(d) for d in r], None, attempt) for r in results]
            except _Final as e:
                error = str(e)
                break
            except (httpx.HTTPError, asyncio.TimeoutError, OSError, ValueError, KeyError, TypeError) as e:
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                if attempt <= self.retries:
                    await asyncio.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
        log.warning("search failed after %d attempt(s): %s", attempt, error)
        return [SearchResult([], error, attempt) for _ in queries]

    async def _post(self, client: httpx.AsyncClient, payload: dict) -> Any:
        # wait_for bounds the whole attempt; httpx's own timeout is per phase (connect, read, ...).
        r = await asyncio.wait_for(client.post(self.url, json=payload), timeout=self.timeout_s)
        if 400 <= r.status_code < 500:
            raise _Final(f"HTTP {r.status_code}: {r.text[:300]}")
        r.raise_for_status()
        return r.json()


class _Final(Exception):
    """A failure that retrying cannot fix (4xx)."""
