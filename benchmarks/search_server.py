"""Load test of `rlreason serve-search` on loopback: BM25 top-3 over the built-in ~10k-passage corpus.

    flock /tmp/rlreason-cpu.lock python benchmarks/search_server.py [--clients 8] [--queries 200]

Starts the real server in a subprocess on a free 127.0.0.1 port (building the index once if it is not
cached), then runs, all bounded in count and time (--deadline-s):
  1. load:      --clients concurrent clients x --queries single-query requests each (one keep-alive
                connection per client, topk 3, return_scores true), as a rollout step's episodes do;
  2. baseline:  one client sending --queries requests one after another;
  3. mixed:     --probes small probes (one query, topk 3) sent one after another by one client while
                --heavy clients keep sending maximal requests (max_queries queries of max_query_chars
                characters, topk max_topk): a rollout's searches next to someone's huge batch. Reports the
                probes' p50/p99 alone and next to the heavy load;
  4. brute force: BM25 scored by a plain-Python loop over every passage, in process (what the sparse
                index saves), against bm25s on the same queries in process.
Reports p50/p99 latency, throughput, errors, the ratios, and whether p50 <= --target-p50-ms.
Exits 1 on any error. Queries are FanOutQA questions and sub-questions, cycled. Results are committed
under benchmarks/results/ (--json, and the printed summary).
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


def maximal_request(qs: list[str], limits) -> dict:
    """The largest request the server accepts by default: every query at the length cap, the top-k cap."""
    text = " ".join(qs)
    queries = [(text[i * 97:] + " " + text)[:limits.max_query_chars] for i in range(limits.max_queries)]
    return {"queries": queries, "topk": limits.max_topk, "return_scores": True}


async def heavy_run(url: str, body: dict, stop: asyncio.Event, lat: list[float], errors: list[str]) -> None:
    async with httpx.AsyncClient(timeout=120.0, trust_env=False) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                r = await c.post(url, json=body)
                if r.status_code != 200:
                    errors.append(f"heavy {r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(f"heavy {e!r}"[:200])
            lat.append(time.perf_counter() - t0)


async def mixed(url: str, probes: list[str], heavy: int, body: dict, deadline: float) -> dict:
    """Probes alone, then the same probes while `heavy` clients send maximal requests."""
    async def probe_all(lat: list[float], errors: list[str]) -> None:
        async with httpx.AsyncClient(timeout=120.0, trust_env=False) as c:
            for q in probes:
                if time.monotonic() > deadline:
                    errors.append("deadline")
                    return
                t0 = time.perf_counter()
                try:
                    r = await c.post(url, json={"queries": [q], "topk": 3, "return_scores": True})
                    if r.status_code != 200:
                        errors.append(f"probe {r.status_code}")
                except httpx.HTTPError as e:
                    errors.append(f"probe {e!r}"[:200])
                lat.append(time.perf_counter() - t0)
                await asyncio.sleep(0.01)

    alone: list[float] = []
    errors: list[str] = []
    await probe_all(alone, errors)
    stop = asyncio.Event()
    heavy_lat: list[float] = []
    tasks = [asyncio.create_task(heavy_run(url, body, stop, heavy_lat, errors)) for _ in range(heavy)]
    await asyncio.sleep(0.5)  # the heavy requests are in flight before the first probe
    loaded: list[float] = []
    await probe_all(loaded, errors)
    stop.set()
    await asyncio.gather(*tasks)
    ms = lambda xs, q: 1000 * percentile(xs, q) if xs else float("nan")  # noqa: E731
    return {"probes": len(loaded), "heavy_clients": heavy, "heavy_requests": len(heavy_lat),
            "heavy_request": {"queries": len(body["queries"]), "chars_per_query": len(body["queries"][0]),
                              "topk": body["topk"]},
            "probe_alone_p50_ms": ms(alone, 50), "probe_alone_p99_ms": ms(alone, 99),
            "probe_p50_ms": ms(loaded, 50), "probe_p99_ms": ms(loaded, 99),
            "heavy_p50_ms": ms(heavy_lat, 50), "heavy_p99_ms": ms(heavy_lat, 99),
            "errors": len(errors), "first_errors": errors[:3]}


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
    ap.add_argument("--probes", type=int, default=100, help="mixed workload: small probes sent one by one")
    ap.add_argument("--heavy", type=int, default=4, help="mixed workload: clients sending maximal requests")
    ap.add_argument("--brute-force-queries", type=int, default=30)
    ap.add_argument("--target-p50-ms", type=float, default=20.0)
    ap.add_argument("--deadline-s", type=float, default=300.0, help="stop sending after this long")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    if not (1 <= a.clients <= 64 and 1 <= a.queries <= 5000 and 1 <= a.probes <= 2000 and 0 <= a.heavy <= 16):
        raise SystemExit("bounded load only: 1..64 clients, 1..5000 queries each, 1..2000 probes, 0..16 heavy")

    from rlreason.search.corpus import load_corpus, wiki_corpus_path
    from rlreason.search.index import BM25Index
    from rlreason.search.server import Limits

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
        mix = asyncio.run(mixed(url, qs[:a.probes], a.heavy, maximal_request(qs, Limits()), deadline))
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
           "concurrent": concurrent, "sequential_1_client": sequential, "mixed": mix,
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
    m, hr = mix, mix["heavy_request"]
    print(f"mixed: {m['probes']} probes next to {m['heavy_clients']} clients sending {hr['queries']} queries x "
          f"{hr['chars_per_query']} chars, topk {hr['topk']} ({m['heavy_requests']} sent, p50 {m['heavy_p50_ms']:.0f} ms): "
          f"probe p50 {m['probe_p50_ms']:.1f} ms, p99 {m['probe_p99_ms']:.1f} ms "
          f"(alone: p50 {m['probe_alone_p50_ms']:.1f} ms, p99 {m['probe_alone_p99_ms']:.1f} ms), errors {m['errors']}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 1 if c["errors"] or s["errors"] or m["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
