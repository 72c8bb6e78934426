"""The local trainer: one loop (`loop.py`) with algorithm plug-ins (`grpo.py`, `expert_iteration.py`, `sft.py`)."""
