"""The retrieval server under hostile or careless clients: malformed bodies are 4xx (never 500), an
oversized chunked body is cut off while it streams in, half-sent requests time out, and searching does
not block the event loop (a small request is answered while a large one is being searched)."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import httpx
import pytest

from rlreason.search.server import Limits, RequestError, parse_request
from test_search_server import free_port, start_server, stop_server, write_corpus

DEEP = b'{"queries": ["a"], "topk": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_INT = b'{"queries": ["a"], "topk": ' + b"7" * 5000 + b"}"


@pytest.mark.parametrize("body, msg", [(HUGE_INT, "not valid JSON"), (DEEP, "nested too deeply"),
                                       (b'{"queries": ["a"], "topk": ' + b"9" * 4000 + b"}", "1..50")])
def test_parse_request_hostile_json_is_422(body, msg):
    with pytest.raises(RequestError) as e:
        parse_request(body, Limits(max_body_bytes=1 << 20))
    assert e.value.status == 422 and msg in e.value.detail and len(e.value.detail) < 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("search_hard")
    proc, url = start_server(write_corpus(d / "corpus.jsonl"), d / "cache", "--max-body-bytes", "300000",
                             "--read-timeout-s", "1")
    yield url
    stop_server(proc)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def test_server_answers_hostile_json_with_4xx(server):
    for body in (HUGE_INT, DEEP):
        r = httpx.post(server, content=body, headers={"content-type": "application/json"}, timeout=10,
                       trust_env=False)
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:200])


def test_chunked_body_is_capped_while_streaming(server):
    """Chunked transfer has no Content-Length: the cap must apply to the bytes as they arrive, not after
    the whole body is buffered."""
    sent, status_line, total = 0, b"", 32 << 20
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # count what the server read, not our buffer
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        while sent < total:
            if select.select([s], [], [], 0)[0]:  # the server answered (or closed) mid-body
                break
            try:
                s.sendall(chunk)
            except OSError:  # it closed the connection after answering
                break
            sent += 65536
        try:
            status_line = s.recv(64)
        except OSError:
            status_line = b""
    # The kernel's receive buffer on the server side holds a few MiB more than the server read.
    assert sent < total // 3, f"server read {sent} of {total} bytes of a body capped at 300000"
    assert status_line == b"" or b" 413 " in status_line


@pytest.mark.parametrize("partial", [
    b"POST /retrieve HTTP/1.1\r\nHost: x\r\n",  # headers never finish
    b'POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"queries": ',  # body never finishes
])
def test_half_sent_request_times_out(server, partial):
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as s:
        s.sendall(partial)
        t0 = time.monotonic()
        data = s.recv(4096)  # the server's 408 or its closing the connection (b"")
        waited = time.monotonic() - t0
    assert waited < 6, f"connection held for {waited:.1f} s"
    assert data == b"" or b" 408 " in data.split(b"\r\n")[0]


class _BlockingIndex:
    """A fake index whose search blocks until released: if search ran on the event loop, no other
    request could be answered meanwhile."""

    kind = "bm25"
    passages: list = []

    def __init__(self) -> None:
        self.entered, self.release, self.finished = threading.Event(), threading.Event(), threading.Event()

    def search(self, queries, topk):
        self.entered.set()
        self.release.wait(10)
        self.finished.set()
        return [[] for _ in queries]


def test_search_runs_off_the_event_loop():
    import uvicorn

    from rlreason.search.server import create_app
    index = _BlockingIndex()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        big = {"queries": ["capital city " * 50] * 16, "topk": 50}  # above the size searched on the loop
        slow = threading.Thread(target=lambda: httpx.post(f"{base}/retrieve", json=big, timeout=20, trust_env=False))
        slow.start()
        assert index.entered.wait(10)
        r = httpx.get(f"{base}/health", timeout=20, trust_env=False)
        answered_while_blocked = not index.finished.is_set()
        index.release.set()
        slow.join(20)
        assert r.status_code == 200 and answered_while_blocked
    finally:
        index.release.set()
        server.should_exit = True
        thread.join(10)
