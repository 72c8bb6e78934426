"""Load test of `rlreason serve-search` on loopback: BM25 top-3 over the built-in ~10k-passage corpus.

    flock /tmp/rlreason-cpu.lock python benchmarks/search_server.py [--clients 8] [--queries 200]

Starts the real server in a subprocess on a free 127.0.0.1 port (building the index once if it is not
cached), then runs, all bounded in count and time (--deadline-s):
  1. load:      --clients concurrent clients x --queries single-query requests each (one keep-alive
                connection per client, topk 3, return_scores true), as a rollout step's episodes do;
  2. baseline:  one client sending --queries requests one after another;
  3. brute force: BM25 scored by a plain-Python loop over every passage, in process (what the sparse
                index saves), against bm25s on the same queries in process.
Reports p50/p99 latency, throughput, errors, the ratios, and whether p50 <= --target-p50-ms.
Exits 1 on any error. Queries are FanOutQA questions and sub-questions, cycled.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def benchmark_queries() -> list[str]:
    from rlreason.data.search_qa import fanoutqa_file
    out = []

    def walk(q: dict) -> None:
        out.append(q["question"])
        for sq in q.get("decomposition") or []:
            walk(sq)
    for q in json.loads(fanoutqa_file().read_text()):
        walk(q)
    return out


def start_server(port: int, workers: int) -> subprocess.Popen:
    env = dict(os.environ, RLREASON_NO_PRELOAD="1")
    proc = subprocess.Popen([sys.executable, "-m", "rlreason.cli", "serve-search", "--port", str(port),
                             "--workers", str(workers)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"serve-search exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve-search did not become healthy in 180 s")


async def client_run(url: str, queries: list[str], lat: list[float], errors: list[str], deadline: float) -> None:
    async with httpx.AsyncClient(timeout=10.0, trust_env=False) as c:
        for q in queries:
            if time.monotonic() > deadline:
                errors.append("deadline")
                return
            t0 = time.perf_counter()
            try:
                r = await c.post(url, json={"queries": [q], "topk": 3, "return_scores": True})
                ok = r.status_code == 200 and len(r.json()["result"]) == 1
            except (httpx.HTTPError, ValueError, KeyError) as e:
                ok, r = False, e
            lat.append(time.perf_counter() - t0)
            if not ok:
                errors.append(str(r)[:200])


async def load(url: str, per_client: list[list[str]], deadline: float) -> dict:
    lat: list[float] = []
    errors: list[str] = []
    t0 = time.perf_counter()
    await asyncio.gather(*(client_run(url, qs, lat, errors, deadline) for qs in per_client))
    wall = time.perf_counter() - t0
    return {"clients": len(per_client), "requests": len(lat), "errors": len(errors),
            "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
            "throughput_qps": len(lat) / wall, "wall_s": wall, "first_errors": errors[:3]}


def brute_force(passages: list, queries: list[str], k: int = 3, k1: float = 1.5, b: float = 0.75) -> float:
    """Seconds per query for BM25 scored over every passage in plain Python (no inverted index)."""
    tok = lambda s: re.findall(r"\b\w\w+\b", s.lower())  # noqa: E731
    docs = [Counter(tok(f"{p.title} {p.title} {p.text}")) for p in passages]
    lens = [sum(d.values()) for d in docs]
    avg = sum(lens) / len(lens)
    df = Counter(t for d in docs for t in d)
    n = len(docs)
    idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
    t0 = time.perf_counter()
    for q in queries:
        qt = [t for t in tok(q) if t in idf]
        scores = [sum(idf[t] * d[t] * (k1 + 1) / (d[t] + k1 * (1 - b + b * ln / avg)) for t in qt if t in d)
                  for d, ln in zip(docs, lens)]
        sorted(range(n), key=scores.__getitem__, reverse=True)[:k]
    return (time.perf_counter() - t0) / len(queries)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--queries", type=int, default=200, help="requests per client")
    ap.add_argument("--workers", type=int, default=1, help="server processes (serve-search --workers)")
    ap.add_argument("--brute-force-queries", type=int, default=30)
    ap.add_argument("--target-p50-ms", type=float, default=20.0)
    ap.add_argument("--deadline-s", type=float, default=300.0, help="stop sending after this long")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if not (1 <= a.clients <= 64 and 1 <= a.queries <= 5000):
        raise SystemExit("bounded load only: 1..64 clients, 1..5000 queries each")

    from rlreason.search.corpus import load_corpus, wiki_corpus_path
    from rlreason.search.index import BM25Index

    qs = benchmark_queries()
    port = free_port()
    proc = start_server(port, a.workers)
    url = f"http://127.0.0.1:{port}/retrieve"
    deadline = time.monotonic() + a.deadline_s
    try:
        asyncio.run(load(url, [qs[:20]], deadline))  # warm-up
        per_client = [[qs[(c * a.queries + i) % len(qs)] for i in range(a.queries)] for c in range(a.clients)]
        concurrent = asyncio.run(load(url, per_client, deadline))
        sequential = asyncio.run(load(url, [per_client[0]], deadline))
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    passages = load_corpus(wiki_corpus_path())
    index = BM25Index.load_or_build(wiki_corpus_path())
    bq = qs[:a.brute_force_queries]
    t0 = time.perf_counter()
    index.search(bq, 3)
    bm25s_s = (time.perf_counter() - t0) / len(bq)
    brute_s = brute_force(passages, bq)

    res = {"corpus_passages": len(passages), "server_workers": a.workers,
           "concurrent": concurrent, "sequential_1_client": sequential,
           "throughput_ratio_concurrent_vs_sequential": concurrent["throughput_qps"] / sequential["throughput_qps"],
           "in_process_ms_per_query": {"bm25s": 1000 * bm25s_s, "brute_force_python": 1000 * brute_s},
           "speedup_bm25s_vs_brute_force": brute_s / bm25s_s,
           "target_p50_ms": a.target_p50_ms, "p50_within_target": concurrent["p50_ms"] <= a.target_p50_ms}
    print(json.dumps(res, indent=1))
    c, s = concurrent, sequential
    print(f"\nserver workers {a.workers}; {a.clients} clients x {a.queries}: "
          f"p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, "
          f"{c['throughput_qps']:.0f} req/s, errors {c['errors']}  "
          f"(target p50 <= {a.target_p50_ms:g} ms: {'met' if res['p50_within_target'] else 'MISSED'})")
    print(f"1 client sequential: p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, {s['throughput_qps']:.0f} req/s "
          f"-> concurrent/sequential throughput x{res['throughput_ratio_concurrent_vs_sequential']:.2f}")
    print(f"in process: bm25s {1000 * bm25s_s:.2f} ms/query vs brute-force Python {1000 * brute_s:.1f} ms/query "
          f"-> x{res['speedup_bm25s_vs_brute_force']:.0f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 1 if c["errors"] or s["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
