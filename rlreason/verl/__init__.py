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
