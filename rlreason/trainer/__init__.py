"""Local trainers: GRPO/PPO (`grpo.py`) and expert iteration."""
