"""Fixtures shared by the whole suite.

- `tiny_model_dir`: the `tiny-random` model (SmolLM2's tokenizer, two tiny layers) as a local fp32
  directory, resolved once per session; `tiny_tokenizer` is its tokenizer.
- `registered`: puts a test's throwaway plug-in into a global registry for that test only
  (`registered(REWARDS, "_my_reward", fn)`), so no test module registers anything at import time and the
  names one test sees never depend on which other modules were collected.
- `isolated_registries`: every global registry is restored after the test (for tests that load entry
  points or import a user's plug-in module)."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    """tiny-random from rlreason's cache (built by scripts/setup.sh; built here by the same function if
    absent)."""
    from rlreason.models import resolve_model
    return resolve_model("tiny-random", dtype="fp32")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir: str) -> Any:
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture
def registered() -> Iterator[Callable[..., Any]]:
    """registered(REGISTRY, name, obj) or registered(REGISTRY, {name: obj, ...}): registered until the test
    ends (Registry.temporary); returns obj so it can wrap a definition."""
    with ExitStack() as stack:
        def add(registry: Any, entries: Any, obj: Any = None) -> Any:
            stack.enter_context(registry.temporary(entries, obj))
            return obj
        yield add


def global_registries() -> list[Any]:
    from rlreason.algos import ADVANTAGES, KL_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES
    from rlreason.data.builders import SOURCES
    from rlreason.registry import ENVIRONMENTS, REWARDS
    return [ENVIRONMENTS, REWARDS, ADVANTAGES, POLICY_LOSSES, LOSS_AGG_MODES, KL_ESTIMATORS, SOURCES]


@pytest.fixture
def isolated_registries() -> Iterator[None]:
    with ExitStack() as stack:
        for reg in global_registries():
            stack.enter_context(reg.temporary())
        yield
