"""What `rlreason verl-config` emits for the shipped configs, checked against the parts of verl's launch that
run without a GPU: main_ppo's own `run_ppo` (ray.init with the emitted runtime env on a local CPU Ray, a
Ray actor started the way the TaskRunner is), verl's micro-batch split of one GPU's rows, and the row widths
verl pads to versus what the environment can produce."""

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
SHIPPED = ["quickstart", "pay_per_search_cpu", "markovian_paper"]


def overrides(name: str, *extra: str, nodes: int = 1, gpus: int = 8) -> list[str]:
    os.environ["RLREASON_CACHE"] = "/cache"
    return verl_overrides(load_config(str(ROOT / "configs" / f"{name}.yaml"), list(extra)), nodes=nodes,
                          gpus_per_node=gpus, run_dir="/runs/RUN", train_files="/data/train.parquet",
                          val_files="/data/val.parquet", agent_loop_config="/runs/RUN/verl/agent_loops.yaml")


class ProbeRunner:
    """Stands in for verl's TaskRunnerV1 inside `run_ppo`: started as a Ray actor exactly as main_ppo starts
    the TaskRunner, it checks what the worker process sees (the env vars as strings, verl's trainer patched
    by the setup hook) and raises otherwise, which `run_ppo`'s ray.get re-raises here."""

    def run(self, config):
        import verl.trainer.ppo.v1.trainer_base as tb
        want = dict(config.ray_kwargs.ray_init.runtime_env.env_vars)
        got = {k: os.environ.get(k) for k in want}
        if got != want:
            raise AssertionError(f"worker env {got} != runtime env {want}")
        if not (getattr(tb.compute_advantage_for_multi_trajectories, "rlreason_patched", False)
                and getattr(tb.PPOTrainer._compute_metrics, "rlreason_patched", False)):
            raise AssertionError("the worker setup hook did not patch verl's V1 trainer")


def run_ppo_with_probe(cfg) -> None:
    """verl's main_ppo.run_ppo(config, task_runner_class) with the probe as the task runner."""
    import sys

    import ray
    from ray import cloudpickle  # Ray pickles with its own vendored copy
    from verl.trainer import main_ppo

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker cannot import this test file
    try:
        main_ppo.run_ppo(cfg, task_runner_class=ray.remote(num_cpus=0)(ProbeRunner))
    finally:
        ray.shutdown()


@pytest.mark.timeout(600)
def test_ray_init_accepts_the_emitted_runtime_env():
    """main_ppo merges ray_kwargs.ray_init.runtime_env into its defaults and calls ray.init with it; Ray
    refuses non-string env var values (a bare `=1` in Hydra is an int). Each shipped config's runtime env
    reaches a Ray actor, and the worker setup hook patches verl's trainer there."""
    for name in SHIPPED:
        cfg = compose_verl(overrides(name))
        env_vars = OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env.env_vars)
        assert all(isinstance(v, str) for v in env_vars.values()), env_vars
        assert env_vars["RLREASON_VERL_TRACE_NORM"] == ("1" if name == "markovian_paper" else "0")
        run_ppo_with_probe(cfg)


def verl_micro_split(rows_per_gpu: int, micro: int) -> int:
    """verl's own micro-batch split of one GPU's rows (prepare_micro_batches, fixed micro-batch size)."""
    import torch
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.engine.utils import prepare_micro_batches
    td = TensorDict({"x": torch.zeros(rows_per_gpu, 1)}, batch_size=rows_per_gpu)
    tu.assign_non_tensor(td, use_dynamic_bsz=False, micro_batch_size_per_gpu=micro)
    return len(prepare_micro_batches(td)[0])


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 8), (2, 8)])
def test_micro_batches_split_each_gpus_rows(name, nodes, gpus):
    """Per GPU, one mini-batch holds ppo_mini_batch_size x n / (nodes x gpus) rows (V1 pads a step to a multiple
    of the mini-batch rows); verl asserts the micro-batch size divides it, in every forward pass."""
    try:
        cfg = compose_verl(overrides(name, nodes=nodes, gpus=gpus))
    except ConfigError as e:  # refused up front: the message names the keys
        assert "trainer.mini_batches" in str(e) and "n_gpus_per_node" in str(e)
        return
    actor = cfg.actor_rollout_ref.actor
    rows_per_gpu = actor.ppo_mini_batch_size * cfg.actor_rollout_ref.rollout.n // (nodes * gpus)
    for micro in (actor.ppo_micro_batch_size_per_gpu, cfg.actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu):
        assert verl_micro_split(rows_per_gpu, micro) == rows_per_gpu // micro
        assert micro <= load_config(str(ROOT / "configs" / f"{name}.yaml")).trainer.micro_batch_size


def test_verl_config_refuses_mini_batches_that_do_not_split_over_gpus():
    with pytest.raises(ConfigError, match=r"trainer.prompts_per_step.*n_gpus_per_node"):
        overrides("quickstart", "trainer.prompts_per_step=3", "trainer.samples_per_prompt=3", gpus=8)


def test_markovian_rows_fit_verl_row_widths():
    """A Delethink chunk l >= 2 is |q| + carryover tokens of prompt; verl's prompt width must hold it (the
    query budget is what max_model_len leaves beside a chunk, as on the local engine)."""
    rc = load_config(str(ROOT / "configs" / "markovian_paper.yaml"))
    C, m = rc.env.args["chunk_size"], rc.env.args["carryover"]
    cfg = compose_verl(overrides("markovian_paper"))
    query_budget = rc.rollout.max_model_len - C
    assert cfg.data.max_prompt_length == query_budget + m
    assert cfg.data.max_response_length == C
    assert cfg.actor_rollout_ref.rollout.prompt_length >= query_budget + m


def test_every_builtin_environment_declares_a_row_bound():
    from rlreason.registry import ENVIRONMENTS, build_environment
    # Only the shipped ones: an installed package may add environments through entry points.
    builtin = [n for n in ENVIRONMENTS.names()
               if ENVIRONMENTS.get(n, "env.name").__module__.startswith("rlreason.environments.")]
    assert {"single_turn", "markovian", "longcot", "pay_per_search", "curriculum_ei"} <= set(builtin), builtin
    for name in builtin:
        bound = build_environment(name, None, {}).row_bound()
        assert bound is not None and bound.response >= 1 and bound.prompt_extra >= 0, name


def verl_optimizer_steps(vcfg, rows: int, dp: int) -> int:
    """Optimizer steps verl's V1 trainer takes for a step of `rows` rows: its padding to the required multiple
    (_get_required_batch_multiple) and each rank's mini-batch iterator (tu.make_iterator)."""
    from types import SimpleNamespace

    import torch
    from tensordict import TensorDict
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer
    from verl.utils import tensordict_utils as tu
    multiple = PPOTrainer._get_required_batch_multiple(SimpleNamespace(config=vcfg, use_critic=False,
                                                                       global_steps=1), dp)
    per_rank = -(-rows // multiple) * multiple // dp
    M = vcfg.actor_rollout_ref.actor.ppo_mini_batch_size * vcfg.actor_rollout_ref.rollout.n
    td = TensorDict({"i": torch.arange(per_rank)}, batch_size=per_rank)
    return len(list(tu.make_iterator(td, mini_batch_size=M // dp, epochs=1)))


# markovian_paper on 1 x 8 GPUs: 128 prompts x 8 traces, mini_batches 2 -> verl mini-batch of 64 x 8 = 512 rows.
# (mean chunks per trace, verl optimizer steps); the local trainer takes trainer.mini_batches = 2 every step.
PAPER_STEPS = [(1, 2), (2, 4), (3, 6), (5, 10)]


@pytest.mark.parametrize("chunks,steps", PAPER_STEPS)
def test_optimizer_steps_for_chunked_traces(chunks, steps):
    """verl counts a mini-batch in rows (ppo_mini_batch_size x n) and a Delethink trace is one row per chunk, so
    a step of R rows takes ceil(R / 512) optimizer steps where the local trainer takes 2. The difference is
    documented in docs/verl.md with these numbers; this pins them to verl's own batching code."""
    rc = load_config(str(ROOT / "configs" / "markovian_paper.yaml"))
    vcfg = compose_verl(overrides("markovian_paper", gpus=8))
    R = rc.trainer.prompts_per_step * rc.trainer.samples_per_prompt * chunks
    assert verl_optimizer_steps(vcfg, R, dp=8) == steps
    doc = (ROOT / "docs" / "verl.md").read_text()
    assert f"| {chunks} | {R} | {steps} | {rc.trainer.mini_batches} |" in doc
    assert "exact when one optimizer step uses the whole batch" not in doc  # the old, wrong claim
