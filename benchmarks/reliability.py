"""Reliability sweep: feed rlreason bad configs, bad data files, malformed retrieval-server requests and
damaged checkpoints, and record what happened to each, as the table in docs/reliability.md.

    python benchmarks/reliability.py                       # print the table
    python benchmarks/reliability.py --out docs/reliability.md

Every command-line case runs the real CLI in a subprocess (`python -m rlreason.cli ...`, no LD_PRELOAD
re-exec) and is judged by what a user sees: an expected error must be ONE line on stderr, exit code 2, no
traceback, and name its source (the config key, the file and line); an expected acceptance must exit 0.
`train` cases are all errors that must surface before the model loads. Server cases talk raw HTTP to a
real `rlreason serve-search` on loopback (a tiny corpus) and expect a 4xx, never a 500 or a hang.
Checkpoint cases damage a real checkpoint of the tiny-random model (written by rlreason's own
`save_checkpoint`) and run what `--resume` runs, in process (`latest_checkpoint`, then `load_checkpoint`
and the optimizer restore): the resume must fall back to the previous complete checkpoint naming the bad
file, or fail with one line naming the path, and a pickle payload must never run. Takes a few minutes on
2 CPU cores; the only weights loaded are the tiny-random model's (a few MB, for the checkpoint cases).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import hashlib
import logging
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@dataclass
class Case:
    area: str
    name: str
    args: list[str]  # CLI arguments; for server cases unused
    expect: str  # "error" (one line, exit 2, naming `needle`) or "ok" (exit 0)
    needle: str = ""  # must appear in the error line (the source it names)
    files: dict[str, bytes] = field(default_factory=dict)  # written into the case's temp dir first


@dataclass
class Result:
    case: Case
    passed: bool
    outcome: str
    detail: str
    seconds: float


def _env() -> dict[str, str]:
    env = dict(os.environ, RLREASON_NO_PRELOAD="1", PYTHONPATH=str(REPO), WANDB_MODE="disabled")
    env.pop("RLREASON_DEBUG", None)
    return env


def run_cli_case(case: Case, root: Path, timeout: float) -> Result:
    d = root / f"{case.area}-{abs(hash(case.name)) % 10**8}"
    d.mkdir(parents=True, exist_ok=True)
    for name, content in case.files.items():
        (d / name).write_bytes(content)
    args = [a.replace("{d}", str(d)) for a in case.args]
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "rlreason.cli", *args], cwd=d, env=_env(), capture_output=True,
                           timeout=timeout)
        rc, err = r.returncode, r.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return Result(case, False, f"hung (> {timeout:.0f} s)", "", time.monotonic() - t0)
    secs = time.monotonic() - t0
    # Log lines (INFO/WARNING with a timestamp) are not the error; the error is what the CLI printed last.
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("config error:", "data error:"))]
    shown = (errors[-1] if errors else (lines[-1] if lines else "")).replace(str(d) + "/", "").replace(
        str(d), "<case dir>")
    if "Traceback" in err:
        return Result(case, False, f"traceback, exit {rc}", shown, secs)
    if case.expect == "ok":
        return Result(case, rc == 0, "accepted" if rc == 0 else f"exit {rc}", shown if rc else "", secs)
    if rc == 0:
        return Result(case, False, "accepted (expected an error)", "", secs)
    one_line = len(errors) == 1 and len([ln for ln in lines if not _is_log(ln)]) == 1
    named = case.needle.replace("{d}/", "") in shown
    ok = rc == 2 and one_line and named
    outcome = "one-line error, exit 2" if rc == 2 and one_line else f"exit {rc}, {len(lines)} lines"
    if rc == 2 and one_line and not named:
        outcome += f" (does not name '{case.needle}')"
    return Result(case, ok, outcome, shown, secs)


def _is_log(line: str) -> bool:
    """`2026-12-06 14:00:00,000 WARNING name: ...` lines from logging, and their continuation."""
    return len(line) > 23 and line[:4].isdigit() and line[4] == "-" and line[10] == " "


# --- cases ------------------------------------------------------------------------------------------------

def j(rows: list) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


GOOD = [{"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": 4}]


def config_cases() -> list[Case]:
    show = lambda *a: ["config", "show", *a]  # noqa: E731
    c = lambda name, text, expect="error", needle="", extra=(): Case(  # noqa: E731
        "config", name, show("c.yaml", *extra), expect, needle, {"c.yaml": text.encode() if isinstance(text, str) else text})
    return [
        c("valid file", "name: t\ntrainer: {steps: 2}\n", "ok"),
        c("empty file (all defaults)", "", "ok"),
        c("YAML syntax error (unclosed {)", "trainer: {steps: 2\nseed: 1\n", needle="line 2, column"),
        c("tab indentation", "trainer:\n\tsteps: 2\n", needle="line 2"),
        c("top level is a list", "- 1\n- 2\n", needle="mapping"),
        c("top level is a scalar", "42\n", needle="mapping"),
        c("not UTF-8 (latin-1 byte)", b"name: caf\xe9\n", needle="UTF-8"),
        c("UTF-16 file", "name: x\n".encode("utf-16"), needle="UTF-8"),
        c("key given twice", "trainer:\n  lr: 1.0e-6\n  lr: 1.0e-5\n", needle="given twice"),
        c("YAML nested 5,000 deep", "x: " + "[" * 5000 + "]" * 5000 + "\n", needle="c.yaml"),
        c("5,000-digit integer", "seed: " + "7" * 5000 + "\n", needle="c.yaml"),
        c("unknown top-level key", "trainr: {steps: 2}\n", needle="trainr"),
        c("unknown nested key", "trainer: {lrr: 1.0e-6}\n", needle="trainer.lrr"),
        c("string for an integer", "trainer: {steps: ten}\n", needle="trainer.steps"),
        c("bool for an integer", "trainer: {steps: true}\n", needle="trainer.steps"),
        c("float for an integer", "trainer: {steps: 2.5}\n", needle="trainer.steps"),
        c("string for a number", "trainer: {lr: fast}\n", needle="trainer.lr"),
        c("value not allowed (dtype fp16)", "model: {dtype: fp16}\n", needle="model.dtype"),
        c("algorithm not allowed", "algorithm: ppo\n", needle="algorithm"),
        c("section given as a scalar", "trainer: 5\n", needle="trainer"),
        c("section given as a list", "data: [1, 2]\n", needle="data"),
        c("env.args not a mapping", "env: {name: single_turn, args: [1]}\n", needle="env.args"),
        c("data.eval_size a string", "data: {eval_size: all}\n", needle="data.eval_size"),
        c("rewards: [math] (list of names)", "rewards: [math, {name: boxed_format, weight: 0.5}]\n", "ok"),
        c("rewards a string", "rewards: math\n", needle="rewards"),
        c("rewards entry a number", "rewards: [3]\n", needle="rewards[0]"),
        c("imports: missing module", "imports: [no_such_plugin_mod]\n", needle="imports[0]"),
        c("imports not a list", "imports: 3\n", needle="imports"),
        Case("config", "missing config file", show("nope.yaml"), "error", "nope.yaml"),
        Case("config", "missing defaults file", show("c.yaml"), "error", "base.yaml",
             {"c.yaml": b"defaults: base.yaml\nname: x\n"}),
        Case("config", "defaults cycle a -> b -> a", show("a.yaml"), "error", "cycle",
             {"a.yaml": b"defaults: b.yaml\n", "b.yaml": b"defaults: a.yaml\n"}),
        Case("config", "defaults names itself", show("a.yaml"), "error", "cycle", {"a.yaml": b"defaults: a.yaml\n"}),
        Case("config", "defaults not a file name", show("a.yaml"), "error", "defaults", {"a.yaml": b"defaults: [1]\n"}),
        Case("config", "defaults file with a YAML error", show("a.yaml"), "error", "b.yaml",
             {"a.yaml": b"defaults: b.yaml\n", "b.yaml": b"x: [\n"}),
        Case("config", "override without '='", show("trainer.steps"), "error", "trainer.steps"),
        Case("config", "override unknown key", show("trainer.stepz=2"), "error", "trainer.stepz"),
        Case("config", "override into a scalar", show("name.x=1"), "error", "name"),
        Case("config", "override bad YAML value", show("trainer.steps=[1,"), "error", "trainer.steps"),
        Case("config", "override 5,000-digit value", show("trainer.steps=" + "7" * 5000), "error", "trainer.steps"),
        Case("config", "--import missing module", ["--import", "no_such_mod", "config", "show"], "error", "--import"),
        Case("config", "imports: module raises on import", show("c.yaml"), "error", "broken_plugin",
             {"c.yaml": b"imports: [broken_plugin]\n", "broken_plugin.py": b"raise RuntimeError('boom')\n"}),
        Case("config", "imports: module re-registers 'math'", show("c.yaml"), "error", "dup_plugin",
             {"c.yaml": b"imports: [dup_plugin]\n",
              "dup_plugin.py": b"from rlreason.registry import REWARDS, register_reward\nREWARDS.names()\n"
                               b"register_reward('math')(lambda completion, answer: 0.0)\n"}),
        Case("config", "imports: a user's environment", show("c.yaml"), "ok", "",
             {"c.yaml": b"imports: [my_env]\nenv: {name: my_env}\n",
              "my_env.py": b"from rlreason.registry import register_environment\n"
                           b"@register_environment('my_env')\nclass MyEnv:\n    pass\n"}),
    ]


def train_cases() -> list[Case]:
    """Errors that only `train` can find (registry names, model names, data sizes): each must be reported
    before the model loads (these runs would otherwise train)."""
    base = ["train", "trainer.steps=1", "output_dir={d}/run", "logging.wandb=false", "rollout.engine=hf",
            "data.train={source: reasoning_gym, task: basic_arithmetic, size: 16, seed: 0}", "data.eval_size=4"]
    t = lambda name, needle, *over: Case("train", name, [*base, *over], "error", needle)  # noqa: E731
    return [
        t("model name near-miss (no hub lookup)", "Did you mean 'smollm2-135m-instruct'",
          "model.name=smollm2-135m-instrct"),
        t("model directory that does not exist", "model.name", "model.name=./no/such/model"),
        t("unknown environment", "env.name", "env.name=single_trun"),
        t("unknown reward name in a list", "rewards[0].name", "rewards=[maht]"),
        t("unknown advantage estimator", "algo.advantage", "algo.advantage=grpoo"),
        t("eval_size larger than the data", "data.eval_size", "data.eval_size=100"),
        t("missing data file", "nope.jsonl", "data.train={source: jsonl, path: nope.jsonl}"),
    ]


def data_cases() -> list[Case]:
    d = lambda name, content, needle="", expect="error", source="jsonl": Case(  # noqa: E731
        "data", name, ["data", f"source={source}", "path=rows.jsonl", "--show", "0"], expect, needle,
        {"rows.jsonl": content})
    deep = b'{"question": "q", "answer": "1", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    return [
        d("valid rows", j(GOOD), expect="ok"),
        d("CRLF line endings", j(GOOD).replace(b"\n", b"\r\n"), expect="ok"),
        d("blank lines between rows", j(GOOD[:1]) + b"\n\n" + j(GOOD[1:]), expect="ok"),
        d("invalid JSON on line 2", j(GOOD[:1]) + b'{"question": "x",\n', "line 2"),
        d("truncated last line, no newline", j(GOOD) + b'{"question": "3+3?", "ans', "line 3"),
        d("row is a list", j(GOOD[:1]) + b"[1, 2]\n", "line 2"),
        d("row is a string", b'"just text"\n', "line 1"),
        d("missing answer", j([{"question": "q"}]), "line 1"),
        d("missing question", j([{"answer": "1"}]), "line 1"),
        d("question is a number", j([{"question": 7, "answer": "1"}]), "line 1"),
        d("answer is a bool", j([{"question": "q", "answer": True}]), "line 1"),
        d("answer is a list", j([{"question": "q", "answer": [1]}]), "line 1"),
        d("empty question", j([{"question": "  ", "answer": "1"}]), "line 1"),
        d("duplicate id", j([{"id": 1, "question": "a", "answer": "1"}, {"id": 1, "question": "b", "answer": "2"}]),
          "line 2"),
        d("id is a list", j([{"id": [1], "question": "a", "answer": "1"}]), "line 1"),
        d("empty file", b"", "no rows"),
        d("only blank lines", b"\n\n  \n", "no rows"),
        d("non-UTF-8 byte on line 2", j(GOOD[:1]) + b'{"question": "caf\xe9", "answer": "1"}\n', "line 2"),
        d("UTF-16 file", j(GOOD).decode().encode("utf-16"), "line 1"),
        d("UTF-8 BOM", b"\xef\xbb\xbf" + j(GOOD), "line 1"),
        d("NUL byte in a row", b'{"question": "a\x00", "answer": "1"}\n', "line 1"),
        d("row nested 100,000 deep", j(GOOD[:1]) + deep, "line 2"),
        d("5,000-digit integer answer", b'{"question": "q", "answer": ' + b"9" * 5000 + b"}\n", "line 1"),
        d("qa_jsonl: non-UTF-8 byte", b'{"question": "caf\xe9", "answers": ["x"]}\n', "line 1", source="qa_jsonl"),
        d("qa_jsonl: nested 100,000 deep", deep.replace(b'"answer"', b'"answers"'), "line 1", source="qa_jsonl"),
        d("qa_jsonl: answers empty", j([{"question": "q", "answers": []}]), "line 1", source="qa_jsonl"),
        Case("data", "missing file", ["data", "source=jsonl", "path=nope.jsonl"], "error", "nope.jsonl"),
        Case("data", "a directory, not a file", ["data", "source=jsonl", "path=."], "error", "jsonl file"),
        Case("data", "unknown source", ["data", "source=csv", "path=x"], "error", "data.source"),
        Case("data", "unknown builder key", ["data", "source=jsonl", "path=x", "colum=q"], "error", "data.colum"),
        Case("data", "limit 0", ["data", "source=jsonl", "path=rows.jsonl", "limit=0"], "error", "data.limit",
             {"rows.jsonl": j(GOOD)}),
        Case("data", "unknown reasoning_gym task", ["data", "source=reasoning_gym", "task=nope", "size=2", "seed=0"], "error",
             "nope"),
    ]


# --- server -----------------------------------------------------------------------------------------------

def _request(port: int, raw: bytes, wait: float = 15.0) -> tuple[str, float]:
    """Send raw bytes; return the status line (or 'closed' / 'no answer') and the seconds it took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            s.sendall(raw)
            data = s.recv(256)
        except socket.timeout:
            return f"no answer in {wait:.0f} s", time.monotonic() - t0
        except OSError as e:
            return f"closed ({type(e).__name__})", time.monotonic() - t0
    line = data.split(b"\r\n")[0].decode("latin-1")
    return (line or "closed by server"), time.monotonic() - t0


def _post(body: bytes, extra: str = "") -> bytes:
    return (f"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


def _chunked_flood(port: int, total: int = 40 << 20) -> tuple[str, float, int]:
    """A chunked body of `total` bytes; returns the answer, seconds, and how much the server took in."""
    t0, sent = time.monotonic(), 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        s.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        while sent < total and not select.select([s], [], [], 0)[0]:
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += 65536
        if sent >= total:
            s.sendall(b"0\r\n\r\n")
        try:
            line = s.recv(256).split(b"\r\n")[0].decode("latin-1") or "closed by server"
        except OSError as e:
            line = f"closed ({type(e).__name__})"
    return line, time.monotonic() - t0, sent


def server_cases(root: Path) -> list[Result]:
    from tests.test_search_server import start_server, stop_server, write_corpus
    proc, url = start_server(write_corpus(root / "corpus.jsonl"), root / "cache", "--read-timeout-s", "3")
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    q = lambda **kw: json.dumps({"queries": ["capital of France"], **kw}).encode()  # noqa: E731
    cases: list[tuple[str, bytes, str]] = [
        ("valid request", _post(q(topk=2, return_scores=True)), "200"),
        ("topk omitted (default 3)", _post(q()), "200"),
        ("no queries", _post(json.dumps({"queries": []}).encode()), "200"),
        ("empty body", _post(b""), "422"),
        ("invalid JSON", _post(b"{nope"), "422"),
        ("body is a JSON array", _post(b"[1]"), "422"),
        ("body is not UTF-8", _post(b'{"queries": ["caf\xe9"]}'), "422"),
        ("queries a string", _post(json.dumps({"queries": "a"}).encode()), "422"),
        ("queries of numbers", _post(json.dumps({"queries": [1, 2]}).encode()), "422"),
        ("65 queries (max 64)", _post(json.dumps({"queries": ["a"] * 65}).encode()), "413"),
        ("query of 2,001 characters", _post(json.dumps({"queries": ["a" * 2001]}).encode()), "422"),
        ("topk 0", _post(q(topk=0)), "422"),
        ("topk 51 (max 50)", _post(q(topk=51)), "422"),
        ("topk -1", _post(q(topk=-1)), "422"),
        ("topk a string", _post(q(topk="3")), "422"),
        ("topk 3.0", _post(q(topk=3.0)), "422"),
        ("topk true", _post(q(topk=True)), "422"),
        ("topk NaN", _post(b'{"queries": ["a"], "topk": NaN}'), "422"),
        ("topk of 4,000 digits", _post(b'{"queries": ["a"], "topk": ' + b"9" * 4000 + b"}"), "422"),
        ("topk of 5,000 digits", _post(b'{"queries": ["a"], "topk": ' + b"9" * 5000 + b"}"), "422"),
        ("body nested 100,000 deep", _post(b'{"queries": ["a"], "topk": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
         "422"),
        ("unknown field", _post(json.dumps({"queries": ["a"], "k": 3}).encode()), "422"),
        ("return_scores a string", _post(q(return_scores="yes")), "422"),
        ("Content-Length 2 MiB declared", b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n{",
         "413"),
        ("Content-Length of 30 digits", b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 30
         + b"\r\n\r\n{", "400"),
        ("Content-Length negative", b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n", "400"),
        ("body of 1 MiB + 1 byte", _post(b" " * ((1 << 20) + 1)), "413"),
        ("GET /retrieve", b"GET /retrieve HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", "405"),
        ("unknown path", b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", "404"),
        ("garbage request line", b"HELLO\r\n\r\n", "400"),
        ("headers never finish", b"POST /retrieve HTTP/1.1\r\nHost: x\r\n", "closed"),
        ("body never finishes", b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"q", "408"),
    ]
    out = []
    try:
        for name, raw, expect in cases:
            c = Case("server", name, [], expect)
            got, secs = _request(port, raw)
            ok = got.startswith("closed") if expect == "closed" else f" {expect} " in f"{got} "
            if expect in ("closed", "408"):
                ok = ok and secs < 3 + 3  # the read timeout (3 s here) plus slack
                got += f" after {secs:.1f} s"
            out.append(Result(c, ok, got, "", secs))
        line, secs, sent = _chunked_flood(port)
        out.append(Result(Case("server", "chunked body of 40 MiB (cap 1 MiB)", [], "413"),
                          " 413 " in f"{line} " or line.startswith("closed"),
                          f"{line} after {sent / 2**20:.1f} MiB sent", "", secs))
        t0 = time.monotonic()
        got, _ = _request(port, _post(q()))
        out.append(Result(Case("server", "still serving after all of the above", [], "200"), " 200 " in f"{got} ",
                          got, "", time.monotonic() - t0))
    finally:
        stop_server(proc)
    return out


# --- checkpoints ------------------------------------------------------------------------------------------

class _Payload:
    """A pickle that creates `marker` when unpickled: what a crafted trainer.pt would do on a full unpickle."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _rehash(step_dir: Path) -> None:
    """Make state.json's checksums agree with the damaged files (a deliberate edit, not bit rot)."""
    state = json.loads((step_dir / "state.json").read_text())
    state["files"] = {n: hashlib.sha256((step_dir / n).read_bytes()).hexdigest() for n in state["files"]}
    (step_dir / "state.json").write_text(json.dumps(state))


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _zero(f: Path) -> None:
    f.write_bytes(bytes(f.stat().st_size))


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


def checkpoint_cases(root: Path) -> list[Result]:
    """Two checkpoints (steps 1 and 2) of the tiny-random model with an AdamW state; each case copies them,
    damages something, and resumes the way `rlreason train --resume` does. Expected outcomes: `fallback`
    (step 1 is used and the warning names the bad file of step 2), `latest` (step 2 is used; a warning names
    latest.json) or `error` (a CheckpointError, one line, naming the file)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlreason.models import prepare
    from rlreason.registry import ConfigError
    from rlreason.trainer.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    model_dir = prepare("tiny-random", "fp32")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pristine = root / "ckpt-pristine"
    for step in (1, 2):
        model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
        opt.step()
        opt.zero_grad()
        save_checkpoint(pristine, step, model=model, torch_state={"optimizer": opt.state_dict()},
                        state={"sampler": {"pos": step}, "env": {}, "rewards": {}}, keep=5, tokenizer=tok)

    s1, s2 = "step_000001", "step_000002"

    def payload(d: Path, rehash: bool) -> None:
        torch.save({"optimizer": _Payload(d / "payload_ran"), "rng": {}}, d / s2 / "trainer.pt")
        if rehash:
            _rehash(d / s2)

    def other_weights(d: Path) -> None:
        from safetensors.torch import save_file
        save_file({"w": torch.zeros(2, 2)}, str(d / s2 / "model.safetensors"))
        _rehash(d / s2)

    def both(fn, name):  # damage `name` in every checkpoint
        return lambda d: [fn(d / s / name) for s in (s1, s2)]

    cases: list[tuple[str, Any, str, str]] = [  # name, damage(dir), expect, file the message must name
        ("model.safetensors truncated", lambda d: _truncate(d / s2 / "model.safetensors"), "fallback",
         f"{s2}/model.safetensors"),
        ("model.safetensors zero-filled", lambda d: _zero(d / s2 / "model.safetensors"), "fallback",
         f"{s2}/model.safetensors"),
        ("model.safetensors one byte altered", lambda d: _flip(d / s2 / "model.safetensors"), "fallback",
         f"{s2}/model.safetensors"),
        ("model.safetensors missing", lambda d: (d / s2 / "model.safetensors").unlink(), "fallback",
         f"{s2}/model.safetensors"),
        ("trainer.pt truncated", lambda d: _truncate(d / s2 / "trainer.pt"), "fallback", f"{s2}/trainer.pt"),
        ("trainer.pt zero-filled", lambda d: _zero(d / s2 / "trainer.pt"), "fallback", f"{s2}/trainer.pt"),
        ("trainer.pt one byte altered", lambda d: _flip(d / s2 / "trainer.pt"), "fallback", f"{s2}/trainer.pt"),
        ("trainer.pt missing", lambda d: (d / s2 / "trainer.pt").unlink(), "fallback", f"{s2}/trainer.pt"),
        ("rng.json missing", lambda d: (d / s2 / "rng.json").unlink(), "fallback", f"{s2}/rng.json"),
        ("pickle payload in trainer.pt", lambda d: payload(d, False), "fallback", f"{s2}/trainer.pt"),
        ("pickle payload in trainer.pt, checksums rewritten to match", lambda d: payload(d, True), "error",
         f"{s2}/trainer.pt"),
        ("another model's weights, checksums rewritten to match", other_weights, "error",
         f"{s2}/model.safetensors"),
        ("rng.json garbage, checksums rewritten to match",
         lambda d: ((d / s2 / "rng.json").write_text("{nope"), _rehash(d / s2)), "error", f"{s2}/rng.json"),
        ("state.json garbage", lambda d: (d / s2 / "state.json").write_bytes(b"\x00{garbage"), "fallback",
         f"{s2}/state.json"),
        ("state.json missing", lambda d: (d / s2 / "state.json").unlink(), "fallback", f"{s2}/state.json"),
        ("state.json without checksums", lambda d: (d / s2 / "state.json").write_text('{"step": 2}'), "fallback",
         f"{s2}/state.json"),
        ("latest.json missing", lambda d: (d / "latest.json").unlink(), "latest", "latest.json"),
        ("latest.json garbage", lambda d: (d / "latest.json").write_text('{"step": 2, "pa'), "latest", "latest.json"),
        ("latest.json names a step that is gone",
         lambda d: (d / "latest.json").write_text('{"step": 9, "path": "step_000009"}'), "latest", ""),
        ("every checkpoint's model.safetensors truncated", both(_truncate, "model.safetensors"), "error",
         "model.safetensors"),
        ("every checkpoint's state.json missing", lambda d: [(d / s / "state.json").unlink() for s in (s1, s2)],
         "error", "state.json"),
    ]

    class _Capture(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.lines: list[str] = []

        def emit(self, record):
            self.lines.append(record.getMessage())

    ck_log = logging.getLogger("rlreason.trainer.checkpoint")
    out = []
    for i, (name, damage, expect, needle) in enumerate(cases):
        d = root / f"ckpt-{i}"
        shutil.copytree(pristine, d)
        damage(d)
        t0 = time.monotonic()
        cap = _Capture()
        ck_log.addHandler(cap)
        got, msg, err = None, "", None
        try:
            ckpt = latest_checkpoint(d)  # what prepare_run_dir and restore() call
            fresh = AutoModelForCausalLM.from_config(model.config)
            _state, torch_state = load_checkpoint(ckpt, model=fresh, verify=False)  # what restore() calls
            torch.optim.AdamW(fresh.parameters(), lr=1e-3).load_state_dict(torch_state["optimizer"])
            got = ckpt.name
        except ConfigError as e:
            err = str(e)
        except Exception as e:  # noqa: BLE001 - anything else is a traceback for the user
            err = f"{type(e).__name__}: {e}"
            got = "traceback"
        finally:
            ck_log.removeHandler(cap)
        secs = time.monotonic() - t0
        ran = (d / "payload_ran").exists()
        warned = "; ".join(cap.lines)
        show = lambda text: text.replace(str(d) + "/", "").replace(str(d), "<checkpoints>")  # noqa: E731
        if ran:
            ok, outcome, msg = False, "the pickle payload RAN", show(err or warned)
        elif got == "traceback":
            ok, outcome, msg = False, "unexpected exception (a traceback)", show(err)
        elif err is not None:
            one_line = "\n" not in err
            ok = expect == "error" and one_line and needle in err
            outcome = "refused: one-line error (exit 2 from the CLI)" if one_line else "refused: multi-line error"
            msg = show(err)
        else:
            want = {"fallback": s1, "latest": s2}.get(expect)
            ok = got == want and needle in warned
            outcome = f"resumed from {got}" + (", warning" if warned else ", no warning")
            msg = show(warned)
        if "payload" in name and not ran:
            outcome += "; payload did not run"
        out.append(Result(Case("checkpoint", name, [], expect, needle), ok, outcome, msg, secs))
        shutil.rmtree(d, ignore_errors=True)
    shutil.rmtree(pristine, ignore_errors=True)
    return out


# --- report -----------------------------------------------------------------------------------------------

AREAS = {"config": "Config files and overrides (`rlreason config show`)",
         "train": "Config names checked by `rlreason train` (before the model loads)",
         "data": "Data files (`rlreason data source=jsonl path=...`, and qa_jsonl)",
         "server": "Retrieval server requests (`rlreason serve-search`, raw HTTP)",
         "checkpoint": "Damaged checkpoints on `--resume` (tiny-random model, in process)"}


def report(results: list[Result], seconds: float) -> str:
    lines = ["# Reliability", "",
             "What rlreason does with bad input. Produced by `python benchmarks/reliability.py --out "
             "docs/reliability.md` (a few minutes on 2 CPU cores; the only model loaded is tiny-random, for the "
             "checkpoint cases); rerun it after changing config, data, server or checkpoint code.", "",
             "A command-line case passes when an expected error is one line on stderr, exit code 2, no "
             "traceback, naming its source (config key, file and line), and an expected acceptance exits 0. "
             "A server case passes when the status is the expected one (4xx for every malformed request, "
             "never a 500 or a hang). `--debug` or `RLREASON_DEBUG=1` adds the traceback to a CLI error. "
             "A checkpoint case damages step 2 of a two-checkpoint run written by `save_checkpoint` and runs "
             "what `--resume` runs (`latest_checkpoint`, `load_checkpoint`, the optimizer restore): expected is "
             "`fallback` (step 1 is used and the warning names the damaged file), `latest` (step 2 is used, "
             "with a warning) or `error` (a checkpoint error naming the file, which the CLI prints as one line "
             "with exit 2); a pickle payload must never run.", "",
             "| area | cases | as expected | not as expected |", "|---|---|---|---|"]
    for area, title in AREAS.items():
        rs = [r for r in results if r.case.area == area]
        if rs:
            bad = [r.case.name for r in rs if not r.passed]
            lines.append(f"| {title} | {len(rs)} | {len(rs) - len(bad)} | {', '.join(bad) or '-'} |")
    lines += ["", f"Total: {len(results)} cases, {sum(r.passed for r in results)} as expected "
                  f"({seconds:.0f} s).", ""]
    for area, title in AREAS.items():
        rs = [r for r in results if r.case.area == area]
        if not rs:
            continue
        lines += [f"## {title}", "", "| case | expected | outcome | message |", "|---|---|---|---|"]
        for r in rs:
            msg = r.detail.replace("|", "\\|")
            msg = msg if len(msg) <= 160 else msg[:157] + "..."
            mark = "" if r.passed else " **(!)**"
            lines.append(f"| {r.case.name} | {r.case.expect} | {r.outcome}{mark} | {msg} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="write the markdown report here (e.g. docs/reliability.md)")
    ap.add_argument("--areas", default="config,train,data,server,checkpoint")
    ap.add_argument("--jobs", type=int, default=2, help="CLI cases run in parallel")
    ap.add_argument("--timeout-s", type=float, default=180.0, help="per CLI case")
    a = ap.parse_args()
    areas = a.areas.split(",")
    t0 = time.monotonic()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="rlreason-reliability-") as tmp:
        root = Path(tmp)
        cases = [c for c in (*config_cases(), *train_cases(), *data_cases()) if c.area in areas]
        with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
            for r in pool.map(lambda c: run_cli_case(c, root, a.timeout_s), cases):
                results.append(r)
                print(f"{'ok  ' if r.passed else 'FAIL'} {r.case.area:7s} {r.case.name}: {r.outcome}  {r.detail[:120]}",
                      flush=True)
        if "server" in areas:
            for r in server_cases(root):
                results.append(r)
                print(f"{'ok  ' if r.passed else 'FAIL'} server  {r.case.name}: {r.outcome}", flush=True)
        if "checkpoint" in areas:
            for r in checkpoint_cases(root):
                results.append(r)
                print(f"{'ok  ' if r.passed else 'FAIL'} ckpt    {r.case.name}: {r.outcome}  {r.detail[:120]}",
                      flush=True)
    text = report(results, time.monotonic() - t0)
    if a.out:
        Path(a.out).write_text(text + "\n")
        print(f"wrote {a.out}")
    failed = [r for r in results if not r.passed]
    print(f"{len(results)} cases, {len(failed)} not as expected")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
