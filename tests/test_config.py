"""Config loading: YAML + dotted overrides, strict keys, errors that name the key and what is allowed."""

import re

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
    from rlreason.trainer.loop import validate
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
    from rlreason.cpu import share_prompts
    assert load_config(None, []).trainer.share_prompt_forward == "auto"
    assert share_prompts("auto", torch.device("cpu")) and not share_prompts("auto", torch.device("cuda"))
    assert share_prompts(True, torch.device("cuda")) and not share_prompts(False, torch.device("cpu"))
    assert load_config(None, ["trainer.share_prompt_forward=false"]).trainer.share_prompt_forward is False
    with pytest.raises(ConfigError, match="share_prompt_forward"):
        load_config(None, ["trainer.share_prompt_forward=sometimes"])


@pytest.mark.parametrize("override", [
    "trainer.max_grad_norm=-1.0", "trainer.max_grad_norm=0", "trainer.warmup_steps=-1", "trainer.lr=0",
    "trainer.lr=-1e-6", "trainer.lr=.inf", "trainer.lr=.nan", "algo.eps_low=-0.1", "algo.eps_low=1.0",
    "algo.eps_high=-0.2", "algo.kl_coef=-0.1", "algo.entropy_coef=-1", "algo.dual_clip_c=1.0", "algo.tis_cap=0",
    "algo.adv_eps=0", "algo.gamma=1.5", "algo.max_sampling_rounds=0", "rollout.temperature=0",
    "rollout.top_p=0", "rollout.top_p=1.5", "rollout.max_model_len=0", "rollout.kv_cache_gb=0",
    "rollout.gpu_memory_utilization=1.2", "eval.k=0", "eval.every=-1", "trainer.checkpoint_every=-1",
    "trainer.keep_checkpoints=0", "trainer.weight_decay=-0.1", "trainer.micro_batch_size=0", "seed=-1",
    "data.eval_size=-1", "logging.log_samples=-1", "ei.batch_size=0",
])
def test_out_of_range_values_are_refused_naming_key_and_range(override):
    from rlreason.trainer.loop import validate
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: must be .*(>|\[|\().*got"):
        validate(load_config(None, [override]))


def test_every_numeric_config_key_has_a_range():
    from rlreason.config import RunConfig
    from rlreason.config_checks import RANGES, numeric_keys
    keys = numeric_keys(RunConfig)
    assert "trainer.max_grad_norm" in keys and "algo.tis_cap" in keys
    assert sorted(keys) == sorted(RANGES)


def test_range_edges_and_null_are_accepted():
    from rlreason.trainer.loop import validate
    validate(load_config(None, ["trainer.max_grad_norm=null", "algo.tis_cap=null", "algo.dual_clip_c=null",
                                "rollout.top_p=1.0", "eval.temperature=0", "algo.eps_low=0", "trainer.warmup_steps=0",
                                "algo.gamma=1.0", "algo.lam=0"]))


def test_ignored_combinations_are_errors_or_warnings(caplog):
    from rlreason.trainer.loop import validate
    with pytest.raises(ConfigError, match=r"algo\.kl_in_reward.*algo\.kl_coef=0"):
        validate(load_config(None, ["algo.kl_in_reward=true"]))
    with pytest.raises(ConfigError, match=r"trainer\.mini_batches.*whole prompt groups"):
        validate(load_config(None, ["trainer.prompts_per_step=2", "trainer.mini_batches=4"]))
    validate(load_config(None, ["algo.kl_in_reward=true", "algo.kl_coef=0.01"]))
    for override, text in [("algo.max_sampling_rounds=5", "algo.dynamic_sampling is false"),
                           ("algo.kl_estimator=k1", "algo.kl_coef is 0"),
                           ("algo.gamma=0.9", "no critic"),
                           ("algo.adv_eps=0.1", "does not divide"),
                           ("trainer.samples_per_prompt=1", "no group baseline")]:
        caplog.clear()
        extra = ["algo.advantage=rloo"] if "adv_eps" in override else []
        validate(load_config(None, [override, *extra]))
        assert text in caplog.text, override
    caplog.clear()
    validate(load_config(None, []))
    assert caplog.text == ""


def test_bad_values_are_refused_before_any_model_loads(tmp_path, monkeypatch):
    """trainer.train validates first: the model must not even be resolved for a config that cannot train;
    environment and reward arguments go through their constructors before the policy loads."""
    import rlreason.models
    import rlreason.trainer.loop as loop

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")
    monkeypatch.setattr(loop, "load_policy", no_load)
    for override in ("trainer.max_grad_norm=-1.0", "trainer.warmup_steps=-2"):
        monkeypatch.setattr(rlreason.models, "resolve_model", no_load)
        with pytest.raises(ConfigError, match=override.split("=")[0]):
            loop.train(load_config(None, [override, f"output_dir={tmp_path}/r", "logging.wandb=false"]))
    monkeypatch.undo()
    monkeypatch.setattr(loop, "load_policy", no_load)
    tiny = ["model.name=tiny-random", "rollout.engine=hf", f"output_dir={tmp_path}/r", "logging.wandb=false",
            "data.train={source: reasoning_gym, task: basic_arithmetic, size: 8}", "data.eval_size=2"]
    for override, key in [("env.args.max_tokens=0", "env.args.max_tokens"),
                          ("env.args.style=fancy", "env.args.style"),
                          ("rewards=[{name: math, weight: .nan}]", r"rewards\[0\]\.weight")]:
        with pytest.raises(ConfigError, match=key):
            loop.setup(load_config(None, [*tiny, override]))
