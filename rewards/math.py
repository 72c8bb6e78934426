"""Answer-checking rewards: `math` (correctness via math-verify), `boxed_format` (format only) and
`reasoning_gym` (the task's own scorer).

Correctness alone gives GRPO no signal while a small model almost never answers right (SmolLM2-135M
starts near 0% on single-digit addition, docs/cpu.md); `boxed_format` rewards the answer format, which
it learns first. Every 0 carries a reason, so a run's logs say whether answers were wrong, missing,
unparsable or timed out.

math-verify bounds sympy's work with SIGALRM, which only works in the main thread. Here the main thread
(plain scripts, asyncio loops) uses an interval timer directly; any other thread sends the check to a
spawned worker process with a hard deadline, which also survives a hang inside C code.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Iterator

from math_verify import parse, verify

from rlreason.data.math_sets import NO_BOXED, last_boxed
from rlreason.data.reasoning_gym import rebuild
from rlreason.data.schema import dumps_info, loads_info
from rlreason.registry import register_reward
from rlreason.rubric import Scored

log = logging.getLogger(__name__)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TIMEOUT_S = 5.0
WORKER_GRACE_S = 5.0  # on top of TIMEOUT_S before a silent worker is killed


class _TimeoutFilter(logging.Filter):
    """math-verify warns that its timeouts are disabled; they are, because this module enforces them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_TimeoutFilter())


# --- answer extraction ----------------------------------------------------------------------------------

def strip_thinking(text: str) -> tuple[str | None, str]:
    """The part of a completion that may hold the answer: after the last </think>, or everything when
    the model does not think in tags. An opened but never closed <think> means the model ran out of
    tokens mid-thought; whatever it boxed in there is a draft, not an answer."""
    if THINK_CLOSE in text:
        text = text.rsplit(THINK_CLOSE, 1)[1]
    if THINK_OPEN in text:
        return None, "thinking never closed (no </think>)"
    return text, ""


def extract_answer(text: str) -> tuple[str | None, str]:
    """(answer inside the last \\boxed{...}, "") or (None, reason); after </think> when present."""
    tail, reason = strip_thinking(text)
    if tail is None:
        return None, reason
    answer, reason = last_boxed(tail)
    if answer is None and THINK_CLOSE in text:
        reason += " after </think>"
    return answer, reason


def extract_final_answer(text: str) -> tuple[str | None, str]:
    """For tasks whose prompts need not ask for \\boxed{}: the boxed answer, else the last
    <answer>...</answer> (reasoning-gym's own convention), else the last non-empty line."""
    tail, reason = strip_thinking(text)
    if tail is None:
        return None, reason
    answer, reason = last_boxed(tail)
    if answer is not None or reason != NO_BOXED:
        return answer, reason
    tagged = re.findall(r"<answer>(.*?)</answer>", tail, flags=re.DOTALL)
    if tagged and tagged[-1].strip():
        return tagged[-1].strip(), ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return (lines[-1], "") if lines else (None, "empty completion")


# --- math-verify under a deadline -----------------------------------------------------------------------

class _Deadline(BaseException):
    """A BaseException so math-verify's `except Exception` blocks cannot swallow it."""


@contextlib.contextmanager
def _signal_deadline(seconds: float) -> Iterator[None]:
    """Raise _Deadline in the main thread after `seconds`; a timer someone else had armed (e.g.
    pytest-timeout) is re-armed with what is left of it."""
    def on_alarm(signum: int, frame: Any) -> None:
        raise _Deadline()

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    t0 = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, max(old_delay - (time.monotonic() - t0), 1e-3), old_interval)


def _normalise(s: str) -> str:
    return s.strip().strip("$").strip()


def _verify(pred: str, gold: str) -> Scored:
    """Both sides are wrapped in \\boxed{} so math-verify reads them as the final answer. A gold
    answer it cannot read is a data bug and raises (the rubric counts it); a prediction it cannot read
    is the model's problem and scores 0."""
    gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    if not gold_parsed:
        raise ValueError(f"math-verify cannot parse the gold answer {gold!r}")
    pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not pred_parsed:
        return Scored(0.0, f"math-verify could not parse the answer {pred[:80]!r}")
    if verify(gold_parsed, pred_parsed, timeout_seconds=None):
        return Scored(1.0, "correct")
    return Scored(0.0, f"wrong: {pred[:80]!r}, expected {gold[:80]!r}")


def verify_in_main_thread(pred: str, gold: str, timeout_s: float) -> Scored:
    try:
        with _signal_deadline(timeout_s):
            return _verify(pred, gold)
    except _Deadline:
        return Scored(0.0, f"math-verify timed out after {timeout_s:g}s on {pred[:80]!r}")


class _Worker:
    """A child process doing math-verify in its own main thread (where the timer works). It is started
    with `python -c`, not multiprocessing: spawn re-runs the parent's __main__ script, which breaks
    any caller without an `if __name__ == "__main__":` guard. One request at a time (the lock), so a
    queue never eats into a deadline; a worker that misses deadline + grace is killed and replaced."""

    START_TIMEOUT_S = 120.0

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.lock = threading.Lock()

    def _start(self) -> subprocess.Popen[str]:
        path = [p or os.getcwd() for p in sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        proc = subprocess.Popen([sys.executable, "-c", "from rlreason.rewards.math import serve; serve()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        if self._read(proc, self.START_TIMEOUT_S) != {"ready": True}:
            proc.kill()
            raise RuntimeError("math-verify worker did not start")
        atexit.register(proc.kill)
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any] | None:
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        return json.loads(line) if line else None

    def check(self, pred: str, gold: str, timeout_s: float) -> Scored:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            self.proc.stdin.write(json.dumps([pred, gold, timeout_s]) + "\n")  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            reply = self._read(self.proc, timeout_s + WORKER_GRACE_S)
            if reply is None:  # hung in C code, or died (e.g. out of memory on a huge power)
                what = "died" if self.proc.poll() is not None else f"hung for {timeout_s + WORKER_GRACE_S:g}s"
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                return Scored(0.0, f"math-verify worker {what} on {pred[:80]!r}; restarted")
        if "error" in reply:
            raise ValueError(reply["error"])
        return Scored(reply["value"], reply["reason"])


def serve() -> None:
    """Worker loop: one JSON request per line on stdin, one JSON reply per line on stdout. Anything
    else that prints goes to stderr so it cannot corrupt the protocol."""
    out, sys.stdout = sys.stdout, sys.stderr
    parse("\\boxed{1}", parsing_timeout=None)  # import and warm up before saying ready
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        pred, gold, timeout_s = json.loads(line)
        try:
            s = verify_in_main_thread(pred, gold, timeout_s)
            reply: dict[str, Any] = {"value": s.value, "reason": s.reason}
        except Exception as e:  # noqa: BLE001 - sent back and re-raised in the caller
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


_worker = _Worker()


def check_answer(pred: str, gold: str, *, timeout_s: float = TIMEOUT_S) -> Scored:
    """Is `pred` mathematically equal to `gold`? Identical text skips sympy entirely."""
    if _normalise(pred) == _normalise(gold):
        return Scored(1.0, "correct")
    if threading.current_thread() is threading.main_thread():
        return verify_in_main_thread(pred, gold, timeout_s)
    return _worker.check(pred, gold, timeout_s)


# --- rewards --------------------------------------------------------------------------------------------

def _gold(answer: Any) -> str:
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError(f"example has no usable gold 'answer' (got {answer!r})")
    return answer


@register_reward("math")
def math_reward(completion: str, answer: str, *, timeout_s: float = TIMEOUT_S) -> Scored:
    """1 when the last \\boxed{} answer equals the gold answer (math-verify: 1/2 = 0.5 = \\frac{1}{2})."""
    gold = _gold(answer)
    pred, reason = extract_answer(completion)
    if pred is None:
        return Scored(0.0, reason)
    return check_answer(pred, gold, timeout_s=timeout_s)


@register_reward("boxed_format")
def boxed_format(completion: str) -> Scored:
    """1 when a non-empty final \\boxed{} answer is present, right or wrong."""
    pred, reason = extract_answer(completion)
    return Scored(1.0, "") if pred is not None else Scored(0.0, reason)


_rg_lock = threading.Lock()
_rg_datasets: dict[str, Any] = {}


def _rg_dataset(task: str, config: dict[str, Any]) -> Any:
    """The generator rebuilt from the stored config (some scorers read their config), one per config."""
    key = json.dumps([task, config], sort_keys=True)
    with _rg_lock:
        if key not in _rg_datasets:
            _rg_datasets[key] = rebuild(task, config)
        return _rg_datasets[key]


def _rg_entry(ds: Any, info: dict[str, Any]) -> dict[str, Any]:
    """The exact entry, regenerated by index: JSON turns tuples into lists, and some scorers (arc_agi,
    rearc) compare grids as tuples. A task that does not regenerate identically (list_functions is not
    deterministic) falls back to the stored copy."""
    fresh = ds[info["index"]]
    if dumps_info(fresh) == dumps_info(info["entry"]):
        return fresh
    return info["entry"]


@register_reward("reasoning_gym")
def reasoning_gym_reward(completion: str, info: dict[str, Any] | str) -> Scored:
    """The task's own `score_answer` (may give partial credit) on the boxed answer, else the
    <answer> tag, else the last line. Needs a row built by rlreason.data.build_reasoning_gym."""
    meta = loads_info(info)
    missing = [k for k in ("task", "config", "index", "entry") if k not in meta]
    if missing:
        raise ValueError(f"reasoning_gym reward needs info from build_reasoning_gym; missing {missing}")
    pred, reason = extract_final_answer(completion)
    if pred is None:
        return Scored(0.0, reason)
    ds = _rg_dataset(meta["task"], meta["config"])
    value = float(ds.score_answer(pred, _rg_entry(ds, meta)))
    return Scored(value, "correct" if value == 1.0 else f"score {value:g} for {pred[:80]!r}")
