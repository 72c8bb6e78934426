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


def test_config_imports_register_before_lookup(tmp_path, monkeypatch):
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
