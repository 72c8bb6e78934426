"""benchmarks/decode_floor.py's arithmetic, without a model: the live sequences of each decode step, from which
the matmul floor of a rollout is summed."""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from hypothesis import given
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@functools.cache
def decode_floor() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the script imports its sibling peer_workload.py, as it does when run
    try:
        spec = importlib.util.spec_from_file_location("decode_floor", BENCH / "decode_floor.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(BENCH))


def test_live_sequences_per_decode_step():
    # lengths 3, 1, 2: step 0 runs all three, step 1 the two longer, step 2 only the longest
    assert decode_floor().live_per_step([3, 1, 2]) == [3, 2, 1]
    assert decode_floor().live_per_step([]) == []


@given(st.lists(st.integers(min_value=0, max_value=40), max_size=12))
def test_live_sequences_add_up_to_the_generated_tokens(lengths):
    live = decode_floor().live_per_step(lengths)
    assert sum(live) == sum(lengths) and len(live) == max(lengths, default=0)
    assert all(a >= b for a, b in zip(live, live[1:]))  # sequences only ever finish
