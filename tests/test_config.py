"""Config loading: YAML + dotted overrides, strict keys, errors that name the key and what is allowed."""

import pytest

from rlreason.config import load_config, parse_overrides
from rlreason.registry import ConfigError


def test_overrides_parse_yaml_values():
    o = parse_overrides(["trainer.lr=1e-6", "algo.dual_clip_c=null", "env.args.stop=[a, b]", "name=x"])
    assert o == {"trainer": {"lr": 1e-6}, "algo": {"dual_clip_c": None}, "env": {"args": {"stop": ["a", "b"]}},
                 "name": "x"}


def test_yaml_and_overrides_merge(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("name: a\ntrainer:\n  lr: 0.001\n  steps: 3\n")
    cfg = load_config(str(f), ["trainer.steps=7"])
    assert (cfg.name, cfg.trainer.lr, cfg.trainer.steps) == ("a", 0.001, 7)
    assert cfg.trainer.samples_per_prompt == 4  # untouched default


def test_defaults_composition(tmp_path):
    (tmp_path / "base.yaml").write_text("trainer:\n  steps: 3\n  lr: 0.5\n")
    (tmp_path / "child.yaml").write_text("defaults: base.yaml\ntrainer:\n  lr: 0.25\n")
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.trainer.steps, cfg.trainer.lr) == (3, 0.25)


def test_unknown_key_names_key_allowed_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["trainer.lrr=1"])
    msg = str(e.value)
    assert "trainer.lrr" in msg and "Allowed" in msg and "lr" in msg and "Did you mean 'lr'" in msg


def test_literal_and_type_errors():
    with pytest.raises(ConfigError, match=r"rollout.engine: 'sglang' is not allowed. Allowed: vllm, hf"):
        load_config(None, ["rollout.engine=sglang"])
    with pytest.raises(ConfigError, match="trainer.steps: expected an integer"):
        load_config(None, ["trainer.steps=many"])
    with pytest.raises(ConfigError, match="logging.wandb: expected true or false"):
        load_config(None, ["logging.wandb=3"])


def test_bad_override_syntax_and_missing_file():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["trainer.lr"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_registry_names_validated_before_run():
    from rlreason.trainer.grpo import validate
    with pytest.raises(ConfigError, match="algo.advantage.*Allowed.*grpo"):
        validate(load_config(None, ["algo.advantage=grpoo"]))
    with pytest.raises(ConfigError, match="algo.loss_agg_mode"):
        validate(load_config(None, ["algo.loss_agg_mode=mean"]))
    with pytest.raises(ConfigError, match="model.attn_implementation: unknown 'spda'.*Allowed.*sdpa.*Did you mean 'sdpa'"):
        validate(load_config(None, ["model.attn_implementation=spda"]))
    validate(load_config(None, []))  # defaults are valid


def test_repo_configs_load():
    import pathlib
    for f in sorted(pathlib.Path("configs").glob("*.yaml")):
        load_config(str(f))


def test_share_prompt_forward_auto_is_on_for_cpu_only():
    import torch

    from rlreason.config import load_config
    from rlreason.registry import ConfigError
    from rlreason.trainer.grpo import share_prompts
    assert load_config(None, []).trainer.share_prompt_forward == "auto"
    assert share_prompts("auto", torch.device("cpu")) and not share_prompts("auto", torch.device("cuda"))
    assert share_prompts(True, torch.device("cuda")) and not share_prompts(False, torch.device("cpu"))
    assert load_config(None, ["trainer.share_prompt_forward=false"]).trainer.share_prompt_forward is False
    with pytest.raises(ConfigError, match="share_prompt_forward"):
        load_config(None, ["trainer.share_prompt_forward=sometimes"])
