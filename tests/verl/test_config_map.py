"""rlreason.verl.config_map: snapshot of the override list (configs/quickstart.yaml and a fixture that
covers the rest of the mapping), and the overrides composed against verl's own ppo_trainer.yaml.

Snapshots: tests/verl/snapshots/*.overrides.txt. After an intended change to a config or the mapping,
regenerate with `RLREASON_UPDATE_SNAPSHOTS=1 .venv-verl/bin/python -m pytest tests/verl/test_config_map.py`
and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import compose_verl
from omegaconf import OmegaConf

from rlreason.config import load_config
from rlreason.registry import ConfigError
from rlreason.verl.config_map import verl_overrides

ROOT = Path(__file__).resolve().parents[2]
SNAP = Path(__file__).parent / "snapshots"
CASES = {"quickstart": ROOT / "configs" / "quickstart.yaml", "markovian_rloo": SNAP / "markovian_rloo.yaml"}
# Fixed paths and cache root so the snapshot does not depend on the machine.
FIXED = dict(run_dir="/runs/RUN", train_files="/data/train.parquet", val_files="/data/val.parquet",
             agent_loop_config="/runs/RUN/verl/agent_loops.yaml")


def overrides_for(name: str, **cluster) -> list[str]:
    path = CASES[name]
    if not path.exists():
        pytest.skip(f"{path} not present")
    os.environ["RLREASON_CACHE"] = "/cache"
    return verl_overrides(load_config(str(path)), **FIXED, **cluster)


@pytest.mark.parametrize("name", list(CASES))
def test_snapshot(name):
    got = "\n".join(overrides_for(name, nodes=2, gpus_per_node=8)) + "\n"
    snap = SNAP / f"{name}.overrides.txt"
    if os.environ.get("RLREASON_UPDATE_SNAPSHOTS") or not snap.exists():
        snap.write_text(got)
    assert got == snap.read_text(), f"override list changed; see the module docstring to regenerate {snap}"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("nodes,gpus", [(1, 1), (4, 8)])
def test_overrides_compose_against_verl_ppo_trainer_yaml(name, nodes, gpus):
    cfg = compose_verl(overrides_for(name, nodes=nodes, gpus_per_node=gpus))
    OmegaConf.resolve(cfg)  # every interpolation in verl's yaml still resolves with our values
    assert cfg.trainer.nnodes == nodes and cfg.trainer.n_gpus_per_node == gpus
    assert cfg.trainer.use_v1 is True
    assert cfg.actor_rollout_ref.rollout.agent.default_agent_loop.startswith("rlreason_")
    assert cfg.ray_kwargs.ray_init.runtime_env.worker_process_setup_hook == "rlreason.verl.hooks.setup_worker"
    rc = load_config(str(CASES[name]))
    assert cfg.actor_rollout_ref.rollout.n == rc.trainer.samples_per_prompt
    assert cfg.actor_rollout_ref.actor.clip_ratio_high == rc.algo.eps_high
    from rlreason.registry import build_environment
    bound = build_environment(rc.env.name, None, dict(rc.env.args)).row_bound()
    assert cfg.data.max_response_length == bound.response  # the environment's declared row bound
    assert cfg.data.max_prompt_length == rc.rollout.max_model_len - bound.response + bound.prompt_extra


@pytest.mark.parametrize("name", list(CASES))
def test_verl_validate_config_accepts_the_overrides(name):
    """What main_ppo runs before it starts Ray: batch-size divisibility, loss modes, KL settings..."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config
    cfg = compose_verl(overrides_for(name, nodes=1, gpus_per_node=8))
    validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))


def test_verl_builds_its_typed_configs_from_the_overrides():
    """verl converts these sections to dataclasses at startup; a wrong type or key fails here."""
    from verl.trainer.config import AlgoConfig
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import RolloutConfig
    cfg = compose_verl(overrides_for("markovian_rloo", nodes=1, gpus_per_node=8))
    OmegaConf.resolve(cfg)  # as verl's TaskRunner does before anything reads the config
    algo = omega_conf_to_dataclass(cfg.algorithm, AlgoConfig)
    assert algo.adv_estimator == "rloo" and algo.filter_groups.enable
    actor = cfg.actor_rollout_ref.actor
    assert actor.loss_agg_mode == "seq-mean-token-sum" and actor.clip_ratio_c == 1e9 and actor.use_kl_loss
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout, RolloutConfig)
    # prompt: max_model_len 1536 - C 512 for the query, + carryover 256; response: one chunk of C 512
    assert rollout.n == 8 and rollout.prompt_length == 1280 and rollout.response_length == 512


def test_mapping_table():
    def ov(**algo):
        cfg = load_config(None, [f"algo.{k}={v}" for k, v in algo.items()] + ["logging.wandb=false"])
        return {k: v.strip("'") for k, v in (o.lstrip("+").split("=", 1) for o in verl_overrides(cfg, **FIXED))}
    assert ov(advantage="dr_grpo")["algorithm.norm_adv_by_std_in_grpo"] == "false"
    assert ov(advantage="grpo")["algorithm.adv_estimator"] == "grpo"
    assert ov(advantage="reinforce_pp_baseline")["algorithm.adv_estimator"] == "reinforce_plus_plus_baseline"
    gae = ov(advantage="gae")
    assert gae["algorithm.adv_estimator"] == "gae" and "critic.model.path" in gae
    assert gae["ray_kwargs.ray_init.runtime_env.env_vars.RLREASON_VERL_SESSION_ADV"] == "0"
    kl_r = ov(kl_coef=0.01, kl_in_reward="true")
    assert kl_r["algorithm.use_kl_in_reward"] == "true" and kl_r["actor_rollout_ref.actor.use_kl_loss"] == "false"
    assert ov(policy_loss="reinforce")["actor_rollout_ref.actor.clip_ratio_high"] == "1000000000.0"
    with pytest.raises(ConfigError, match="algo.advantage"):
        ov(advantage="ppo_magic")


USER_ENV = ("from rlreason.registry import register_environment\n"
            "@register_environment('{name}')\nclass UserEnv:\n    pass\n")


def test_imports_reach_the_ray_workers_as_a_string(tmp_path, monkeypatch, capsys, isolated_registries):
    """`imports:` and `--import` become one runtime env var, RLREASON_IMPORTS (comma-separated), which Hydra
    keeps a string and rlreason.verl.hooks.setup_worker imports in every worker before any lookup."""
    (tmp_path / "vc_user_env.py").write_text(USER_ENV.format(name="vc_user_env"))
    (tmp_path / "vc_user_reward.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    key = "+ray_kwargs.ray_init.runtime_env.env_vars.RLREASON_IMPORTS"
    cfg = load_config(None, ["imports=[vc_user_env, vc_user_reward]", "logging.wandb=false"])
    o = verl_overrides(cfg, **FIXED)
    assert f"{key}='vc_user_env,vc_user_reward'" in o
    value = compose_verl(o).ray_kwargs.ray_init.runtime_env.env_vars.RLREASON_IMPORTS
    assert isinstance(value, str) and value == "vc_user_env,vc_user_reward"
    plain = verl_overrides(load_config(None, ["logging.wandb=false"]), **FIXED)
    assert not any(x.startswith(key) for x in plain)  # no imports: nothing emitted

    from rlreason.cli import main
    assert main(["--import", "vc_user_reward", "verl-config", "imports=[vc_user_env]", "logging.wandb=false",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    assert f"{key}='vc_user_env,vc_user_reward'" in capsys.readouterr().out.splitlines()


def test_auto_dtype_maps_to_bf16_for_verls_gpu_workers():
    """model.dtype=auto resolves per device in the local trainer; verl's workers are GPUs, so a launch from a
    CPU-only head node still trains in bf16 (the model files and verl's dtype both), as model.dtype=bf16 does."""
    base = ["logging.wandb=false"]
    assert load_config(None, base).model.dtype == "auto"
    assert verl_overrides(load_config(None, base), **FIXED) == \
        verl_overrides(load_config(None, [*base, "model.dtype=bf16"]), **FIXED)
