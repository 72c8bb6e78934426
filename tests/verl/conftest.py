"""Tests that import the real verl 0.9.1: they run in .venv-verl (scripts/setup_verl_venv.sh), e.g.

    .venv-verl/bin/python -m pytest tests/verl

In any other environment (the main .venv has no verl) this directory is not collected; the main
suite's tests/test_verl_bridge.py runs it in .venv-verl instead."""

import importlib.util

collect_ignore_glob = [] if importlib.util.find_spec("verl") is not None else ["test_*.py"]
