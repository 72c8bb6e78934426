"""Tests that import the real verl 0.9.1: they run in .venv-verl (scripts/setup_verl_venv.sh), e.g.

    .venv-verl/bin/python -m pytest tests/verl

In any other environment (the main .venv has no verl) this directory is not collected; the main
suite's tests/test_verl_bridge.py runs it in .venv-verl instead."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.find_spec("verl")
# origin None = a namespace package (this very tests/verl directory seen through sys.path), not verl.
HAVE_VERL = _spec is not None and _spec.origin is not None
collect_ignore_glob = [] if HAVE_VERL else ["test_*.py"]


def verl_config_dir() -> Path:
    import verl
    return Path(verl.__file__).parent / "trainer" / "config"


def compose_verl(overrides: list[str]):
    """verl's own ppo_trainer.yaml composed with `overrides` through Hydra's compose API."""
    from hydra import compose, initialize_config_dir
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_model_dir: str) -> str:
    """tests/conftest.py's tiny-random, checked to load under this venv's transformers (verl pins its own)."""
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # raises if the cached files do not load here
    return tiny_model_dir
