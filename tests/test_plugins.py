"""A user's own environments and rewards: modules listed under `imports:` (or `--import`) are imported
before lookup, also after the CLI's LD_PRELOAD re-exec; a broken third-party entry point only breaks
lookups of its own name, and is named in a warning and in the error."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlreason.config import load_config
from rlreason.registry import ENVIRONMENTS, REWARDS, ConfigError, Registry

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
import os
from rlreason.registry import register_environment, register_reward

print("plugin imported; preloaded=" + os.environ.get("_RLREASON_PRELOADED", "0"), flush=True)


@register_environment("{env}")
class MyEnv:
    def __init__(self, tokenizer, **args):
        self.tokenizer, self.args = tokenizer, args


@register_reward("{reward}")
def my_reward(completion: str, answer: str) -> float:
    return float(answer in completion)
'''


def write_plugin(tmp_path: Path, module: str, env: str, reward: str) -> None:
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(env=env, reward=reward))


def test_config_imports_register_before_lookup(tmp_path, monkeypatch, isolated_registries):
    write_plugin(tmp_path, "my_plugin_a", "my_env_a", "my_reward_a")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("imports: [my_plugin_a]\nenv: {name: my_env_a}\nrewards: [my_reward_a]\n")
    cfg = load_config(str(tmp_path / "c.yaml"))
    assert ENVIRONMENTS.get(cfg.env.name, "env.name").name == "my_env_a"
    assert REWARDS.get("my_reward_a")("x 4", "4") == 1.0
    with pytest.raises(ConfigError, match=r"imports\[0\]: cannot import module 'no_such_plugin_mod'"):
        load_config(None, ["imports=[no_such_plugin_mod]"])


@pytest.mark.parametrize("how", ["config", "flag"])
def test_imports_survive_the_cli_preload_reexec(tmp_path, how):
    """Without RLREASON_NO_PRELOAD the CLI re-executes itself with LD_PRELOAD; the plugin must be
    imported in the process that then runs the command."""
    from rlreason.cpu import preload_libs
    write_plugin(tmp_path, "my_plugin_b", "my_env_b", "my_reward_b")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(("imports: [my_plugin_b]\n" if how == "config" else "") + "env: {name: my_env_b}\n")
    args = ["config", "show", str(cfg)] if how == "config" else ["--import", "my_plugin_b", "config", "show", str(cfg)]
    env = {k: v for k, v in os.environ.items() if k not in ("RLREASON_NO_PRELOAD", "_RLREASON_PRELOADED")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-m", "rlreason.cli", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    expected = "1" if preload_libs() else "0"
    assert r.stdout.count("plugin imported") == 1 and f"preloaded={expected}" in r.stdout
    assert "name: my_env_b" in r.stdout


def test_broken_entry_point_breaks_only_its_own_name(tmp_path, monkeypatch, caplog):
    dist = tmp_path / "brokenplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlreason.environments]\nbroken_env = no_such_module_xyz:Env\n"
                                           "[rlreason.rewards]\nbroken_reward = no_such_module_xyz:fn\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    envs = Registry("environment", "rlreason.environments")  # fresh: nothing loaded yet
    envs.register("single_turn")(type("SingleTurn", (), {}))
    rewards = Registry("reward", "rlreason.rewards")
    rewards.register("math")(lambda completion, answer: 0.0)
    assert envs.get("single_turn", "env.name") is not None  # unrelated lookups work
    assert rewards.get("math", "rewards[0].name") is not None
    assert REWARDS.get("math") is not None and ENVIRONMENTS.get("single_turn") is not None
    assert "broken_env" in envs.names() and "broken_env" in envs
    with caplog.at_level(logging.WARNING), pytest.raises(ConfigError) as e:
        envs.get("broken_env", "env.name")
    msg = str(e.value)
    assert msg.startswith("env.name: ") and "brokenplug" in msg and "no_such_module_xyz:Env" in msg
    assert "brokenplug" in caplog.text and "no_such_module_xyz" in caplog.text
    with pytest.raises(ConfigError, match="unknown environment 'single_trun'.*Did you mean 'single_turn'"):
        envs.get("single_trun", "env.name")


ALGO_PLUGIN = '''
"""A user's own data source, advantage estimator, policy loss, KL estimator and loss aggregation, exposed
only through entry points (nothing imports this module but the registries)."""
from collections import Counter

import torch

from rlreason.data.schema import make_dataset, make_row

CALLS = Counter()


def doubles(n: int, start: int = 1):
    CALLS["data_source"] += 1
    return make_dataset([make_row(f"dbl/{i}", f"What is {i} + {i}?", str(2 * i), "doubles", {})
                         for i in range(start, start + n)])


def unit_advantage(rewards, group_ids, *, eps=1e-6, **_):
    CALLS["advantage"] += 1
    return torch.ones(rewards.shape, dtype=torch.float32)


def plain_pg(logprobs, old_logprobs, advantages, response_mask, *, is_weights=None, **_):
    CALLS["policy_loss"] += 1
    m = response_mask.bool()
    loss = torch.where(m, -advantages * torch.exp(logprobs - old_logprobs), 0.0)
    return loss, {"plugin_advantage": float(advantages[m].mean())}


def shifted_k2(logprobs, ref_logprobs):
    CALLS["kl_estimator"] += 1
    return 0.5 * (logprobs - ref_logprobs) ** 2 + 0.25


def token_mean_again(mask, trace_ids):
    CALLS["loss_agg_mode"] += 1
    return mask / mask.sum().clamp_min(1)
'''

ALGO_ENTRY_POINTS = """
[rlreason.data_sources]
doubles = userplug_algos:doubles
[rlreason.advantages]
unit_advantage = userplug_algos:unit_advantage
[rlreason.policy_losses]
plain_pg = userplug_algos:plain_pg
[rlreason.kl_estimators]
shifted_k2 = userplug_algos:shifted_k2
[rlreason.loss_agg_modes]
token_mean_again = userplug_algos:token_mean_again
"""


def test_entry_point_algorithms_and_data_source_train_from_a_config(tmp_path, monkeypatch, isolated_registries):
    """A package that only declares entry points adds a data source, an advantage estimator, a policy loss, a
    KL estimator and a loss aggregation mode: a config names them, validate accepts them, and one training
    step on the tiny model runs every one of them (the loss sees the plugin's advantages, the KL metric the
    plugin's +0.25)."""
    import json

    from rlreason.algos import ADVANTAGES, KL_ESTIMATORS, LOSS_AGG_MODES, POLICY_LOSSES
    from rlreason.data.builders import SOURCES
    from rlreason.trainer.loop import train, validate

    dist = tmp_path / "userplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(ALGO_ENTRY_POINTS)
    (tmp_path / "userplug_algos.py").write_text(ALGO_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "userplug_algos", raising=False)
    for reg, name in ((SOURCES, "doubles"), (ADVANTAGES, "unit_advantage"), (POLICY_LOSSES, "plain_pg"),
                      (KL_ESTIMATORS, "shifted_k2"), (LOSS_AGG_MODES, "token_mean_again")):
        assert name in reg.names() and "userplug_algos" not in sys.modules  # listed, not loaded yet

    cfg = load_config(None, [
        "model.name=tiny-random", "model.dtype=fp32", "rollout.engine=hf", "rollout.max_model_len=128",
        "data.train={source: doubles, n: 12}", "data.eval_size=2", "env.args.max_tokens=4",
        "trainer.prompts_per_step=2", "trainer.samples_per_prompt=2", "trainer.steps=1",
        "trainer.micro_batch_size=4", "rewards=[{name: math, weight: 1.0}]",
        "algo.advantage=unit_advantage", "algo.policy_loss=plain_pg", "algo.kl_estimator=shifted_k2",
        "algo.kl_coef=0.1", "algo.loss_agg_mode=token_mean_again",
        "logging.wandb=false", "logging.progress=false", f"output_dir={tmp_path}/run"])
    validate(cfg)
    train(cfg)
    calls = sys.modules["userplug_algos"].CALLS
    assert set(calls) == {"data_source", "advantage", "policy_loss", "kl_estimator", "loss_agg_mode"}, calls
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["loss/plugin_advantage"] == 1.0
    assert abs(row["loss/kl"] - 0.25) < 1e-6  # policy == reference at step 1: only the plugin's offset


def test_unknown_algorithm_names_list_the_entry_points(tmp_path, monkeypatch, isolated_registries):
    from rlreason.trainer.loop import validate
    dist = tmp_path / "userplug2-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: userplug2\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[rlreason.policy_losses]\nplain_pg = no_such_module_q:plain_pg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"algo\.policy_loss: unknown policy loss 'plain_p'\. "
                                          r"Allowed: plain_pg, ppo_clip, reinforce\. Did you mean 'plain_pg'"):
        validate(load_config(None, ["algo.policy_loss=plain_p"]))
    # a broken plugin is reported by validate, before anything slow starts, naming its package
    with pytest.raises(ConfigError, match=r"algo\.policy_loss: policy loss plugin 'plain_pg'.*userplug2"):
        validate(load_config(None, ["algo.policy_loss=plain_pg"]))
