"""rlreason on verl (multi-GPU, multi-node): the only package that imports verl.

    config_map.py   RunConfig -> `python -m verl.trainer.main_ppo` overrides (no verl import)
    export.py       datasets -> verl's parquet schema (no verl import; runs in the main venv)
    agent_loop.py   AgentLoopBase subclass wrapping any registered rlreason Environment
    reward.py       Rubric scoring inside the agent loop: group-level (by uid) and stateful rewards
    hooks.py        Ray worker setup hook: per-session advantages, trace-length norm, env metrics

Modules that import verl are not imported here, so `import rlreason.verl` works without verl.
See docs/verl.md for what verl does natively and what the adapter adds.
"""

VERL_VERSION = "0.9.1"  # the version the adapter was written and tested against
SUPPORTED_VERL = ("0.9.1",)  # hooks.py patches verl internals: only releases the tests ran against


def version_supported(version: str) -> bool:
    """verl releases the adapter accepts (local builds `0.9.1+abc` / `0.9.1.dev0` count as their release)."""
    import re
    m = re.match(r"\d+\.\d+\.\d+", version)
    return bool(m) and m.group(0) in SUPPORTED_VERL
